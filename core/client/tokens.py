"""Server tokens: verified against the API's JWKS, decoded into a :class:`UserAccessToken`.

The JWKS is fetched only from the configured API origin (protocol.md#server-tokens).
The payload shapes differ by profile: v1.7 nests ``{value, expires_on}`` per token,
v1.5 answers a flat payload; each client passes its decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ValidationError
from ..jws import InvalidServerToken, JwksCache, verify_server_token
from ..models import Session, Token, UserAccessToken
from .wire import Wire

#: Server token payload -> our token.
Decode = Callable[[Mapping[str, Any]], UserAccessToken]


class Verifier:
    """Checks server JWTs with the keys of one API base URL (cached for a while)."""

    def __init__(self, base_url: str, fetch: Callable[[str], Any]) -> None:
        self.jwks = JwksCache(base_url, fetch)

    def verified(self, body: Any, what: str) -> dict[str, Any]:
        """The verified payload of the ``token`` of an answer ``{token: ...}``."""
        if not isinstance(body, dict):
            raise ValidationError(f"{what}: the server's answer is not a JSON object")
        return verify_server_token(body.get("token"), self.jwks)

    def token(self, answer: str, decode: Decode, *, deferred: bool = False) -> UserAccessToken:
        """Verify an answer of ``oauth/token`` and decode the token it carries.

        ``deferred``: the answer was kept when it arrived and is checked now, so an
        ``exp`` it may carry is not held against it. A payload that does not decode
        is an :class:`InvalidServerToken` (the answer itself is bad).
        """
        payload = verify_server_token(answer, self.jwks, verify_exp=not deferred)
        try:
            return decode(payload)
        except ValidationError as exc:
            raise InvalidServerToken(str(exc)) from None


def grant(
    wire: Wire,
    verifier: Verifier,
    decode: Decode,
    claims: Mapping[str, Any],
    headers: Mapping[str, str],
    on_answer: Callable[[str], None] | None,
) -> UserAccessToken:
    """``POST oauth/token`` (never retried: single use); ``on_answer`` gets the answer first."""
    answer = wire.json("POST", "oauth/token", claims, headers=headers)
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise ValidationError("oauth/token: the server's answer has no token")
    if on_answer is not None:
        on_answer(token)
    return verifier.token(token, decode)


def decode_session(value: Any, *, strict: bool = False) -> Session:
    """``{key, expiry}``; a missing or odd one is an empty session unless ``strict``."""
    if isinstance(value, dict) and isinstance(value.get("key"), str):
        expiry = value.get("expiry", 0)
        if isinstance(expiry, int | float):
            return Session(value["key"], int(expiry))
    if strict:
        raise ValidationError("the session is not {key: string, expiry: number}")
    return Session("", 0)


def decode_token(payload: Mapping[str, Any]) -> UserAccessToken:
    """Map the v1.7 server token payload (protocol.md#tokens) to a :class:`UserAccessToken`."""

    def token(name: str) -> Token:
        part = payload.get(name)
        if not isinstance(part, dict) or not isinstance(part.get("value"), str):
            raise ValidationError(f"the server token has no {name} value")
        expiry = part.get("expires_on") or 0
        return Token(part["value"], int(expiry) if isinstance(expiry, int | float) else 0)

    consent = payload.get("consentid")
    return UserAccessToken(
        access_token=token("access_token"),
        refresh_token=token("refresh_token"),
        user_id=str(payload.get("sub") or ""),
        consent_id=str(consent) if consent is not None else None,
    )


def decode_flat_token(payload: Mapping[str, Any]) -> UserAccessToken:
    """Map the flat v1.5 payload ``{access_token, refresh_token, expires_on}``.

    ``expires_on`` (Unix seconds) is the access token's; the refresh token's expiry
    is not given, so it is 0 (unknown).
    """
    access, refresh = payload.get("access_token"), payload.get("refresh_token")
    if not isinstance(access, str | int) or isinstance(access, bool) or access == "":
        raise ValidationError("the server token has no access_token value")
    if not isinstance(refresh, str | int) or isinstance(refresh, bool) or refresh == "":
        raise ValidationError("the server token has no refresh_token value")
    expiry = payload.get("expires_on")
    expires_on = int(expiry) if isinstance(expiry, int | float) and expiry is not True else 0
    return UserAccessToken(
        access_token=Token(str(access), expires_on),
        refresh_token=Token(str(refresh), 0),
    )


def token_claims(token: UserAccessToken | None) -> dict[str, Any]:
    """The ``access_token`` claim; none at all for a read with the session key alone."""
    return {"access_token": token.access_token.value} if token is not None else {}
