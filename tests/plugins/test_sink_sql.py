"""The ``sql`` sink on real SQLite, PostgreSQL and MariaDB: suite, objects, crashes, flow."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from privateshare import ConfigError, SinkError
from privateshare.flow import Flow
from privateshare.hooks import PluginContext
from privateshare.plugins.sink_sql import CHUNK_SIZE, SqlSink, file_key, object_rows, sink_tables
from privateshare.plugins.sqlcommon import LongText, schema_version_table
from privateshare.secrets import Secret
from privateshare.testing.conformance import SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run
from privateshare.testing.sandboxed import consent, sandbox_framework

SqlDb = Any  # conftest.SqlDb (conftest modules are not importable under importlib mode)
PASSWORD = "s3cr3t-Pa55word"


def make_sink(db: SqlDb, base: Path | None = None, **options: Any) -> SqlSink:
    opts = db.options(**options)
    return SqlSink(
        SqlSink.Options(**opts),
        PluginContext(name="sinks.db", base_dir=base or Path.cwd()),
    )


def put(sink: SqlSink, user: str, name: str, data: bytes, **file: Any) -> None:
    run = make_run(user)
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(run=run, file=make_file(user, name, **file))
    writer.write(data)
    writer.commit()


def rows(sink: SqlSink, table: sa.Table, *where: Any) -> list[Any]:
    with sink.db.engine.connect() as conn:
        return conn.execute(sa.select(table).where(*where)).all()


def objects_of(sink: SqlSink, user: str, name: str) -> dict[str, Any]:
    found = rows(sink, sink.objects, sink.objects.c.file_key == file_key(user, name))
    return {r.object_key: r.object for r in found}


class TestSqlSinkConformance(SinkConformance):
    """The suite every sink passes, on each database."""

    @pytest.fixture
    def sink(self, sql_db: SqlDb, tmp_path: Path) -> Any:
        sink = make_sink(sql_db, tmp_path)
        yield sink
        sink.close()

    def read_back(self, user: str, name: str) -> bytes | None:
        return self.sink.read_content(user, name)

    def snapshot(self) -> set[Any]:
        sink = self.sink
        with sink.db.engine.connect() as conn:
            if not sa.inspect(conn).has_table(sink.files.name):
                return set()
            found: set[Any] = set()
            for r in conn.execute(sa.select(sink.files.c.user_id, sink.files.c.name)):
                found.add(("file", r.user_id, r.name))
            for r in conn.execute(sa.select(sink.chunks.c.file_key, sink.chunks.c.seq)):
                found.add(("chunk", r.file_key, r.seq))
            for r in conn.execute(sa.select(sink.objects.c.file_key, sink.objects.c.position)):
                found.add(("object", r.file_key, r.position))
        return found


# --- tables, objects, updates ---------------------------------------------------------


def test_a_mapped_file_gives_a_file_row_and_one_row_per_object(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    body = json.dumps([{"id": "p1", "text": "hello"}, {"id": "p2", "n": 2}]).encode()
    put(
        sink,
        "alice",
        "18_1_a.json",
        body,
        updated_date=1_700_000_000_123,
        metadata={"objectType": "post", "serviceGroup": "social"},
        compression="brotli",
        last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
    )
    (row,) = rows(sink, sink.files)
    assert (row.user_id, row.name, row.updated_date, row.kind) == (
        "alice",
        "18_1_a.json",
        1_700_000_000_123,
        "mapped",
    )
    assert row.metadata == {"objectType": "post", "serviceGroup": "social"}
    assert (row.compression, row.last_modified) == ("brotli", "Tue, 14 Nov 2023 22:13:20 GMT")
    assert (row.size, row.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert (row.content_in, bytes(row.content), row.chunk_count) == ("inline", body, 0)
    assert row.object_count == 2
    found = rows(sink, sink.objects)
    assert sorted((o.position, o.object_key, o.object_type) for o in found) == [
        (0, "p1", "post"),
        (1, "p2", "post"),
    ]
    assert objects_of(sink, "alice", "18_1_a.json") == {
        "p1": {"id": "p1", "text": "hello"},
        "p2": {"id": "p2", "n": 2},
    }
    sink.close()


def test_an_updated_file_replaces_its_objects(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    v1 = [{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "c", "v": 1}]
    v2 = [{"id": "a", "v": 2}, {"id": "c", "v": 2}, {"id": "d", "v": 2}]
    put(sink, "alice", "f.json", json.dumps(v1).encode(), updated_date=1)
    put(sink, "bob", "f.json", json.dumps(v1).encode(), updated_date=1)
    put(sink, "alice", "f.json", json.dumps(v2).encode(), updated_date=2)
    assert objects_of(sink, "alice", "f.json") == {o["id"]: o for o in v2}  # b is gone
    assert objects_of(sink, "bob", "f.json") == {o["id"]: o for o in v1}  # bob untouched
    assert [r.updated_date for r in rows(sink, sink.files, sink.files.c.user_id == "alice")] == [2]
    assert len(rows(sink, sink.files)) == 2 and len(rows(sink, sink.objects)) == 6
    sink.close()


def test_object_keys_fall_back_to_the_index() -> None:
    document = [{"id": "x"}, {"entityId": 7}, {"name": "no id"}, {"id": "x"}, 5, {"id": True}]
    assert [key for key, _ in object_rows(document)] == ["x", "7", "#2", "#3", "#4", "#5"]
    assert object_rows({"id": "solo"}) == [("solo", {"id": "solo"})]
    assert object_rows({"k": 1}) == [("#0", {"k": 1})]
    assert [k for k, _ in object_rows([{"id": "#1"}, {}])] == ["#1", "#1#"]
    assert [k for k, _ in object_rows([{"id": "y" * 256}])] == ["#0"]


def test_raw_invalid_and_oversized_files_are_stored_without_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = _sqlite(tmp_path)
    sink = make_sink(db, objects_max_bytes=100)
    put(sink, "alice", "photo.jpg", b"[not json, raw]", metadata={"mimetype": "image/jpeg"})
    put(sink, "alice", "broken.json", b'[{"id": 1},')
    put(sink, "alice", "big.json", json.dumps([{"id": i} for i in range(50)]).encode())
    assert rows(sink, sink.objects) == []
    counts = {r.name: (r.kind, r.mimetype, r.object_count) for r in rows(sink, sink.files)}
    assert counts == {
        "photo.jpg": ("raw", "image/jpeg", None),
        "broken.json": ("mapped", "application/json", None),
        "big.json": ("mapped", "application/json", None),
    }
    assert "'broken.json' of user 'alice' cannot be read as JSON" in caplog.text
    assert "over objects_max_bytes (100)" in caplog.text
    assert sink.read_content("alice", "broken.json") == b'[{"id": 1},'


def test_large_files_go_to_chunks_and_store_content_false_keeps_only_rows(
    tmp_path: Path,
) -> None:
    db = _sqlite(tmp_path)
    sink = make_sink(db)
    data = os.urandom(CHUNK_SIZE * 2 + 10)
    put(sink, "alice", "video.mp4", data, metadata={"mimetype": "video/mp4"})
    (row,) = rows(sink, sink.files)
    assert (row.content_in, row.content, row.chunk_count) == ("chunks", None, 3)
    assert [len(c.data) for c in rows(sink, sink.chunks)] == [CHUNK_SIZE, CHUNK_SIZE, 10]
    assert sink.read_content("alice", "video.mp4") == data
    put(sink, "alice", "video.mp4", b"small now", metadata={"mimetype": "video/mp4"})
    assert rows(sink, sink.chunks) == []  # the old chunks went with the update

    bare = make_sink(_sqlite(tmp_path / "bare"), store_content=False)
    put(bare, "alice", "f.json", b'[{"id": "a"}]')
    put(bare, "alice", "video.mp4", data, metadata={"mimetype": "video/mp4"})
    found = {r.name: (r.content_in, r.content, r.size) for r in rows(bare, bare.files)}
    assert found == {"f.json": ("none", None, 13), "video.mp4": ("none", None, len(data))}
    assert rows(bare, bare.chunks) == [] and len(rows(bare, bare.objects)) == 1
    with pytest.raises(SinkError, match="stored without its content"):
        bare.read_content("alice", "f.json")


def test_concurrent_writers_of_one_file_leave_one_row(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    sink.ensure_schema()
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            body = json.dumps([{"id": f"o{j}", "w": i} for j in range(20)]).encode()
            put(sink, "alice", "same.json", body, updated_date=i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    (row,) = rows(sink, sink.files)
    found = objects_of(sink, "alice", "same.json")
    assert len(found) == 20 and {o["w"] for o in found.values()} == {row.updated_date}
    sink.close()


def test_schema_version_is_recorded_and_a_newer_one_refused(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    sink.ensure_schema()
    versions = sa.Table(
        f"{sql_db.prefix}schema_version", sa.MetaData(), autoload_with=sink.db.engine
    )
    with sink.db.engine.begin() as conn:
        assert conn.execute(sa.select(versions.c.component, versions.c.version)).all() == [
            ("sink", 2)
        ]
        conn.execute(versions.update().values(version=99))
    newer = make_sink(sql_db)
    with pytest.raises(SinkError, match=r"schema version 99, newer than this privateshare"):
        newer.privateshare_sink_open_run(run=make_run())
    sink.close()
    newer.close()


# --- what one database refuses and another accepts -------------------------------------------

DEEP = 40  # levels of nesting; MariaDB's JSON_VALID accepts 31
# The file's text, as a service could send it: escapes, exact numbers, deep nesting.
AWKWARD = (
    b'[{"id": "nul", "text": "a\\u0000b", "k\\u0000": 1},\n'
    b' {"id": "lone", "text": "cut \\ud83d", "low": "\\udc00!", "pair": "\\ud83d\\ude00"},\n'
    b' {"id": "utf8", "text": "\xf0\x9f\x98\x80 caf\xc3\xa9", "\xe2\x82\xac": "\\u20ac"},\n'
    b' {"id": "exact", "pi": 3.14159265358979323846, "big": 123456789012345678901234567890,'
    b' "e": 1E2, "huge": 1e400, "tiny": -2.5e-300, "cents": 0.10},\n'
    b' {"id": "beyond-numeric", "up": 1e200000, "down": 1.5e-16383, "ok": 1e-16383},\n'
    b' {"id": "escaped-backslash", "text": "\\\\u0000 and \\\\ud800 are text"},\n'
    b' {"id": "deep", "v": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"},\n"
    b' {"id": "long-key", "' + b"k" * 100_000 + b'": true}]'
)


def _decimal_json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _expected_objects(kind: str) -> dict[str, Any]:
    """The awkward objects as each database keeps them (what docs/sql.md promises)."""
    nul = "\ufffd" if kind == "postgresql" else "\x00"
    deep: Any = 1
    for level in range(DEEP + 1, 1, -1):  # the object is level 1, "v" opens level 2
        deep = [deep]
        if kind == "mariadb" and level == 32:
            deep = json.dumps(deep, separators=(",", ":"))  # deeper than 31: kept as text
    beyond = (
        {"up": "1e200000", "down": "1.5e-16383"}
        if kind == "postgresql"
        else {"up": Decimal("1e200000"), "down": Decimal("1.5e-16383")}
    )
    objects = [
        {"id": "nul", "text": f"a{nul}b", f"k{nul}": Decimal(1)},
        {"id": "lone", "text": "cut \ufffd", "low": "\ufffd!", "pair": "\U0001f600"},
        {"id": "utf8", "text": "\U0001f600 café", "€": "€"},
        {"id": "exact", "pi": Decimal("3.14159265358979323846"),
         "big": Decimal(123456789012345678901234567890), "e": Decimal("1E2"),
         "huge": Decimal("1e400"), "tiny": Decimal("-2.5e-300"), "cents": Decimal("0.10")},
        {"id": "beyond-numeric", **beyond, "ok": Decimal("1e-16383")},
        {"id": "escaped-backslash", "text": "\\u0000 and \\ud800 are text"},
        {"id": "deep", "v": deep},
        {"id": "long-key", "k" * 100_000: True},
    ]  # fmt: skip
    return {o["id"]: o for o in objects}


def stored_objects(sink: SqlSink, user: str, name: str) -> dict[str, Any]:
    """Each object row as the database holds it, numbers compared as decimals."""
    text = sa.cast(sink.objects.c.object, sa.Text if sink.db.dialect != "mysql" else LongText)
    with sink.db.engine.connect() as conn:
        found = conn.execute(
            sa.select(sink.objects.c.object_key, text).where(
                sink.objects.c.file_key == file_key(user, name)
            )
        ).all()
    return {key: _decimal_json(value) for key, value in found}


def test_json_one_database_refuses_is_kept_on_every_database(
    sql_db: SqlDb, caplog: pytest.LogCaptureFixture
) -> None:
    sink = make_sink(sql_db)
    metadata = {"objectType": "post", "note": "x\x00y", "deep": [[[[1]]]]}
    put(sink, "alice", "awkward.json", AWKWARD, metadata=metadata)
    # The file row is byte-exact on every database...
    assert sink.read_content("alice", "awkward.json") == AWKWARD
    (row,) = rows(sink, sink.files)
    assert (row.size, row.sha256) == (len(AWKWARD), hashlib.sha256(AWKWARD).hexdigest())
    assert row.object_count == 8
    nul = "\ufffd" if sql_db.kind == "postgresql" else "\x00"
    assert row.metadata == {"objectType": "post", "note": f"x{nul}y", "deep": [[[[1]]]]}
    # ...and every object has its row, as close to the text as the type allows.
    assert stored_objects(sink, "alice", "awkward.json") == _expected_objects(sql_db.kind)
    # The objects can be queried with the database's JSON functions.
    path = {"postgresql": "object->>'id'", "mariadb": "JSON_VALUE(object, '$.id')"}.get(
        sql_db.kind, "json_extract(object, '$.id')"
    )
    with sink.db.engine.connect() as conn:
        ids = conn.execute(sa.text(f"SELECT {path} FROM {sink.objects.name}")).scalars().all()
    assert sorted(ids) == sorted(_expected_objects(sql_db.kind))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    sink.close()


def test_text_columns_hold_the_same_prefix_everywhere(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    mimetype = "image/x-" + "z" * 300 + "\x00"
    put(
        sink,
        "alice",
        "photo.bin",
        b"\x00\x01raw",
        metadata={"mimetype": mimetype},
        last_modified="Tue, 14 Nov 2023 22:13:20 GMT" + " (and a very long comment)" * 5,
    )
    (row,) = rows(sink, sink.files)
    assert row.mimetype == mimetype[:255]  # the column's length; the whole value in metadata
    nul = "\ufffd" if sql_db.kind == "postgresql" else "\x00"
    assert row.metadata["mimetype"] == mimetype.replace("\x00", nul)
    assert (
        row.last_modified
        == ("Tue, 14 Nov 2023 22:13:20 GMT" + " (and a very long comment)" * 5)[:64]
    )
    assert sink.read_content("alice", "photo.bin") == b"\x00\x01raw"
    sink.close()


def test_an_updated_date_beyond_bigint_is_a_clear_error_everywhere(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    with pytest.raises(SinkError, match=r"updatedDate 9223372036854775808, which no SQL BIGINT"):
        put(sink, "alice", "f.json", b"[]", updated_date=1 << 63)
    put(sink, "alice", "g.json", b"[]", updated_date=(1 << 63) - 1)
    assert [r.name for r in rows(sink, sink.files)] == ["g.json"]
    sink.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 5000 + b"]" * 5000, "nests JSON too deeply to decode"),
        (b'[{"n": NaN}]', "cannot be read as JSON"),
        (b"[" + b"9" * 5000 + b"]", "cannot be read as JSON (Integer value out of range"),
    ],
)
def test_json_no_database_can_split_is_stored_whole_everywhere(
    sql_db: SqlDb, caplog: pytest.LogCaptureFixture, body: bytes, reason: str
) -> None:
    sink = make_sink(sql_db)
    put(sink, "alice", "odd.json", body)
    (row,) = rows(sink, sink.files)
    assert row.object_count is None and rows(sink, sink.objects) == []
    assert sink.read_content("alice", "odd.json") == body
    assert f"'odd.json' of user 'alice' {reason}" in caplog.text
    sink.close()


@pytest.mark.parametrize("sql_db", ["sqlite", "mariadb"], indirect=True)
def test_an_object_over_max_allowed_packet_leaves_the_file_whole_on_mariadb(
    sql_db: SqlDb, caplog: pytest.LogCaptureFixture
) -> None:
    kind = sql_db.kind
    sink = make_sink(sql_db)
    limit = 16 << 20 if kind == "sqlite" else sink.db.packet_limit()
    assert limit == 16 << 20  # the server's default; the object below exceeds it
    body = json.dumps([{"id": "small"}, {"id": "big", "text": "x" * limit}]).encode()
    put(sink, "alice", "big.json", body)
    (row,) = rows(sink, sink.files)
    assert sink.read_content("alice", "big.json") == body
    if kind == "mariadb":
        assert row.object_count is None and rows(sink, sink.objects) == []
        assert f"more than the server's max_allowed_packet ({limit})" in caplog.text
    else:
        assert row.object_count == 2
    sink.close()


def test_a_latin1_mariadb_database_stores_any_character(
    mariadb_database: str, tmp_path: Path
) -> None:
    """A v1 sink's tables in a latin1 database are converted (schema v2) and take emoji."""
    admin = sa.create_engine(mariadb_database, isolation_level="AUTOCOMMIT")
    name = f"ps_latin1_{os.urandom(4).hex()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET latin1")
    try:
        url = sa.engine.make_url(mariadb_database).set(database=name)
        db = _server_db("mariadb", url.render_as_string(hide_password=False))
        old = sa.create_engine(db.url)
        # What a v1 sink left behind: the same tables, in the database's latin1.
        metadata, *_ = sink_tables(db.prefix)
        for table in metadata.tables.values():
            table.kwargs.pop("mysql_charset", None)
            table.kwargs.pop("mysql_collate", None)
            table.dialect_kwargs.pop("mysql_charset", None)
            table.dialect_kwargs.pop("mysql_collate", None)
        versions = schema_version_table(metadata, db.prefix)
        with old.begin() as conn:
            metadata.create_all(conn)
            conn.execute(versions.insert().values(component="sink", version=1))
            collation = conn.exec_driver_sql(
                f"SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE "
                f"TABLE_SCHEMA = '{name}' AND TABLE_NAME = '{db.prefix}objects'"
            ).scalar()
        assert collation.startswith("latin1")
        old.dispose()
        sink = make_sink(db)
        body = json.dumps([{"id": "e", "text": "😀 café"}], ensure_ascii=False).encode()
        put(sink, "😀 user", "😀.json", body, metadata={"serviceName": "📷"})
        (row,) = rows(sink, sink.files)
        assert (row.user_id, row.name, row.metadata) == (
            "😀 user",
            "😀.json",
            {"serviceName": "📷"},
        )
        assert objects_of(sink, "😀 user", "😀.json") == {"e": {"id": "e", "text": "😀 café"}}
        assert sink.read_content("😀 user", "😀.json") == body
        sink.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def test_hostile_user_id_is_refused_before_connecting(tmp_path: Path) -> None:
    sink = make_sink(_sqlite(tmp_path))
    with pytest.raises(SinkError, match=r"user id '\.\./x' is unsafe"):
        sink.privateshare_sink_open_run(run=make_run("../x"))
    assert not (tmp_path / "privateshare.db").exists()


