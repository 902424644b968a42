"""OAuth, request-JWT verification and token handling, driven with a hand-written client."""

from __future__ import annotations

import time

import jwt
import pytest

from .conftest import REDIRECT, RawClient, nonce, pkce


def assert_error(r, status: int, code: str, message: str | None = None) -> dict:
    """A documented error: status, JSON body and X-Error-* headers agree."""
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["reference"], str) and error["reference"]
    if message is not None:
        assert error["message"] == message
    assert r.headers["X-Error-Code"] == code
    assert r.headers["X-Error-Message"] == error["message"]
    assert r.headers["X-Error-Reference"] == error["reference"]
    return error


def test_authorize_returns_verifiable_token_and_session(client: RawClient) -> None:
    auth = client.authorize()
    assert auth["code"]
    session = auth["session"]
    assert isinstance(session["key"], str)
    assert isinstance(session["expiry"], int)
    assert session["expiry"] > time.time() * 1000  # ms


def test_server_token_header_and_jwks(client: RawClient) -> None:
    r = client.call(
        "POST",
        "oauth/authorize",
        {
            "code_challenge": pkce()[1],
            "redirect_uri": REDIRECT,
            "code_challenge_method": "S256",
        },
    )
    header = jwt.get_unverified_header(r.json()["token"])
    assert header["alg"] == "PS512"
    assert header["jku"] == client.sandbox.base_url + "jwks/oauth"
    jwks = client.http.get(header["jku"]).json()
    (key,) = jwks["keys"]
    assert set(key) >= {"kid", "kty", "n", "e", "pem"}
    assert key["kid"] == header["kid"] and key["kty"] == "RSA"
    assert key["pem"].startswith("-----BEGIN RSA PUBLIC KEY-----")
    # Any other algorithm must be refused by a verifier using the allow-list.
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(r.json()["token"], key["pem"], algorithms=["RS256"])


def test_invalid_redirect_uri(client: RawClient) -> None:
    r = client.call(
        "POST",
        "oauth/authorize",
        {
            "code_challenge": pkce()[1],
            "code_challenge_method": "S256",
            "redirect_uri": "https://evil.example/cb",
        },
    )
    assert_error(
        r, 404, "InvalidRedirectUri", "The redirect_uri (https://evil.example/cb) is invalid"
    )


def test_missing_bearer_and_garbage_bearer(client: RawClient) -> None:
    assert_error(
        client.call("GET", "permission-access/accounts"),
        406,
        "ValidationErrors",
        "Parameter validation errors",
    )
    for value in ("Bearer", "Basic abc", "Bearer not-a-jwt", "Bearer a.b.c"):
        r = client.call("GET", "permission-access/accounts", headers={"Authorization": value})
        assert_error(r, 406, "ValidationErrors")


def test_bad_signature_and_other_algorithms(client: RawClient, other_key) -> None:
    claims = {"code_challenge": pkce()[1], "redirect_uri": REDIRECT}
    forged = client.sign(claims, key=other_key)
    assert_error(client.call("POST", "oauth/authorize", token=forged), 406, "ValidationErrors")
    rs512 = client.sign(claims, alg="RS512")
    assert_error(client.call("POST", "oauth/authorize", token=rs512), 406, "ValidationErrors")
    hs = client.sign(claims, key="secret-secret-secret-secret-secret!", alg="HS256")
    assert_error(client.call("POST", "oauth/authorize", token=hs), 406, "ValidationErrors")
    unsigned = jwt.encode(
        {"client_id": client.client_id, "nonce": nonce(), "timestamp": 1}, None, algorithm="none"
    )
    assert_error(client.call("POST", "oauth/authorize", token=unsigned), 406, "ValidationErrors")


def test_unknown_client(client: RawClient) -> None:
    token = client.sign({"client_id": "nobody_nothing"})
    assert_error(
        client.call("GET", "permission-access/sample/datasets/1", token=token),
        404,
        "InvalidClient",
        "The client_id (nobody_nothing) is invalid",
    )


