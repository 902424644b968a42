"""The sandbox's API v1.5 surface (protocol.md, v1.5), driven by a client written from the spec.

Plain requests, PyJWT and cryptography: nothing of privateshare's client. Covers
the v1.5 checks of the official SDK's tests from the server's side: session establishment and its
errors, the SDK status headers, the consent links (guest page and app), the
callback results, ongoing OAuth with ``redirect_uri`` and flat tokens, trigger
with ``session_key``, session-key-only reads, the hashed file format and
``accounts.json``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import brotli
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.sandbox import Sandbox

from .conftest import REDIRECT, b64url_decode, nonce, pkce


def decrypt_hashed(body: bytes, key: rsa.RSAPrivateKey, compression: str | None) -> bytes:
    """protocol.md#file-format: EK(256) || IV(16) || AES-256-CBC(SHA512(P) || P) decompressed."""
    assert len(body) >= 352 and len(body) % 16 == 0, len(body)
    oaep = asym_padding.OAEP(
        mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None
    )
    dsk = key.decrypt(body[:256], oaep)
    decryptor = Cipher(algorithms.AES(dsk), modes.CBC(body[256:272])).decryptor()
    padded = decryptor.update(body[272:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    digest, payload = plain[:64], plain[64:]
    assert hashlib.sha512(payload).digest() == digest, "Hash is not valid"
    if compression == "gzip":
        return gzip.decompress(payload)
    if compression == "brotli":
        return brotli.decompress(payload)
    return payload


def assert_error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["reference"]
    assert r.headers["X-Error-Code"] == code
    return error


def callback_params(response: requests.Response, callback: str = REDIRECT) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(callback.split("#")[0].split("?")[0])
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class Client15:
    """A minimal API v1.5 client, as the Node SDK v4 behaves (protocol.md, v1.5)."""

    def __init__(self, sandbox: Sandbox, contract: str = "ongoing") -> None:
        self.sandbox = sandbox
        # No trailing slash: paths join with "/" (protocol.md#addresses).
        self.base = sandbox.base_url_v15
        self.app_id = sandbox.application_id
        self.contract_id = sandbox.contract(contract).contract_id
        self.client_id = sandbox.client_id(contract)
        key = serialization.load_pem_private_key(  # checked by the sandbox
            sandbox.key_path(contract).read_bytes(),
            password=None,
            unsafe_skip_rsa_key_validation=True,
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        self.http = requests.Session()
        self.http.trust_env = False  # no proxies here; it re-reads the environment per call

    def session_body(self, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "appId": self.app_id,
            "contractId": self.contract_id,
            "sdkAgent": {"name": "js", "version": "4.0.0", "meta": {"node": "v14.0.0"}},
            "accept": {"compression": "gzip"},
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not None}

    def establish(self, **changes: Any) -> requests.Response:
        return self.http.post(
            f"{self.base}/permission-access/session", json=self.session_body(**changes), timeout=10
        )

    def session(self) -> dict[str, Any]:
        r = self.establish()
        assert r.status_code == 201, r.text
        return r.json()

    def sign(self, claims: dict[str, Any], key: Any = None) -> str:
        payload = {
            "client_id": self.client_id,
            "nonce": nonce(),
            "timestamp": int(time.time() * 1000),
        }
        payload.update(claims)
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None}, key or self.key, algorithm="PS512"
        )

    def post(
        self, path: str, claims: dict[str, Any], *, token: str | None = None
    ) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {token or self.sign(claims)}",
            "Content-Type": "application/json",
        }
        return self.http.post(f"{self.base}/{path}", headers=headers, timeout=10)

    def verify(self, server_token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(server_token)
        assert header["jku"] == self.base + "/jwks/oauth"
        (entry,) = [k for k in self.http.get(header["jku"], timeout=10).json()["keys"]]
        assert entry["kid"] == header["kid"]
        return jwt.decode(server_token, entry["pem"], algorithms=["PS512"])

    def preauthorize(
        self, *, challenge: bool = True, redirect_uri: str = REDIRECT
    ) -> dict[str, Any]:
        verifier, code_challenge = pkce()
        state = "state-" + nonce()[:8]
        claims = {
            "code_challenge": code_challenge if challenge else None,
            "code_challenge_method": "S256" if challenge else None,
            "redirect_uri": redirect_uri,
            "response_mode": "query",
            "response_type": "code",
            "state": state,
        }
        r = self.post("oauth/authorize", claims)
        assert r.status_code == 201, r.text
        assert set(r.json()) == {"token"}
        code = str(self.verify(r.json()["token"])["preauthorization_code"])
        return {"code": code, "verifier": verifier, "state": state}

    def app_link_query(self, session: dict[str, Any], callback: str, code: str | None) -> str:
        params = {"preauthorizationCode": code} if code else {}
        params.update(
            callbackUrl=callback,
            sessionKey=session["sessionKey"],
            appId=self.app_id,
            sdkVersion="4.0.0",
        )
        return urlencode(params)

    def open_app(self, session: dict[str, Any], callback: str = REDIRECT, code: str | None = None):
        url = (
            self.sandbox.app_url + "consent-access?" + self.app_link_query(session, callback, code)
        )
        return self.http.get(url, allow_redirects=False, timeout=10)

    def open_guest(self, session: dict[str, Any], callback: str = REDIRECT) -> requests.Response:
        url = (
            f"{self.sandbox.guest_url}?sessionExchangeToken={session['sessionExchangeToken']}"
            f"&callbackUrl={quote(callback, safe='')}"
        )
        return self.http.get(url, allow_redirects=False, timeout=10)

    def exchange(self, code: str, verifier: str | None, redirect_uri: str | None = REDIRECT):
        claims = {
            "code": code,
            "code_verifier": verifier,
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
        }
        return self.post("oauth/token", claims)

    def flat_token(self, response: requests.Response) -> dict[str, Any]:
        assert response.status_code == 201, response.text
        payload = self.verify(response.json()["token"])
        assert isinstance(payload["access_token"], str) and isinstance(
            payload["refresh_token"], str
        )
        assert isinstance(payload["expires_on"], int)
        assert time.time() < payload["expires_on"] < time.time() + 10 * 24 * 3600  # seconds
        return payload

    def onboard(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ongoing: session, pre-authorization, app consent, exchange -> (token, session)."""
        session = self.session()
        pre = self.preauthorize()
        params = callback_params(self.open_app(session, code=pre["code"]))
        assert params["result"] == "SUCCESS" and params["state"] == pre["state"]
        return self.flat_token(self.exchange(params["code"], pre["verifier"])), session

    def trigger(self, access: str, session_key: str, redirect_uri: str = REDIRECT):
        claims = {"access_token": access, "redirect_uri": redirect_uri, "session_key": session_key}
        return self.post("permission-access/trigger", claims)

    def file_list(self, session_key: str) -> requests.Response:
        return self.http.get(f"{self.base}/permission-access/query/{session_key}", timeout=10)

    def file(self, session_key: str, name: str) -> requests.Response:
        return self.http.get(
            f"{self.base}/permission-access/query/{session_key}/{name}",
            headers={"accept": "application/octet-stream"},
            timeout=30,
        )

    def download(self, session_key: str, name: str) -> tuple[bytes, dict[str, Any]]:
        r = self.file(session_key, name)
        assert r.status_code == 200, r.text
        meta = json.loads(b64url_decode(r.headers["x-metadata"]))
        return decrypt_hashed(r.content, self.key, meta.get("compression")), meta


@pytest.fixture
def c15(sandbox: Sandbox) -> Client15:
    return Client15(sandbox)


def test_establish_session_is_unauthenticated(c15: Client15) -> None:
    r = c15.establish(scope={"timeRanges": [{"last": "6m"}]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"expiry", "sessionKey", "sessionExchangeToken"}
    assert isinstance(body["sessionKey"], str) and isinstance(body["sessionExchangeToken"], str)
    assert body["expiry"] > time.time() * 1000  # ms
    assert "x-digi-sdk-status" not in r.headers


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"appId": "nope"}, 404, "InvalidConsentAccessApplication"),
        ({"contractId": "nope"}, 404, "InvalidContractId"),
        ({"sdkAgent": None}, 400, "SDKInvalid"),
        ({"sdkAgent": {"name": "js", "version": 4}}, 400, "SDKInvalid"),
        ({"appId": None}, 400, "ValidationErrors"),
        ({"scope": ["not", "an", "object"]}, 400, "ValidationErrors"),
    ],
)
def test_establish_session_errors(
    c15: Client15, changes: dict[str, Any], status: int, code: str
) -> None:
    assert_error(c15.establish(**changes), status, code)


def test_swapped_ids_and_a_body_that_is_not_json(c15: Client15) -> None:
    swapped = c15.establish(appId=c15.contract_id, contractId=c15.app_id)
    assert_error(swapped, 404, "InvalidConsentAccessApplication")
    r = c15.http.post(f"{c15.base}/permission-access/session", data=b"{", timeout=10)
    assert_error(r, 400, "ValidationErrors")


def test_sdk_status_headers_and_an_unsupported_version(make_sandbox: Any) -> None:
    sandbox = make_sandbox(
        sdk_status="deprecated", sdk_status_message="status-message-test", files=2
    )
    c15 = Client15(sandbox)
    r = c15.establish()
    assert r.status_code == 201
    assert r.headers["x-digi-sdk-status"] == "deprecated"
    assert r.headers["x-digi-sdk-status-message"] == "status-message-test"
    assert "x-digi-sdk-status" in c15.file_list(r.json()["sessionKey"]).headers
    v17 = requests.get(sandbox.jwks_url, timeout=10)
    assert "x-digi-sdk-status" not in v17.headers  # v1.7 answers never carry it
    unsupported = Client15(make_sandbox(sdk_status="unsupported", files=2))
    assert_error(unsupported.establish(), 403, "SDKVersionInvalid")


def test_guest_consent_then_session_key_only_reads_of_hashed_files(
    sandbox: Sandbox, c15: Client15
) -> None:
    session = c15.session()
    key = session["sessionKey"]
    pending = c15.file_list(key)
    assert pending.json() == {"status": {"state": "pending"}}
    assert_error(c15.file(key, "accounts.json"), 404, "FileNotFound")
    callback = REDIRECT + "?a=1&b=2#c"  # survives the round trip (protocol.md#consent)
    r = c15.open_guest(session, callback)
    assert r.status_code == 302
    assert r.headers["Location"] == REDIRECT + "?a=1&b=2&result=SUCCESS#c"
    listing = c15.file_list(key)  # no Authorization: the session key is the credential
    assert listing.status_code == 200
    body = listing.json()
    assert body["status"]["state"] == "completed"
    assert all(set(d) == {"state"} for d in body["status"]["details"].values())
    assert all(set(e) == {"name", "updatedDate"} for e in body["fileList"])
    truth = sandbox.ground_truth()
    assert {e["name"] for e in body["fileList"]} == set(truth)  # accounts.json is not listed
    for entry in body["fileList"]:
        plain, meta = c15.download(key, entry["name"])
        assert hashlib.sha256(plain).hexdigest() == truth[entry["name"]]
        assert "schema" not in meta["metadata"]
    accounts, _meta = c15.download(key, "accounts.json")
    assert json.loads(accounts) == list(sandbox.library.accounts)


def test_guest_page_refuses_foreign_callbacks_and_reports_bad_links(c15: Client15) -> None:
    session = c15.session()
    foreign = c15.open_guest(session, "http://evil.example/callback")
    assert foreign.status_code == 400 and "text/html" in foreign.headers["Content-Type"]
    unknown = c15.open_guest({"sessionExchangeToken": "unknown"})
    assert callback_params(unknown) == {"result": "ERROR"}
    assert callback_params(c15.open_guest(session)) == {"result": "SUCCESS"}
    assert callback_params(c15.open_guest(session)) == {"result": "ERROR"}  # used


def test_consent_pages_share_or_cancel_without_auto_consent(make_sandbox: Any) -> None:
    c15 = Client15(make_sandbox(auto_consent=False, files=2))
    session = c15.session()
    page = c15.open_guest(session)
    assert page.status_code == 200 and 'value="cancel"' in page.text
    form = {"sessionKey": session["sessionKey"], "callbackUrl": REDIRECT, "decision": "cancel"}
    cancelled = c15.http.post(
        c15.sandbox.origin + "/apps/quark/v1/consent", data=form, allow_redirects=False, timeout=10
    )
    assert callback_params(cancelled) == {"result": "CANCEL"}
    pre = c15.preauthorize()
    page = c15.open_app(session, code=pre["code"])
    assert page.status_code == 200 and pre["code"] in page.text
    form = {**form, "preauthorizationCode": pre["code"], "decision": "share"}
    shared = c15.http.post(
        c15.sandbox.app_url + "consent", data=form, allow_redirects=False, timeout=10
    )
    params = callback_params(shared)
    assert params["result"] == "SUCCESS" and params["state"] == pre["state"] and params["code"]


def test_ongoing_consent_flat_tokens_and_reads(sandbox: Sandbox, c15: Client15) -> None:
    token, session = c15.onboard()
    assert set(token) == {"access_token", "refresh_token", "expires_on"}
    listing = c15.file_list(session["sessionKey"]).json()
    assert listing["status"]["state"] == "completed"
    name = listing["fileList"][0]["name"]
    plain, _meta = c15.download(session["sessionKey"], name)
    assert hashlib.sha256(plain).hexdigest() == sandbox.ground_truth()[name]


def test_code_exchange_rules(c15: Client15) -> None:
    def consented(challenge: bool = True) -> tuple[str, dict[str, Any]]:
        pre = c15.preauthorize(challenge=challenge)
        params = callback_params(c15.open_app(c15.session(), code=pre["code"]))
        return params["code"], pre

    code, pre = consented()
    assert_error(c15.exchange(code, None), 400, "InvalidGrant")  # PKCE was used: required
    assert_error(c15.exchange(code, pkce()[0]), 400, "InvalidGrant")
    assert_error(c15.exchange(code, pre["verifier"], redirect_uri=None), 400, "ValidationErrors")
    other = "http://localhost:8765/callback"  # allowed, but not the code's
    assert_error(c15.exchange(code, pre["verifier"], redirect_uri=other), 400, "InvalidGrant")
    c15.flat_token(c15.exchange(code, pre["verifier"]))
    assert_error(c15.exchange(code, pre["verifier"]), 400, "InvalidGrant")  # once only
    code, _pre = consented(challenge=False)
    c15.flat_token(c15.exchange(code, None))  # no PKCE: no verifier needed (protocol.md#tokens)


def test_trigger_with_session_key_and_refresh_rotation(c15: Client15) -> None:
    token, _first = c15.onboard()
    session = c15.session()
    r = c15.trigger(token["access_token"], session["sessionKey"])
    assert r.status_code == 202 and r.content == b""
    assert c15.file_list(session["sessionKey"]).json()["status"]["state"] == "completed"
    assert_error(c15.trigger("bogus", c15.session()["sessionKey"]), 401, "InvalidToken")
    assert_error(c15.trigger(token["access_token"], "unknown"), 404, "InvalidSession")
    refresh = {"grant_type": "refresh_token", "redirect_uri": REDIRECT}
    fresh = c15.flat_token(
        c15.post("oauth/token", {**refresh, "refresh_token": token["refresh_token"]})
    )
    assert fresh["refresh_token"] != token["refresh_token"]
    old = c15.post("oauth/token", {**refresh, "refresh_token": token["refresh_token"]})
    assert_error(old, 401, "InvalidToken")  # rotated away
    no_redirect = c15.post(
        "oauth/token", {"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]}
    )
    assert_error(no_redirect, 400, "ValidationErrors")
    assert c15.trigger(fresh["access_token"], c15.session()["sessionKey"]).status_code == 202
    # Another user's token cannot take a session someone already consented to.
    other, _ = c15.onboard()
    assert_error(c15.trigger(other["access_token"], session["sessionKey"]), 404, "InvalidSession")


def test_request_jwts_are_verified(sandbox: Sandbox, c15: Client15) -> None:
    claims = {
        "redirect_uri": REDIRECT,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    token = c15.sign(claims)
    assert c15.post("oauth/authorize", claims, token=token).status_code == 201
    assert_error(c15.post("oauth/authorize", claims, token=token), 406, "InvalidRequest")  # nonce
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_error(
        c15.post("oauth/authorize", claims, token=c15.sign(claims, other)), 406, "ValidationErrors"
    )
    stale = c15.sign({**claims, "timestamp": int(time.time() * 1000) - 3_600_000})
    assert_error(c15.post("oauth/authorize", claims, token=stale), 406, "InvalidRequest")
    evil = {**claims, "redirect_uri": "http://evil.example/callback"}
    assert_error(c15.post("oauth/authorize", evil), 404, "InvalidRedirectUri")
    oneoff = Client15(sandbox, "oneoff")
    assert_error(oneoff.post("oauth/authorize", claims), 403, "InsufficientScope")


def test_app_link_errors_call_back_with_error(c15: Client15) -> None:
    session = c15.session()
    pre = c15.preauthorize()
    wrong_app = c15.app_link_query(session, REDIRECT, pre["code"]).replace(c15.app_id, "other-app")
    r = c15.http.get(c15.sandbox.app_url + "consent-access?" + wrong_app, allow_redirects=False)
    assert callback_params(r)["result"] == "ERROR"
    other = "http://localhost:8765/callback"  # allowed, but not the pre-authorization's
    assert callback_params(c15.open_app(session, other, pre["code"]), other)["result"] == "ERROR"
    assert callback_params(c15.open_app(session, code=pre["code"]))["result"] == "SUCCESS"
    assert callback_params(c15.open_app(c15.session(), code=pre["code"]))["result"] == "ERROR"


def test_sessions_stay_on_their_api_version(sandbox: Sandbox, c15: Client15, client: Any) -> None:
    session = c15.session()
    callback_params(c15.open_guest(session))
    v17 = client.file_list(session["sessionKey"], None)
    assert_error(v17, 404, "InvalidSession")
    auth = client.authorize()
    assert_error(c15.file_list(auth["session"]["key"]), 404, "InvalidSession")


def test_v15_client_configs_are_written(sandbox: Sandbox) -> None:
    import tomllib

    for name, filename in (
        ("ongoing", "privateshare-v15.toml"),
        ("oneoff", "privateshare-v15-oneoff.toml"),
    ):
        path = sandbox.config_path(name, "v1.5")
        assert path.name == filename
        config = tomllib.loads(path.read_text())
        assert config["digime"] == {
            "api": "v1.5",
            "application_id": sandbox.application_id,
            "contract_id": sandbox.contract(name).contract_id,
            "base_url": sandbox.base_url_v15,
            "onboard_url": sandbox.app_url,
            "redirect_uri": REDIRECT,
        }
        assert config["keys"] == {"type": "file", "path": f"{name}.pem"}
        assert config["tokens"] == {"type": "file", "path": "tokens-v15"}
