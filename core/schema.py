"""Deprecated: moved to :mod:`privateshare.cli.schema`.

This alias will go in a future release.
"""

from __future__ import annotations

from ._deprecated import forward

__getattr__ = forward(
    "privateshare.schema",
    "privateshare.cli.schema",
    {
        "SECRET_SCHEMA": "privateshare.cli.schema",
        "config_schema": "privateshare.cli.schema",
        "plugin_table_schema": "privateshare.cli.schema",
        "struct_schema": "privateshare.cli.schema",
    },
)
