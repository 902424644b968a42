"""A privateshare sink that turns mapped digi.me data into a partitioned Parquet dataset.

Layout (Hive partitioning, so pyarrow, DuckDB, Spark and Polars read it as one dataset)::

    root/user=<user>/object_type=<type>/<file stem>.parquet   one file per source file
    root/_raw/user=<user>/<name>                              raw files, with raw = "store"

One Parquet file per source file is what makes updates exact: a new version of a
source file replaces its Parquet file (temp file + rename), so its objects are
replaced, never duplicated; new source files add new Parquet files. Temp files
start with ``.`` and ``_raw`` with ``_``: dataset readers skip both by default.

Written only against privateshare's public API, as any third-party plugin would be.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal
from urllib.parse import quote

import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from privateshare import Plugin, PluginContext, hookimpl
from privateshare.config import PathOption
from privateshare.errors import SinkError, UnsafeFileNameError
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.sinks import (
    MAX_COMPONENT_BYTES,
    SinkWriter,
    check_name,
    clean_stale_temps,
    file_target,
    shown_name,
    temp_name,
)

__all__ = ["ParquetSink", "check_name", "parquet_file_name", "read_raw", "read_table"]
__version__ = "0.1.0"

log = logging.getLogger(__name__)

#: Directory (under root) for raw files when ``raw = "store"``; readers ignore "_" names.
RAW_DIR = "_raw"
#: Columns added to every row, saying where it came from (``source_columns = true``).
SOURCE_COLUMNS = ("_source_file", "_source_updated_date", "_source_index")

_SPOOL_IN_MEMORY = 1 << 20
_COPY_BLOCK = 1 << 20


# --- names -------------------------------------------------------------------------


def _flat(name: str) -> str:
    """One path component for ``name``: ``%`` and ``/`` escaped, no leading ``.``/``_``.

    Reversible (:func:`unquote`), so distinct names never share a file.
    """
    text = name.replace("%", "%25").replace("/", "%2F")
    if text[:1] in (".", "_"):
        text = f"%{ord(text[0]):02X}" + text[1:]
    return text


def parquet_file_name(name: str) -> str:
    """The Parquet file a mapped source file becomes: its name without ``.json``, flattened."""
    stem = name[: -len(".json")] if name.endswith(".json") and len(name) > 5 else name
    return _flat(stem) + ".parquet"


def _partition(key: str, value: str) -> str:
    """A Hive partition directory; pyarrow URI-decodes the value when reading."""
    part = f"{key}={quote(value, safe='')}"
    if len(part) > MAX_COMPONENT_BYTES:
        raise UnsafeFileNameError(
            f"{key.replace('_', ' ')} {shown_name(value)} is too long for a partition directory "
            f"once encoded ({len(part)} bytes, limit {MAX_COMPONENT_BYTES}); nothing was written"
        )
    return part


# --- the plugin --------------------------------------------------------------------


class ParquetSink(Plugin):
    """Writes mapped objects as Parquet, partitioned by user and object type."""

    description = "Write mapped data as a Parquet dataset partitioned by user and object type."

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: Dataset root; relative paths are resolved against the config file.
        root: PathOption
        #: Raw files (photos, PDFs): skip them, or store them as-is under root/_raw/.
        raw: Literal["skip", "store"] = "skip"
        #: Parquet compression codec.
        compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"
        #: Rows per row group.
        row_group_size: Annotated[int, msgspec.Meta(ge=1, le=1 << 24)] = 65_536
        #: Add _source_file, _source_updated_date and _source_index to every row.
        source_columns: bool = True
        #: Largest mapped file parsed (its objects are held in memory at commit).
        max_mapped_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 << 20
        #: fsync files and directories on commit (turn off only for throwaway data).
        fsync: bool = True

    def __init__(self, options: ParquetSink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.root: Path = context.resolve(options.root)

    def __repr__(self) -> str:
        return f"ParquetSink({self.context.name}, root={str(self.root)!r})"

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Check the user id, create its partition and remove temps a killed run left."""
        check_name(run.user_id, what="user id", allow_slash=False)
        user_dir = self._dir(_partition("user", run.user_id))
        removed = clean_stale_temps(user_dir)
        if self.options.raw == "store":
            removed += clean_stale_temps(self._dir(RAW_DIR, _partition("user", run.user_id)))
        if removed:
            log.info("sink %s removed %d stale temp file(s)", self.context.name, removed)

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Any:
        """A spooling writer for mapped data; a raw writer or ``None`` for raw files."""
        user = file_target(run, file).user_id
        if file.kind == "raw":
            if self.options.raw == "skip":
                return None
            return RawWriter(self, file, self._target(RAW_DIR, user, _flat(file.name)))
        object_type = str(file.metadata.metadata.get("objectType") or "unknown")
        _partition("object_type", object_type)  # refuse an unusable type before any data
        return MappedWriter(self, file, self._target(None, user, parquet_file_name(file.name)))

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Nothing to flush: each file was made durable when it was committed."""

    # plumbing -------------------------------------------------------------------------

    def _target(self, top: str | None, user: str, file_name: str) -> Path:
        if len(file_name.encode()) > MAX_COMPONENT_BYTES:
            raise UnsafeFileNameError(
                f"file name {shown_name(file_name)} of user {shown_name(user)} is too long once "
                f"encoded ({len(file_name.encode())} bytes, limit {MAX_COMPONENT_BYTES}); "
                "nothing was written"
            )
        user_part = _partition("user", user)
        return (self.root / top / user_part if top else self.root / user_part) / file_name

    def _dir(self, *parts: str) -> Path:
        """Create ``root/parts...`` and make sure it resolves inside root (no symlink escape)."""
        path = self.root.joinpath(*parts)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SinkError(
                f"sink {self.context.name}: cannot create {path}: {exc.strerror}; "
                f"check permissions or change root in [{self.context.name}]"
            ) from None
        real_root = self.root.resolve()
        if not path.resolve().is_relative_to(real_root):
            raise UnsafeFileNameError(
                f"sink {self.context.name}: {path} resolves outside the dataset root "
                f"{real_root}; nothing was written. Replace the symbolic link with a directory."
            )
        return path

    def _fail(self, action: str, target: Path, exc: BaseException) -> SinkError:
        reason = getattr(exc, "strerror", None) or exc
        return SinkError(f"sink {self.context.name}: cannot {action} {target}: {reason}")


def _publish(temp: Path, target: Path, fsync: bool) -> None:
    """Rename ``temp`` over ``target`` and make the rename durable."""
    os.replace(temp, target)
    if fsync:
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- writers -----------------------------------------------------------------------


class RawWriter(SinkWriter):
    """Streams a raw file into a temp file beside its target; commit renames it."""

    def __init__(self, sink: ParquetSink, file: DataFile, target: Path) -> None:
        super().__init__(file)
        self._sink, self._file, self.target = sink, file, target
        directory = sink._dir(*target.parent.relative_to(sink.root).parts)
        self._temp = directory / temp_name()
        try:
            self._out: BinaryIO | None = open(self._temp, "xb")  # noqa: SIM115
        except OSError as exc:
            self.state = "aborted"
            raise sink._fail("create a temp file for", target, exc) from None

    def _write(self, chunk: bytes | memoryview) -> None:
        """Write at once, so a chunk from a reused buffer is safe to pass."""
        assert self._out is not None  # open until commit or abort
        try:
            self._out.write(chunk)
        except OSError as exc:
            raise self._sink._fail("write", self.target, exc) from None

    def _commit(self) -> None:
        """Make the file visible atomically, replacing an older version."""
        out, self._out = self._out, None
        assert out is not None
        try:
            out.flush()
            if self._sink.options.fsync:
                os.fsync(out.fileno())
            out.close()
            _publish(self._temp, self.target, self._sink.options.fsync)
        except OSError as exc:
            raise self._sink._fail("commit", self.target, exc) from None

    def _discard(self) -> None:
        """Drop the temp file."""
        if self._out is not None:
            out, self._out = self._out, None
            with contextlib.suppress(OSError):
                out.close()
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


class MappedWriter(SinkWriter):
    """Spools a mapped JSON array (memory, then disk); commit writes one Parquet file.

    Nothing touches the dataset before commit. At commit the array is parsed, its
    objects become rows, a temp Parquet file is written beside the target and renamed
    over it, and any file of the same stem under another object type is removed (the
    type of a file changed), so exactly one version of each source file is visible.
    """

    def __init__(self, sink: ParquetSink, file: DataFile, target: Path) -> None:
        super().__init__(file)
        self._sink, self._file, self.target = sink, file, target
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = spool

    def _write(self, chunk: bytes | memoryview) -> None:
        """Spool a chunk (copied at once, so a reused buffer is safe to pass)."""
        assert self._spool is not None  # open until commit or abort
        size = len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        if self.size + size > self._sink.options.max_mapped_bytes:
            raise SinkError(
                f"sink {self._sink.context.name}: mapped file {self._file.name!r} of user "
                f"{self._file.user_id!r} is larger than max_mapped_bytes "
                f"({self._sink.options.max_mapped_bytes}); raise it in "
                f"[{self._sink.context.name}] if the memory is there"
            )
        self._spool.write(chunk)

    def _commit(self) -> None:
        """Parse the spooled array and publish its Parquet file atomically."""
        spool, self._spool = self._spool, None
        assert spool is not None
        try:
            spool.seek(0)
            table = self._table(spool.read())
        finally:
            spool.close()
        sink = self._sink
        object_type = str(self._file.metadata.metadata.get("objectType") or "unknown")
        user_dir = self.target.parent
        directory = sink._dir(
            *user_dir.relative_to(sink.root).parts, _partition("object_type", object_type)
        )
        target = directory / self.target.name
        temp = directory / temp_name() if table is not None else None
        try:
            if table is not None and temp is not None:
                self._write_parquet(table, temp)
                _publish(temp, target, sink.options.fsync)
            else:  # an empty array: the new version has no objects
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
            for other in user_dir.glob(f"object_type=*/{_glob_escape(self.target.name)}"):
                if other != target:
                    other.unlink(missing_ok=True)
        except (OSError, pa.ArrowException) as exc:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
            raise sink._fail("commit", target, exc) from None

    def _discard(self) -> None:
        """Discard the spool."""
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()

    # plumbing -------------------------------------------------------------------------

    def _table(self, data: bytes) -> pa.Table | None:
        file = self._file
        try:
            objects = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise SinkError(
                f"sink {self._sink.context.name}: mapped file {file.name!r} of user "
                f"{file.user_id!r} is not valid JSON ({exc}); it was not written"
            ) from None
        if isinstance(objects, dict):
            objects = [objects]
        if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
            raise SinkError(
                f"sink {self._sink.context.name}: mapped file {file.name!r} of user "
                f"{file.user_id!r} is not a JSON array of objects; it was not written"
            )
        if not objects:
            return None
        columns: dict[str, pa.Array] = {}
        if self._sink.options.source_columns:
            clash = sorted({key for o in objects for key in o} & set(SOURCE_COLUMNS))
            if clash:
                raise SinkError(
                    f"sink {self._sink.context.name}: objects in {file.name!r} have the "
                    f"key(s) {clash}, which the sink adds itself; set source_columns = false "
                    f"in [{self._sink.context.name}]"
                )
            n = len(objects)
            columns["_source_file"] = pa.array([file.name] * n, pa.string())
            columns["_source_updated_date"] = pa.array([file.updated_date] * n, pa.int64())
            columns["_source_index"] = pa.array(range(n), pa.int32())
        keys: dict[str, None] = {}
        for o in objects:
            keys.update(dict.fromkeys(o))
        for key in keys:
            columns[key] = _column([o.get(key) for o in objects])
        metadata = {b"privateshare": msgspec.json.encode(self.metadata_document())}
        return pa.table(columns).replace_schema_metadata(metadata)

    def _write_parquet(self, table: pa.Table, temp: Path) -> None:
        options = self._sink.options
        compression = None if options.compression == "none" else options.compression
        with open(temp, "xb") as out:
            pq.write_table(
                table, out, compression=compression, row_group_size=options.row_group_size
            )
            out.flush()
            if options.fsync:
                os.fsync(out.fileno())


def _column(values: list[Any]) -> pa.Array:
    """Infer a column; values Arrow or Parquet cannot type consistently become JSON text."""
    try:
        array = pa.array(values)
        if not _unwritable(array.type):
            return array
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string()
    )


def _unwritable(kind: pa.DataType) -> bool:
    """Types Parquet refuses: structs without fields, anywhere in the type."""
    if pa.types.is_struct(kind):
        return kind.num_fields == 0 or any(_unwritable(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _unwritable(kind.value_type)
    return False


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def read_raw(root: Path, user: str, name: str) -> bytes | None:
    """The stored bytes of a raw file (``raw = "store"``), or ``None``."""
    path = root / RAW_DIR / _partition("user", user) / _flat(name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_table(
    root: str | Path,
    object_type: str,
    *,
    user: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Every row of one object type (for one user, or all), with ``user`` and ``object_type``.

    Object types are different tables: a key can be a string in one type and a list in
    another, so read one type at a time. Within a type, files written at different times
    may infer slightly different schemas (a key missing from one file, an int column that
    is a double in another); they are unified here (permissive promotion) before reading.
    """
    root = Path(root)
    users = _partition("user", user) if user is not None else "user=*"
    pattern = f"{users}/{_glob_escape(_partition('object_type', object_type))}/*.parquet"
    files = sorted(root.glob(pattern))
    if not files:
        return pa.table(
            {"user": pa.array([], pa.string()), "object_type": pa.array([], pa.string())}
        )
    try:
        schema = pa.unify_schemas(
            [pq.read_schema(f).remove_metadata() for f in files], promote_options="permissive"
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise ValueError(
            f"the files of object type {object_type!r} under {root} disagree on a column "
            f"type ({exc}); read them one by one with pyarrow.parquet.read_table"
        ) from None
    schema = schema.append(pa.field("user", pa.string()))
    schema = schema.append(pa.field("object_type", pa.string()))
    dataset = ds.dataset(
        [str(f) for f in files],
        schema=schema,
        format="parquet",
        partitioning=ds.partitioning(
            pa.schema([("user", pa.string()), ("object_type", pa.string())]), flavor="hive"
        ),
        partition_base_dir=str(root),
    )
    return dataset.to_table(columns=columns)
