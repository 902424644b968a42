"""The ``memory`` sink: keeps committed files in a dict, for tests.

A test configures ``[sinks.mem] type = "memory"``, runs the flow, then looks at
``fw.plugins["sinks.mem"].files`` (or ``MemorySink.find("sinks.mem")``). Files
become visible only on ``commit`` and unsafe names are refused, exactly like
a real sink, so a test that passes against it checks the flow's all-or-nothing
handling too.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import msgspec

from ..errors import SinkError
from ..hooks import Plugin, PluginContext, hookimpl
from ..models import DataFile, RunInfo, RunSummary
from ..sinks import check_name

#: (user id, file name): the key of every dict the memory sink keeps.
FileKey = tuple[str, str]


class MemorySinkNotFound(KeyError):
    """No memory sink was created under that name (a KeyError with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0])


class MemorySink(Plugin):
    """Keeps committed files in memory: ``files[(user, name)] = bytes``."""

    description = "Keep committed files in a dict (for tests)."

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: File names whose commit raises SinkError, to test how a run handles a failing sink.
        fail_on_commit: list[str] = []

    #: Every instance by config name (``sinks.mem``); the newest one wins.
    registry: ClassVar[dict[str, MemorySink]] = {}

    def __init__(self, options: MemorySink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self._lock = threading.Lock()
        #: Committed file contents.
        self.files: dict[FileKey, bytes] = {}
        #: The DataFile each committed file was delivered with (metadata, updated_date).
        self.metadata: dict[FileKey, DataFile] = {}
        #: How many times each file was committed (an update counts again).
        self.commits: dict[FileKey, int] = {}
        self.runs_opened: list[RunInfo] = []
        self.runs_closed: list[tuple[RunInfo, RunSummary]] = []
        MemorySink.registry[context.name] = self

    @classmethod
    def create(cls, name: str = "sinks.memory", **options: object) -> MemorySink:
        """Build one outside a framework (tests of sinks, of the conformance suite)."""
        from pathlib import Path

        return cls(
            msgspec.convert(options, cls.Options), PluginContext(name=name, base_dir=Path.cwd())
        )

    @classmethod
    def find(cls, name: str) -> MemorySink:
        """The newest memory sink registered under a config name, e.g. ``sinks.mem``."""
        try:
            return cls.registry[name]
        except KeyError:
            known = ", ".join(sorted(cls.registry)) or "none"
            raise MemorySinkNotFound(
                f"no memory sink named {name!r} was created; known: {known}. Use the config "
                'name with its prefix, e.g. "sinks.mem" for [sinks.mem] type = "memory"'
            ) from None

    def read(self, user_id: str, name: str) -> bytes | None:
        """A committed file's bytes, or ``None``."""
        with self._lock:
            return self.files.get((user_id, name))

    def clear(self) -> None:
        """Forget every file and run."""
        with self._lock:
            self.files.clear()
            self.metadata.clear()
            self.commits.clear()
            self.runs_opened.clear()
            self.runs_closed.clear()

    def __repr__(self) -> str:
        return f"MemorySink({self.context.name}, {len(self.files)} files)"

    # hooks ----------------------------------------------------------------------

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Record the run, so tests can check it was opened."""
        check_name(run.user_id, what="user id", allow_slash=False)
        with self._lock:
            self.runs_opened.append(run)

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> MemoryWriter:
        """A writer that buffers the file and publishes it on commit.

        Names are checked with the file sink's rules, so a flow tested against
        the memory sink meets the same refusals as in production.
        """
        check_name(file.user_id, what="user id", allow_slash=False)
        check_name(file.name, user_id=file.user_id)
        return MemoryWriter(self, file)

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Record the run's summary."""
        with self._lock:
            self.runs_closed.append((run, summary))

    def _publish(self, file: DataFile, data: bytes) -> None:
        if file.name in self.options.fail_on_commit:
            raise SinkError(
                f"sink {self.context.name}: commit of {file.name!r} failed on purpose "
                "(it is listed in fail_on_commit)"
            )
        key = (file.user_id, file.name)
        with self._lock:
            self.files[key] = data
            self.metadata[key] = file
            self.commits[key] = self.commits.get(key, 0) + 1


class MemoryWriter:
    """Buffers one file (copying each chunk) until commit."""

    def __init__(self, sink: MemorySink, file: DataFile) -> None:
        self._sink = sink
        self._file = file
        self._buffer = bytearray()
        self._state = "open"

    def __repr__(self) -> str:
        return f"MemoryWriter({self._file.name!r}, {self._state}, {len(self._buffer)} bytes)"

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a copy of the chunk (it may be a view into a reused buffer)."""
        if self._state != "open":
            raise SinkError(f"cannot write to {self._file.name!r}: the writer is {self._state}")
        self._buffer += chunk

    def commit(self) -> None:
        """Publish the file; an older version is replaced."""
        if self._state != "open":
            raise SinkError(f"cannot commit {self._file.name!r}: the writer is {self._state}")
        try:
            self._sink._publish(self._file, bytes(self._buffer))
        except BaseException:
            self._state = "aborted"
            raise
        finally:
            self._buffer = bytearray()
        self._state = "committed"

    def abort(self) -> None:
        """Drop the buffer; a committed file stays."""
        if self._state == "open":
            self._state = "aborted"
        self._buffer = bytearray()
