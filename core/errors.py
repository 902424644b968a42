"""The privateshare error hierarchy.

Every error a user can meet is a subclass of :class:`PrivateShareError`, so
``except PrivateShareError`` catches everything we raise on purpose. Messages say
what was wrong, where, and how to fix it; they never carry a secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


class PrivateShareError(Exception):
    """Base of every error privateshare raises on purpose."""


#: "[table]" or "[table] key" (a key is followed by ":" or " =") at the start of a message.
_WHERE = re.compile(r"^(\[[^\]]+\])(?: ([\w.-]+)(?=:| =))?")


@dataclass(frozen=True)
class ConfigProblem:
    """One thing that would break a run, located: where, which key, expected, found, the fix.

    The one structured problem type: config decoding, ``privateshare.check()`` and
    ``config check`` all build these, and they are rendered here, once, as
    ``[table] key: expected X, found Y; fix`` (or ``[table] key: message; fix``).
    """

    #: The table (``[digime]``, ``[sinks.local]``) or ``top level``; empty when unknown.
    where: str = ""
    #: The key inside it (dotted for nested tables, ``[i]`` for array items).
    key: str = ""
    #: What a valid value is, in words ("a number > 0"); with ``found``.
    expected: str = ""
    #: What the config holds instead, as it may be shown (never a secret).
    found: str = ""
    #: What is wrong, when it is not an expected/found mismatch ("required but missing").
    message: str = ""
    #: How to fix it.
    fix: str = ""
    #: ``message`` is a statement about the table itself ("[keys] is missing").
    of_table: bool = False
    #: What found it: ``config``, ``extra``, ``secret``, ``hooks``, ``key`` or ``preflight``.
    kind: str = "config"

    def __str__(self) -> str:
        head = " ".join(part for part in (self.where, self.key) if part)
        body = f"expected {self.expected}, found {self.found}" if self.expected else self.message
        if self.fix:
            body += f"; {self.fix}"
        if not head or body.startswith(head):
            return body
        return f"{head} {body}" if self.of_table else f"{head}: {body}"

    @classmethod
    def from_text(cls, text: str, kind: str = "config") -> ConfigProblem:
        """A problem from a message that starts with where it is (``[keys] path: ...``)."""
        match = _WHERE.match(text)
        if match is None:
            return cls(message=text, kind=kind)
        return cls(match.group(1), match.group(2) or "", message=text, kind=kind)

    def to_dict(self) -> dict[str, str]:
        """The problem as JSON (``config check --json``): its fields and its text."""
        fields = {name: getattr(self, name) for name in _JSON_FIELDS}
        return {**fields, "text": str(self)}


_JSON_FIELDS = ("where", "key", "expected", "found", "message", "fix", "kind")


class ConfigError(PrivateShareError):
    """The configuration is wrong: one or more problems, each located precisely."""

    def __init__(
        self,
        problems: str | ConfigProblem | Sequence[str | ConfigProblem],
        source: str | None = None,
    ) -> None:
        items = [problems] if isinstance(problems, str | ConfigProblem) else list(problems)
        #: The problems as objects (a plain message becomes ``ConfigProblem(message=...)``).
        self.details = [
            p if isinstance(p, ConfigProblem) else ConfigProblem(message=p) for p in items
        ]
        #: The problems as users read them.
        self.problems = [str(p) for p in self.details]
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{head}{len(self.problems)} problems in the configuration:\n{lines}"
        super().__init__(message)


class SecretUnavailable(ConfigError):
    """A secret reference does not resolve: the variable is not set, the file is missing."""


class OutputExists(PrivateShareError):
    """A command would overwrite an existing output; it needs ``--force``."""


class PluginError(PrivateShareError):
    """A plugin could not be found, loaded or run."""


class KeyStoreError(PrivateShareError):
    """A contract private key is missing, unreadable or unsuitable."""


class TokenStoreError(PrivateShareError):
    """A token record could not be read, decrypted or written."""


class SinkError(PrivateShareError):
    """A sink could not accept a file."""


class UnsafeFileNameError(SinkError):
    """A server-supplied file name would escape the sink's root."""


class FileDecryptionError(PrivateShareError):
    """A file could not be decrypted; ``check`` names the check that failed.

    ``check`` is one of ``size``, ``key``, ``padding``, ``hash``, ``decompression``.
    """

    def __init__(self, check: str, message: str, file_name: str | None = None) -> None:
        self.check = check
        self.file_name = file_name
        where = f" ({file_name})" if file_name else ""
        super().__init__(f"{check} check failed{where}: {message}")


class DigimeError(PrivateShareError):
    """Base of errors about talking to the digi.me API."""


class ValidationError(DigimeError):
    """A request argument or a server response does not have the expected shape."""


class MalformedAnswer(ValidationError):
    """An answer that does not parse (not JSON, a garbled header): often one cut or mangled on
    the way, so the calls that may be repeated are retried (:mod:`privateshare.retry`)."""


class ServerError(DigimeError):
    """The digi.me API answered with an error (protocol.md#errors)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "DigiMeServerError",
        reference: str = "Unknown reference",
        status_code: int = 0,
        status_message: str = "",
    ) -> None:
        self.code = code
        self.reference = reference
        self.status_code = status_code
        self.status_message = status_message
        super().__init__(f"{message} (code {code}, HTTP {status_code}, reference {reference})")


class SDKInvalidError(ServerError):
    """The API does not accept this SDK or SDK version."""


class AuthorizationRequired(DigimeError):
    """The user's token cannot be refreshed: the user must consent again."""

    def __init__(self, message: str, *, user_id: str | None = None) -> None:
        self.user_id = user_id
        super().__init__(message)


class TransportError(DigimeError):
    """A request could not be completed (connection, timeout, truncated body)."""


class ResponseTooLarge(DigimeError):
    """An answer was larger than the configured cap; it was not read further."""
