"""What every worker machine shares about pull tasks: a marker per user, and a user lock.

Both live in the shared database, the token store's when it is the ``sql`` one
(PostgreSQL or MariaDB across machines; SQLite on one machine), otherwise in
``privateshare-scale.db`` beside the config (one machine only):

- ``<prefix>scale_users``: one row per user: ``queued`` / ``running`` / ``done`` /
  ``failed`` / ``dead``, the task, the worker, the times and the last run summary.
  Enqueueing flips idle users to ``queued`` in one statement, so a user whose
  previous pull is queued or running is not enqueued again (back-pressure).
- the user lock: a PostgreSQL session advisory lock, a MariaDB ``GET_LOCK``, or an
  OS file lock beside a SQLite file. It is held on its own connection for the whole
  pull and released by the server (or the OS) when a worker dies, so the task that
  is delivered again takes it straight away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..secrets import Secret
from .db import SharedDatabase

log = logging.getLogger("privateshare.scale")

#: Users per statement when enqueueing many.
CHUNK = 500
#: States a user's pull can be in.
QUEUED, RUNNING, DONE, FAILED, DEAD, IDLE = "queued", "running", "done", "failed", "dead", "idle"
BUSY = (QUEUED, RUNNING)


class UserState(msgspec.Struct, kw_only=True):
    """One user's pull task as the shared database knows it."""

    user_id: str
    state: str
    task_id: str | None = None
    worker: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None


def scale_table(prefix: str) -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        f"{prefix}scale_users",
        metadata,
        sa.Column("contract", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batch", sa.String(36)),
        sa.Column("task_id", sa.String(80)),
        sa.Column("worker", sa.String(255)),
        sa.Column("queued_at", sa.Double),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")),
    )
    return metadata, table


def task_id_for(batch: str, user_id: str) -> str:
    """The Celery task id of ``user_id``'s pull in an enqueue batch (stable, so retries match)."""
    return str(uuid.uuid5(uuid.UUID(batch), user_id))


