"""Secret references: config names *where* a secret lives, never the secret itself.

In TOML a secret is ``{ env = "VAR" }`` or ``{ file = "path" }``. Plugin options
declare a field of type :class:`Secret`; the config decoder turns the reference
into a ``Secret`` and rejects a literal string with the fix. The value is read
only when :meth:`Secret.reveal` is called and never appears in a repr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import SecretUnavailable

REFERENCE_HELP = (
    "a secret must not be written in the config file; reference it instead: "
    '{ env = "VARIABLE_NAME" } or { file = "/path/to/secret" }'
)


class Secret:
    """A reference to a secret held in an environment variable or a file."""

    __slots__ = ("_value", "base_dir", "env", "file")

    def __init__(
        self,
        *,
        env: str | None = None,
        file: str | None = None,
        base_dir: Path | None = None,
        value: str | None = None,
    ) -> None:
        if (env is None) == (file is None) and value is None:
            raise ValueError('a secret reference needs exactly one of "env" or "file"')
        self.env = env
        self.file = file
        self.base_dir = base_dir
        self._value = value

    @classmethod
    def literal(cls, value: str) -> Secret:
        """A secret given in code (tests, the library API); never from a config file."""
        return cls(value=value)

    @classmethod
    def from_reference(cls, obj: Any, base_dir: Path | None = None) -> Secret:
        """Decode a TOML reference table; raise ``ValueError`` with the fix otherwise."""
        if isinstance(obj, Secret):
            return obj
        if not isinstance(obj, dict):
            raise ValueError(REFERENCE_HELP)
        keys = set(obj)
        if keys not in ({"env"}, {"file"}):
            raise ValueError(
                f"a secret reference has exactly one key, env or file; found {sorted(keys)}"
            )
        value = next(iter(obj.values()))
        if not isinstance(value, str) or not value:
            raise ValueError("a secret reference names a non-empty variable or path")
        return cls(env=obj.get("env"), file=obj.get("file"), base_dir=base_dir)

    def describe(self) -> str:
        """Where the secret lives, safe to print."""
        if self.env is not None:
            return f"environment variable {self.env}"
        if self.file is not None:
            return f"file {self.path}"
        return "a value given in code"

    @property
    def path(self) -> Path | None:
        if self.file is None:
            return None
        path = Path(self.file).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    def reveal(self) -> str:
        """Read the secret now; :class:`SecretUnavailable` (a ConfigError) says where it looked."""
        if self._value is not None:
            return self._value
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretUnavailable(
                    f"the secret {self.describe()} is not set; export it before running"
                )
            return value
        path = self.path
        assert path is not None
        try:
            return path.read_text(encoding="utf-8").strip("\r\n")
        except FileNotFoundError:
            raise SecretUnavailable(
                f"the secret {self.describe()} does not exist; create it or fix the path"
            ) from None
        except OSError as exc:
            raise SecretUnavailable(
                f"the secret {self.describe()} cannot be read ({exc.strerror}); "
                "check its permissions"
            ) from None

    def __repr__(self) -> str:
        return f"Secret({self.describe()})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self.env, self.file, self._value) == (other.env, other.file, other._value)

    def __hash__(self) -> int:
        return hash((self.env, self.file))
