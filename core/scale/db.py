"""The shared database of the scale-out state: the one the ``sql`` token store names.

A small engine over that database (its ``url``, ``password`` and ``table_prefix`` options,
read from the config, so no plugin need be loaded): PostgreSQL, MariaDB/MySQL or SQLite,
with the core SQL layer's SQLite set-up and error wording (:mod:`privateshare.sqldb`).
Errors become :class:`ScaleError` naming the database (never its password) and what
failed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import PrivateShareError
from ..sqldb import first_line, sqlite_events

DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


class ScaleError(PrivateShareError):
    """The scale-out machinery (broker, shared state) cannot do what was asked."""


class SharedDatabase:
    """An engine with clear errors, write transactions and one-time schema creation."""

    def __init__(self, url: str, password: str | None, base_dir: Path, prefix: str) -> None:
        parsed = sa.engine.make_url(url)
        backend = parsed.get_backend_name()
        if backend not in DIALECTS:
            raise ScaleError(
                f"[scale] the shared database {parsed.render_as_string(hide_password=True)} is "
                "not supported; use PostgreSQL, MariaDB/MySQL or SQLite"
            )
        if "+" not in parsed.drivername and backend in DRIVERS:
            parsed = parsed.set(drivername=f"{backend}+{DRIVERS[backend]}")
        if password is not None:
            parsed = parsed.set(password=password)
        self.dialect = DIALECTS[backend]
        self.sqlite_path: Path | None = None
        if self.dialect == "sqlite":
            database = Path(parsed.database or "privateshare-scale.db").expanduser()
            self.sqlite_path = database if database.is_absolute() else base_dir / database
            parsed = parsed.set(database=str(self.sqlite_path))
        self.prefix = prefix
        self.safe_url = parsed.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(
                pool_size=5,
                max_overflow=10,
                pool_recycle=1800,
                isolation_level="READ COMMITTED",
                connect_args={"connect_timeout": 10},
            )
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise ScaleError(
                f"[scale] the shared database {self.safe_url} cannot be used: {first_line(exc)}; "
                "run: pip install 'privateshare[celery]'"
            ) from None
        if self.dialect == "sqlite":
            sqlite_events(self.engine)
        self._schema_done = False
        self._schema_lock = threading.Lock()

    def where(self) -> str:
        return str(self.sqlite_path) if self.sqlite_path else self.safe_url

    def translate(self, exc: BaseException, action: str) -> ScaleError:
        detail = first_line(getattr(exc, "orig", None) or exc)
        password = self.engine.url.password
        if isinstance(password, str) and password:
            detail = detail.replace(password, "***")
        return ScaleError(
            f"[scale] cannot {action} in the shared database {self.where()}: {detail}; check "
            "that it runs and is reachable from this machine, and the [tokens] url and password"
        )

    def connect(self, action: str) -> Connection:
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self.translate(exc, action) from None

    @contextmanager
    def transaction(self, action: str, *, write: bool = True) -> Iterator[Connection]:
        """One transaction, committed on success; ``write`` takes SQLite's write lock at once."""
        conn = self.connect(action)
        try:
            if write and self.dialect == "sqlite":
                conn.execution_options(privateshare_write=True)
            try:
                with conn.begin():
                    yield conn
            except SQLAlchemyError as exc:
                raise self.translate(exc, action) from None
        finally:
            conn.close()

    def ensure_schema(self, metadata: sa.MetaData) -> None:
        """Create the tables once per process, under a database-wide lock (many workers start)."""
        with self._schema_lock:
            if self._schema_done:
                return
            name = "privateshare-scale-" + hashlib.sha256(self.prefix.encode()).hexdigest()[:40]
            action = f"create its tables ({self.prefix}scale_*)"
            conn = self.connect(action)
            try:
                if self.dialect == "mysql":
                    conn.execute(sa.text("SELECT GET_LOCK(:n, 30)"), {"n": name})
                    conn.commit()
                if self.dialect == "sqlite":
                    conn.execution_options(privateshare_write=True)
                with conn.begin():
                    if self.dialect == "postgresql":
                        key = int.from_bytes(bytes.fromhex(name[-16:]), "big", signed=True)
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                    metadata.create_all(conn, checkfirst=True)
                if self.dialect == "mysql":
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                    conn.commit()
            except SQLAlchemyError as exc:
                raise self.translate(exc, action) from None
            finally:
                conn.close()
            self._schema_done = True

    def dispose(self) -> None:
        self.engine.dispose()
