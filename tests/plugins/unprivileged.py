"""Run a store operation as a user that file permissions apply to.

The tests run as root in some environments, and root ignores file modes; so when we
are root the operation runs in a forked child that has become ``nobody``. Otherwise
it runs in a forked child as ourselves (modes apply to us).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from privateshare.errors import TokenStoreError

NOBODY = 65534


@contextlib.contextmanager
def open_directory() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="privateshare-perm-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):  # modes set by a test must not stop the clean-up
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o700)
    shutil.rmtree(path)


def hand_over(path: Path) -> None:
    """Make ``path`` (recursively) belong to the user the operations run as."""
    if os.geteuid() != 0:
        return
    for sub in [path, *path.rglob("*")]:
        os.chown(sub, NOBODY, NOBODY, follow_symlinks=False)


def _child(fn: Callable[[], Any], conn: Any) -> None:
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logging.getLogger("privateshare").addHandler(Collect(logging.WARNING))
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        conn.send(("ok", fn(), warnings))
    except TokenStoreError as exc:
        conn.send(("TokenStoreError", str(exc), warnings))
    except BaseException as exc:  # reported, in full, by the parent
        conn.send((type(exc).__name__, traceback.format_exc(), warnings))
    finally:
        conn.close()


def run_as_other(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``fn()`` in a child whose file access is checked; its result and warnings logged.

    A :class:`TokenStoreError` in the child is raised here with the same message; any
    other exception fails the test with the child's traceback.
    """
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(fn, child))
    process.start()
    child.close()
    try:
        kind, value, warnings = parent.recv()
    finally:
        process.join(60)
    if kind == "TokenStoreError":
        raise TokenStoreError(value)
    if kind != "ok":
        pytest.fail(f"{kind} instead of a TokenStoreError:\n{value}")
    return value, warnings
