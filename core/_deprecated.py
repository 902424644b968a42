"""Old module paths kept working: each warns once and forwards to the new home."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def forward(old: str, new: str, names: dict[str, str]) -> Any:
    """A module ``__getattr__`` for ``old``: ``names`` maps attribute -> "module:attribute"."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old} is deprecated; import {name} from {new} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        module_name, _, attribute = names[name].partition(":")
        return getattr(importlib.import_module(module_name), attribute or name)

    return __getattr__
