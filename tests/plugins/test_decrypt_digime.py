"""The ``digime`` decryptor against files made the way digi.me makes them.

Vectors are produced here with ``cryptography`` directly (never with the code
under test): a random 32-byte AES key wrapped for the contract's public key with
RSA-OAEP-SHA1, a random IV, AES-256-CBC with PKCS#7, compression before
encryption, and for v1.5 ``SHA-512(P) || P`` (protocol.md#file-format).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.errors import FileDecryptionError
from privateshare.hooks import PluginContext
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import FileMetadata
from privateshare.plugins.decrypt_digime import (
    DEFAULT_RATIO_FLOOR,
    DigimeDecryptor,
    DigimeDecryptorOptions,
    decrypt_stream,
)

MiB = 1024 * 1024
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


# --- vectors, the digi.me way -------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def handle(rsa_key: rsa.RSAPrivateKey) -> SoftwareKeyHandle:
    return SoftwareKeyHandle(rsa_key, "test")


def compress(data: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "brotli":
        return brotli.compress(data)
    return data


def encrypt(
    public: rsa.RSAPublicKey,
    data: bytes,
    *,
    compression: str | None = None,
    hashed: bool = False,
) -> bytes:
    """Encrypt ``data`` exactly as digi.me does: compress, [hash], pad, AES-CBC, wrap key."""
    payload = compress(data, compression)
    if hashed:
        payload = hashlib.sha512(payload).digest() + payload
    dsk, iv = os.urandom(32), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(payload) + padder.finalize()
    enc = Cipher(algorithms.AES(dsk), modes.CBC(iv)).encryptor()
    return public.encrypt(dsk, OAEP_SHA1) + iv + enc.update(padded) + enc.finalize()


def encrypt_raw(public: rsa.RSAPublicKey, padded: bytes, dsk: bytes | None = None) -> bytes:
    """Encrypt an already padded (or deliberately mis-padded) body."""
    dsk, iv = dsk or os.urandom(32), os.urandom(16)
    enc = Cipher(algorithms.AES(dsk), modes.CBC(iv)).encryptor()
    return public.encrypt(dsk, OAEP_SHA1) + iv + enc.update(padded) + enc.finalize()


def run(blob: bytes, handle: SoftwareKeyHandle, **kwargs: object) -> bytes:
    """Decrypt from an in-memory (non-file) stream, copying every chunk."""
    return b"".join(bytes(c) for c in decrypt_stream(io.BytesIO(blob), handle, **kwargs))


def check_of(blob: bytes, handle: SoftwareKeyHandle, **kwargs: object) -> FileDecryptionError:
    with pytest.raises(FileDecryptionError) as info:
        run(blob, handle, **kwargs)
    return info.value


class Trickle(io.RawIOBase):
    """A socket-like stream: every read returns at most a few bytes."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(b), self._step))
        b[: len(chunk)] = chunk
        return len(chunk)


