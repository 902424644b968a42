"""The sandbox's synthetic library and its digi.me file encryption.

Decryption here uses ``cryptography`` directly (not privateshare's decryptor), so these tests
check the served bytes against protocol.md#file-format independently of the client code.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import tracemalloc
from collections.abc import Iterable

import brotli
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.sandbox import library as libmod
from privateshare.sandbox.encrypt import encrypted_size, iter_encrypt
from privateshare.sandbox.library import FileVersion, Library, generate_library

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)

MAPPED_KEYS = {"objectCount", "objectType", "serviceGroup", "serviceName", "schema"}
ACCOUNT_TYPES = {
    "USER", "ADMIN", "EVENT", "GROUP", "BANK", "CREDIT_CARD", "IMPORTED", "INVESTMENT",
    "INSURANCE", "LOAN", "REWARD", "BILL", "PUSH",
}  # fmt: skip


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def lib() -> Library:
    return generate_library(7, files=40, updated_fraction=0.5)


class StreamDecryptor:
    """Incremental decryption (protocol.md#file-format): the header split anywhere."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key = key
        self.head = b""
        self.dec = None
        self.tail = b""  # last block held back so padding can be stripped
        self.length = 0

    def feed(self, chunk: bytes) -> bytes:
        self.length += len(chunk)
        if self.dec is None:
            self.head += chunk
            if len(self.head) < 272:
                return b""
            dsk = self.key.decrypt(self.head[:256], OAEP)
            assert len(dsk) == 32
            self.dec = Cipher(algorithms.AES(dsk), modes.CBC(self.head[256:272])).decryptor()
            chunk, self.head = self.head[272:], b""
        data = self.tail + self.dec.update(chunk)
        keep = 16 if len(data) >= 16 else len(data)
        self.tail = data[len(data) - keep :]
        return data[: len(data) - keep]

    def finish(self) -> bytes:
        assert self.dec is not None
        data = self.tail + self.dec.finalize()
        pad = data[-1]
        assert 1 <= pad <= 16 and data[-pad:] == bytes([pad]) * pad
        return data[:-pad]


def decrypt_all(chunks: Iterable[bytes], key: rsa.RSAPrivateKey) -> tuple[bytes, int]:
    d = StreamDecryptor(key)
    out = b"".join(d.feed(c) for c in chunks) + d.finish()
    return out, d.length


def decompress(payload: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.decompress(payload)
    if compression == "brotli":
        return brotli.decompress(payload)
    return payload


# --------------------------------------------------------------------------- encrypt.py


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 65536])
@pytest.mark.parametrize("hashed", [False, True])
def test_iter_encrypt_roundtrip_and_size(rsa_key, n, hashed):
    data = bytes(range(256)) * (n // 256 + 1)
    data = data[:n]
    chunks = [data[i : i + 333] for i in range(0, n, 333)]
    digest = hashlib.sha512(data).digest() if hashed else None
    body = list(
        iter_encrypt(chunks, rsa_key.public_key(), hashed=hashed, sha512_of_plaintext=digest)
    )
    assert len(body[0]) == 272  # EK || IV first, so a server can flush headers early
    plain, length = decrypt_all(body, rsa_key)
    assert length == encrypted_size(n, hashed=hashed)
    assert length % 16 == 0
    if hashed:
        assert plain[:64] == hashlib.sha512(data).digest()
        plain = plain[64:]
    assert plain == data


def test_encrypted_size_minimums():
    assert encrypted_size(0) == 288  # protocol.md#file-format isValidSize lower bound
    assert encrypted_size(0, hashed=True) == 352  # protocol.md#file-format lower bound
    assert encrypted_size(15) == 288
    assert encrypted_size(16) == 304


def test_hashed_digest_computed_from_reiterable_chunks(rsa_key):
    data = b"hello digi.me" * 100
    body = list(iter_encrypt([data[:7], data[7:]], rsa_key.public_key(), hashed=True))
    plain, _ = decrypt_all(body, rsa_key)
    assert plain == hashlib.sha512(data).digest() + data
    body = list(iter_encrypt(data, rsa_key.public_key(), hashed=True))  # bytes, one chunk
    assert decrypt_all(body, rsa_key)[0] == hashlib.sha512(data).digest() + data


def test_hashed_one_shot_iterator_without_digest_is_refused(rsa_key):
    with pytest.raises(ValueError, match="sha512"):
        iter_encrypt(iter([b"x"]), rsa_key.public_key(), hashed=True)


def test_non_2048_key_is_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        iter_encrypt([b"x"], small.public_key())


def test_fresh_key_and_iv_per_call(rsa_key):
    a = b"".join(iter_encrypt([b"same"], rsa_key.public_key()))
    b = b"".join(iter_encrypt([b"same"], rsa_key.public_key()))
    assert a[:272] != b[:272] and a[272:] != b[272:]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_library():
    a = generate_library(3, files=30, partial=True)
    b = generate_library(3, files=30, partial=True)
    assert a == b  # names, accounts, metadata, dates, content recipes
    assert a.ground_truth() == b.ground_truth()
    for fa, fb in zip(a.files, b.files, strict=True):
        for va, vb in zip(fa.versions, fb.versions, strict=True):
            assert b"".join(va.iter_payload()) == b"".join(vb.iter_payload())


def test_other_seed_other_library():
    a = generate_library(3, files=10)
    b = generate_library(4, files=10)
    assert a.ground_truth() != b.ground_truth()
    assert [x["id"] for x in a.accounts] != [x["id"] for x in b.accounts]


def test_more_files_keeps_the_first_ones():
    small, big = generate_library(5, files=20), generate_library(5, files=60)
    assert big.files[:20] == small.files


def test_now_ms_moves_dates():
    a = generate_library(1, files=5)
    b = generate_library(1, files=5, now_ms=libmod.DEFAULT_NOW_MS + 1000)
    assert b.files[0].versions[0].updated_date == a.files[0].versions[0].updated_date + 1000
    assert all(v.updated_date < libmod.DEFAULT_NOW_MS for f in a.files for v in f.versions)


def test_a_library_of_5000_files_has_unique_names():
    # How long it takes is measured by benchmarks/sandbox.py; here: what it holds.
    big = generate_library(11, files=5000, large_files=2, large_file_size=8 << 30)
    assert len(big.files) == 5002
    assert len({f.name for f in big.files}) == 5002
    assert big.file(big.files[4321].name) is big.files[4321]
    with pytest.raises(KeyError):
        big.file("nope.json")


def test_generating_a_library_does_not_materialise_content():
    tracemalloc.start()
    try:
        lib = generate_library(11, files=50, large_files=2, large_file_size=8 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(v.plaintext_size for f in lib.files for v in f.versions) > 16 << 30
    assert peak < 16 << 20, peak  # two 8 GiB files, described but not held


# --------------------------------------------------------------------------- content


def test_encrypted_files_decrypt_to_ground_truth(lib, rsa_key):
    seen = set()
    for f in lib.files:
        for v in f.versions:
            comp = v.x_metadata.get("compression")
            seen.add(comp)
            for hashed in (False, True):
                body = list(v.iter_encrypted(rsa_key.public_key(), hashed=hashed, chunk_size=4096))
                payload, length = decrypt_all(body, rsa_key)
                assert length == v.encrypted_size(hashed=hashed)
                if hashed:
                    assert payload[:64] == hashlib.sha512(payload[64:]).digest()
                    payload = payload[64:]
                assert len(payload) == v.payload_size()
                plain = decompress(payload, comp)
                assert len(plain) == v.plaintext_size
                assert hashlib.sha256(plain).hexdigest() == v.plaintext_sha256()
    assert seen == {None, "gzip", "brotli"}
    assert lib.ground_truth() == {f.name: f.versions[-1].plaintext_sha256() for f in lib.files}


def test_compression_is_deterministic_and_before_encryption(lib):
    for f in lib.files:
        v = f.versions[0]
        comp = v.x_metadata.get("compression")
        p1 = b"".join(v.iter_payload(chunk_size=1000))
        libmod._cache._data.clear()  # force a rebuild from the recipe
        p2 = b"".join(v.iter_payload())
        assert p1 == p2
        if comp == "gzip":
            assert p1[:2] == b"\x1f\x8b" and p1[4:8] == bytes(4)  # gzip header, mtime 0
        assert decompress(p1, comp) == b"".join(v.iter_plaintext(chunk_size=777))


def test_mapped_files_are_json_arrays_matching_metadata(lib):
    mapped = [f for f in lib.files if f.name.endswith(".json")]
    groups = set()
    for f in mapped:
        for v in f.versions:
            meta = v.x_metadata["metadata"]
            assert set(meta) == MAPPED_KEYS
            assert meta["schema"]["standard"] in {"digime", "fhir"}
            assert meta["schema"]["version"] == "1.0.0"
            assert meta["serviceGroup"] == f.service_group
            objs = json.loads(b"".join(v.iter_plaintext()))
            assert isinstance(objs, list) and all(isinstance(o, dict) for o in objs)
            assert len(objs) == meta["objectCount"]
            if meta["schema"]["standard"] == "fhir":
                assert all(o["resourceType"] == meta["objectType"] for o in objs)
            groups.add(meta["serviceGroup"])
    assert groups == {"social", "music", "fitness", "health", "finance"}


def test_every_object_kind_fits_its_budget():
    # The prose field absorbs the slack up to MIN_OBJECT_SIZE; the fixed part must never exceed it.
    for kind, make in libmod._OBJECT_BUILDERS.items():
        spec = libmod._Spec(
            kind, 0, 0, 1, "6001_" + "F" * 32, "alex.morgan@example.com", 0, 0, None
        )
        rng = libmod._rng(kind)
        for _ in range(2000):
            text = json.dumps(make(rng, spec, 1_700_000_000_000), separators=(",", ":"))
            assert len(text) - len(libmod._FILL) < libmod.MIN_OBJECT_SIZE, kind


def test_fixed_size_distribution():
    fixed = generate_library(2, files=50, size_distribution="fixed:20480", updated_fraction=0)
    for f in fixed.files:
        if f.name.endswith(".json"):
            assert f.latest.plaintext_size == 20480
            assert len(b"".join(f.latest.iter_plaintext())) == 20480
        else:
            assert 15_000 < f.latest.plaintext_size < 30_000
    with pytest.raises(ValueError):
        generate_library(1, size_distribution="bogus")


def test_realistic_sizes_mostly_small():
    sizes = [
        f.latest.plaintext_size
        for f in generate_library(9, files=400).files
        if f.name.endswith(".json")
    ]
    small = [s for s in sizes if 1024 <= s <= 50 << 10]
    assert len(small) / len(sizes) > 0.85
    assert max(sizes) > 50 << 10  # a few bigger ones


def _jpeg_segments(data: bytes) -> list[int]:
    assert data[:2] == b"\xff\xd8"
    markers, i = [], 2
    while True:
        assert data[i] == 0xFF
        marker = data[i + 1]
        markers.append(marker)
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + length
        if marker == 0xDA:  # SOS: entropy data then EOI
            assert data[-2:] == b"\xff\xd9"
            return markers


def test_raw_files_jpeg_and_pdf(lib):
    jpegs = [f for f in lib.files if f.name.endswith(".jpg")]
    pdfs = [f for f in lib.files if f.name.endswith(".pdf")]
    assert jpegs and pdfs
    for f in jpegs + pdfs:
        v = f.latest
        meta = v.x_metadata["metadata"]
        assert meta["accounts"] == [{"accountid": f.account_id}]
        assert isinstance(meta["created"], int) and meta["reference"] == [f.name] and meta["tags"]
        data = b"".join(v.iter_plaintext())
        assert len(data) == v.plaintext_size
        if f.name.endswith(".jpg"):
            assert meta["mimetype"] == "image/jpeg"
            assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
            markers = _jpeg_segments(data)
            assert markers[0] == 0xE0 and {0xDB, 0xC0, 0xC4, 0xDA} <= set(markers)
        else:
            assert meta["mimetype"] == "application/pdf"
            assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
            xref = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
            assert data[xref:].startswith(b"xref\n")
            rows = data[xref:].split(b"\n")
            count = int(rows[1].split()[1])
            for oid in range(1, count):
                off = int(rows[2 + oid].split()[0])
                assert data[off:].startswith(f"{oid} 0 obj".encode())


def test_x_metadata_header_and_list_entry(lib):
    for f in lib.files:
        v = f.latest
        h = v.x_metadata_header()
        assert "=" not in h
        assert json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4))) == v.x_metadata
        entry = f.list_entry()
        assert entry["name"] == f.name and entry["updatedDate"] == v.updated_date
        if f.name.endswith(".json"):
            assert entry["objectCount"] == v.x_metadata["metadata"]["objectCount"]


