"""The root ``privateshare`` group: built-in commands load on first use, plugins add theirs.

Nothing heavy is imported until a command runs: ``--version`` needs click only, and
``--help`` imports the command modules and the hook plugins of the entry-point group
``privateshare``, whose ``privateshare_register_commands`` may add commands.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from .. import DOCS_URL
from ..errors import PrivateShareError
from .exitcodes import ExitCode, exit_code_for
from .keys import keys_group
from .logs import LEVELS, configure, level_for

#: Built-in commands: name -> "module:attribute", imported when first resolved.
BUILTIN_COMMANDS: dict[str, str] = {
    "demo": "privateshare.cli.demo:demo_command",
    "sandbox": "privateshare.sandbox.command:sandbox_command",
    "authorize": "privateshare.cli.run:authorize_command",
    "reauthorize": "privateshare.cli.run:reauthorize_command",
    "pull": "privateshare.cli.run:pull_command",
    "accounts": "privateshare.cli.manage:accounts_group",
    "services": "privateshare.cli.manage:services_command",
    "contract": "privateshare.cli.manage:contract_command",
    "users": "privateshare.cli.run:users_command",
    "delete-user": "privateshare.cli.run:delete_user_command",
    "plugins": "privateshare.cli.plugins:plugins_command",
    "config": "privateshare.cli.configcmd:config_group",
    "plugin": "privateshare.cli.scaffold:plugin_group",
    "status": "privateshare.cli.status:status_command",
}

#: The first line of each built-in command's help (a test keeps it equal to the command's).
BUILTIN_HELP: dict[str, str] = {
    "demo": "Run the whole flow against a local sandbox and show what arrived.",
    "sandbox": "Run a local emulator of the digi.me Public API (v1.7 and v1.5) on 127.0.0.1.",
    "authorize": "Get a user's consent; keep the token (ongoing) or read the data now (--once).",
    "reauthorize": "Reconnect a user's account that needs reauthorizing, or renew the user's "
    "consent.",
    "pull": "Receive new and updated files of a user (or all users) into every sink.",
    "accounts": "List the source accounts a user shared; delete one or get its revoke URL.",
    "services": "List the services a user can onboard (digi.me's discovery catalogue).",
    "contract": "Show what the configured contract allows: type, time range, data asked for.",
    "users": "List the users that have a saved token.",
    "delete-user": "Delete a user at digi.me and forget their token and checkpoint here.",
    "plugins": "List installed plugins per family with their options, hook plugins, broken ones.",
    "config": "Check a config file or print its JSON Schema.",
    "plugin": "Create plugin distributions.",
    "status": "Per user: token state and expiry, the last run, accounts needing reauthorization.",
}

#: The entry-point group of hook plugins (the same one ``PluginSet`` loads).
HOOK_GROUP = "privateshare"


@dataclass(frozen=True)
class CommandPlugin:
    """A hook plugin asked for commands: what it added, or why it failed."""

    name: str
    distribution: str
    commands: tuple[str, ...] = ()
    error: str | None = None


class Group(click.Group):
    """Turns our errors into one clear message and a meaningful exit code; loads lazily."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_plugins: list[CommandPlugin] | None = None

    def invoke(self, ctx: click.Context) -> Any:
        with _restored_logging(), _sigterm_interrupts():
            try:
                return super().invoke(ctx)
            except PrivateShareError as exc:
                click.echo(f"error: {exc}", err=True)
                ctx.exit(exit_code_for(exc))
            except KeyboardInterrupt:
                click.echo("interrupted: nothing was half-written; run the command again", err=True)
                ctx.exit(ExitCode.INTERRUPTED)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as exc:
                if logging.getLogger("privateshare").isEnabledFor(logging.DEBUG):
                    traceback.print_exc()
                click.echo(
                    f"internal error: {type(exc).__name__}: {exc}; this is a bug: rerun with -vv "
                    f"for the traceback and report it (see {DOCS_URL}contributing/)",
                    err=True,
                )
                ctx.exit(ExitCode.INTERNAL)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from ``BUILTIN_HELP``, so ``--help`` imports no command module."""
        self.load_plugin_commands()
        rows = []
        limit = formatter.width - 6 - max(len(n) for n in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None:
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                # As click shortens a command's help (its make_default_short_help is deprecated).
                short = click.Command(name, help=BUILTIN_HELP[name]).get_short_help_str(limit)
                rows.append((name, short))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugin_commands()
        return sorted({*BUILTIN_COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self.load_plugin_commands()
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in BUILTIN_COMMANDS:
            module_name, _, attribute = BUILTIN_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return command

    def load_plugin_commands(self) -> list[CommandPlugin]:
        """Ask every hook plugin for its commands, once; a broken one is recorded, not raised."""
        if self.command_plugins is None:
            self.command_plugins = []
            self.command_plugins = _register_plugin_commands(self)
        return self.command_plugins


def _register_plugin_commands(cli: click.Group) -> list[CommandPlugin]:
    from importlib import metadata

    import pluggy

    from ..hooks import specs

    pm = pluggy.PluginManager(specs.PROJECT)
    pm.add_hookspecs(specs)
    results: list[CommandPlugin] = []
    for entry_point in metadata.entry_points(group=HOOK_GROUP):
        dist = entry_point.dist.name if entry_point.dist is not None else "unknown"
        before = set(_all_command_paths(cli))
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=f"entry:{entry_point.name}")
            impl = pm.hook.privateshare_register_commands
            for hookimpl in impl.get_hookimpls():
                if hookimpl.plugin_name == f"entry:{entry_point.name}":
                    hookimpl.function(*[{"cli": cli}[arg] for arg in hookimpl.argnames])
        except Exception as exc:
            results.append(
                CommandPlugin(entry_point.name, dist, error=f"{type(exc).__name__}: {exc}")
            )
            continue
        added = tuple(sorted(set(_all_command_paths(cli)) - before))
        results.append(CommandPlugin(entry_point.name, dist, commands=added))
    return results


def _all_command_paths(group: click.Group, prefix: str = "") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        paths.append(f"{prefix}{name}")
        if isinstance(command, click.Group):
            paths.extend(_all_command_paths(command, f"{prefix}{name} "))
    return paths


@contextmanager
def _restored_logging() -> Iterator[None]:
    """Logging as it was before the command (for in-process runs: tests, notebooks)."""
    root, ours = logging.getLogger(), logging.getLogger("privateshare")
    before = (root.level, ours.level, list(root.handlers))
    try:
        yield
    finally:
        root.setLevel(before[0])
        ours.setLevel(before[1])
        for handler in list(root.handlers):
            if handler not in before[2]:
                root.removeHandler(handler)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd stop, kill) ends the command like Ctrl-C: cleanly, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", package_name="privateshare", prog_name="privateshare")
@click.option("-v", "--verbose", count=True, help="More log lines: -v info (retries), -vv debug.")
@click.option("-q", "--quiet", count=True, help="Fewer log lines: errors only.")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="Log level (overrides -v/-q).",
)
@click.option(
    "--log-format",
    type=click.Choice(["plain", "json"]),
    default="plain",
    show_default=True,
    help="Log lines as text or as one JSON object per line (for log shippers).",
)
def main(verbose: int, quiet: int, log_level: str | None, log_format: str) -> None:
    """Run the digi.me Private Share flow and deliver the data to your storage."""
    configure(level_for(verbose, quiet, log_level), log_format)


main.add_command(keys_group)


def keys_group_with_plugins() -> click.Group:
    """The ``keys`` group with its plugins' commands added (``keys wrap``, ...).

    What the deprecated ``privateshare.keycommands.keys_group`` gives: run it through
    :data:`main` (``privateshare keys ...``), which adds them on first use.
    """
    main.load_plugin_commands()
    return keys_group


__all__ = [
    "BUILTIN_COMMANDS",
    "DOCS_URL",
    "CommandPlugin",
    "Group",
    "keys_group_with_plugins",
    "main",
]
