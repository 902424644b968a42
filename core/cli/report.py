"""How commands show progress: rich on a terminal, plain lines otherwise, JSON on request.

Every line about a file names its user. A failed file is printed once, by the log
handler (the flow logs it as a warning), and once more in the summary.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import msgspec

from ..models import LibraryStatus, RunSummary
from . import logs


class Reporter:
    """Receives flow progress events and prints them the way the terminal wants."""

    def __init__(self, *, as_json: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet or as_json or logs.quiet
        self.rich = sys.stderr.isatty() and not self.quiet
        self._lock = threading.Lock()
        self._progress: Any = None
        self._task: Any = None

    @contextmanager
    def live(self, label: str) -> Iterator[Reporter]:
        if not self.rich:
            yield self
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as progress:
            self._progress = progress
            self._task = progress.add_task(label, total=None, files=0)
            logs.live_console = progress.console
            try:
                yield self
            finally:
                logs.live_console = None
                self._progress = None

    def for_user(self, user_id: str) -> Callable[[str, Any], None]:
        """The progress callback of one user's run (the flow asks for one per user)."""
        return lambda event, data: self.event(user_id, event, data)

    def __call__(self, event: str, data: Any) -> None:
        self.event(None, event, data)

    def event(self, user_id: str | None, event: str, data: Any) -> None:
        if self.quiet:
            return
        with self._lock:
            if self._progress is not None:
                self._rich_event(user_id, event, data)
            else:
                self._plain_event(user_id, event, data)

    def _rich_event(self, user_id: str | None, event: str, data: Any) -> None:
        task = self._progress.tasks[0]
        who = f"user {user_id}: " if user_id else ""
        if event == "file":
            name, size = data
            self._progress.update(
                self._task,
                advance=size,
                files=task.fields["files"] + 1,
                description=f"{who}{name}",
            )
        elif event == "status":
            self._progress.update(self._task, description=f"{who}library {data.state}")

    def _plain_event(self, user_id: str | None, event: str, data: Any) -> None:
        who = f"user {user_id}: " if user_id else ""
        if event == "file":
            name, size = data
            self._line(f"{who}delivered {name} ({size} bytes)", user_id, event, file=name)
        elif event == "status":
            assert isinstance(data, LibraryStatus)
            self._line(f"{who}library {data.state}", user_id, event)

    @staticmethod
    def _line(text: str, user_id: str | None, event: str, file: str | None = None) -> None:
        """A progress line on stderr; under ``--log-format json`` an info log record."""
        if logs.json_mode:
            extra = {"user_id": user_id, "event": event, **({"file": file} if file else {})}
            logging.getLogger("privateshare.progress").info(text, extra=extra)
        else:
            click.echo(text, err=True)

    def summaries(self, summaries: list[RunSummary], *, config_path: Any = None) -> None:
        if self.as_json:
            click.echo(json.dumps([summary_dict(s) for s in summaries], indent=2))
            return
        for s in summaries:
            line = (
                f"user {s.user_id}: {s.files_delivered} delivered "
                f"({s.bytes_delivered} bytes), {s.files_skipped} skipped, "
                f"{s.files_failed_total} failed; library {s.final_state}; {s.duration_s:.1f}s"
            )
            click.echo(line)
            if len(s.sinks_delivered) > 1 or s.sinks_backfilled:
                per_sink = ", ".join(f"{k} {v}" for k, v in sorted(s.sinks_delivered.items()))
                click.echo(f"  delivered per sink: {per_sink or 'none'}")
            for note in s.notes:
                click.echo(f"  note: {note}")
            for failure in s.files_failed:
                click.echo(f"  user {s.user_id}: failed {failure.name}: {failure.reason}")
            if s.files_failed_total > len(s.files_failed):
                unlisted = s.files_failed_total - len(s.files_failed)
                click.echo(f"  … and {unlisted} more failed (see the log)")
            for account, url in s.reauthorize_urls.items():
                click.echo(f"  account {account} needs the user to reauthorize: {url}")
                if config_path is not None:
                    from ..config import command_hint

                    click.echo(
                        f"    or run: {command_hint('reauthorize', config_path)} "
                        f"--user {s.user_id} --account {account}"
                    )
            if s.error:
                click.echo(f"  stopped early: {s.error}")


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(summary)
    data["ok"] = summary.ok
    return data
