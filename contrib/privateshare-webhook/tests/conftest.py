"""A real HTTP receiver on 127.0.0.1 that records every delivery; stopped after each test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest


@dataclass
class Delivery:
    """One request the receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body_file: Path
    status: int

    @property
    def body(self) -> bytes:
        return self.body_file.read_bytes()

    @property
    def key(self) -> tuple[str, str]:
        return (
            unquote(self.headers.get("Privateshare-User", "")),
            unquote(self.headers.get("Privateshare-File", "")),
        )


class Receiver:
    """Answers with the statuses in ``script`` (then ``default``); bodies go to disk.

    Bodies are streamed to files in 64 KiB blocks, so the receiver adds nothing to the
    Python heap the conformance suite measures while a large file is sent.
    """

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.deliveries: list[Delivery] = []
        self.script: list[int] = []
        self.default = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    body_file = receiver.spool / f"body-{len(receiver.deliveries):05d}"
                    delivery = Delivery(self.path, dict(self.headers), body_file, status)
                    receiver.deliveries.append(delivery)
                with body_file.open("wb") as out:
                    while length > 0:
                        block = self.rfile.read(min(length, 1 << 16))
                        if not block:
                            break
                        out.write(block)
                        length -= len(block)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/privateshare"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def latest(self, user: str, name: str) -> bytes | None:
        found = [d for d in self.accepted() if d.key == (user, name)]
        return found[-1].body if found else None

    def keys(self) -> set[tuple[str, str]]:
        return {d.key for d in self.accepted()}


@pytest.fixture
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """A running receiver; shut down (and its port closed) when the test ends."""
    recorder = Receiver(tmp_path_factory.mktemp("received"))
    recorder.thread.start()
    try:
        yield recorder
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()
        recorder.thread.join(timeout=5)
