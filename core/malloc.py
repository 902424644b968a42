"""One glibc malloc arena for a process's threads: less memory for very large libraries.

glibc gives each thread that allocates its own arena (up to eight a core). A pull's
workers each grew one from the blocks they freed (HTTP and decryption buffers, resized
dicts) that no other thread could reuse, and kept them: about 250 bytes of RSS per file
of the library (a 20,000-file pull peaked at 71 MiB, with one arena at 64 MiB;
benchmarks/compare.md). The price is CPU where buffers are large: with one arena, freed
megabytes go back to the system and are faulted in again (compressed files cost up to a
third more CPU per byte). So it is a choice, and a setting of the whole process: nothing
in privateshare makes it. ``MALLOC_ARENA_MAX=1`` in the environment does it for a
command or a worker; :func:`limit_arenas` does it from inside an application.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["limit_arenas"]

#: glibc's ``mallopt`` parameter for the most arenas (``M_ARENA_MAX`` in malloc.h).
_M_ARENA_MAX = -8


def limit_arenas(arenas: int = 1) -> bool:
    """On glibc, let threads that allocate from now on share at most ``arenas`` arenas.

    Returns ``True`` when the limit was set; ``False`` when ``MALLOC_ARENA_MAX`` is in
    the environment (glibc applied it at start-up and it is left alone) or the C library
    is not glibc. Calling it again sets the limit again.
    """
    if arenas < 1:
        raise ValueError(f"arenas must be 1 or more, not {arenas}")
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # no mallopt after all: leave malloc as it is
        return False
