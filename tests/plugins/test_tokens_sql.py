"""The ``sql`` token store on real SQLite, PostgreSQL and MariaDB, and many workers racing."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare import ConfigError, TokenStoreError
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.hooks import PluginContext
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import Token, UserAccessToken
from privateshare.plugins.tokens_sql import SqlTokenStore
from privateshare.testing.conformance import TokenStoreConformance
from privateshare.testing.sandboxed import consent, sandbox_config

from .checkpoint_base import SegmentedBaseTests
from .unprivileged import hand_over, open_directory, run_as_other

SqlDb = Any  # conftest.SqlDb
ACCESS = "acc-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
REFRESH = "ref-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
USER = "alice@example.com"


def make_store(
    db: SqlDb, handle: Any, base: Path | None = None, contract: str = "c1", **options: Any
) -> SqlTokenStore:
    return SqlTokenStore(
        SqlTokenStore.Options(**db.options(**options)),
        PluginContext(
            name="tokens",
            base_dir=base or Path.cwd(),
            contract_id=contract,
            application_id="a1",
            key_handle=lambda: handle,
        ),
    )


def token(access: str = ACCESS, refresh: str = REFRESH) -> UserAccessToken:
    return UserAccessToken(
        access_token=Token(access, 1_900_000_000),
        refresh_token=Token(refresh, 1_900_100_000),
        user_id="dm-user",
        consent_id="consent-1",
    )


@pytest.fixture(scope="module")
def other_handle() -> SoftwareKeyHandle:
    return SoftwareKeyHandle(rsa.generate_private_key(public_exponent=65537, key_size=2048))


class SqlStores:
    """A sql store on each database, and a factory of more instances over the same tables."""

    @pytest.fixture
    def store(self, sql_db: SqlDb, privateshare_test_key: Any, tmp_path: Path) -> Any:
        store = make_store(sql_db, privateshare_test_key.handle, tmp_path)
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, sql_db: SqlDb, privateshare_test_key: Any, tmp_path: Path) -> Any:
        return lambda: make_store(sql_db, privateshare_test_key.handle, tmp_path)


class TestSqlTokenStoreConformance(SqlStores, TokenStoreConformance):
    """The suite every token store passes, on each database, locks across processes included."""


class TestSqlStoreBase(SqlStores, SegmentedBaseTests):
    """The checkpoint's base in its row, read and written a segment at a time."""

    def base_bytes_held(self, store: Any) -> float:
        # The old base's row while it is read and the new one's gathered; PyMySQL also
        # writes the new one escaped into the statement's text.
        return 8.0 if store.db.engine.dialect.name in ("mysql", "mariadb") else 2.5


def dump(store: SqlTokenStore) -> list[bytes]:
    """Every value of every row of the store's tables, as bytes."""
    values: list[bytes] = []
    with store.db.engine.connect() as conn:
        for table in (store.keys_table, store.records, store.locks):
            for row in conn.execute(sa.select(table)):
                values += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    return values


def test_nothing_readable_in_the_tables(sql_db: SqlDb, privateshare_test_key: Any) -> None:
    store = make_store(sql_db, privateshare_test_key.handle)
    store.privateshare_token_save(USER, token())
    changes = {"files": {"secret-photo-name.json": 1_700_000_000_000}}
    store.privateshare_checkpoint_save(USER, changes, False)
    with store.privateshare_token_lock(USER):
        pass
    values = dump(store)
    assert len(values) > 10
    for needle in (ACCESS, REFRESH, USER, "dm-user", "consent-1", "secret-photo-name"):
        raw = needle.encode()
        for form in (raw, base64.b64encode(raw), raw.hex().encode()):
            assert all(form not in value for value in values), needle
    # A second instance (another worker) reads the same records with the same key.
    again = make_store(sql_db, privateshare_test_key.handle)
    assert again.privateshare_token_load(USER) == token()
    assert again.privateshare_token_users() == [USER]
    store.close()
    again.close()


def test_store_key_is_unwrapped_once_and_shared_by_contract(
    sql_db: SqlDb, privateshare_test_key: Any
) -> None:
    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner, self.decrypts = inner, 0

        def public_key(self) -> rsa.RSAPublicKey:
            return self.inner.public_key()

        def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
            self.decrypts += 1
            return self.inner.decrypt_oaep_sha1(ciphertext)

    first = make_store(sql_db, privateshare_test_key.handle)
    first.privateshare_token_save(USER, token())
    counting = Counting(privateshare_test_key.handle)
    second = make_store(sql_db, counting)
    for _ in range(3):
        assert second.privateshare_token_load(USER) == token()
    assert counting.decrypts == 1
    other_contract = make_store(sql_db, privateshare_test_key.handle, contract="c2")
    assert other_contract.privateshare_token_load(USER) is None  # contracts are kept apart
    other_contract.privateshare_token_save(USER, token("x", "y"))
    assert second.privateshare_token_load(USER) == token()
    for store in (first, second, other_contract):
        store.close()


