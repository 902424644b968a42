"""Every JSON answer the client reads is capped by ``[digime] max_answer_bytes``, decoded.

Against the sandbox (real answers, both API profiles) and a hostile server (bombs).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from privateshare import PrivateShare
from privateshare.errors import ConfigError, ResponseTooLarge, ServerError
from privateshare.flow import Flow, client_for
from privateshare.sandbox import Sandbox
from privateshare.testing.hostile import HostileServer, bomb
from privateshare.testing.sandboxed import consent, sandbox_framework

MiB = 1 << 20


@pytest.fixture(params=["v1.7", "v1.5"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer(lifetime=120) as server:
        yield server


def test_a_json_answer_over_the_cap_names_the_answer_and_the_option(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = privateshare_sandbox()
    fw = sandbox_framework(sandbox, tmp_path, api=api, digime={"max_answer_bytes": 64})
    with pytest.raises(ResponseTooLarge) as info:
        Flow(fw).client.authorize()
    message = str(info.value)
    first_call = "POST permission-access/session" if api == "v1.5" else "POST oauth/authorize"
    assert message.startswith(f"{first_call}: the answer is larger than 64 bytes")
    assert "raise [digime] max_answer_bytes" in message


def test_the_file_list_is_capped(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    sandbox = privateshare_sandbox(files=20)
    token, session = consent(Flow(sandbox_framework(sandbox, tmp_path, api=api)), "alice")
    # Under the default cap the list is read whole: a real answer, well over 512 bytes.
    full = Flow(sandbox_framework(sandbox, tmp_path / "full", api=api))
    assert len(full.client.file_list(session.key, token).file_list or []) >= 20
    capped = sandbox_framework(
        sandbox, tmp_path / "capped", api=api, digime={"max_answer_bytes": 512}
    )
    with pytest.raises(ResponseTooLarge, match=r"^the file list: .* 512 bytes"):
        Flow(capped).client.file_list(session.key, token)


def hostile_framework(
    privateshare_factory: Callable[..., PrivateShare], server: HostileServer, cap: int
) -> PrivateShare:
    return privateshare_factory(
        f'[digime]\nbase_url = "{server.url}/v1.7/"\nmax_answer_bytes = {cap}\n'
    )


def test_a_jwks_bomb_ends_in_a_clear_error_at_flat_memory(
    privateshare_factory: Callable[..., PrivateShare], hostile: HostileServer
) -> None:
    jku = hostile.route("/v1.7/jwks", bomb("gzip", 10 << 30))
    client = client_for(hostile_framework(privateshare_factory, hostile, MiB))
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge) as info:
            client.verifier.jwks.key(jku, "any")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith("the JWKS: the answer is larger than 1048576 bytes")
    assert peak < 8 * MiB


@pytest.mark.parametrize("path", ["/v1.7/jwks", "/v1.7/permission-access/sample/datasets/7"])
def test_an_error_answer_is_read_only_so_far(
    privateshare_factory: Callable[..., PrivateShare], hostile: HostileServer, path: str
) -> None:
    # A 500 whose body inflates to 10 GiB: the status is reported, the body barely read.
    hostile.route(path, bomb("gzip", 10 << 30, status=500))
    client = client_for(hostile_framework(privateshare_factory, hostile, 256 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(ServerError) as info:
            if path.endswith("jwks"):
                client.verifier.jwks.key(hostile.url + path, "any")
            else:
                client.sample_datasets(7)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status_code == 500
    assert peak < 8 * MiB


def test_max_answer_bytes_must_be_positive(
    privateshare_factory: Callable[..., PrivateShare],
) -> None:
    for value in (0, -1):
        with pytest.raises(ConfigError, match=r"\[digime\] max_answer_bytes"):
            privateshare_factory(f"[digime]\nmax_answer_bytes = {value}\n")
