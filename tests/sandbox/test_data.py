"""Sessions, the file-list state machine, file downloads, accounts and the one-off contract."""

from __future__ import annotations

import hashlib
import re
from email.utils import parsedate_to_datetime

from .conftest import REDIRECT, RawClient, b64url_decode, decrypt, pkce
from .test_oauth import assert_error

STATES = {"pending", "running", "partial", "completed"}


def check_list_shape(body: dict) -> None:
    """The CAFileListResponse codec (protocol.md#files), as the official SDK checks it."""
    status = body["status"]
    assert status["state"] in STATES
    for detail in status.get("details", {}).values():
        assert detail["state"] in ("running", "completed", "partial")
        if detail["state"] == "partial":
            error = detail["error"]
            assert isinstance(error["code"], str) and isinstance(error["statusCode"], int)
    for entry in body.get("fileList", []):
        assert isinstance(entry["name"], str) and isinstance(entry["updatedDate"], int)


def test_trigger_session_and_downloads(client: RawClient) -> None:
    tokens, _ = client.onboard()
    r = client.trigger(tokens.access, {"agent": {"sdk": {"name": "t"}}, "unknownExtra": {"a": 1}})
    assert r.status_code == 202, r.text
    session = r.json()["session"]
    assert isinstance(session["key"], str) and isinstance(session["expiry"], int)
    body = client.file_list(session["key"], tokens.access).json()
    check_list_shape(body)
    assert body["status"]["state"] == "completed"
    accounts = {a["id"] for a in client.sandbox.library.accounts}
    assert set(body["status"]["details"]) == accounts
    truth = client.sandbox.ground_truth()
    assert {e["name"] for e in body["fileList"]} == set(truth)
    compressions = set()
    for entry in body["fileList"]:
        r = client.file(session["key"], entry["name"], tokens.access)
        assert r.status_code == 200
        size = len(r.content)
        assert size >= 288 and size % 16 == 0
        assert int(r.headers["Content-Length"]) == size
        assert parsedate_to_datetime(r.headers["Last-Modified"]).timestamp() == (
            entry["updatedDate"] // 1000
        )
        raw = r.headers["x-metadata"]
        assert re.fullmatch(r"[A-Za-z0-9_-]+", raw)  # base64url, no padding
        meta = client.metadata(r)
        assert isinstance(meta["metadata"], dict)
        compressions.add(meta.get("compression"))
        plain = decrypt(r.content, client.key, meta.get("compression"))
        assert hashlib.sha256(plain).hexdigest() == truth[entry["name"]]
    assert {"gzip", "brotli", None} <= compressions


def test_head_gives_metadata_only(client: RawClient) -> None:
    tokens, session = client.onboard()
    body = client.file_list(session["key"], tokens.access).json()
    name = body["fileList"][0]["name"]
    r = client.file(session["key"], name, tokens.access, method="HEAD")
    assert r.status_code == 200 and r.content == b""
    assert "metadata" in client.metadata(r)
    full = client.file(session["key"], name, tokens.access)
    assert r.headers["Content-Length"] == full.headers["Content-Length"]
    assert r.headers["x-metadata"] == full.headers["x-metadata"]


def test_unknown_file_and_session(client: RawClient) -> None:
    tokens, session = client.onboard()
    client.file_list(session["key"], tokens.access)
    assert_error(client.file(session["key"], "nope.json", tokens.access), 404, "FileNotFound")
    assert_error(client.file_list("no-such-session", tokens.access), 404, "InvalidSession")
    r = client.file(session["key"], "nope.json", tokens.access, method="HEAD")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "FileNotFound"


def test_other_users_session_is_refused(client: RawClient) -> None:
    alice, session = client.onboard()
    bob, _ = client.onboard()
    assert_error(client.file_list(session["key"], bob.access), 404, "InvalidSession")
    assert client.file_list(session["key"], alice.access).status_code == 200


def test_state_machine_with_versions(make_sandbox) -> None:
    sb = make_sandbox(pending_polls=1, running_polls=2, files=20, updated_fraction=0.5)
    c = RawClient(sb)
    tokens, session = c.onboard()
    multi = {f.name: f for f in sb.library.files if len(f.versions) > 1}
    assert multi, "the seeded library should have updated files"
    seen_states, lists = [], []
    for _ in range(5):
        body = c.file_list(session["key"], tokens.access).json()
        check_list_shape(body)
        seen_states.append(body["status"]["state"])
        lists.append({e["name"]: e["updatedDate"] for e in body.get("fileList", [])})
    assert seen_states == ["pending", "running", "running", "completed", "completed"]
    assert lists[0] == {}
    assert len(lists[1]) <= len(lists[2]) <= len(lists[3]) == 20
    for name, f in multi.items():
        assert lists[1][name] == f.versions[0].updated_date
        assert lists[3][name] == f.versions[-1].updated_date > f.versions[0].updated_date
    details = c.file_list(session["key"], tokens.access).json()["status"]["details"]
    assert {d["state"] for d in details.values()} == {"completed"}
    assert c.sandbox.ground_truth() == {
        f.name: f.latest.plaintext_sha256() for f in sb.library.files
    }


