"""The requests transport against a real local HTTP(S) server."""

from __future__ import annotations

import datetime
import itertools
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from privateshare.errors import ConfigError, TransportError
from privateshare.plugin import PluginContext
from privateshare.plugins.transport_requests import RequestsOptions, RequestsTransport
from privateshare.transport import HttpRequest

Script = Callable[[BaseHTTPRequestHandler, int], None]


class Server:
    """A local server whose answers follow a script: ``script(handler, attempt)``."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.auth: list[str] = []
        self.methods: list[str] = []
        counter = itertools.count()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.auth.append(self.headers.get("Authorization", ""))
                outer.methods.append(self.command)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.script(self, next(counter))

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(script: Script, tls: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(script, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"ok",
    headers: dict[str, str] | None = None,
    length: int | None = None,
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


def transport(tmp_path: Path, **options: object) -> RequestsTransport:
    defaults: dict[str, object] = {"backoff": 0.01, "read_timeout": 5.0}
    defaults.update(options)
    return RequestsTransport(
        RequestsOptions(**defaults),  # type: ignore[arg-type]
        PluginContext(name="transport", base_dir=tmp_path),
    )


def signed(url: str, method: str = "GET", **kw: object) -> HttpRequest:
    counter = itertools.count()
    return HttpRequest(method, url, authorize=lambda: f"Bearer attempt-{next(counter)}", **kw)  # type: ignore[arg-type]


def test_retries_5xx_with_a_fresh_signature_each_attempt(serve, tmp_path: Path) -> None:
    server = serve(lambda h, n: reply(h, 503 if n < 2 else 200, b"done"))
    response = transport(tmp_path).privateshare_transport_send(signed(server.url + "/x"))
    assert (response.status_code, response.read()) == (200, b"done")
    assert server.auth == ["Bearer attempt-0", "Bearer attempt-1", "Bearer attempt-2"]


def test_gives_up_after_the_configured_retries(serve, tmp_path: Path) -> None:
    server = serve(lambda h, n: reply(h, 500, b'{"error":{}}'))
    response = transport(tmp_path, retries=1).privateshare_transport_send(signed(server.url))
    assert response.status_code == 500
    assert len(server.auth) == 2


def test_post_is_not_retried(serve, tmp_path: Path) -> None:
    server = serve(lambda h, n: reply(h, 503))
    response = transport(tmp_path).privateshare_transport_send(
        signed(server.url, "POST", json={"a": 1})
    )
    assert response.status_code == 503
    assert server.methods == ["POST"]


def test_retry_after_is_obeyed(serve, tmp_path: Path) -> None:
    server = serve(
        lambda h, n: reply(h, 429, headers={"Retry-After": "0.4"}) if n == 0 else reply(h, 200)
    )
    started = time.monotonic()
    response = transport(tmp_path).privateshare_transport_send(signed(server.url))
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4


def test_413_without_retry_after_is_not_retried(serve, tmp_path: Path) -> None:
    server = serve(lambda h, n: reply(h, 413))
    assert transport(tmp_path).privateshare_transport_send(signed(server.url)).status_code == 413
    assert len(server.auth) == 1


def test_connection_refused_is_a_clear_transport_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError) as info:
        transport(tmp_path, retries=1).privateshare_transport_send(
            signed(f"http://127.0.0.1:{port}/v1.7/x")
        )
    assert f"GET http://127.0.0.1:{port} failed after 2 attempt(s)" in str(info.value)


def test_read_timeout(serve, tmp_path: Path) -> None:
    server = serve(lambda h, n: (time.sleep(1.0), reply(h, 200)))
    with pytest.raises(TransportError, match="failed after 1 attempt"):
        transport(tmp_path, read_timeout=0.2, retries=0).privateshare_transport_send(
            signed(server.url)
        )


def test_body_cut_short_raises_transport_error(serve, tmp_path: Path) -> None:
    def cut(handler: BaseHTTPRequestHandler, n: int) -> None:
        reply(handler, 200, b"x" * 1000, length=5000)
        handler.close_connection = True

    server = serve(cut)
    send = transport(tmp_path).privateshare_transport_send
    response = send(signed(server.url + "/v1.7/permission-access/query/SECRETKEY/f", stream=True))
    with pytest.raises(TransportError) as info:
        while response.stream().read(4096):
            pass
    assert "cut short" in str(info.value)
    assert "SECRETKEY" not in str(info.value)  # session keys stay out of messages
    response = send(signed(server.url, stream=True))
    with pytest.raises(TransportError):
        b"".join(response.iter_bytes(100))


def make_ca(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return cert_path, context


def test_tls_is_verified_and_a_private_ca_can_be_trusted(serve, tmp_path: Path) -> None:
    ca, context = make_ca(tmp_path)
    server = serve(lambda h, n: reply(h, 200, b"secure"), tls=context)
    with pytest.raises(TransportError) as info:
        transport(tmp_path, retries=0).privateshare_transport_send(signed(server.url))
    assert "TLS verification failed" in str(info.value) and "ca_bundle" in str(info.value)
    trusted = transport(tmp_path, ca_bundle=ca.name)
    assert trusted.privateshare_transport_send(signed(server.url)).read() == b"secure"


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca_bundle"):
        transport(tmp_path, ca_bundle="nope.pem")