def test_nonce_reuse_rejected_and_fresh_retry_succeeds(client: RawClient) -> None:
    token = client.sign({})
    assert client.call("GET", "permission-access/sample/datasets/1", token=token).status_code == 200
    r = client.call("GET", "permission-access/sample/datasets/1", token=token)
    used = jwt.decode(token, options={"verify_signature": False})["nonce"]
    assert_error(
        r,
        406,
        "InvalidRequest",
        f"The nonce provided in JWT payload ({used}) has already been used",
    )
    assert client.call("GET", "permission-access/sample/datasets/1", {}).status_code == 200


def test_timestamp_window(client: RawClient) -> None:
    now = int(time.time() * 1000)
    for skew in (-10 * 60_000, 10 * 60_000):
        r = client.call("GET", "permission-access/sample/datasets/1", {"timestamp": now + skew})
        assert_error(r, 406, "InvalidRequest")
    r = client.call("GET", "permission-access/sample/datasets/1", {"timestamp": now - 60_000})
    assert r.status_code == 200
    # Seconds instead of milliseconds is a mistake the window catches.
    r = client.call("GET", "permission-access/sample/datasets/1", {"timestamp": now // 1000})
    assert_error(r, 406, "InvalidRequest")


def test_missing_nonce_or_timestamp(client: RawClient) -> None:
    for drop in ("nonce", "timestamp"):
        token = client.sign({drop: None})
        r = client.call("GET", "permission-access/sample/datasets/1", token=token)
        assert_error(r, 406, "ValidationErrors")


def test_code_exchange_token_payload(client: RawClient) -> None:
    tokens, _session = client.onboard()
    p = tokens.payload
    assert p["token_type"] == "Bearer"
    assert isinstance(p["sub"], str) and isinstance(p["consentid"], str)
    assert isinstance(p["identifier"]["id"], str)
    now = time.time()
    for kind in ("access_token", "refresh_token"):
        assert isinstance(p[kind]["value"], str)
        assert now < p[kind]["expires_on"] < now + 10 * 365 * 86400  # Unix seconds


def test_pkce_mismatch_and_code_reuse(client: RawClient) -> None:
    auth = client.authorize()
    callback = client.consent(auth["code"])
    wrong, _ = pkce()
    assert_error(client.exchange(callback["code"], wrong), 400, "InvalidGrant")
    assert client.exchange(callback["code"], auth["verifier"]).status_code == 201
    assert_error(client.exchange(callback["code"], auth["verifier"]), 400, "InvalidGrant")


def test_callback_parameters(client: RawClient) -> None:
    auth = client.authorize()
    callback = client.consent(auth["code"])
    assert callback["success"] == "true"
    assert callback["state"] == auth["state"]
    refs = {a["reference"] for a in client.sandbox.library.accounts}
    assert callback["accountReference"] in refs
    # The pre-authorization code is spent.
    r = client.http.get(client.sandbox.onboard_url + "authorize?code=" + auth["code"])
    assert r.status_code == 404


def test_refresh_rotates(client: RawClient) -> None:
    tokens, _ = client.onboard()
    before = client.sandbox.stats()["refresh"]
    new = client.tokens(client.refresh(tokens.refresh))
    assert new.refresh != tokens.refresh and new.access != tokens.access
    assert new.payload["sub"] == tokens.payload["sub"]
    assert_error(
        client.refresh(tokens.refresh), 401, "InvalidToken", "The token (refresh_token) is invalid"
    )
    assert client.tokens(client.refresh(new.refresh)).access
    assert client.sandbox.stats()["refresh"] == before + 3
    stats = client.http.get(client.sandbox.origin + "/_sandbox/stats").json()
    assert stats["refresh"] == before + 3


def test_unknown_access_token(client: RawClient) -> None:
    r = client.trigger("not-a-token")
    assert_error(r, 401, "InvalidToken", "The token (access_token) is invalid")
    r = client.call("POST", "permission-access/trigger", {})
    assert_error(r, 401, "InvalidToken")


def test_expired_tokens(make_sandbox) -> None:
    # Lifetimes long enough for a loaded machine to use the tokens once; then wait out
    # the later expiry of the two (whole seconds) rather than a fixed time.
    sb = make_sandbox(access_token_lifetime=4, refresh_token_lifetime=4)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    assert c.trigger(tokens.access).status_code == 202
    expires = max(tokens.payload[k]["expires_on"] for k in ("access_token", "refresh_token"))
    time.sleep(max(0.0, expires - time.time()) + 1.1)
    assert_error(
        c.trigger(tokens.access), 401, "InvalidToken", "The token (access_token) is expired"
    )
    assert_error(
        c.refresh(tokens.refresh), 401, "InvalidToken", "The token (refresh_token) is expired"
    )


def test_access_token_max_uses_then_refresh(make_sandbox) -> None:
    sb = make_sandbox(access_token_max_uses=2)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    assert c.trigger(tokens.access).status_code == 202
    assert c.trigger(tokens.access).status_code == 202
    assert_error(
        c.trigger(tokens.access), 401, "InvalidToken", "The token (access_token) is expired"
    )
    fresh = c.tokens(c.refresh(tokens.refresh))
    assert c.trigger(fresh.access).status_code == 202
    assert sb.stats()["refresh"] == 1


def test_revoke_access_on_refresh(make_sandbox) -> None:
    sb = make_sandbox(revoke_access_on_refresh=True)
    c = RawClient(sb)
    tokens, _ = c.onboard()
    c.tokens(c.refresh(tokens.refresh))
    assert_error(c.trigger(tokens.access), 401, "InvalidToken")


def test_reauthorize_with_token_reference(client: RawClient) -> None:
    tokens, _ = client.onboard()
    verifier, challenge = pkce()
    r = client.call(
        "POST",
        "oauth/token/reference",
        {
            "access_token": tokens.access,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "redirect_uri": REDIRECT,
            "state": "again",
        },
        json_body={"agent": {"sdk": {"name": "t", "version": "0"}}, "actions": {}},
    )
    assert r.status_code == 201, r.text
    code = client.verify(r.json()["token"])["reference_code"]
    assert r.json()["session"]["key"]
    callback = client.consent(code, page="user-reauth")
    assert callback["success"] == "true" and callback["state"] == "again"
    renewed = client.tokens(client.exchange(callback["code"], verifier))
    assert renewed.payload["sub"] == tokens.payload["sub"]


def test_token_reference_rejects_unknown_token(client: RawClient) -> None:
    r = client.call(
        "POST", "oauth/token/reference", {"access_token": "nope", "redirect_uri": REDIRECT}
    )
    assert_error(r, 401, "InvalidToken", "The token (access_token) is invalid")


def test_onboard_service_page(client: RawClient) -> None:
    tokens, _ = client.onboard()
    r = client.call(
        "POST",
        "oauth/token/reference",
        {"access_token": tokens.access, "redirect_uri": REDIRECT, "state": "s1"},
    )
    code = client.verify(r.json()["token"])["reference_code"]
    callback = client.consent(code, page="onboard", service="30")
    assert callback == {"success": "true", "state": "s1"}


def test_authorize_with_existing_token_keeps_user(client: RawClient) -> None:
    tokens, _ = client.onboard()
    auth = client.authorize(access_token=tokens.access)
    callback = client.consent(auth["code"])
    again = client.tokens(client.exchange(callback["code"], auth["verifier"]))
    assert again.payload["sub"] == tokens.payload["sub"]


def test_unsupported_grant_and_missing_claims(client: RawClient) -> None:
    assert_error(
        client.call("POST", "oauth/token", {"grant_type": "password"}), 400, "ValidationErrors"
    )
    assert_error(client.call("POST", "oauth/token", {}), 400, "ValidationErrors")
    assert_error(
        client.call("POST", "oauth/token", {"grant_type": "authorization_code"}),
        400,
        "ValidationErrors",
    )
    r = client.call("POST", "oauth/authorize", {"redirect_uri": REDIRECT})
    assert_error(r, 400, "ValidationErrors")
    r = client.call(
        "POST",
        "oauth/authorize",
        {"redirect_uri": REDIRECT, "code_challenge": "x" * 43, "code_challenge_method": "plain"},
    )
    assert_error(r, 400, "ValidationErrors")