def test_a_different_contract_key_is_refused(
    sql_db: SqlDb, privateshare_test_key: Any, other_handle: SoftwareKeyHandle
) -> None:
    make_store(sql_db, privateshare_test_key.handle).privateshare_token_save(USER, token())
    wrong = make_store(sql_db, other_handle)
    with pytest.raises(TokenStoreError) as info:
        wrong.privateshare_token_load(USER)
    message = str(info.value)
    assert message.startswith("[tokens] the token store key of contract 'c1'")
    assert "was created with a different contract key" in message
    assert make_store(sql_db, privateshare_test_key.handle).privateshare_token_load(USER) == token()


def test_tampered_and_moved_records_are_detected(
    sql_db: SqlDb, privateshare_test_key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(sql_db, privateshare_test_key.handle)
    store.privateshare_token_save(USER, token())
    store.privateshare_token_save("mallory", token("m-acc", "m-ref"))
    keys = store._open()
    records = store.records
    with store.db.engine.begin() as conn:
        sealed = {
            r.digest: bytes(r.sealed)
            for r in conn.execute(sa.select(records.c.digest, records.c.sealed))
        }
        # Put mallory's record in alice's row: the digest in the AAD no longer matches.
        conn.execute(
            records.update()
            .where(records.c.digest == keys.digest(USER))
            .values(sealed=sealed[keys.digest("mallory")])
        )
    with pytest.raises(TokenStoreError, match="cannot be decrypted: it was modified, moved"):
        store.privateshare_token_load(USER)
    flipped = bytearray(sealed[keys.digest("mallory")])
    flipped[-3] ^= 1
    with store.db.engine.begin() as conn:
        conn.execute(
            records.update()
            .where(records.c.digest == keys.digest("mallory"))
            .values(sealed=bytes(flipped))
        )
    store.privateshare_token_save("bob", token("b-acc", "b-ref"))
    with caplog.at_level(logging.WARNING, logger="privateshare.tokens"):
        assert store.privateshare_token_users() == ["bob"]  # the others are left out, loudly
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    for digest in (keys.digest(USER), keys.digest("mallory")):
        (warning,) = [w for w in warnings if f"digest {digest[:12]}..." in w]
        assert "cannot be decrypted" in warning and store.records.name in warning
        assert "delete that row" in warning and "m-acc" not in warning
    store.close()


def test_lock_timeout_is_a_clear_error(sql_db: SqlDb, privateshare_test_key: Any) -> None:
    holder = make_store(sql_db, privateshare_test_key.handle)
    waiter = make_store(sql_db, privateshare_test_key.handle, lock_timeout=0.5)
    with (
        holder.privateshare_token_lock(USER),
        pytest.raises(TokenStoreError, match=r"timed out after 0.5 s waiting for the lock"),
        waiter.privateshare_token_lock(USER),
    ):
        pass
    with waiter.privateshare_token_lock(USER):  # free again
        pass
    holder.close()
    waiter.close()


def test_configured_by_toml_with_the_default_sqlite_file(
    privateshare_factory: Any, tmp_path: Path
) -> None:
    fw = privateshare_factory('[tokens]\ntype = "sql"\n')
    store = fw.plugins["tokens"]
    assert isinstance(store, SqlTokenStore)
    assert store.db.sqlite_path == tmp_path / "privateshare-tokens.db"
    fw.hooks.token_save(USER, token())
    assert fw.hooks.token_load(USER) == token()
    assert fw.hooks.token_users() == [USER]
    with pytest.raises(ConfigError, match=r"\[tokens\]: unknown key 'lock_timout'"):
        privateshare_factory('[tokens]\ntype = "sql"\nlock_timout = 3\n')


def test_a_user_without_create_privilege_gets_a_clear_error(
    limited_user: str, privateshare_test_key: Any
) -> None:
    class Db:
        prefix = "privateshare_"

        def options(self, **extra: Any) -> dict[str, Any]:
            return {"url": limited_user, **extra}

    store = make_store(Db(), privateshare_test_key.handle)
    with pytest.raises(TokenStoreError) as info:
        store.privateshare_token_load(USER)
    message = str(info.value)
    assert message.startswith("[tokens] cannot create or upgrade its tables")
    assert "the database user lacks a privilege; grant it" in message
    store.close()


def test_unreachable_server_is_a_clear_error(privateshare_test_key: Any) -> None:
    class Db:
        prefix = "privateshare_"

        def options(self, **extra: Any) -> dict[str, Any]:
            return {"url": "postgresql+psycopg://ps:pw-XYZ-123@127.0.0.1:1/db", **extra}

    store = make_store(Db(), privateshare_test_key.handle, timeout=2)
    with pytest.raises(TokenStoreError) as info:
        store.privateshare_token_save(USER, token())
    message = str(info.value)
    assert "postgresql+psycopg://ps:***@127.0.0.1:1/db" in message
    assert "is running and reachable" in message and "pw-XYZ-123" not in message


# --- a store that cannot be read as it is fails loudly, saying what to do --------------------


def test_a_deleted_store_key_row_is_not_silently_replaced(
    sql_db: SqlDb, privateshare_test_key: Any
) -> None:
    store = make_store(sql_db, privateshare_test_key.handle)
    store.privateshare_token_save(USER, token())
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_token_save("bob", token("b1", "b2"))
    keys_table = store.keys_table
    with store.db.engine.begin() as conn:
        key_row = conn.execute(sa.select(keys_table)).one()._asdict()
        conn.execute(keys_table.delete())
    for call in (
        lambda s: s.privateshare_token_users(),
        lambda s: s.privateshare_token_load(USER),
        lambda s: s.privateshare_token_save("carol", token()),
    ):
        fresh = make_store(sql_db, privateshare_test_key.handle)
        with pytest.raises(TokenStoreError) as info:
            call(fresh)
        fresh.close()
        message = str(info.value)
        assert message.startswith(f"[tokens] {store.records.name} (")
        assert "holds 3 sealed records of contract 'c1'" in message
        assert f"Restore that row of {keys_table.name} from a backup" in message
        assert f"delete the contract's rows from {store.records.name}" in message
    with store.db.engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(keys_table)).scalar() == 0
        conn.execute(keys_table.insert().values(**key_row))  # restored: everything is back
    restored = make_store(sql_db, privateshare_test_key.handle)
    assert restored.privateshare_token_users() == [USER, "bob"]
    for each in (store, restored):
        each.close()


