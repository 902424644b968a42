"""The ``sql`` token store on real SQLite, PostgreSQL and MariaDB, and many workers racing."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare import ConfigError, TokenStoreError
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import Token, UserAccessToken
from privateshare.plugin import PluginContext
from privateshare.plugins.tokens_sql import SqlTokenStore
from privateshare.testing.conformance import TokenStoreConformance
from privateshare.testing.sandboxed import consent, sandbox_config

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


class TestSqlTokenStoreConformance(TokenStoreConformance):
    """The suite every token store passes, on each database, locks across processes included."""

    @pytest.fixture
    def store(self, sql_db: SqlDb, privateshare_test_key: Any, tmp_path: Path) -> Any:
        store = make_store(sql_db, privateshare_test_key.handle, tmp_path)
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, sql_db: SqlDb, privateshare_test_key: Any, tmp_path: Path) -> Any:
        return lambda: make_store(sql_db, privateshare_test_key.handle, tmp_path)


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
    store.privateshare_checkpoint_save(USER, {"secret-photo-name.json": 1_700_000_000_000})
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


def test_tampered_and_moved_records_are_detected(sql_db: SqlDb, privateshare_test_key: Any) -> None:
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
    with pytest.raises(TokenStoreError) as info:
        store.privateshare_token_users()
    assert "cannot be decrypted" in str(info.value) and "m-acc" not in str(info.value)
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
