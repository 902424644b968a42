"""Fixtures for the sandbox tests: a running sandbox and a client written from the protocol.

The client here is deliberately NOT privateshare's: plain ``requests``, PyJWT and
``cryptography``, following docs/protocol.md, so a protocol mistake cannot hide on
both sides at once.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import brotli
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.sandbox import Sandbox, SandboxSettings

REDIRECT = "http://127.0.0.1:8765/callback"
ALNUM = string.ascii_letters + string.digits


def nonce() -> str:
    """32 alphanumerics, as N16 makes them."""
    return "".join(secrets.choice(ALNUM) for _ in range(32))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pkce() -> tuple[str, str]:
    """(verifier, S256 challenge) exactly as N16: base64url of 32 alphanumerics."""
    verifier = b64url("".join(secrets.choice(ALNUM) for _ in range(32)).encode())
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge


def decrypt(body: bytes, key: rsa.RSAPrivateKey, compression: str | None) -> bytes:
    """protocol.md#file-format: EK(256) || IV(16) || AES-256-CBC, then decompress."""
    assert len(body) >= 288 and len(body) % 16 == 0, len(body)
    dsk = key.decrypt(
        body[:256],
        asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )
    decryptor = Cipher(algorithms.AES(dsk), modes.CBC(body[256:272])).decryptor()
    padded = decryptor.update(body[272:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    if compression == "gzip":
        return gzip.decompress(plain)
    if compression == "brotli":
        return brotli.decompress(plain)
    return plain


@dataclass
class Tokens:
    access: str
    refresh: str
    payload: dict[str, Any]


class RawClient:
    """A minimal digi.me v1.7 client: signs PS512 JWTs, does PKCE, verifies server tokens."""

    def __init__(self, sandbox: Sandbox, contract: str = "ongoing") -> None:
        self.sandbox = sandbox
        self.base_url = sandbox.base_url
        self.client_id = sandbox.client_id(contract)
        self.key = serialization.load_pem_private_key(  # checked by the sandbox
            sandbox.key_path(contract).read_bytes(),
            password=None,
            unsafe_skip_rsa_key_validation=True,
        )
        self.http = requests.Session()
        self.http.trust_env = False  # no proxies here; it re-reads the environment per call

    def sign(self, claims: dict[str, Any], *, key: Any = None, alg: str = "PS512") -> str:
        payload = {
            "client_id": self.client_id,
            "nonce": nonce(),
            "timestamp": int(time.time() * 1000),
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self.key, algorithm=alg)

    def call(
        self,
        method: str,
        path: str,
        claims: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        json_body: Any = None,
        **kwargs: Any,
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is None and claims is not None:
            token = self.sign(claims)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(
            method, self.base_url + path, headers=headers, json=json_body, timeout=30, **kwargs
        )

    def verify(self, server_token: str) -> dict[str, Any]:
        """protocol.md#server-tokens: fetch the jku, pick the kid, verify PS512 only."""
        header = jwt.get_unverified_header(server_token)
        assert isinstance(header["jku"], str) and isinstance(header["kid"], str)
        assert header["jku"].startswith(self.sandbox.origin)
        jwks = self.http.get(header["jku"], timeout=10).json()
        (entry,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
        assert entry["pem"].startswith("-----BEGIN RSA PUBLIC KEY-----")
        return jwt.decode(server_token, entry["pem"], algorithms=["PS512"])

    # -- the ongoing flow ------------------------------------------------------------
    def authorize_request(self, **claims: Any) -> tuple[requests.Response, dict[str, Any]]:
        """``POST oauth/authorize`` as sent: the response and the claims (with the verifier)."""
        verifier, challenge = pkce()
        base = {
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "redirect_uri": REDIRECT,
            "response_mode": "query",
            "response_type": "code",
            "state": "state-" + nonce()[:8],
        }
        base.update(claims)
        body = {"agent": {"sdk": {"name": "python-tests", "version": "0", "meta": {}}}}
        r = self.call("POST", "oauth/authorize", base, json_body=body)
        return r, {**base, "verifier": verifier}

    def authorize(self, **claims: Any) -> dict[str, Any]:
        r, base = self.authorize_request(**claims)
        verifier = base["verifier"]
        assert r.status_code == 201, r.text
        payload = self.verify(r.json()["token"])
        return {
            "code": str(payload["preauthorization_code"]),
            "session": r.json()["session"],
            "verifier": verifier,
            "state": base["state"],
        }

    def consent(self, code: str, page: str = "authorize", **params: str) -> dict[str, str]:
        """Open the onboarding page (auto-consent) and return the callback parameters."""
        query = urlencode({"code": code, "sourceType": "pull", **params})
        r = self.http.get(
            f"{self.sandbox.onboard_url}{page}?{query}", allow_redirects=False, timeout=10
        )
        assert r.status_code == 302, r.text
        location = r.headers["Location"]
        assert location.startswith(REDIRECT)
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def exchange(self, code: str, verifier: str) -> requests.Response:
        claims = {"code": code, "code_verifier": verifier, "grant_type": "authorization_code"}
        return self.call("POST", "oauth/token", claims)

    def tokens(self, response: requests.Response) -> Tokens:
        assert response.status_code in (200, 201), response.text
        payload = self.verify(response.json()["token"])
        return Tokens(payload["access_token"]["value"], payload["refresh_token"]["value"], payload)

    def onboard(self) -> tuple[Tokens, dict[str, Any]]:
        """Authorize, consent, exchange: (tokens, session)."""
        auth = self.authorize()
        callback = self.consent(auth["code"])
        assert callback["success"] == "true"
        assert callback["state"] == auth["state"]
        tokens = self.tokens(self.exchange(callback["code"], auth["verifier"]))
        return tokens, auth["session"]

    def refresh(self, refresh_token: str) -> requests.Response:
        return self.call(
            "POST", "oauth/token", {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    def file_list(self, session_key: str, access: str | None) -> requests.Response:
        return self.call("GET", f"permission-access/query/{session_key}", {"access_token": access})

    def file(self, session_key: str, name: str, access: str | None, method: str = "GET"):
        return self.call(
            method, f"permission-access/query/{session_key}/{name}", {"access_token": access}
        )

    def trigger(self, access: str, body: dict[str, Any] | None = None) -> requests.Response:
        return self.call(
            "POST", "permission-access/trigger", {"access_token": access}, json_body=body or {}
        )

    def metadata(self, response: requests.Response) -> dict[str, Any]:
        return json.loads(b64url_decode(response.headers["x-metadata"]))

    def download(self, session_key: str, name: str, access: str | None) -> bytes:
        r = self.file(session_key, name, access)
        assert r.status_code == 200, r.text
        meta = self.metadata(r)
        return decrypt(r.content, self.key, meta.get("compression"))


@pytest.fixture(scope="session")
def key_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key cache for the whole session: RSA keys are generated once."""
    return tmp_path_factory.mktemp("sandbox-keys")


@pytest.fixture(scope="session")
def sandbox(key_cache: Path) -> Iterator[Sandbox]:
    """An instant sandbox (first poll is final) shared by the session."""
    settings = SandboxSettings.instant(files=12, updated_fraction=0.3)
    with Sandbox(settings, key_cache=key_cache) as sb:
        yield sb


@pytest.fixture(scope="session")
def other_key() -> rsa.RSAPrivateKey:
    """A key no contract has: what a forged request JWT is signed with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def client(sandbox: Sandbox) -> RawClient:
    return RawClient(sandbox)


@pytest.fixture
def make_sandbox(key_cache: Path) -> Iterator[Any]:
    """Start sandboxes with other settings (same keys); all stop after the test."""
    started: list[Sandbox] = []

    def make(**changes: Any) -> Sandbox:
        settings = SandboxSettings.instant(**changes)
        sb = Sandbox(settings, key_cache=key_cache).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
