"""The SQL layer the ``sql`` sink, the ``sql`` token store and scale-out share.

Options, engine, errors, schema.

Both plugins talk to SQLite (embedded, the default), PostgreSQL (psycopg 3) or
MariaDB/MySQL (PyMySQL) through SQLAlchemy 2 Core. This module turns a config
table into an engine (password injected from a secret, SQLite paths resolved
against the config directory), runs every statement in a transaction whose
failures become a :class:`~privateshare.errors.PrivateShareError` naming the
plugin's table, what failed and how to fix it (never a SQLAlchemy traceback,
never the password), and creates or migrates the plugins' tables under a
schema-version table. ``docs/sql.md`` describes the layout and the locking.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from privateshare.config import Seconds, redact_url_text
from privateshare.errors import ConfigError, PrivateShareError
from privateshare.hooks import PluginContext
from privateshare.secrets import Secret

log = logging.getLogger("privateshare.sql")

#: Dialects we test against; anything else is refused with this list.
SUPPORTED = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
#: The driver installed with ``privateshare[sql]`` when a url names none.
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
INSTALL_HINT = "pip install 'privateshare[sql]'"
URL_EXAMPLES = (
    "sqlite:///privateshare.db, postgresql+psycopg://user@host:5432/dbname or "
    "mysql+pymysql://user@host:3306/dbname"
)
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")

#: A ``Text``/``LargeBinary`` that holds more than 64 KiB on MariaDB/MySQL too.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
LongBlob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
#: JSON that PostgreSQL can index and query with ``->>`` (``jsonb``).
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def url_problem(value: str) -> str | None:
    """Why ``value`` is not the URL of a database the SQL plugins work with, if it is not."""
    try:
        url = sa.engine.make_url(value)
    except (ArgumentError, ValueError):
        return (
            "it is not a database URL; write it as dialect+driver://user@host:port/database, "
            f"e.g. {URL_EXAMPLES}"
        )
    backend = url.get_backend_name()
    if backend not in SUPPORTED:
        return (
            f"the database {backend!r} is not supported; privateshare's SQL plugins work with "
            f"SQLite, PostgreSQL and MariaDB/MySQL, e.g. {URL_EXAMPLES}"
        )
    database = url.database or ""
    if backend == "sqlite" and (
        database in ("", ":memory:") or database.startswith("file::memory:")
    ):
        return (
            "an in-memory SQLite database would lose everything when the process ends; name a "
            'file, e.g. url = "sqlite:///privateshare.db"'
        )
    return None


#: A database URL, checked where the config is decoded.
DatabaseUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        extra={
            "check": url_problem,
            "expected": "the SQLAlchemy URL of a SQLite, PostgreSQL or MariaDB/MySQL database",
        },
    ),
]


class SqlOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options both SQL plugins take (see ``docs/sql.md``)."""

    #: SQLAlchemy URL; a relative SQLite path is resolved against the config's directory.
    url: DatabaseUrl
    #: The database password, as a secret reference, injected into ``url``.
    password: Secret | None = None
    #: Prefix of every table the plugin creates, so several setups can share a database.
    table_prefix: Annotated[
        str,
        msgspec.Meta(
            pattern=_PREFIX.pattern,
            description="a plain SQL name: letters, digits and _, at most 40, no leading digit",
        ),
    ] = "privateshare_"
    #: Connections kept open per process (a held refresh lock uses one).
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    #: Seconds to wait for a server connection, or (SQLite) for another writer to finish.
    timeout: Seconds = 30.0


# --- JSON that every database stores ------------------------------------------------
#
# The three databases accept different JSON: PostgreSQL's jsonb refuses \u0000 and numbers
# beyond its numeric type, MariaDB's JSON_VALID refuses nesting deeper than 31 levels, and
# none takes a lone surrogate. Values are decoded and encoded here so that each database gets
# the closest document it can hold; docs/sql.md lists exactly what changes where.

