"""``limit_arenas``: threads that allocate after it share one glibc arena; the env wins."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from privateshare.malloc import limit_arenas

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's (mallopt)"
)

# Eight threads allocate and keep small blocks at once; glibc's malloc_info then lists
# one <heap> per arena in use.
HEAPS = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    from privateshare.malloc import limit_arenas

    applied = limit_arenas() if sys.argv[1] == "limit" else None
    barrier = threading.Barrier(8)
    kept = []

    def allocate():
        barrier.wait()
        kept.append([bytearray(4096) for _ in range(64)])

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fdopen.restype = ctypes.c_void_p
    with tempfile.TemporaryFile() as out:
        stream = libc.fdopen(os.dup(out.fileno()), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        out.seek(0)
        print(applied, out.read().decode().count("<heap nr="))
    """
)


def _heaps(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.run(
        [sys.executable, "-c", HEAPS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, heaps = proc.stdout.split()
    return applied, int(heaps)


@pytest.mark.slow
@glibc
def test_threads_share_one_arena_once_limited() -> None:
    assert _heaps("limit") == ("True", 1)
    applied, heaps = _heaps("default")
    assert applied == "None" and heaps > 1  # what the limit prevents


@pytest.mark.slow
@glibc
def test_malloc_arena_max_in_the_environment_is_left_to_glibc() -> None:
    assert _heaps("limit", MALLOC_ARENA_MAX="3") == ("False", 3)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="arenas must be 1 or more, not 0"):
        limit_arenas(0)
