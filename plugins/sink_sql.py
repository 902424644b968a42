"""The ``sql`` sink: each user's files, and the objects of mapped JSON files, in SQL tables.

Tables (prefix ``privateshare_`` by default; created and migrated by the sink
under ``<prefix>schema_version``, never by hand):

* ``<prefix>files`` — one row per (user, file): ``updated_date``, metadata as
  JSON, size, SHA-256, and the content inline when it is at most 1 MiB;
* ``<prefix>file_chunks`` — the content of larger files, 1 MiB per row
  (``file_key``, ``seq``), so a file of any size is written in bounded memory
  with plain INSERTs that behave the same on every database;
* ``<prefix>objects`` — one row per object of a mapped JSON file, keyed by the
  object's ``id`` (or ``entityId``) where it has a unique one, else ``#<index>``.

While the flow streams a file, the writer spools it to an anonymous temp file
(nothing in the database yet). ``commit()`` writes the whole file in one
transaction: upsert the file row (which locks it against a concurrent writer),
delete the file's old chunks and objects, insert the new ones. Readers see the
old version or the new one; a crash (even SIGKILL) rolls the transaction back.
``docs/sql.md`` has the layout, example queries and the reasons.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Annotated, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from privateshare.errors import SinkError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.sinks import SinkWriter, check_name, file_target
from privateshare.sqldb import Database, Json, LongBlob, LongText, SqlOptions

log = logging.getLogger(__name__)

SCHEMA_COMPONENT = "sink"
SCHEMA_VERSION = 2
#: MariaDB/MySQL tables hold any Unicode (utf8mb4) and compare bytes, as SQLite and PostgreSQL do.
_MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
#: A statement to MariaDB carries an object row plus this much else, at most.
_ROW_OVERHEAD = 64 << 10
_BIGINT = range(-(1 << 63), 1 << 63)
#: Content up to this size sits in ``files.content``; larger content is cut into chunks of it.
CHUNK_SIZE = 1 << 20
#: Object rows are inserted this many per statement.
OBJECT_BATCH = 500
#: Longest object key kept; a longer id falls back to ``#<index>``.
MAX_OBJECT_KEY = 255
_WHITESPACE = b" \t\r\n\xef\xbb\xbf"


def sink_tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    """The sink's tables: files, file chunks, objects."""
    metadata = sa.MetaData()
    files = sa.Table(
        f"{prefix}files",
        metadata,
        sa.Column("file_key", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("updated_date", sa.BigInteger, nullable=False),
        sa.Column("last_modified", sa.String(64)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mimetype", sa.String(255), nullable=False),
        sa.Column("compression", sa.String(32)),
        sa.Column("metadata", Json, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content_in", sa.String(8), nullable=False),
        sa.Column("content", LongBlob),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("object_count", sa.Integer),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index(f"{prefix}files_user", "user_id"),
        **_MYSQL_TABLE,
    )
    chunks = sa.Table(
        f"{prefix}file_chunks",
        metadata,
        sa.Column("file_key", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", LongBlob, nullable=False),
        **_MYSQL_TABLE,
    )
    objects = sa.Table(
        f"{prefix}objects",
        metadata,
        sa.Column("file_key", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("file_name", LongText, nullable=False),
        sa.Column("object_type", sa.String(255)),
        sa.Column("object_key", sa.String(MAX_OBJECT_KEY), nullable=False),
        sa.Column("object", Json, nullable=False),
        sa.Index(f"{prefix}objects_user_key", "user_id", "object_key"),
        sa.Index(f"{prefix}objects_user_type", "user_id", "object_type"),
        **_MYSQL_TABLE,
    )
    return metadata, files, chunks, objects


def _utf8mb4_migration(tables: list[sa.Table]) -> Callable[[Connection], None]:
    """Schema v2: tables a v1 sink created in a non-utf8mb4 MariaDB database are converted.

    Such a database (latin1 or utf8mb3 by default) refuses emoji and other 4-byte characters
    in names, metadata and objects that SQLite and PostgreSQL store. Nothing to do elsewhere.
    """

    def migrate(conn: Connection) -> None:
        if conn.dialect.name not in ("mysql", "mariadb"):
            return
        for table in tables:
            collation = conn.execute(
                sa.text(
                    "SELECT TABLE_COLLATION FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                ),
                {"t": table.name},
            ).scalar()
            if collation and not str(collation).startswith("utf8mb4"):
                conn.exec_driver_sql(
                    f"ALTER TABLE `{table.name}` CONVERT TO CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_bin"
                )

    return migrate


@functools.cache
def _delete_file_rows(table: sa.Table) -> sa.Delete:
    """``delete from <table> where file_key = :key``, built once (values bound at execution)."""
    return table.delete().where(table.c.file_key == sa.bindparam("key"))


@functools.cache
def _insert(table: sa.Table) -> sa.Insert:
    """A plain insert into ``table``, built once; executemany when given a list of rows."""
    return table.insert()


def file_key(user_id: str, name: str) -> str:
    """The files' primary key: SHA-256 of (user, name), any length of name in 64 characters."""
    return hashlib.sha256(msgspec.json.encode([user_id, name])).hexdigest()


def object_rows(document: Any) -> list[tuple[str, Any]]:
    """``(object_key, object)`` per object: an array's elements, or a lone document.

    The key is the object's ``id`` (else ``entityId``) as text when it is a string
    or integer, not longer than 255 characters and not already used in this
    file; otherwise ``#<index>``. So keys are unique within a file and stable
    across updates whenever the service gives ids.
    """
    items = document if isinstance(document, list) else [document]
    used: set[str] = set()
    rows: list[tuple[str, Any]] = []
    for index, item in enumerate(items):
        key: str | None = None
        if isinstance(item, dict):
            for field in ("id", "entityId"):
                value = item.get(field)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    key = str(value)
                    break
        if key is None or key in used or not key or len(key) > MAX_OBJECT_KEY:
            key = f"#{index}"
        while key in used:
            key += "#"
        used.add(key)
        rows.append((key, item))
    return rows


class SqlSink(Plugin):
    """Writes each file (and each object of mapped JSON) to SQL tables, one transaction a file."""

    description = (
        "files and their JSON objects in SQLite, PostgreSQL or MariaDB tables, "
        "one transaction per file"
    )

    class Options(SqlOptions, forbid_unknown_fields=True, kw_only=True):
        #: Keep the files' bytes (``content`` / ``file_chunks``); false keeps rows and objects.
        store_content: bool = True
        #: Mapped JSON files up to this size are split into object rows.
        objects_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 << 20

    def __init__(self, options: SqlSink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.db = Database(options, context, error=SinkError)
        self.metadata, self.files, self.chunks, self.objects = sink_tables(options.table_prefix)

    def __repr__(self) -> str:
        return f"SqlSink({self.context.name}, url={self.db.safe_url})"

    def close(self) -> None:
        """Close the pooled connections (called when the framework closes)."""
        self.db.dispose()

    def preflight(self, connect: bool) -> None:
        """For ``config check --connect``: the database answers."""
        if connect:
            self.db.connect("reach the database").close()

    def ensure_schema(self) -> None:
        """Create (or migrate) the tables; done once per process."""
        tables = [self.files, self.chunks, self.objects]
        migrations = {2: _utf8mb4_migration(tables)}
        self.db.ensure_schema(SCHEMA_COMPONENT, SCHEMA_VERSION, self.metadata, migrations)

    # hooks ----------------------------------------------------------------------

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Check the user id, connect, and create or migrate the tables."""
        check_name(run.user_id, what="user id", allow_slash=False)
        self.ensure_schema()

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> SqlSinkWriter:
        """Check the names; the writer spools the file and writes it at commit."""
        user = file_target(run, file).user_id
        self.ensure_schema()
        return SqlSinkWriter(self, run, file, user)

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Nothing to flush: every file was committed in its own transaction."""

    # reading back -----------------------------------------------------------------

    def iter_content(self, user_id: str, name: str) -> Iterator[bytes]:
        """Yield a stored file's bytes chunk by chunk; nothing if the sink has no such file.

        Raises :class:`SinkError` when the file's row exists but its content was
        not stored (``store_content = false``).
        """
        key = file_key(user_id, name)
        with self.db.transaction(f"read {name!r} of user {user_id!r}", write=False) as conn:
            row = conn.execute(
                sa.select(
                    self.files.c.content_in, self.files.c.content, self.files.c.chunk_count
                ).where(self.files.c.file_key == key)
            ).first()
            if row is None:
                return
            if row.content_in == "none":
                raise SinkError(
                    f"[{self.context.name}] {name!r} of user {user_id!r} was stored without its "
                    "content (store_content = false)"
                )
            if row.content_in == "inline" or row.chunk_count == 0:
                yield bytes(row.content or b"")
                return
            for seq in range(row.chunk_count):
                data = conn.execute(
                    sa.select(self.chunks.c.data).where(
                        sa.and_(self.chunks.c.file_key == key, self.chunks.c.seq == seq)
                    )
                ).scalar()
                if data is None:
                    raise SinkError(
                        f"[{self.context.name}] chunk {seq} of {name!r} of user {user_id!r} is "
                        f"missing from {self.chunks.name}; deliver the file again"
                    )
                yield bytes(data)

    def read_content(self, user_id: str, name: str) -> bytes | None:
        """A stored file's bytes in memory, or ``None`` when the sink has no such file."""
        parts = list(self.iter_content(user_id, name))
        return b"".join(parts) if parts else None


class SqlSinkWriter(SinkWriter):
    """One file on its way to the database: spooled while written, inserted at commit."""

    def __init__(self, sink: SqlSink, run: RunInfo, file: DataFile, user_id: str) -> None:
        super().__init__(file)
        self._sink = sink
        self._run = run
        self._file = file
        self._user = user_id
        # Small files stay in memory; larger ones go to an unlinked temp file, so a
        # killed process leaves nothing behind anywhere.
        self._spool: IO[bytes] | None = tempfile.SpooledTemporaryFile(max_size=CHUNK_SIZE)  # noqa: SIM115
        self._sha = hashlib.sha256()
        self._lead: bytes | None = None  # first non-blank byte, to spot JSON cheaply

    def __repr__(self) -> str:
        return (
            f"SqlSinkWriter({self._sink.context.name}, {self._file.name!r} of user "
            f"{self._user!r}, {self.state}, {self.size} bytes)"
        )

    def _write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk to the spool (copied at once, so a reused buffer is safe)."""
        assert self._spool is not None  # open until commit or abort
        try:
            self._spool.write(chunk)
        except OSError as exc:
            raise SinkError(
                f"[{self._sink.context.name}] cannot spool {self._file.name!r} to a temp file "
                f"({exc.strerror}); check free space in the temp directory (TMPDIR)"
            ) from None
        self._sha.update(chunk)
        if self._lead is None and len(chunk):
            stripped = bytes(chunk[:4096]).lstrip(_WHITESPACE)
            if stripped:
                self._lead = stripped[:1]

    def _commit(self) -> None:
        """Write the file row, its chunks and its objects in one transaction."""
        sink, file, spool = self._sink, self._file, self._spool
        assert spool is not None
        db, files = sink.db, sink.files
        try:
            if file.updated_date not in _BIGINT:
                raise SinkError(
                    f"[{sink.context.name}] {file.name!r} of user {self._user!r} has updatedDate "
                    f"{file.updated_date}, which no SQL BIGINT holds; nothing was written"
                )
            objects = self._parse_objects(spool)
            store = sink.options.store_content
            inline = store and self.size <= CHUNK_SIZE
            spool.seek(0)
            key = file_key(self._user, file.name)
            row = {
                "file_key": key,
                "user_id": self._user,
                "name": file.name,
                "updated_date": file.updated_date,
                "last_modified": db.fit_text(file.last_modified, files.c.last_modified),
                "kind": file.kind,
                "mimetype": db.fit_text(file.metadata.mimetype, files.c.mimetype),
                "compression": db.fit_text(file.metadata.compression, files.c.compression),
                "metadata": file.metadata.metadata,
                "size": self.size,
                "sha256": self._sha.hexdigest(),
                "content_in": "inline" if inline else "chunks" if store else "none",
                "content": spool.read() if inline else None,
                "chunk_count": 0 if inline or not store else -(-self.size // CHUNK_SIZE),
                "object_count": None if objects is None else len(objects),
                "run_id": self._run.run_id[:64],
                "written_at": datetime.datetime.now(datetime.UTC),
            }
            action = f"write {file.name!r} of user {self._user!r}"
            with sink.db.transaction(action) as conn:
                # The upsert locks the file's row first, so two writers of one file queue up.
                sink.db.upsert(conn, sink.files, row, ["file_key"])
                conn.execute(_delete_file_rows(sink.chunks), {"key": key})
                conn.execute(_delete_file_rows(sink.objects), {"key": key})
                if store and not inline:
                    seq = 0
                    while data := spool.read(CHUNK_SIZE):
                        conn.execute(
                            _insert(sink.chunks), {"file_key": key, "seq": seq, "data": data}
                        )
                        del data
                        seq += 1
                if objects:
                    object_type = file.metadata.metadata.get("objectType")
                    if object_type is not None:
                        object_type = db.fit_text(str(object_type), sink.objects.c.object_type)
                    batch: list[dict[str, Any]] = []
                    for position, (object_key, obj) in enumerate(objects):
                        batch.append(
                            {
                                "file_key": key,
                                "position": position,
                                "user_id": self._user,
                                "file_name": file.name,
                                "object_type": object_type or None,
                                "object_key": object_key,
                                "object": obj,
                            }
                        )
                        if len(batch) >= OBJECT_BATCH:
                            conn.execute(_insert(sink.objects), batch)
                            batch = []
                    if batch:
                        conn.execute(_insert(sink.objects), batch)
        finally:
            self._close_spool()

    def _discard(self) -> None:
        """Discard the spool."""
        self._close_spool()

    # plumbing -------------------------------------------------------------------

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.close()

    def _parse_objects(self, spool: IO[bytes]) -> list[tuple[str, Any]] | None:
        """The objects of a mapped JSON file, or ``None`` when it is not one (or too big)."""
        file, limit = self._file, self._sink.options.objects_max_bytes
        if file.kind != "mapped" or self._lead not in (b"[", b"{"):
            return None
        if self.size > limit:
            log.warning(
                "[%s] %r of user %r is %d bytes, over objects_max_bytes (%d): stored without "
                "object rows; raise objects_max_bytes to split it",
                self._sink.context.name,
                file.name,
                self._user,
                self.size,
                limit,
            )
            return None
        spool.seek(0)
        db = self._sink.db
        try:
            document = db.decode_json(spool.read())
        except msgspec.DecodeError as exc:
            self._unsplit(f"cannot be read as JSON ({exc})")
            return None
        except RecursionError:
            self._unsplit("nests JSON too deeply to decode")
            return None
        rows = object_rows(document)
        limit = db.packet_limit()
        if limit is not None and 2 * self.size + _ROW_OVERHEAD > limit:
            largest = max((len(db.json_text(obj).encode()) for _, obj in rows), default=0)
            if largest + _ROW_OVERHEAD > limit:
                self._unsplit(
                    f"has an object of {largest} bytes, more than the server's "
                    f"max_allowed_packet ({limit}) lets through; raise max_allowed_packet on "
                    "the server to split it"
                )
                return None
        return rows

    def _unsplit(self, reason: str) -> None:
        log.warning(
            "[%s] %r of user %r %s: stored without object rows",
            self._sink.context.name,
            self._file.name,
            self._user,
            reason,
        )
