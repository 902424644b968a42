"""Token storage in a SQL database, encrypted at rest and shared by many workers (``sql``).

The records are sealed exactly as the ``file`` store seals them: a random
32-byte store key, wrapped with RSA-OAEP-SHA1 to the contract's public key and
kept in ``<prefix>token_keys``, is unwrapped once per process through the key
handle (so the private key may live in KMS or an HSM); each token or
checkpoint is AES-256-GCM sealed with the contract, the record kind and a keyed
digest of the user id as associated data. Tables hold digests, never user ids
or token values, so a copy of the database without the contract key is useless.

The refresh lock (``privateshare_token_lock``) holds across processes and
machines: on PostgreSQL and MariaDB it is ``SELECT ... FOR UPDATE`` on the
user's row of ``<prefix>token_locks``, inside a transaction kept open for as
long as the lock is held (the server releases it if the worker dies); on
SQLite, whose write lock is database-wide, it is a per-user OS file lock beside
the database file. ``docs/sql.md`` explains the choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

import filelock
import msgspec
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from privateshare.errors import PrivateShareError, TokenStoreError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.keys import public_key_fingerprint
from privateshare.plugins.tokenseal import (
    STORE_KEY_FORMAT,
    STORE_KEY_VERSION,
    Kind,
    SealedRecordStore,
    StoreKeys,
    key_check,
    new_store_key,
    open_store_key,
)
from privateshare.sqldb import Database, LongBlob, SqlOptions, error_code

log = logging.getLogger("privateshare.tokens")

SCHEMA_COMPONENT = "tokens"
SCHEMA_VERSION = 2  # v2: the checkpoint journal table
_FORGET_HINT = (
    "delete that row (the user then consents again), or restore the token tables together "
    "with the contract key they were created with"
)


def token_tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    """The token store's tables: store keys, sealed records, lock rows."""
    metadata = sa.MetaData()
    keys = sa.Table(
        f"{prefix}token_keys",
        metadata,
        sa.Column("contract", sa.String(255), primary_key=True),
        sa.Column("format", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("wrapping", sa.String(32), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("wrapped_key", LongBlob, nullable=False),
        sa.Column("key_check", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    records = sa.Table(
        f"{prefix}token_records",
        metadata,
        sa.Column("contract", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("sealed", LongBlob, nullable=False),
        sa.Column("saved_at", sa.Float, nullable=False),
    )
    locks = sa.Table(
        f"{prefix}token_locks",
        metadata,
        sa.Column("contract", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
    )
    return metadata, keys, records, locks


def journal_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    """``<prefix>token_journal``: checkpoint changes since each user's base, one row per save."""
    return sa.Table(
        f"{prefix}token_journal",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("contract", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("generation", sa.String(32), nullable=False),
        sa.Column("sealed", LongBlob, nullable=False),
        sa.Column("saved_at", sa.Float, nullable=False),
        sa.Index(f"{prefix}token_journal_user", "contract", "digest"),
    )


class SqlTokenStore(SealedRecordStore, Plugin):
    """Users' tokens and checkpoints in SQL tables, sealed with a wrapped store key."""

    class Options(SqlOptions, forbid_unknown_fields=True, kw_only=True):
        #: SQLAlchemy URL; SQLite by default, beside the config file.
        url: Annotated[str, msgspec.Meta(min_length=1)] = "sqlite:///privateshare-tokens.db"
        #: Seconds to wait for another worker's refresh lock before giving up.
        lock_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    description = (
        "tokens and checkpoints in SQLite, PostgreSQL or MariaDB, encrypted at rest, "
        "with a refresh lock shared by every worker"
    )
    record_fix = _FORGET_HINT

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.db = Database(options, context, error=TokenStoreError)
        self.metadata, self.keys_table, self.records, self.locks = token_tables(
            options.table_prefix
        )
        self.journal = journal_table(self.metadata, options.table_prefix)
        self._journal_lock = threading.Lock()
        contract = context.contract_id
        self.contract = (
            contract
            if len(contract) <= 200
            else "sha256:" + hashlib.sha256(contract.encode("utf-8")).hexdigest()
        )
        self._keys: StoreKeys | None = None
        self._open_lock = threading.Lock()
        self.label = f"[{context.name}] "
        self.key_where = (
            f"its store key (the row of contract {context.contract_id!r} in "
            f"{self.keys_table.name}, {self.db.where()})"
        )
        self.key_fix = (
            f"delete the contract's rows from {self.keys_table.name} and {self.records.name} "
            "to start afresh (every user then consents again)"
        )

    def __repr__(self) -> str:
        return f"SqlTokenStore({self.context.name}, url={self.db.safe_url})"

    def __reduce__(self) -> Any:
        # The instance holds the unwrapped store key; a pickle would carry it away.
        raise TypeError("a token store cannot be pickled; build another from the same options")

    def close(self) -> None:
        """Close the pooled connections (called when the framework closes)."""
        self.db.dispose()

    # --- the store key -------------------------------------------------------

    def _open(self) -> StoreKeys:
        """The store's keys: tables created, store key unwrapped (or created) on first use."""
        with self._open_lock:
            if self._keys is None:
                if not self.context.contract_id:
                    raise TokenStoreError(
                        f"[{self.context.name}] the sql token store needs the contract id; set "
                        "contract_id in the [digime] table"
                    )
                self.db.ensure_schema(
                    SCHEMA_COMPONENT,
                    SCHEMA_VERSION,
                    self.metadata,
                    {2: lambda conn: self.journal.create(conn, checkfirst=True)},
                )
                row = self._key_row() or self._key_row_unless_lost()
                if row is None:
                    self._keys = StoreKeys(self._create_store_key())
                else:
                    keys = StoreKeys(self._unwrap_store_key(row))
                    self._check_sealed_by(keys, self._samples())
                    self._keys = keys
            return self._keys

    def _key_row_unless_lost(self) -> Any:
        """None for an empty store; records without their store key are an error.

        A new key must not hide records that only the lost one opens. Counted before
        the key row is read again: a worker creating the store meanwhile commits its
        key before any record, so records seen here with no key row mean a lost key.
        """
        c = self.records.c
        with self.db.transaction("count the token records", write=False) as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(self.records)
                .where(c.contract == self.contract)
            ).scalar()
        row = self._key_row() if count else None
        if count and row is None:
            raise TokenStoreError(
                f"{self.label}{self.records.name} ({self.db.where()}) holds {count} sealed "
                f"records of contract {self.context.contract_id!r} but {self.keys_table.name} has "
                "no store key for it: the key they were sealed with was deleted, and without it "
                f"they cannot be read. Restore that row of {self.keys_table.name} from a backup "
                "(with the contract key it was created with), or delete the contract's rows "
                f"from {self.records.name} to start afresh: every user then consents again"
            )
        return row

    def _samples(self, count: int = 8) -> list[bytes]:
        """A few records, enough to tell which store key sealed them."""
        c = self.records.c
        with self.db.transaction("read the token records", write=False) as conn:
            rows = conn.execute(
                sa.select(c.sealed).where(c.contract == self.contract).limit(count)
            ).scalars()
            return [bytes(blob) for blob in rows]

    def _key_row(self) -> Any:
        with self.db.transaction("read the token store key", write=False) as conn:
            return conn.execute(
                sa.select(self.keys_table).where(self.keys_table.c.contract == self.contract)
            ).first()

    def _public_key(self) -> rsa.RSAPublicKey:
        try:
            return self.context.key_handle().public_key()
        except PrivateShareError:
            raise
        except Exception as exc:
            raise TokenStoreError(
                f"[{self.context.name}] the token store needs the contract key, and the key "
                f"store failed ({type(exc).__name__}); check the [keys] table"
            ) from exc

    def _create_store_key(self) -> bytes:
        public = self._public_key()
        store_key, wrapped = new_store_key(public, self.context.key_handle())
        row = {
            "contract": self.contract,
            "format": STORE_KEY_FORMAT,
            "version": STORE_KEY_VERSION,
            "wrapping": "RSA-OAEP-SHA1",
            "public_key_sha256": public_key_fingerprint(public),
            "wrapped_key": wrapped,
            "key_check": key_check(store_key, self.context.contract_id),
            "created_at": time.time(),
        }
        with self.db.transaction("save the token store key") as conn:
            # Two workers may start on an empty store at once: the first insert wins.
            self.db.insert_ignore(conn, self.keys_table, row, ["contract"])
            stored = conn.execute(
                sa.select(self.keys_table).where(self.keys_table.c.contract == self.contract)
            ).first()
        if stored is None or stored.wrapped_key != wrapped:
            return self._unwrap_store_key(stored)
        log.info("[%s] created a new token store key in %s", self.context.name, self.db.where())
        return store_key

    def _unwrap_store_key(self, row: Any) -> bytes:
        where = f"the token store key of contract {self.context.contract_id!r} in {self.db.where()}"
        forget = (
            f"if the tokens are expendable, delete that row from {self.keys_table.name} and "
            "let users consent again"
        )
        if row is None:
            raise TokenStoreError(f"[{self.context.name}] {where} vanished while being created")
        if row.format != STORE_KEY_FORMAT or row.version != STORE_KEY_VERSION:
            raise TokenStoreError(
                f"[{self.context.name}] {where} has format {row.format!r} version {row.version}, "
                "which this privateshare does not read; upgrade privateshare"
            )
        self._public_key()  # a failing key store is reported as such, first
        return open_store_key(
            self.context.key_handle(),
            bytes(row.wrapped_key),
            public_key_sha256=row.public_key_sha256,
            check=row.key_check,
            contract_id=self.context.contract_id,
            where=f"[{self.context.name}] {where}",
            forget=forget,
        )

    # --- records -------------------------------------------------------------

    def _where(self, digest: str, kind: str | None = None) -> Any:
        c = self.records.c
        clause = sa.and_(c.contract == self.contract, c.digest == digest)
        return clause if kind is None else sa.and_(clause, c.kind == kind)

    def _place(self, kind: Kind, who: str) -> str:
        return f"the {kind} record of {who} in {self.records.name} ({self.db.where()})"

    def _read(self, digest: str, kind: Kind, who: str) -> tuple[bytes | None, str]:
        with self.db.transaction(f"read the {kind} of {who}", write=False) as conn:
            blob = conn.execute(
                sa.select(self.records.c.sealed).where(self._where(digest, kind))
            ).scalar()
        return (None if blob is None else bytes(blob)), self._place(kind, who)

    def _write(self, digest: str, kind: Kind, who: str, blob: bytes) -> None:
        row = {
            "contract": self.contract,
            "digest": digest,
            "kind": kind,
            "sealed": blob,
            "saved_at": time.time(),
        }
        with self.db.transaction(f"save the {kind} of {who}") as conn:
            self.db.upsert(conn, self.records, row, ["contract", "digest", "kind"])

    def _token_blobs(self) -> Iterator[tuple[str, str, bytes | TokenStoreError]]:
        c = self.records.c
        with self.db.transaction("list the users with a token", write=False) as conn:
            rows = conn.execute(
                sa.select(c.digest, c.sealed).where(
                    sa.and_(c.contract == self.contract, c.kind == "token")
                )
            ).all()
        for digest, blob in rows:
            yield digest, self._place("token", f"digest {digest[:12]}..."), bytes(blob)

    # --- hooks ---------------------------------------------------------------

    @hookimpl
    def privateshare_token_delete(self, user_id: str) -> bool:
        """Remove the user's token and checkpoint; ``False`` when there was nothing."""
        digest = self._digest(self._open(), user_id)
        j = self.journal.c
        self._checkpoint_cache().pop(digest, None)
        with self.db.transaction(f"delete the records of user {user_id!r}") as conn:
            result = conn.execute(self.records.delete().where(self._where(digest)))
            conn.execute(
                self.journal.delete().where(
                    sa.and_(j.contract == self.contract, j.digest == digest)
                )
            )
        return bool(result.rowcount)

    # --- the checkpoint journal -----------------------------------------------

    def _checkpoint_marker(self, digest: str) -> Any:
        with self.db.transaction("read the checkpoint", write=False) as conn:
            return conn.execute(
                sa.select(self.records.c.saved_at).where(self._where(digest, "checkpoint"))
            ).scalar()

    def _journal_read(self, digest: str, journal: str, who: str) -> tuple[list[bytes], bool, int]:
        j = self.journal.c
        with self.db.transaction(f"read the checkpoint journal of {who}", write=False) as conn:
            rows = conn.execute(
                sa.select(j.sealed)
                .where(
                    sa.and_(
                        j.contract == self.contract, j.digest == digest, j.generation == journal
                    )
                )
                .order_by(j.id)
            ).scalars()
            blobs = [bytes(blob) for blob in rows]
        return blobs, False, sum(len(blob) for blob in blobs)

    def _journal_append(self, digest: str, journal: str, who: str, blob: bytes) -> int:
        row = {
            "contract": self.contract,
            "digest": digest,
            "generation": journal,
            "sealed": blob,
            "saved_at": time.time(),
        }
        with self.db.transaction(f"save the checkpoint of {who}") as conn:
            conn.execute(self.journal.insert().values(row))
        where = self._checkpoint_cache().get(digest)
        return (where.journal_size if where else 0) + len(blob)

    def _checkpoint_rewrite(
        self, digest: str, who: str, chunks: Iterable[bytes], old: str | None
    ) -> int:
        # One row, replaced in one transaction: the new base's sealed bytes are gathered
        # first (~60 bytes a name, with the old base's while it is read), then written.
        buffer = io.BytesIO()
        for chunk in chunks:
            buffer.write(chunk)
        blob = buffer.getvalue()
        del buffer
        j = self.journal.c
        row = {
            "contract": self.contract,
            "digest": digest,
            "kind": "checkpoint",
            "sealed": blob,
            "saved_at": time.time(),
        }
        with self.db.transaction(f"save the checkpoint of {who}") as conn:
            self.db.upsert(conn, self.records, row, ["contract", "digest", "kind"])
            conn.execute(
                self.journal.delete().where(
                    sa.and_(j.contract == self.contract, j.digest == digest)
                )
            )
        return len(blob)

    def _checkpoint_lock(self, digest: str) -> AbstractContextManager[Any]:
        # Each append and rewrite is one transaction; saves racing from two processes can
        # only lose progress (files delivered again), never corrupt the state.
        return self._journal_lock

    @hookimpl
    def privateshare_token_lock(self, user_id: str) -> AbstractContextManager[None]:
        """A per-user lock across processes: a row lock on servers, a file lock on SQLite."""
        digest = self._digest(self._open(), user_id)
        what = f"the token of user {user_id!r}"
        if self.db.sqlite_path is not None:
            path = self.db.sqlite_path.parent / f"{self.db.sqlite_path.name}.locks"
            return _FileLock(self, path, f"{digest}.lock", what)
        return _RowLock(self, digest, what)


class _RowLock(AbstractContextManager[None]):
    """``SELECT ... FOR UPDATE`` on the user's lock row, in a transaction held until exit."""

    def __init__(self, store: SqlTokenStore, digest: str, what: str) -> None:
        self.store = store
        self.digest = digest
        self.what = what
        self._conn: Connection | None = None

    def _select(self, conn: Connection) -> Any:
        db, locks = self.store.db, self.store.locks
        timeout = self.store.options.lock_timeout
        if db.dialect == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(timeout * 1000))}")
        else:
            conn.exec_driver_sql(
                f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(timeout))}"
            )
        return conn.execute(
            sa.select(locks.c.digest)
            .where(sa.and_(locks.c.contract == self.store.contract, locks.c.digest == self.digest))
            .with_for_update()
        ).first()

    def __enter__(self) -> None:
        db, locks = self.store.db, self.store.locks
        action = f"take the lock on {self.what}"
        conn = db.connect(action)
        try:
            conn.begin()
            if self._select(conn) is None:
                conn.rollback()
                with conn.begin():  # the first lock for this user: create its row
                    db.insert_ignore(
                        conn,
                        locks,
                        {"contract": self.store.contract, "digest": self.digest},
                        ["contract", "digest"],
                    )
                conn.begin()
                if self._select(conn) is None:
                    raise TokenStoreError(
                        f"[{self.store.context.name}] the lock row of {self.what} vanished; retry"
                    )
        except (DBAPIError, SQLAlchemyError) as exc:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
            if error_code(getattr(exc, "orig", exc)) in ("55P03", 1205):
                raise TokenStoreError(
                    f"[{self.store.context.name}] timed out after "
                    f"{self.store.options.lock_timeout:g} s waiting for the lock on {self.what} "
                    f"in {db.where()}; another worker holds it (probably refreshing). Retry "
                    "later, or raise lock_timeout"
                ) from None
            raise db.translate(exc, action) from None
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()
            raise
        self._conn = conn

    def __exit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.rollback()  # nothing was written under the lock row: rolling back releases it
        except SQLAlchemyError:
            conn.invalidate()  # the server drops the lock with the connection
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"TokenLock(row {self.digest[:12]}... in {self.store.db.where()})"


class _FileLock(AbstractContextManager[None]):
    """An OS file lock beside a SQLite database; released by the OS if the process dies."""

    def __init__(self, store: SqlTokenStore, directory: Path, name: str, what: str) -> None:
        self.store = store
        self.directory = directory
        self.path = directory / name
        self.what = what
        self._lock = filelock.FileLock(
            self.path, timeout=store.options.lock_timeout, mode=0o600, is_singleton=False
        )

    def __enter__(self) -> None:
        name = self.store.context.name
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock.acquire()
        except filelock.Timeout:
            raise TokenStoreError(
                f"[{name}] timed out after {self.store.options.lock_timeout:g} s waiting for the "
                f"lock on {self.what} ({self.path}); another worker holds it (probably "
                "refreshing). Retry later, or raise lock_timeout"
            ) from None
        except OSError as exc:
            raise TokenStoreError(
                f"[{name}] cannot take the lock {self.path} ({exc.strerror}); check that the "
                "directory of the SQLite database is writable"
            ) from None

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        return f"TokenLock({self.path})"
