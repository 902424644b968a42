"""How commands show progress: rich on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import msgspec

from ..models import LibraryStatus, RunSummary


class Reporter:
    """Receives flow progress events and prints them the way the terminal wants."""

    def __init__(self, *, as_json: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet or as_json
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
            try:
                yield self
            finally:
                self._progress = None

    def __call__(self, event: str, data: Any) -> None:
        if self.quiet:
            return
        with self._lock:
            if self._progress is not None:
                self._rich_event(event, data)
            else:
                self._plain_event(event, data)

    def _rich_event(self, event: str, data: Any) -> None:
        task = self._progress.tasks[0]
        if event == "file":
            _name, size = data
            self._progress.update(self._task, advance=size, files=task.fields["files"] + 1)
        elif event == "status":
            self._progress.update(self._task, description=f"library {data.state}")
        elif event == "failed":
            name, error = data
            self._progress.console.print(f"[red]failed[/red] {name}: {error}")

    def _plain_event(self, event: str, data: Any) -> None:
        if event == "file":
            name, size = data
            click.echo(f"delivered {name} ({size} bytes)", err=True)
        elif event == "status":
            assert isinstance(data, LibraryStatus)
            click.echo(f"library {data.state}", err=True)
        elif event == "failed":
            name, error = data
            click.echo(f"failed {name}: {error}", err=True)

    def summaries(self, summaries: list[RunSummary]) -> None:
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
            for failure in s.files_failed:
                click.echo(f"  failed {failure.name}: {failure.reason}")
            if s.files_failed_total > len(s.files_failed):
                unlisted = s.files_failed_total - len(s.files_failed)
                click.echo(f"  … and {unlisted} more failed (see the log)")
            for account, url in s.reauthorize_urls.items():
                click.echo(f"  account {account} needs the user to reauthorize: {url}")
            if s.error:
                click.echo(f"  stopped early: {s.error}")


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    data = msgspec.to_builtins(summary)
    data["ok"] = summary.ok
    return data
