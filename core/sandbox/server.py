"""HTTP plumbing and the :class:`Sandbox` handle that starts and stops it.

A stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive: one thread
per connection, so concurrent downloads are served concurrently. Bodies are
streamed chunk by chunk; truncation and corruption faults are applied here,
on the bytes as they leave.
"""

from __future__ import annotations

import contextlib
import re
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .api_v15 import APP_PREFIX, GUEST_PAGE, V15_PREFIX, ApiV15
from .api_v17 import ApiV17
from .errors import ApiError
from .hostile import harden
from .library import Library, generate_library
from .messages import Request, Response, error_response
from .registry import Contract, Registry, config_key, load_or_create, write_client_configs
from .routing import API_PREFIX, ONBOARD_PREFIX, App
from .settings import SandboxSettings

MAX_REQUEST_BODY = 1 << 20
MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) or a trailer field
MAX_TRAILERS = 32
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _too_large() -> ApiError:
    return ApiError(
        413, "PayloadTooLarge", f"Request bodies are limited to {MAX_REQUEST_BODY} bytes"
    )


def _bad_chunk(detail: str) -> ApiError:
    return ApiError(400, "ValidationErrors", f"Malformed chunked request body: {detail}")


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that :meth:`close_all` can end keep-alive sockets."""

    daemon_threads = True
    request_queue_size = 256  # many clients connect at once; a short backlog drops SYNs
    allow_reuse_address = True
    app: App
    verbose: bool

    def __init__(self, address: tuple[str, int]) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client dropping its connection is normal here (faults, killed pulls): no traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "privateshare-sandbox"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is dropped after this
    disable_nagle_algorithm = True  # headers and body leave at once, no 40 ms delayed-ACK stall
    server: _Server
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's, absent from its stub

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"sandbox: {self.address_string()} {format % args}\n")

    def _read_body(self) -> bytes:
        """The request body: ``Content-Length`` bytes, or ``Transfer-Encoding: chunked``.

        Chunked wins over a Content-Length sent with it (RFC 9112 §6.3), and then the
        connection is closed after the answer, as a server must.
        """
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise ApiError(
                    501,
                    "NotImplemented",
                    f"Transfer-Encoding {encoding!r} is not supported; send chunked "
                    "or a Content-Length",
                )
            if self.headers.get("Content-Length") is not None:
                self.close_connection = True
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise ApiError(400, "ValidationErrors", "Content-Length is not a number") from exc
        if length < 0:
            raise ApiError(400, "ValidationErrors", "Content-Length is negative")
        if length > MAX_REQUEST_BODY:
            raise _too_large()
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise ApiError(400, "ValidationErrors", "The request body ended before Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        """Decode a chunked body (RFC 9112 §7.1), at most :data:`MAX_REQUEST_BODY` bytes."""
        body = bytearray()
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            size_text = line.split(b";", 1)[0].strip()
            if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
                raise _bad_chunk("a chunk-size line is missing, cut short or too long")
            if not _HEX.fullmatch(size_text):
                raise _bad_chunk(f"chunk size {size_text[:20]!r} is not hexadecimal")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > MAX_REQUEST_BODY:
                raise _too_large()
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                raise _bad_chunk("a chunk is shorter than its size or not followed by CRLF")
            body += chunk
        for _ in range(MAX_TRAILERS + 1):  # trailer fields, then the empty line
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            if line in (b"\r\n", b"\n"):
                return bytes(body)
            if not line or len(line) > MAX_CHUNK_LINE:
                break
        raise _bad_chunk("the trailer section is cut short or too long")

    def _read_request(self) -> Request:
        body = self._read_body()
        parts = urlsplit(self.path)
        return Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )

    def _serve(self) -> None:
        try:
            request = self._read_request()
        except ApiError as exc:
            self.close_connection = True
            self._send(error_response(exc), head=self.command == "HEAD")
            return
        response = self.server.app.handle(request)
        if response.hold and self._held_until_gone():
            return
        faults = response.faults
        if faults.latency:
            time.sleep(faults.latency)
        if faults.reset:
            self._reset()
            return
        self._send(response, head=request.method == "HEAD")

    def _held_until_gone(self) -> bool:
        """Wait (at most 120 s) for the client to close the connection; True if it did."""
        self.close_connection = True
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.1)
            if readable:
                try:
                    return not self.connection.recv(1, socket.MSG_PEEK)  # b"": it is gone
                except OSError:
                    return True
        return False

    def _reset(self) -> None:
        """Drop the connection without a response (RST where the OS allows it)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, response: Response, *, head: bool) -> None:
        faults = response.faults
        length = response.content_length
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        if faults.truncate_at is not None and not head:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        if head:
            self.end_headers()
            _close(response.body)
            return
        body = response.body
        if isinstance(body, bytes) and faults.truncate_at is None and faults.corrupt_at is None:
            # One write for headers and a small body.
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)
            try:
                self.flush_headers()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
            self.server.app.store.count("counters", "bytes_sent", len(body))
            return
        self.end_headers()
        cut = int(length * faults.truncate_at) if faults.truncate_at is not None else None
        flip = None
        if faults.corrupt_at is not None and length > response.corrupt_from:
            flip = response.corrupt_from + int((length - response.corrupt_from) * faults.corrupt_at)
            flip = min(flip, length - 1)
        sent = 0
        chunks = (body,) if isinstance(body, bytes) else body
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                if flip is not None and sent <= flip < sent + len(chunk):
                    mutable = bytearray(chunk)
                    mutable[flip - sent] ^= 0x5A
                    chunk = bytes(mutable)
                if cut is not None and sent + len(chunk) >= cut:
                    self.wfile.write(chunk[: cut - sent])
                    sent = cut
                    self._reset()
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # headers are out: all we can do is cut the body short
            self.close_connection = True
            self.server.app.store.count("error_counts", "StreamError")
            self.log_error("error while streaming %s: %r", self.path, exc)
        finally:
            _close(body)
            self.server.app.store.count("counters", "bytes_sent", sent)