def test_a_store_key_row_from_another_store_is_named(
    sql_db: SqlDb, privateshare_test_key: Any
) -> None:
    ours = make_store(sql_db, privateshare_test_key.handle)
    theirs = make_store(sql_db, privateshare_test_key.handle, table_prefix=sql_db.prefix + "b_")
    ours.privateshare_token_save(USER, token())
    theirs.privateshare_token_save("someone", token("x", "y"))
    our_id, their_id = ours._open().key_id, theirs._open().key_id
    with theirs.db.engine.connect() as conn:
        foreign = conn.execute(sa.select(theirs.keys_table)).one()._asdict()
    with ours.db.engine.begin() as conn:
        conn.execute(ours.keys_table.update().values(**foreign))
    for call in (
        lambda s: s.privateshare_token_load(USER),
        lambda s: s.privateshare_token_users(),
    ):
        swapped = make_store(sql_db, privateshare_test_key.handle)
        with pytest.raises(TokenStoreError) as info:
            call(swapped)
        swapped.close()
        message = str(info.value)
        assert "cannot be read with its store key (the row of contract 'c1' in " in message
        checked = f"(store key {their_id}): the ones checked (1) were sealed by store key {our_id}"
        assert checked in message
        assert f"put back the store key {our_id} from a backup" in message
    for store in (ours, theirs):
        store.close()