#: Numbers are kept as written (``Decimal``), not rounded to a double.
_ENCODER = msgspec.json.Encoder(decimal_format="number")
#: Deepest nesting MariaDB's JSON_VALID accepts (32 levels fail its CHECK constraint).
MARIADB_JSON_DEPTH = 31
#: PostgreSQL ``numeric`` (and so jsonb numbers): digits before and after the point.
PG_NUMERIC_DIGITS = 131072
PG_NUMERIC_SCALE = 16383
#: One escape of a JSON string (a surrogate pair, one \\uXXXX, or any other), matched from
#: left to right so that an escaped backslash is never taken for the start of an escape.
_ESCAPE = re.compile(
    rb"\\(?:u(?:d[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|([0-9a-f]{4}))|.)", re.S | re.I
)
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_REPLACEMENT = b"\\ufffd"


def _surrogate_escape(match: re.Match[bytes]) -> bytes:
    """A lone surrogate escape as U+FFFD; pairs and every other escape unchanged."""
    lone = match[1] is not None and 0xD800 <= int(match[1], 16) <= 0xDFFF
    return _REPLACEMENT if lone else match[0]


def _nul_escape(match: re.Match[bytes]) -> bytes:
    return _REPLACEMENT if match[1] is not None and int(match[1], 16) == 0 else match[0]


def decode_json_document(data: bytes | memoryview, dialect: str) -> Any:
    """Decode JSON to store in ``dialect``'s JSON columns, as close to the text as it allows.

    Numbers become ``Decimal`` (exact); a lone surrogate escape becomes U+FFFD (no database
    and no UTF-8 text can hold one); on PostgreSQL a number beyond ``numeric`` becomes a
    string of its digits. Raises ``msgspec.DecodeError`` (not JSON) or ``RecursionError``.
    """
    decoder = msgspec.json.Decoder(float_hook=_pg_number if dialect == "postgresql" else _number)
    try:
        return decoder.decode(data)
    except msgspec.DecodeError:
        # msgspec refuses lone surrogates; only then is the text worth a second pass.
        if not _MAYBE_SURROGATE.search(data):
            raise
        fixed = _ESCAPE.sub(_surrogate_escape, bytes(data))
        if fixed == data:
            raise
        return decoder.decode(fixed)


_number = decimal.Decimal


def _pg_number(literal: str) -> decimal.Decimal | str:
    if len(literal) <= PG_NUMERIC_SCALE and "e" not in literal and "E" not in literal:
        return decimal.Decimal(literal)  # no exponent: it cannot leave numeric's range
    number = decimal.Decimal(literal)
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # JSON has no NaN or Infinity
    if -exponent > PG_NUMERIC_SCALE or len(digits) + exponent > PG_NUMERIC_DIGITS:
        return literal
    return number


