"""Warehouses for the tests: an embedded DuckDB file, or a fresh PostgreSQL database.

PostgreSQL is the server already running on this machine (127.0.0.1:5432, user
postgres, trust auth; override with ``PRIVATESHARE_TEST_POSTGRESQL_URL``). The test
session creates its own database ``ps_dlt_<random>`` and drops it at the end; each test
gets its own dataset (schema) in it. When the server is unreachable the PostgreSQL tests
FAIL if ``CI`` is set, and are skipped with the reason otherwise.

Tables are read with DuckDB's and psycopg2's own clients, not through the sink.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

# dlt's anonymous usage telemetry needs a network these tests do not have.
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

POSTGRES_URL = os.environ.get(
    "PRIVATESHARE_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
).replace("postgresql+psycopg://", "postgresql://")
#: Columns whose values are random per load, left out when two warehouses are compared.
RANDOM_COLUMNS = ("_dlt_id", "_dlt_parent_id", "_dlt_root_id", "_dlt_load_id")


def _with_password(url: str) -> str:
    """dlt requires a password in PostgreSQL credentials; trust auth ignores it."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    netloc = f"{parts.username or 'postgres'}:unused@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL (with a password, as dlt wants it) of a fresh database for this session."""
    import psycopg2

    name = f"ps_dlt_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    except psycopg2.Error as exc:
        reason = f"PostgreSQL at {urlsplit(POSTGRES_URL).hostname} is unreachable ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so these tests must run: start it", pytrace=False)
        pytest.skip(f"{reason}; start it to run these tests (they fail instead when CI is set)")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_password(urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}")))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@dataclass
class Warehouse:
    """One destination for one test, and a reader of what it holds."""

    kind: str
    base_dir: Path
    url: str = ""
    dataset: str = field(default_factory=lambda: f"ps_{uuid.uuid4().hex[:10]}")
    _reader: Any = field(default=None, init=False, repr=False, compare=False)

    def another(self, **changes: Any) -> Warehouse:
        """The same kind of warehouse with some fields changed (a copy)."""
        return replace(self, **changes)

    @property
    def duckdb_file(self) -> Path:
        return self.base_dir / "warehouse.duckdb"

    def options(self, **extra: Any) -> dict[str, Any]:
        """Sink options for this warehouse (as a TOML table gives them)."""
        if self.kind == "duckdb":
            base = {"database": str(self.duckdb_file)}
        else:
            os.environ["PS_DLT_TEST_POSTGRES"] = self.url
            base = {"destination": "postgres", "credentials": {"env": "PS_DLT_TEST_POSTGRES"}}
        return {"dataset_name": self.dataset, **base, **extra}

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """One DuckDB connection for the queries of the block (opening one costs ~40 ms of
        CPU). Nothing may write to the warehouse inside: the connection is read-only."""
        if self.kind != "duckdb" or self._reader is not None or not self.duckdb_file.exists():
            yield
            return
        import duckdb

        with duckdb.connect(str(self.duckdb_file), read_only=True) as con:
            self._reader = con
            try:
                yield
            finally:
                self._reader = None

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; ``{d}`` in it is the dataset; parameters are ``%s``."""
        sql = sql.replace("{d}", self.dataset)
        if self.kind == "duckdb":
            import duckdb

            if self._reader is not None:
                return self._reader.execute(sql.replace("%s", "?"), list(params)).fetchall()
            if not self.duckdb_file.exists():
                raise LookupError("no database yet")
            with duckdb.connect(str(self.duckdb_file), read_only=True) as con:
                return con.execute(sql.replace("%s", "?"), list(params)).fetchall()
        import psycopg2

        with psycopg2.connect(self.url) as con, con.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        con.close()
        return rows

    def tables(self) -> list[str]:
        try:
            rows = self.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                self.dataset,
            )
        except LookupError:
            return []
        return sorted(r[0] for r in rows)

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            self.dataset,
            table,
        )
        return [r[0] for r in rows]

    def rows(self, table: str, *columns: str) -> list[tuple[Any, ...]]:
        cols = ", ".join(f'"{c}"' for c in columns) or "*"
        return self.query(f'SELECT {cols} FROM {{d}}."{table}"')

    def contents(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every data table's rows (random dlt ids left out), sorted: for comparing runs."""
        out = {}
        with self.reading():
            for table in self.tables():
                if table.startswith("_dlt"):
                    continue
                columns = [c for c in self.columns(table) if c not in RANDOM_COLUMNS]
                if table == "privateshare_files":
                    columns.remove("run_id")
                out[table] = sorted(self.rows(table, *sorted(columns)), key=repr)
        return out


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Warehouse:
    """Each destination in turn: DuckDB (embedded) and PostgreSQL."""
    if request.param == "duckdb":
        return Warehouse("duckdb", tmp_path)
    return Warehouse("postgres", tmp_path, request.getfixturevalue("postgres_database"))


@pytest.fixture
def pg(tmp_path: Path, postgres_database: str) -> Warehouse:
    """PostgreSQL alone, for the tests of credentials and of a destination that is down."""
    return Warehouse("postgres", tmp_path, postgres_database)


@pytest.fixture
def duck(tmp_path: Path) -> Warehouse:
    """DuckDB alone, for the tests whose subject is not the destination."""
    return Warehouse("duckdb", tmp_path)