def test_running_details_and_version_served(make_sandbox) -> None:
    sb = make_sandbox(pending_polls=0, running_polls=1, files=10, updated_fraction=1.0)
    c = RawClient(sb)
    tokens, session = c.onboard()
    body = c.file_list(session["key"], tokens.access).json()
    assert body["status"]["state"] == "running"
    assert {d["state"] for d in body["status"]["details"].values()} == {"running"}
    multi = [f for f in sb.library.files if len(f.versions) > 1]
    early = c.download(session["key"], multi[0].name, tokens.access)
    assert hashlib.sha256(early).hexdigest() == multi[0].versions[0].plaintext_sha256()
    c.file_list(session["key"], tokens.access)
    late = c.download(session["key"], multi[0].name, tokens.access)
    assert hashlib.sha256(late).hexdigest() == multi[0].latest.plaintext_sha256()


def test_partial_account(make_sandbox) -> None:
    sb = make_sandbox(partial=True, files=8)
    c = RawClient(sb)
    tokens, session = c.onboard()
    body = c.file_list(session["key"], tokens.access).json()
    check_list_shape(body)
    assert body["status"]["state"] == "partial"
    partial = sb.library.partial_account_id
    detail = body["status"]["details"][partial]
    assert detail["state"] == "partial"
    assert detail["error"]["code"] == "ServiceAuthorizationError"
    assert detail["error"]["statusCode"] == 511 and detail["error"]["reauth"] is True
    others = [d for k, d in body["status"]["details"].items() if k != partial]
    assert all(d == {"state": "completed"} for d in others)
    # Reauthorize the account through the web page; new sessions complete.
    ref = c.call("POST", "reference", {}, json_body={"type": "accountId", "value": partial})
    assert ref.status_code == 201
    r = c.call(
        "POST", "oauth/token/reference", {"access_token": tokens.access, "redirect_uri": REDIRECT}
    )
    code = c.verify(r.json()["token"])["reference_code"]
    assert c.consent(code, page="reauthorize", accountRef=ref.json()["id"])["success"] == "true"
    fresh = c.trigger(tokens.access).json()["session"]
    assert c.file_list(fresh["key"], tokens.access).json()["status"]["state"] == "completed"


def test_source_fetch_filter(client: RawClient) -> None:
    tokens, _ = client.onboard()
    account = client.sandbox.library.files[0].account_id
    body = {"sourceFetchFilter": {"account": {"id": [account]}}}
    session = client.trigger(tokens.access, body).json()["session"]
    listed = client.file_list(session["key"], tokens.access).json()
    assert set(listed["status"]["details"]) == {account}
    expected = {f.name for f in client.sandbox.library.files if f.account_id == account}
    assert {e["name"] for e in listed["fileList"]} == expected


def test_session_before_consent_is_pending(client: RawClient) -> None:
    tokens, _ = client.onboard()
    auth = client.authorize(access_token=tokens.access)
    r = client.file_list(auth["session"]["key"], tokens.access)
    assert r.json() == {"status": {"state": "pending"}}
    client.consent(auth["code"])
    assert client.file_list(auth["session"]["key"], tokens.access).json()["status"]["state"] == (
        "completed"
    )


def test_accounts_shape(client: RawClient) -> None:
    tokens, _ = client.onboard()
    r = client.call("GET", "permission-access/accounts", {"access_token": tokens.access})
    assert r.status_code == 200
    accounts = r.json()
    assert isinstance(accounts, list) and accounts
    types = {
        "USER",
        "ADMIN",
        "EVENT",
        "GROUP",
        "BANK",
        "CREDIT_CARD",
        "IMPORTED",
        "INVESTMENT",
        "INSURANCE",
        "LOAN",
        "REWARD",
        "BILL",
        "PUSH",
    }
    for a in accounts:
        assert isinstance(a["id"], str) and isinstance(a["reference"], str)
        assert a["type"] in types
        for key in ("createdDate", "serviceGroupId", "serviceTypeId", "sourceId", "updatedDate"):
            assert isinstance(a[key], int)
        for key in ("serviceGroupName", "serviceTypeName", "serviceTypeReference"):
            assert isinstance(a[key], str)
    assert_error(
        client.call("GET", "permission-access/accounts", {"access_token": "x"}), 401, "InvalidToken"
    )


