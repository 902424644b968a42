"""The ``file`` token store: real files, real processes, real cryptography."""

from __future__ import annotations

import base64
import itertools
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import msgspec
import pluggy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.errors import TokenStoreError
from privateshare.hooks import PluginContext
from privateshare.hooks import specs as hookspecs
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import Token, UserAccessToken
from privateshare.plugins import tokens_file
from privateshare.plugins.tokens_file import FileTokenStore
from privateshare.testing.conformance import TokenStoreConformance

from .checkpoint_base import SegmentedBaseTests
from .unprivileged import hand_over, open_directory, run_as_other

ACCESS = "acc-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
REFRESH = "ref-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
USER = "alice@example.com"
ODD_USERS = [
    USER,
    "../../etc/passwd",
    "a/b\\c:d*e?f",
    "ünïcødé 👍",
    "with\nnewline and\x00nul",
    " spaces ",
    "x" * 2000,
    ".",
]


class CountingHandle:
    """A key handle that is not a SoftwareKeyHandle and counts private-key operations.

    The store must work through the KeyHandle protocol only (as with KMS or an HSM).
    """

    def __init__(self, inner: SoftwareKeyHandle) -> None:
        self._inner = inner
        self.decrypts = 0

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def sign_ps512(self, message: bytes) -> bytes:
        return self._inner.sign_ps512(message)

    def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
        self.decrypts += 1
        return self._inner.decrypt_oaep_sha1(ciphertext)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._inner.public_key()


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture(scope="module")
def handle(keys) -> SoftwareKeyHandle:
    return SoftwareKeyHandle(keys[0], "test")


@pytest.fixture(scope="module")
def other_handle(keys) -> SoftwareKeyHandle:
    return SoftwareKeyHandle(keys[1], "other")


