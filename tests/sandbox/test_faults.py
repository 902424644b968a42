"""Seeded fault injection: 5xx, resets, truncation, corruption, bad x-metadata, latency."""

from __future__ import annotations

import hashlib
import http.client
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from privateshare.sandbox.faults import FaultPlan
from privateshare.sandbox.settings import FAULT_ENDPOINTS, SandboxSettings

from .conftest import REDIRECT, RawClient, decrypt


def names(c: RawClient, session: dict, access: str) -> list[str]:
    return [e["name"] for e in c.file_list(session["key"], access).json()["fileList"]]


def outcome(c: RawClient, session: dict, access: str, name: str) -> str:
    try:
        r = c.file(session["key"], name, access)
    except requests.ConnectionError:
        return "reset"
    except requests.exceptions.ChunkedEncodingError:
        return "truncated"
    if r.status_code != 200:
        return str(r.status_code)
    if "x-metadata" not in r.headers:
        return "missing-metadata"
    try:
        meta = c.metadata(r)
    except ValueError:
        return "malformed-metadata"
    try:
        decrypt(r.content, c.key, meta.get("compression"))
    except Exception:
        return "corrupt"
    return "ok"


def test_fault_plan_is_reproducible() -> None:
    settings = SandboxSettings(error_rate=0.3, truncate_rate=0.3, corrupt_rate=0.3, seed=7)
    a = [FaultPlan(settings).decide("file", f"f{i}", 0) for i in range(50)]
    b = [FaultPlan(settings).decide("file", f"f{i}", 0) for i in range(50)]
    assert a == b
    assert any(f.error_status for f in a) and any(f.truncate_at for f in a)
    other = [FaultPlan(settings.replace(seed=8)).decide("file", f"f{i}", 0) for i in range(50)]
    assert other != a
    # Kinds outside fault_endpoints are never hit.
    assert not any(FaultPlan(settings).decide("token", f"f{i}", 0).any for i in range(50))


def test_errors_are_5xx_and_retry_with_fresh_nonce_succeeds(make_sandbox) -> None:
    sb = make_sandbox(error_rate=0.5, fault_endpoints=frozenset({"file"}), seed=3)
    c = RawClient(sb)
    tokens, session = c.onboard()
    results = {}
    for name in names(c, session, tokens.access):
        first = outcome(c, session, tokens.access, name)
        results[name] = first
        if first != "ok":
            assert first in ("500", "502", "503")
            attempts = [outcome(c, session, tokens.access, name) for _ in range(8)]
            assert "ok" in attempts
    assert "ok" in results.values() and set(results.values()) != {"ok"}
    assert sum(v for k, v in sb.stats()["faults"].items() if k in ("500", "502", "503")) > 0


def test_resets_truncation_corruption_metadata(make_sandbox) -> None:
    sb = make_sandbox(
        files=30,
        seed=5,
        reset_rate=0.15,
        truncate_rate=0.15,
        corrupt_rate=0.2,
        bad_metadata_rate=0.2,
        fault_endpoints=frozenset({"file"}),
    )
    c = RawClient(sb)
    tokens, session = c.onboard()
    seen = {outcome(c, session, tokens.access, n) for n in names(c, session, tokens.access)}
    assert {"reset", "truncated", "corrupt", "ok"} <= seen
    assert seen & {"missing-metadata", "malformed-metadata"}
    faults = sb.stats()["faults"]
    assert faults.get("reset") and faults.get("truncate") and faults.get("corrupt")


def test_same_seed_same_faults(make_sandbox) -> None:
    def run() -> dict[str, str]:
        sb = make_sandbox(
            files=16, seed=11, error_rate=0.3, corrupt_rate=0.3, fault_endpoints=frozenset({"file"})
        )
        c = RawClient(sb)
        tokens, session = c.onboard()
        result = {
            n: outcome(c, session, tokens.access, n) for n in names(c, session, tokens.access)
        }
        sb.stop()
        return {k: ("err" if v.isdigit() else v) for k, v in result.items()}

    assert run() == run()


