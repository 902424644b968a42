"""The root ``privateshare`` group: built-in commands load on first use, plugins add theirs.

Nothing heavy is imported until a command runs: ``--version`` needs click only, and
``--help`` imports the command modules and the hook plugins of the entry-point group
``privateshare``, whose ``privateshare_register_commands`` may add commands.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import click

from .. import __version__
from ..errors import PrivateShareError
from .exitcodes import exit_code_for
from .keys import keys_group

#: Built-in commands: name -> "module:attribute", imported when first resolved.
BUILTIN_COMMANDS: dict[str, str] = {
    "demo": "privateshare.cli.demo:demo_command",
    "sandbox": "privateshare.sandbox.command:sandbox_command",
    "authorize": "privateshare.cli.run:authorize_command",
    "pull": "privateshare.cli.run:pull_command",
    "accounts": "privateshare.cli.run:accounts_command",
    "users": "privateshare.cli.run:users_command",
    "delete-user": "privateshare.cli.run:delete_user_command",
    "plugins": "privateshare.cli.plugins:plugins_command",
    "config": "privateshare.cli.configcmd:config_group",
    "plugin": "privateshare.cli.scaffold:plugin_group",
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
        try:
            return super().invoke(ctx)
        except PrivateShareError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))

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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="privateshare")
def main() -> None:
    """Run the digi.me Private Share flow and deliver the data to your storage."""


main.add_command(keys_group)

__all__ = ["BUILTIN_COMMANDS", "CommandPlugin", "Group", "main"]