@pytest.fixture(scope="module")
def key_file(keys, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "contract.pem"
    path.write_bytes(
        keys[0].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_store(
    root: Path, handle, contract: str = "c1", lock_timeout: float = 60.0, path: str | None = None
) -> FileTokenStore:
    return FileTokenStore(
        FileTokenStore.Options(path=path or str(root), lock_timeout=lock_timeout),
        PluginContext(
            name="tokens",
            base_dir=root,
            contract_id=contract,
            application_id="a1",
            key_handle=lambda: handle,
        ),
    )


def token(
    access: str = ACCESS, refresh: str = REFRESH, user_id: str = "dm-user"
) -> UserAccessToken:
    return UserAccessToken(
        access_token=Token(access, 1_900_000_000),
        refresh_token=Token(refresh, 1_900_100_000),
        user_id=user_id,
        consent_id="consent-1",
    )


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- round trips -------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    assert store.privateshare_token_load(USER) is None
    assert store.privateshare_token_save(USER, token()) is True
    loaded = store.privateshare_token_load(USER)
    assert loaded == token()
    assert loaded.access_token.value == ACCESS and loaded.refresh_token.expiry == 1_900_100_000
    # A fresh instance (a new process, in effect) reads the same record.
    assert make_store(tmp_path, handle).privateshare_token_load(USER) == token()


def test_save_replaces_not_duplicates(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    before = files_under(tmp_path)
    store.privateshare_token_save(USER, token("acc-new", "ref-new"))
    assert files_under(tmp_path) == before
    assert store.privateshare_token_load(USER) == token("acc-new", "ref-new")
    assert store.privateshare_token_users() == [USER]
    assert len(list(store.directory.glob("*.token"))) == 1


def test_delete(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_token_save("bob", token("b1", "b2"))
    assert store.privateshare_token_delete(USER) is True
    assert store.privateshare_token_load(USER) is None
    assert store.privateshare_checkpoint_load(USER) == {}
    assert store.privateshare_token_delete(USER) is False
    assert store.privateshare_token_users() == ["bob"]
    assert store.privateshare_token_load("bob") == token("b1", "b2")


def test_users_listing_with_any_user_id(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    assert store.privateshare_token_users() == []
    for i, user in enumerate(ODD_USERS):
        store.privateshare_token_save(user, token(f"a{i}", f"r{i}"))
    store.privateshare_checkpoint_save("only-a-checkpoint", {"files": {"f": 1}}, False)
    assert store.privateshare_token_users() == sorted(ODD_USERS)
    for i, user in enumerate(ODD_USERS):
        assert store.privateshare_token_load(user) == token(f"a{i}", f"r{i}")
    # Every file stays inside the contract directory, whatever the user id.
    for path in files_under(tmp_path):
        assert path.parent in (store.directory, store.directory / "locks")
        assert len(path.name) < 100


def test_checkpoint_round_trip(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    assert store.privateshare_checkpoint_load(USER) == {}
    checkpoint = {"18_1_a.json": 1_700_000_000_123, "ünï/name.json": 2**53}
    assert store.privateshare_checkpoint_save(USER, {"files": checkpoint}, False) is True
    assert store.privateshare_checkpoint_load(USER) == {"files": checkpoint}
    store.privateshare_checkpoint_save(USER, {"files": {"only.json": 5}}, True)
    reopened = make_store(tmp_path, handle).privateshare_checkpoint_load(USER)
    assert reopened == {"files": {"only.json": 5}}
    # A checkpoint is not a token: the user has none, and is not listed.
    assert store.privateshare_token_load(USER) is None
    assert store.privateshare_token_users() == []


def test_checkpoint_rejects_bad_values(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    with pytest.raises(TokenStoreError, match="integer updatedDate"):
        store.privateshare_checkpoint_save(USER, {"files": {"a.json": "yesterday"}}, False)


def test_empty_user_id_and_wrong_token_type_are_rejected(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    with pytest.raises(TokenStoreError, match="non-empty"):
        store.privateshare_token_save("", token())
    with pytest.raises(TokenStoreError, match="expects a UserAccessToken, got dict"):
        store.privateshare_token_save(USER, {"access_token": ACCESS})


# --- at rest -----------------------------------------------------------------------


def test_file_and_directory_modes(tmp_path, handle) -> None:
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        store = make_store(tmp_path, handle, path="tokens")
        store.privateshare_token_save(USER, token())
        store.privateshare_checkpoint_save(USER, {"files": {"a": 1}}, False)
        with store.privateshare_token_lock(USER):
            pass
    finally:
        os.umask(old_umask)
    root = tmp_path / "tokens"
    dirs = [root, store.directory, store.directory / "locks"]
    assert store.directory == root / "c1"
    for d in dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = files_under(root)
    assert {p.suffix for p in files} == {".key", ".token", ".checkpoint", ".lock"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_warns_about_an_open_contract_directory(tmp_path, handle, caplog) -> None:
    (tmp_path / "shared").mkdir(mode=0o755)
    os.chmod(tmp_path / "shared", 0o755)  # a shared root is fine: the contract dir is 0700
    with caplog.at_level(logging.WARNING, logger="privateshare.tokens"):
        make_store(tmp_path, handle, path="shared").privateshare_token_users()
    assert not caplog.records
    assert stat.S_IMODE((tmp_path / "shared" / "c1").stat().st_mode) == 0o700
    os.chmod(tmp_path / "shared" / "c1", 0o755)
    with caplog.at_level(logging.WARNING, logger="privateshare.tokens"):
        make_store(tmp_path, handle, path="shared").privateshare_token_users()
    assert f"chmod 700 {tmp_path / 'shared' / 'c1'}" in caplog.text


def test_nothing_readable_on_disk(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    for user in ODD_USERS:
        store.privateshare_token_save(user, token())
        changes = {"files": {"secret-photo-name.json": 1_700_000_000_000}}
        store.privateshare_checkpoint_save(user, changes, False)
    with store.privateshare_token_lock(USER):
        pass
    needles = [ACCESS, REFRESH, "dm-user", "consent-1", "secret-photo-name"]
    needles += [u for u in ODD_USERS if len(u) > 3]
    blobs = [p.read_bytes() for p in files_under(tmp_path)]
    names = "\n".join(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for needle in needles:
        raw = needle.encode()
        for form in (raw, base64.b64encode(raw), raw.hex().encode()):
            assert all(form not in blob for blob in blobs), needle
        assert needle not in names
    # And nothing in reprs either.
    assert ACCESS not in repr(store) + repr(store.privateshare_token_load(USER))


def test_file_names_do_not_reveal_user_ids_without_the_key(tmp_path, handle) -> None:
    # Names are keyed digests: a plain hash of a guessed user id does not match a file.
    import hashlib

    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    (record,) = store.directory.glob("*.token")
    assert hashlib.sha256(USER.encode()).hexdigest() not in record.name
    other = make_store(tmp_path / "elsewhere", handle)
    other.privateshare_token_save(USER, token())
    (other_record,) = other.directory.glob("*.token")
    assert other_record.name != record.name  # a different store key, different names


# --- tampering and the wrong key -------------------------------------------------------


def _record(store: FileTokenStore, kind: str = "token") -> Path:
    (path,) = store.directory.glob(f"*.{kind}")
    return path


@pytest.mark.parametrize("kind", ["token", "checkpoint"])
def test_tampered_record_is_detected(tmp_path, handle, kind) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    path = _record(store, kind)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(TokenStoreError) as info:
        if kind == "token":
            store.privateshare_token_load(USER)
        else:
            store.privateshare_checkpoint_load(USER)
    message = str(info.value)
    assert f"user {USER!r}" in message and str(path) in message
    assert "cannot be decrypted" in message and "delete that file" in message
    assert ACCESS not in message and REFRESH not in message


def test_truncated_record_is_detected(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    path = _record(store)
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(TokenStoreError, match="not a privateshare record"):
        store.privateshare_token_load(USER)


def test_a_damaged_record_is_left_out_of_users_with_a_warning(tmp_path, handle, caplog) -> None:
    store = make_store(tmp_path, handle)
    for user in ("bob", USER, "carol"):
        store.privateshare_token_save(user, token(f"a-{user}", f"r-{user}"))
    damaged = store.directory / f"{store._open().digest(USER)}.token"
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # always a change
    truncated = store.directory / f"{store._open().digest('carol')}.token"
    truncated.write_bytes(truncated.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="privateshare.tokens"):
        assert make_store(tmp_path, handle).privateshare_token_users() == ["bob"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any(str(damaged) in w and "cannot be decrypted" in w for w in warnings)
    assert any(str(truncated) in w and "not a privateshare record" in w for w in warnings)
    assert all("delete that file" in w for w in warnings)
    with pytest.raises(TokenStoreError) as info:  # the user's own load names the file
        store.privateshare_token_load(USER)
    assert str(damaged) in str(info.value) and f"user {USER!r}" in str(info.value)


def test_record_moved_to_another_user_is_detected(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save("mallory", token("m-acc", "m-ref"))
    store.privateshare_token_save(USER, token())
    # Overwrite alice's record with mallory's: the digest in the AAD no longer matches.
    mallory = store.directory / f"{store._open().digest('mallory')}.token"
    alice = store.directory / f"{store._open().digest(USER)}.token"
    alice.write_bytes(mallory.read_bytes())
    with pytest.raises(TokenStoreError, match="moved from another user"):
        store.privateshare_token_load(USER)


def test_record_moved_to_another_kind_is_detected(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"files": {"a": 1}}, False)
    checkpoint = _record(store, "checkpoint")
    checkpoint.rename(checkpoint.with_suffix(".token"))
    with pytest.raises(TokenStoreError, match="cannot be decrypted"):
        store.privateshare_token_load(USER)


def test_store_opened_with_a_different_contract_key(tmp_path, handle, other_handle) -> None:
    make_store(tmp_path, handle).privateshare_token_save(USER, token())
    wrong = make_store(tmp_path, other_handle)
    for call in (
        lambda: wrong.privateshare_token_load(USER),
        lambda: wrong.privateshare_token_save(USER, token("x", "y")),
        wrong.privateshare_token_users,
        lambda: wrong.privateshare_token_lock(USER),
    ):
        with pytest.raises(TokenStoreError) as info:
            call()
        message = str(info.value)
        assert "was created with a different contract key" in message
        assert str(wrong.directory) in message
        assert "configure the contract key it was created with" in message
    # Nothing was overwritten: the right key still reads the token.
    assert make_store(tmp_path, handle).privateshare_token_load(USER) == token()


def test_stolen_directory_without_the_key_is_useless(tmp_path, handle, other_handle) -> None:
    # Even an attacker who rewrites the fingerprint cannot unwrap the store key.
    make_store(tmp_path, handle).privateshare_token_save(USER, token())
    key_path = tmp_path / "c1" / "store.key"
    record = msgspec.json.decode(key_path.read_bytes())
    record["public_key_sha256"] = tokens_file.public_key_fingerprint(other_handle.public_key())
    key_path.write_bytes(msgspec.json.encode(record))
    with pytest.raises(TokenStoreError, match="cannot be unwrapped with the configured contract"):
        make_store(tmp_path, other_handle).privateshare_token_load(USER)


def test_corrupt_store_key(tmp_path, handle) -> None:
    make_store(tmp_path, handle).privateshare_token_save(USER, token())
    key_path = tmp_path / "c1" / "store.key"
    key_path.write_bytes(b"{not json")
    with pytest.raises(TokenStoreError) as info:
        make_store(tmp_path, handle).privateshare_token_load(USER)
    assert f"the token store key {key_path} is damaged" in str(info.value)
    assert "restore it from a backup" in str(info.value)


def test_store_key_with_damaged_wrapping(tmp_path, handle) -> None:
    make_store(tmp_path, handle).privateshare_token_save(USER, token())
    key_path = tmp_path / "c1" / "store.key"
    record = msgspec.json.decode(key_path.read_bytes())
    wrapped = bytearray(base64.b64decode(record["wrapped_key"]))
    wrapped[5] ^= 0xFF
    record["wrapped_key"] = base64.b64encode(bytes(wrapped)).decode()
    key_path.write_bytes(msgspec.json.encode(record))
    with pytest.raises(TokenStoreError, match="cannot be unwrapped"):
        make_store(tmp_path, handle).privateshare_token_load(USER)


def test_foreign_store_key_from_another_contract(tmp_path, handle) -> None:
    make_store(tmp_path, handle, contract="c1").privateshare_token_save(USER, token())
    make_store(tmp_path, handle, contract="c2").privateshare_token_save(USER, token())
    foreign = (tmp_path / "c2" / "store.key").read_bytes()
    (tmp_path / "c1" / "store.key").write_bytes(foreign)
    with pytest.raises(TokenStoreError, match="belongs to contract 'c2', not to 'c1'"):
        make_store(tmp_path, handle, contract="c1").privateshare_token_load(USER)
    # Relabelled to pass for c1, it still fails its check value.
    record = msgspec.json.decode(foreign)
    record["contract_id"] = "c1"
    (tmp_path / "c1" / "store.key").write_bytes(msgspec.json.encode(record))
    with pytest.raises(TokenStoreError, match="does not belong to this store"):
        make_store(tmp_path, handle, contract="c1").privateshare_token_load(USER)


def test_record_copied_from_another_store_is_detected(tmp_path, handle) -> None:
    a = make_store(tmp_path / "a", handle)
    b = make_store(tmp_path / "b", handle)
    a.privateshare_token_save(USER, token())
    b.privateshare_token_save(USER, token("b", "b"))
    # Same contract, same key, different store key: b's record under a's name is named so.
    _record(b).replace(a.directory / _record(a).name)
    with pytest.raises(TokenStoreError) as info:
        a.privateshare_token_load(USER)
    message = str(info.value)
    assert f"was sealed by store key {b._open().key_id}" in message
    assert f"its store key {a.key_path} is store key {a._open().key_id}" in message


def test_store_key_is_unwrapped_once_per_process(tmp_path, handle) -> None:
    creator = CountingHandle(handle)
    make_store(tmp_path, creator).privateshare_token_save(USER, token())
    assert creator.decrypts == 1  # the creator checks the handle can unwrap, then keeps the key

    counting = CountingHandle(handle)
    store = make_store(tmp_path, counting)
    assert counting.decrypts == 0  # nothing happens before first use
    for _ in range(3):
        store.privateshare_token_load(USER)
        store.privateshare_token_save(USER, token())
        store.privateshare_checkpoint_save(USER, {"files": {"a": 1}}, False)
        store.privateshare_checkpoint_load(USER)
        store.privateshare_token_users()
        with store.privateshare_token_lock(USER):
            pass
    assert counting.decrypts == 1


def test_mismatched_key_handle_is_refused_before_creating_the_store(tmp_path, handle, other_handle):
    class Mismatched(CountingHandle):
        def public_key(self) -> rsa.RSAPublicKey:
            return other_handle.public_key()

    store = make_store(tmp_path, Mismatched(handle))
    with pytest.raises(TokenStoreError, match="cannot decrypt what its own public key encrypts"):
        store.privateshare_token_save(USER, token())
    assert not (store.directory / "store.key").exists()


def test_contract_ids_that_are_not_safe_directory_names(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle, contract="../../escape me")
    store.privateshare_token_save(USER, token())
    assert store.directory.parent == tmp_path
    assert store.directory.name.startswith("contract-")
    assert store.privateshare_token_load(USER) == token()


def test_missing_contract_id_is_a_clear_error(tmp_path, handle) -> None:
    with pytest.raises(TokenStoreError, match=r"contract id; set contract_id in the \[digime\]"):
        make_store(tmp_path, handle, contract="").privateshare_token_users()


# --- atomicity --------------------------------------------------------------------------


def test_failed_replace_leaves_old_record_and_no_temp_file(tmp_path, handle, monkeypatch) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    before = {p: p.read_bytes() for p in files_under(tmp_path)}

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokens_file.os, "replace", broken_replace)
    with pytest.raises(TokenStoreError, match="No space left on device"):
        store.privateshare_token_save(USER, token("new", "new"))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in files_under(tmp_path)} == before
    assert store.privateshare_token_load(USER) == token()


SCRIPT = r"""
import os, sys, time
from pathlib import Path
from privateshare.keys import handle_from_pem
from privateshare.models import Token, UserAccessToken
from privateshare.hooks import PluginContext
from privateshare.plugins.tokens_file import FileTokenStore
from privateshare.testing.conformance import TokenStoreConformance

mode, root, key_file, index = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
handle = handle_from_pem(Path(key_file).read_bytes(), "test key")
timeout = float(os.environ.get("LOCK_TIMEOUT", "60"))
store = FileTokenStore(
    FileTokenStore.Options(path=str(root / "tokens"), lock_timeout=timeout),
    PluginContext(name="tokens", base_dir=root, contract_id="c1", application_id="a1",
                  key_handle=lambda: handle),
)
def token(tag):
    return UserAccessToken(Token("acc-" + tag, 1), Token("ref-" + tag, 2), user_id="u")

if mode == "increment":
    print("ready", flush=True)
    while not (root / "go").exists():
        time.sleep(0.002)
    with store.privateshare_token_lock("shared user/ü"):
        start = time.monotonic()
        counter = root / "counter"
        n = int(counter.read_text()) if counter.exists() else 0
        time.sleep(0.03)
        counter.write_text(str(n + 1))
        end = time.monotonic()
    with open(root / "intervals", "a") as fh:
        fh.write(f"{start} {end}\n")
    store.privateshare_token_save(f"user-{index}", token(str(index)))
elif mode == "hold":
    with store.privateshare_token_lock("shared user/ü"):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the parent closes our stdin
elif mode == "crash":
    def crash(src, dst):
        os._exit(3)  # the process dies between writing the temp file and renaming it
    os.replace = crash
    store.privateshare_token_save("alice", token("new"))
elif mode == "crash-compacting":
    from privateshare.plugins import tokenseal
    bounded = tokenseal._bounded
    def dies(*args):
        for index, segment in enumerate(bounded(*args)):
            if index == 5:
                os._exit(3)  # killed half way through writing the new base
            yield segment
    tokenseal._bounded = dies
    tokenseal.SEGMENT_NAMES = 10
    keys = store._open()
    store._checkpoint_compact(keys, "alice", keys.digest("alice"), {"s": {"000.json": 99}})
"""


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(SCRIPT)
    return path


def _spawn(script: Path, mode: str, root: Path, key_file: Path, index: int = 0, **kw):
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(root), str(key_file), str(index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_crash_between_write_and_replace(tmp_path, handle, key_file, script) -> None:
    store = make_store(tmp_path, handle, path="tokens")
    store.privateshare_token_save("alice", token())
    proc = _spawn(script, "crash", tmp_path, key_file)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    # The crashed writer left its temp file behind, but no record is partial or replaced.
    leftovers = list(store.directory.glob(".*.tmp"))
    assert len(leftovers) == 1
    assert stat.S_IMODE(leftovers[0].stat().st_mode) == 0o600
    fresh = make_store(tmp_path, handle, path="tokens")
    assert fresh.privateshare_token_load("alice") == token()
    assert fresh.privateshare_token_users() == ["alice"]
    fresh.privateshare_token_save("alice", token("after", "after"))
    assert fresh.privateshare_token_load("alice") == token("after", "after")


def test_a_process_killed_while_compacting_loses_only_that_save(
    tmp_path, handle, key_file, script
) -> None:
    store = make_store(tmp_path, handle, path="tokens")
    state = {f"{i:03d}.json": i for i in range(100)}
    store.privateshare_checkpoint_save("alice", {"s": state}, True)
    store.privateshare_checkpoint_save("alice", {"s": {"new.json": 7}}, False)
    proc = _spawn(script, "crash-compacting", tmp_path, key_file)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert len(list(store.directory.glob(".*.tmp"))) == 1  # the new base, never renamed
    fresh = make_store(tmp_path, handle, path="tokens")
    expected = {"s": {**state, "new.json": 7}}
    assert fresh.privateshare_checkpoint_load("alice") == expected
    fresh.privateshare_checkpoint_save("alice", {"s": {"after.json": 8}}, False)
    expected["s"]["after.json"] = 8
    assert make_store(tmp_path, handle, path="tokens").privateshare_checkpoint_load("alice") == (
        expected
    )


def test_lock_serialises_processes(tmp_path, handle, key_file, script) -> None:
    n = 6
    procs = [_spawn(script, "increment", tmp_path, key_file, i) for i in range(n)]
    try:
        for proc in procs:  # all started and the store opened: now let them race
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        (tmp_path / "go").touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert int((tmp_path / "counter").read_text()) == n
    intervals = sorted(
        tuple(map(float, line.split()))
        for line in (tmp_path / "intervals").read_text().splitlines()
    )
    assert len(intervals) == n
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, "two processes were inside the lock at once"
    # The processes raced to create the store key; exactly one won and all used it.
    store = make_store(tmp_path, handle, path="tokens")
    assert store.privateshare_token_users() == [f"user-{i}" for i in range(n)]
    for i in range(n):
        assert store.privateshare_token_load(f"user-{i}").access_token.value == f"acc-{i}"


def test_lock_timeout_is_a_clear_error_and_per_user(tmp_path, handle, key_file, script) -> None:
    store = make_store(tmp_path, handle, path="tokens", lock_timeout=0.3)
    store.privateshare_token_users()  # create the store before the other process opens it
    holder = _spawn(script, "hold", tmp_path, key_file, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        started = time.monotonic()
        with pytest.raises(TokenStoreError) as info, store.privateshare_token_lock("shared user/ü"):
            pytest.fail("the lock was taken twice")
        assert time.monotonic() - started >= 0.25  # it waited for lock_timeout first
        message = str(info.value)
        assert "timed out after 0.3 s" in message
        assert "'shared user/ü'" in message and "lock_timeout" in message
        # Another user's lock is independent.
        with store.privateshare_token_lock(USER):
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    # Released by the other process: now it is ours at once.
    with store.privateshare_token_lock("shared user/ü"):
        pass


def test_lock_is_released_when_the_holder_dies(tmp_path, handle, key_file, script) -> None:
    store = make_store(tmp_path, handle, path="tokens", lock_timeout=10)
    store.privateshare_token_users()
    holder = _spawn(script, "hold", tmp_path, key_file, stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=30)
    holder.stdin.close()
    # Still held, this would fail with "timed out after 10 s".
    with store.privateshare_token_lock("shared user/ü"):
        pass


# --- plugin plumbing -------------------------------------------------------------------


def test_entry_point_resolves_to_this_class() -> None:
    eps = {ep.name: ep for ep in entry_points(group="privateshare.token_stores")}
    assert eps["file"].load() is FileTokenStore
    assert FileTokenStore.description


def test_hooks_match_hookspecs(tmp_path, handle) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(make_store(tmp_path, handle), name="tokens")
    pm.check_pending()
    hook = pm.hook
    assert hook.privateshare_token_save(user_id=USER, token=token()) is True
    assert hook.privateshare_token_load(user_id=USER) == token()
    assert hook.privateshare_token_users() == [USER]
    changes = {"s": {"f": 3}}
    assert hook.privateshare_checkpoint_save(user_id=USER, changes=changes, replace=False) is True
    assert hook.privateshare_checkpoint_load(user_id=USER) == {"s": {"f": 3}}
    with hook.privateshare_token_lock(user_id=USER):
        pass
    assert hook.privateshare_token_delete(user_id=USER) is True


def test_options_defaults_and_validation() -> None:
    opts = FileTokenStore.Options()
    assert (opts.path, opts.lock_timeout) == ("privateshare-tokens", 60.0)
    with pytest.raises(msgspec.ValidationError, match="lock_timout"):
        msgspec.convert({"lock_timout": 5}, FileTokenStore.Options)
    with pytest.raises(msgspec.ValidationError, match="lock_timeout"):
        msgspec.convert({"lock_timeout": 0}, FileTokenStore.Options)


def test_default_path_is_resolved_against_base_dir(tmp_path, handle) -> None:
    store = FileTokenStore(
        FileTokenStore.Options(),
        PluginContext(
            name="tokens", base_dir=tmp_path, contract_id="c1", key_handle=lambda: handle
        ),
    )
    store.privateshare_token_save(USER, token())
    assert (tmp_path / "privateshare-tokens" / "c1" / "store.key").is_file()


# --- the shared conformance suite -------------------------------------------------------


class FileStores:
    """A file store under tmp_path, and a factory of more instances over the same directory."""

    @pytest.fixture
    def store_factory(self, tmp_path, handle):
        return lambda: make_store(tmp_path, handle)

    @pytest.fixture
    def store(self, store_factory):
        return store_factory()


class TestFileTokenStoreConformance(FileStores, TokenStoreConformance):
    pass


class TestFileStoreBase(FileStores, SegmentedBaseTests):
    """The checkpoint's base, read and written a segment at a time from and to the file."""


# --- a store that cannot be read as it is fails loudly, saying what to do --------------------


def test_a_deleted_store_key_is_not_silently_replaced(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_token_save(USER, token())
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_token_save("bob", token("b1", "b2"))
    key = store.key_path.read_bytes()
    store.key_path.unlink()
    for call in (
        lambda s: s.privateshare_token_users(),
        lambda s: s.privateshare_token_load(USER),
        lambda s: s.privateshare_token_save("carol", token()),
        lambda s: s.privateshare_token_lock(USER),
    ):
        with pytest.raises(TokenStoreError) as info:
            call(make_store(tmp_path, handle))
        message = str(info.value)
        assert f"the token directory {store.directory} holds 3 sealed records" in message
        assert f"Restore {store.key_path} from a backup" in message
        assert f"move {store.directory} aside" in message
        assert not store.key_path.exists()  # nothing was created over the records
    store.key_path.write_bytes(key)  # restored: everything is back
    assert make_store(tmp_path, handle).privateshare_token_users() == [USER, "bob"]
    # Moved aside: a new store starts empty.
    store.directory.rename(tmp_path / "c1.old")
    assert make_store(tmp_path, handle).privateshare_token_users() == []


def test_a_store_key_from_another_store_is_named(tmp_path, handle) -> None:
    ours = make_store(tmp_path / "a", handle)
    theirs = make_store(tmp_path / "b", handle)  # same contract and contract key
    ours.privateshare_token_save(USER, token())
    ours.privateshare_token_save("bob", token("b1", "b2"))
    theirs.privateshare_token_save("someone", token("x", "y"))
    our_id, their_id = ours._open().key_id, theirs._open().key_id
    assert our_id != their_id and len(our_id) == 16
    original = ours.key_path.read_bytes()
    ours.key_path.write_bytes(theirs.key_path.read_bytes())
    swapped = make_store(tmp_path / "a", handle)
    # Every call says so: records are found by digests under the store key, so with
    # another store's key every user would otherwise look as if they had no token.
    for call in (
        lambda s: s.privateshare_token_load(USER),
        lambda s: s.privateshare_token_users(),
        lambda s: s.privateshare_token_save("new", token()),
    ):
        with pytest.raises(TokenStoreError) as info:
            call(make_store(tmp_path / "a", handle))
        message = str(info.value)
        assert f"cannot be read with its store key {swapped.key_path} (store key {their_id})" in (
            message
        )
        assert f"were sealed by store key {our_id}" in message
        assert f"put back the store key {our_id} from a backup" in message
        assert f"move {swapped.directory} aside" in message
    ours.key_path.write_bytes(original)
    assert make_store(tmp_path / "a", handle).privateshare_token_users() == [USER, "bob"]


def test_records_of_format_1_are_read_and_rewritten_as_format_2(tmp_path) -> None:
    # Written by the code before store key ids (tests/fixtures/tokens-v1/README.md).
    import shutil

    from privateshare.keys import handle_from_pem

    fixture = Path(__file__).parents[1] / "fixtures" / "tokens-v1"
    shutil.copytree(fixture / "file-store", tmp_path / "tokens")
    handle = handle_from_pem((fixture / "contract.pem").read_bytes(), "fixture key")
    store = make_store(tmp_path, handle, path="tokens")
    expected = UserAccessToken(
        Token("access-v1-fixture", 1_900_000_000),
        Token("refresh-v1-fixture", 1_900_100_000),
        user_id="dm-v1",
        consent_id="consent-v1",
    )
    assert store.privateshare_token_users() == ["alice"]
    assert store.privateshare_token_load("alice") == expected
    assert store.privateshare_checkpoint_load("alice") == {"*": {"a.json": 1_700_000_000_000}}
    record = store.directory / f"{store._open().digest('alice')}.token"
    assert record.read_bytes().startswith(b"PSTOK\x01")
    store.privateshare_token_save("alice", expected)
    assert record.read_bytes().startswith(b"PSTOK\x02" + bytes.fromhex(store._open().key_id))
    assert make_store(tmp_path, handle, path="tokens").privateshare_token_load("alice") == expected
    # Its checkpoint (format 1, from before journals) is rewritten in format 3 by a save.
    base = store.directory / f"{store._open().digest('alice')}.checkpoint"
    assert base.read_bytes().startswith(b"PSTOK\x01")
    store.privateshare_checkpoint_save("alice", {"*": {"b.json": 2}}, False)
    assert base.read_bytes().startswith(b"PSCKP\x03" + bytes.fromhex(store._open().key_id))
    assert make_store(tmp_path, handle, path="tokens").privateshare_checkpoint_load("alice") == {
        "*": {"a.json": 1_700_000_000_000, "b.json": 2}
    }


@pytest.fixture
def open_dir() -> Iterator[Path]:
    with open_directory() as path:
        yield path


def _open_store(root: Path, handle) -> FileTokenStore:
    store = make_store(root, handle, path=str(root / "tokens"))
    store.privateshare_token_save(USER, token())
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_token_save("bob", token("b1", "b2"))
    with store.privateshare_token_lock(USER):
        pass
    hand_over(root / "tokens")
    return store


@pytest.mark.parametrize(
    ("target", "mode", "operation", "expected"),
    [
        ("directory", 0o000, "users", "cannot access the token directory {path}"),
        ("directory", 0o300, "users", "cannot list the token directory {path}"),
        ("directory", 0o500, "save", "cannot write the token record of user 'bob'"),
        ("store.key", 0o000, "load", "cannot read the token store key {path}"),
        ("record", 0o000, "load", "cannot read the token record of user {user!r} at {path}"),
        ("locks", 0o000, "lock", "cannot take the lock {path}/"),
        ("lock", 0o000, "lock", "cannot take the lock {path}"),
        ("root", 0o000, "users", "cannot access the token directory {path}/c1"),
    ],
)
def test_an_unreadable_store_names_the_path_and_the_fix(
    open_dir: Path, handle, target: str, mode: int, operation: str, expected: str
) -> None:
    store = _open_store(open_dir, handle)
    digest = store._open().digest(USER)
    path = {
        "root": store.root,
        "directory": store.directory,
        "store.key": store.key_path,
        "record": store.directory / f"{digest}.token",
        "locks": store.directory / "locks",
        "lock": store.directory / "locks" / f"{digest}.lock",
    }[target]
    path.chmod(mode)

    def run() -> object:
        fresh = make_store(open_dir, handle, path=str(open_dir / "tokens"))
        if operation == "users":
            return fresh.privateshare_token_users()
        if operation == "load":
            return fresh.privateshare_token_load(USER)
        if operation == "save":
            return fresh.privateshare_token_save("bob", token("new", "new"))
        with fresh.privateshare_token_lock(USER):
            return None

    with pytest.raises(TokenStoreError) as info:
        run_as_other(run)
    message = str(info.value)
    assert expected.format(path=path, user=USER) in message, message
    assert "Permission denied" in message and "permissions" in message


def test_one_unreadable_record_is_left_out_of_users(open_dir: Path, handle) -> None:
    store = _open_store(open_dir, handle)
    record = store.directory / f"{store._open().digest(USER)}.token"
    record.chmod(0o000)

    def users() -> list[str]:
        return make_store(
            open_dir, handle, path=str(open_dir / "tokens")
        ).privateshare_token_users()

    listed, warnings = run_as_other(users)
    assert listed == ["bob"]
    (warning,) = warnings
    assert f"cannot read the token record at {record}" in warning and "Permission denied" in warning


# --- the checkpoint journal -------------------------------------------------------------


def _journals(store: FileTokenStore) -> list[Path]:
    return sorted(store.directory.glob("*.journal"))


def test_checkpoint_saves_append_what_changed_not_the_whole_state(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    big = {f"file-{i:05d}.json": 1_700_000_000_000 + i for i in range(5_000)}
    store.privateshare_checkpoint_save(USER, {"files": big}, True)
    base = _record(store, "checkpoint")
    base_stat = base.stat()
    sizes = []
    for i in range(20):
        store.privateshare_checkpoint_save(USER, {"files": {f"new-{i}.json": i + 1}}, False)
        [journal] = _journals(store)
        sizes.append(journal.stat().st_size)
    # The base is not rewritten; each save adds one small sealed entry, whatever the state's size.
    assert base.stat().st_ino == base_stat.st_ino and base.stat().st_size == base_stat.st_size
    steps = {b - a for a, b in itertools.pairwise(sizes)}
    assert max(steps) < 200, steps
    loaded = make_store(tmp_path, handle).privateshare_checkpoint_load(USER)
    assert loaded == {"files": {**big, **{f"new-{i}.json": i + 1 for i in range(20)}}}


@pytest.mark.parametrize("cut", [1, 20, 50])
def test_a_torn_journal_tail_is_ignored_and_compacted_away(tmp_path, handle, caplog, cut) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_checkpoint_save(USER, {"files": {"b.json": 2}}, False)
    store.privateshare_checkpoint_save(USER, {"files": {"c.json": 3}}, False)
    [journal] = _journals(store)
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - cut])  # a crash in the middle of the last append
    fresh = make_store(tmp_path, handle)
    with caplog.at_level("WARNING"):
        assert fresh.privateshare_checkpoint_load(USER) == {"files": {"a.json": 1, "b.json": 2}}
    assert "cut short" in caplog.text
    # Compacted: the torn bytes are gone, and later saves land after good ones.
    assert not journal.exists()
    fresh.privateshare_checkpoint_save(USER, {"files": {"d.json": 4}}, False)
    again = make_store(tmp_path, handle).privateshare_checkpoint_load(USER)
    assert again == {"files": {"a.json": 1, "b.json": 2, "d.json": 4}}


def test_a_damaged_journal_entry_before_the_tail_is_an_error(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"files": {"a.json": 1}}, False)
    store.privateshare_checkpoint_save(USER, {"files": {"b.json": 2}}, False)
    store.privateshare_checkpoint_save(USER, {"files": {"c.json": 3}}, False)
    [journal] = _journals(store)
    data = bytearray(journal.read_bytes())
    data[-150] ^= 1  # inside the second of three entries (each ~100 bytes)
    journal.write_bytes(bytes(data))
    with pytest.raises(TokenStoreError, match="checkpoint journal of user"):
        make_store(tmp_path, handle).privateshare_checkpoint_load(USER)


def test_a_journal_left_by_a_crash_during_compaction_is_ignored(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}, "gone": {"a.json": 1}}, False)
    store.privateshare_checkpoint_save(USER, {"gone": {"b.json": 2}}, False)
    [old] = _journals(store)
    kept = old.read_bytes()
    store.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}}, True)  # forgets "gone"
    old.write_bytes(kept)  # as if the crash came between the new base and the unlink
    assert make_store(tmp_path, handle).privateshare_checkpoint_load(USER) == {"s": {"a.json": 1}}


def test_the_journal_is_compacted_once_it_outgrows_the_base(tmp_path, handle, monkeypatch) -> None:
    from privateshare.plugins import tokenseal

    monkeypatch.setattr(tokenseal, "COMPACT_AT", 1_000)
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}}, True)
    generations = set()
    for i in range(60):
        store.privateshare_checkpoint_save(USER, {"s": {f"{i}.json": i}}, False)
        generations.update(p.name for p in _journals(store))
        assert len(_journals(store)) <= 1
    assert len(generations) > 2  # compacted more than once; each journal under ~1 KB + base
    expected = {"a.json": 1, **{f"{i}.json": i for i in range(60)}}
    assert make_store(tmp_path, handle).privateshare_checkpoint_load(USER) == {"s": expected}


def test_a_second_process_appends_after_another_compacted(tmp_path, handle) -> None:
    one, two = make_store(tmp_path, handle), make_store(tmp_path, handle)
    one.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}}, False)
    assert two.privateshare_checkpoint_load(USER) == {"s": {"a.json": 1}}
    one.privateshare_checkpoint_save(USER, {"s": {"a.json": 1}, "t": {"x": 1}}, True)
    two.privateshare_checkpoint_save(USER, {"s": {"b.json": 2}}, False)  # sees the new base
    assert make_store(tmp_path, handle).privateshare_checkpoint_load(USER) == {
        "s": {"a.json": 1, "b.json": 2},
        "t": {"x": 1},
    }


def test_run_record_is_sealed_and_forgotten_with_the_user(tmp_path, handle) -> None:
    store = make_store(tmp_path, handle)
    assert store.privateshare_run_record_load(USER) is None
    record = {"run_id": "r1", "final_state": "completed", "secret-photo-name.json": 1}
    store.privateshare_token_save(USER, token())
    assert store.privateshare_run_record_save(USER, record) is True
    assert make_store(tmp_path, handle).privateshare_run_record_load(USER) == record
    assert b"secret-photo-name" not in _record(store, "run").read_bytes()
    assert store.privateshare_token_delete(USER) is True
    assert store.privateshare_run_record_load(USER) is None
    assert [p.name for p in store.directory.iterdir() if p.is_file()] == ["store.key"]


def test_the_state_is_handed_over_in_segments_then_the_journal(tmp_path, handle, monkeypatch):
    from privateshare.plugins import tokenseal

    monkeypatch.setattr(tokenseal, "SEGMENT_NAMES", 2)
    store = make_store(tmp_path, handle)
    store.privateshare_checkpoint_save(USER, {"s": {"a": 1, "b": 2, "c": 3}, "t": {}}, True)
    store.privateshare_checkpoint_save(USER, {"s": {"a": 4}}, False)
    store.privateshare_checkpoint_save(USER, {"t": {"z": 5}, "s": {"d": 6}}, False)
    pieces = list(make_store(tmp_path, handle).privateshare_checkpoint_pieces(USER))
    assert pieces == [  # the base's segments, then the journal's changes merged
        ("s", {"a": 1, "b": 2}),
        ("s", {"c": 3}),
        ("t", {}),
        ("s", {"a": 4, "d": 6}),
        ("t", {"z": 5}),
    ]
    assert list(store.privateshare_checkpoint_pieces("nobody")) == []


def test_a_compaction_cut_short_leaves_the_base_and_journal_it_started_from(
    tmp_path, handle, monkeypatch
) -> None:
    from privateshare.plugins import tokenseal

    monkeypatch.setattr(tokenseal, "SEGMENT_NAMES", 10)
    store = make_store(tmp_path, handle)
    state = {"s": {f"{i:03d}.json": i for i in range(100)}}
    store.privateshare_checkpoint_save(USER, state, True)
    store.privateshare_checkpoint_save(USER, {"s": {"new.json": 7}}, False)
    base, [journal] = _record(store, "checkpoint"), _journals(store)
    before = (base.read_bytes(), journal.read_bytes())
    merged = tokenseal._merged
    written: list[int] = []

    def dies_midway(*args):
        for index, segment in enumerate(merged(*args)):
            if index == 5:
                raise KeyboardInterrupt  # as a kill would, half way through the new base
            written.append(index)
            yield segment

    monkeypatch.setattr(tokenseal, "_merged", dies_midway)
    keys = store._open()
    with pytest.raises(KeyboardInterrupt):
        store._checkpoint_compact(keys, USER, keys.digest(USER))
    assert written == [0, 1, 2, 3, 4]  # the new base was being written when it stopped
    assert (base.read_bytes(), journal.read_bytes()) == before
    assert not [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(tokenseal, "_merged", merged)
    expected = {"s": {**state["s"], "new.json": 7}}
    assert make_store(tmp_path, handle).privateshare_checkpoint_load(USER) == expected
