"""What a sink returns for each file: a writer that commits all or nothing.

The flow streams decrypted chunks to one writer per sink, then commits every
writer; if anything fails, every writer is aborted. A writer must make the file
visible only on ``commit`` (temp file + rename, multipart complete, one
transaction), so a crash leaves nothing half-written.

For sink authors: subclass :class:`SinkWriter` (the open / committed / aborted
state machine, once for every sink) and implement ``_write``, ``_commit`` and
``_discard``; take the file's checked destination from :func:`file_target`
(delivery checks the names once, before any sink sees the file); write
:func:`metadata_document` when the sink keeps metadata beside the data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import unicodedata
from collections.abc import Container, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from .errors import SinkError, UnsafeFileNameError
from .models import DataFile, RunInfo

#: Temp files of sinks start with this; data files never do (such names are rejected).
TEMP_PREFIX = ".privateshare-tmp-"
#: Longest path component most file systems accept, in bytes.
MAX_COMPONENT_BYTES = 255
#: Longest name accepted from the server, in bytes of UTF-8 (S3 keys stop at 1024 too).
MAX_NAME_BYTES = 1024


@runtime_checkable
class FileWriter(Protocol):
    """Receives one file's plaintext, then commits or aborts."""

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk. ``chunk`` may be a view into a reused buffer: copy it to keep it."""
        ...

    def commit(self) -> None:
        """Make the file visible atomically, replacing an older version."""
        ...

    def abort(self) -> None:
        """Discard everything written; safe to call after a failed commit."""
        ...


# --- the writer base ------------------------------------------------------------

#: Where a writer is: taking chunks, made visible, or discarded.
WriterState = Literal["open", "committed", "aborted"]


class SinkWriter:
    """Base of a sink's :class:`FileWriter`: the all-or-nothing state machine.

    A subclass implements ``_write`` (append a chunk; copy it, it may be a view into
    a reused buffer), ``_commit`` (make the file visible atomically) and ``_discard``
    (drop what was written). The base keeps the rules every sink shares:

    - ``write`` and ``commit`` are refused unless the writer is open, with a
      :class:`SinkError` naming the file and the state (commit after abort, twice...);
    - ``size`` counts the bytes written;
    - a ``_commit`` that raises leaves the writer aborted, its data discarded;
    - ``abort`` is idempotent and leaves a committed file alone, so the flow can abort
      every writer of a file when a later sink fails;
    - a writer dropped while open (never committed or aborted) is discarded.
    """

    def __init__(self, file: DataFile, *, where: str | None = None) -> None:
        #: The file being written, as the flow handed it over.
        self.file = file
        #: How messages name the destination (default: the file name, quoted).
        self.where = repr(file.name) if where is None else where
        self.state: WriterState = "open"
        #: Bytes written so far.
        self.size = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where}, {self.state}, {self.size} bytes)"

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk. ``chunk`` may be a view into a reused buffer."""
        if self.state != "open":
            raise SinkError(f"cannot write to {self.where}: the writer is already {self.state}")
        self._write(chunk)
        self.size += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)

    def commit(self) -> None:
        """Make the file visible atomically; on failure the writer ends aborted."""
        if self.state != "open":
            raise SinkError(f"cannot commit {self.where}: the writer is already {self.state}")
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        self.state = "committed"

    def abort(self) -> None:
        """Discard everything written; safe to call twice, and after a commit (a no-op)."""
        if self.state != "open":
            return
        self.state = "aborted"
        self._discard()

    def __del__(self) -> None:
        # A writer dropped while open must not leave temp files or descriptors behind.
        with contextlib.suppress(Exception):
            if getattr(self, "state", None) == "open":
                self.abort()

    def metadata_document(self) -> dict[str, Any]:
        """The file's metadata document, with the size written (see :func:`metadata_document`)."""
        return metadata_document(self.file, self.size)

    # for subclasses -------------------------------------------------------------------

    def _write(self, chunk: bytes | memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        """Drop what was written; called once, when the writer is aborted (or its commit failed)."""


def metadata_document(file: DataFile, size: int) -> dict[str, Any]:
    """The one metadata document a sink keeps beside a file's data.

    The file sink writes it as ``<name>.metadata.json``, the S3 sink as a sidecar
    object, others as a column or a record: the same keys everywhere.
    """
    return {
        "user_id": file.user_id,
        "name": file.name,
        "updated_date": file.updated_date,
        "last_modified": file.last_modified,
        "size": size,
        "metadata": file.metadata.metadata,
        "compression": file.metadata.compression,
    }


def metadata_json(document: dict[str, Any]) -> bytes:
    """A metadata document as the bytes sinks store: indented JSON and a final newline."""
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


# --- where a file goes: names checked once -----------------------------------------


@dataclass(frozen=True)
class Target:
    """A file's checked destination: the user id and the file name's path segments."""

    user_id: str
    parts: tuple[str, ...]


_CHECKED: ContextVar[tuple[DataFile, Target] | None] = ContextVar(
    "privateshare_checked_target", default=None
)


def check_target(run: RunInfo, file: DataFile) -> Target:
    """Check a file's user id and name (the rules of :func:`check_name`) and return both."""
    user = file.user_id or run.user_id
    check_name(user, what="user id", allow_slash=False)
    return Target(user, tuple(check_name(file.name, user_id=user)))


@contextlib.contextmanager
def names_checked(run: RunInfo, file: DataFile) -> Iterator[Target]:
    """Check the names once, before the fan-out: sinks asking :func:`file_target` reuse it.

    :mod:`privateshare.delivery` opens every sink's writer inside this block, so an
    unsafe name fails before any sink is touched, third-party sinks included.
    """
    target = check_target(run, file)
    token = _CHECKED.set((file, target))
    try:
        yield target
    finally:
        _CHECKED.reset(token)


def file_target(run: RunInfo, file: DataFile, *, reserved_suffix: str | None = None) -> Target:
    """Where a sink puts ``file``: its user id and name segments, checked.

    Inside a delivery the names were checked once already, and only a sink's own rule
    is added (``reserved_suffix``: the suffix of the metadata file the sink writes beside
    each file). Called outside one (a sink's tests, the conformance suite), it checks
    everything itself, so a sink is safe however it is called.
    """
    checked = _CHECKED.get()
    if checked is not None and checked[0] is file:
        target = checked[1]
        if reserved_suffix:
            check_reserved_suffix(file.name, reserved_suffix, user_id=target.user_id)
        return target
    user = file.user_id or run.user_id
    check_name(user, what="user id", allow_slash=False)
    parts = check_name(file.name, reserved_suffix=reserved_suffix, user_id=user)
    return Target(user, tuple(parts))


# --- names from the server ---------------------------------------------------


def shown_name(value: str) -> str:
    """A name as it may appear in a message: escaped, and cut if very long."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "...'" + f" ({len(value)} characters)"


def _component_problem(part: str, limit: int) -> str | None:
    """Why one path component is unsafe, or ``None`` when it is fine."""
    if part == "":
        return "it has an empty path segment (a leading, trailing or doubled '/')"
    if part in (".", ".."):
        return f"it has a {part!r} segment, which could point outside the sink's root"
    if part.startswith(TEMP_PREFIX):
        return f"a segment starts with {TEMP_PREFIX!r}, which the sink reserves for temp files"
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (it contains a lone surrogate)"
    if size > limit:
        return f"a segment is {size} bytes long; the limit is {limit} bytes"
    return None


def check_name(
    name: str,
    *,
    what: str = "file name",
    allow_slash: bool = True,
    reserved_suffix: str | None = None,
    user_id: str | None = None,
) -> list[str]:
    """Check a server-supplied name (or a user id) and return its path segments.

    Rejects, with :class:`UnsafeFileNameError` naming the value and the reason:
    empty names, absolute paths, backslashes, NUL and other control characters,
    ``.``/``..`` segments, the temp prefix, segments over 255 bytes, names over
    1024 bytes, and (when ``allow_slash`` is false, as for user ids) any ``/`` at all.
    """

    def unsafe(reason: str) -> UnsafeFileNameError:
        return _unsafe(name, what, user_id, reason)

    if not isinstance(name, str) or name == "":
        raise unsafe("it is empty")
    if name.startswith("/"):
        raise unsafe("it is an absolute path")
    if "\\" in name:
        raise unsafe("it contains a backslash, a path separator on Windows")
    for char in name:
        if unicodedata.category(char) == "Cc":
            raise unsafe(f"it contains the control character U+{ord(char):04X}")
    if not allow_slash and "/" in name:
        raise unsafe("it contains '/'")
    parts = name.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        limit = MAX_COMPONENT_BYTES
        if last and reserved_suffix:
            limit -= len(reserved_suffix.encode())
        problem = _component_problem(part, limit)
        if problem:
            if last and reserved_suffix and "bytes long" in problem:
                problem += f" (room is kept for the {reserved_suffix!r} file beside it)"
            raise unsafe(problem)
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise unsafe(f"it is {size} bytes long; names are limited to {MAX_NAME_BYTES} bytes")
    if reserved_suffix and name.endswith(reserved_suffix):
        raise unsafe(_SUFFIX_REASON.format(suffix=reserved_suffix))
    return parts


_SUFFIX_REASON = (
    "it ends with {suffix!r}, which the sink uses for metadata files "
    "(set metadata = false to accept such names)"
)


def check_reserved_suffix(name: str, suffix: str, *, user_id: str | None = None) -> None:
    """The rules :func:`check_name` adds for ``reserved_suffix``, alone (for a checked name)."""
    last = name.rsplit("/", 1)[-1]
    limit = MAX_COMPONENT_BYTES - len(suffix.encode())
    size = len(last.encode("utf-8"))
    if size > limit:
        raise _unsafe(
            name,
            "file name",
            user_id,
            f"a segment is {size} bytes long; the limit is {limit} bytes "
            f"(room is kept for the {suffix!r} file beside it)",
        )
    if name.endswith(suffix):
        raise _unsafe(name, "file name", user_id, _SUFFIX_REASON.format(suffix=suffix))


def _unsafe(name: str, what: str, user_id: str | None, reason: str) -> UnsafeFileNameError:
    owner = f" of user {shown_name(user_id)}" if user_id is not None else ""
    return UnsafeFileNameError(
        f"{what} {shown_name(name)}{owner} is unsafe: {reason}; nothing was written. "
        + (
            "Use a user id that is a plain name (no '/', '\\', '..' or control characters)."
            if what == "user id"
            else "The name comes from the server; the file is reported as failed "
            "and the rest of the run carries on."
        )
    )


# --- temp files ------------------------------------------------------------------


def temp_name() -> str:
    """A temp file name no data file can have, carrying this process's id for cleanup."""
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(top: Path, active: Container[str] | None = None) -> int:
    """Remove temp files under ``top`` left by writers that are gone; return how many.

    A temp file of a live process is kept. With ``active`` (the paths this process is
    writing now), this process's other temp files are leftovers of its aborted
    writers and go too; without it, they are kept.
    """
    removed = 0
    own = os.getpid()
    for path, name in _files_under(os.fspath(top)):
        if not name.startswith(TEMP_PREFIX):
            continue
        pid_text = name[len(TEMP_PREFIX) :].split("-", 1)[0]
        pid = int(pid_text) if pid_text.isdigit() else 0
        if pid == own:
            if active is None or path in active:
                continue
        elif pid and _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed


def _files_under(top: str) -> Iterator[tuple[str, str]]:
    """(path, name) of every non-directory under ``top``, as ``os.walk(top)`` would list them.

    Entries are handed on as they are read, not gathered per directory first as
    ``os.walk`` does: a user's directory of 50,000 files would be ~7 MiB of names at once.
    Symbolic links to directories are not followed; unreadable directories are skipped.
    """
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if not is_dir:
                    yield entry.path, entry.name
                elif not entry.is_symlink():
                    pending.append(entry.path)