class ReadOnly:
    """A stream with ``read()`` only (no ``readinto``, no ``fileno``)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)


# --- round trips ---------------------------------------------------------------

PAYLOAD = os.urandom(5000) + b'{"hello": "world"}' * 2000


@pytest.mark.parametrize("compression", [None, "gzip", "brotli"])
@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_round_trip(handle, rsa_key, compression, hashed) -> None:
    blob = encrypt(rsa_key.public_key(), PAYLOAD, compression=compression, hashed=hashed)
    assert run(blob, handle, compression=compression, hashed=hashed) == PAYLOAD


@pytest.mark.parametrize("compression", [None, "gzip", "brotli"])
@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_round_trip_from_file(handle, rsa_key, tmp_path: Path, compression, hashed) -> None:
    """Regular files take the mmap path; the stream is left after the file."""
    blob = encrypt(rsa_key.public_key(), PAYLOAD, compression=compression, hashed=hashed)
    path = tmp_path / "f.bin"
    path.write_bytes(b"PREFIX" + blob)
    with path.open("rb") as f:
        f.read(6)
        out = b"".join(
            bytes(c) for c in decrypt_stream(f, handle, compression=compression, hashed=hashed)
        )
        assert f.tell() == 6 + len(blob)
    assert out == PAYLOAD


@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_empty_plaintext(handle, rsa_key, hashed) -> None:
    blob = encrypt(rsa_key.public_key(), b"", hashed=hashed)
    assert len(blob) == (352 if hashed else 288)  # minimum sizes, protocol.md#file-format
    assert run(blob, handle, hashed=hashed) == b""


@pytest.mark.parametrize("compression", ["gzip", "brotli"])
def test_empty_plaintext_compressed(handle, rsa_key, compression) -> None:
    blob = encrypt(rsa_key.public_key(), b"", compression=compression)
    assert run(blob, handle, compression=compression) == b""


@pytest.mark.parametrize("size", [1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 4095, 4096])
@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_block_boundaries(handle, rsa_key, size, hashed) -> None:
    data = os.urandom(size)
    blob = encrypt(rsa_key.public_key(), data, hashed=hashed)
    assert len(blob) == 272 + (size + (64 if hashed else 0)) // 16 * 16 + 16
    for chunk_size in (16, 32, 48, 1 * MiB):
        assert run(blob, handle, hashed=hashed, chunk_size=chunk_size) == data


@pytest.mark.parametrize("compression", [None, "gzip", "brotli"])
@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_tiny_chunks_and_trickling_stream(handle, rsa_key, compression, hashed) -> None:
    """Partial reads and chunks smaller than the hash prefix still round-trip."""
    data = os.urandom(3000)
    blob = encrypt(rsa_key.public_key(), data, compression=compression, hashed=hashed)
    for source in (Trickle(blob), io.BufferedReader(Trickle(blob, 5)), ReadOnly(blob)):
        chunks = [
            bytes(c)
            for c in decrypt_stream(
                source, handle, compression=compression, hashed=hashed, chunk_size=32
            )
        ]
        assert b"".join(chunks) == data
        if compression is None:
            assert len(chunks) > 50
            assert max(len(c) for c in chunks) <= 32


def test_chunk_size_is_rounded_to_blocks(handle, rsa_key) -> None:
    data = os.urandom(1000)
    blob = encrypt(rsa_key.public_key(), data)
    chunks = [bytes(c) for c in decrypt_stream(io.BytesIO(blob), handle, chunk_size=100)]
    assert b"".join(chunks) == data
    # a 1008-byte body decrypted in 96-byte steps
    assert max(len(c) for c in chunks) == 96
    assert sum(len(c) == 96 for c in chunks) >= 9


def test_chunks_are_views_into_a_reused_buffer(handle, rsa_key) -> None:
    """Documented contract: a chunk is valid only until the next one is requested."""
    data = os.urandom(64 * 1024)
    blob = encrypt(rsa_key.public_key(), data)
    buffers = []
    plain = bytearray()
    for _ in range(2):  # two files in one thread: one buffer for both
        for chunk in decrypt_stream(io.BytesIO(blob), handle, chunk_size=4096):
            if isinstance(chunk, memoryview):
                buffers.append(id(chunk.obj))
            plain += chunk
    assert bytes(plain) == data * 2
    assert len(buffers) >= 30
    assert len(set(buffers)) == 1


def test_a_kept_chunk_is_released_not_overwritten(handle, rsa_key) -> None:
    """A view kept past the next request raises, instead of showing later bytes."""
    blob = encrypt(rsa_key.public_key(), os.urandom(64 * 1024))
    chunks = list(decrypt_stream(io.BytesIO(blob), handle, chunk_size=4096))
    kept = [c for c in chunks if isinstance(c, memoryview)]
    assert kept
    with pytest.raises(ValueError, match="released"):
        bytes(kept[0])


def test_a_buffer_still_viewed_is_not_reused(handle, rsa_key) -> None:
    """A consumer keeping a slice of a chunk: that buffer is not handed to the next file."""
    data = os.urandom(8 * 1024)
    blob = encrypt(rsa_key.public_key(), data)
    first = decrypt_stream(io.BytesIO(blob), handle, chunk_size=4096)
    chunk = next(first)
    held, size = chunk.obj, len(chunk)
    kept = chunk[:16]  # a slice outlives the chunk's release
    assert bytes(kept) == data[:16]
    assert b"".join(bytes(c) for c in first) == data[size:]
    second = decrypt_stream(io.BytesIO(blob), handle, chunk_size=4096)
    buffers = [id(c.obj) for c in second if isinstance(c, memoryview)]
    assert buffers
    assert id(held) not in buffers
    del kept
    third = decrypt_stream(io.BytesIO(blob), handle, chunk_size=4096)
    assert len({id(c.obj) for c in third if isinstance(c, memoryview)}) == 1


def test_big_file_streams_in_chunks(handle, rsa_key, tmp_path: Path) -> None:
    """20 MiB through both paths; chunks never exceed chunk_size."""
    data = os.urandom(20 * MiB + 5)
    blob = encrypt(rsa_key.public_key(), data)
    path = tmp_path / "big.bin"
    path.write_bytes(blob)
    for use_mmap in (True, False):
        digest = hashlib.sha256()
        count = 0
        with path.open("rb") as f:
            for chunk in decrypt_stream(f, handle, chunk_size=MiB, use_mmap=use_mmap):
                assert len(chunk) <= MiB
                digest.update(chunk)
                count += 1
        assert digest.digest() == hashlib.sha256(data).digest()
        assert count >= 20


def test_big_compressed_file_streams(handle, rsa_key) -> None:
    data = os.urandom(1 * MiB) * 20  # 20 MiB; a 1 MiB repeat is beyond gzip's window
    blob = encrypt(rsa_key.public_key(), data, compression="gzip")
    sizes = [len(c) for c in decrypt_stream(io.BytesIO(blob), handle, compression="gzip")]
    assert sum(sizes) == len(data)
    assert max(sizes) <= MiB


def test_unknown_compression_means_none(handle, rsa_key) -> None:
    """As in the official SDK: only "gzip" and "brotli" are decompressed."""
    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    assert run(blob, handle, compression="zstd") == PAYLOAD


def test_concatenated_gzip_members(handle, rsa_key) -> None:
    payload = gzip.compress(b"first ") + gzip.compress(b"second")
    blob = encrypt(rsa_key.public_key(), payload)
    assert run(blob, handle, compression="gzip") == b"first second"


# --- size ------------------------------------------------------------------------


@pytest.mark.parametrize("hashed", [False, True], ids=["v1.7", "v1.5"])
def test_wrong_length_plus_five_bytes(handle, rsa_key, hashed) -> None:
    """As the official SDK checks: 5 extra bytes appended fail the length check."""
    blob = encrypt(rsa_key.public_key(), PAYLOAD, hashed=hashed) + b"12345"
    err = check_of(blob, handle, hashed=hashed, file_name="18_1_1_1_1.json")
    assert err.check == "size"
    assert "18_1_1_1_1.json" in str(err)
    assert str(len(blob)) in str(err)


def test_wrong_length_from_file_fails_before_any_output(handle, rsa_key, tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(encrypt(rsa_key.public_key(), PAYLOAD) + b"12345")
    with path.open("rb") as f:
        it = decrypt_stream(f, handle)
        with pytest.raises(FileDecryptionError) as info:
            next(it)
    assert info.value.check == "size"


@pytest.mark.parametrize(
    ("size", "hashed"),
    [(0, False), (200, False), (250, False), (272, False), (287, False),
     (288, True), (336, True), (351, True)],
)  # fmt: skip
def test_below_minimum(handle, tmp_path, size, hashed) -> None:
    """Reported as size, not key, on streams too: the minimum is read before the key."""
    blob = os.urandom(size)
    err = check_of(blob, handle, hashed=hashed)
    assert err.check == "size"
    assert f"{size} bytes" in str(err)
    path = tmp_path / "f.bin"
    path.write_bytes(blob)
    with path.open("rb") as f, pytest.raises(FileDecryptionError) as info:
        list(decrypt_stream(f, handle, hashed=hashed))
    assert info.value.check == "size"


@pytest.mark.parametrize("size", [290, 300, 1000 * 16 + 1])
def test_misaligned_file_fails_upfront(handle, tmp_path, size) -> None:
    """A regular file's size is known: it is checked before the key is even tried."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(size))  # random: the key check would fail too
    with path.open("rb") as f, pytest.raises(FileDecryptionError) as info:
        next(decrypt_stream(f, handle))
    assert info.value.check == "size"


