"""``privateshare worker | beat | enqueue | scale-status``: scale-out from the command line.

``worker`` and ``beat`` start the real Celery programs on our app; every option
after ``--config`` that we do not know is passed to Celery unchanged
(``privateshare worker -c p.toml --concurrency 4 -n w1@%h``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..cli.options import config_option
from ..config import load_config
from ..hooks import hookimpl

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _app(config_path: Path) -> Any:
    from .app import create_app

    return create_app(config_path)


@click.command("worker", context_settings=PASS_THROUGH)
@config_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(config_path: Path, celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker that pulls users (extra options go to `celery worker`)."""
    app = _app(config_path)
    args = list(celery_args)
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        args += ["--loglevel", "INFO"]
    app.worker_main(["worker", *args])


@click.command("beat", context_settings=PASS_THROUGH)
@config_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat_command(config_path: Path, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat: enqueue every user each [scale] every (extra options to `celery beat`)."""
    app = _app(config_path)
    if not app.conf.beat_schedule:
        raise click.UsageError(
            f"{config_path}: [scale] every is not set, so beat has nothing to schedule; add "
            'every = "15m" to [scale]'
        )
    app.start(["beat", *celery_args])


@click.command("enqueue")
@click.option("--user", "user_ids", multiple=True, help="Enqueue this user (repeatable).")
@click.option("--all-users", is_flag=True, help="Enqueue every user with a saved token.")
@click.option(
    "--include-dead", is_flag=True, help="With --all-users: also users in the dead letters."
)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def enqueue_command(
    user_ids: tuple[str, ...],
    all_users: bool,
    include_dead: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Send pull tasks to the workers; users already queued or running are left alone."""
    from .app import enqueue_users

    if bool(user_ids) == all_users:
        raise click.UsageError("give --user ID (one or more) or --all-users")
    outcome = enqueue_users(
        config_path,
        list(user_ids) if user_ids else None,
        all_users=all_users,
        revive=True if include_dead else None,
    )
    if as_json:
        click.echo(json.dumps(outcome.as_dict()))
        return
    click.echo(f"enqueued {len(outcome.enqueued)} users (batch {outcome.batch})")
    for user_id, state in outcome.busy.items():
        click.echo(f"  {user_id}: not enqueued, its pull is {state}", err=True)


@click.command("scale-status")
@click.option("--user", "user_ids", multiple=True, help="Only this user (repeatable).")
@click.option("--state", "states", multiple=True, help="Only users in this state (repeatable).")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status_command(
    user_ids: tuple[str, ...], states: tuple[str, ...], config_path: Path, as_json: bool
) -> None:
    """Show queued / running / last result per user, and the broker's queue length."""
    import msgspec

    from .app import create_app, queue_length, status

    config = load_config(config_path)
    rows = status(config, list(user_ids) or None)
    if states:
        rows = [r for r in rows if r.state in states]
    settings = config.scale
    waiting = queue_length(create_app(config), settings.queue) if settings else None
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    if as_json:
        click.echo(
            json.dumps(
                {
                    "queue": settings.queue if settings else None,
                    "queue_length": waiting,
                    "counts": counts,
                    "users": msgspec.to_builtins(rows),
                }
            )
        )
        return
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no users yet"
    broker = "unknown (broker unreachable)" if waiting is None else str(waiting)
    click.echo(f"{summary}; messages waiting in the queue: {broker}")
    now = time.time()
    for row in rows:
        when = row.finished_at or row.started_at or row.queued_at
        ago = f"{now - when:.0f}s ago" if when else ""
        detail = ""
        if row.result and not row.result.get("skipped"):
            detail = (
                f"{row.result.get('files_delivered', 0)} delivered, "
                f"{row.result.get('files_failed_total', 0)} failed"
            )
        if row.error:
            detail = f"{detail}; {row.error}" if detail else row.error
        click.echo(f"{row.user_id}  {row.state}  {ago}  {row.worker or ''}  {detail}".rstrip())


COMMANDS = [worker_command, beat_command, enqueue_command, status_command]


@hookimpl
def privateshare_register_commands(cli: click.Group) -> None:
    """Add the scale-out commands to the ``privateshare`` group."""
    for command in COMMANDS:
        cli.add_command(command)
