"""Delivery: one file into every sink, committed everywhere or nowhere.

The flow's ``Run`` calls :func:`deliver` once per file. It opens one writer per
sink (if any sink cannot take the file, the writers already open are aborted),
streams the plaintext through the transforms into every writer, and commits them
only once the stream is exhausted, because decryption reports some failures
(padding, hash) only at the end. Any failure aborts every writer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import SinkError

if TYPE_CHECKING:
    from .hooks.calls import Hooks
    from .models import DataFile, RunInfo
    from .sinks import FileWriter

__all__ = ["abort_all", "deliver", "sink_writers"]

log = logging.getLogger(__name__)


def sink_writers(hooks: Hooks, run: RunInfo, file: DataFile) -> list[tuple[str, FileWriter]]:
    """One writer per sink; if any sink cannot take the file, none is left open."""
    if hooks.broken_sinks:
        name, error = next(iter(hooks.broken_sinks.items()))
        raise SinkError(f"sink {name} is broken and cannot take files: {error}")
    writers: list[tuple[str, FileWriter]] = []
    try:
        for name, writer in hooks.sink_open_file(run, file):
            if writer is not None:
                writers.append((name, writer))
    except BaseException:
        abort_all(writers)
        raise
    return writers


def deliver(
    hooks: Hooks, run: RunInfo, file: DataFile, chunks: Iterable[bytes | memoryview]
) -> tuple[int, list[str]]:
    """Stream one file through the transforms into every sink; commit all or abort all.

    Returns the plaintext bytes written and the sinks that committed.
    """
    writers = sink_writers(hooks, run, file)
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
