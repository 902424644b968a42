"""digi.me file encryption, as the sandbox serves it (protocol.md#file-format).

Layout: ``EK(256) || IV(16) || AES-256-CBC(key, IV, PKCS#7(P))`` where EK is the fresh
32-byte AES key wrapped with RSA-OAEP-SHA1 under the contract's public key. The v1.5
("hashed") variant encrypts ``SHA512(P) || P`` instead of ``P``.

Encryption is streamed with reused output buffers so the sandbox can serve multi-GiB files
without holding them, and so that the size is known before the first byte
(:func:`encrypted_size`) for ``Content-Length``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "AES_BLOCK",
    "EK_SIZE",
    "HASH_SIZE",
    "HEADER_SIZE",
    "IV_SIZE",
    "KEY_SIZE",
    "OAEP_SHA1",
    "encrypted_size",
    "iter_encrypt",
]

EK_SIZE = 256  # RSA-2048 modulus: the format fixes the wrapped key at 256 bytes
IV_SIZE = 16
KEY_SIZE = 32
AES_BLOCK = 16
HASH_SIZE = 64  # SHA-512 prefix of the v1.5 variant
HEADER_SIZE = EK_SIZE + IV_SIZE

OAEP_SHA1 = padding.OAEP(
    mgf=padding.MGF1(hashes.SHA1()),  # noqa: S303 - digi.me's file format
    algorithm=hashes.SHA1(),  # noqa: S303 - digi.me's file format
    label=None,
)


def encrypted_size(plaintext_size: int, *, hashed: bool = False) -> int:
    """Size of the encrypted body for a payload of ``plaintext_size`` bytes.

    Needed up front for ``Content-Length`` and for injecting truncation faults. PKCS#7
    always adds 1..16 bytes, so an empty payload still costs one block.
    """
    if plaintext_size < 0:
        raise ValueError("plaintext_size must be >= 0")
    n = plaintext_size + (HASH_SIZE if hashed else 0)
    return HEADER_SIZE + (n // AES_BLOCK + 1) * AES_BLOCK


def _as_reiterable(chunks: Iterable[bytes] | bytes) -> Iterable[bytes] | None:
    """Return something we may iterate twice, or None if ``chunks`` is a one-shot iterator."""
    if isinstance(chunks, bytes | bytearray | memoryview):
        return (bytes(chunks),)
    if iter(chunks) is chunks:  # an iterator/generator: consumed by one pass
        return None
    return chunks


def iter_encrypt(
    chunks: Iterable[bytes] | bytes | bytearray | memoryview,
    public_key: RSAPublicKey,
    *,
    hashed: bool = False,
    sha512_of_plaintext: bytes | None = None,
) -> Iterator[bytes]:
    """Encrypt the payload given as ``chunks``, yielding the digi.me file body piece by piece.

    The first piece is the 272-byte header (EK || IV); then one ciphertext piece per input
    chunk (possibly empty pieces are skipped) and a final padded block. ``hashed=True`` gives
    the v1.5 layout; it needs SHA-512 of the payload before any ciphertext, so pass
    ``sha512_of_plaintext`` or pass a re-iterable ``chunks`` (list/tuple/bytes) to let this
    function hash it in a first pass.

    The AES key and IV are fresh random values per call (as digi.me does); only they are
    random, the payload is whatever the caller streams.
    """
    if public_key.key_size != EK_SIZE * 8:
        raise ValueError(
            f"digi.me's file format needs an RSA-2048 key (EK is {EK_SIZE} bytes); "
            f"got {public_key.key_size} bits"
        )
    if isinstance(chunks, bytes | bytearray | memoryview):
        chunks = (bytes(chunks),)
    prefix = b""
    if hashed:
        if sha512_of_plaintext is None:
            again = _as_reiterable(chunks)
            if again is None:
                raise ValueError(
                    "hashed=True needs sha512_of_plaintext, or re-iterable chunks to hash first"
                )
            h = hashlib.sha512()
            for c in again:
                h.update(c)
            sha512_of_plaintext = h.digest()
            chunks = again
        if len(sha512_of_plaintext) != HASH_SIZE:
            raise ValueError("sha512_of_plaintext must be a 64-byte SHA-512 digest")
        prefix = bytes(sha512_of_plaintext)
    return _encrypt_stream(chunks, public_key, prefix)


def _encrypt_stream(
    chunks: Iterable[bytes], public_key: RSAPublicKey, prefix: bytes
) -> Iterator[bytes]:
    """The generator behind :func:`iter_encrypt` (split so argument errors raise eagerly)."""
    key = os.urandom(KEY_SIZE)
    iv = os.urandom(IV_SIZE)
    ek = public_key.encrypt(key, OAEP_SHA1)
    yield ek + iv

    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    buf = bytearray(1 << 16)
    total = 0

    def feed(data: bytes | bytearray | memoryview) -> bytes:
        nonlocal buf, total
        n_in = len(data)
        need = n_in + AES_BLOCK - 1
        if len(buf) < need:
            buf = bytearray(max(need, 2 * len(buf)))
        n = encryptor.update_into(data, buf)
        total += n_in
        return bytes(memoryview(buf)[:n])

    if prefix:
        out = feed(prefix)
        if out:
            yield out
    for chunk in chunks:
        if not chunk:
            continue
        out = feed(chunk)
        if out:
            yield out
    pad = AES_BLOCK - (total % AES_BLOCK)
    out = feed(bytes([pad]) * pad) + encryptor.finalize()
    yield out
