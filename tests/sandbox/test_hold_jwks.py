"""``hold_jwks``: the Nth JWKS request is left unanswered until its client goes away."""

from __future__ import annotations

import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import requests


def _get(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return sock


def test_the_nth_jwks_request_is_held_until_its_client_leaves(make_sandbox: Any) -> None:
    sb = make_sandbox(hold_jwks=2)
    v15_jwks = sb.base_url_v15.rstrip("/") + "/jwks/oauth"
    assert requests.get(sb.jwks_url, timeout=30).status_code == 200
    held = _get(v15_jwks)  # the second, counted across both profiles
    try:
        deadline = time.monotonic() + 30  # a hang guard
        while sum(sb.stats()["requests"].get(k, 0) for k in ("jwks", "v1.5/jwks")) < 2:
            assert time.monotonic() < deadline, "the sandbox never saw the second request"
            time.sleep(0.01)
        readable, _, _ = select.select([held], [], [], 0.5)
        assert not readable, "the held request was answered"
    finally:
        held.close()
    # The client left; later requests are answered as usual.
    answer = requests.get(sb.jwks_url, timeout=30)
    assert answer.status_code == 200 and answer.json()["keys"]
