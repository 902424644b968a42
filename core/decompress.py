"""Decompression in bounded steps: gzip, deflate and brotli, for any input, at flat memory.

Shared by the transport's Content-Encoding decoder (:func:`privateshare.transport.
decoded_stream`) and the digi.me decryptor's compressed file bodies: each step takes what it
is given and produces at most ``step`` bytes, so a bomb costs one step of memory, never its
inflated size, and the caller counts the output against its own cap as it goes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Corrupt", "brotli_step_bound", "gunzip", "inflate", "unbrotli"]


class Corrupt(ValueError):
    """The compressed data is invalid, ends before its stream does, or has data after it."""


def gunzip(pieces: Iterable[bytes | memoryview], step: int) -> Iterator[bytes]:
    """gzip, members in a row as gzip allows; anything after the last member is corrupt."""
    return _zlib_steps(pieces, step, gzip=True)


def inflate(pieces: Iterable[bytes | memoryview], step: int) -> Iterator[bytes]:
    """HTTP's ``deflate``: zlib-wrapped, or raw as some servers send it (told apart by the
    first two bytes); what follows the end of the stream is ignored, as urllib3 does."""
    return _zlib_steps(pieces, step, gzip=False)


def _zlib_steps(pieces: Iterable[bytes | memoryview], step: int, *, gzip: bool) -> Iterator[bytes]:
    name = "gzip" if gzip else "deflate"
    d: Any = None
    head = b""  # deflate: zlib-wrapped or raw is told by two bytes, which may come apart
    try:
        for piece in pieces:
            data: bytes | memoryview = piece
            if d is None:
                if not gzip and len(head) + len(data) < 2:
                    head += data
                    continue
                if head:
                    data, head = head + data, b""
                d = zlib.decompressobj(_wbits(data, gzip=gzip))
            while True:
                if d.eof:
                    if not data or not gzip:
                        break
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next gzip member
                out = d.decompress(data, step)
                if out:
                    yield out
                data = d.unused_data if d.eof else d.unconsumed_tail
                if not data and not d.eof and len(out) < step:
                    break
    except zlib.error as exc:
        raise Corrupt(f"the {name} data is corrupt ({exc})") from None
    if d is None or not d.eof:
        raise Corrupt(f"the {name} data ends before the end of its compressed stream")


def _wbits(first: bytes | memoryview, *, gzip: bool) -> int:
    if gzip:
        return 16 + zlib.MAX_WBITS
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def unbrotli(pieces: Iterable[bytes | memoryview], step: int) -> Iterator[bytes]:
    """Brotli; data after the stream is corrupt.

    brotli (>= 1.2) bounds each call's output by whole blocks of its output buffer, so a
    step may pass ``step``: by at most one block, :func:`brotli_step_bound` in all.
    """
    import brotli  # here, not at start-up: most answers and files are not brotli

    d = brotli.Decompressor()
    try:
        for piece in pieces:
            if d.is_finished():
                if piece:
                    raise Corrupt("trailing data after the end of the brotli stream")
                continue
            out = d.process(piece, output_buffer_limit=step)
            while True:
                if out:
                    yield out
                if d.is_finished() or (not out and d.can_accept_more_data()):
                    break
                out = d.process(b"", output_buffer_limit=step)
    except brotli.error as exc:
        raise Corrupt(f"the brotli data is corrupt ({exc})") from None
    if not d.is_finished():
        raise Corrupt("the brotli data ends before the end of its compressed stream")


def brotli_step_bound(step: int) -> int:
    """The most one :func:`unbrotli` step produces when asked for ``step`` bytes."""
    return 2 * max(step, 32 << 10)
