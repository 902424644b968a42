"""Deprecated: moved to :mod:`privateshare.cli.demo`.

This alias will go in a future release.
"""

from __future__ import annotations

from ._deprecated import forward

__getattr__ = forward(
    "privateshare.demo",
    "privateshare.cli.demo",
    {
        "DEMO_USER": "privateshare.cli.demo",
        "run_demo": "privateshare.cli.demo",
        "demo_command": "privateshare.cli.demo",
        "consent_as_browser": "privateshare.testing.sandboxed",
    },
)
