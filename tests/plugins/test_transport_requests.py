"""The requests and urllib3 transports against a real local HTTP(S) server.

The urllib3 transport shares the requests transport's policies and replaces only how a
request is built and sent, so every test here (the conformance suite included) runs for
both: ``transport_kind`` parametrizes the module.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
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

from privateshare.errors import ConfigError, ResponseTooLarge, TransportError
from privateshare.hooks import PluginContext
from privateshare.plugins.transport_requests import RequestsOptions, RequestsTransport
from privateshare.plugins.transport_urllib3 import Urllib3Transport
from privateshare.testing.conformance import READ_PATHS, TransportConformance, read_body
from privateshare.testing.hostile import (
    Answer,
    Exchange,
    HostileServer,
    cut_short,
    redirect,
    respond,
    sequence,
    trickle,
)
from privateshare.transport import HttpRequest, origin

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


TRANSPORTS: dict[str, type[RequestsTransport]] = {
    "requests": RequestsTransport,
    "urllib3": Urllib3Transport,
}
_kind = ["requests"]


@pytest.fixture(autouse=True, params=sorted(TRANSPORTS))
def transport_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of this module runs with each transport (``transport()`` builds it)."""
    _kind[0] = request.param
    yield request.param
    _kind[0] = "requests"


def transport(tmp_path: Path, **options: object) -> RequestsTransport:
    defaults: dict[str, object] = {"backoff": 0.01, "read_timeout": 5.0}
    defaults.update(options)
    return TRANSPORTS[_kind[0]](
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
    assert f"GET http://127.0.0.1:{port}/v1.7/x failed after 2 attempt(s)" in str(info.value)


def test_errors_quoting_a_url_leave_the_session_key_out(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:pw@127.0.0.1:{port}/v1.7/permission-access/query/SECRETKEY/f.json"
    with pytest.raises(TransportError) as info:
        transport(tmp_path, retries=0).privateshare_transport_send(signed(url))
    message = str(info.value)
    assert "query/…/f.json" in message  # requests quotes the path: the key is elided
    assert "SECRETKEY" not in message and "pw" not in message


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
    with (
        pytest.warns(DeprecationWarning, match="iter_bytes"),
        pytest.raises(TransportError),
    ):
        b"".join(response.iter_bytes(100))  # deprecated, still kept by this transport


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


# --- the transport contract, and what the requests transport adds ---------------------


class TestRequestsTransport(TransportConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[RequestsTransport]:
        built = transport(tmp_path, read_timeout=10.0)
        yield built
        built.close()


class TestRequestsTransportReadingAhead(TransportConformance):
    """The whole contract again with every streamed body of more than 2 bytes read ahead."""

    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[RequestsTransport]:
        built = transport(tmp_path, read_timeout=10.0, read_ahead=1)
        yield built
        built.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    servers: list[HostileServer] = []

    def start(routes: dict[str, Answer] | None = None) -> HostileServer:
        servers.append(HostileServer(routes, lifetime=120))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_origins_are_compared_normalised() -> None:
    same = [
        ("https://api.digi.me/v1.7/", "HTTPS://API.digi.me:443/x"),
        ("http://example.com/a", "http://example.com:80/b?c"),
        ("https://user:pw@example.com/", "https://example.com"),
        ("http://[::A]/", "http://[::a]:80/x"),
    ]
    for a, b in same:
        assert origin(a) == origin(b) is not None, (a, b)
    assert origin("https://api.digi.me/") == "https://api.digi.me:443"
    different = [
        ("https://api.digi.me/", "http://api.digi.me/"),
        ("https://api.digi.me/", "https://api.digi.me:8443/"),
        ("https://api.digi.me/", "https://api.digi.me.evil.example/"),
        ("https://api.digi.me/", "https://evil.example/@api.digi.me"),
    ]
    for a, b in different:
        assert origin(a) != origin(b), (a, b)
    for bad in ("http://host:99999/", "http://host:port/", "/relative", "mailto:x@y", ""):
        assert origin(bad) is None, bad


@pytest.mark.parametrize("how", READ_PATHS)
def test_a_trickling_body_ends_by_the_minimum_rate(
    hostile: Callable[..., HostileServer], tmp_path: Path, how: str
) -> None:
    # 20 bytes/s for a minute, no deadline: only the minimum rate can end it.
    server = hostile({"/v1/slow": trickle(1200, every=0.05)})
    send = transport(tmp_path, low_speed_limit=1000, low_speed_time=0.3).privateshare_transport_send
    with pytest.raises(TransportError) as info:
        read_body(send(HttpRequest("GET", server.url + "/v1/slow", stream=how == "stream")), how)
    message = str(info.value)
    assert "slower than 1000 bytes/s for 0.3s" in message
    assert "[transport] low_speed_limit, low_speed_time" in message


def stalls_after(sent: int, declared: int) -> Answer:
    def answer(exchange: Exchange) -> None:
        exchange.head(200, length=declared)
        exchange.write(b"x" * sent)
        exchange.sleep(60)
        exchange.hang_up()

    return answer


def test_a_stalled_body_ends_by_low_speed_time_or_read_timeout(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    server = hostile({"/v1/stall": stalls_after(100, 1000)})
    url = server.url + "/v1/stall"
    slow = transport(tmp_path, low_speed_time=0.3).privateshare_transport_send
    with pytest.raises(TransportError, match=r"low_speed_limit, low_speed_time"):
        slow(HttpRequest("GET", url)).read()
    unchecked = transport(tmp_path, low_speed_limit=0, read_timeout=0.3)
    with pytest.raises(TransportError, match=r"no bytes of the body for 0.3s .*read_timeout"):
        read_body(unchecked.privateshare_transport_send(HttpRequest("GET", url)), "stream")


def test_a_slow_reader_is_not_mistaken_for_a_slow_server(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    # The server sends at once; the reader pauses longer than low_speed_time between
    # reads. Only time spent waiting for the server counts against the rate.
    body = bytes(range(256)) * 1024
    server = hostile({"/v1/file": respond(body)})
    fast = transport(tmp_path, low_speed_limit=10_000_000, low_speed_time=0.2)
    stream = fast.privateshare_transport_send(HttpRequest("GET", server.url + "/v1/file")).stream()
    got = bytearray()
    while part := stream.read(64 << 10):
        got += part
        time.sleep(0.25)
    assert got == body


def test_a_declared_length_over_the_limit_is_refused_before_reading(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    # The body never comes: reading it would end by read_timeout, not ResponseTooLarge.
    server = hostile({"/v1/huge": stalls_after(10, 10 << 30)})
    response = transport(tmp_path).privateshare_transport_send(
        HttpRequest("GET", server.url + "/v1/huge")
    )
    with pytest.raises(ResponseTooLarge, match="larger than 1000 bytes; it was not read further"):
        response.read(limit=1000)


def test_a_corrupt_content_encoding_is_a_clear_error(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    broken = respond(b"\x1f\x8b" + b"not gzip at all" * 10, headers={"Content-Encoding": "gzip"})
    server = hostile({"/v1/broken": broken})
    response = transport(tmp_path).privateshare_transport_send(
        HttpRequest("GET", server.url + "/v1/broken")
    )
    with pytest.raises(TransportError, match=r"could not be decoded \(Content-Encoding gzip\)"):
        response.read(limit=1 << 20)


def test_a_cut_on_a_block_boundary_fails_the_download_stream(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    # What the decryptor reads: whole 16-byte blocks, the last ones missing.
    body = bytes(range(256)) * 64
    server = hostile({"/v1/file": cut_short(body[:8192], declared=len(body))})
    stream = (
        transport(tmp_path)
        .privateshare_transport_send(HttpRequest("GET", server.url + "/v1/file", stream=True))
        .stream()
    )
    got = bytearray()
    with pytest.raises(TransportError, match="was cut short"):
        while part := stream.read(4096):
            got += part
    assert bytes(got) == body[:8192]  # everything that came, and then the error


def test_retries_are_logged_with_the_route_and_no_session_key(
    hostile: Callable[..., HostileServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = "/v1.7/permission-access/query/SECRETKEY/posts.json"
    server = hostile({path: sequence(respond(b"", 503), respond(b"ok"))})
    with caplog.at_level(logging.INFO, logger="privateshare.plugins.transport_requests"):
        response = transport(tmp_path).privateshare_transport_send(signed(server.url + path))
        assert response.read() == b"ok"
    (record,) = [r for r in caplog.records if "retrying" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert message.startswith(
        f"retrying GET {server.url}/v1.7/permission-access/query/…/posts.json (attempt 2 of 3)"
    )
    assert message.endswith("after HTTP 503")
    assert "SECRETKEY" not in caplog.text


def test_a_retry_that_cannot_start_before_the_deadline_is_not_made(
    hostile: Callable[..., HostileServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = hostile({"/v1/busy": respond(b"", 503, {"Retry-After": "30"})})
    request = HttpRequest("GET", server.url + "/v1/busy", deadline=time.monotonic() + 5)
    with caplog.at_level(logging.INFO, logger="privateshare.plugins.transport_requests"):
        response = transport(tmp_path).privateshare_transport_send(request)
    assert response.status_code == 503  # the caller maps it, as after the last retry
    assert len(server.requests) == 1
    assert "not retrying GET" in caplog.text and "past the request's deadline" in caplog.text


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("connect_timeout", 0),
        ("read_timeout", -1.0),
        ("read_timeout", float("inf")),
        ("retries", -1),
        ("backoff", -0.5),
        ("max_retry_after", -1),
        ("pool_size", 0),
        ("low_speed_limit", -1),
        ("low_speed_time", 0),
    ],
)
def test_options_are_range_checked_where_they_are_decoded(
    privateshare_factory: Callable[..., object], option: str, value: float
) -> None:
    with pytest.raises(ConfigError) as info:
        privateshare_factory(f'[transport]\ntype = "requests"\n{option} = {value!r}\n')
    assert f"[transport] {option}:" in str(info.value)


def test_unusable_urls_are_clear_errors(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    server = hostile({"/v1/odd": redirect("http://[not-an-ip/x"), "/v1/mail": redirect("mailto:x")})
    send = transport(tmp_path).privateshare_transport_send
    for path in ("/v1/odd", "/v1/mail"):
        with pytest.raises(TransportError, match="redirected to a URL that is not valid"):
            send(signed(server.url + path))
    with pytest.raises(TransportError, match=r"the URL is not a valid http\(s\) URL"):
        send(signed("not a url"))


# --- read-ahead of large bodies ----------------------------------------------------------


def test_a_large_body_is_read_ahead_in_order(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    body = os.urandom(3 << 20) + b"tail"
    server = hostile({"/v1/file": respond(body)})
    response = transport(tmp_path, read_ahead=1 << 20).privateshare_transport_send(
        HttpRequest("GET", server.url + "/v1/file", stream=True)
    )
    stream = response.stream()
    assert response._ahead is not None  # over twice read_ahead: a reader thread
    got = bytearray()
    while part := stream.read(100_000):
        got += part
    assert got == body
    response.close()
    assert not response._ahead._thread.is_alive()


def test_a_small_body_is_not_read_ahead(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    server = hostile({"/v1/file": respond(b"x" * 5000)})
    response = transport(tmp_path, read_ahead=4096).privateshare_transport_send(
        HttpRequest("GET", server.url + "/v1/file", stream=True)
    )
    assert response.stream().read() == b"x" * 5000
    assert response._ahead is None
    response.close()


def test_a_read_ahead_body_cut_short_fails_after_what_came(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    body = os.urandom(3 << 20)
    server = hostile({"/v1/file": cut_short(body[: 2 << 20], declared=len(body))})
    stream = (
        transport(tmp_path, read_ahead=1 << 20)
        .privateshare_transport_send(HttpRequest("GET", server.url + "/v1/file", stream=True))
        .stream()
    )
    got = bytearray()
    with pytest.raises(TransportError, match="was cut short"):
        while part := stream.read(65536):
            got += part
    assert bytes(got) == body[: 2 << 20]


def test_a_read_ahead_body_that_stalls_ends_by_the_minimum_rate(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    server = hostile({"/v1/stall": stalls_after(100, 10 << 20)})
    slow = transport(tmp_path, low_speed_time=0.3, read_ahead=1 << 20)
    response = slow.privateshare_transport_send(HttpRequest("GET", server.url + "/v1/stall"))
    with pytest.raises(TransportError, match=r"low_speed_limit, low_speed_time"):
        response.stream().read()


def test_closing_a_stalled_read_ahead_body_wakes_its_reader(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    # The reader thread is blocked in the socket (the server sends nothing for 60 s, and
    # read_timeout and the minimum rate wait longer still): close() must not wait for it.
    server = hostile({"/v1/stall": stalls_after(100, 10 << 20)})
    patient = transport(tmp_path, low_speed_limit=0, read_timeout=600, read_ahead=1 << 20)
    response = patient.privateshare_transport_send(HttpRequest("GET", server.url + "/v1/stall"))
    stream = response.stream()
    ahead = response._ahead
    assert ahead is not None
    ahead._thread.join(0.2)  # the reader takes the 100 bytes and blocks for more
    assert ahead._thread.is_alive() and ahead._pieces.empty()
    response.close()
    assert not ahead._thread.is_alive()
    del stream


def test_a_slow_consumer_of_a_read_ahead_body_is_not_a_slow_server(
    hostile: Callable[..., HostileServer], tmp_path: Path
) -> None:
    body = os.urandom(3 << 20)
    server = hostile({"/v1/file": respond(body)})
    fast = transport(tmp_path, low_speed_limit=10_000_000, low_speed_time=0.2, read_ahead=1 << 20)
    stream = fast.privateshare_transport_send(HttpRequest("GET", server.url + "/v1/file")).stream()
    got = bytearray()
    while part := stream.read(1 << 20):
        got += part
        time.sleep(0.25)
    assert got == body


# --- the urllib3 transport sends what the requests transport sends ------------------------


def test_both_transports_send_the_same_request(serve, tmp_path: Path) -> None:
    seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

    def record(handler: BaseHTTPRequestHandler, n: int) -> None:
        reply(handler, 200, b"{}")

    server = serve(record)
    original = server.script

    def keep(handler: BaseHTTPRequestHandler, n: int) -> None:
        seen.append((handler.command, handler.path, sorted(handler.headers.items()), b""))
        original(handler, n)

    server.script = keep
    for kind in sorted(TRANSPORTS):
        built = TRANSPORTS[kind](
            RequestsOptions(user_agent="ua/1"), PluginContext(name="transport", base_dir=tmp_path)
        )
        for request in (
            HttpRequest("GET", server.url + "/v1.7/a?b=c", authorize=lambda: "Bearer x"),
            HttpRequest("POST", server.url + "/v1.7/p", json={"k": [1, "é"]}),
            HttpRequest("POST", server.url + "/v1.7/empty", headers={"X-Extra": "1"}),
        ):
            with built.privateshare_transport_send(request) as response:
                assert response.read() == b"{}"
        built.close()
    assert len(seen) == 6
    assert seen[:3] == seen[3:]  # method, path and every header alike
    assert ("User-Agent", "ua/1") in seen[0][2] and ("Authorization", "Bearer x") in seen[0][2]
    assert ("Content-Type", "application/json") in seen[1][2]
    assert ("Content-Length", "0") in seen[2][2]


def test_user_info_in_the_url_is_sent_as_basic_auth_not_in_the_request_line(
    serve, tmp_path: Path
) -> None:
    lines: list[tuple[str, str]] = []

    def keep(handler: BaseHTTPRequestHandler, n: int) -> None:
        lines.append((handler.path, handler.headers.get("Authorization", "")))
        reply(handler, 200)

    server = serve(keep)
    url = server.url.replace("http://", "http://us%40er:p%3Aw@") + "/x"
    assert transport(tmp_path).privateshare_transport_send(HttpRequest("GET", url)).read() == b"ok"
    assert lines == [("/x", "Basic dXNAZXI6cDp3")]  # base64 of "us@er:p:w"
