"""A deliberately hostile HTTP server on 127.0.0.1, for testing transports over real HTTP.

Each route answers with a scripted misbehaviour: redirects anywhere, bodies cut short,
trickled a byte at a time, stalled, or Content-Encoding bombs. The server records every
connection and request, so a test can show that *nothing* reached it::

    from privateshare.testing.hostile import HostileServer, redirect, respond

    with HostileServer() as foreign, HostileServer() as home:
        home.route("/v1/start", redirect(foreign.url + "/steal"))
        ...  # send a request to home.url + "/v1/start"
        assert foreign.connections == 0

It stops by itself after ``lifetime`` seconds (and when closed): trickles and stalls
end, open connections are shut, threads are daemons.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli

__all__ = [
    "ENCODINGS",
    "Answer",
    "Exchange",
    "HostileServer",
    "Recorded",
    "bomb",
    "compress",
    "cut_chunked",
    "cut_short",
    "hang_up",
    "redirect",
    "respond",
    "sequence",
    "stall",
    "trickle",
]

MiB = 1 << 20
#: Content-Encodings :func:`compress` and :func:`bomb` can produce.
ENCODINGS = ("gzip", "deflate", "br")


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    #: Path and query, as sent.
    path: str
    #: Header names lower-cased.
    headers: Mapping[str, str]
    body: bytes
    #: ``time.monotonic()`` when its headers had arrived (comparable with a request deadline).
    at: float

    def __repr__(self) -> str:
        # Requests carry credentials: show the route, not the headers.
        return f"Recorded({self.method} {self.path.split('?')[0]})"


class Exchange:
    """One request being answered: what was asked, and low-level ways to answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: HostileServer, n: int) -> None:
        self._handler = handler
        self._server = server
        #: How many requests this route had before this one (0 for the first).
        self.n = n

    @property
    def stopping(self) -> bool:
        return self._server.stopping.is_set()

    def head(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        length: int | None = None,
    ) -> None:
        """Status line and headers; ``Content-Length: length`` unless ``length`` is None."""
        handler = self._handler
        handler.send_response(status)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            handler.send_header(name, value)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Send bytes now; False once the client has gone or the server is stopping."""
        if self.stopping:
            return False
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
        except OSError:
            return False
        return True

    def sleep(self, seconds: float) -> bool:
        """Wait; False when the server began stopping meanwhile."""
        return not self._server.stopping.wait(seconds)

    def hang_up(self) -> None:
        """Close the connection now, whatever was promised."""
        self._handler.close_connection = True
        with contextlib.suppress(OSError):
            self._handler.wfile.flush()
            self._handler.connection.shutdown(socket.SHUT_RDWR)


#: What a route does with a request.
Answer = Callable[[Exchange], None]


class HostileServer:
    """An HTTP/1.1 server on 127.0.0.1 whose routes misbehave on purpose.

    ``routes`` maps a path (without query) to an :data:`Answer`; other paths get 404.
    Every connection is counted (``connections``) and every request recorded
    (``requests``), so a test can assert that nothing was sent here at all.
    """

    def __init__(
        self, routes: Mapping[str, Answer] | None = None, *, lifetime: float = 300.0
    ) -> None:
        self.routes: dict[str, Answer] = dict(routes or {})
        self.requests: list[Recorded] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._counts: dict[str, itertools.count[int]] = {}
        self._sockets: set[socket.socket] = set()
        self._httpd = _Server(self)
        self.port: int = self._httpd.server_address[1]
        #: ``http://127.0.0.1:<port>``, no trailing slash.
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    def route(self, path: str, answer: Answer) -> str:
        """Answer requests for ``path`` with ``answer``; returns the route's full URL."""
        self.routes[path] = answer
        return self.url + path

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.split("?")[0] == path]

    def close(self) -> None:
        """Stop serving, end every answer in progress, shut open connections. Idempotent."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._timer.cancel()
        if threading.current_thread() is not self._thread:
            self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HostileServer({self.url}, {len(self.requests)} requests)"

    # --- used by the handler ---------------------------------------------------

    def _connected(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._sockets.add(sock)

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append(
                Recorded(
                    handler.command,
                    handler.path,
                    {k.lower(): v for k, v in handler.headers.items()},
                    body,
                    time.monotonic(),
                )
            )
            n = next(self._counts.setdefault(path, itertools.count()))
        answer = self.routes.get(path, respond(b"not found", status=404))
        answer(Exchange(handler, self, n))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, owner: HostileServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._connected(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that leaves mid-answer is what this server is for

    def shutdown_request(self, request: Any) -> None:
        self.owner._disconnected(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: An idle keep-alive connection is dropped after this long.
    timeout = 30
    server: _Server

    def _any(self) -> None:
        if self.server.owner.stopping.is_set():
            self.close_connection = True
            return
        self.server.owner._answer(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- answers -------------------------------------------------------------------------


def respond(
    body: bytes = b"",
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    *,
    length: int | None = None,
) -> Answer:
    """A plain answer. ``length`` declares another Content-Length (then hangs up if longer)."""

    def answer(exchange: Exchange) -> None:
        declared = len(body) if length is None else length
        exchange.head(status, headers or {}, length=declared)
        exchange.write(body)
        if declared > len(body):
            exchange.hang_up()

    return answer


def cut_short(body: bytes, declared: int) -> Answer:
    """Promise ``declared`` bytes, send ``body`` (fewer), hang up."""
    if declared <= len(body):
        raise ValueError("cut_short: declare more bytes than the body has")
    return respond(body, length=declared)


def cut_chunked(body: bytes) -> Answer:
    """``Transfer-Encoding: chunked``: one chunk of ``body``, then hang up without the last."""

    def answer(exchange: Exchange) -> None:
        exchange.head(200, {"Transfer-Encoding": "chunked"})
        exchange.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
        exchange.hang_up()

    return answer


def redirect(location: str, status: int = 302) -> Answer:
    """A redirect to ``location`` (any URL: another host, port or scheme)."""
    return respond(b"", status, {"Location": location})


def hang_up() -> Answer:
    """Close the connection without answering (a reset, as far as the client can tell)."""
    return lambda exchange: exchange.hang_up()


def trickle(
    body: bytes | int,
    *,
    every: float = 0.1,
    step: int = 1,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Headers at once, then ``step`` bytes every ``every`` seconds (``body``: bytes or a size).

    Ends when the body is sent, the client leaves, or the server stops.
    """
    data = body if isinstance(body, bytes) else b"x" * body

    def answer(exchange: Exchange) -> None:
        exchange.head(200, headers or {}, length=len(data))
        for start in range(0, len(data), step):
            if not exchange.write(data[start : start + step]) or not exchange.sleep(every):
                exchange.hang_up()
                return

    return answer