class ScaleState:
    """The markers table and the user locks, in the shared database of a framework."""

    def __init__(self, fw: Any) -> None:
        config = fw.config
        spec = config.providers.get("tokens")
        if spec is not None and spec.type == "sql":  # the token store's database
            options = spec.options
            url = options.get("url", "sqlite:///privateshare-tokens.db")
            secret = options.get("password")
            password = None if secret is None else Secret.from_reference(secret, config.base_dir)
            prefix = options.get("table_prefix", "privateshare_")
        else:  # one machine: a SQLite file beside the config
            url, password, prefix = "sqlite:///privateshare-scale.db", None, "privateshare_"
        self.db = SharedDatabase(
            url, password.reveal() if password else None, config.base_dir, prefix
        )
        self.contract = config.digime.contract_id[:200]
        self.metadata, self.table = scale_table(prefix)
        self._lock_prefix = hashlib.sha256(f"{prefix}\0{self.contract}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ScaleState({self.db.where()})"

    def close(self) -> None:
        self.db.dispose()

    def ready(self) -> ScaleState:
        self.db.ensure_schema(self.metadata)
        return self

    @property
    def where(self) -> str:
        return self.db.where()

    # --- enqueueing with back-pressure ---------------------------------------------

    def claim(
        self, users: Iterable[str], *, stale_after: float, revive: bool
    ) -> tuple[str, list[str]]:
        """Mark idle users ``queued`` under a new batch; return it and the users claimed.

        A user already queued or running (and not stale) is left alone; a dead user
        only when ``revive`` (an explicit ``enqueue --user``).
        """
        self.ready()
        batch = str(uuid.uuid4())
        now = time.time()
        claimed: list[str] = []
        t = self.table
        users = list(dict.fromkeys(users))
        free = [IDLE, DONE, FAILED, *([DEAD] if revive else [])]
        stale = now - stale_after
        with self.db.transaction("mark users queued") as conn:
            for start in range(0, len(users), CHUNK):
                chunk = users[start : start + CHUNK]
                self._insert_missing(conn, chunk)
                conn.execute(
                    t.update()
                    .where(
                        t.c.contract == self.contract,
                        t.c.user_id.in_(chunk),
                        sa.or_(
                            t.c.state.in_(free),
                            sa.and_(t.c.state == QUEUED, t.c.queued_at < stale),
                            sa.and_(t.c.state == RUNNING, t.c.started_at < stale),
                        ),
                    )
                    .values(
                        state=QUEUED,
                        batch=batch,
                        task_id=None,  # task_id_for(batch, user): no statement per user
                        queued_at=now,
                        attempts=0,
                        worker=None,
                    )
                )
                self._claim_orphans(conn, chunk, batch, now)
                rows = conn.execute(
                    sa.select(t.c.user_id).where(
                        t.c.contract == self.contract, t.c.user_id.in_(chunk), t.c.batch == batch
                    )
                )
                claimed += [r.user_id for r in rows]
        order = {u: i for i, u in enumerate(users)}
        claimed.sort(key=order.__getitem__)
        return batch, claimed

    def _claim_orphans(self, conn: sa.Connection, users: list[str], batch: str, now: float) -> None:
        """Claim users marked running whose lock nobody holds: their worker is gone.

        A pull killed at ``time_limit``, or a worker lost with its task acknowledged,
        leaves ``running`` behind; the lock (dropped with the process) tells.
        """
        t = self.table
        running = conn.execute(
            sa.select(t.c.user_id).where(
                t.c.contract == self.contract,
                t.c.user_id.in_(users),
                t.c.state == RUNNING,
                t.c.batch != batch,
            )
        ).scalars()
        for user_id in list(running):
            with self.user_lock(user_id) as free:
                if free:
                    log.warning("user %s was marked running by a worker that is gone", user_id)
                    conn.execute(
                        t.update()
                        .where(
                            t.c.contract == self.contract,
                            t.c.user_id == user_id,
                            t.c.state == RUNNING,
                        )
                        .values(
                            state=QUEUED,
                            batch=batch,
                            task_id=None,
                            queued_at=now,
                            attempts=0,
                            worker=None,
                        )
                    )

    def release_claim(self, batch: str, users: list[str], error: str) -> None:
        """Undo a claim whose tasks could not be sent (broker down): back to idle."""
        t = self.table
        with self.db.transaction("undo the queued marks") as conn:
            for start in range(0, len(users), CHUNK):
                conn.execute(
                    t.update()
                    .where(
                        t.c.contract == self.contract,
                        t.c.user_id.in_(users[start : start + CHUNK]),
                        t.c.batch == batch,
                        t.c.state == QUEUED,
                    )
                    .values(state=IDLE, error=error)
                )

    def _insert_missing(self, conn: sa.Connection, users: list[str]) -> None:
        rows = [
            {"contract": self.contract, "user_id": u, "state": IDLE, "attempts": 0} for u in users
        ]
        if self.db.dialect == "mysql":
            stmt = mysql.insert(self.table).values(rows)
            conn.execute(stmt.on_duplicate_key_update({"contract": self.table.c.contract}))
            return
        module = postgresql if self.db.dialect == "postgresql" else sqlite
        conn.execute(
            module.insert(self.table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["contract", "user_id"])
        )

    # --- the task's side ---------------------------------------------------------------

    def started(self, user_id: str, task_id: str, worker: str, attempt: int) -> None:
        t = self.table
        with self.db.transaction("mark a pull running") as conn:
            self._insert_missing(conn, [user_id])
            conn.execute(
                t.update()
                .where(t.c.contract == self.contract, t.c.user_id == user_id)
                .values(
                    state=RUNNING,
                    task_id=task_id,
                    worker=worker[:255],
                    started_at=time.time(),
                    attempts=attempt,
                )
            )

    def finished(
        self,
        user_id: str,
        task_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the end of a task: ``done``, ``failed``, ``queued`` (a retry) or ``dead``."""
        t = self.table
        values: dict[str, Any] = {"state": state, "error": error}
        if state == QUEUED:
            values["queued_at"] = time.time()
        else:
            values["finished_at"] = time.time()
        if result is not None:
            values["result"] = json.dumps(result)
        with self.db.transaction("record the end of a pull") as conn:
            conn.execute(
                t.update()
                .where(t.c.contract == self.contract, t.c.user_id == user_id)
                .values(**values)
            )

    # --- reading -------------------------------------------------------------------------

    def users(
        self, users: Iterable[str] | None = None, *, states: Iterable[str] = ()
    ) -> list[UserState]:
        self.ready()
        t = self.table
        query = sa.select(t).where(t.c.contract == self.contract)
        if users is not None:
            query = query.where(t.c.user_id.in_(list(users)))
        states = list(states)
        if states:
            query = query.where(t.c.state.in_(states))
        with self.db.transaction("read the pull states", write=False) as conn:
            rows = conn.execute(query.order_by(t.c.user_id)).all()
        return [
            UserState(
                user_id=r.user_id,
                state=r.state,
                task_id=r.task_id or (task_id_for(r.batch, r.user_id) if r.batch else None),
                worker=r.worker,
                queued_at=r.queued_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
                attempts=r.attempts or 0,
                error=r.error,
                result=json.loads(r.result) if r.result else None,
            )
            for r in rows
        ]

    def forget(self) -> None:
        """Delete every marker of this contract (tests; ``scale-status --reset``)."""
        self.ready()
        with self.db.transaction("forget the pull states") as conn:
            conn.execute(self.table.delete().where(self.table.c.contract == self.contract))

    # --- the user lock --------------------------------------------------------------------

    @contextmanager
    def user_lock(self, user_id: str) -> Iterator[bool]:
        """Try to take ``user_id``'s pull lock without waiting; yield whether it is held."""
        digest = hashlib.sha256(f"{self._lock_prefix}\0{user_id}".encode()).hexdigest()
        if self.db.dialect == "sqlite":
            yield from self._file_lock(digest)
            return
        conn = self.db.connect(f"take the pull lock of user {user_id!r}")
        held = False
        try:
            try:
                if self.db.dialect == "postgresql":
                    key = int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True)
                    held = bool(
                        conn.execute(
                            sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}
                        ).scalar()
                    )
                else:
                    name = f"privateshare-{digest[:50]}"
                    held = (
                        conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
                    )
                conn.commit()
            except SQLAlchemyError as exc:
                raise self.db.translate(exc, f"take the pull lock of user {user_id!r}") from None
            yield held
        finally:
            try:
                if held and self.db.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                elif held:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
                conn.close()
            except SQLAlchemyError:
                conn.invalidate()  # the server drops the lock with the connection
                conn.close()

    def _file_lock(self, digest: str) -> Iterator[bool]:
        import filelock

        assert self.db.sqlite_path is not None
        folder = Path(f"{self.db.sqlite_path}.scale-locks")
        folder.mkdir(mode=0o700, exist_ok=True)
        lock = filelock.FileLock(folder / f"{digest[:32]}.lock", timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
