"""plugins/tokenseal.py: how a record is sealed, what keeps it from opening elsewhere, and how
the store key is made and checked. The stores built on it are in test_tokens_file.py and
test_tokens_sql.py."""

from __future__ import annotations

import io
import secrets

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privateshare.errors import TokenStoreError
from privateshare.keys import SoftwareKeyHandle, public_key_fingerprint
from privateshare.models import Token, UserAccessToken
from privateshare.plugins import tokenseal
from privateshare.plugins.tokenseal import (
    BASE_MAGIC,
    RECORD_MAGIC,
    RECORD_MAGIC_V1,
    ForeignRecord,
    MalformedRecord,
    StoreKeys,
    TamperedRecord,
    TokenRecord,
    derive,
    key_check,
    new_store_key,
    open_base,
    open_store_key,
    record_aad,
    seal_base,
    sealed_by,
)
from privateshare.testing.helpers import TestKey

from .checkpoint_base import base_pieces

STORE_KEY = bytes(range(32))
RECORD = TokenRecord("alice", UserAccessToken(Token("a", 1), Token("r", 2)), 5.0)


@pytest.fixture(scope="module")
def keys() -> StoreKeys:
    return StoreKeys(STORE_KEY)


def test_a_sealed_record_opens_with_the_same_contract_kind_and_user(keys: StoreKeys) -> None:
    digest = keys.digest("alice")
    blob = keys.seal("c1", "token", digest, RECORD)
    assert blob.startswith(RECORD_MAGIC + bytes.fromhex(keys.key_id))
    assert b"alice" not in blob and b'"a"' not in blob  # sealed, not merely encoded
    assert msgspec.json.decode(keys.open("c1", "token", digest, blob), type=TokenRecord) == RECORD
    assert keys.seal("c1", "token", digest, RECORD) != blob  # a fresh nonce each time
    assert sealed_by(blob) == keys.key_id


def test_a_record_moved_to_another_contract_kind_or_user_does_not_open(keys: StoreKeys) -> None:
    digest = keys.digest("alice")
    blob = keys.seal("c1", "token", digest, RECORD)
    for contract, kind, where in [
        ("c2", "token", digest),
        ("c1", "run", digest),
        ("c1", "token", keys.digest("bob")),
    ]:
        with pytest.raises(TamperedRecord):
            keys.open(contract, kind, where, blob)


def test_a_changed_byte_anywhere_after_the_key_id_does_not_open(keys: StoreKeys) -> None:
    digest = keys.digest("alice")
    blob = keys.seal("c1", "token", digest, RECORD)
    start = len(RECORD_MAGIC) + 8
    for index in (start, start + 11, start + 12, len(blob) - 1):  # nonce, text, tag
        changed = bytearray(blob)
        changed[index] ^= 1
        with pytest.raises(TamperedRecord):
            keys.open("c1", "token", digest, bytes(changed))


def test_a_record_of_another_store_key_is_named_not_tampered(keys: StoreKeys) -> None:
    other = StoreKeys(secrets.token_bytes(32))
    blob = other.seal("c1", "token", other.digest("alice"), RECORD)
    with pytest.raises(ForeignRecord) as info:
        keys.open("c1", "token", keys.digest("alice"), blob)
    assert info.value.key_id == other.key_id != keys.key_id


def test_bytes_that_are_no_record_are_malformed(keys: StoreKeys) -> None:
    digest = keys.digest("alice")
    blob = keys.seal("c1", "token", digest, RECORD)
    for garbage in (b"", b"PSTOK", b"PSTOK\x03" + blob[6:], blob[:30], RECORD_MAGIC_V1 + b"x" * 27):
        with pytest.raises(MalformedRecord):
            keys.open("c1", "token", digest, garbage)
    assert sealed_by(b"PSTOK\x03" + blob[6:]) is None


def test_a_format_1_record_is_still_read(keys: StoreKeys) -> None:
    """Format 1 (no key id) was written before; its associated data had no key id either."""
    digest = keys.digest("alice")
    nonce = secrets.token_bytes(12)
    aead = AESGCM(derive(STORE_KEY, b"records"))
    plaintext = msgspec.json.encode(RECORD)
    v1 = RECORD_MAGIC_V1 + nonce + aead.encrypt(nonce, plaintext, record_aad("c1", "token", digest))
    assert keys.open("c1", "token", digest, v1) == plaintext
    assert sealed_by(v1) is None
    with pytest.raises(TamperedRecord):  # format 1 is bound to contract, kind and user too
        keys.open("c2", "token", digest, v1)
    other = StoreKeys(secrets.token_bytes(32))
    with pytest.raises(TamperedRecord):  # no key id to name: another key cannot be told apart
        other.open("c1", "token", digest, v1)