def json_depth(value: Any, stop: int) -> int:
    """How deeply ``value`` nests containers, counting up to ``stop`` (then it stops)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if not isinstance(node, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest >= stop:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _cap_depth(value: Any, room: int) -> Any:
    """Containers below ``room`` levels replaced by their JSON text (as a string)."""
    if not isinstance(value, dict | list):
        return value
    if room == 0:
        return _ENCODER.encode(value).decode("utf-8")
    if isinstance(value, dict):
        return {k: _cap_depth(v, room - 1) for k, v in value.items()}
    return [_cap_depth(v, room - 1) for v in value]


def _serialize(value: Any, dialect: str) -> str:
    data = _ENCODER.encode(value)
    if dialect == "postgresql" and b"\\u0000" in data:
        data = _ESCAPE.sub(_nul_escape, data)  # jsonb: "unsupported Unicode escape"
    elif (
        dialect == "mysql"
        and data.count(b"[") + data.count(b"{") > MARIADB_JSON_DEPTH
        and json_depth(value, MARIADB_JSON_DEPTH + 1) > MARIADB_JSON_DEPTH
    ):
        data = _ENCODER.encode(_cap_depth(value, MARIADB_JSON_DEPTH))
    return data.decode("utf-8")


# One function object per dialect, made once: drivers cache adapters by the function.
_SERIALIZERS = {d: functools.partial(_serialize, dialect=d) for d in set(SUPPORTED.values())}


def json_serializer(dialect: str) -> Callable[[Any], str]:
    """The engine's JSON encoder: exact numbers, and what the dialect's JSON type refuses fixed."""
    return _SERIALIZERS[dialect]


class Database:
    """One plugin's engine, with transactions whose errors are clear and secret-free.

    ``error`` is the error class the plugin raises (:class:`SinkError`,
    :class:`TokenStoreError`); messages name the plugin by its config table.
    """

    def __init__(
        self,
        options: SqlOptions,
        context: PluginContext,
        *,
        error: type[PrivateShareError],
    ) -> None:
        self.name = context.name
        self.error = error
        self.timeout = options.timeout
        self.prefix = options.table_prefix
        if not _PREFIX.match(self.prefix):
            raise ConfigError(
                f"[{self.name}] table_prefix: {self.prefix!r} is not a plain SQL name; use "
                "letters, digits and underscores (at most 40, not starting with a digit), "
                'e.g. table_prefix = "privateshare_"'
            )
        self.url = self._parse_url(options, context)
        self._password = self.url.password if isinstance(self.url.password, str) else None
        self.safe_url = self.url.render_as_string(hide_password=True)
        self.dialect = SUPPORTED[self.url.get_backend_name()]
        self.sqlite_path: Path | None = (
            Path(self.url.database) if self.dialect == "sqlite" and self.url.database else None
        )
        #: How a value is written into this database's JSON columns.
        self.json_text = json_serializer(self.dialect)
        self.engine = self._create_engine(options)
        self._schema_done: set[str] = set()
        self._schema_lock = threading.Lock()
        self._packet_limit: int | None = None
        self._statements: dict[tuple[Any, ...], sa.Executable] = {}

    # --- configuration ---------------------------------------------------------

    def _parse_url(self, options: SqlOptions, context: PluginContext) -> URL:
        where = f"[{self.name}] url"
        problem = url_problem(options.url)
        if problem:
            raise ConfigError(f"{where}: {redact_url_text(options.url)!r}: {problem}")
        url = sa.engine.make_url(options.url)
        backend = url.get_backend_name()
        if "+" not in url.drivername and backend in DEFAULT_DRIVERS:
            url = url.set(drivername=f"{backend}+{DEFAULT_DRIVERS[backend]}")
        if options.password is not None:
            if url.password is not None:
                raise ConfigError(
                    f"{where} holds a password and the password option is set too; remove the "
                    "password from url (keep it only in the password secret)"
                )
            url = url.set(password=options.password.reveal())
        elif url.password is not None:
            log.warning(
                "[%s] url contains a password in the config file; move it to "
                'password = { env = "VARIABLE" } so no secret sits in the config',
                self.name,
            )
        if backend == "sqlite":
            database = url.database or ""
            if not database.startswith("file:"):
                url = url.set(database=str(context.resolve(database)))
        return url

    def _create_engine(self, options: SqlOptions) -> Engine:
        kwargs: dict[str, Any] = {
            "pool_pre_ping": True,
            "json_serializer": self.json_text,
            "hide_parameters": True,  # content and sealed tokens never reach an error text
        }
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": options.timeout}
            kwargs["pool_size"] = options.pool_size
        else:
            kwargs.update(
                pool_size=options.pool_size,
                max_overflow=options.pool_size * 2,
                pool_timeout=options.timeout,
                pool_recycle=1800,
                # Each statement sees what others committed: a worker that waited for the
                # refresh lock reads the token the holder saved.
                isolation_level="READ COMMITTED",
                connect_args={"connect_timeout": max(1, int(options.timeout))},
            )
        try:
            engine = sa.create_engine(self.url, **kwargs)
        except NoSuchModuleError:
            raise ConfigError(
                f"[{self.name}] url: SQLAlchemy has no dialect {self.url.drivername!r}; "
                f"use one of {URL_EXAMPLES}"
            ) from None
        except ImportError as exc:
            backend = self.url.get_backend_name()
            ours = f"{backend}+{DEFAULT_DRIVERS.get(backend, '')}"
            raise ConfigError(
                f"[{self.name}] url: the database driver for {self.url.drivername!r} is not "
                f"installed ({exc}); install it, or run {INSTALL_HINT} and use "
                f"{ours if backend in DEFAULT_DRIVERS else 'sqlite'}:// in url"
            ) from None
        except (SQLAlchemyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"[{self.name}] url: {self.safe_url} cannot be used: {self._scrub(str(exc))}"
            ) from None
        if self.dialect == "sqlite":
            sqlite_events(engine)
        return engine

    # --- connections and transactions -------------------------------------------

    def where(self) -> str:
        """The database as it may be printed: a SQLite path, or the url without password."""
        return str(self.sqlite_path) if self.sqlite_path else self.safe_url

    def connect(self, action: str) -> Connection:
        """A connection; a failure is an error saying the server or file cannot be reached."""
        if self.sqlite_path is not None and not self.sqlite_path.parent.exists():
            try:
                self.sqlite_path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise self.error(
                    f"[{self.name}] cannot {action}: the directory of the SQLite database "
                    f"{self.sqlite_path} cannot be created ({exc.strerror}); create it or "
                    "change url"
                ) from None
        if self.sqlite_path is not None and not self.sqlite_path.exists():
            # Personal data and sealed tokens: private from the first byte (SQLite gives
            # its -wal and -shm files the database file's mode).
            with contextlib.suppress(OSError):
                os.close(os.open(self.sqlite_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            return self.engine.connect()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self.translate(exc, action, connecting=True) from None

    @contextmanager
    def transaction(self, action: str, *, write: bool = True) -> Iterator[Connection]:
        """One transaction, committed on success; ``write`` takes SQLite's write lock upfront.

        ``action`` completes "cannot ..." in error messages.
        """
        conn = self.connect(action)
        try:
            if write and self.dialect == "sqlite":
                conn.execution_options(privateshare_write=True)
            try:
                with conn.begin():
                    yield conn
            except (DBAPIError, SQLAlchemyError) as exc:
                raise self.translate(exc, action) from None
        finally:
            conn.close()

    def translate(
        self, exc: BaseException, action: str, *, connecting: bool = False
    ) -> PrivateShareError:
        """A SQLAlchemy/driver error as a clear plugin error (what, where, how to fix)."""
        orig = getattr(exc, "orig", None) or exc
        detail = self._scrub(first_line(orig))
        code = error_code(orig)
        lowered = detail.lower()
        head = f"[{self.name}] cannot {action} in {self.where()}"
        if code in ("42501", 1044, 1142, 1143, 1227) or "permission denied" in lowered:
            fix = (
                "the database user lacks a privilege; grant it (PostgreSQL: GRANT CREATE, "
                "USAGE ON SCHEMA public TO <user>; MariaDB: GRANT ALL ON <database>.* TO "
                "<user>), or have an administrator run privateshare once to create the tables"
            )
        elif code in ("3D000", 1049) or ("does not exist" in lowered and "database" in lowered):
            fix = "the database does not exist; create it (CREATE DATABASE <name>) or fix url"
        elif code in ("28P01", "28000", 1045) or "authentication failed" in lowered:
            fix = (
                "the server refused the credentials; check the user in url and the secret "
                "the password option refers to"
            )
        elif code in ("55P03", 1205) or "lock timeout" in lowered:
            fix = f"a lock was held longer than {self.timeout:g} s; retry, or raise timeout"
        elif self.dialect == "sqlite" and "locked" in lowered:
            fix = (
                f"another process kept the database locked for more than {self.timeout:g} s; "
                "retry, or raise timeout"
            )
        elif self.dialect == "sqlite" and ("unable to open" in lowered or "readonly" in lowered):
            fix = (
                "check that the file and its directory exist and are writable by the user "
                "running privateshare"
            )
        elif connecting or code in (2002, 2003, 2005, 2006, 2013) or "connect" in lowered:
            host = f"{self.url.host or 'localhost'}:{self.url.port or 'default port'}"
            fix = (
                f"check that the database server at {host} is running and reachable and "
                "that url names the right host, port and database"
            )
        elif isinstance(exc, DBAPIError) and exc.connection_invalidated:
            fix = "the connection to the database was lost; retry"
        else:
            fix = "check the database's state and the user's privileges"
        return self.error(f"{head}: {detail}; {fix}")

    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return redact_url_text(text)

    # --- schema ----------------------------------------------------------------

    def ensure_schema(
        self,
        component: str,
        version: int,
        metadata: sa.MetaData,
        migrations: Mapping[int, Callable[[Connection], None]] | None = None,
    ) -> None:
        """Create ``metadata``'s tables, or migrate them, once per process and component.

        The schema-version table ``<prefix>schema_version`` holds one row per
        component; creation and migrations run under a database-wide lock
        (an advisory lock on PostgreSQL, ``GET_LOCK`` on MariaDB, the write lock on
        SQLite), so many workers starting at once on an empty database are safe.
        """
        with self._schema_lock:
            if component in self._schema_done:
                return
            versions = schema_version_table(sa.MetaData(), self.prefix)
            action = f"create or upgrade its tables ({self.prefix}*)"
            conn = self.connect(action)
            lock_name = "privateshare-schema-" + hashlib.sha256(self.prefix.encode()).hexdigest()
            try:
                try:
                    if self.dialect == "mysql":
                        got = conn.execute(
                            sa.text("SELECT GET_LOCK(:n, :t)"),
                            {"n": lock_name[:64], "t": int(self.timeout)},
                        ).scalar()
                        conn.commit()
                        if got != 1:
                            raise self.error(
                                f"[{self.name}] timed out after {self.timeout:g} s waiting for "
                                f"another process to create the tables in {self.where()}; retry"
                            )
                    if self.dialect == "sqlite":
                        conn.execution_options(privateshare_write=True)
                    with conn.begin():
                        if self.dialect == "postgresql":
                            key = int.from_bytes(bytes.fromhex(lock_name[-16:]), "big", signed=True)
                            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                        versions.create(conn, checkfirst=True)
                        found = conn.execute(
                            sa.select(versions.c.version).where(versions.c.component == component)
                        ).scalar()
                        if found is None:
                            metadata.create_all(conn, checkfirst=True)
                            conn.execute(
                                versions.insert().values(component=component, version=version)
                            )
                            log.info(
                                "[%s] created tables %s* (%s schema v%d) in %s",
                                self.name,
                                self.prefix,
                                component,
                                version,
                                self.where(),
                            )
                        elif found > version:
                            raise self.error(
                                f"[{self.name}] the {component} tables in {self.where()} have "
                                f"schema version {found}, newer than this privateshare "
                                f"understands ({version}); upgrade privateshare"
                            )
                        elif found < version:
                            for step in range(found + 1, version + 1):
                                (migrations or {})[step](conn)
                            conn.execute(
                                versions.update()
                                .where(versions.c.component == component)
                                .values(version=version)
                            )
                            log.info(
                                "[%s] migrated the %s tables from v%d to v%d",
                                self.name,
                                component,
                                found,
                                version,
                            )
                except (DBAPIError, SQLAlchemyError) as exc:
                    raise self.translate(exc, action) from None
                finally:
                    if self.dialect == "mysql":
                        try:
                            conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": lock_name[:64]})
                            conn.commit()
                        except SQLAlchemyError:
                            conn.invalidate()
            finally:
                conn.close()
            self._schema_done.add(component)

    # --- statements ------------------------------------------------------------

    def upsert(
        self, conn: Connection, table: sa.Table, row: Mapping[str, Any], keys: Sequence[str]
    ) -> None:
        """Insert ``row``, or update the row with the same ``keys``; locks that row."""
        conn.execute(self._upsert_statement(table, tuple(row), tuple(keys)), dict(row))

    def insert_ignore(
        self, conn: Connection, table: sa.Table, row: Mapping[str, Any], keys: Sequence[str]
    ) -> None:
        """Insert ``row`` unless a row with the same ``keys`` exists (which is left as is)."""
        conn.execute(self._insert_ignore_statement(table, tuple(row), tuple(keys)), dict(row))

    # Statements are built once per table and column set, values bound at execution:
    # building an ``insert ... on conflict`` (its ``excluded`` columns, its cache key) cost
    # more CPU than executing it, for every file. Built statements are immutable, so one
    # serves every thread.

    def _upsert_statement(
        self, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...]
    ) -> sa.Executable:
        cache_key = ("upsert", table, columns, keys)
        stmt = self._statements.get(cache_key)
        if stmt is not None:
            return stmt
        if self.dialect == "mysql":
            insert = mysql.insert(table)
            updates = {c: insert.inserted[c] for c in columns if c not in keys} or {
                keys[0]: insert.inserted[keys[0]]
            }
            stmt = insert.on_duplicate_key_update(updates)
        else:
            module = postgresql if self.dialect == "postgresql" else sqlite
            insert = module.insert(table)
            excluded = {c: insert.excluded[c] for c in columns if c not in keys}
            if excluded:
                stmt = insert.on_conflict_do_update(index_elements=list(keys), set_=excluded)
            else:
                stmt = insert.on_conflict_do_nothing(index_elements=list(keys))
        self._statements[cache_key] = stmt
        return stmt

    def _insert_ignore_statement(
        self, table: sa.Table, columns: tuple[str, ...], keys: tuple[str, ...]
    ) -> sa.Executable:
        cache_key = ("insert_ignore", table, columns, keys)
        stmt = self._statements.get(cache_key)
        if stmt is not None:
            return stmt
        if self.dialect == "mysql":
            stmt = mysql.insert(table).on_duplicate_key_update({keys[0]: getattr(table.c, keys[0])})
        else:
            module = postgresql if self.dialect == "postgresql" else sqlite
            stmt = module.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        self._statements[cache_key] = stmt
        return stmt

    # --- values every database holds ----------------------------------------------

    def fit_text(self, value: str | None, column: sa.Column[Any]) -> str | None:
        """``value`` cut to the column's length; NUL as U+FFFD on PostgreSQL (text refuses it).

        SQLite would store a longer value and PostgreSQL and MariaDB refuse it, so every
        database gets the same prefix.
        """
        if value is None:
            return None
        length = getattr(column.type, "length", None)
        if length is not None:
            value = value[:length]
        if self.dialect == "postgresql" and "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        return value

    def decode_json(self, data: bytes | memoryview) -> Any:
        """JSON for this database's JSON columns: see :func:`decode_json_document`."""
        return decode_json_document(data, self.dialect)

    def packet_limit(self) -> int | None:
        """The largest statement the server takes (MariaDB/MySQL ``max_allowed_packet``)."""
        if self.dialect != "mysql":
            return None
        if self._packet_limit is None:
            with self.transaction("read max_allowed_packet", write=False) as conn:
                self._packet_limit = int(
                    conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one()
                )
        return self._packet_limit

    def dispose(self) -> None:
        """Close every pooled connection (at framework close)."""
        self.engine.dispose()


def schema_version_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    """``<prefix>schema_version``: one row per component (``sink``, ``tokens``)."""
    return sa.Table(
        f"{prefix}schema_version",
        metadata,
        sa.Column("component", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )


def sqlite_events(engine: Engine) -> None:
    """Let us choose ``BEGIN IMMEDIATE`` for writes, and use WAL so readers never wait."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock at BEGIN (waiting up to the busy
        # timeout), so it never fails half-way on a lock upgrade.
        write = conn.get_execution_options().get("privateshare_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, SQLAlchemyError) and not isinstance(exc, DBAPIError):
        text = text.split("\n(Background on this error")[0]
    if isinstance(getattr(exc, "args", None), tuple) and len(exc.args) == 2:
        code, message = exc.args  # PyMySQL: (code, message)
        if isinstance(code, int) and isinstance(message, str):
            text = message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def error_code(exc: BaseException) -> str | int | None:
    """PyMySQL's numeric error code, else the SQLSTATE (psycopg), else ``None``."""
    args = getattr(exc, "args", None)
    if isinstance(args, tuple) and args and isinstance(args[0], int):
        return args[0]
    sqlstate = getattr(exc, "sqlstate", None)
    return str(sqlstate) if sqlstate else None
