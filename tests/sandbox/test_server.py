"""The HTTP server itself: lifecycle, routing errors, robustness and the CLI."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
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
