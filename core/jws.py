"""Request JWTs we sign and server JWTs we verify (protocol.md#signing, protocol.md#server-tokens).

Request JWTs are signed through the key handle (so the key may live in an HSM),
which is why we build the compact JWS ourselves rather than hand PyJWT a PEM.
Server tokens are verified with PyJWT against the JWKS, which we fetch only from
the configured API origin (unlike the Node SDK, which follows any ``jku``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import ValidationError
from .keys import KeyHandle
from .transport import origin

ALPHANUMERIC = string.ascii_letters + string.digits
_HEADER = base64.urlsafe_b64encode(b'{"alg":"PS512","typ":"JWT"}').rstrip(b"=")


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(text: str | bytes) -> bytes:
    if isinstance(text, str):
        text = text.encode("ascii")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def random_alphanumeric(length: int) -> str:
    """Random ``[a-zA-Z0-9]`` characters from the OS CSPRNG, as the Node SDK's nonce.

    One ``urandom`` call per nonce, rejection-sampled so every character is uniform
    (248 = 4 x 62: bytes from 248 up are dropped).
    """
    out: list[str] = []
    while len(out) < length:
        out.extend(ALPHANUMERIC[b % 62] for b in secrets.token_bytes(length + 8) if b < 248)
    return "".join(out[:length])


def sign_request(key: KeyHandle, claims: dict[str, Any], *, now_ms: int | None = None) -> str:
    """A PS512 request JWT: the given claims plus ``nonce`` and ``timestamp`` (ms)."""
    payload = {
        **{k: v for k, v in claims.items() if v is not None},
        "nonce": random_alphanumeric(32),
        "timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
    }
    signing_input = _HEADER + b"." + b64url(msgspec.json.encode(payload))
    return (signing_input + b"." + b64url(key.sign_ps512(signing_input))).decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge) per RFC 7636 S256, as protocol.md#signing builds them."""
    verifier = b64url(random_alphanumeric(32).encode("ascii")).decode("ascii")
    challenge = b64url(hashlib.sha256(verifier.encode("ascii")).digest()).decode("ascii")
    return verifier, challenge


class InvalidServerToken(ValidationError):
    """A server token that is itself not authentic or not well formed.

    Unlike a failure to fetch the keys that check it (the server's JWKS being
    unreachable or incomplete for a while), trying again later will not help.
    """


class JwksCache:
    """Fetches JWKS documents from the API origin only, and keeps them briefly."""

    def __init__(self, api_base_url: str, fetch: Callable[[str], Any], ttl: float = 300.0) -> None:
        self.api_origin = origin(api_base_url)
        self._fetch = fetch
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, rsa.RSAPublicKey]]] = {}

    def key(self, jku: str, kid: str) -> rsa.RSAPublicKey:
        if origin(jku) is None or origin(jku) != self.api_origin:
            raise InvalidServerToken(
                f"the server token's key URL (jku) {jku!r} is not on the API origin "
                f"{self.api_origin}; refusing to trust keys from elsewhere"
            )
        keys = self._keys(jku, refresh=False)
        if kid not in keys:
            keys = self._keys(jku, refresh=True)  # the server may have rotated its key
        if kid not in keys:
            raise ValidationError(f"the JWKS at {jku} has no key with kid {kid!r}")
        return keys[kid]

    def _keys(self, jku: str, *, refresh: bool) -> dict[str, rsa.RSAPublicKey]:
        with self._lock:
            cached = self._cache.get(jku)
            if cached and not refresh and time.monotonic() - cached[0] < self._ttl:
                return cached[1]
        keys = parse_jwks(self._fetch(jku), jku)
        with self._lock:
            self._cache[jku] = (time.monotonic(), keys)
        return keys


def parse_jwks(document: Any, where: str) -> dict[str, rsa.RSAPublicKey]:
    """kid -> RSA public key, from ``pem`` (as digi.me serves it) or ``n``/``e``."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValidationError(f"{where} did not return a JWKS ({{'keys': [...]}})")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        try:
            if isinstance(entry.get("pem"), str):
                key = load_pem_public_key(entry["pem"].encode("ascii"))
            else:
                key = rsa.RSAPublicNumbers(
                    int.from_bytes(b64url_decode(entry["e"]), "big"),
                    int.from_bytes(b64url_decode(entry["n"]), "big"),
                ).public_key()
        except (KeyError, ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            keys[entry["kid"]] = key
    return keys


def verify_server_token(token: Any, jwks: JwksCache, *, verify_exp: bool = True) -> dict[str, Any]:
    """The verified payload of a server token; PS512 only (protocol.md#server-tokens).

    :class:`InvalidServerToken` when the token itself fails; a plain
    :class:`ValidationError` (or a transport or server error) when its key could not
    be had. ``verify_exp=False`` for an answer kept since it arrived and checked later:
    it was fresh when we received it.
    """
    if not isinstance(token, str) or not token:
        raise InvalidServerToken("the server's answer has no token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidServerToken(f"the server token is not a JWT: {exc}") from None
    jku, kid = header.get("jku"), header.get("kid")
    if not isinstance(jku, str) or not isinstance(kid, str):
        raise InvalidServerToken("the server token has no jku or kid header")
    key = jwks.key(jku, kid)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=["PS512"],
            options={"verify_aud": False, "verify_exp": verify_exp},
        )
    except jwt.PyJWTError as exc:
        raise InvalidServerToken(f"the server token failed verification: {exc}") from None
