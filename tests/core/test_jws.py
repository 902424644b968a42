"""core/jws.py: base64url, nonces, PKCE, the request JWTs we sign and the server JWTs we verify."""

from __future__ import annotations

import base64
import hashlib
import string
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.errors import ValidationError
from privateshare.jws import (
    InvalidServerToken,
    JwksCache,
    b64url,
    b64url_decode,
    parse_jwks,
    pkce_pair,
    random_alphanumeric,
    sign_request,
    verify_server_token,
)
from privateshare.keys import SoftwareKeyHandle


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_public(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )


def test_b64url_drops_padding_and_decoding_restores_it() -> None:
    for length in range(7):  # every padding case: none, "=" and "=="
        data = bytes(range(250, 250 - length, -1))  # bytes that need "-" and "_"
        encoded = b64url(data)
        assert b"=" not in encoded and b"+" not in encoded and b"/" not in encoded
        assert b64url_decode(encoded) == data
        assert b64url_decode(encoded.decode()) == data
    assert b64url(b"\xfb\xff") == b"-_8"


def test_random_alphanumeric() -> None:
    values = {random_alphanumeric(32) for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert len(value) == 32 and set(value) <= set(string.ascii_letters + string.digits)
    assert len(random_alphanumeric(1000)) == 1000
    assert random_alphanumeric(0) == ""


def test_pkce_pair_is_rfc7636_s256() -> None:
    verifier, challenge = pkce_pair()
    assert len(verifier) == 43 and "=" not in verifier
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert challenge == expected.decode()
    assert pkce_pair()[0] != verifier


def test_request_jwt_verifies_with_pyjwt_ps512(key: rsa.RSAPrivateKey) -> None:
    token = sign_request(
        SoftwareKeyHandle(key), {"client_id": "a_c", "access_token": "t", "state": None}
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "PS512", "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=["PS512"])
    assert claims["client_id"] == "a_c" and claims["access_token"] == "t"
    assert "state" not in claims and "iat" not in claims  # undefined claims are left out
    assert len(claims["nonce"]) == 32
    assert isinstance(claims["timestamp"], int) and claims["timestamp"] > 1_600_000_000_000
    again = jwt.decode(
        sign_request(SoftwareKeyHandle(key), {}), key.public_key(), algorithms=["PS512"]
    )
    assert again["nonce"] != claims["nonce"]


def test_a_request_jwt_takes_the_given_time(key: rsa.RSAPrivateKey) -> None:
    token = sign_request(SoftwareKeyHandle(key), {"timestamp": 1}, now_ms=1_700_000_000_123)
    claims = jwt.decode(token, key.public_key(), algorithms=["PS512"])
    assert claims["timestamp"] == 1_700_000_000_123  # ours, not the caller's claim


def test_server_token_verified_against_jwks_from_the_api_origin(key: rsa.RSAPrivateKey) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> dict:
        fetched.append(url)
        return {"keys": [{"kid": "k1", "pem": pem_public(key)}]}

    jwks = JwksCache("https://api.digi.test/v1.7/", fetch)
    token = jwt.encode(
        {"preauthorization_code": "abc"},
        key,
        algorithm="PS512",
        headers={"jku": "https://api.digi.test/v1.7/jwks/oauth", "kid": "k1"},
    )
    assert verify_server_token(token, jwks) == {"preauthorization_code": "abc"}
    verify_server_token(token, jwks)
    assert len(fetched) == 1  # cached briefly

    foreign = jwt.encode(
        {"x": 1}, key, algorithm="PS512", headers={"jku": "https://evil.test/jwks", "kid": "k1"}
    )
    with pytest.raises(ValidationError, match="not on the API origin"):
        verify_server_token(foreign, jwks)
    assert len(fetched) == 1  # never fetched from elsewhere


def test_the_api_origin_is_compared_normalised(key: rsa.RSAPrivateKey) -> None:
    jwks = JwksCache(
        "https://api.digi.test/v1.7/", lambda url: {"keys": [{"kid": "k", "pem": pem_public(key)}]}
    )
    assert isinstance(jwks.key("HTTPS://API.digi.test:443/jwks", "k"), rsa.RSAPublicKey)
    for elsewhere in ("http://api.digi.test/jwks", "https://api.digi.test:8443/jwks", "/jwks"):
        with pytest.raises(InvalidServerToken, match="not on the API origin"):
            jwks.key(elsewhere, "k")


def test_an_unknown_kid_fetches_again_once_for_a_rotated_key(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    served = {"kid": "old", "pem": pem_public(other)}
    fetched: list[str] = []

    def fetch(url: str) -> dict:
        fetched.append(url)
        return {"keys": [served]}

    jwks = JwksCache("https://api.digi.test/", fetch)
    jku = "https://api.digi.test/jwks"
    jwks.key(jku, "old")
    served = {"kid": "new", "pem": pem_public(key)}  # the server rotates its key
    assert jwks.key(jku, "new").public_numbers() == key.public_key().public_numbers()
    assert len(fetched) == 2  # the cached document lacked it: fetched once more
    with pytest.raises(ValidationError, match="has no key with kid 'gone'") as info:
        jwks.key(jku, "gone")
    assert not isinstance(info.value, InvalidServerToken)  # the keys, not the token: try later
    assert len(fetched) == 3


def test_a_cache_past_its_ttl_fetches_again(key: rsa.RSAPrivateKey) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> dict:
        fetched.append(url)
        return {"keys": [{"kid": "k", "pem": pem_public(key)}]}

    jwks = JwksCache("https://api.digi.test/", fetch, ttl=0)
    jwks.key("https://api.digi.test/jwks", "k")
    jwks.key("https://api.digi.test/jwks", "k")
    assert len(fetched) == 2


def test_server_token_other_algorithms_and_bad_signatures_are_refused(
    key: rsa.RSAPrivateKey,
) -> None:
    jwks = JwksCache(
        "https://api.digi.test/", lambda url: {"keys": [{"kid": "k1", "pem": pem_public(key)}]}
    )
    headers = {"jku": "https://api.digi.test/jwks", "kid": "k1"}
    rs256 = jwt.encode({"x": 1}, key, algorithm="RS256", headers=headers)
    with pytest.raises(ValidationError, match="failed verification"):
        verify_server_token(rs256, jwks)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"x": 1}, other, algorithm="PS512", headers=headers)
    with pytest.raises(ValidationError, match="failed verification"):
        verify_server_token(forged, jwks)
    unknown_kid = jwt.encode({"x": 1}, key, algorithm="PS512", headers={**headers, "kid": "nope"})
    with pytest.raises(ValidationError, match="no key with kid"):
        verify_server_token(unknown_kid, jwks)
    no_jku = jwt.encode({"x": 1}, key, algorithm="PS512")
    with pytest.raises(ValidationError, match="no jku or kid"):
        verify_server_token(no_jku, jwks)
    with pytest.raises(ValidationError, match="no token"):
        verify_server_token(None, jwks)


def test_a_token_that_is_no_jwt_or_expired_is_an_invalid_server_token(
    key: rsa.RSAPrivateKey,
) -> None:
    jwks = JwksCache(
        "https://api.digi.test/", lambda url: {"keys": [{"kid": "k1", "pem": pem_public(key)}]}
    )
    with pytest.raises(InvalidServerToken, match="is not a JWT"):
        verify_server_token("not.a-jwt", jwks)
    headers = {"jku": "https://api.digi.test/jwks", "kid": "k1"}
    expired = jwt.encode(
        {"x": 1, "exp": int(time.time()) - 3600}, key, algorithm="PS512", headers=headers
    )
    with pytest.raises(InvalidServerToken, match="failed verification"):
        verify_server_token(expired, jwks)
    # An answer kept since it arrived is checked later without its expiry.
    assert verify_server_token(expired, jwks, verify_exp=False)["x"] == 1


def test_jwks_shapes(key: rsa.RSAPrivateKey) -> None:
    assert parse_jwks({"keys": []}, "x") == {}
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    keys = parse_jwks(
        {"keys": [{"kid": "n", "kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e)}]}, "x"
    )
    assert keys["n"].public_numbers() == numbers
    with pytest.raises(ValidationError, match="did not return a JWKS"):
        parse_jwks({"nope": 1}, "x")


def test_unusable_jwks_entries_are_skipped_not_fatal(key: rsa.RSAPrivateKey) -> None:
    keys = parse_jwks(
        {
            "keys": [
                "not an object",
                {"pem": pem_public(key)},  # no kid
                {"kid": 7, "pem": pem_public(key)},  # a kid that is not a string
                {"kid": "garbled", "pem": "-----BEGIN PUBLIC KEY-----\nxx\n"},
                {"kid": "half", "n": "AQAB"},  # no e
                {"kid": "good", "pem": pem_public(key)},
            ]
        },
        "https://api.digi.test/jwks",
    )
    assert list(keys) == ["good"]
    with pytest.raises(ValidationError, match=r"https://api\.digi\.test/jwks did not return"):
        parse_jwks({"keys": "all of them"}, "https://api.digi.test/jwks")
