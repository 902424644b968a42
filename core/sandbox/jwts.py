"""Request JWT verification and server token signing, as digi.me does them.

Every request carries a client-assertion JWT signed PS512 with the contract
key (protocol.md#signing); the sandbox's answers carry JWTs signed PS512 with its own
key, whose public half it serves as a JWKS at the ``jku`` (protocol.md#server-tokens).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import errors
from .registry import Contract, Registry

ALGORITHM = "PS512"
#: RFC 7518 PS512: RSASSA-PSS, SHA-512, MGF1-SHA-512, salt as long as the digest.
PS512_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def bearer_token(authorization: str | None) -> str:
    """The JWT from an ``Authorization: Bearer`` header, or 406 ValidationErrors."""
    if not authorization:
        raise errors.bad_bearer()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or token.count(".") != 2:
        raise errors.bad_bearer()
    return token


def _segment(text: str) -> bytes:
    """Strict base64url (no padding in the token, no stray characters)."""
    if "=" in text:
        raise ValueError("padded base64url segment")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _json_segment(text: str) -> dict[str, Any]:
    value = json.loads(_segment(text))
    if not isinstance(value, dict):
        raise ValueError("a JWT header and payload must be JSON objects")
    return value


def verify_request(
    authorization: str | None, registry: Registry, *, now_ms: int, window_ms: int
) -> tuple[Contract, dict[str, Any]]:
    """Check a request JWT's algorithm, client, signature and timestamp.

    Returns the contract and the claims. The nonce is checked by the caller,
    against shared state, only after the signature proved who sent it. (The
    JWS is checked here with ``cryptography`` directly: it is the sandbox's
    hot path and PyJWT's generic decoding costs several times the RSA check.)
    """
    token = bearer_token(authorization)
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header = _json_segment(header_b64)
        claims = _json_segment(payload_b64)
        signature = _segment(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise errors.bad_bearer() from exc
    if header.get("alg") != ALGORITHM:
        raise errors.bad_bearer()
    client_id = claims.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise errors.bad_bearer()
    contract = registry.contracts.get(client_id)
    if contract is None:
        raise errors.invalid_client(client_id)
    try:
        contract.public_key.verify(
            signature, f"{header_b64}.{payload_b64}".encode("ascii"), PS512_PADDING, hashes.SHA512()
        )
    except (InvalidSignature, ValueError) as exc:
        raise errors.bad_bearer() from exc
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp * 1000 < now_ms:
        raise errors.bad_bearer()
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise errors.bad_bearer()
    timestamp = claims.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise errors.bad_bearer()
    if abs(now_ms - timestamp) > window_ms:
        raise errors.ApiError(
            406,
            "InvalidRequest",
            f"The timestamp provided in JWT payload ({timestamp}) is outside the allowed "
            f"window of {window_ms // 1000} seconds",
        )
    return contract, claims


def require_str(claims: Mapping[str, Any], name: str) -> str:
    """A required string claim, or 400 ValidationErrors naming it."""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise errors.validation(f"the JWT claim {name!r} is required and must be a string")
    return value


class ServerSigner:
    """Signs the sandbox's own tokens and publishes the matching JWKS."""

    def __init__(self, key: rsa.RSAPrivateKey, kid: str, jku: str) -> None:
        self._key = key
        self.kid = kid
        self.jku = jku

    def sign(self, payload: Mapping[str, Any]) -> str:
        """A compact JWS, PS512, with ``jku`` and ``kid`` in the header."""
        return jwt.encode(
            dict(payload),
            self._key,
            algorithm=ALGORITHM,
            headers={"jku": self.jku, "kid": self.kid},
        )

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document: ``{keys: [{kid, kty, alg, use, n, e, pem}]}``."""
        public = self._key.public_key()
        numbers = public.public_numbers()
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        return {
            "keys": [
                {
                    "kid": self.kid,
                    "kty": "RSA",
                    "alg": ALGORITHM,
                    "use": "sig",
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                    "pem": pem.decode("ascii"),
                }
            ]
        }
