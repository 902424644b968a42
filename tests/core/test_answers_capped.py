"""Every JSON answer the client reads is capped by ``[digime] max_answer_bytes``, decoded.

Against the sandbox (real answers, both API profiles) and a hostile server (bombs).
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli
import pytest

from privateshare import PrivateShare
from privateshare.errors import ConfigError, ResponseTooLarge, ServerError
from privateshare.flow import Flow, client_for
from privateshare.models import Token, UserAccessToken
from privateshare.sandbox import Sandbox
from privateshare.testing.hostile import Answer, Exchange, HostileServer, bomb, compress, respond
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
    # Short backoffs: a retried 5xx must not make the test wait for seconds.
    return privateshare_factory(
        f'[digime]\nbase_url = "{server.url}/v1.7/"\nmax_answer_bytes = {cap}\n'
        '[transport]\ntype = "requests"\nbackoff = 0.01\n[pull]\nretry_backoff = 0.01\n'
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


# --- a file list with a Content-Encoding streams through the same capped decoder -----------

ROW = b'{"name":"same.json","updatedDate":1}'


def list_bomb(encoding: str, size: int) -> Answer:
    """A valid-looking ``encoding`` file list whose rows inflate to about ``size`` bytes.

    Built like :func:`~privateshare.testing.hostile.bomb`: a head, then one segment of
    ~1 MiB of rows repeated (identical bytes, each flushed), so it costs nothing to serve;
    rows of one name, so what the client keeps of them stays one row.
    """
    rows = (b"," + ROW) * (MiB // (len(ROW) + 1))
    first = b'{"status":{"state":"completed"},"fileList":[' + ROW
    if encoding == "gzip":
        head, segment = gzip.compress(first, mtime=0), gzip.compress(rows, mtime=0)
    elif encoding == "deflate":
        c = zlib.compressobj(9)
        head = c.compress(first) + c.flush(zlib.Z_FULL_FLUSH)
        segment = c.compress(rows) + c.flush(zlib.Z_FULL_FLUSH)
    else:
        b = brotli.Compressor(quality=5)
        head = b.process(first) + b.flush()
        segment = b.process(rows) + b.flush()
    count = -(-size // len(rows))

    def answer(exchange: Exchange) -> None:
        exchange.head(200, {"Content-Encoding": encoding}, length=len(head) + len(segment) * count)
        if not exchange.write(head):
            return
        for _ in range(0, count, 16):
            if not exchange.write(segment * 16):
                return

    return answer


def scan(client: Any, *, keep: bool = True) -> tuple[Any, list[tuple[str, int]]]:
    """The file list of session ``key``, read as the pull reads it: rows as they come
    (with ``keep``, the last date of each name, as the flow keeps them)."""
    seen: list[tuple[str, int]] = []
    unique: dict[str, int] = {}

    def visitor() -> Callable[[list[Any]], None]:
        seen.clear()
        unique.clear()

        def visit(rows: list[Any]) -> None:
            if keep:
                unique.update((row.name, row.updated_date) for row in rows)
            seen.append((rows[-1].name, len(rows)))

        return visit

    token = UserAccessToken(Token("access"), Token("refresh"))
    status, _ = client.scan_file_list("key", token, visitor)
    return status, [*unique.items(), ("rows", sum(n for _, n in seen))]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_file_list_bomb_ends_in_a_clear_error_at_flat_memory(
    privateshare_factory: Callable[..., PrivateShare], hostile: HostileServer, encoding: str
) -> None:
    # 10 GiB of rows once decoded, under a cap of 32 MiB: the list is decoded in steps and
    # read in batches, so refusing it holds a few MiB, not the cap's worth.
    hostile.route("/v1.7/permission-access/query/key", list_bomb(encoding, 10 << 30))
    client = client_for(hostile_framework(privateshare_factory, hostile, 32 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge) as info:
            scan(client, keep=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(
        f"the file list: the answer is larger than {32 * MiB} bytes once decoded "
        f"(Content-Encoding {encoding})"
    )
    assert "raise [digime] max_answer_bytes" in message
    # About 9 MiB (a batch of rows and its decoding steps) whatever the cap: decoded whole,
    # as before, it held the cap's 32 MiB and more.
    assert peak < 12 * MiB, f"refusing the {encoding} list bomb peaked at {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_an_encoded_file_list_is_read_exactly_as_the_plain_one(
    privateshare_factory: Callable[..., PrivateShare], hostile: HostileServer, encoding: str
) -> None:
    # ~5 MiB of rows (several batches, many decoding steps), pretty-printed in places.
    rows = [
        {"name": f"file-{i:06d}-{'é' if i % 7 == 0 else 'x'}.json", "updatedDate": 1000 + i}
        for i in range(60_000)
    ]
    plain = json.dumps(
        {"fileList": rows, "status": {"state": "completed"}}, ensure_ascii=False
    ).encode()
    hostile.route("/v1.7/permission-access/query/key", respond(plain))
    fw = hostile_framework(privateshare_factory, hostile, 64 * MiB)
    expected = scan(client_for(fw))
    hostile.route(
        "/v1.7/permission-access/query/key",
        respond(compress(plain, encoding), headers={"Content-Encoding": encoding}),
    )
    assert scan(client_for(fw)) == expected
    assert expected[1][-1] == ("rows", 60_000)
    # The cap counts decoded bytes: one byte under the plain size is refused.
    tight = hostile_framework(privateshare_factory, hostile, len(plain) - 1)
    with pytest.raises(ResponseTooLarge, match="once decoded"):
        scan(client_for(tight))