def test_the_associated_data_is_unambiguous_and_versioned() -> None:
    assert record_aad("a", "token", "b|c") != record_aad("a|token", "token", "b|c")
    assert record_aad("a", "token", "d") != record_aad("a", "token", "d", "00")
    assert msgspec.json.decode(record_aad('c"1', "run", "d", "k")) == [
        "privateshare-token-record/v2",
        'c"1',
        "run",
        "d",
        "k",
    ]


def test_user_digests_and_key_ids_reveal_nothing_and_differ_by_key(keys: StoreKeys) -> None:
    other = StoreKeys(secrets.token_bytes(32))
    assert keys.digest("alice") == StoreKeys(STORE_KEY).digest("alice")
    assert keys.digest("alice") not in (keys.digest("bob"), other.digest("alice"))
    assert len(keys.digest("alice")) == 64 and len(keys.key_id) == 16
    assert keys.key_id not in STORE_KEY.hex() and repr(keys) == f"StoreKeys(key_id={keys.key_id})"
    assert key_check(STORE_KEY, "c1") != key_check(STORE_KEY, "c2")


def open_args(handle: SoftwareKeyHandle, store_key: bytes, contract: str = "c1") -> dict:
    return {
        "public_key_sha256": public_key_fingerprint(handle.public_key()),
        "check": key_check(store_key, contract),
        "contract_id": "c1",
        "where": "the store key file",
        "forget": "delete it",
    }


def test_a_new_store_key_is_wrapped_to_the_contract_key_and_opens(
    privateshare_test_key: TestKey,
) -> None:
    handle = privateshare_test_key.handle
    store_key, wrapped = new_store_key(handle.public_key(), handle)
    assert len(store_key) == 32 and store_key not in wrapped
    assert open_store_key(handle, wrapped, **open_args(handle, store_key)) == store_key


