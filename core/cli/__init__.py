"""The ``privateshare`` command line: one package, no heavy imports until a command runs.

``main`` is the console entry point (``privateshare = "privateshare.cli:main"``).
Built-in commands live in the modules of this package (``run``: authorize, pull, …;
``keys``, ``demo``, ``plugins``, ``configcmd``, ``scaffold``); plugins add their own
through the ``privateshare_register_commands`` hook.
"""

from __future__ import annotations

from .exitcodes import ExitCode, exit_code_for
from .root import main

__all__ = ["ExitCode", "exit_code_for", "main"]
