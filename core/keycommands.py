"""Deprecated: ``keys`` is :data:`privateshare.cli.keys.keys_group`; its commands moved to
their plugins (``keys wrap``: :mod:`privateshare.plugins.keys_kms`, ``keys import-pkcs11``:
:mod:`privateshare.plugins.keys_pkcs11`). This alias will be removed in a future release.
"""

from __future__ import annotations

import warnings
from typing import Any

_NAMES = {
    "keys_group": "privateshare.cli",
    "wrap_command": "privateshare.plugins.keys_kms",
    "import_pkcs11_command": "privateshare.plugins.keys_pkcs11",
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'privateshare.keycommands' has no attribute {name!r}")
    warnings.warn(
        f"privateshare.keycommands is deprecated; import {name} from {_NAMES[name]}"
        + (
            " (run `privateshare keys ...` through privateshare.cli.main)"
            if name == "keys_group"
            else ""
        ),
        DeprecationWarning,
        stacklevel=2,
    )
    import importlib

    from privateshare.cli import main

    main.load_plugin_commands()  # the group's commands come from the key-store plugins
    if name == "keys_group":
        return main.commands["keys"]
    return getattr(importlib.import_module(_NAMES[name]), name)
