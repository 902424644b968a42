"""Options and helpers shared by the commands that load a config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_CONFIG
from .exitcodes import ExitCode

if TYPE_CHECKING:
    from ..flow import Flow
    from ..framework import PrivateShare
    from ..models import RunSummary


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG,
        show_default=True,
        help="The TOML config file.",
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def open_flow(config_path: Path) -> tuple[PrivateShare, Flow]:
    from ..flow import Flow
    from ..framework import load

    fw = load(config_path)
    return fw, Flow(fw)


def exit_for(summaries: list[RunSummary]) -> None:
    """Exit 1 (partial) when any run did not deliver everything."""
    if any(not s.ok for s in summaries):
        raise SystemExit(ExitCode.PARTIAL)


__all__ = ["config_option", "exit_for", "json_option", "open_flow"]
