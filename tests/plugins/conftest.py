"""Real databases for the SQL plugin tests: SQLite files, and fresh PostgreSQL/MariaDB databases.

PostgreSQL and MariaDB are the servers already running on this machine (trust
auth / root without password); override them with ``PRIVATESHARE_TEST_POSTGRESQL_URL``
and ``PRIVATESHARE_TEST_MARIADB_URL``. Each test session creates its own
database ``ps_test_<random>`` on each server and drops it at the end; each test
gets its own table prefix inside it. When a server is unreachable the tests
that need it FAIL if ``CI`` is set, and are skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVERS = {
    "postgresql": os.environ.get(
        "PRIVATESHARE_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    # ssl_disabled: PyMySQL otherwise builds a TLS context (~35 ms) for every connection.
    "mariadb": os.environ.get(
        "PRIVATESHARE_TEST_MARIADB_URL",
        "mysql+pymysql://root@127.0.0.1:3306/test?ssl_disabled=true",
    ),
}
KINDS = ("sqlite", "postgresql", "mariadb")


@dataclass(frozen=True)
class SqlDb:
    """One database for one test: its URL and a table prefix nobody else uses."""

    kind: str
    url: str
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}_")

    def options(self, **extra: Any) -> dict[str, Any]:
        """Options for a SQL plugin over this database (as a TOML table would give them)."""
        return {"url": self.url, "table_prefix": self.prefix, **extra}


def _unavailable(kind: str, url: str, exc: BaseException) -> None:
    from sqlalchemy.engine import make_url

    safe = make_url(url).render_as_string(hide_password=True)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    reason = f"{kind} server at {safe} is unreachable ({detail})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the {kind} tests must run: start it", pytrace=False)
    pytest.skip(f"{reason}; start it to run these tests (they fail instead when CI is set)")


def _server_database(kind: str) -> Iterator[str]:
    """Create ``ps_test_<random>`` on the server, yield its URL, drop it afterwards."""
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(SERVERS[kind])
    name = f"ps_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        admin.dispose()
        _unavailable(kind, SERVERS[kind], exc)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(scope="session")
def postgresql_database() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this session."""
    yield from _server_database("postgresql")


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """URL of a fresh MariaDB database for this session."""
    yield from _server_database("mariadb")


def make_sql_db(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> SqlDb:
    if kind == "sqlite":
        return SqlDb(kind, f"sqlite:///{tmp_path / 'privateshare.db'}")
    return SqlDb(kind, request.getfixturevalue(f"{kind}_database"))


@pytest.fixture(params=KINDS)
def sql_db(request: pytest.FixtureRequest, tmp_path: Path) -> SqlDb:
    """Each of the three databases in turn, with a fresh table prefix."""
    return make_sql_db(request, request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> SqlDb:
    """The embedded default and the main server, for the slower multi-process tests."""
    return make_sql_db(request, request.param, tmp_path)


@pytest.fixture
def limited_user(request: pytest.FixtureRequest, sql_server_kind: str) -> Iterator[str]:
    """URL of a database user who may connect and read, but not create tables."""
    import sqlalchemy as sa

    database = request.getfixturevalue(f"{sql_server_kind}_database")
    url = sa.engine.make_url(database)
    name = f"ps_lim_{os.urandom(4).hex()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if sql_server_kind == "postgresql":
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
            conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {name}")
        else:
            conn.exec_driver_sql(f"CREATE USER '{name}'@'%%'")
            conn.exec_driver_sql(f"GRANT SELECT ON {url.database}.* TO '{name}'@'%%'")
    yield url.set(username=name, password=None).render_as_string(hide_password=False)
    with admin.connect() as conn:
        if sql_server_kind == "postgresql":
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
        else:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{name}'@'%%'")
    admin.dispose()


@pytest.fixture(params=["postgresql", "mariadb"])
def sql_server_kind(request: pytest.FixtureRequest) -> str:
    return request.param
