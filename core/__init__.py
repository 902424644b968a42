"""privateshare: the digi.me Private Share flow, end to end, into your storage.

The framework, key and plugin classes load on first use (``privateshare --version``
and ``--help`` must not pay for the HTTP client and the flow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _moved
from .errors import (
    AuthorizationRequired,
    ConfigError,
    ConfigProblem,
    DigimeError,
    FileDecryptionError,
    KeyStoreError,
    MalformedAnswer,
    PluginError,
    PrivateShareError,
    ResponseTooLarge,
    SDKInvalidError,
    ServerError,
    SinkError,
    TokenStoreError,
    TransportError,
    UnsafeFileNameError,
    ValidationError,
)

_moved.install()
_moved_names = _moved.attributes(__name__, stacklevel=3)

if TYPE_CHECKING:
    from .checks import check
    from .framework import PrivateShare, load, loads
    from .hooks.plugin import Plugin, PluginContext
    from .hooks.specs import hookimpl
    from .keys import KeyHandle
    from .secrets import Secret

#: Where the documentation lives; error messages point at pages under it.
DOCS_URL = "https://privateshare.readthedocs.io/en/latest/"

_LAZY = {
    "hookimpl": "hooks.specs",
    "Secret": "secrets",
    "PrivateShare": "framework",
    "load": "framework",
    "loads": "framework",
    "KeyHandle": "keys",
    "Plugin": "hooks.plugin",
    "PluginContext": "hooks.plugin",
    "check": "checks",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("privateshare")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        return _moved_names(name)  # a deprecated name, or AttributeError
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DOCS_URL",
    "AuthorizationRequired",
    "ConfigError",
    "ConfigProblem",
    "DigimeError",
    "FileDecryptionError",
    "KeyHandle",
    "KeyStoreError",
    "MalformedAnswer",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PrivateShare",
    "PrivateShareError",
    "ResponseTooLarge",
    "SDKInvalidError",
    "Secret",
    "ServerError",
    "SinkError",
    "TokenStoreError",
    "TransportError",
    "UnsafeFileNameError",
    "ValidationError",
    "__version__",
    "check",
    "hookimpl",
    "load",
    "loads",
]
