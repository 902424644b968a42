"""``privateshare config``: check a config file, or print its JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import load_config
from .exitcodes import ExitCode
from .options import config_option, json_option


@click.group("config")
def config_group() -> None:
    """Check a config file or print its JSON Schema."""


@config_group.command("check")
@click.argument(
    "file", type=click.Path(dir_okay=False, path_type=Path), required=False, default=None
)
@config_option
@click.option(
    "--connect", is_flag=True, help="Also reach the databases, buckets, HSMs and KMS keys."
)
@json_option
def config_check(file: Path | None, config_path: Path, connect: bool, as_json: bool) -> None:
    """Check what a run needs, without contacting digi.me; exit 2 if anything is wrong.

    The config decodes, extras are installed, files and secrets resolve, hook modules
    import and match the hook specs, the contract key loads, sinks can open.
    """
    from ..checks import check

    path = file or config_path
    problems = check(path, connect=connect)
    if as_json:
        click.echo(json.dumps({"config": str(path), "problems": [p.to_dict() for p in problems]}))
        if problems:
            sys.exit(ExitCode.CONFIG)
        return
    if problems:
        _print_problems(str(path), [str(p) for p in problems])
        sys.exit(ExitCode.CONFIG)
    config = load_config(path)
    sinks = ", ".join(f"{s.name} ({s.type})" for s in config.sinks.values()) or "none"
    click.echo(
        f"{path}: OK — keys {config.providers['keys'].type}, "
        f"tokens {config.providers['tokens'].type}, sinks {sinks}"
        + (" (backends reached)" if connect else "")
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
