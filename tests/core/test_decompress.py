"""privateshare.decompress: every codec in bounded steps, and what it refuses."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator

import brotli
import pytest

from privateshare.decompress import Corrupt, brotli_step_bound, gunzip, inflate, unbrotli

DATA = b"".join(b"row %d: %s\n" % (i, os.urandom(8).hex().encode()) for i in range(4_000))
STEP = 4096

Steps = Callable[[Iterator[bytes], int], Iterator[bytes]]


def pieces(blob: bytes, size: int = 1000) -> Iterator[bytes]:
    return (blob[i : i + size] for i in range(0, len(blob), size))


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CODECS: dict[str, tuple[Steps, Callable[[bytes], bytes]]] = {
    "gzip": (gunzip, gzip.compress),
    "deflate (zlib)": (inflate, zlib.compress),
    "deflate (raw)": (inflate, raw_deflate),
    "brotli": (unbrotli, lambda data: brotli.compress(data, quality=5)),
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", [1, 1000, 1 << 20])
def test_decodes_exactly_with_no_step_larger_than_asked(codec: str, size: int) -> None:
    steps, compress = CODECS[codec]
    outs = list(steps(pieces(compress(DATA), size), STEP))
    assert b"".join(outs) == DATA
    bound = brotli_step_bound(STEP) if steps is unbrotli else STEP
    assert max(len(out) for out in outs) <= bound


@pytest.mark.parametrize("codec", CODECS)
def test_a_stream_cut_short_is_corrupt(codec: str) -> None:
    steps, compress = CODECS[codec]
    blob = compress(DATA)
    with pytest.raises(Corrupt, match="ends before the end of its compressed stream"):
        list(steps(pieces(blob[: len(blob) // 2]), STEP))


@pytest.mark.parametrize("codec", CODECS)
def test_garbage_is_corrupt_and_says_which_codec(codec: str) -> None:
    steps, _ = CODECS[codec]
    name = codec.split()[0]
    with pytest.raises(Corrupt, match=f"the {name} data"):
        list(steps(iter([b"\x1f\x8b\x08\x00" + b"\xff" * 64]), STEP))


def test_deflate_tells_zlib_from_raw_when_its_first_two_bytes_come_apart() -> None:
    for blob in (zlib.compress(DATA), raw_deflate(DATA)):
        assert b"".join(inflate(iter([blob[:1], blob[1:2], blob[2:]]), STEP)) == DATA
    with pytest.raises(Corrupt, match="ends before"):
        list(inflate(iter([zlib.compress(DATA)[:1]]), STEP))


def test_gzip_members_in_a_row_are_one_body() -> None:
    blob = gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:])
    assert b"".join(gunzip(pieces(blob), STEP)) == DATA


@pytest.mark.parametrize("codec", ["gzip", "brotli"])
def test_data_after_the_stream_is_corrupt(codec: str) -> None:
    steps, compress = CODECS[codec]
    with pytest.raises(Corrupt):
        list(steps(pieces(compress(DATA) + b"junk"), STEP))


def test_deflate_ignores_what_follows_its_end_as_urllib3_does() -> None:
    assert b"".join(inflate(pieces(zlib.compress(DATA) + b"junk"), STEP)) == DATA


@pytest.mark.parametrize("codec", CODECS)
def test_nothing_at_all_is_cut_short(codec: str) -> None:
    steps, _ = CODECS[codec]
    with pytest.raises(Corrupt, match="ends before"):
        list(steps(iter([]), STEP))


@pytest.mark.parametrize("step", [1, STEP, 1 << 20])
def test_a_brotli_bomb_costs_one_bounded_step_at_a_time(step: int) -> None:
    bomb = brotli.compress(b"\0" * (16 << 20), quality=5)
    taken, bound = 0, brotli_step_bound(step)
    for out in unbrotli(iter([bomb]), step):
        assert len(out) <= bound
        taken += len(out)
        if taken > 4 << 20:
            break  # a consumer stops at its cap: the rest is never produced
    assert 4 << 20 < taken <= (4 << 20) + bound
