"""Deprecated: moved to :mod:`privateshare.cli.report`.

This alias will go in a future release.
"""

from __future__ import annotations

from ._deprecated import forward

__getattr__ = forward(
    "privateshare.report",
    "privateshare.cli.report",
    {
        "Reporter": "privateshare.cli.report",
        "summary_dict": "privateshare.cli.report",
    },
)
