"""Account management and contract details: ``DELETE permission-access/service``,
``GET permission-access/revoke`` (and its page), ``GET permission-access/contract``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography import x509

from privateshare.sandbox import Sandbox

from .conftest import REDIRECT, RawClient, decrypt, nonce
from .test_oauth import assert_error

SERVICE = "permission-access/service/h:accountId"
REVOKE = "permission-access/revoke/h:accountId"
CONTRACT_OID = x509.ObjectIdentifier("1.2.826.0.1.6861219.1")


def delete(c: RawClient, access: str | None, account: str | None) -> requests.Response:
    headers = {} if account is None else {"accountId": account}
    return c.call("DELETE", SERVICE, {"access_token": access}, headers=headers)


def revoke_url(
    c: RawClient, access: str | None, account: str | None, redirect: str | None = REDIRECT
) -> requests.Response:
    headers = {k: v for k, v in (("accountId", account), ("redirectUri", redirect)) if v}
    return c.call("GET", REVOKE, {"access_token": access}, headers=headers)


def accounts(c: RawClient, access: str) -> list[dict[str, Any]]:
    r = c.call("GET", "permission-access/accounts", {"access_token": access})
    assert r.status_code == 200, r.text
    return r.json()


def final_list(c: RawClient, access: str) -> dict[str, Any]:
    session = c.trigger(access).json()["session"]
    r = c.file_list(session["key"], access)
    assert r.status_code == 200, r.text
    return {"key": session["key"], **r.json()}


# -- DELETE permission-access/service --------------------------------------------------


def test_delete_account_removes_it_and_its_files(make_sandbox) -> None:
    sb = make_sandbox(files=20)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    before = final_list(c, tokens.access)
    victim = sb.library.accounts[0]["id"]
    victim_files = {f.name for f in sb.library.files if f.account_id == victim}
    assert victim_files and victim_files <= {e["name"] for e in before["fileList"]}

    r = delete(c, tokens.access, victim)
    assert r.status_code == 204 and r.content == b""

    assert victim not in {a["id"] for a in accounts(c, tokens.access)}
    after = final_list(c, tokens.access)
    assert victim not in after["status"]["details"]
    names = {e["name"] for e in after["fileList"]}
    assert names == {e["name"] for e in before["fileList"]} - victim_files
    truth = c.http.get(sb.origin + "/_sandbox/ground-truth", timeout=30).json()
    assert set(truth) == names and set(sb.ground_truth()) == names
    # A deleted file is gone from sessions made before, too.
    gone = sorted(victim_files)[0]
    assert_error(c.file(before["key"], gone, tokens.access), 404, "FileNotFound")
    for name in sorted(names)[:3]:  # the rest is still served, byte for byte
        plain = c.download(after["key"], name, tokens.access)
        assert hashlib.sha256(plain).hexdigest() == truth[name]
    # Deleting it again, or an account that never was: 404 AccountNotFound.
    assert_error(delete(c, tokens.access, victim), 404, "AccountNotFound")
    assert_error(delete(c, tokens.access, "1_NOPE"), 404, "AccountNotFound")
    assert sb.stats()["requests"]["service"] == 3


def test_deleting_the_partial_account_completes_later_lists(make_sandbox) -> None:
    sb = make_sandbox(files=14, partial=True)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    partial = sb.library.partial_account_id
    assert final_list(c, tokens.access)["status"]["state"] == "partial"
    assert delete(c, tokens.access, partial).status_code == 204
    assert final_list(c, tokens.access)["status"]["state"] == "completed"
    assert sb.library.partial_account_id is None


def test_delete_account_shows_on_v15_accounts_file(make_sandbox) -> None:
    sb = make_sandbox(files=6)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    victim = sb.library.accounts[-1]["id"]
    assert delete(c, tokens.access, victim).status_code == 204
    body = {
        "appId": sb.application_id,
        "contractId": sb.contract("oneoff").contract_id,
        "sdkAgent": {"name": "js", "version": "4.0.0"},
    }
    session = c.http.post(sb.base_url_v15 + "/permission-access/session", json=body, timeout=30)
    key = session.json()["sessionKey"]
    query = {
        "sessionExchangeToken": session.json()["sessionExchangeToken"],
        "callbackUrl": REDIRECT,
    }
    c.http.get(sb.guest_url, params=query, allow_redirects=False, timeout=30)
    r = c.http.get(f"{sb.base_url_v15}/permission-access/query/{key}/accounts.json", timeout=30)
    assert r.status_code == 200
    plain = decrypt(r.content, RawClient(sb, "oneoff").key, None)
    listed = json.loads(plain[64:])  # v1.5: SHA-512 of the payload first
    assert victim not in {a["id"] for a in listed} and len(listed) == 6


def test_delete_account_request_checks(client: RawClient) -> None:
    tokens, _ = client.onboard()
    account = client.sandbox.library.accounts[0]["id"]
    error = assert_error(delete(client, tokens.access, None), 400, "ValidationErrors")
    assert "accountId" in error["message"]
    assert_error(delete(client, None, account), 401, "InvalidToken")
    assert_error(delete(client, "not-a-token", account), 401, "InvalidToken")
    # The account id is a header: a path segment is not the endpoint.
    r = client.call("DELETE", f"permission-access/service/{account}", {"access_token": "x"})
    assert_error(r, 404, "NotFound")
    assert len(client.sandbox.library.accounts) == 7  # nothing was deleted


# -- GET permission-access/revoke and the revoke page ------------------------------------


def open_location(c: RawClient, location: str) -> requests.Response:
    assert location.startswith(c.sandbox.onboard_url + "revoke?code=")
    return c.http.get(location, allow_redirects=False, timeout=30)


def callback(r: requests.Response) -> dict[str, str]:
    assert r.status_code == 302, r.text
    location = r.headers["Location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_revoke_marks_the_account_until_it_is_reauthorized(make_sandbox) -> None:
    sb = make_sandbox(files=12)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    account = sb.library.accounts[2]["id"]
    r = revoke_url(c, tokens.access, account)
    assert r.status_code == 201 and set(r.json()) == {"location"}
    assert callback(open_location(c, r.json()["location"])) == {"result": "success"}

    listed = {a["id"]: a for a in accounts(c, tokens.access)}
    assert listed[account]["accessTokenStatus"] == {"authorized": False}
    others = [a for i, a in listed.items() if i != account]
    assert all(a["accessTokenStatus"]["authorized"] for a in others)
    body = final_list(c, tokens.access)
    assert body["status"]["state"] == "partial"
    detail = body["status"]["details"][account]
    assert detail["state"] == "partial" and detail["error"]["code"] == "ServiceAuthorizationError"
    assert detail["error"]["reauth"] is True
    # The data already in the library stays.
    files = {f.name for f in sb.library.files if f.account_id == account}
    assert files <= {e["name"] for e in body["fileList"]}
    # The link works once.
    assert open_location(c, r.json()["location"]).status_code == 404

    # Reconnecting the account (the reauthorize page with its reference) restores it.
    ref = c.call("POST", "reference", {}, json_body={"type": "accountId", "value": account})
    claims = {"access_token": tokens.access, "redirect_uri": REDIRECT}
    reference = c.call("POST", "oauth/token/reference", claims, json_body={"actions": {}})
    code = c.verify(reference.json()["token"])["reference_code"]
    assert c.consent(code, "reauthorize", accountRef=ref.json()["id"])["success"] == "true"
    assert final_list(c, tokens.access)["status"]["state"] == "completed"
    assert {a["id"]: a for a in accounts(c, tokens.access)}[account]["accessTokenStatus"][
        "authorized"
    ]


def test_revoke_page_without_auto_consent(make_sandbox) -> None:
    sb = make_sandbox(files=6, auto_consent=False)
    c = RawClient(sb)
    # Onboard through the consent form (auto-consent is off).
    auth = c.authorize()
    page = c.http.get(f"{sb.onboard_url}authorize?code={auth['code']}", timeout=30)
    assert page.status_code == 200
    shared = c.http.post(
        sb.onboard_url + "consent",
        data={"code": auth["code"], "page": "authorize", "decision": "share"},
        allow_redirects=False,
        timeout=30,
    )
    tokens = c.tokens(c.exchange(callback_any(shared)["code"], auth["verifier"]))
    account = sb.library.accounts[0]["id"]

    first = revoke_url(c, tokens.access, account).json()["location"]
    page = open_location(c, first)
    assert page.status_code == 200 and "Withdraw" in page.text and account in page.text
    code = parse_qs(urlsplit(first).query)["code"][0]
    form = {"code": code, "page": "revoke"}
    # The code cannot be used on another page.
    wrong = c.http.post(
        sb.onboard_url + "consent",
        data={**form, "page": "authorize", "decision": "share"},
        timeout=30,
    )
    assert wrong.status_code == 400
    kept = c.http.post(
        sb.onboard_url + "consent",
        data={**form, "decision": "cancel"},
        allow_redirects=False,
        timeout=30,
    )
    assert callback(kept) == {"result": "failed", "error_message": "USER_CANCEL"}
    assert accounts(c, tokens.access)[0]["accessTokenStatus"]["authorized"] is True

    second = revoke_url(c, tokens.access, account).json()["location"]
    code = parse_qs(urlsplit(second).query)["code"][0]
    done = c.http.post(
        sb.onboard_url + "consent",
        data={"code": code, "page": "revoke", "decision": "share"},
        allow_redirects=False,
        timeout=30,
    )
    assert callback(done) == {"result": "success"}
    assert accounts(c, tokens.access)[0]["accessTokenStatus"] == {"authorized": False}


def callback_any(r: requests.Response) -> dict[str, str]:
    assert r.status_code == 302, r.text
    return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}


def test_revoke_link_for_an_account_deleted_meanwhile(make_sandbox) -> None:
    sb = make_sandbox(files=6)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    account = sb.library.accounts[1]["id"]
    location = revoke_url(c, tokens.access, account).json()["location"]
    assert delete(c, tokens.access, account).status_code == 204
    assert callback(open_location(c, location)) == {
        "result": "failed",
        "error_message": "ACCOUNT_NOT_FOUND",
    }


def test_revoke_request_checks(client: RawClient) -> None:
    tokens, _ = client.onboard()
    account = client.sandbox.library.accounts[0]["id"]
    assert_error(revoke_url(client, None, account), 401, "InvalidToken")
    assert_error(revoke_url(client, tokens.access, None), 400, "ValidationErrors")
    assert_error(revoke_url(client, tokens.access, "1_NOPE"), 404, "AccountNotFound")
    error = assert_error(revoke_url(client, tokens.access, account, None), 400, "ValidationErrors")
    assert "redirectUri" in error["message"]
    assert_error(
        revoke_url(client, tokens.access, account, "https://evil.example/cb"),
        404,
        "InvalidRedirectUri",
        "The redirect_uri (https://evil.example/cb) is invalid",
    )
    r = client.http.get(client.sandbox.onboard_url + "revoke?code=nope", timeout=30)
    assert r.status_code == 404 and "Invalid link" in r.text
    assert all(a["accessTokenStatus"]["authorized"] for a in accounts(client, tokens.access))


# -- GET permission-access/contract -----------------------------------------------------


def contract_document(details: dict[str, Any]) -> dict[str, Any]:
    """The contract JSON inside the x509 certificate's extension (as the iOS SDK reads it)."""
    cert = x509.load_der_x509_certificate(base64.b64decode(details["certificate"]))
    value = cert.extensions.get_extension_for_oid(CONTRACT_OID).value.value
    assert value[0] == 0x0C  # an ASN.1 UTF8String
    length, offset = value[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, offset = int.from_bytes(value[2 : 2 + n], "big"), 2 + n
    assert len(value) == offset + length
    return json.loads(value[offset:].decode("utf-8"))


@pytest.mark.parametrize("name", ["ongoing", "oneoff"])
def test_contract_details_per_contract_kind(sandbox: Sandbox, name: str) -> None:
    c = RawClient(sandbox, name)
    r = c.call("GET", "permission-access/contract", {})
    assert r.status_code == 200, r.text
    details = r.json()
    assert set(details) == {
        "accessType",
        "application",
        "certificate",
        "certificateContractSchemaVersion",
        "expirationDate",
        "id",
        "partnerId",
        "type",
    }
    contract = sandbox.contract(name)
    assert details["id"] == contract.contract_id and details["accessType"] == "r"
    assert details["type"] == "x509" and details["certificateContractSchemaVersion"] == "5.0.0"
    application = details["application"]
    assert application["id"] == sandbox.application_id
    assert isinstance(application["resources"], dict) and isinstance(application["status"], int)
    assert isinstance(details["partnerId"], str) and details["partnerId"]
    expires = dt.datetime.fromtimestamp(details["expirationDate"] / 1000, dt.UTC)
    cert = x509.load_der_x509_certificate(base64.b64decode(details["certificate"]))
    assert cert.not_valid_after_utc == expires > dt.datetime.now(dt.UTC)
    assert cert.public_key().public_numbers() == contract.public_key.public_numbers()

    document = contract_document(details)
    request = document["dataRequest"]
    assert request["consentPolicy"]["shareType"] == name
    assert document["contractId"] == contract.contract_id
    categories = c.call("POST", "discovery/categories", {}).json()["data"]
    assert request["serviceGroups"] == [{"id": g["id"], "name": g["name"]} for g in categories]
    # Every account's group is asked for, and every file lies in the time range.
    asked = {g["id"] for g in request["serviceGroups"]}
    assert {a["serviceGroupId"] for a in sandbox.library.accounts} <= asked
    (time_range,) = request["timeRanges"]
    if name == "ongoing":
        assert time_range == {"type": "all"}
    else:
        since_ms = time_range["from"] * 1000
        assert set(time_range) == {"from"}
        assert all(f.latest.updated_date >= since_ms for f in sandbox.library.files)
        assert all(a["createdDate"] >= since_ms for a in sandbox.library.accounts)
    # The same answer every time (a cached, deterministic certificate).
    assert c.call("GET", "permission-access/contract", {}).json() == details


def test_contract_by_ids_needs_no_jwt(sandbox: Sandbox) -> None:
    """The iOS SDK's form: ``contract/{contractId}/{appId}?schemaVersion=5.0.0``, no auth."""
    c = RawClient(sandbox)
    contract = sandbox.contract("oneoff")
    r = c.http.get(
        f"{sandbox.base_url}permission-access/contract/{contract.contract_id}/"
        f"{sandbox.application_id}?schemaVersion=5.0.0",
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["id"] == contract.contract_id
    bad = c.http.get(f"{sandbox.base_url}permission-access/contract/nope/none", timeout=30)
    assert_error(bad, 404, "InvalidClient")


# -- the request JWT on every new endpoint --------------------------------------------


def new_endpoint_calls(c: RawClient, access: str) -> list[tuple[str, str, dict, dict]]:
    """(method, path, extra claims, headers) of every new JWT endpoint."""
    account = c.sandbox.library.accounts[0]["id"]
    user = {"access_token": access}
    return [
        ("POST", "discovery/sources", {}, {}),
        ("POST", "discovery/countries", {}, {}),
        ("POST", "discovery/platforms", {}, {}),
        ("POST", "discovery/categories", {}, {}),
        ("GET", "permission-access/contract", {}, {}),
        ("GET", REVOKE, user, {"accountId": account, "redirectUri": REDIRECT}),
        ("DELETE", SERVICE, user, {"accountId": account}),
    ]


def test_request_jwt_is_verified_on_every_new_endpoint(make_sandbox, other_key) -> None:
    client = RawClient(make_sandbox(files=4))  # its accounts get deleted
    tokens, _ = client.onboard()
    for method, path, claims, headers in new_endpoint_calls(client, tokens.access):
        where = f"{method} {path}"
        r = client.call(method, path, headers=dict(headers))
        assert_error(r, 406, "ValidationErrors")
        forged = client.sign(claims, key=other_key)
        r = client.call(method, path, token=forged, headers=dict(headers))
        assert_error(r, 406, "ValidationErrors")
        r = client.call(method, path, {**claims, "client_id": "nobody_x"}, headers=dict(headers))
        assert_error(r, 404, "InvalidClient")
        stale = int(time.time() * 1000) - 10 * 60_000
        r = client.call(method, path, {**claims, "timestamp": stale}, headers=dict(headers))
        assert_error(r, 406, "InvalidRequest")
        token = client.sign({**claims, "nonce": nonce()})
        used = jwt.decode(token, options={"verify_signature": False})["nonce"]
        first = client.call(method, path, token=token, headers=dict(headers))
        assert first.status_code in (200, 201, 204), (where, first.text)
        again = client.call(method, path, token=token, headers=dict(headers))
        assert_error(
            again,
            406,
            "InvalidRequest",
            f"The nonce provided in JWT payload ({used}) has already been used",
        )


def test_v17_only_calls_are_not_on_v15(sandbox: Sandbox, client: RawClient) -> None:
    base = sandbox.base_url_v15 + "/"
    for method, path in (
        ("POST", "discovery/sources"),
        ("POST", "discovery/categories"),
        ("DELETE", SERVICE),
        ("GET", REVOKE),
        ("GET", "permission-access/contract"),
    ):
        r = client.http.request(method, base + path, timeout=30)
        assert_error(r, 404, "NotFound")