def test_a_store_key_that_does_not_belong_is_refused_with_the_fix(
    privateshare_test_key: TestKey,
) -> None:
    handle = privateshare_test_key.handle
    store_key, wrapped = new_store_key(handle.public_key(), handle)
    other = SoftwareKeyHandle(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(TokenStoreError, match=r"different contract key .*; .* or delete it$"):
        open_store_key(other, wrapped, **open_args(handle, store_key))
    args = {**open_args(handle, store_key), "check": key_check(store_key, "c2")}
    with pytest.raises(TokenStoreError, match="does not belong to this store"):
        open_store_key(handle, wrapped, **args)
    damaged = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(TokenStoreError, match=r"cannot be unwrapped .*ValueError"):
        open_store_key(handle, damaged, **open_args(handle, store_key))


def test_a_handle_that_cannot_open_what_its_public_key_wraps_is_refused(
    privateshare_test_key: TestKey,
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(TokenStoreError, match="cannot decrypt what its own public key encrypts"):
        new_store_key(other.public_key(), privateshare_test_key.handle)


# --- a checkpoint's base: separately sealed pieces ---------------------------------------


def _base(keys: StoreKeys, state, user: str = "alice", journal: str = "0123456789abcdef") -> bytes:
    pieces = seal_base(keys, "c1", keys.digest(user), user, journal, state)
    return b"".join(pieces)


def _read_base(keys: StoreKeys, blob: bytes, user: str = "alice"):
    """The header and every segment of ``blob`` (which must start with the magic)."""
    stream = io.BytesIO(blob)
    assert stream.read(len(BASE_MAGIC)) == BASE_MAGIC
    header, segments = open_base(keys, "c1", keys.digest(user), stream)
    return header, list(segments)


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenseal, "SEGMENT_NAMES", 3)


def test_a_base_is_cut_into_bounded_segments_and_reads_back(keys, small_segments) -> None:
    state = {"files": {f"{i}.json": i for i in range(10)}, "empty": {}, "db": {"x": -1}}
    blob = _base(keys, state.items())
    assert blob.startswith(BASE_MAGIC + bytes.fromhex(keys.key_id) + b"0123456789abcdef")
    assert b"json" not in blob and b"alice" not in blob
    assert sealed_by(blob) == keys.key_id
    header, segments = _read_base(keys, blob)
    assert (header.user_id, header.journal, header.format) == ("alice", "0123456789abcdef", 3)
    assert [(sink, len(names)) for sink, names in segments] == [
        ("files", 3),
        ("files", 3),
        ("files", 3),
        ("files", 1),
        ("empty", 0),
        ("db", 1),
    ]
    rebuilt: dict[str, dict[str, int]] = {}
    for sink, names in segments:
        rebuilt.setdefault(sink, {}).update(names)
    assert rebuilt == state
    assert len(base_pieces(blob)[1]) == 1 + 6 + 1  # header, segments, end


def test_a_segment_stops_growing_at_segment_bytes(keys, monkeypatch) -> None:
    monkeypatch.setattr(tokenseal, "SEGMENT_BYTES", 1_000)
    state = {"files": {"n" * 200 + str(i): i for i in range(20)}}
    _, segments = _read_base(keys, _base(keys, state.items()))
    assert len(segments) == 4 and all(len(names) == 5 for _, names in segments)


def _damaged(keys: StoreKeys) -> dict[str, bytes]:
    """Bases damaged every way the format must catch, by what was done to them."""
    state = {"files": {f"{i}.json": i for i in range(9)}, "db": {"a": 1}}
    blob = _base(keys, state.items())
    head, pieces = base_pieces(blob)  # header, 3 + 1 segments, end
    other_user = base_pieces(_base(keys, state.items(), user="bob"))[1]
    other_base = base_pieces(_base(keys, state.items(), journal="fedcba9876543210"))[1]
    flipped = bytearray(pieces[2])
    flipped[-5] ^= 1
    return {
        "a byte changed": head + b"".join([*pieces[:2], bytes(flipped), *pieces[3:]]),
        "a segment dropped": head + b"".join(pieces[:2] + pieces[3:]),
        "segments reordered": head + b"".join([pieces[0], pieces[2], pieces[1], *pieces[3:]]),
        "a segment duplicated": head + b"".join([*pieces[:3], pieces[2], *pieces[3:]]),
        "a segment of another user": head + b"".join([*pieces[:2], other_user[2], *pieces[3:]]),
        "a segment of another base": head + b"".join([*pieces[:2], other_base[2], *pieces[3:]]),
        "the end dropped (cut at a piece)": head + b"".join(pieces[:-1]),
        "cut inside a piece": blob[:-7],
        "bytes after the end": blob + pieces[1],
        "another base's generation": blob.replace(b"0123456789abcdef", b"fedcba9876543210", 1),
        "an impossible length": head + b"\xff\xff\xff\xff" + b"".join(pieces)[4:],
    }


@pytest.mark.usefixtures("small_segments")
@pytest.mark.parametrize(
    "damage",
    [
        "a byte changed",
        "a segment dropped",
        "segments reordered",
        "a segment duplicated",
        "a segment of another user",
        "a segment of another base",
        "the end dropped (cut at a piece)",
        "cut inside a piece",
        "bytes after the end",
        "another base's generation",
        "an impossible length",
    ],
)
def test_a_damaged_base_does_not_read(keys: StoreKeys, damage: str) -> None:
    blob = _damaged(keys)[damage]
    with pytest.raises((TamperedRecord, MalformedRecord)):
        _read_base(keys, blob)


def test_a_base_of_another_store_key_is_named(keys: StoreKeys) -> None:
    other = StoreKeys(secrets.token_bytes(32))
    blob = b"".join(seal_base(other, "c1", keys.digest("alice"), "alice", "0" * 16, []))
    with pytest.raises(ForeignRecord) as info:
        _read_base(keys, blob)
    assert info.value.key_id == other.key_id
    assert sealed_by(blob) == other.key_id


def test_a_base_is_no_record_of_another_kind(keys: StoreKeys) -> None:
    blob = _base(keys, [("files", {"a": 1})])
    with pytest.raises(TamperedRecord):
        keys.open("c1", "token", keys.digest("alice"), blob)


@pytest.mark.parametrize("seed", range(5))
def test_merging_a_journal_into_a_base_matches_a_dict(keys, small_segments, seed: int) -> None:
    import random

    rng = random.Random(seed)
    names = [f"n{i}" for i in range(40)]
    base = {sink: {n: rng.randrange(5) for n in rng.sample(names, 15)} for sink in ("a", "b", "c")}
    newer = {
        sink: {n: rng.randrange(5, 10) for n in rng.sample(names, rng.randrange(0, 20))}
        for sink in ("b", "c", "d")
    }
    expected = {sink: dict(names) for sink, names in base.items()}
    for sink, dates in newer.items():
        expected.setdefault(sink, {}).update(dates)
    _, segments = _read_base(keys, _base(keys, base.items()))
    merged = list(tokenseal._bounded(tokenseal._merged(iter(segments), newer)))
    sinks = [sink for sink, _ in merged]
    assert sinks == sorted(sinks, key=sinks.index)  # each sink's segments together
    result: dict[str, dict[str, int]] = {}
    for sink, dates in merged:
        assert len(dates) <= 3
        result.setdefault(sink, {}).update(dates)
    assert result == {sink: dates for sink, dates in expected.items() if dates}