def stall(seconds: float, then: Answer | None = None) -> Answer:
    """Say nothing for ``seconds`` (not even a status line), then answer with ``then``."""

    def answer(exchange: Exchange) -> None:
        if exchange.sleep(seconds) and then is not None:
            then(exchange)
        else:
            exchange.hang_up()

    return answer


def sequence(*answers: Answer) -> Answer:
    """The n-th request to the route gets the n-th answer; the last one repeats."""
    if not answers:
        raise ValueError("sequence: give at least one answer")
    return lambda exchange: answers[min(exchange.n, len(answers) - 1)](exchange)


def compress(data: bytes, encoding: str) -> bytes:
    """``data`` as a body with ``Content-Encoding: encoding`` (one of :data:`ENCODINGS`)."""
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        # Quality 5, not brotli's 11: as valid a body, made in a fraction of the time.
        compressed: bytes = brotli.compress(data, quality=5)
        return compressed
    raise ValueError(f"compress: unknown encoding {encoding!r}; use one of {ENCODINGS}")


def bomb(encoding: str = "gzip", size: int = 10 << 30, status: int = 200) -> Answer:
    """A complete, valid ``encoding`` body that inflates to ``size`` zero bytes (whole MiB).

    About a thousandth of ``size`` on the wire for gzip and deflate (10 GiB in ~10 MB),
    far less for br; built from one repeated segment, so serving it costs nothing.
    """
    head, segment, tail = _bomb_parts(encoding, -(-size // MiB))

    def answer(exchange: Exchange) -> None:
        count = -(-size // MiB)
        total = len(head) + len(segment) * (count - 1) + len(tail)
        exchange.head(status, {"Content-Encoding": encoding}, length=total)
        if not exchange.write(head):
            return
        batch = segment * 64
        left = count - 1
        while left > 0:
            n = min(64, left)
            if not exchange.write(batch if n == 64 else segment * n):
                return
            left -= n
        exchange.write(tail)

    return answer


@functools.cache
def _bomb_parts(encoding: str, mebibytes: int) -> tuple[bytes, bytes, bytes]:
    """``head + segment * (mebibytes - 1) + tail`` is a valid body of ``mebibytes`` MiB of zeros.

    gzip: one member per MiB (members concatenate). deflate and br: a stream flushed
    after each MiB, so every segment after the first encodes the next MiB identically;
    the tail closes the stream (deflate: with the Adler-32 of all those zeros).
    """
    zeros = bytes(MiB)
    if encoding == "gzip":
        member = gzip.compress(zeros, compresslevel=9, mtime=0)
        return member, member, b""
    if encoding == "deflate":
        c = zlib.compressobj(9)
        head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
        final = c.flush()[:-4]  # the last block, without this stream's checksum
        adler = ((mebibytes * MiB) % 65521) << 16 | 1  # Adler-32 of that many zeros
        return head, segment, final + adler.to_bytes(4, "big")
    if encoding == "br":
        b = brotli.Compressor(quality=5)
        head = b.process(zeros) + b.flush()
        segment = b.process(zeros) + b.flush()
        return head, segment, b.finish()
    raise ValueError(f"bomb: unknown encoding {encoding!r}; use one of {ENCODINGS}")
