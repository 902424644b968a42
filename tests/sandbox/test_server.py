"""The HTTP server itself: lifecycle, routing errors, robustness and the CLI."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import requests

from privateshare.sandbox import Sandbox, SandboxSettings

from .conftest import RawClient
from .test_oauth import assert_error


def test_unknown_path_and_method(client: RawClient) -> None:
    r = client.http.get(client.sandbox.origin + "/nope")
    assert_error(r, 404, "NotFound")
    r = client.http.get(client.sandbox.base_url + "oauth/token")
    assert_error(r, 405, "MethodNotAllowed")


def test_garbage_never_gives_500(client: RawClient) -> None:
    tokens, session = client.onboard()
    bad_bodies = [b"{", b"[1,2]", b"\xff\xfe", b'"string"', b"null"]
    for body in bad_bodies:
        for path, claims in (
            (
                "oauth/authorize",
                {"redirect_uri": "http://127.0.0.1:8765/callback", "code_challenge": "a" * 43},
            ),
            ("permission-access/trigger", {"access_token": tokens.access}),
            ("reference", {}),
        ):
            r = client.call(
                "POST", path, claims, data=body, headers={"Content-Type": "application/json"}
            )
            assert 400 <= r.status_code < 500, (path, body, r.text)
            assert r.json()["error"]["code"]
    weird_claims = [
        {"access_token": 123},
        {"access_token": ["x"]},
        {"timestamp": "now"},
        {"nonce": 5},
        {"client_id": 7},
        {"state": {"a": 1}},
        {"grant_type": 9},
    ]
    for claims in weird_claims:
        for method, path in (
            ("POST", "oauth/token"),
            ("GET", "permission-access/accounts"),
            ("POST", "oauth/authorize"),
            ("GET", f"permission-access/query/{session['key']}"),
        ):
            r = client.call(method, path, claims)
            assert 400 <= r.status_code < 500, (claims, path, r.text)
            assert r.headers["X-Error-Code"]


def test_keep_alive_reuses_connection(client: RawClient) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", client.sandbox.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for _ in range(5):
        conn.request("GET", "/v1.7/jwks/oauth")
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        assert conn.sock is sock  # the same connection served all five
    conn.close()


def test_port_zero_start_stop_and_reuse_of_state(tmp_path: Path, key_cache: Path) -> None:
    state_dir = tmp_path / "state"
    sb = Sandbox(SandboxSettings.instant(), state_dir=state_dir, key_cache=key_cache)
    with sb:
        port = sb.port
        assert sb.base_url == f"http://127.0.0.1:{port}/v1.7/"
        assert sb.onboard_url == f"http://127.0.0.1:{port}/apps/saas/"
        conn = socket.create_connection(("127.0.0.1", port))  # an idle keep-alive client
        app_id = sb.application_id
    # Stopping closed the idle connection (rather than waiting for it) and the port.
    conn.settimeout(30)  # a hang guard only
    with contextlib.suppress(ConnectionResetError):
        assert conn.recv(1) == b""
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=30)
    with Sandbox(SandboxSettings.instant(), state_dir=state_dir) as again:
        assert again.application_id == app_id  # loaded, not regenerated


def test_temporary_state_dir_is_removed() -> None:
    sb = Sandbox(SandboxSettings.instant(files=2)).start()
    directory = sb.state_dir
    assert (directory / "privateshare.toml").exists()
    sb.stop()
    assert not directory.exists()


def test_client_configs(sandbox: Sandbox) -> None:
    for name, filename in (
        ("ongoing", "privateshare.toml"),
        ("oneoff", "privateshare-oneoff.toml"),
    ):
        path = sandbox.config_path(name)
        assert path.name == filename
        config = tomllib.loads(path.read_text())
        assert config["digime"] == {
            "application_id": sandbox.application_id,
            "contract_id": sandbox.contract(name).contract_id,
            "base_url": sandbox.base_url,
            "onboard_url": sandbox.onboard_url,
            "redirect_uri": "http://127.0.0.1:8765/callback",
        }
        assert config["keys"] == {"type": "file", "path": f"{name}.pem"}
        assert config["tokens"] == {"type": "file", "path": "tokens"}
        assert config["sinks"] == {"local": {"type": "file", "root": "data"}}
        key = path.parent / config["keys"]["path"]
        assert key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
        assert os.stat(key).st_mode & 0o777 == 0o600


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="error_rate"):
        SandboxSettings(error_rate=2)
    with pytest.raises(ValueError, match="unknown fault endpoint"):
        SandboxSettings(fault_endpoints=frozenset({"nope"}))


def test_consent_page_share_and_cancel(make_sandbox) -> None:
    sb = make_sandbox(auto_consent=False)
    c = RawClient(sb)
    auth = c.authorize()
    page = c.http.get(sb.onboard_url + "authorize", params={"code": auth["code"]})
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert sb.contract().contract_id in page.text
    assert sb.library.accounts[0]["id"] in page.text
    assert 'value="share"' in page.text and 'value="cancel"' in page.text
    r = c.http.post(
        sb.onboard_url + "consent",
        data={"code": auth["code"], "page": "authorize", "decision": "cancel"},
        allow_redirects=False,
    )
    assert r.status_code == 302
    assert "success=false" in r.headers["Location"]
    assert "errorCode=USER_CANCEL" in r.headers["Location"]
    auth = c.authorize()
    r = c.http.post(
        sb.onboard_url + "consent",
        data={"code": auth["code"], "page": "authorize", "decision": "share"},
        allow_redirects=False,
    )
    assert "success=true" in r.headers["Location"] and "code=" in r.headers["Location"]


def test_cli_reuses_cached_keys_and_prints_urls(tmp_path: Path, key_cache: Path) -> None:
    # A start with keys in --dir uses them (how fast: benchmarks/sandbox.py --startup).
    keys = {}
    for f in key_cache.glob("*.pem"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
        os.chmod(tmp_path / f.name, 0o600)
        keys[f.name] = f.read_bytes()
    assert keys
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "privateshare.sandbox",
            "--port",
            "0",
            "--dir",
            str(tmp_path),
            "--files",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        output = "".join(lines)
        base = next(x.split()[-1] for x in lines if "base URL" in x)
        assert requests.get(base + "jwks/oauth", timeout=30).status_code == 200
        assert str(tmp_path / "privateshare.toml") in output
        assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pem")} == keys
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_sandbox_command_is_a_click_command() -> None:
    import click

    from privateshare.sandbox.command import sandbox_command

    assert isinstance(sandbox_command, click.Command)
    names = {p.name for p in sandbox_command.params}
    assert {"port", "host", "state_dir", "seed", "files", "auto_consent", "error_rate"} <= names


# -- request bodies: chunked, and the size cap -------------------------------------------


def raw_exchange(sb: Sandbox, head: str, body: bytes = b"", *, then: bytes = b"") -> bytes:
    """Send one request's bytes (plus ``then``) on a fresh socket; all the server sends back.

    The answer is read while the bytes are still being sent: a server that refuses a body
    answers and closes before it has all of it, and a reset of the rest must not lose that
    answer (nor fail the send).
    """
    received: list[bytes] = []
    with socket.create_connection(("127.0.0.1", sb.port), timeout=30) as conn:

        def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    received.append(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        with contextlib.suppress(OSError):  # refused early: the rest cannot be sent
            conn.sendall(head.encode("latin-1") + body + then)
            conn.shutdown(socket.SHUT_WR)
        reader.join(30)
    return b"".join(received)


def discovery_head(client: RawClient, extra: str) -> str:
    bearer = client.sign({})
    return (
        f"POST /v1.7/discovery/sources HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )


def test_chunked_request_body_is_read(client: RawClient) -> None:
    # requests sends a generator body chunked, with no Content-Length.
    chunks = iter([b'{"li', b'mit": 3, "of', b'fset": 1}'])
    r = client.call("POST", "discovery/sources", {}, data=chunks)
    assert r.status_code == 200, r.text
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert (r.json()["limit"], r.json()["offset"], len(r.json()["data"])) == (3, 1, 3)
    # Chunk extensions and trailer fields are allowed; the connection stays usable.
    body = b'7;note=x\r\n{"limit\r\nA\r\n": 2}     \r\n0\r\nX-Checksum: 1\r\n\r\n'
    second = discovery_head(client, "Content-Length: 0\r\n")
    answer = raw_exchange(
        client.sandbox,
        discovery_head(client, "Transfer-Encoding: chunked\r\n"),
        body,
        then=second.encode(),
    )
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b'"limit":2' in rest
    assert rest.count(b"HTTP/1.1 200") == 1  # the second request was answered too


def test_chunked_and_content_length_together_chunked_wins(client: RawClient) -> None:
    body = b'c\r\n{"limit": 4}\r\n0\r\n\r\n'
    head = discovery_head(client, "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n")
    answer = raw_exchange(client.sandbox, head, body)
    assert answer.startswith(b"HTTP/1.1 200") and b'"limit":4' in answer
    assert b"Connection: close" in answer.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # not hexadecimal
        b"-2\r\n{}\r\n0\r\n\r\n",  # signed
        b"1_0\r\n{}\r\n0\r\n\r\n",  # Python would read this as 16
        b"5\r\n{}\r\n0\r\n\r\n",  # shorter than announced
        b"2\r\n{}XX0\r\n\r\n",  # no CRLF after the data
        b"2\r\n{}\r\n",  # no last chunk
        b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n",  # trailer section never ends
    ],
)
def test_malformed_chunked_body_is_a_400(client: RawClient, body: bytes) -> None:
    head = discovery_head(client, "Transfer-Encoding: chunked\r\n")
    answer = raw_exchange(client.sandbox, head, body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Malformed chunked request body" in answer
    assert b"Connection: close" in answer


def test_other_transfer_codings_are_refused(client: RawClient) -> None:
    head = discovery_head(client, "Transfer-Encoding: gzip, chunked\r\n")
    answer = raw_exchange(client.sandbox, head, b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501") and b"NotImplemented" in answer


def test_request_bodies_are_capped(client: RawClient) -> None:
    from privateshare.sandbox.server import MAX_REQUEST_BODY

    sb = client.sandbox
    # Announced too large: refused before the body is read.
    head = discovery_head(client, f"Content-Length: {MAX_REQUEST_BODY + 1}\r\n")
    answer = raw_exchange(sb, head, b"{}")
    assert answer.startswith(b"HTTP/1.1 413") and b"PayloadTooLarge" in answer
    # Chunked past the cap: refused as soon as the total passes it, connection closed.
    piece = b"x" * (256 << 10)
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    head = discovery_head(client, "Transfer-Encoding: chunked\r\n")
    answer = raw_exchange(sb, head, chunk * 5 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"Connection: close" in answer
    # Exactly at the cap is fine (the JSON is then wrong, which is a 400, not a 413).
    r = client.call("POST", "discovery/sources", {}, data=iter([b" " * MAX_REQUEST_BODY]))
    assert r.status_code == 200, r.text  # an all-blank body is an empty one
