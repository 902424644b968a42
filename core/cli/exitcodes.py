"""What the command's exit status means: one table for every command and error class."""

from __future__ import annotations

import enum

from ..errors import AuthorizationRequired, ConfigError, DigimeError


class ExitCode(enum.IntEnum):
    """What the command's exit status means; scripts can rely on these."""

    OK = 0
    PARTIAL = 1
    CONFIG = 2
    AUTHORIZATION = 3
    SERVER = 4
    PLUGIN = 5


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status for an error that ended a command."""
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, AuthorizationRequired):
        return ExitCode.AUTHORIZATION
    if isinstance(exc, DigimeError):
        return ExitCode.SERVER
    return ExitCode.PLUGIN


__all__ = ["ExitCode", "exit_code_for"]
