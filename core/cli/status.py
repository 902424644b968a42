"""``privateshare status``: one table a morning (the logic: :mod:`privateshare.status`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import config_option, json_option


@click.command("status")
@click.option("--user", "user_ids", multiple=True, help="Only this user (repeatable).")
@config_option
@json_option
def status_command(user_ids: tuple[str, ...], config_path: Path, as_json: bool) -> None:
    """Per user: token state and expiry, the last run, accounts needing reauthorization."""
    from ..framework import load
    from ..status import render, status_dict

    with load(config_path) as fw:
        statuses = fw.status(list(user_ids) or None)
    if as_json:
        click.echo(json.dumps([status_dict(s) for s in statuses], indent=2))
    else:
        render(statuses)
