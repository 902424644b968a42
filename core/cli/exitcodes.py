"""What the command's exit status means: one table for every command and error class.

``EXIT_CODES`` is the table docs/cli.md shows (a test keeps them equal), and
``ERROR_CODES`` maps each error class to its code, most specific first. Classes of
modules that may not be imported yet are named, not imported, so this module stays
cheap and an error can only be an instance of a class whose module is loaded.
"""

from __future__ import annotations

import enum

from ..errors import (
    AuthorizationRequired,
    ConfigError,
    DigimeError,
    KeyStoreError,
    OutputExists,
    PluginError,
    PrivateShareError,
    SecretUnavailable,
)


class ExitCode(enum.IntEnum):
    """What the command's exit status means; scripts can rely on these."""

    OK = 0
    PARTIAL = 1
    CONFIG = 2
    AUTHORIZATION = 3
    SERVER = 4
    PLUGIN = 5
    SECRET = 6
    TIMEOUT = 7
    INTERNAL = 70
    CANT_CREATE = 73
    INTERRUPTED = 130


#: code -> (what happened, what the operator does about it). docs/cli.md shows this table.
EXIT_CODES: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: ("success: everything delivered, library `completed`", "nothing"),
    ExitCode.PARTIAL: (
        "partial: some files failed, an account needs reauthorizing, or the run stopped early",
        "rerun later; `reauthorize` the accounts listed",
    ),
    ExitCode.CONFIG: (
        "configuration or usage error (the message names the file, table and key)",
        "fix the config or the command line; `privateshare config check`",
    ),
    ExitCode.AUTHORIZATION: (
        "authorization required: no saved token, it can no longer be refreshed, "
        "or the user declined consent",
        "run `privateshare authorize --user ID` with the user",
    ),
    ExitCode.SERVER: (
        "the digi.me API or the network failed (the message carries the API's error code "
        "and reference)",
        "retry later; report the reference to digi.me if it persists",
    ),
    ExitCode.PLUGIN: (
        "a plugin failed to load or run (a sink, the token store, the transport, a hook)",
        "read the message: it names the plugin and the fix",
    ),
    ExitCode.SECRET: (
        "a secret or the contract key cannot be read: variable not set, file missing, "
        "wrong password, key not on the HSM",
        "export the variable or fix the path named in the message",
    ),
    ExitCode.TIMEOUT: (
        "no consent arrived in time (`authorize` / `reauthorize` `--timeout`)",
        "run the command again and consent within the time",
    ),
    ExitCode.INTERNAL: (
        "internal error: a bug in privateshare or a plugin",
        "rerun with `-v` for the traceback and report it",
    ),
    ExitCode.CANT_CREATE: (
        "an output already exists and would be overwritten (`keys wrap --out`)",
        "pass `--force` or choose another output",
    ),
    ExitCode.INTERRUPTED: (
        "interrupted (Ctrl-C or SIGTERM); nothing was half-written",
        "rerun: delivered files are kept, the rest is delivered then",
    ),
}

#: Error class (or the name of a class defined in a module imported on demand) -> code.
ERROR_CODES: list[tuple[type[BaseException] | str, ExitCode]] = [
    (SecretUnavailable, ExitCode.SECRET),
    (ConfigError, ExitCode.CONFIG),
    (OutputExists, ExitCode.CANT_CREATE),
    (KeyStoreError, ExitCode.SECRET),
    (AuthorizationRequired, ExitCode.AUTHORIZATION),
    ("ConsentDenied", ExitCode.AUTHORIZATION),
    ("CallbackTimeout", ExitCode.TIMEOUT),
    (DigimeError, ExitCode.SERVER),
    (PluginError, ExitCode.PLUGIN),
    (PrivateShareError, ExitCode.PLUGIN),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
    (Exception, ExitCode.INTERNAL),
]


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status for an error that ended a command."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for kind, code in ERROR_CODES:
        if isinstance(kind, str) and kind in names:
            return code
        if isinstance(kind, type) and isinstance(exc, kind):
            return code
    return ExitCode.INTERNAL


__all__ = ["ERROR_CODES", "EXIT_CODES", "ExitCode", "exit_code_for"]
