"""``privateshare config``: check a config file, or print its JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import DEFAULT_CONFIG, inspect_config, read_toml
from ..errors import ConfigError
from ..hooks.loading import check_config
from ..scale import check as scale_check
from .exitcodes import ExitCode


@click.group("config")
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


__all__ = ["config_group"]
