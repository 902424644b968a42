"""privateshare: the digi.me Private Share flow, end to end, into your storage."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import _moved
from .errors import (
    AuthorizationRequired,
    ConfigError,
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
from .framework import PrivateShare, load, loads
from .hooks import Plugin, PluginContext, hookimpl
from .keys import KeyHandle
from .secrets import Secret

_moved.install()

try:
    __version__ = version("privateshare")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AuthorizationRequired",
    "ConfigError",
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
    "hookimpl",
    "load",
    "loads",
]
