"""Old module paths, kept importing as deprecated aliases of the modules' new homes.

``import privateshare.hookspecs`` still works for third-party code: it warns once
(``DeprecationWarning`` naming the new path) and returns the new module itself, so
``privateshare.hookspecs is privateshare.hooks.specs``. Our own code never imports
an old path (pytest turns these warnings into errors for the test suite).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

#: Old import path -> new import path.
MOVED: dict[str, str] = {
    "privateshare.hookspecs": "privateshare.hooks.specs",
    "privateshare.manager": "privateshare.hooks.loading",
    "privateshare.facade": "privateshare.hooks.calls",
    "privateshare.plugin": "privateshare.hooks.plugin",
    "privateshare.plugins.sqlcommon": "privateshare.sqldb",
}


class _AliasLoader:  # a loader by protocol: importlib.abc costs ~20 ms at start-up
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new
        self.real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{self.old} is deprecated; import {self.new} instead",
            DeprecationWarning,
            stacklevel=2,  # warnings skips importlib's frames: this is the import
        )
        module = importlib.import_module(self.new)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the real module: give its own back.
        module.__spec__ = self.real_spec


class _AliasFinder:  # a meta path finder by protocol (find_spec)
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        loader = cast("Loader", _AliasLoader(fullname, new))  # a Loader by protocol
        return importlib.machinery.ModuleSpec(fullname, loader)


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