def test_delete_user(client: RawClient) -> None:
    tokens, session = client.onboard()
    r = client.call("DELETE", "user", {"access_token": tokens.access})
    assert r.status_code == 204
    assert_error(client.trigger(tokens.access), 401, "InvalidToken")
    assert_error(client.refresh(tokens.refresh), 401, "InvalidToken")
    assert_error(client.file_list(session["key"], tokens.access), 404, "InvalidSession")


def test_sample_datasets(client: RawClient) -> None:
    r = client.call("GET", "permission-access/sample/datasets/30", {})
    assert r.status_code == 200
    for dataset in r.json().values():
        assert isinstance(dataset["name"], str) and isinstance(dataset["description"], str)
    assert_error(
        client.call("GET", "permission-access/sample/datasets/abc", {}), 400, "ValidationErrors"
    )


def test_ground_truth_over_http(client: RawClient) -> None:
    r = client.http.get(client.sandbox.origin + "/_sandbox/ground-truth")
    assert r.json() == client.sandbox.ground_truth()
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in r.json().values())


# -- the one-off contract ----------------------------------------------------------------


def test_oneoff_flow_with_session_bound_token(sandbox) -> None:
    c = RawClient(sandbox, "oneoff")
    auth = c.authorize()
    callback = c.consent(auth["code"])
    assert callback["success"] == "true"
    tokens = c.tokens(c.exchange(callback["code"], auth["verifier"]))
    assert tokens.refresh == "" and tokens.payload["refresh_token"]["expires_on"] == 0
    key = auth["session"]["key"]
    body = c.file_list(key, tokens.access).json()
    assert body["status"]["state"] == "completed"
    name = body["fileList"][0]["name"]
    plain = c.download(key, name, tokens.access)
    assert hashlib.sha256(plain).hexdigest() == sandbox.ground_truth()[name]
    assert c.call("GET", "permission-access/accounts", {"access_token": tokens.access}).ok
    # The token reads this session only, and cannot start new ones or be refreshed.
    other = c.authorize()
    c.consent(other["code"])
    assert_error(c.file_list(other["session"]["key"], tokens.access), 404, "InvalidSession")
    assert_error(c.trigger(tokens.access), 403, "InsufficientScope")
    assert_error(c.refresh(tokens.refresh), 403, "InsufficientScope")


def test_oneoff_flow_without_token(sandbox) -> None:
    c = RawClient(sandbox, "oneoff")
    auth = c.authorize()
    callback = c.consent(auth["code"])
    assert callback["success"] == "true"
    key = auth["session"]["key"]
    body = c.file_list(key, None).json()
    assert body["status"]["state"] == "completed"
    truth = sandbox.ground_truth()
    for entry in body["fileList"][:3]:
        plain = c.download(key, entry["name"], None)
        assert hashlib.sha256(plain).hexdigest() == truth[entry["name"]]
    accounts = c.call("GET", "permission-access/accounts", {})
    assert accounts.status_code == 200 and isinstance(accounts.json(), list)


def test_oneoff_refuses_ongoing_operations(sandbox) -> None:
    c = RawClient(sandbox, "oneoff")
    assert_error(c.trigger("anything"), 403, "InsufficientScope")
    assert_error(c.refresh("anything"), 403, "InsufficientScope")
    _verifier, challenge = pkce()
    r = c.call(
        "POST",
        "oauth/token/reference",
        {"access_token": "x", "redirect_uri": REDIRECT, "code_challenge": challenge},
    )
    assert_error(r, 403, "InsufficientScope")


def test_oneoff_session_is_not_readable_by_other_contract(sandbox) -> None:
    oneoff = RawClient(sandbox, "oneoff")
    auth = oneoff.authorize()
    oneoff.consent(auth["code"])
    ongoing = RawClient(sandbox)
    tokens, _ = ongoing.onboard()
    assert_error(ongoing.file_list(auth["session"]["key"], tokens.access), 404, "InvalidSession")


def test_oneoff_unconsented_session_stays_pending(sandbox) -> None:
    c = RawClient(sandbox, "oneoff")
    auth = c.authorize()
    assert c.file_list(auth["session"]["key"], None).json() == {"status": {"state": "pending"}}


def test_x_metadata_is_unpadded_base64url_json(client: RawClient) -> None:
    tokens, session = client.onboard()
    names = [e["name"] for e in client.file_list(session["key"], tokens.access).json()["fileList"]]
    for name in names:
        value = client.file(session["key"], name, tokens.access, "HEAD").headers["x-metadata"]
        assert "=" not in value and "+" not in value and "/" not in value
        assert isinstance(b64url_decode(value), bytes)