@pytest.mark.parametrize("cut", [1, 5, 16, 32, 1000])
def test_truncated(handle, rsa_key, cut) -> None:
    """Cut mid-block: size; cut at a block boundary: the padding no longer verifies."""
    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    err = check_of(blob[:-cut], handle)
    assert err.check == ("padding" if cut % 16 == 0 else "size")


def test_truncated_with_expected_size(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    err = check_of(blob[:-32], handle, expected_size=len(blob))
    assert err.check == "size"
    assert "truncated" in str(err)
    assert run(blob, handle, expected_size=len(blob)) == PAYLOAD


def test_expected_size_invalid_upfront(handle) -> None:
    with pytest.raises(FileDecryptionError) as info:
        decrypt_stream(io.BytesIO(b""), handle, expected_size=290)
    assert info.value.check == "size"


# --- key, padding, hash -----------------------------------------------------------


def test_wrong_key(handle, other_key) -> None:
    blob = encrypt(other_key.public_key(), PAYLOAD)
    err = check_of(blob, handle, file_name="a.json")
    assert err.check == "key"
    assert "a.json" in str(err)


@pytest.mark.parametrize(
    "body",
    [os.urandom(64) + bytes(16), b"\x1f\x8b" + os.urandom(62) + b"\x10" * 16],
    ids=["random-zero-padded", "gzip-magic-random"],
)
def test_error_messages_carry_no_key_material(handle, rsa_key, body) -> None:
    """Bad padding / corrupt gzip: the message names the file, never the file key or IV."""
    dsk = os.urandom(32)
    blob = encrypt_raw(rsa_key.public_key(), body, dsk=dsk)
    err = check_of(blob, handle, compression="gzip", file_name="k.json")
    text = f"{err} {err!r} {err.args}"
    assert "k.json" in text
    for secret in (dsk, blob[256:272]):
        assert secret.hex() not in text
        assert repr(secret)[2:-1] not in text


def test_key_store_failures_other_than_decryption_propagate(rsa_key) -> None:
    """A key store that cannot be reached is not a bad file: its own error surfaces."""
    from privateshare.errors import KeyStoreError

    class Unreachable(SoftwareKeyHandle):
        def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
            raise KeyStoreError("KMS unreachable")

    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    with pytest.raises(KeyStoreError):
        run(blob, Unreachable(rsa_key))


def test_corrupt_wrapped_key(handle, rsa_key) -> None:
    blob = bytearray(encrypt(rsa_key.public_key(), PAYLOAD))
    blob[10] ^= 0xFF
    assert check_of(bytes(blob), handle).check == "key"


def test_unwrapped_key_of_wrong_length(handle, rsa_key) -> None:
    blob = rsa_key.public_key().encrypt(os.urandom(16), OAEP_SHA1) + os.urandom(16 + 32)
    assert check_of(blob, handle).check == "key"


def test_bad_padding_tampered_last_block(handle, rsa_key) -> None:
    blob = bytearray(encrypt(rsa_key.public_key(), PAYLOAD))
    blob[-1] ^= 0x55  # garbles the whole last plaintext block
    err = check_of(bytes(blob), handle, file_name="x.json")
    assert err.check == "padding"
    assert "x.json" in str(err)


@pytest.mark.parametrize(
    "last_block",
    [
        bytes(15) + b"\x00",  # pad value 0
        bytes(15) + b"\x11",  # pad value 17 > 16
        b"A" * 12 + b"\x01\x04\x04\x04",  # last byte says 4, one of the 4 differs
        b"A" * 8 + b"\x07" * 7 + b"\x08",  # 8 claimed, only 7 match
    ],
)
def test_padding_bytes_are_verified_fully(handle, rsa_key, last_block) -> None:
    blob = encrypt_raw(rsa_key.public_key(), os.urandom(64) + last_block)
    assert check_of(blob, handle).check == "padding"


def test_valid_full_padding_block(handle, rsa_key) -> None:
    blob = encrypt_raw(rsa_key.public_key(), b"B" * 32 + b"\x10" * 16)
    assert run(blob, handle) == b"B" * 32


@pytest.mark.parametrize("compression", [None, "gzip", "brotli"])
def test_bad_hash(handle, rsa_key, compression) -> None:
    """v1.5: a corrupt SHA-512 prefix fails the hash check (protocol.md#file-format)."""
    payload = compress(PAYLOAD, compression)
    digest = bytearray(hashlib.sha512(payload).digest())
    digest[0] ^= 1
    padder = sym_padding.PKCS7(128).padder()
    blob = encrypt_raw(
        rsa_key.public_key(), padder.update(bytes(digest) + payload) + padder.finalize()
    )
    err = check_of(blob, handle, hashed=True, compression=compression, file_name="h.json")
    assert err.check == "hash"
    assert "h.json" in str(err)


def test_v15_tampered_data_reports_hash_not_decompression(handle, rsa_key) -> None:
    """Corrupt compressed data in a v1.5 file: the hash explains it, so the hash is reported."""
    payload = bytearray(gzip.compress(PAYLOAD))
    good = hashlib.sha512(bytes(payload)).digest()
    payload[len(payload) // 2] ^= 0xFF
    padder = sym_padding.PKCS7(128).padder()
    blob = encrypt_raw(rsa_key.public_key(), padder.update(good + payload) + padder.finalize())
    assert check_of(blob, handle, hashed=True, compression="gzip").check == "hash"


def test_v17_file_with_v15_profile_fails_hash(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    assert check_of(blob, handle, hashed=True).check == "hash"


# --- decompression ------------------------------------------------------------------


def test_corrupt_gzip(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), b"\x1f\x8b" + os.urandom(2000))
    err = check_of(blob, handle, compression="gzip", file_name="g.json")
    assert err.check == "decompression"
    assert "gzip" in str(err)
    assert "g.json" in str(err)


def test_not_gzip_at_all(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), PAYLOAD, compression=None)
    assert check_of(blob, handle, compression="gzip").check == "decompression"


def test_truncated_gzip(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), gzip.compress(PAYLOAD)[:-10])
    err = check_of(blob, handle, compression="gzip")
    assert err.check == "decompression"
    assert "ends before" in str(err)