def _close(body: object) -> None:
    close = getattr(body, "close", None)
    if callable(close):
        close()


class Sandbox:
    """A running digi.me API emulator on 127.0.0.1; use it as a context manager.

    ``state_dir`` keeps ids, keys and the generated ``privateshare.toml`` files
    (default: a temporary directory removed at stop). ``key_cache`` lends
    already-generated RSA keys to a fresh state directory. ``library``
    replaces the one generated from the settings.

    >>> with Sandbox(SandboxSettings.instant()) as sb:   # doctest: +SKIP
    ...     sb.base_url, sb.onboard_url, sb.ground_truth()
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        state_dir: str | Path | None = None,
        library: Library | None = None,
        key_cache: str | Path | None = None,
        verbose: bool = False,
    ) -> None:
        self.key_cache = Path(key_cache) if key_cache is not None else None
        self.settings = settings or SandboxSettings()
        self._temp_dir: Path | None = None
        if state_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="privateshare-sandbox-"))
            state_dir = self._temp_dir
        self.state_dir = Path(state_dir)
        self.verbose = verbose
        self._library = library
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._app: App | None = None
        self.config_paths: dict[str, Path] = {}

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Load or create registrations, bind the port, write client configs, serve."""
        if self._server is not None:
            raise RuntimeError("this sandbox is already running")
        s = self.settings
        registry = load_or_create(self.state_dir, s.redirect_uris, self.key_cache)
        if self._library is None:
            self._library = generate_library(
                s.seed,
                files=s.files,
                large_files=s.large_files,
                large_file_size=s.large_file_size,
                size_distribution=s.size_distribution,
                updated_fraction=s.updated_fraction,
                partial=s.partial,
            )
        self._library = harden(self._library, s)
        server = _Server((s.host, s.port))
        host = "127.0.0.1" if s.host in ("127.0.0.1", "localhost") else f"[{s.host}]"
        origin = f"http://{host}:{server.server_address[1]}"
        server.app = App(s, registry, self._library, origin, apis=(ApiV17, ApiV15))
        server.verbose = self.verbose
        self._server, self._app = server, server.app
        self.config_paths = write_client_configs(
            registry,
            self.base_url,
            self.onboard_url,
            v15_base_url=self.base_url_v15,
            app_url=self.app_url,
        )
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"privateshare-sandbox-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, remove a temporary state directory."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_all()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until interrupted (for the CLI)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    # -- what clients need ---------------------------------------------------------------
    @property
    def app(self) -> App:
        """The running application (raises if not started)."""
        if self._app is None:
            raise RuntimeError("the sandbox is not running; call start() or use `with`")
        return self._app

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() or use `with`")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.app.origin

    @property
    def base_url(self) -> str:
        """The API base, ``http://127.0.0.1:PORT/v1.7/``."""
        return self.app.origin + API_PREFIX

    @property
    def onboard_url(self) -> str:
        """The web-onboarding base, ``http://127.0.0.1:PORT/apps/saas/``."""
        return self.app.origin + ONBOARD_PREFIX

    @property
    def base_url_v15(self) -> str:
        """The API v1.5 base, ``http://127.0.0.1:PORT/v1.5`` (protocol.md#addresses)."""
        return self.app.origin + V15_PREFIX.rstrip("/")

    @property
    def app_url(self) -> str:
        """The stand-in for the digi.me app: ``{app_url}consent-access?<digime:// query>``."""
        return self.app.origin + APP_PREFIX

    @property
    def guest_url(self) -> str:
        """The v1.5 guest consent page, ``http://127.0.0.1:PORT/apps/quark/v1/direct-onboarding``."""
        return self.app.origin + GUEST_PAGE

    @property
    def jwks_url(self) -> str:
        """Where the sandbox's token-signing key is published."""
        return self.app.signer.jku

    @property
    def registry(self) -> Registry:
        """Application id, contracts and keys."""
        return self.app.registry

    @property
    def application_id(self) -> str:
        return self.app.registry.application_id

    def contract(self, name: str = "ongoing") -> Contract:
        """A contract by name: ``"ongoing"`` or ``"oneoff"``."""
        return self.app.registry.contract(name)

    def client_id(self, name: str = "ongoing") -> str:
        """``"<appId>_<contractId>"`` for a contract."""
        return self.app.registry.client_id(self.contract(name))

    def key_path(self, name: str = "ongoing") -> Path:
        """The contract's PKCS#1 private key file (for the client side)."""
        path = self.contract(name).key_path
        assert path is not None
        return path

    def config_path(self, name: str = "ongoing", api: str = "v1.7") -> Path:
        """The ready-to-use ``privateshare.toml`` for a contract and API profile."""
        try:
            return self.config_paths[config_key(name, api)]
        except KeyError:
            raise KeyError(
                f"no config for contract {name!r} and API {api!r}; contracts are "
                "'ongoing' and 'oneoff', APIs 'v1.7' and 'v1.5'"
            ) from None

    @property
    def library(self) -> Library:
        """The synthetic user library being served (without accounts the user deleted)."""
        if self._app is not None:
            return self._app.library
        if self._library is None:
            raise RuntimeError("the library is made at start()")
        return self._library

    def ground_truth(self) -> dict[str, str]:
        """File name -> SHA-256 of the final (decompressed) plaintext."""
        return self.app.ground_truth()

    def stats(self) -> dict[str, Any]:
        """Counters: requests per endpoint, refresh calls, errors, faults, bytes sent."""
        return self.app.store.stats()

    def fault_log(self) -> list[dict[str, Any]]:
        """Each faulted answer: ``{kind, resource, attempt, faults}``, oldest first."""
        return self.app.store.faults()
