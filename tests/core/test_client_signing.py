"""``privateshare.client.signing``: each attempt is signed afresh, the key loaded on first use."""

from __future__ import annotations

import json
import platform

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.client.signing import Signer, package_version, sdk_meta
from privateshare.keys import KeyHandle, SoftwareKeyHandle


def _claims(bearer: str, public: rsa.RSAPublicKey) -> dict:
    assert bearer.startswith("Bearer ")
    token = bearer.removeprefix("Bearer ")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "PS512", "typ": "JWT"}
    return jwt.decode(token, public, algorithms=["PS512"])


def test_each_attempt_is_a_new_jwt_with_client_id_and_the_call_claims() -> None:
    key = SoftwareKeyHandle(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    loads: list[int] = []

    def load() -> KeyHandle:
        loads.append(1)
        return key

    authorize = Signer("app_contract", load)({"access_token": "t", "skipped": None})
    assert loads == []  # the key is loaded when a request is signed, not before
    first, second = authorize(), authorize()
    one, two = _claims(first, key.public_key()), _claims(second, key.public_key())
    assert one["client_id"] == "app_contract" and one["access_token"] == "t"
    assert "skipped" not in one  # None claims are left out
    assert one["nonce"] != two["nonce"] and len(one["nonce"]) == 32
    assert isinstance(one["timestamp"], int)
    assert len(loads) == 2


def test_the_sdk_meta_names_us_and_the_python() -> None:
    meta = sdk_meta("python", package_version())
    assert meta == {
        "name": "python",
        "version": package_version(),
        "meta": {"python": platform.python_version()},
    }
    json.dumps(meta)  # what goes into a JWT claim must be JSON
    assert package_version().count(".") >= 2
