"""Your own hook implementations, no packaging needed: count what each run delivered.

Enable it from the config, with this directory on ``PYTHONPATH``::

    [plugins]
    modules = ["counting_hooks"]

    $ PYTHONPATH=examples privateshare pull --config privateshare.toml --user alice

``privateshare_file_written`` is called once per file that reached every sink (from the
download workers, so concurrently: hence the lock); ``privateshare_run_finished`` once per
user when the run is over. This module counts objects per object type (mapped files say how
many objects they hold in their metadata, ``objectCount``) and raw files per mimetype, then
writes ``<user>.json`` into ``$PRIVATESHARE_COUNTS_DIR`` (default ``./privateshare-counts``),
atomically. A failing observer is logged and never stops a run.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from privateshare import hookimpl
from privateshare.models import DataFile, RunSummary

_lock = threading.Lock()
_counts: dict[str, dict[str, Counter[str]]] = {}


def report_dir() -> Path:
    """Where reports go: a module has no options table, so the environment says."""
    return Path(os.environ.get("PRIVATESHARE_COUNTS_DIR", "privateshare-counts"))


@hookimpl
def privateshare_file_written(user_id: str, file: DataFile, size: int, sinks: list[str]) -> None:
    """Count the file's objects (mapped) or the file itself (raw) for this user's run."""
    meta = file.metadata.metadata
    with _lock:
        counts = _counts.setdefault(user_id, {"objects": Counter(), "raw": Counter()})
        if file.kind == "mapped":
            counts["objects"][str(meta.get("objectType", "unknown"))] += int(
                meta.get("objectCount") or 0
            )
        else:
            counts["raw"][file.metadata.mimetype] += 1


@hookimpl
def privateshare_run_finished(summary: RunSummary) -> None:
    """Write this run's counts for the user, then forget them."""
    with _lock:
        counts = _counts.pop(summary.user_id, {"objects": Counter(), "raw": Counter()})
    report: dict[str, Any] = {
        "user_id": summary.user_id,
        "run_id": summary.run_id,
        "files_delivered": summary.files_delivered,
        "files_failed": len(summary.files_failed),
        "objects": dict(sorted(counts["objects"].items())),
        "raw_files": dict(sorted(counts["raw"].items())),
    }
    directory = report_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".counts-", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
    # The user id goes into a file name: keep it to one safe path component.
    safe = "".join(c if c.isalnum() or c in "-_@." else "_" for c in summary.user_id)
    os.replace(temp, directory / f"{safe.lstrip('.') or '_'}.json")
