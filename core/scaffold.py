"""Deprecated: moved to :mod:`privateshare.cli.scaffold`.

This alias will go in a future release.
"""

from __future__ import annotations

from ._deprecated import forward

__getattr__ = forward(
    "privateshare.scaffold",
    "privateshare.cli.scaffold",
    {
        "FAMILIES": "privateshare.cli.scaffold",
        "PluginNames": "privateshare.cli.scaffold",
        "plugin_group": "privateshare.cli.scaffold",
        "render": "privateshare.cli.scaffold",
        "scaffold": "privateshare.cli.scaffold",
    },
)

if __name__ == "__main__":  # pragma: no cover - `python -m privateshare.scaffold`
    from privateshare.cli.scaffold import plugin_group

    plugin_group()
