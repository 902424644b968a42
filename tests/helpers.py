"""Helpers the CLI tests share: a free port, the command as a subprocess, consent as a browser.

Imported relatively (``from ..helpers import cli``): the suite runs with
``--import-mode=importlib``, where ``tests`` is not on ``sys.path``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now (for a callback no parallel test shares)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``privateshare ARGS`` as a user runs it: a new process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "privateshare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def consent_command(
    *args: str, answer: Callable[[str], None], timeout: int = 60
) -> subprocess.CompletedProcess[str]:
    """Run a consent command (``authorize``, ``reauthorize``); ``answer`` is the user's browser.

    The command prints the consent URL and waits (``--no-browser``, ``--timeout``) for
    its callback; ``answer(url)`` plays the browser. The URL is the first line of stdout.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "privateshare", *args, "--no-browser", "--timeout", str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    answer(url)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, url + "\n" + out, err)
