"""Assemble the configured plugins into one object: the library's entry point."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, load_config, parse_toml
from .hooks.calls import Hooks
from .hooks.loading import BrokenPlugin, PluginSet

if TYPE_CHECKING:
    from .keys import KeyHandle


class PrivateShare:
    """The framework, assembled from a config: plugins loaded, hooks ready.

    Build it with :func:`privateshare.load`. ``hooks`` is the typed facade the
    flow calls; ``key_handle()`` loads the contract key once.
    """

    def __init__(
        self,
        config: Config,
        *,
        strict: bool | None = None,
        extra_plugins: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._key: KeyHandle | None = None
        self._key_lock = threading.Lock()
        plugin_set = PluginSet(config, strict=strict, key_handle=self.key_handle)
        plugin_set.load(dict(extra_plugins or {}))
        self.pm = plugin_set.pm
        self.plugins = plugin_set.instances
        self.broken: list[BrokenPlugin] = plugin_set.broken
        broken_sinks = {b.name: b.error for b in self.broken if b.family == "sinks"}
        self.hooks = Hooks(self.pm, strict=plugin_set.strict, broken_sinks=broken_sinks)

    def key_handle(self) -> KeyHandle:
        """The contract key, loaded through the key store on first use."""
        with self._key_lock:
            if self._key is None:
                self._key = self.hooks.key_handle()
            return self._key

    def close(self) -> None:
        for name in list(self.plugins):
            close = getattr(self.plugins[name], "close", None)
            if callable(close):
                close()

    def __enter__(self) -> PrivateShare:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(f"{n}={type(p).__name__}" for n, p in self.plugins.items())
        return f"PrivateShare({self.config.source}: {names})"


def load(
    source: str | Path | Mapping[str, Any] = "privateshare.toml",
    *,
    base_dir: str | Path | None = None,
    strict: bool | None = None,
    extra_plugins: Mapping[str, Any] | None = None,
) -> PrivateShare:
    """Build the framework from a TOML file path or an already-parsed dict.

    ``base_dir`` resolves relative paths (default: the file's directory, or the
    current directory for a dict). ``extra_plugins`` registers objects with
    hook implementations, by name, as if listed in ``[plugins] modules``.
    """
    config = load_config(source, Path(base_dir) if base_dir else None)
    return PrivateShare(config, strict=strict, extra_plugins=extra_plugins)


def loads(
    text: str,
    *,
    base_dir: str | Path | None = None,
    strict: bool | None = None,
    extra_plugins: Mapping[str, Any] | None = None,
) -> PrivateShare:
    """Build the framework from TOML text."""
    return load(
        parse_toml(text),
        base_dir=base_dir or Path.cwd(),
        strict=strict,
        extra_plugins=extra_plugins,
    )
