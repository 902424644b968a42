"""core/sqldb.py, on a real SQLite file: statements built once, upserts, schema versions, and
driver errors turned into clear plugin errors. URLs, passwords and the JSON each database
takes are tested through the sql sink on every database (tests/plugins/test_sink_sql.py)."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from privateshare.errors import SinkError
from privateshare.hooks import PluginContext
from privateshare.sqldb import Database, SqlOptions, error_code, first_line


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    options = SqlOptions(url="sqlite:///dir/state.db", table_prefix="t_")
    database = Database(options, PluginContext("sinks.db", tmp_path), error=SinkError)
    yield database
    database.dispose()


def table(metadata: sa.MetaData | None = None) -> sa.Table:
    return sa.Table(
        "t_rows",
        metadata or sa.MetaData(),
        sa.Column("user", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(20), primary_key=True),
        sa.Column("updated", sa.Integer),
        sa.Column("note", sa.String(5)),
    )


def test_the_sqlite_file_is_made_beside_the_config_and_private(
    db: Database, tmp_path: Path
) -> None:
    assert db.where() == str(tmp_path / "dir" / "state.db")
    with db.transaction("write") as conn:
        conn.execute(sa.text("CREATE TABLE x (a INTEGER)"))
    path = tmp_path / "dir" / "state.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_upsert_replaces_and_insert_ignore_keeps(db: Database) -> None:
    rows = table()
    with db.transaction("write") as conn:
        rows.metadata.create_all(conn)
        db.upsert(conn, rows, {"user": "a", "name": "f", "updated": 1}, ["user", "name"])
        db.upsert(conn, rows, {"user": "a", "name": "f", "updated": 2}, ["user", "name"])
        db.insert_ignore(conn, rows, {"user": "a", "name": "f", "updated": 3}, ["user", "name"])
        db.insert_ignore(conn, rows, {"user": "b", "name": "f", "updated": 4}, ["user", "name"])
        db.upsert(conn, rows, {"user": "b", "name": "f"}, ["user", "name"])  # keys alone
    with db.transaction("read", write=False) as conn:
        found = conn.execute(sa.select(rows.c.user, rows.c.updated).order_by(rows.c.user)).all()
    assert [tuple(row) for row in found] == [("a", 2), ("b", 4)]


def test_statements_are_built_once_per_table_and_columns(db: Database) -> None:
    rows = table()
    upsert = db._upsert_statement(rows, ("user", "name", "updated"), ("user", "name"))
    assert db._upsert_statement(rows, ("user", "name", "updated"), ("user", "name")) is upsert
    assert db._upsert_statement(rows, ("user", "name", "note"), ("user", "name")) is not upsert
    ignore = db._insert_ignore_statement(rows, ("user", "name"), ("user", "name"))
    assert db._insert_ignore_statement(rows, ("user", "name"), ("user", "name")) is ignore
    assert ignore is not upsert


def test_text_is_cut_to_its_column_and_nul_kept_outside_postgresql(db: Database) -> None:
    note = table().c.note
    assert db.fit_text("abcdefgh", note) == "abcde"
    assert db.fit_text("a\x00b", note) == "a\x00b"
    assert db.fit_text(None, note) is None
    assert db.fit_text("x" * 50, table().c.updated) == "x" * 50  # no length: kept whole


def test_the_schema_is_created_once_and_migrated_step_by_step(tmp_path: Path) -> None:
    def database() -> Database:
        options = SqlOptions(url="sqlite:///s.db", table_prefix="t_")
        return Database(options, PluginContext("sinks.db", tmp_path), error=SinkError)

    first = database()
    first.ensure_schema("sink", 1, table().metadata)
    first.ensure_schema("sink", 1, sa.MetaData())  # once per process and component
    first.dispose()
    steps: list[int] = []

    def step(number: int) -> Callable[[sa.Connection], None]:
        def migrate(conn: sa.Connection) -> None:
            steps.append(number)
            conn.execute(sa.text(f"ALTER TABLE t_rows ADD COLUMN c{number} INTEGER"))

        return migrate

    second = database()
    second.ensure_schema("sink", 3, table().metadata, {2: step(2), 3: step(3)})
    second.ensure_schema("tokens", 1, sa.MetaData())
    with second.transaction("read", write=False) as conn:
        versions = dict(
            conn.execute(sa.text("SELECT component, version FROM t_schema_version")).all()
        )
        columns = [row[1] for row in conn.execute(sa.text("PRAGMA table_info(t_rows)"))]
    second.dispose()
    assert steps == [2, 3] and versions == {"sink": 3, "tokens": 1}
    assert columns[-2:] == ["c2", "c3"]


def driver_error(exc: Exception) -> DBAPIError:
    return OperationalError("SELECT 1", {}, exc)


def test_driver_errors_become_plugin_errors_with_the_fix(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "dir" / "state.db"
    locked = db.translate(driver_error(sqlite3.OperationalError("database is locked")), "save f")
    assert isinstance(locked, SinkError)
    assert str(locked) == (
        f"[sinks.db] cannot save f in {path}: database is locked; another process kept the "
        "database locked for more than 30 s; retry, or raise timeout"
    )
    unopened = db.translate(
        driver_error(sqlite3.OperationalError("unable to open database file")), "read"
    )
    assert "writable by the user running privateshare" in str(unopened)
    denied = db.translate(driver_error(Exception(1142, "INSERT command denied")), "save f")
    assert str(denied).startswith(f"[sinks.db] cannot save f in {path}: INSERT command denied;")
    assert "lacks a privilege; grant it" in str(denied)
    other = db.translate(driver_error(sqlite3.IntegrityError("constraint failed")), "save f")
    assert str(other).endswith(
        "constraint failed; check the database's state and the user's privileges"
    )


def test_a_failing_statement_rolls_back_and_raises_the_plugin_error(db: Database) -> None:
    failing = pytest.raises(SinkError, match=r"^\[sinks\.db\] cannot fill x in .*no such table")
    with failing, db.transaction("fill x") as conn:
        conn.execute(sa.text("CREATE TABLE y (a INTEGER)"))
        conn.execute(sa.text("INSERT INTO x VALUES (1)"))
    with db.transaction("read", write=False) as conn:
        assert conn.execute(sa.text("SELECT name FROM sqlite_master")).all() == []


def test_a_password_in_a_driver_message_is_not_repeated(tmp_path: Path) -> None:
    options = SqlOptions(url="postgresql://ps:pw99@db.example:5433/x")
    database = Database(options, PluginContext("sinks.db", tmp_path), error=SinkError)
    error = database.translate(
        driver_error(Exception("connection to postgresql://ps:pw99@db.example failed: pw99")),
        "connect",
        connecting=True,
    )
    database.dispose()
    assert "pw99" not in str(error)
    assert "the database server at db.example:5433 is running and reachable" in str(error)
    assert database.where() == "postgresql+psycopg://ps:***@db.example:5433/x"


def test_first_line_and_error_code_read_each_driver_shape() -> None:
    assert first_line(Exception(1045, "Access denied for user 'u'")) == "Access denied for user 'u'"
    assert error_code(Exception(1045, "Access denied")) == 1045
    assert first_line(ValueError("one\n\n two \nthree")) == "one two"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("x" * 400)) == "x" * 297 + "..."
    wrapped = sa.exc.ArgumentError("bad\n(Background on this error at: https://sqlalche.me/e/)")
    assert first_line(wrapped) == "bad"

    class PsycopgLike(Exception):
        sqlstate = "28P01"

    assert error_code(PsycopgLike("auth")) == "28P01"
    assert error_code(ValueError("plain")) is None
