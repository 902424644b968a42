"""A one-shot HTTP server on the redirect URI that waits for the consent callback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError, PrivateShareError

PAGE = (
    "<!doctype html><meta charset=utf-8><title>privateshare</title>"
    "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1>"
    "<p>You can close this window and return to the terminal.</p></body>"
)


class CallbackTimeout(PrivateShareError):
    """No callback arrived in time."""


class CallbackServer:
    """Listens on the redirect URI's host and port for exactly one callback."""

    def __init__(self, redirect_uri: str) -> None:
        parts = urlsplit(redirect_uri)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(
                f"[digime] redirect_uri {redirect_uri!r}: `privateshare authorize` can only "
                "receive the callback on an http://127.0.0.1:PORT/... address; use one that is "
                "on your contract's allow-list, or handle the callback in your own web app"
            )
        self.path = parts.path or "/"
        self.params: dict[str, str] | None = None
        self._done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != outer.path or outer._done.is_set():
                    self.send_error(404)
                    return
                outer.params = dict(parse_qsl(url.query, keep_blank_values=True))
                ok = (
                    outer.params.get("success") == "true" or outer.params.get("result") == "SUCCESS"
                )
                body = PAGE.format(title="Consent received" if ok else "Consent not given")
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                outer._done.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the callback carries a code: keep it out of logs

        host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
        try:
            self._server = HTTPServer((host, parts.port or 80), Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{parts.port} for the consent callback "
                f"({exc.strerror}); stop what uses that port or change [digime] redirect_uri"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CallbackServer:
        self._thread.start()
        return self

    def wait(self, timeout: float) -> dict[str, str]:
        if not self._done.wait(timeout):
            raise CallbackTimeout(
                f"no consent callback arrived within {timeout:.0f}s; run the command again"
            )
        assert self.params is not None
        return self.params

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