# --------------------------------------------------------------------------- accounts, updates


def test_accounts_have_a45_fields(lib):
    assert len(lib.accounts) >= 5
    required = {
        "id": str, "reference": str, "type": str, "createdDate": int, "serviceGroupId": int,
        "serviceGroupName": str, "serviceTypeId": int, "serviceTypeName": str,
        "serviceTypeReference": str, "sourceId": int, "updatedDate": int,
    }  # fmt: skip
    for acc in lib.accounts:
        for key, typ in required.items():
            assert isinstance(acc[key], typ), key
        assert acc["type"] in ACCOUNT_TYPES
        assert acc["accessTokenStatus"]["authorized"] is True
        assert acc["sample"] is False
    names = {a["serviceTypeName"] for a in lib.accounts}
    assert {"Facebook", "Spotify", "Fitbit"} <= names
    assert "BANK" in {a["type"] for a in lib.accounts}
    assert {a["serviceGroupName"].lower() for a in lib.accounts} == {
        "social", "music", "fitness", "health", "finance",
    }  # fmt: skip
    ids = {a["id"] for a in lib.accounts}
    assert {f.account_id for f in lib.files} <= ids


def test_updated_versions_have_later_dates_and_more_objects():
    full = generate_library(6, files=30, updated_fraction=1.0)
    mapped = [f for f in full.files if f.name.endswith(".json")]
    assert all(len(f.versions) == 2 for f in mapped)
    for f in mapped:
        v1, v2 = f.versions
        assert v2.updated_date > v1.updated_date
        assert v2.x_metadata["metadata"]["objectCount"] > v1.x_metadata["metadata"]["objectCount"]
        assert v2.plaintext_sha256() != v1.plaintext_sha256()
        assert v2.x_metadata.get("compression") == v1.x_metadata.get("compression")
    none = generate_library(6, files=30, updated_fraction=0.0)
    assert all(len(f.versions) == 1 for f in none.files)


