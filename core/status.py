"""``privateshare status``: per user, the token, the last run, and what needs a person.

The question an operator asks every morning, answered from the token store alone
(nothing is sent to digi.me): is each user's token usable, when did their last
pull run and how did it end, how many files reached each sink or failed, and
which source accounts need the user to reauthorize. The last run is the record
the flow saves at the end of every pull (``privateshare_run_record_save``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .errors import PrivateShareError

if TYPE_CHECKING:
    from .framework import PrivateShare
    from .models import RunSummary

log = logging.getLogger(__name__)

__all__ = ["TokenState", "UserStatus", "render", "run_record", "status_dict", "user_statuses"]

#: Failures kept in a run record (their names and reasons), beyond which only the count is.
RECORD_FAILURES = 10


class TokenState(msgspec.Struct, kw_only=True):
    """Whether a user's saved token can be used, without asking digi.me."""

    #: ``valid``, ``access-expired`` (refreshed by the next pull), ``refresh-expired``
    #: (authorize again), ``staged`` (an answer awaiting verification), ``none``, ``unreadable``.
    state: str
    access_expires_at: float | None = None
    refresh_expires_at: float | None = None
    #: What to do, when something is to be done.
    action: str | None = None


class UserStatus(msgspec.Struct, kw_only=True):
    """One user's line of ``privateshare status``."""

    user_id: str
    token: TokenState
    #: The record of the last pull (see :func:`run_record`), or None if none was recorded.
    last_run: dict[str, Any] | None = None
    #: Account id -> reauthorize URL of the last run (empty URL when none was given).
    reauthorize: dict[str, str] = {}

    @property
    def needs_attention(self) -> bool:
        run = self.last_run or {}
        return bool(self.token.action or self.reauthorize or (run and not run.get("ok", False)))


def run_record(
    summary: RunSummary | None, user_id: str, started: float, error: str | None
) -> dict[str, Any]:
    """The JSON-able record of a pull saved for ``status`` (the summary, trimmed and timed)."""
    now = time.time()
    if summary is None:
        return {
            "run_id": "-",
            "user_id": user_id,
            "started_at": started,
            "finished_at": now,
            "final_state": "failed",
            "ok": False,
            "files_delivered": 0,
            "files_skipped": 0,
            "files_failed": 0,
            "bytes_delivered": 0,
            "sinks": {},
            "failures": [],
            "accounts": {},
            "reauthorize": {},
            "error": error,
        }
    return {
        "run_id": summary.run_id,
        "user_id": user_id,
        "started_at": started,
        "finished_at": now,
        "final_state": summary.final_state,
        "ok": summary.ok,
        "files_delivered": summary.files_delivered,
        "files_skipped": summary.files_skipped,
        "files_failed": summary.files_failed_total,
        "bytes_delivered": summary.bytes_delivered,
        "sinks": dict(summary.sinks_delivered),
        "failures": [
            {"name": f.name, "reason": f.reason} for f in summary.files_failed[:RECORD_FAILURES]
        ],
        "accounts": {a: d.state for a, d in summary.accounts.items()},
        "reauthorize": dict(summary.reauthorize_urls),
        "error": summary.error,
    }


def token_state(fw: PrivateShare, user_id: str, now: float | None = None) -> TokenState:
    """The user's token as saved, judged by its expiries (no network)."""
    now = time.time() if now is None else now
    try:
        token = fw.hooks.token_load(user_id)
    except PrivateShareError as exc:
        return TokenState(state="unreadable", action=str(exc))
    if token is None:
        return TokenState(state="none", action=f"run `privateshare authorize --user {user_id}`")
    access = token.access_token.expiry or None
    refresh = token.refresh_token.expiry or None
    state = TokenState(state="valid", access_expires_at=access, refresh_expires_at=refresh)
    if token.staged is not None and not (token.access_token.value or token.refresh_token.value):
        state.state = "staged"
        state.action = "the next pull verifies the token server's saved answer"
    elif token.refresh_token.expired(now, leeway=0):
        state.state = "refresh-expired"
        state.action = f"run `privateshare authorize --user {user_id}` again"
    elif token.access_token.expired(now, leeway=0):
        state.state = "access-expired"  # the next pull refreshes it: nothing to do
    return state


def user_statuses(fw: PrivateShare, user_ids: list[str] | None = None) -> list[UserStatus]:
    """Every user's status (or those of ``user_ids``), from the token store alone."""
    users = fw.hooks.token_users() if user_ids is None else list(user_ids)
    result: list[UserStatus] = []
    for user_id in users:
        try:
            record = fw.hooks.run_record_load(user_id)
        except PrivateShareError as exc:
            record = {"ok": False, "final_state": "unknown", "error": f"unreadable: {exc}"}
        reauthorize = dict((record or {}).get("reauthorize") or {})
        result.append(
            UserStatus(
                user_id=user_id,
                token=token_state(fw, user_id),
                last_run=record,
                reauthorize=reauthorize,
            )
        )
    return result


def status_dict(status: UserStatus) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(status)
    data["needs_attention"] = status.needs_attention
    return data


def _when(seconds: float | None) -> str:
    if not seconds:
        return "-"
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(statuses: list[UserStatus], echo: Callable[[str], None] = click.echo) -> None:
    """One table: a row per user, then what needs doing."""
    if not statuses:
        echo("no users with a saved token; authorize one with `privateshare authorize --user ID`")
        return
    header = ("user", "token", "expires", "last run", "state", "delivered", "failed", "per sink")
    rows = [header]
    for s in statuses:
        run = s.last_run or {}
        sinks = ", ".join(
            f"{k.removeprefix('sinks.')} {v}" for k, v in sorted((run.get("sinks") or {}).items())
        )
        rows.append(
            (
                s.user_id,
                s.token.state,
                _when(s.token.refresh_expires_at or s.token.access_expires_at),
                _when(run.get("finished_at")) if run else "never",
                str(run.get("final_state", "-")) if run else "-",
                str(run.get("files_delivered", "-")) if run else "-",
                str(run.get("files_failed", "-")) if run else "-",
                sinks or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for s in statuses:
        run = s.last_run or {}
        if s.token.action:
            echo(f"user {s.user_id}: token {s.token.state}: {s.token.action}")
        for account, url in s.reauthorize.items():
            echo(f"user {s.user_id}: account {account} needs the user to reauthorize: {url}")
        if run.get("error"):
            echo(f"user {s.user_id}: last run stopped: {run['error']}")
        for failure in run.get("failures") or []:
            echo(f"user {s.user_id}: failed {failure['name']}: {failure['reason']}")