def test_records_of_format_1_are_read_and_rewritten_as_format_2(sql_db: SqlDb) -> None:
    # Rows written by the code before store key ids (tests/fixtures/tokens-v1/README.md).
    from privateshare.keys import handle_from_pem
    from privateshare.plugins.tokens_sql import SCHEMA_COMPONENT, SCHEMA_VERSION

    fixture = Path(__file__).parents[1] / "fixtures" / "tokens-v1"
    handle = handle_from_pem((fixture / "contract.pem").read_bytes(), "fixture key")
    rows = json.loads((fixture / "sql-rows.json").read_text())
    store = make_store(sql_db, handle)
    store.db.ensure_schema(SCHEMA_COMPONENT, SCHEMA_VERSION, store.metadata)
    with store.db.engine.begin() as conn:
        for table, name in ((store.keys_table, "token_keys"), (store.records, "token_records")):
            for row in rows[name]:
                values = dict(row)
                key = "wrapped_key" if name == "token_keys" else "sealed"
                values[key] = base64.b64decode(values[key])
                conn.execute(table.insert().values(**values))
    expected = UserAccessToken(
        Token("access-v1-fixture", 1_900_000_000),
        Token("refresh-v1-fixture", 1_900_100_000),
        user_id="dm-v1",
        consent_id="consent-v1",
    )
    assert store.privateshare_token_users() == ["alice"]
    assert store.privateshare_token_load("alice") == expected
    assert store.privateshare_checkpoint_load("alice") == {"*": {"a.json": 1_700_000_000_000}}
    store.privateshare_token_save("alice", expected)
    with store.db.engine.connect() as conn:
        sealed = conn.execute(
            sa.select(store.records.c.sealed).where(store.records.c.kind == "token")
        ).scalar()
    assert bytes(sealed).startswith(b"PSTOK\x02" + bytes.fromhex(store._open().key_id))
    again = make_store(sql_db, handle)
    assert again.privateshare_token_load("alice") == expected
    # Its checkpoint (format 1, from before journals) is rewritten in format 3 by a save.
    store.privateshare_checkpoint_save("alice", {"*": {"b.json": 2}}, False)
    with store.db.engine.connect() as conn:
        base = conn.execute(
            sa.select(store.records.c.sealed).where(store.records.c.kind == "checkpoint")
        ).scalar()
    assert bytes(base).startswith(b"PSCKP\x03" + bytes.fromhex(store._open().key_id))
    assert again.privateshare_checkpoint_load("alice") == {
        "*": {"a.json": 1_700_000_000_000, "b.json": 2}
    }
    for each in (store, again):
        each.close()


def test_a_database_user_without_privileges_gets_a_clear_error(
    request: pytest.FixtureRequest,
    limited_user: str,
    sql_server_kind: str,
    privateshare_test_key: Any,
) -> None:
    database = request.getfixturevalue(f"{sql_server_kind}_database")
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    admin = make_store(
        type("Db", (), {"options": lambda self, **kw: {"url": database, "table_prefix": prefix}})(),
        privateshare_test_key.handle,
    )
    admin.privateshare_token_save(USER, token())

    def limited() -> SqlTokenStore:
        return SqlTokenStore(
            SqlTokenStore.Options(url=limited_user, table_prefix=prefix, lock_timeout=5),
            PluginContext(
                name="tokens",
                base_dir=Path.cwd(),
                contract_id="c1",
                application_id="a1",
                key_handle=lambda: privateshare_test_key.handle,
            ),
        )

    role = sa.engine.make_url(limited_user).username
    tables = [f"{prefix}{t}" for t in ("schema_version", "token_keys", "token_records")]
    tables.append(f"{prefix}token_locks")
    # PostgreSQL: no privilege on the tables at all; MariaDB: SELECT only.
    if sql_server_kind == "postgresql":
        store = limited()
        with pytest.raises(TokenStoreError) as info:
            store.privateshare_token_load(USER)
        store.close()
        assert "the database user lacks a privilege; grant it" in str(info.value)
        with admin.db.engine.begin() as conn:
            conn.exec_driver_sql(f"GRANT SELECT ON {', '.join(tables)} TO {role}")
    try:
        store = limited()
        assert store.privateshare_token_users() == [USER]  # reading is allowed
        assert store.privateshare_token_load(USER) == token()
        with pytest.raises(TokenStoreError) as info:
            store.privateshare_token_save("bob", token("b", "b"))
        message = str(info.value)
        assert message.startswith("[tokens] cannot save the token of user 'bob' in ")
        assert "the database user lacks a privilege; grant it" in message
        with pytest.raises(TokenStoreError) as info, store.privateshare_token_lock(USER):
            pass
        assert "lacks a privilege" in str(info.value)
        store.close()
    finally:
        if sql_server_kind == "postgresql":
            with admin.db.engine.begin() as conn:
                conn.exec_driver_sql(f"REVOKE ALL ON {', '.join(tables)} FROM {role}")
        admin.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    with open_directory() as path:
        yield path


