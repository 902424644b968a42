"""The ``file`` sink: each user's files under ``root/<user>/<name>``, written atomically.

Every file goes to a temp file in its final directory (prefix
``.privateshare-tmp-``), is fsynced, then ``os.replace``-d over the old version,
so a reader (or a crash) sees the old file or the new one, never a mix. The
directories are fsynced once per batch (``privateshare_sink_sync``, which the flow
calls before each checkpoint save), not once per file: a file is checkpointed only
after its directory entry is on disk. Server-supplied names and user ids are checked before
anything touches the disk, and the directories are walked with
``O_NOFOLLOW`` directory descriptors, so no name and no planted symlink can
make the sink write outside ``root``. Layout, commit order and guarantees are
documented in ``docs/sinks.md``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from pathlib import Path

import msgspec

from privateshare.config import PathOption
from privateshare.errors import SinkError, UnsafeFileNameError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.sinks import (
    SinkWriter,
    check_name,
    clean_stale_temps,
    file_target,
    metadata_json,
    shown_name,
    temp_name,
)

log = logging.getLogger(__name__)

#: Suffix of the metadata file written beside each data file.
METADATA_SUFFIX = ".metadata.json"

#: Chunks smaller than this are gathered and written together; larger ones go straight to
#: the file with ``os.write`` (no copy through a userspace buffer).
_GATHER = 256 << 10
#: A file bigger than this is dropped from the page cache as it reaches the disk (see
#: ``FileSinkWriter._written``); smaller files, most of a library, are left alone.
_DROP_AFTER = 32 << 20
#: How often (bytes written) a large file starts writeback and drops what reached the disk.
_DROP_STEP = 16 << 20
#: Below ``_DROP_AFTER``, a file starts the writeback of what it wrote every this many bytes
#: (nothing is dropped): the disk works while the next chunks are decrypted and
#: decompressed, and the fsync at commit waits for the last few MiB only.
_WRITEBACK_STEP = 4 << 20
_FADVISE = getattr(os, "posix_fadvise", None)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Temp files being written by this process, so that open_run never removes a live one.
_active_temps: set[str] = set()
_active_lock = threading.Lock()


# --- the plugin ----------------------------------------------------------------


class FileSink(Plugin):
    """Writes each user's files under ``root/<user>/<name>``, atomically, never outside root."""

    description = "Write files atomically under a local directory, one folder per user."

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: Directory the files go to; relative paths are resolved against the config file.
        root: PathOption
        #: Write ``<name>.metadata.json`` beside each file.
        metadata: bool = True
        #: fsync files and directories on commit (turn off only for throwaway data).
        fsync: bool = True
        #: Drop large files (over 32 MiB) from the page cache as they reach the disk.
        drop_cache: bool = True

    def __init__(self, options: FileSink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.root: Path = context.resolve(options.root)
        self._resolved_root: Path | None = None
        #: The OS's path length limit under the resolved root (looked up with it).
        self._path_max = 4095
        #: Directories whose entries changed since the last sync: (dev, inode) -> an open fd.
        self._dirty: dict[tuple[int, int], int] = {}
        self._dirty_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    def _changed(self, dir_fd: int) -> None:
        """Remember that ``dir_fd``'s entries changed; :meth:`sync` makes them durable."""
        if not self.options.fsync:
            return
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        with self._dirty_lock:
            if key not in self._dirty:
                self._dirty[key] = os.dup(dir_fd)

    def sync(self) -> None:
        """fsync each directory changed since the last call, once.

        Syncs are serialised: a caller (another user's run) that finds nothing left to
        sync must not return while an earlier call is still syncing what it took.
        """
        with self._sync_lock:
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, {}
            try:
                for fd in dirty.values():
                    os.fsync(fd)
            except OSError as exc:
                raise SinkError(
                    f"sink {self.context.name}: cannot sync a directory under {self.root}: "
                    f"{exc.strerror}"
                ) from None
            finally:
                for fd in dirty.values():
                    os.close(fd)

    def __repr__(self) -> str:
        return f"FileSink({self.context.name}, root={str(self.root)!r})"

    # hooks ----------------------------------------------------------------------

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Create the user's directory and remove temp files a killed process left behind."""
        check_name(run.user_id, what="user id", allow_slash=False)
        root = self._real_root(create=True, fresh=True)
        fd = self._open_dir(root, [run.user_id], run.user_id, "")
        os.close(fd)
        with _active_lock:
            active = set(_active_temps)
        removed = clean_stale_temps(root / run.user_id, active)
        if removed:
            log.info(
                "sink %s removed %d temp file(s) left by an interrupted run in %s",
                self.context.name,
                removed,
                root / run.user_id,
            )

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> FileSinkWriter:
        """Check the names, create the directories, and open a temp file beside the target."""
        suffix = METADATA_SUFFIX if self.options.metadata else None
        checked = file_target(run, file, reserved_suffix=suffix)
        user, parts = checked.user_id, list(checked.parts)
        root = self._real_root(create=True)
        parent = os.path.join(root, user, *parts[:-1])
        _check_path_length(root, parent, parts[-1], suffix, file.name, user, self._path_max)
        _verify_inside(root, parent, parts[-1], file.name, user)
        dir_fd = self._open_dir(root, [user, *parts[:-1]], user, file.name)
        # owns dir_fd from here on
        return FileSinkWriter(self, dir_fd, parent, parts[-1], file)

    @hookimpl
    def privateshare_sink_sync(self, run: RunInfo) -> None:
        """Make the renames of the files committed so far durable: one fsync per directory."""
        self.sync()

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Sync what the last batch changed (the flow has synced before its last save)."""
        self.sync()

    # plumbing -------------------------------------------------------------------

    def preflight(self, connect: bool) -> None:
        """For ``config check``: the root exists as a writable directory, or can be created."""
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            raise SinkError(
                f"sink {self.context.name}: {path} is not a directory, so the root {self.root} "
                f"cannot be created there; change root in [{self.context.name}]"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            what = "the root" if path == self.root else f"{path}, where the root would be created,"
            raise SinkError(
                f"sink {self.context.name}: {what} is not writable; fix its permissions or "
                f"change root in [{self.context.name}]"
            )

    def _real_root(self, *, create: bool, fresh: bool = False) -> Path:
        """The root, created if asked and resolved; cached between runs' opens.

        Each run resolves it afresh (``fresh``), so a root that is a symlink may be
        repointed between runs; within a run every file reuses it, which saves a mkdir
        and a resolve per file. A root deleted mid-run is recreated on its next use.
        """
        cached = self._resolved_root
        if cached is not None and not fresh and cached.is_dir():
            return cached
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise SinkError(
                    f"sink {self.context.name}: cannot create its root directory {self.root}: "
                    f"{exc.strerror}; create it or change root in [{self.context.name}]"
                ) from None
        self._resolved_root = resolved = self.root.resolve()
        try:
            self._path_max = os.pathconf(resolved, "PC_PATH_MAX") - 1  # counts the final NUL
        except (OSError, ValueError):
            self._path_max = 4095
        return resolved

    def _open_dir(self, root: Path, parts: list[str], user: str, name: str) -> int:
        """Walk (creating) ``root/parts...`` without following symlinks; return the dir fd."""
        fd = os.open(root, _DIR_FLAGS)
        try:
            here = root
            for part in parts:
                here = here / part
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    self._changed(fd)  # the new directory's entry, synced with the batch
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        what = "a symbolic link" if os.path.islink(here) else "not a directory"
                        raise UnsafeFileNameError(
                            f"sink {self.context.name}: {here} is {what}, so "
                            f"{shown_name(name or user)} of user {shown_name(user)} could land "
                            f"outside {root}; nothing was written. Replace it with a real "
                            "directory."
                        ) from None
                    raise SinkError(
                        f"sink {self.context.name}: cannot open directory {here}: "
                        f"{exc.strerror}; check its permissions"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _check_path_length(
    root: Path, parent: str, name: str, suffix: str | None, shown: str, user: str, limit: int
) -> None:
    """The target, its metadata file and its temp files must fit the OS's path limit."""
    directory = len(os.fsencode(parent)) + 1
    last = max(len(os.fsencode(name + (suffix or ""))), len(temp_name()))
    if directory + last > limit:
        raise UnsafeFileNameError(
            f"file name {shown_name(shown)} of user {shown_name(user)} is unsafe: under the "
            f"root {root} its path would be {directory + last} bytes, over this system's limit "
            f"of {limit} (PATH_MAX); nothing was written. Use a shorter root."
        )


def _verify_inside(root: Path, parent: str, name: str, shown: str, user: str) -> None:
    """Second line of defence: the resolved target must stay under the resolved root."""
    resolved = os.path.realpath(parent)
    top = str(root)
    if resolved != top and not resolved.startswith(top.rstrip("/") + "/"):
        raise UnsafeFileNameError(
            f"file name {shown_name(shown)} of user {shown_name(user)} resolves to "
            f"{os.path.join(resolved, name)}, outside the sink's root {root}; nothing was "
            "written. Remove the symbolic link on the way."
        )


class FileSinkWriter(SinkWriter):
    """One file on its way to disk: a temp file that ``commit`` renames into place.

    Commit order: the data temp file is written while chunks arrive and fsynced at
    commit; the metadata temp file is written and fsynced; then the data file is
    renamed into place, then the metadata file. The metadata is the last thing to
    change, so it never claims a newer ``updated_date`` than the data beside it; a
    crash between the renames leaves new data with old metadata, and the rerun (the
    checkpoint did not advance) delivers the file again. The directory is fsynced
    with the batch (:meth:`FileSink.sync`), before the checkpoint names the file.
    Within a batch, a power cut may undo a rename (the old version is back) but
    never leaves a file half-written, and such files are not checkpointed.
    """

    def __init__(self, sink: FileSink, dir_fd: int, parent: str, name: str, file: DataFile) -> None:
        where = os.path.join(parent, name)
        super().__init__(file, where=where)
        self._fd = -1
        self._dir_fd = dir_fd
        self._sink = sink
        self._parent = parent
        self._name = name
        self.target = Path(where)
        self._temps: list[str] = []
        #: Small chunks not written yet (a large chunk is written at once, uncopied).
        self._pending = bytearray()
        #: Bytes handed to the kernel; up to where writeback was started, and pages dropped.
        self._offset = 0
        self._flushed = 0
        self._dropped = 0
        self._drop = sink.options.drop_cache and _FADVISE is not None
        self._data_temp = self._new_temp()
        try:
            self._fd = os.open(self._data_temp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            self.state = "aborted"
            self._cleanup()
            raise self._fail("create a temp file for", exc) from None

    def __repr__(self) -> str:
        return f"FileSinkWriter({self.where!r}, {self.state}, {self.size} bytes)"

    def _new_temp(self) -> str:
        name = temp_name()
        self._temps.append(name)
        with _active_lock:
            _active_temps.add(os.path.join(self._parent, name))
        return name

    def _fail(self, action: str, exc: OSError) -> SinkError:
        return SinkError(
            f"sink {self._sink.context.name}: cannot {action} {self.where}: "
            f"{exc.strerror or exc}; check free space and permissions under {self._sink.root}"
        )

    def _write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk: a large one is written at once, a small one gathered (copied).

        Either way nothing refers to ``chunk`` afterwards, so a reused buffer is safe to pass.
        """
        pending = self._pending
        try:
            if (chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)) >= _GATHER:
                if pending:
                    self._write_all(pending)
                    pending.clear()
                self._write_all(chunk)
            else:
                pending += chunk
                if len(pending) >= _GATHER:
                    self._write_all(pending)
                    pending.clear()
        except OSError as exc:
            raise self._fail("write", exc) from None

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        """``os.write`` until all of ``data`` is in the kernel's hands (a write may be short)."""
        fd = self._fd
        with memoryview(data) as whole, whole.cast("B") as view:
            size = len(view)
            written = os.write(fd, view)
            while written < size:
                written += os.write(fd, view[written:])
        offset = self._offset = self._offset + size
        if not self._drop:
            return
        if offset >= max(_DROP_AFTER, self._flushed + _DROP_STEP):
            self._written()
        elif offset < _DROP_AFTER and offset >= self._flushed + _WRITEBACK_STEP:
            self._write_back()

    def _write_back(self) -> None:
        """Start the writeback of what was written since the last call; drop nothing.

        ``POSIX_FADV_DONTNEED`` starts writeback of a range's dirty pages and drops only
        the pages already clean, which the range just written has none of, so a file
        under ``_DROP_AFTER`` stays cached. Advice only, as in :meth:`_written`.
        """
        assert _FADVISE is not None
        started, self._flushed = self._flushed, self._offset
        with contextlib.suppress(OSError):
            _FADVISE(self._fd, started, self._offset - started, os.POSIX_FADV_DONTNEED)

    def _written(self) -> None:
        """Keep a large file from filling the page cache while it is written.

        ``POSIX_FADV_DONTNEED`` starts writeback of the dirty pages of the range it is
        given and drops the pages already written back. Each call (every ``_DROP_STEP``
        bytes, past ``_DROP_AFTER``) starts the writeback of what was written since the
        previous call, so the disk works while we decrypt and the fsync at commit has
        little left to do, and drops what the previous call sent to the disk. Advice
        only: durability still comes from the fsync at commit; a failure here is ignored.
        """
        assert _FADVISE is not None
        started, self._flushed = self._flushed, self._offset
        with contextlib.suppress(OSError):
            _FADVISE(self._fd, started, self._offset - started, os.POSIX_FADV_DONTNEED)
            if started > self._dropped:
                _FADVISE(self._fd, self._dropped, started - self._dropped, os.POSIX_FADV_DONTNEED)
                self._dropped = started

    def _commit(self) -> None:
        """Make the file (then its metadata) visible atomically, replacing the old version."""
        fsync = self._sink.options.fsync
        name = self._name
        try:
            if self._pending:
                self._write_all(self._pending)
                self._pending = bytearray()
            fd, self._fd = self._fd, -1
            try:
                if fsync:
                    os.fsync(fd)
                if self._drop and self._offset > _DROP_AFTER and _FADVISE is not None:
                    # On disk now: its pages are clean and can all go.
                    with contextlib.suppress(OSError):
                        _FADVISE(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            meta_temp = None
            if self._sink.options.metadata:
                meta_temp = self._write_metadata(fsync)
            os.replace(self._data_temp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._forget(self._data_temp)
            if meta_temp is not None:
                os.replace(
                    meta_temp,
                    name + METADATA_SUFFIX,
                    src_dir_fd=self._dir_fd,
                    dst_dir_fd=self._dir_fd,
                )
                self._forget(meta_temp)
            self._sink._changed(self._dir_fd)
        except OSError as exc:
            raise self._fail("commit", exc) from None
        self._close_dir()

    def _discard(self) -> None:
        """Remove the temp files (a committed file is left alone: the base never gets here)."""
        self._pending = bytearray()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        self._cleanup()

    # plumbing -------------------------------------------------------------------

    def _write_metadata(self, fsync: bool) -> str:
        temp = self._new_temp()
        fd = os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=self._dir_fd)
        try:
            data = metadata_json(self.metadata_document())
            written = os.write(fd, data)
            while written < len(data):
                written += os.write(fd, data[written:])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return temp

    def _forget(self, temp: str) -> None:
        self._temps.remove(temp)
        with _active_lock:
            _active_temps.discard(os.path.join(self._parent, temp))

    def _cleanup(self) -> None:
        for temp in list(self._temps):
            try:
                os.unlink(temp, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning(
                    "could not remove temp file %s: %s", os.path.join(self._parent, temp), exc
                )
            self._forget(temp)
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd >= 0:
            fd, self._dir_fd = self._dir_fd, -1
            os.close(fd)
