"""Delivery: one file into every sink, committed everywhere or nowhere.

The flow's ``Run`` calls :func:`deliver` once per file. It checks the file's user
id and name once (:func:`privateshare.sinks.names_checked`), before any sink sees
them, then opens one writer per sink (if any sink cannot take the file, the
writers already open are aborted),
streams the plaintext through the transforms into every writer, and commits them
only once the stream is exhausted, because decryption reports some failures
(padding, hash) only at the end. Any failure aborts every writer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from .errors import SinkError
from .sinks import names_checked

if TYPE_CHECKING:
    from .hooks.calls import Hooks
    from .models import DataFile, RunInfo
    from .sinks import FileWriter

__all__ = ["abort_all", "deliver", "sink_writers"]

log = logging.getLogger(__name__)


def sink_writers(
    hooks: Hooks, run: RunInfo, file: DataFile, only: Collection[str] | None = None
) -> list[tuple[str, FileWriter]]:
    """One writer per sink (of ``only``, if given); if any sink cannot take the file, none
    is left open.

    An unsafe user id or file name fails here, before any sink is asked.
    """
    broken = [n for n in hooks.broken_sinks if only is None or n in only]
    if broken:
        name = broken[0]
        raise SinkError(f"sink {name} is broken and cannot take files: {hooks.broken_sinks[name]}")
    writers: list[tuple[str, FileWriter]] = []
    with names_checked(run, file):
        try:
            for name, writer in hooks.sink_open_file(run, file, only=only):
                if writer is not None:
                    writers.append((name, writer))
        except BaseException:
            abort_all(writers)
            raise
    return writers


def deliver(
    hooks: Hooks,
    run: RunInfo,
    file: DataFile,
    chunks: Iterable[bytes | memoryview],
    only: Collection[str] | None = None,
) -> tuple[int, list[str]]:
    """Stream one file through the transforms into every sink (of ``only``, if given: the
    sinks that lack it); commit all or abort all.

    Returns the plaintext bytes written and the sinks that committed.
    """
    writers = sink_writers(hooks, run, file, only)
    size = 0
    try:
        for chunk in hooks.transform(file, iter(chunks)):
            size += len(chunk)
            for _name, writer in writers:
                writer.write(chunk)
        for _name, writer in writers:
            writer.commit()
    except BaseException:
        abort_all(writers)
        raise
    return size, [name for name, _writer in writers]


def abort_all(writers: list[tuple[str, FileWriter]]) -> None:
    """Abort every writer, logging (not raising) the failures of individual aborts."""
    for name, writer in writers:
        try:
            writer.abort()
        except Exception:
            log.exception("sink %s failed to abort", name)
