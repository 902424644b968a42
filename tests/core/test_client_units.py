"""Pure parts of the client: JWT signing, PKCE, token and header decoding, error mapping."""

from __future__ import annotations

import base64
import hashlib
import json
import string

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.client.files import decode_x_metadata
from privateshare.client.tokens import decode_token
from privateshare.client.wire import needs_refresh, server_error
from privateshare.errors import SDKInvalidError, ServerError, ValidationError
from privateshare.jws import (
    JwksCache,
    parse_jwks,
    pkce_pair,
    random_alphanumeric,
    sign_request,
    verify_server_token,
)
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import FileList


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_random_alphanumeric() -> None:
    values = {random_alphanumeric(32) for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert len(value) == 32 and set(value) <= set(string.ascii_letters + string.digits)
    assert len(random_alphanumeric(1000)) == 1000


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


def pem_public(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )


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


def xmeta(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_x_metadata_decoding() -> None:
    meta = decode_x_metadata(
        xmeta({"metadata": {"objectCount": 2, "objectType": "post"}, "compression": "brotli"}),
        "f.json",
    )
    assert meta.compression == "brotli" and meta.kind == "mapped"
    raw = decode_x_metadata(xmeta({"metadata": {"mimetype": "image/jpeg"}}), "p.jpg")
    assert raw.kind == "raw" and raw.mimetype == "image/jpeg" and raw.compression is None
    for bad, message in [
        (None, "missing"),
        ("%%%", "not base64url JSON"),
        (xmeta([1]), "no metadata object"),
    ]:
        with pytest.raises(ValidationError, match=message):
            decode_x_metadata(bad, "f.json")


def test_error_mapping_standard_body_and_headers() -> None:
    body = json.dumps(
        {
            "error": {
                "code": "InvalidRedirectUri",
                "message": "The redirect_uri (x) is invalid",
                "reference": "3Wb9",
            }
        }
    ).encode()
    error = server_error(404, "Not Found", {}, body)
    assert isinstance(error, ServerError) and not isinstance(error, SDKInvalidError)
    assert (error.code, error.reference, error.status_code, error.status_message) == (
        "InvalidRedirectUri",
        "3Wb9",
        404,
        "Not Found",
    )
    assert "The redirect_uri (x) is invalid" in str(error)
    sdk = server_error(400, "Bad Request", {}, b'{"error":{"code":"SDKInvalid","message":"m"}}')
    assert isinstance(sdk, SDKInvalidError)
    from_headers = server_error(
        406,
        "Not Acceptable",
        {"x-error-code": "InvalidRequest", "x-error-message": "nonce used"},
        b"",
    )
    assert (from_headers.code, str(from_headers).startswith("nonce used")) == (
        "InvalidRequest",
        True,
    )
    empty = server_error(404, "Not Found", {}, b"")
    assert (empty.code, empty.reference) == ("DigiMeServerError", "Unknown reference")


def test_which_401s_refresh() -> None:
    invalid = ServerError("x", code="InvalidToken", status_code=401)
    other = ServerError("x", code="InvalidClient", status_code=401)
    bare = ServerError("x", status_code=401)
    assert needs_refresh(invalid) and needs_refresh(bare) and not needs_refresh(other)
    assert not needs_refresh(ServerError("x", code="InvalidToken", status_code=403))


def test_file_list_codec() -> None:
    listing = msgspec.json.decode(
        json.dumps(
            {
                "status": {
                    "state": "partial",
                    "details": {
                        "acc1": {
                            "state": "partial",
                            "error": {
                                "code": "ServiceAuthorizationError",
                                "statusCode": 511,
                                "reauth": True,
                            },
                        },
                        "acc2": {"state": "completed"},
                    },
                },
                "fileList": [
                    {
                        "name": "f1.json",
                        "updatedDate": 1568716294874,
                        "schema": {"standard": "digime", "version": "1.0.0"},
                    }
                ],
            }
        ),
        type=FileList,
    )
    assert listing.status.details["acc1"].error.status_code == 511
    assert listing.file_list[0].updated_date == 1568716294874
    assert msgspec.json.decode(b'{"status":{"state":"pending"}}', type=FileList).file_list is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"status":{"state":"exploded"}}', type=FileList)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"fileList":[]}', type=FileList)


def test_server_names_become_safe_path_segments() -> None:
    from privateshare.client.wire import segment

    assert segment("file1.json") == "file1.json"
    assert segment("19_5_19_403_202412_12.json") == "19_5_19_403_202412_12.json"
    assert segment("a/b.json") == "a/b.json"
    assert segment("x?y#z %.json") == "x%3Fy%23z%20%25.json"
    assert segment("Aa0-_.~") == "Aa0-_.~"
