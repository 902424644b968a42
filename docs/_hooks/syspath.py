"""MkDocs hook: keep the `privateshare` console script from shadowing the package.

When `mkdocs` runs as a console script, its bin/ directory is first on ``sys.path``; bin/ also
holds the `privateshare` script, which griffe (mkdocstrings' loader) would take for the package.
Dropping that directory makes griffe find the package as installed (editable or not).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority


@event_priority(100)  # before mkdocstrings reads sys.path in its own on_config
def on_config(config: Any) -> Any:
    scripts = {Path(sys.executable).parent.absolute(), Path(sys.argv[0]).parent.absolute()}
    sys.path[:] = [p for p in sys.path if not p or Path(p).absolute() not in scripts]
    return config
