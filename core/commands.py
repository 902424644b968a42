"""Deprecated: moved to :mod:`privateshare.cli.run`.

This alias will go in a future release.
"""

from __future__ import annotations

from ._deprecated import forward

__getattr__ = forward(
    "privateshare.commands",
    "privateshare.cli.run",
    {
        "COMMANDS": "privateshare.cli.run:COMMANDS",
        "authorize_command": "privateshare.cli.run",
        "pull_command": "privateshare.cli.run",
        "accounts_command": "privateshare.cli.run",
        "users_command": "privateshare.cli.run",
        "delete_user_command": "privateshare.cli.run",
        "config_option": "privateshare.cli.options",
        "json_option": "privateshare.cli.options",
        "open_flow": "privateshare.cli.options",
        "exit_for": "privateshare.cli.options",
    },
)