@pytest.mark.parametrize("compression", ["gzip", "brotli"])
def test_trailing_garbage(handle, rsa_key, compression) -> None:
    blob = encrypt(rsa_key.public_key(), compress(PAYLOAD, compression) + b"garbage!")
    assert check_of(blob, handle, compression=compression).check == "decompression"


@pytest.mark.parametrize("chunk_size", [16, MiB])
def test_corrupt_brotli(handle, rsa_key, chunk_size) -> None:
    good = bytearray(brotli.compress(PAYLOAD))
    good[len(good) // 2 :] = os.urandom(len(good) - len(good) // 2)
    blob = encrypt(rsa_key.public_key(), bytes(good))
    err = check_of(blob, handle, compression="brotli", chunk_size=chunk_size)
    assert err.check == "decompression"
    assert "brotli" in str(err)


def test_truncated_brotli(handle, rsa_key) -> None:
    blob = encrypt(rsa_key.public_key(), brotli.compress(PAYLOAD)[:-5])
    assert check_of(blob, handle, compression="brotli").check == "decompression"


def test_cap_allows_exactly_the_limit(handle, rsa_key) -> None:
    data = b"x" * 100_000
    for compression in ("gzip", "brotli"):
        blob = encrypt(rsa_key.public_key(), data, compression=compression)
        kw = {"compression": compression}
        assert run(blob, handle, max_decompressed_bytes=len(data), **kw) == data
        err = check_of(blob, handle, max_decompressed_bytes=len(data) - 1, **kw)
        assert err.check == "decompression"
        assert "max_decompressed_bytes" in str(err)


BOMB_SIZE = 512 * MiB
CAP = 8 * MiB


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [comp.compress(zeros) for _ in range(BOMB_SIZE // MiB)]
    return b"".join(parts) + comp.flush()


@pytest.fixture(scope="module")
def brotli_bomb() -> bytes:
    comp = brotli.Compressor(quality=5, lgwin=24)
    zeros = bytes(MiB)
    parts = [comp.process(zeros) for _ in range(BOMB_SIZE // MiB)]
    return b"".join(parts) + comp.finish()


@pytest.mark.parametrize("kind", ["gzip", "brotli"])
def test_bomb_fails_fast_with_flat_memory(handle, rsa_key, kind, request) -> None:
    bomb = request.getfixturevalue(f"{kind}_bomb")
    assert len(bomb) < BOMB_SIZE // 500  # a real bomb: tiny input, huge output
    blob = encrypt(rsa_key.public_key(), bomb)
    got = 0
    tracemalloc.start()
    try:
        with pytest.raises(FileDecryptionError) as info:
            for chunk in decrypt_stream(
                io.BytesIO(blob), handle, compression=kind, max_decompressed_bytes=CAP
            ):
                got += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.check == "decompression"
    assert got <= CAP
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB while refusing a {kind} bomb"


@pytest.mark.parametrize("kind", ["gzip", "brotli"])
def test_a_bomb_under_the_cap_stops_at_the_ratio_floor(handle, rsa_key, kind, request) -> None:
    """Default settings: a 512 MiB bomb (far below the 4 GiB cap) ends after ~64 MiB."""
    bomb = request.getfixturevalue(f"{kind}_bomb")
    blob = encrypt(rsa_key.public_key(), bomb)
    got = 0
    with pytest.raises(FileDecryptionError) as info:
        for chunk in decrypt_stream(io.BytesIO(blob), handle, compression=kind):
            got += len(chunk)
    assert info.value.check == "decompression"
    assert f"the {kind} data expands more than max_ratio (100) times" in str(info.value)
    assert "raise max_ratio if the file is genuine" in str(info.value)
    assert got <= DEFAULT_RATIO_FLOOR  # nothing past the floor was handed on
    assert got >= DEFAULT_RATIO_FLOOR - 2 * MiB  # and the floor itself was


def test_the_ratio_applies_past_the_floor_only(handle, rsa_key) -> None:
    zeros = bytes(3 * MiB)  # gzip: ~1000 times smaller, brotli: ~200000 times
    text = os.urandom(600_000).hex().encode()  # compresses about twice
    for kind in ("gzip", "brotli"):
        kw = {"compression": kind, "chunk_size": 64 * 1024}
        packed = encrypt(rsa_key.public_key(), zeros, compression=kind)
        # Under the floor any ratio is fine; past it, at most max_ratio times the input.
        assert run(packed, handle, ratio_floor=4 * MiB, max_ratio=10, **kw) == zeros
        err = check_of(packed, handle, ratio_floor=MiB, max_ratio=10, **kw)
        assert err.check == "decompression" and "max_ratio (10)" in str(err)
        assert run(packed, handle, ratio_floor=MiB, max_ratio=10**6, **kw) == zeros
        # A genuine ratio below max_ratio passes whatever the floor.
        prose = encrypt(rsa_key.public_key(), text, compression=kind)
        assert len(text) / (len(prose) - 288) < 50
        assert run(prose, handle, ratio_floor=0, max_ratio=50, **kw) == text


@pytest.mark.parametrize("kind", ["gzip", "brotli"])
def test_a_bomb_through_the_plugin_and_the_file_sink_leaves_little_and_nothing(
    handle, rsa_key, kind, request, tmp_path
) -> None:
    """The whole decrypt path at default options, into the file sink's temp file."""
    from privateshare.config import decode_options
    from privateshare.plugins.sink_file import FileSink
    from privateshare.sinks import TEMP_PREFIX
    from privateshare.testing.helpers import make_file, make_run

    encrypted = tmp_path / "bomb.bin"
    encrypted.write_bytes(encrypt(rsa_key.public_key(), request.getfixturevalue(f"{kind}_bomb")))
    options = decode_options({}, DigimeDecryptorOptions, "[decryption]")
    plugin = DigimeDecryptor(options, PluginContext(name="decryption", base_dir=tmp_path))
    sink = FileSink(
        FileSink.Options(root="out"), PluginContext(name="sinks.local", base_dir=tmp_path)
    )
    run_info = make_run("alice")
    sink.privateshare_sink_open_run(run=run_info)
    writer = sink.privateshare_sink_open_file(run=run_info, file=make_file("alice", "f.json"))
    user_dir = tmp_path / "out" / "alice"
    with encrypted.open("rb") as source, pytest.raises(FileDecryptionError) as info:
        chunks = plugin.privateshare_decrypt(
            source=source,
            metadata=FileMetadata(compression=kind),
            key=handle,
            file_name="f.json",
        )
        for chunk in chunks:
            writer.write(chunk)
    assert "max_ratio" in str(info.value)
    (temp,) = [p for p in user_dir.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert temp.stat().st_size <= DEFAULT_RATIO_FLOOR  # 64 MiB written, not 512 MiB (or 4 GiB)
    writer.abort()
    assert list(user_dir.iterdir()) == []


# --- arguments and early stop -----------------------------------------------------


def test_invalid_arguments(handle) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        decrypt_stream(io.BytesIO(), handle, chunk_size=8)
    with pytest.raises(ValueError, match="max_decompressed_bytes"):
        decrypt_stream(io.BytesIO(), handle, max_decompressed_bytes=-1)
    with pytest.raises(ValueError, match="max_ratio"):
        decrypt_stream(io.BytesIO(), handle, max_ratio=0)


def test_closing_early_releases_the_file(handle, rsa_key, tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(encrypt(rsa_key.public_key(), os.urandom(100_000)))
    with path.open("rb") as f:
        it = decrypt_stream(f, handle, chunk_size=4096)
        next(it)
        it.close()  # must unmap cleanly; the file can still be used
        f.seek(0)
        assert len(f.read()) == path.stat().st_size


# --- the plugin -----------------------------------------------------------------------


def make_plugin(tmp_path: Path, api: str = "v1.7", **options: object) -> DigimeDecryptor:
    opts = msgspec.convert(options, DigimeDecryptorOptions)
    return DigimeDecryptor(opts, PluginContext(name="decryption", base_dir=tmp_path, api=api))


def test_options_defaults_and_decoding() -> None:
    opts = msgspec.toml.decode(b'format = "v1.5"\nchunk_size = 65536', type=DigimeDecryptorOptions)
    assert (opts.format, opts.chunk_size) == ("v1.5", 65536)
    assert opts.max_decompressed_bytes == 4 * 1024**3
    assert (opts.max_ratio, opts.ratio_floor) == (100, 64 * MiB)
    defaults = DigimeDecryptorOptions()
    assert (defaults.format, defaults.chunk_size, defaults.mmap) == ("auto", MiB, True)
    assert DigimeDecryptor.Options is DigimeDecryptorOptions
    assert DigimeDecryptor.description


@pytest.mark.parametrize(
    "bad",
    [
        {"unknown": 1},
        {"format": "v2"},
        {"chunk_size": 8},
        {"max_decompressed_bytes": -1},
        {"chunk_size": "big"},
    ],
)
def test_options_rejected(bad) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, DigimeDecryptorOptions)


@pytest.mark.parametrize(
    ("api", "fmt", "hashed"),
    [("v1.7", "auto", False), ("v1.5", "auto", True), ("v1.5", "v1.7", False),
     ("v1.7", "v1.5", True)],
)  # fmt: skip
def test_plugin_hook_profile(handle, rsa_key, tmp_path, api, fmt, hashed) -> None:
    plugin = make_plugin(tmp_path, api=api, format=fmt)
    blob = encrypt(rsa_key.public_key(), PAYLOAD, compression="brotli", hashed=hashed)
    meta = FileMetadata(metadata={"objectType": "x"}, compression="brotli")
    out = plugin.privateshare_decrypt(
        source=io.BytesIO(blob), metadata=meta, key=handle, file_name="f.json"
    )
    assert isinstance(out, Iterator)
    assert b"".join(bytes(c) for c in out) == PAYLOAD


def test_plugin_hook_uses_options(handle, rsa_key, tmp_path) -> None:
    plugin = make_plugin(tmp_path, max_decompressed_bytes=100, chunk_size=64)
    blob = encrypt(rsa_key.public_key(), PAYLOAD, compression="gzip")
    meta = FileMetadata(compression="gzip")
    with pytest.raises(FileDecryptionError) as info:
        for _ in plugin.privateshare_decrypt(
            source=io.BytesIO(blob), metadata=meta, key=handle, file_name="f.json"
        ):
            pass
    assert info.value.check == "decompression"
    assert info.value.file_name == "f.json"


def test_plugin_through_pluggy(handle, rsa_key, tmp_path) -> None:
    """Hook names and parameter names match the spec: pluggy validates them."""
    import pluggy

    from privateshare.hooks import specs as hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(make_plugin(tmp_path), name="decryption")
    pm.check_pending()
    blob = encrypt(rsa_key.public_key(), PAYLOAD)
    out = pm.hook.privateshare_decrypt(
        source=io.BytesIO(blob), metadata=FileMetadata(), key=handle, file_name="f.json"
    )
    assert b"".join(bytes(c) for c in out) == PAYLOAD


def test_entry_point_resolves_to_the_plugin() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="privateshare.decryptors") if e.name == "digime"]
    assert ep.load() is DigimeDecryptor