def test_truncated_body_announces_full_length(make_sandbox) -> None:
    sb = make_sandbox(files=4, truncate_rate=1.0, fault_endpoints=frozenset({"file"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    name = names(c, session, tokens.access)[0]
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    path = f"/v1.7/permission-access/query/{session['key']}/{name}"
    conn.request(
        "GET", path, headers={"Authorization": "Bearer " + c.sign({"access_token": tokens.access})}
    )
    response = conn.getresponse()
    announced = int(response.getheader("Content-Length"))
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert len(info.value.partial) < announced
    conn.close()


def test_latency_delays_every_answer(make_sandbox) -> None:
    sb = make_sandbox(latency=0.4, fault_endpoints=frozenset({"sample"}))
    clients = [RawClient(sb) for _ in range(8)]  # one connection each

    def call(i: int) -> float:
        started = time.monotonic()
        assert clients[i].call("GET", "permission-access/sample/datasets/1", {}).ok
        return time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        waited = list(pool.map(call, range(8)))
    # A lower bound only (sleep never ends early); how concurrent: benchmarks/sandbox.py.
    assert min(waited) >= 0.4
    assert sb.stats()["requests"]["sample"] >= 8


def test_a_stalled_connection_does_not_hold_up_the_others(make_sandbox) -> None:
    sb = make_sandbox(files=1, large_files=1, large_file_size=64 << 20)
    stalled = RawClient(sb)
    tokens, session = stalled.onboard()
    large = max(
        stalled.file_list(session["key"], tokens.access).json()["fileList"],
        key=lambda e: stalled.sandbox.library.file(e["name"]).versions[-1].plaintext_size,
    )["name"]
    # Headers read, the 64 MiB body left unread: the server's thread blocks in send.
    response = stalled.call(
        "GET",
        f"permission-access/query/{session['key']}/{large}",
        {"access_token": tokens.access},
        stream=True,
    )
    try:
        assert response.status_code == 200
        other = RawClient(sb)
        for _ in range(3):  # a serial server would never answer these (timeout: 30 s)
            assert other.file_list(session["key"], tokens.access).status_code == 200
    finally:
        response.close()


def test_faults_never_touch_token_endpoint_by_default(make_sandbox) -> None:
    sb = make_sandbox(error_rate=1.0)
    c = RawClient(sb)
    tokens, session = c.onboard()  # authorize, token: not in the default fault endpoints
    assert c.file_list(session["key"], tokens.access).status_code >= 500


# -- every fault class on every endpoint kind --------------------------------------------


def probe(c: RawClient, kind: str) -> requests.Response:
    """One request of ``kind``, after the setup it needs (made of other kinds only)."""
    sb = c.sandbox
    if kind == "session":  # API v1.5's permission-access/session
        body = {
            "appId": sb.application_id,
            "contractId": sb.contract().contract_id,
            "sdkAgent": {"name": "js", "version": "4.0.0"},
        }
        return c.http.post(sb.base_url_v15 + "/permission-access/session", json=body, timeout=30)
    if kind == "authorize":
        return c.authorize_request()[0]
    if kind == "jwks":
        return c.http.get(sb.jwks_url, timeout=30)
    if kind == "sample":
        return c.call("GET", "permission-access/sample/datasets/1", {})
    if kind == "discovery":
        return c.call("POST", "discovery/sources", {}, json_body={"limit": 5})
    if kind == "contract":
        return c.call("GET", "permission-access/contract", {})
    if kind == "token":
        auth = c.authorize()
        return c.exchange(c.consent(auth["code"])["code"], auth["verifier"])
    tokens, session = c.onboard()
    access = {"access_token": tokens.access}
    if kind == "reference":
        return c.call("POST", "oauth/token/reference", {**access, "redirect_uri": REDIRECT})
    if kind == "trigger":
        return c.trigger(tokens.access)
    if kind == "list":
        return c.file_list(session["key"], tokens.access)
    if kind == "file":
        name = "statement-0009.pdf"  # the setup listed the session: the file can be read
        c.file_list(session["key"], tokens.access)
        return c.file(session["key"], name, tokens.access)
    if kind == "accounts":
        return c.call("GET", "permission-access/accounts", access)
    if kind == "user":
        return c.call("DELETE", "user", access)
    account = sb.library.accounts[0]["id"]
    if kind == "service":
        return c.call(
            "DELETE",
            "permission-access/service/h:accountId",
            access,
            headers={"accountId": account},
        )
    if kind == "revoke":
        headers = {"accountId": account, "redirectUri": REDIRECT}
        return c.call("GET", "permission-access/revoke/h:accountId", access, headers=headers)
    raise AssertionError(f"no probe for {kind}")


def test_every_fault_endpoint_has_a_probe_that_works_unfaulted(make_sandbox) -> None:
    sb = make_sandbox(files=10)
    expected = {"session": 201, "authorize": 201, "token": 201, "reference": 201}
    expected |= {"trigger": 202, "user": 204, "service": 204, "revoke": 201}
    for kind in sorted(FAULT_ENDPOINTS):
        assert probe(RawClient(sb), kind).status_code == expected.get(kind, 200), kind
    assert sb.fault_log() == []


@pytest.mark.parametrize("kind", sorted(FAULT_ENDPOINTS))
def test_5xx_on_every_endpoint(make_sandbox, kind: str) -> None:
    sb = make_sandbox(files=10, error_rate=1.0, fault_endpoints=frozenset({kind}))
    r = probe(RawClient(sb), kind)
    assert r.status_code in (500, 502, 503)
    assert r.json()["error"]["code"] == "InternalServerError"
    (entry,) = sb.fault_log()
    assert entry["kind"] == kind and entry["faults"] == [str(r.status_code)]


@pytest.mark.parametrize("kind", sorted(FAULT_ENDPOINTS))
def test_reset_on_every_endpoint(make_sandbox, kind: str) -> None:
    sb = make_sandbox(files=10, reset_rate=1.0, fault_endpoints=frozenset({kind}))
    with pytest.raises(requests.ConnectionError):
        probe(RawClient(sb), kind)
    (entry,) = sb.fault_log()
    assert entry["kind"] == kind and entry["faults"] == ["reset"]


@pytest.mark.parametrize("kind", sorted(FAULT_ENDPOINTS - {"user", "service"}))  # 204s
def test_body_cut_short_on_every_endpoint(make_sandbox, kind: str) -> None:
    sb = make_sandbox(files=10, truncate_rate=1.0, fault_endpoints=frozenset({kind}))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        probe(RawClient(sb), kind)
    (entry,) = sb.fault_log()
    assert entry["kind"] == kind and entry["faults"] == ["truncate"]
    assert sb.stats()["faults"] == {"truncate": 1}


def test_an_answer_without_a_body_is_not_cut(make_sandbox) -> None:
    sb = make_sandbox(files=6, truncate_rate=1.0, fault_endpoints=frozenset({"user", "file"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    c.file_list(session["key"], tokens.access)
    head = c.file(session["key"], "photo-0004.jpg", tokens.access, method="HEAD")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0
    assert c.call("DELETE", "user", {"access_token": tokens.access}).status_code == 204
    assert sb.fault_log() == [] and sb.stats()["faults"] == {}


def test_cut_json_answer_announces_its_full_length(make_sandbox) -> None:
    sb = make_sandbox(files=4, truncate_rate=1.0, fault_endpoints=frozenset({"list"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=30)
    bearer = "Bearer " + c.sign({"access_token": tokens.access})
    conn.request(
        "GET", f"/v1.7/permission-access/query/{session['key']}", headers={"Authorization": bearer}
    )
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith(
        "application/json"
    )
    with pytest.raises(http.client.IncompleteRead) as info:
        response.read()
    assert 0 < len(info.value.partial) < int(response.getheader("Content-Length"))
    assert info.value.partial.startswith(b"{")
    conn.close()


def fault_seed_for(settings: SandboxSettings, kind: str, pattern: list[bool]) -> int:
    """A fault seed whose first attempts at ``kind`` are faulted exactly as ``pattern`` says."""
    for seed in range(10_000):
        plan = FaultPlan(settings.replace(fault_seed=seed))
        if [plan.decide(kind, "", n).any for n in range(len(pattern))] == pattern:
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("rate", ["error_rate", "reset_rate"])
def test_a_failed_refresh_or_exchange_changes_nothing(make_sandbox, rate: str) -> None:
    # token attempts: 0 exchange (faulted), 1 exchange again, 2 refresh (faulted), 3 again
    changes = {rate: 0.5, "fault_endpoints": frozenset({"token"}), "files": 4}
    seed = fault_seed_for(SandboxSettings(**changes), "token", [True, False, True, False])
    sb = make_sandbox(fault_seed=seed, **changes)
    c = RawClient(sb)
    auth = c.authorize()
    code = c.consent(auth["code"])["code"]

    def attempt(send) -> requests.Response | None:
        try:
            r = send()
        except requests.ConnectionError:
            return None
        assert r.status_code >= 500
        return r

    attempt(lambda: c.exchange(code, auth["verifier"]))
    tokens = c.tokens(c.exchange(code, auth["verifier"]))  # the code was not spent
    attempt(lambda: c.refresh(tokens.refresh))
    fresh = c.tokens(c.refresh(tokens.refresh))  # the refresh token did not rotate
    assert fresh.refresh != tokens.refresh
    assert sb.stats()["code_exchanges"] == 1
    assert [e["attempt"] for e in sb.fault_log()] == [0, 2]


def test_a_cut_refresh_answer_loses_the_rotated_token(make_sandbox) -> None:
    changes = {"truncate_rate": 0.5, "fault_endpoints": frozenset({"token"}), "files": 4}
    seed = fault_seed_for(SandboxSettings(**changes), "token", [False, True, False])
    sb = make_sandbox(fault_seed=seed, **changes)
    c = RawClient(sb)
    tokens, _session = c.onboard()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        c.refresh(tokens.refresh)
    again = c.refresh(tokens.refresh)
    assert again.status_code == 401 and again.json()["error"]["code"] == "InvalidToken"


def test_fault_endpoints_all_means_every_kind() -> None:
    assert SandboxSettings(fault_endpoints=frozenset({"all"})).fault_endpoints == FAULT_ENDPOINTS
    assert "jwks" in FAULT_ENDPOINTS and "trigger" in FAULT_ENDPOINTS
    with pytest.raises(ValueError, match="nope"):
        SandboxSettings(fault_endpoints=frozenset({"all", "nope"}))
    plan = FaultPlan(
        SandboxSettings(corrupt_rate=1.0, bad_metadata_rate=1.0, fault_endpoints=frozenset({"all"}))
    )
    for kind in FAULT_ENDPOINTS - {"file"}:  # byte flips and metadata are file faults
        assert not plan.decide(kind, "", 0).any


def test_corrupt_bytes_in_every_file_body(make_sandbox) -> None:
    sb = make_sandbox(files=12, corrupt_rate=1.0, fault_endpoints=frozenset({"all"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    truth = sb.ground_truth()
    for name in names(c, session, tokens.access):
        r = c.file(session["key"], name, tokens.access)
        assert r.status_code == 200 and len(r.content) == int(r.headers["Content-Length"])
        meta = c.metadata(r)  # the headers are intact; only ciphertext changes
        try:
            plain = decrypt(r.content, c.key, meta.get("compression"))
        except Exception:
            continue  # padding or decompression noticed
        assert hashlib.sha256(plain).hexdigest() != truth[name]
    log = sb.fault_log()
    assert {e["resource"] for e in log} == set(truth)
    assert all(e["kind"] == "file" and e["faults"] == ["corrupt"] for e in log)


def test_bad_metadata_on_file_answers_only(make_sandbox) -> None:
    sb = make_sandbox(files=20, bad_metadata_rate=1.0, fault_endpoints=frozenset({"all"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    seen = set()
    for name in names(c, session, tokens.access):
        for method in ("HEAD", "GET"):
            r = c.file(session["key"], name, tokens.access, method=method)
            assert r.status_code == 200
            header = r.headers.get("x-metadata")
            if header is None:
                seen.add("missing")
                continue
            with pytest.raises(ValueError):
                c.metadata(r)
            seen.add("malformed")
        compression = sb.library.file(name).latest.compression
        plain = decrypt(r.content, c.key, compression)  # the body itself is intact
        assert hashlib.sha256(plain).hexdigest() == sb.ground_truth()[name]
    assert seen == {"missing", "malformed"}
    assert {e["kind"] for e in sb.fault_log()} == {"file"}


def test_fault_log_names_kind_resource_and_attempt(make_sandbox) -> None:
    sb = make_sandbox(files=12, seed=4, error_rate=0.4, fault_endpoints=frozenset({"file"}))
    c = RawClient(sb)
    tokens, session = c.onboard()
    for name in names(c, session, tokens.access):
        for _ in range(20):
            if c.file(session["key"], name, tokens.access).status_code == 200:
                break
    log = sb.fault_log()
    assert log and c.http.get(sb.origin + "/_sandbox/fault-log", timeout=30).json() == log
    by_name: dict[str, list[int]] = {}
    for entry in log:
        by_name.setdefault(entry["resource"], []).append(entry["attempt"])
    # Every file failed on its first attempts in a row, then succeeded.
    assert all(attempts == list(range(len(attempts))) for attempts in by_name.values())
    counted = Counter(f for entry in log for f in entry["faults"])
    assert dict(counted) == sb.stats()["faults"]
