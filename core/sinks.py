"""What a sink returns for each file: a writer that commits all or nothing.

The flow streams decrypted chunks to one writer per sink, then commits every
writer; if anything fails, every writer is aborted. A writer must make the file
visible only on ``commit`` (temp file + rename, multipart complete, one
transaction), so a crash leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import unicodedata
from collections.abc import Container
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import UnsafeFileNameError

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
    owner = f" of user {shown_name(user_id)}" if user_id is not None else ""

    def unsafe(reason: str) -> UnsafeFileNameError:
        return UnsafeFileNameError(
            f"{what} {shown_name(name)}{owner} is unsafe: {reason}; nothing was written. "
            + (
                "Use a user id that is a plain name (no '/', '\\', '..' or control characters)."
                if what == "user id"
                else "The name comes from the server; the file is reported as failed "
                "and the rest of the run carries on."
            )
        )

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
        raise unsafe(
            f"it ends with {reserved_suffix!r}, which the sink uses for metadata files "
            "(set metadata = false to accept such names)"
        )
    return parts


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
    for directory, _dirs, files in os.walk(top, followlinks=False):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(directory, name)
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