def _server_db(kind: str, url: str) -> Any:
    class Db:
        prefix = "privateshare_"

        def options(self, **extra: Any) -> dict[str, Any]:
            return {"url": self.url, **extra}

    db = Db()
    db.kind, db.url = kind, url  # type: ignore[attr-defined]
    return db


def _sqlite(path: Path) -> Any:
    class Db:
        kind = "sqlite"
        prefix = "privateshare_"
        url = f"sqlite:///{path / 'privateshare.db'}"

        def options(self, **extra: Any) -> dict[str, Any]:
            return {"url": self.url, **extra}

    return Db()


# --- a crash in the middle of a large write ------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import sqlalchemy as sa
    from privateshare.hooks import PluginContext
    from privateshare.plugins.sink_sql import SqlSink
    from privateshare.testing.helpers import make_file, make_run

    sink = SqlSink(SqlSink.Options(**json.loads(sys.argv[1])), PluginContext("sinks.db", Path(".")))
    inserted = 0

    @sa.event.listens_for(sink.db.engine, "after_cursor_execute")
    def _after(conn, cursor, statement, params, context, executemany):
        global inserted
        if statement.lstrip().upper().startswith("INSERT") and "file_chunks" in statement:
            inserted += 1
            if inserted == 5:
                print("half-way", flush=True)
                time.sleep(120)

    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(run=run, file=make_file("alice", "big.bin", 2))
    block = bytes(range(256)) * 4096
    for _ in range(16):
        writer.write(block)
    writer.commit()
    print("committed", flush=True)
    """
)


def test_a_writer_killed_mid_commit_leaves_no_partial_rows(sql_db: SqlDb) -> None:
    sink = make_sink(sql_db)
    put(sink, "alice", "big.bin", b"version 1", updated_date=1)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, json.dumps(sql_db.options())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "half-way", (line, proc.stderr.read() if proc.stderr else "")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    key = file_key("alice", "big.bin")
    assert rows(sink, sink.chunks, sink.chunks.c.file_key == key) == []
    (row,) = rows(sink, sink.files)
    assert (row.updated_date, row.size) == (1, 9)
    assert sink.read_content("alice", "big.bin") == b"version 1"
    # Nothing stays locked: the rerun writes the new version at once.
    data = os.urandom(3 * CHUNK_SIZE)
    put(sink, "alice", "big.bin", data, updated_date=2)
    assert sink.read_content("alice", "big.bin") == data
    sink.close()


# --- the whole flow against the sandbox ---------------------------------------------


def _table_state(sink: SqlSink) -> dict[str, Any]:
    with sink.db.engine.connect() as conn:
        return {
            "files": sorted(
                conn.execute(
                    sa.select(sink.files.c.user_id, sink.files.c.name, sink.files.c.sha256)
                )
            ),
            "chunks": conn.execute(sa.select(sa.func.count()).select_from(sink.chunks)).scalar(),
            "objects": sorted(
                conn.execute(
                    sa.select(
                        sink.objects.c.file_key, sink.objects.c.position, sink.objects.c.object_key
                    )
                )
            ),
        }


def test_the_flow_delivers_every_file_and_a_rerun_adds_no_rows(
    sql_db: SqlDb, privateshare_sandbox: Any, tmp_path: Path
) -> None:
    sandbox = privateshare_sandbox(
        files=16,
        large_files=1,
        large_file_size=3 * CHUNK_SIZE,
        running_polls=2,
        updated_fraction=0.4,
    )
    fw = sandbox_framework(sandbox, tmp_path, sinks={"db": {"type": "sql", **sql_db.options()}})
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    sink = fw.plugins["sinks.db"]
    truth = sandbox.ground_truth()
    contents = {r.name: sink.read_content("alice", r.name) for r in rows(sink, sink.files)}
    assert {n: hashlib.sha256(c or b"").hexdigest() for n, c in contents.items()} == truth
    assert {r.name: r.sha256 for r in rows(sink, sink.files)} == truth
    assert any(r.content_in == "chunks" for r in rows(sink, sink.files))
    for row in rows(sink, sink.files):
        if row.kind == "mapped":
            document = json.loads(contents[row.name] or b"")
            assert row.object_count == len(document)
            stored = rows(
                sink, sink.objects, sink.objects.c.file_key == file_key("alice", row.name)
            )
            assert [o.object for o in sorted(stored, key=lambda o: o.position)] == document
    before = _table_state(sink)
    assert before["objects"] and before["chunks"]
    if sql_db.kind in DOC_QUERIES:
        results = run_documented_queries(sink, DOC_QUERIES[sql_db.kind], sql_db.prefix)
        assert results[0] and results[1] and results[2]  # posts, transactions, services

    # Forget the checkpoint: the rerun delivers every file again, into the same rows.
    fw.hooks.checkpoint_save("alice", {})
    again = flow.pull("alice")
    assert again.files_delivered >= len(truth) and not again.files_failed  # (+ old versions)
    assert _table_state(sink) == before
    fw.close()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
DOC_QUERIES = {"sqlite": "SQLite (`json_extract`", "postgresql": "PostgreSQL (`jsonb`"}


def run_documented_queries(sink: SqlSink, heading: str, prefix: str) -> list[list[Any]]:
    """Run each statement of the first sql block after ``heading`` in docs/sql.md."""
    text = DOCS.read_text(encoding="utf-8")
    block = text[text.index(heading) :].split("```sql\n", 1)[1].split("```", 1)[0]
    statements = [s.strip() for s in block.split(";") if s.strip()]
    assert len(statements) >= 3
    results = []
    with sink.db.engine.connect() as conn:
        for statement in statements:
            sql = statement.replace("privateshare_", prefix)
            results.append(conn.exec_driver_sql(sql).all())
    return results


# --- configuration and errors ---------------------------------------------------------


def test_configured_by_toml_with_a_relative_sqlite_path(
    privateshare_factory, tmp_path: Path
) -> None:
    fw = privateshare_factory(
        """
        [sinks.db]
        type = "sql"
        url = "sqlite:///out/data.db"
        table_prefix = "ps_"
        """
    )
    sink = fw.plugins["sinks.db"]
    assert isinstance(sink, SqlSink)
    assert sink.db.sqlite_path == tmp_path / "out" / "data.db"
    assert repr(sink) == f"SqlSink(sinks.db, url=sqlite:///{tmp_path}/out/data.db)"
    run = make_run("alice")
    fw.hooks.sinks_open_run(run)
    assert deliver(fw, make_file("alice", "a.json"), [b"[", memoryview(b"1]")], run) == ["sinks.db"]
    assert sink.read_content("alice", "a.json") == b"[1]"
    assert sa.inspect(sink.db.engine).has_table("ps_files")
    for path in (tmp_path / "out").iterdir():  # the database, its -wal and -shm files
        assert path.stat().st_mode & 0o077 == 0, path


def test_unknown_option_is_a_config_error(privateshare_factory) -> None:
    with pytest.raises(ConfigError, match=r"\[sinks.db\]: unknown key 'ulr'; did you mean 'url'"):
        privateshare_factory('[sinks.db]\ntype = "sql"\nulr = "sqlite:///x.db"\n')


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", r"\[sinks.db\] url: 'not a url': it is not a database URL; write it as"),
        (
            f"postgres ql://u:{PASSWORD}@h/db",
            r"'postgres ql://u:\*\*\*@h/db': it is not a database URL",
        ),
        (
            "oracle://scott@db/orcl",
            r"the database 'oracle' is not supported; .* SQLite, PostgreSQL",
        ),
        ("nosuchdb://x", r"the database 'nosuchdb' is not supported"),
        (
            f"postgresql+pg8000://u:{PASSWORD}@127.0.0.1/db",
            r"the database driver for 'postgresql\+pg8000' is not installed \(No module named "
            r"'pg8000'\); install it, or run pip install 'privateshare\[sql\]' and use "
            r"postgresql\+psycopg://",
        ),
        ("mysql+mysqldb://root@127.0.0.1/db", r"No module named 'MySQLdb'.*mysql\+pymysql://"),
        ("sqlite://", r"an in-memory SQLite database would lose everything"),
        ("sqlite:///:memory:", r"in-memory"),
        ("sqlite:///x.db", None),
    ],
)
def test_bad_urls_are_config_errors(tmp_path: Path, url: str, expected: str | None) -> None:
    db = _sqlite(tmp_path)
    if expected is None:
        assert make_sink(db, url=url).db.sqlite_path == Path.cwd() / "x.db"
        return
    with pytest.raises(ConfigError, match=expected) as info:
        make_sink(db, url=url)
    assert PASSWORD not in str(info.value)


def test_a_url_without_driver_gets_the_installed_one(tmp_path: Path) -> None:
    db = _sqlite(tmp_path)
    assert make_sink(db, url="postgresql://u@h/db").db.url.drivername == "postgresql+psycopg"
    assert make_sink(db, url="mariadb://u@h/db").db.url.drivername == "mariadb+pymysql"
    with pytest.raises(ConfigError, match="table_prefix: 'bad-prefix' is not a plain SQL name"):
        make_sink(db, table_prefix="bad-prefix")


def test_password_comes_from_a_secret_and_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = _sqlite(tmp_path)
    monkeypatch.setenv("PS_DB_PASSWORD", PASSWORD)
    sink = make_sink(
        db, url="postgresql://ps@127.0.0.1:1/db", password=Secret(env="PS_DB_PASSWORD"), timeout=2
    )
    assert sink.db.url.password == PASSWORD  # injected into the URL the engine uses
    assert PASSWORD not in repr(sink) and "***" in repr(sink)
    with pytest.raises(SinkError) as info:
        sink.privateshare_sink_open_run(run=make_run())
    message = str(info.value)
    assert message.startswith("[sinks.db] cannot create or upgrade its tables (privateshare_*) in ")
    assert "check that the database server at 127.0.0.1:1 is running" in message
    assert PASSWORD not in message and "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ConfigError, match="holds a password and the password option is set too"):
        make_sink(db, url=f"postgresql://ps:{PASSWORD}@h/db", password=Secret(env="PS_DB_PASSWORD"))
    with caplog.at_level("WARNING"):
        make_sink(db, url=f"postgresql://ps:{PASSWORD}@h/db")
    assert "url contains a password in the config file" in caplog.text
    assert PASSWORD not in caplog.text
    monkeypatch.delenv("PS_DB_PASSWORD")
    with pytest.raises(ConfigError, match="environment variable PS_DB_PASSWORD is not set"):
        make_sink(db, url="postgresql://ps@h/db", password=Secret(env="PS_DB_PASSWORD"))


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_unreachable_server_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    scheme = {"postgresql": "postgresql+psycopg", "mariadb": "mysql+pymysql"}[kind]
    sink = make_sink(_sqlite(tmp_path), url=f"{scheme}://u:{PASSWORD}@127.0.0.1:1/db", timeout=2)
    with pytest.raises(SinkError) as info:
        put(sink, "alice", "f.json", b"{}")
    message = str(info.value)
    assert f"in {scheme}://u:***@127.0.0.1:1/db" in message
    assert "is running and reachable" in message and PASSWORD not in message


def test_wrong_password_is_a_clear_error(mariadb_database: str, tmp_path: Path) -> None:
    sink = make_sink(_sqlite(tmp_path), url=mariadb_database, password=Secret.literal(PASSWORD))
    with pytest.raises(SinkError) as info:
        sink.privateshare_sink_open_run(run=make_run())
    message = str(info.value)
    assert "Access denied" in message and "refused the credentials" in message
    assert PASSWORD not in message


def test_missing_database_is_a_clear_error(postgresql_database: str, tmp_path: Path) -> None:
    url = sa.engine.make_url(postgresql_database).set(database="ps_no_such_db")
    sink = make_sink(_sqlite(tmp_path), url=url.render_as_string(hide_password=False))
    with pytest.raises(SinkError, match=r"does not exist.*CREATE DATABASE"):
        sink.privateshare_sink_open_run(run=make_run())


def test_a_user_without_create_privilege_gets_a_clear_error(
    limited_user: str, tmp_path: Path
) -> None:
    sink = make_sink(_sqlite(tmp_path), url=limited_user)
    with pytest.raises(SinkError) as info:
        sink.privateshare_sink_open_run(run=make_run())
    message = str(info.value)
    assert message.startswith("[sinks.db] cannot create or upgrade its tables")
    assert "the database user lacks a privilege; grant it" in message
    sink.close()
