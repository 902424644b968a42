"""core/client/tokens.py: the server's token and session payloads mapped to our models."""

from __future__ import annotations

import pytest

from privateshare.client.tokens import (
    decode_flat_token,
    decode_session,
    decode_token,
    token_claims,
)
from privateshare.errors import ValidationError
from privateshare.models import Session, Token, UserAccessToken


def test_decode_token_maps_the_backend_format() -> None:
    token = decode_token(
        {
            "access_token": {"value": "a", "expires_on": 1000000},
            "refresh_token": {"value": "r", "expires_on": 2000000},
            "sub": "user-1",
            "consentid": "c-1",
            "identifier": {"id": "x"},
            "token_type": "Bearer",
        }
    )
    assert (token.access_token.value, token.access_token.expiry) == ("a", 1000000)
    assert (token.refresh_token.value, token.refresh_token.expiry) == ("r", 2000000)
    assert (token.user_id, token.consent_id) == ("user-1", "c-1")
    minimal = decode_token({"access_token": {"value": "a"}, "refresh_token": {"value": "r"}})
    assert (minimal.access_token.expiry, minimal.user_id, minimal.consent_id) == (0, "", None)
    with pytest.raises(ValidationError, match="access_token"):
        decode_token({"refresh_token": {"value": "r"}})


def test_decode_token_refuses_odd_parts_and_ignores_an_odd_expiry() -> None:
    with pytest.raises(ValidationError, match="no refresh_token value"):
        decode_token({"access_token": {"value": "a"}, "refresh_token": "r"})
    with pytest.raises(ValidationError, match="no access_token value"):
        decode_token({"access_token": {"value": 5}, "refresh_token": {"value": "r"}})
    token = decode_token(
        {
            "access_token": {"value": "a", "expires_on": "soon"},
            "refresh_token": {"value": "r", "expires_on": 2.9e9},
            "consentid": 12,
        }
    )
    assert (token.access_token.expiry, token.refresh_token.expiry) == (0, 2_900_000_000)
    assert token.consent_id == "12"


def test_decode_flat_token_maps_the_v15_format() -> None:
    token = decode_flat_token({"access_token": "a", "refresh_token": 42, "expires_on": 1.7e9})
    assert token.access_token == Token("a", 1_700_000_000)
    assert token.refresh_token == Token("42", 0)  # the refresh token's expiry is not given
    assert decode_flat_token({"access_token": "a", "refresh_token": "r"}).access_token.expiry == 0
    no_expiry = decode_flat_token({"access_token": "a", "refresh_token": "r", "expires_on": True})
    assert no_expiry.access_token.expiry == 0
    for name, bad in [
        ("access_token", {"access_token": "", "refresh_token": "r"}),
        ("access_token", {"access_token": True, "refresh_token": "r"}),
        ("refresh_token", {"access_token": "a"}),
        ("refresh_token", {"access_token": "a", "refresh_token": {"value": "r"}}),
    ]:
        with pytest.raises(ValidationError, match=f"no {name} value"):
            decode_flat_token(bad)


def test_decode_session_is_lenient_unless_strict() -> None:
    assert decode_session({"key": "k", "expiry": 1.5e12}) == Session("k", 1_500_000_000_000)
    assert decode_session({"key": "k"}) == Session("k", 0)
    for odd in (None, {"key": 3}, {"key": "k", "expiry": "later"}, ["k"]):
        assert decode_session(odd) == Session("", 0)
        with pytest.raises(ValidationError, match=r"not \{key: string, expiry: number\}"):
            decode_session(odd, strict=True)


def test_token_claims_are_the_access_token_or_none_at_all() -> None:
    token = UserAccessToken(access_token=Token("a", 1), refresh_token=Token("r", 2))
    assert token_claims(token) == {"access_token": "a"}
    assert token_claims(None) == {}
