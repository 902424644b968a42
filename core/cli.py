"""The ``privateshare`` command."""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click
import msgspec

from . import __version__
from .config import DEFAULT_CONFIG, inspect_config, read_toml
from .errors import (
    AuthorizationRequired,
    ConfigError,
    DigimeError,
    PrivateShareError,
)
from .manager import FAMILIES, check_config, discover
from .scale import check as scale_check


class ExitCode(enum.IntEnum):
    """What the command's exit status means; scripts can rely on these."""

    OK = 0
    PARTIAL = 1
    CONFIG = 2
    AUTHORIZATION = 3
    SERVER = 4
    PLUGIN = 5


def exit_code_for(exc: BaseException) -> ExitCode:
    if isinstance(exc, ConfigError):
        return ExitCode.CONFIG
    if isinstance(exc, AuthorizationRequired):
        return ExitCode.AUTHORIZATION
    if isinstance(exc, DigimeError):
        return ExitCode.SERVER
    return ExitCode.PLUGIN


class Group(click.Group):
    """Turns our errors into one clear message and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrivateShareError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="privateshare")
def main() -> None:
    """Run the digi.me Private Share flow and deliver the data to your storage."""


# --- plugins -------------------------------------------------------------------


def _type_name(kind: Any) -> str:
    """A short, readable type: ``int``, ``str | None``, ``'gzip' | 'brotli'``."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if kind is type(None):
        return "None"
    return getattr(kind, "__name__", str(kind))


def _options(struct: type[msgspec.Struct]) -> list[dict[str, Any]]:
    rows = []
    for f in msgspec.structs.fields(struct):
        default: Any
        if f.required:
            default = None
        elif f.default is not msgspec.NODEFAULT:
            default = f.default
        else:
            default = f.default_factory()
        rows.append(
            {
                "name": f.encode_name,
                "type": _type_name(f.type),
                "required": f.required,
                "default": default,
            }
        )
    return rows


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins per family, with their options; and broken ones."""
    report: dict[str, Any] = {}
    for family in FAMILIES.values():
        found, broken = discover(family.key)
        report[family.key] = {
            "namespace": family.namespace,
            "plugins": [
                {
                    "name": p.name,
                    "distribution": p.distribution,
                    "version": p.version,
                    "description": p.description,
                    "options": _options(p.options),
                }
                for p in found
            ],
            "broken": [
                {"name": b.name, "distribution": b.distribution, "error": b.error} for b in broken
            ],
        }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for key, family in report.items():
        label = FAMILIES[key].label
        console.print(f"\n[bold]{label}s[/bold] ({family['namespace']})")
        for p in family["plugins"]:
            console.print(
                f"  [green]{p['name']}[/green]  {p['distribution']} {p['version']}"
                f"  {p['description']}"
            )
            if p["options"]:
                table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
                for o in p["options"]:
                    default = "required" if o["required"] else f"= {o['default']!r}"
                    table.add_row("     ", o["name"], o["type"], default)
                console.print(table)
        for b in family["broken"]:
            console.print(f"  [red]{b['name']} (broken)[/red]  {b['distribution']}: {b['error']}")


# --- config --------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check a config file or print its JSON Schema."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG)
def config_check(file: Path) -> None:
    """Report every problem in FILE (default ./privateshare.toml), then exit 2 if any."""
    try:
        raw = read_toml(file)
    except ConfigError as exc:
        _print_problems(str(file), exc.problems)
        sys.exit(ExitCode.CONFIG)
    config, problems = inspect_config(raw, str(file), file.resolve().parent)
    problems += check_config(config)
    problems += scale_check(config)
    if problems:
        _print_problems(str(file), problems)
        sys.exit(ExitCode.CONFIG)
    sinks = ", ".join(f"{s.name} ({s.type})" for s in config.sinks.values()) or "none"
    click.echo(
        f"{file}: OK — keys {config.providers['keys'].type}, "
        f"tokens {config.providers['tokens'].type}, sinks {sinks}"
    )


def _print_problems(source: str, problems: list[str]) -> None:
    click.echo(f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:", err=True)
    for problem in problems:
        click.echo(f"  - {problem}", err=True)


@config_group.command("schema")
def config_schema_command() -> None:
    """Print the JSON Schema of the config, with every installed plugin's options."""
    from .schema import config_schema

    click.echo(json.dumps(config_schema(), indent=2, default=str))


def _attach_commands() -> None:
    from .commands import COMMANDS
    from .demo import demo_command
    from .keycommands import keys_group
    from .sandbox.command import sandbox_command
    from .scaffold import plugin_group
    from .scale.commands import COMMANDS as SCALE_COMMANDS

    for command in (
        *COMMANDS,
        *SCALE_COMMANDS,
        demo_command,
        sandbox_command,
        plugin_group,
        keys_group,
    ):
        main.add_command(command)


_attach_commands()

__all__ = ["ExitCode", "main"]
