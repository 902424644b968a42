"""The ``digime`` decryptor: digi.me's file format, streamed with flat memory.

Layout (protocol.md#file-format)::

    0   .. 255   RSA-OAEP-SHA1(file key)   the 32-byte AES-256 key, wrapped for the contract key
    256 .. 271   IV                         16 bytes, in clear
    272 .. end   AES-256-CBC(PKCS#7(P))     v1.7
                 AES-256-CBC(PKCS#7(SHA-512(P) || P))   v1.5 ("hashed")

``P`` is gzip or brotli compressed when ``x-metadata.compression`` says so; the
server compresses before it encrypts, so we decrypt and then decompress.

:func:`decrypt_stream` does the work and is usable without the plugin machinery;
:class:`DigimeDecryptor` is the plugin that answers ``privateshare_decrypt``.

**Streaming contract.** The result is an iterator of plaintext chunks. With no
compression a chunk is a ``memoryview`` into a buffer that is reused: it is valid
until the next chunk is requested (copy it with ``bytes(chunk)`` to keep it), and
released then, so a view kept past that raises instead of showing later bytes.
Some checks can only run at the end of the stream (total size, PKCS#7 padding,
the v1.5 hash, the end of the compressed stream): they raise
:class:`~privateshare.FileDecryptionError` when the iterator is exhausted, after
plaintext has been handed out. A consumer must therefore not commit what it
wrote until the iterator has finished without error.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, BinaryIO, Final, Literal, NamedTuple

import msgspec
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.decompress import Corrupt, gunzip, unbrotli
from privateshare.errors import FileDecryptionError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.keys import KeyHandle
from privateshare.models import FileMetadata

__all__ = [
    "HEADER_SIZE",
    "MIN_SIZE_V15",
    "MIN_SIZE_V17",
    "DigimeDecryptor",
    "DigimeDecryptorOptions",
    "decrypt_stream",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

WRAPPED_KEY_SIZE: Final = 256  # RSA-2048 modulus size
IV_SIZE: Final = 16
BLOCK: Final = 16
HEADER_SIZE: Final = WRAPPED_KEY_SIZE + IV_SIZE  # 272
HASH_SIZE: Final = 64  # SHA-512
#: Smallest valid v1.7 file: header + one padding block (empty plaintext).
MIN_SIZE_V17: Final = HEADER_SIZE + BLOCK  # 288
#: Smallest valid v1.5 file: header + 64-byte hash + padding, rounded up to a block.
MIN_SIZE_V15: Final = HEADER_SIZE + HASH_SIZE + BLOCK  # 352

DEFAULT_CHUNK_SIZE: Final = 1 * MiB
DEFAULT_MAX_DECOMPRESSED: Final = 4 * GiB
#: Past ``DEFAULT_RATIO_FLOOR`` bytes of output, a compressed file may expand at most this many
#: times the compressed bytes read so far: a bomb fails after about the floor, not the cap.
DEFAULT_MAX_RATIO: Final = 100
DEFAULT_RATIO_FLOOR: Final = 64 * MiB
#: Regular files are read through read-only mmap windows of this size: no copy
#: into a read buffer, and at most one window of page cache mapped at a time.
MMAP_WINDOW: Final = 8 * MiB
#: Compressed input is fed to zlib in slices of at most this size, so its
#: ``unconsumed_tail`` copies stay small. Brotli keeps unconsumed input itself (no copy),
#: and is given each decrypted chunk whole: fed 64 KiB at a time it returns ~32 KiB
#: outputs (~400 per 15 MiB file, each a sink call, gathered by the file sink with a
#: copy); fed 1 MiB, about 2 MiB ones.
_FEED: Final = 64 * KiB


def decrypt_stream(
    source: BinaryIO,
    key: KeyHandle,
    *,
    compression: str | None = None,
    hashed: bool = False,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    file_name: str = "",
    expected_size: int | None = None,
    use_mmap: bool = True,
    max_ratio: int = DEFAULT_MAX_RATIO,
    ratio_floor: int = DEFAULT_RATIO_FLOOR,
) -> Iterator[bytes | memoryview]:
    """Decrypt (and decompress) one digi.me file from ``source``, chunk by chunk.

    Memory stays flat whatever the file size: one ``chunk_size`` buffer is reused
    for reading and decrypting, and decompression produces at most about
    ``chunk_size`` bytes per step.

    :param source: readable binary stream positioned at the file's first byte.
        Regular files are read through mmap windows (no read copy) unless
        ``use_mmap`` is false; anything else through ``readinto``/``read``.
    :param key: the contract key handle; only ``decrypt_oaep_sha1`` is used.
    :param compression: ``"gzip"`` or ``"brotli"``; any other value means none,
        as in the official SDK.
    :param hashed: the v1.5 profile: the plaintext starts with SHA-512 of the rest.
    :param max_decompressed_bytes: decompressed output above this fails with
        check ``decompression`` (against decompression bombs).
    :param max_ratio: past ``ratio_floor`` bytes of output, output above
        ``max_ratio`` times the compressed bytes read so far fails the same way, so a
        bomb is refused after about ``ratio_floor`` bytes, whatever the cap.
    :param chunk_size: bytes decrypted per step (rounded down to a multiple of 16).
    :param file_name: named in error messages.
    :param expected_size: total encrypted size if known (e.g. Content-Length):
        checked upfront and against what the stream actually delivered.
    :returns: an iterator of plaintext chunks. Without compression a chunk is a
        view into a reused buffer, valid until the next chunk is requested.
    :raises FileDecryptionError: with ``check`` ``size``, ``key``, ``padding``,
        ``hash`` or ``decompression``; end-of-stream checks raise only when the
        iterator is exhausted, so do not commit output before that.
    """
    if chunk_size < BLOCK:
        raise ValueError(f"chunk_size must be at least {BLOCK} bytes, got {chunk_size}")
    if max_decompressed_bytes < 0:
        raise ValueError("max_decompressed_bytes must not be negative")
    if max_ratio < 1 or ratio_floor < 0:
        raise ValueError("max_ratio must be at least 1 and ratio_floor not negative")
    chunk_size -= chunk_size % BLOCK
    minimum = MIN_SIZE_V15 if hashed else MIN_SIZE_V17
    if expected_size is not None:
        _check_size(expected_size, minimum, hashed, file_name)

    plain: Iterator[bytes | memoryview] = _decrypt(
        source, key, minimum, hashed, chunk_size, file_name, expected_size, use_mmap
    )
    if hashed:
        plain = _strip_hash(plain, file_name)
    limits = _Limits(max_decompressed_bytes, max_ratio, ratio_floor)
    if compression == "gzip":
        return _decompress(plain, gunzip, limits, chunk_size, _FEED, "gzip", file_name)
    if compression == "brotli":
        return _decompress(plain, unbrotli, limits, chunk_size, chunk_size, "brotli", file_name)
    return plain


# --- decryption --------------------------------------------------------------


def _profile(hashed: bool) -> str:
    return "v1.5" if hashed else "v1.7"


def _check_size(total: int, minimum: int, hashed: bool, file_name: str) -> None:
    if total < minimum or total % BLOCK:
        raise FileDecryptionError(
            "size",
            f"File size not valid: {total} bytes; a {_profile(hashed)} file is at least "
            f"{minimum} bytes and a multiple of {BLOCK} (truncated or padded download?)",
            file_name,
        )


def _read_exact(source: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, or fewer only at end of stream (reads may be partial)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = source.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _unwrap_key(key: KeyHandle, wrapped: bytes, file_name: str) -> bytes:
    try:
        file_key = key.decrypt_oaep_sha1(wrapped)
    except ValueError:
        raise FileDecryptionError(
            "key",
            "the file key cannot be unwrapped with the contract's private key "
            "(RSA-OAEP-SHA1 failed): the file was encrypted for another contract key, "
            "or its first 256 bytes are corrupt",
            file_name,
        ) from None
    if len(file_key) != 32:
        raise FileDecryptionError(
            "key",
            f"the unwrapped file key is {len(file_key)} bytes, expected 32 (AES-256)",
            file_name,
        )
    return file_key


def _regular_file(source: BinaryIO) -> int | None:
    """The file descriptor of ``source`` if it is a seekable regular file, else ``None``."""
    try:
        fd = source.fileno()
        if not source.seekable():
            return None
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def _decrypt(
    source: BinaryIO,
    key: KeyHandle,
    minimum: int,
    hashed: bool,
    chunk_size: int,
    file_name: str,
    expected_size: int | None,
    use_mmap: bool,
) -> Iterator[bytes | memoryview]:
    """Decrypt and unpad; yields views into one reused buffer, the last block held back.

    The buffer is ``[held block | chunk area | slack]``: each step decrypts into the
    chunk area (in place when reading through ``readinto``), hands out
    ``held + all but the last 16 new bytes`` as one contiguous view, then moves the
    new last block to the front. Only the final held block is unpadded.
    """
    header = _read_exact(source, HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        _check_size(len(header), minimum, hashed, file_name)
    fd = _regular_file(source) if use_mmap else None
    first = b""
    if fd is None:
        # Read up to the minimum size before touching the key, so that a short file is
        # reported as such (as the official SDK does), not as a key failure.
        first = _read_exact(source, minimum - HEADER_SIZE)
        if len(first) < minimum - HEADER_SIZE:
            _check_size(HEADER_SIZE + len(first), minimum, hashed, file_name)
    else:
        # Size known upfront: fail before decrypting anything.
        body_start = source.tell()
        body_len = os.fstat(fd).st_size - body_start
        _check_size(HEADER_SIZE + max(body_len, 0), minimum, hashed, file_name)
        if expected_size is not None and HEADER_SIZE + body_len != expected_size:
            _size_mismatch(HEADER_SIZE + body_len, expected_size, file_name)

    file_key = _unwrap_key(key, header[:WRAPPED_KEY_SIZE], file_name)
    decryptor = Cipher(algorithms.AES(file_key), modes.CBC(header[WRAPPED_KEY_SIZE:])).decryptor()
    del file_key

    buf = _take_buffer(BLOCK + chunk_size + 2 * BLOCK)
    view = memoryview(buf)
    out = view[BLOCK:]  # update_into wants len(data) + 15 bytes of room
    held = False
    body = 0

    if fd is not None:
        pieces = _mmap_pieces(source, fd, body_start, body_len, chunk_size)
    else:
        pieces = _read_pieces(source, view[BLOCK : BLOCK + chunk_size], first)
    try:
        for piece in pieces:
            n = len(piece)
            body += n
            if n % BLOCK:
                break  # only at end of stream; reported by the size check below
            decryptor.update_into(piece, out)
            start = 0 if held else BLOCK
            if n > start:
                chunk = view[start:n]
                try:
                    yield chunk
                finally:
                    _release(chunk)
            view[0:BLOCK] = view[n : n + BLOCK]
            held = True
            _release(piece)
        held_block = bytes(view[0:BLOCK])
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
        out.release()
        view.release()
        del pieces  # its frame holds a view of the buffer
        _give_buffer(buf)

    total = HEADER_SIZE + body
    _check_size(total, minimum, hashed, file_name)
    if expected_size is not None and total != expected_size:
        _size_mismatch(total, expected_size, file_name)
    decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        last = unpadder.update(held_block) + unpadder.finalize()
    except ValueError:
        raise FileDecryptionError(
            "padding",
            "the last block does not end in valid PKCS#7 padding: the encrypted body is "
            "corrupt or was cut at a block boundary",
            file_name,
        ) from None
    if last:
        yield last


class _Buffers(threading.local):
    """One decryption buffer per thread, reused from file to file.

    A fresh ``chunk_size`` buffer per file is zero-filled under the GIL and, once glibc
    has handed it back to the kernel, faults its pages in again: ~1 ms per small file
    and heap holes that grow RSS with the number of files. A thread decrypts one file
    at a time, so one buffer per thread serves it; a second file open at once in the
    same thread (nested iterators) gets a buffer of its own.
    """

    def __init__(self) -> None:
        self.free: bytearray | None = None


_buffers = _Buffers()


def _release(chunk: memoryview) -> None:
    """Release a handed-out view: the buffer is reused, so a kept view must raise, not see it."""
    with contextlib.suppress(BufferError):  # exported further: _give_buffer sees it
        chunk.release()


def _take_buffer(size: int) -> bytearray:
    """A zeroed-once buffer of ``size`` usable bytes (one more allocated, see _give_buffer)."""
    free = _buffers.free
    if free is not None and len(free) == size + 1:
        _buffers.free = None
        return free
    return bytearray(size + 1)


def _give_buffer(buf: bytearray) -> None:
    """Keep ``buf`` for this thread's next file, unless a view of it is still alive.

    A bytearray refuses to change size while anything exports it, so shrinking and
    growing it by the spare byte (no reallocation) tells whether some consumer kept a
    view, say a slice of a chunk; such a buffer is left to the garbage collector.
    """
    try:
        del buf[-1]
        buf.append(0)
    except BufferError:
        return
    _buffers.free = buf


def _size_mismatch(total: int, expected: int, file_name: str) -> None:
    what = "truncated" if total < expected else "longer than announced"
    raise FileDecryptionError(
        "size", f"the file is {what}: {total} bytes, expected {expected}", file_name
    )


def _read_pieces(source: BinaryIO, area: memoryview, first: bytes) -> Iterator[memoryview]:
    """Yield ``first``, then fill ``area`` from the stream and yield the filled part.

    Pieces are a multiple of 16 bytes except at the very end (``first`` is 16 or 80
    bytes, ``area`` a multiple of 16 filled completely), which the in-place
    decryption relies on.
    """
    readinto = getattr(source, "readinto", None)
    size = len(area)
    with memoryview(first) as head:
        for i in range(0, len(head), size):
            yield head[i : i + size]
    while True:
        filled = 0
        while filled < size:
            if readinto is not None:
                n = readinto(area[filled:])
            else:
                data = source.read(size - filled)
                n = len(data)
                area[filled : filled + n] = data
            if not n:
                break
            filled += n
        if filled:
            yield area[:filled]
        if filled < size:
            return


def _mmap_pieces(
    source: BinaryIO, fd: int, body_start: int, body_len: int, chunk_size: int
) -> Iterator[memoryview]:
    """Yield the body of a regular file in chunks, straight from read-only mmap windows.

    One window is mapped at a time so resident page cache stays bounded; the stream is
    left positioned after what was consumed.
    """
    gran = mmap.ALLOCATIONGRANULARITY
    window = max(MMAP_WINDOW - MMAP_WINDOW % chunk_size, chunk_size)
    done = 0
    try:
        while done < body_len:
            wlen = min(window, body_len - done)
            offset = body_start + done
            aligned = offset - offset % gran
            delta = offset - aligned
            mapped = mmap.mmap(fd, delta + wlen, offset=aligned, access=mmap.ACCESS_READ)
            try:
                if hasattr(mapped, "madvise"):
                    mapped.madvise(mmap.MADV_SEQUENTIAL)
                with memoryview(mapped) as whole:
                    p = delta
                    end = delta + wlen
                    while p < end:
                        k = min(chunk_size, end - p)
                        piece = whole[p : p + k]
                        try:
                            yield piece
                        finally:
                            piece.release()
                        p += k
                        done += k
            finally:
                mapped.close()
    finally:
        source.seek(body_start + done)


def _strip_hash(chunks: Iterable[bytes | memoryview], file_name: str) -> Iterator[memoryview]:
    """v1.5: split off the 64-byte SHA-512 prefix and verify it against the rest."""
    digest = hashlib.sha512()
    prefix = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        if len(prefix) < HASH_SIZE:
            need = HASH_SIZE - len(prefix)
            prefix += view[:need]
            view = view[need:]
            if not view:
                continue
        digest.update(view)
        yield view
    if len(prefix) < HASH_SIZE or not hmac.compare_digest(digest.digest(), bytes(prefix)):
        raise FileDecryptionError(
            "hash",
            "Hash is not valid: the SHA-512 at the start of the plaintext does not match "
            "the data (corrupt file, or a v1.7 file decrypted with the v1.5 profile)",
            file_name,
        )


# --- decompression -----------------------------------------------------------


class _Limits(NamedTuple):
    cap: int
    ratio: int
    floor: int


class _Fed:
    """Feeds the decompressor in slices and counts the compressed bytes given to it."""

    def __init__(self, chunks: Iterable[bytes | memoryview], feed: int) -> None:
        self.chunks = chunks
        self.feed = feed
        self.total = 0

    def __iter__(self) -> Iterator[memoryview]:
        feed = self.feed
        for chunk in self.chunks:
            view = memoryview(chunk)
            for i in range(0, len(view), feed):
                piece = view[i : i + feed]
                self.total += len(piece)
                yield piece


def _decompress(
    plain: Iterator[bytes | memoryview],
    steps: Callable[[Iterable[memoryview], int], Iterator[bytes]],
    limits: _Limits,
    limit: int,
    feed: int,
    kind: str,
    file_name: str,
) -> Iterator[bytes]:
    """Decompress ``plain`` with a hard cap on the total output and on its expansion.

    Both are checked before a step's output is handed on, so a consumer never
    receives (or writes) more than the larger of ``floor`` and ``ratio`` times the
    compressed input so far, plus nothing at all past the cap.

    When the compressed data is corrupt, the rest of the ciphertext is still run
    through decryption (output discarded) so that a more basic failure (size,
    padding, v1.5 hash) is reported instead when there is one.
    """
    total = 0
    fed = _Fed(plain, feed)
    try:
        for out in steps(fed, limit):
            total += len(out)
            if total > limits.cap:
                raise FileDecryptionError(
                    "decompression",
                    f"the {kind} data expands beyond max_decompressed_bytes ({limits.cap} "
                    "bytes); refusing a possible decompression bomb (raise the option if the "
                    "file is genuine)",
                    file_name,
                )
            if total > limits.floor and total > limits.ratio * fed.total:
                raise FileDecryptionError(
                    "decompression",
                    f"the {kind} data expands more than max_ratio ({limits.ratio}) times: "
                    f"{total} bytes from {fed.total} compressed; refusing a possible "
                    "decompression bomb after ratio_floor "
                    f"({limits.floor} bytes) (raise max_ratio if the file is genuine)",
                    file_name,
                )
            yield out
    except Corrupt as exc:
        for _ in plain:  # raises size / padding / hash if the file itself is bad
            pass
        raise FileDecryptionError("decompression", str(exc), file_name) from None
    finally:
        close = getattr(plain, "close", None)
        if close is not None:
            close()


# --- the plugin --------------------------------------------------------------


class DigimeDecryptorOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options of the ``digime`` decryptor (the ``[decryption]`` table)."""

    #: File profile: ``"v1.5"`` = plaintext prefixed by its SHA-512, ``"v1.7"`` = not;
    #: ``"auto"`` follows ``[digime] api``.
    format: Literal["auto", "v1.7", "v1.5"] = "auto"
    #: Decompressed bytes allowed per file; more fails the file (decompression bombs).
    max_decompressed_bytes: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_DECOMPRESSED
    #: Past ``ratio_floor`` bytes of output, at most this many times the compressed input.
    max_ratio: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_RATIO
    #: Output a file may reach before ``max_ratio`` applies.
    ratio_floor: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_RATIO_FLOOR
    #: Bytes decrypted per step; also the largest chunk handed to sinks.
    chunk_size: Annotated[int, msgspec.Meta(ge=BLOCK, le=256 * MiB)] = DEFAULT_CHUNK_SIZE
    #: Read regular files through mmap windows (faster); false = always ``readinto``.
    mmap: bool = True


class DigimeDecryptor(Plugin):
    """digi.me's RSA-OAEP-SHA1 + AES-256-CBC file format, then gzip/brotli, streamed."""

    Options = DigimeDecryptorOptions
    description = "digi.me file format (RSA-OAEP + AES-256-CBC, gzip/brotli), streamed"

    def __init__(self, options: DigimeDecryptorOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        fmt = options.format if options.format != "auto" else context.api
        #: True for the v1.5 profile (SHA-512 prefix).
        self.hashed = fmt == "v1.5"

    @hookimpl
    def privateshare_decrypt(
        self, source: BinaryIO, metadata: FileMetadata, key: KeyHandle, file_name: str
    ) -> Iterator[bytes | memoryview]:
        """Decrypt one downloaded file; see :func:`decrypt_stream` for the contract."""
        opts: DigimeDecryptorOptions = self.options
        return decrypt_stream(
            source,
            key,
            compression=metadata.compression,
            hashed=self.hashed,
            max_decompressed_bytes=opts.max_decompressed_bytes,
            chunk_size=opts.chunk_size,
            file_name=file_name,
            use_mmap=opts.mmap,
            max_ratio=opts.max_ratio,
            ratio_floor=opts.ratio_floor,
        )
