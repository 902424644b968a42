"""The base class plugin authors subclass, and what a plugin is given.

A plugin is a class found through an entry point. It declares its options as a
msgspec Struct (``Options``); the framework decodes the plugin's config table
into it (unknown keys rejected) and constructs the plugin with the options and
a :class:`PluginContext`. The instance is registered with pluggy, so its
methods marked ``@hookimpl`` are the hook implementations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import msgspec

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..keys import KeyHandle


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """For plugins that take no options."""


@dataclass(frozen=True)
class PluginContext:
    """What a plugin may know about the framework it runs in."""

    #: The config name the plugin is registered under, e.g. ``sinks.archive``.
    name: str
    #: Directory that relative paths in the config are resolved against.
    base_dir: Path
    application_id: str = ""
    contract_id: str = ""
    #: The API profile from ``[digime] api``: ``"v1.7"`` (default) or ``"v1.5"``.
    api: str = "v1.7"
    #: Returns the contract key handle (loaded lazily, once).
    key_handle: Callable[[], KeyHandle] = field(default=lambda: no_key_handle(), repr=False)

    def resolve(self, path: str | Path) -> Path:
        """A config path made absolute against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def no_key_handle() -> NoReturn:
    """What asking for the contract key does when no key store is configured."""
    raise ConfigError("no key store is configured; add a [keys] table")


class Plugin:
    """Convenience base: stores ``options`` and ``context``."""

    Options: ClassVar[type[msgspec.Struct]] = NoOptions
    #: One line shown by ``privateshare plugins``.
    description: ClassVar[str] = ""

    def __init__(self, options: Any, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.context.name})"