@pytest.mark.parametrize(
    ("target", "mode", "expected"),
    [
        ("database", 0o000, "unable to open database file"),
        ("directory", 0o500, "attempt to write a readonly database"),
        ("locks", 0o500, "cannot take the lock {path}.locks/"),
    ],
)
def test_an_unreadable_sqlite_store_names_the_path_and_the_fix(
    open_dir: Path, privateshare_test_key: Any, target: str, mode: int, expected: str
) -> None:
    path = open_dir / "store" / "tokens.db"
    path.parent.mkdir()
    store = SqlTokenStore(
        SqlTokenStore.Options(url=f"sqlite:///{path}"),
        PluginContext(
            name="tokens",
            base_dir=open_dir,
            contract_id="c1",
            key_handle=lambda: privateshare_test_key.handle,
        ),
    )
    store.privateshare_token_save(USER, token())
    with store.privateshare_token_lock("bob"):
        pass
    store.close()
    hand_over(open_dir / "store")
    locks = path.parent / f"{path.name}.locks"
    {"database": path, "directory": path.parent, "locks": locks}[target].chmod(mode)

    def run() -> None:
        fresh = SqlTokenStore(store.options, store.context)
        fresh.privateshare_token_load(USER)
        with fresh.privateshare_token_lock(USER):
            pass

    with pytest.raises(TokenStoreError) as info:
        run_as_other(run)
    message = str(info.value)
    assert message.startswith("[tokens] ")
    assert expected.format(path=path) in message, message
    assert "writable" in message


# --- many processes, one expired token, one refresh -----------------------------------

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from privateshare import load
    from privateshare.flow import Flow

    config, base, ready, go = sys.argv[1:5]
    fw = load(json.loads(Path(config).read_text()), base_dir=base)
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    summary = Flow(fw).pull("alice")
    print(json.dumps({"delivered": summary.files_delivered, "failed": len(summary.files_failed),
                      "state": summary.final_state}))
    fw.close()
    """
)


def test_workers_racing_on_an_expired_token_refresh_it_once(
    sql_db: SqlDb, privateshare_sandbox: Any, tmp_path: Path
) -> None:
    workers = 4
    sandbox = privateshare_sandbox(files=6, latency=0.05)
    raw = sandbox_config(sandbox, tmp_path, sinks={"db": {"type": "sql", **sql_db.options()}})
    raw["tokens"] = {"type": "sql", **sql_db.options(lock_timeout=60)}
    base = sandbox.config_path().parent
    fw = load(raw, base_dir=base)
    original, _ = consent(Flow(fw), "alice")
    # Every worker finds the saved token expired (as after a night without pulls).
    expired = msgspec.structs.replace(
        original, access_token=Token(original.access_token.value, int(time.time()) - 60)
    )
    fw.hooks.token_save("alice", expired)
    assert sandbox.stats()["refresh"] == 0
    config = tmp_path / "worker.json"
    config.write_text(json.dumps(raw))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(config),
                str(base),
                str(tmp_path / f"ready{i}"),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(workers)):
            assert time.monotonic() < deadline, "the workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()  # all at once
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["failed"] == 0 and summary["state"] == "completed", summary
    assert sandbox.stats()["refresh"] == 1
    saved = fw.hooks.token_load("alice")
    assert saved is not None and saved.access_token.value != original.access_token.value
    assert not saved.access_token.expired()
    # The workers also raced to write the same files: one row per file, all intact.
    sink = fw.plugins["sinks.db"]
    with sink.db.engine.connect() as conn:
        names = [r.name for r in conn.execute(sa.select(sink.files.c.name))]
    assert sorted(names) == sorted(sandbox.ground_truth())
    got = {n: hashlib.sha256(sink.read_content("alice", n) or b"").hexdigest() for n in names}
    assert got == sandbox.ground_truth()
    fw.close()


def test_tokens_schema_v1_gains_the_journal_and_saves_cost_one_row(
    sql_db: SqlDb, privateshare_test_key
) -> None:
    from privateshare.plugins.tokens_sql import token_tables
    from privateshare.sqldb import schema_version_table

    store = make_store(sql_db, privateshare_test_key.handle)
    metadata, *_ = token_tables(store.options.table_prefix)  # the v1 tables: no journal
    versions = schema_version_table(metadata, store.options.table_prefix)
    with store.db.engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(versions.insert().values(component="tokens", version=1))
    store.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}}, True)
    for i in range(5):
        store.privateshare_checkpoint_save(USER, {"s": {f"{i}.json": i}}, False)
    with store.db.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(store.journal)).scalar()
        version = conn.execute(sa.select(versions.c.version)).scalar()
    assert rows == 5 and version == 2  # one row per save; the base row is not rewritten
    expected = {"s": {"a.json": 1, **{f"{i}.json": i for i in range(5)}}}
    assert make_store(sql_db, privateshare_test_key.handle).privateshare_checkpoint_load(USER) == (
        expected
    )
    assert store.privateshare_token_delete(USER) is True  # the base row and the journal go
    with store.db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.journal)).scalar() == 0
    store.close()
