"""Deliberately hostile HTTP servers for the flow tests, over real HTTP on 127.0.0.1.

:class:`HostileServer` answers with whatever a test's handler writes; :func:`list_proxy`
makes one that forwards everything to a sandbox and lets the test rewrite the file
list on the way (duplicate names, dates that go backwards): answers the sandbox
cannot be asked to give.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Handler = Callable[[BaseHTTPRequestHandler], None]


class HostileServer:
    """Runs ``handle(request)`` for every request; the handler writes the whole answer."""

    def __init__(self, handle: Handler) -> None:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                owner.paths.append(self.path)
                handle(self)

            do_GET = do_POST = do_HEAD = do_DELETE = _any

            def log_message(self, *_args: object) -> None:
                pass

        self.paths: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def answer(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    request.send_response(status)
    for name, value in (headers or {"content-type": "application/json"}).items():
        request.send_header(name, value)
    request.send_header("content-length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


def list_answer(names_dates: list[tuple[str, int]], state: str = "completed") -> bytes:
    return json.dumps(
        {
            "status": {"state": state, "details": {}},
            "fileList": [{"name": n, "updatedDate": d} for n, d in names_dates],
        }
    ).encode()


def list_proxy(
    upstream: str, rewrite: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> HostileServer:
    """Forward every request to ``upstream`` (an origin); file lists pass through ``rewrite``."""
    target = urlsplit(upstream)

    def handle(request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length) if length else None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            connection.request(request.command, request.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            forwarded = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
        finally:
            connection.close()
        parts = request.path.split("?")[0].rstrip("/").split("/")
        if response.status == 200 and parts[-2:-1] == ["query"]:
            listing = json.loads(data)
            if "fileList" in listing:
                listing["fileList"] = rewrite(listing["fileList"])
            data = json.dumps(listing).encode()
        answer(request, response.status, data, forwarded)

    return HostileServer(handle)
