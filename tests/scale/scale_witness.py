"""A hooks module the test workers load: an independent witness of who pulled whom, when.

Each run start appends ``start <user> <pid>`` to ``runs.log`` and takes an OS lock on
the user's file without waiting; finding it taken means another process is pulling
the same user at this moment, which is written to ``overlaps.log``. The OS drops the
lock of a killed process, as it would drop a machine's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from privateshare import hookimpl

_held: dict[str, int] = {}


def _here() -> Path:
    return Path(os.environ["PRIVATESHARE_WITNESS_DIR"])


def _log(name: str, line: str) -> None:
    fd = os.open(_here() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@hookimpl
def privateshare_sink_open_run(run):
    name = hashlib.sha256(run.user_id.encode()).hexdigest()[:24]
    fd = os.open(_here() / f"{name}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log("overlaps.log", f"{run.user_id} {os.getpid()}")
        os.close(fd)
    else:
        _held[run.run_id] = fd
    _log("runs.log", f"start {run.user_id} {os.getpid()} {run.run_id}")


@hookimpl
def privateshare_sink_close_run(run, summary):
    _log("runs.log", f"end {run.user_id} {os.getpid()} {run.run_id}")
    fd = _held.pop(run.run_id, None)
    if fd is not None:
        os.close(fd)
