"""``privateshare status``: one table a morning (the logic: :mod:`privateshare.status`).

With a ``[scale]`` table, each user's pull task too: queued, running, done, failed or dead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .options import config_option, json_option

if TYPE_CHECKING:
    from ..framework import PrivateShare


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
        queue = _queue(fw, [s.user_id for s in statuses]) if fw.config.scale else {}
    if as_json:
        rows = [status_dict(s) for s in statuses]
        for row in rows:
            if row["user_id"] in queue:
                row["queue"] = queue[row["user_id"]]
        click.echo(json.dumps(rows, indent=2))
        return
    render(statuses)
    for user_id, task in queue.items():
        where = f" on {task['worker']}" if task.get("worker") else ""
        click.echo(f"user {user_id}: pull {task['state']}{where} (scale-out)")


def _queue(fw: PrivateShare, users: list[str]) -> dict[str, dict[str, Any]]:
    """With ``[scale]``: each user's pull task as the workers' shared database knows it."""
    from ..scale import status as scale_status

    return {row.user_id: msgspec.to_builtins(row) for row in scale_status(fw, users)}