def test_partial_account():
    assert generate_library(8, files=30).partial_account_id is None
    part = generate_library(8, files=60, partial=True, updated_fraction=1.0)
    pid = part.partial_account_id
    assert pid in {a["id"] for a in part.accounts}
    mine = part.files_for_account(pid)
    assert mine and all(len(f.versions) == 1 for f in mine)


# --------------------------------------------------------------------------- large files


def test_large_file_streams_in_bounded_memory(rsa_key):
    size = 64 << 20
    big = generate_library(12, files=0, large_files=1, large_file_size=size)
    (f,) = big.files
    v: FileVersion = f.latest
    assert v.plaintext_size == v.payload_size() == size and "compression" not in v.x_metadata
    assert v.x_metadata["metadata"]["mimetype"] == "application/octet-stream"

    tracemalloc.start()
    try:
        d = StreamDecryptor(rsa_key)
        h = hashlib.sha256()
        for chunk in v.iter_encrypted(rsa_key.public_key()):
            h.update(d.feed(chunk))
        h.update(d.finish())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, peak
    assert d.length == v.encrypted_size() == encrypted_size(size)
    assert h.hexdigest() == v.plaintext_sha256()
    # A second library with the same seed agrees (hash cached, content reproducible).
    again = generate_library(12, files=0, large_files=1, large_file_size=size)
    assert again.ground_truth() == big.ground_truth()


def test_large_file_hashed_variant(rsa_key):
    size = (3 << 20) + 5
    (f,) = generate_library(13, files=0, large_files=1, large_file_size=size).files
    v = f.latest
    d = StreamDecryptor(rsa_key)
    out = bytearray()
    for chunk in v.iter_encrypted(rsa_key.public_key(), hashed=True, chunk_size=1 << 18):
        out += d.feed(chunk)
    out += d.finish()
    assert d.length == v.encrypted_size(hashed=True)
    assert bytes(out[:64]) == hashlib.sha512(out[64:]).digest()
    assert hashlib.sha256(out[64:]).hexdigest() == v.plaintext_sha256()
