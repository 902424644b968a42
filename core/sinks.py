"""What a sink returns for each file: a writer that commits all or nothing.

The flow streams decrypted chunks to one writer per sink, then commits every
writer; if anything fails, every writer is aborted. A writer must make the file
visible only on ``commit`` (temp file + rename, multipart complete, one
transaction), so a crash leaves nothing half-written.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


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
