"""handle_from_pem and SoftwareKeyHandle: the formats accepted, the errors, the operations."""

from __future__ import annotations

import base64
import pickle
import traceback

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from privateshare.errors import KeyStoreError
from privateshare.keys import (
    KeyHandle,
    SoftwareKeyHandle,
    handle_from_pem,
    public_key_fingerprint,
)

SOURCE = "file /secure/contract.pem"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def key_fragments(data: bytes) -> list[str]:
    """Every PEM body line, and base64 windows of the whole PEM: none may appear anywhere."""
    lines = [ln.strip() for ln in data.decode().splitlines()]
    frags = [ln for ln in lines if ln and not ln.startswith("-----") and len(ln) >= 16]
    b64 = base64.b64encode(data).decode()
    frags += [b64[i : i + 24] for i in range(24, len(b64) - 24, 24)]
    return frags


def assert_no_key_material(text: str, data: bytes) -> None:
    for frag in key_fragments(data):
        assert frag not in text, "key material leaked"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
    ids=["pkcs8", "pkcs1"],
)
def test_loads_pkcs1_and_pkcs8(rsa_key, fmt) -> None:
    data = pem(rsa_key, fmt)
    handle = handle_from_pem(data, SOURCE)
    assert isinstance(handle, KeyHandle)
    assert handle.key_size == 2048
    assert handle.public_key().public_numbers() == rsa_key.public_key().public_numbers()
    assert repr(handle) == f"SoftwareKeyHandle(RSA-2048, from {SOURCE})"
    assert_no_key_material(repr(handle) + str(handle), data)


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
    ids=["pkcs8", "pkcs1"],
)
def test_encrypted_key_with_password(rsa_key, fmt) -> None:
    data = pem(rsa_key, fmt, password=b"correct horse")
    handle = handle_from_pem(data, SOURCE, b"correct horse")
    assert handle.public_key().public_numbers() == rsa_key.public_key().public_numbers()


def test_ps512_signature_verifies_with_cryptography(rsa_key) -> None:
    handle = handle_from_pem(pem(rsa_key), SOURCE)
    message = b"header.payload"
    signature = handle.sign_ps512(message)
    assert len(signature) == 256
    rsa_key.public_key().verify(
        signature,
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
        hashes.SHA512(),
    )
    with pytest.raises(InvalidSignature):
        rsa_key.public_key().verify(
            signature,
            b"header.tampered",
            padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
            hashes.SHA512(),
        )
    # PSS is randomised: two signatures of one message differ, both verify.
    assert handle.sign_ps512(message) != signature


def test_ps512_compact_jws_verifies_with_pyjwt(rsa_key) -> None:
    handle = handle_from_pem(pem(rsa_key), SOURCE)
    header = b64url(b'{"alg":"PS512","typ":"JWT"}')
    payload = b64url(b'{"client_id":"app_c1","nonce":"n0","timestamp":1700000000000}')
    signing_input = f"{header}.{payload}"
    token = f"{signing_input}.{b64url(handle.sign_ps512(signing_input.encode()))}"
    public_pem = handle.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(token, public_pem, algorithms=["PS512"])
    assert claims == {"client_id": "app_c1", "nonce": "n0", "timestamp": 1700000000000}
    forged = f"{header}.{b64url(b'{}')}.{token.rsplit('.', 1)[1]}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, public_pem, algorithms=["PS512"])


def test_oaep_sha1_round_trip(rsa_key) -> None:
    handle = handle_from_pem(pem(rsa_key), SOURCE)
    file_key = bytes(range(32))
    wrapped = rsa_key.public_key().encrypt(
        file_key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    assert handle.decrypt_oaep_sha1(wrapped) == file_key
    with pytest.raises(ValueError):
        handle.decrypt_oaep_sha1(wrapped[:-1] + bytes([wrapped[-1] ^ 1]))


def test_fingerprint_is_stable_and_public(rsa_key) -> None:
    fp = public_key_fingerprint(rsa_key.public_key())
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == public_key_fingerprint(handle_from_pem(pem(rsa_key), SOURCE).public_key())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert fp != public_key_fingerprint(other.public_key())


def test_handle_cannot_be_pickled(rsa_key) -> None:
    handle = handle_from_pem(pem(rsa_key), SOURCE)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(handle)


def _bad_inputs(rsa_key) -> list[tuple[str, bytes, bytes | None, str]]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    good = pem(rsa_key)
    truncated = good[: len(good) // 2] + b"\n-----END PRIVATE KEY-----\n"
    return [
        ("empty", b"  \n", None, "is empty"),
        ("garbage", b"this is not a key at all", None, "not PEM"),
        ("public", public, None, "public key"),
        ("pkcs1-public", pkcs1_public, None, "public key"),
        ("truncated", truncated, None, "not a valid PEM private key"),
        ("encrypted-no-password", pem(rsa_key, password=b"pw"), None, "is encrypted"),
        ("wrong-password", pem(rsa_key, password=b"pw"), b"nope", "password is wrong"),
        ("password-not-needed", good, b"pw", "not encrypted but a password"),
        ("ec", pem(ec_key), None, "EC (secp256r1) key, not RSA"),
        ("ed25519", pem(ed_key), None, "Ed25519 key, not RSA"),
        ("rsa-1024", pem(small), None, "RSA-1024"),
    ]


def test_every_bad_input_is_a_clear_error_without_key_material(rsa_key) -> None:
    for name, data, password, expected in _bad_inputs(rsa_key):
        with pytest.raises(KeyStoreError) as info:
            handle_from_pem(data, SOURCE, password)
        message = str(info.value)
        assert expected in message, (name, message)
        assert SOURCE in message, (name, message)
        # What a log of the traceback would show must not carry the key either.
        shown = "".join(traceback.format_exception(info.value))
        assert_no_key_material(shown + repr(info.value), data)
        assert_no_key_material(message, pem(rsa_key))


def test_error_messages_carry_a_fix(rsa_key) -> None:
    fixes = {
        "empty": "put the contract's PEM private key there",
        "garbage": "BEGIN PRIVATE KEY",
        "public": "use the contract's private key",
        "truncated": "export it again",
        "encrypted-no-password": "give its password",
        "wrong-password": "check the secret",
        "password-not-needed": "remove the password option",
        "ec": "openssl genpkey",
        "rsa-1024": "rsa_keygen_bits:2048",
    }
    for name, data, password, _ in _bad_inputs(rsa_key):
        if name not in fixes:
            continue
        with pytest.raises(KeyStoreError, match=fixes[name].replace("(", r"\(")):
            handle_from_pem(data, SOURCE, password)


def test_software_handle_satisfies_protocol(rsa_key) -> None:
    handle = SoftwareKeyHandle(rsa_key)
    assert isinstance(handle, KeyHandle)
    assert handle.source == "memory"
    assert "memory" in repr(handle)


def inconsistent(key: rsa.RSAPrivateKey) -> bytes:
    """A PEM that parses but whose CRT exponent does not match its primes."""
    numbers = key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p,
        q=numbers.q,
        d=numbers.d,
        dmp1=numbers.dmp1 ^ 2,
        dmq1=numbers.dmq1,
        iqmp=numbers.iqmp,
        public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    return pem(broken)


def test_an_inconsistent_key_is_refused_every_time_it_is_loaded(rsa_key) -> None:
    # Keys are checked once per distinct input and process; a refused one is never recorded
    # as checked, so the second load is checked again (and refused again).
    data = inconsistent(rsa_key)
    for _ in range(2):
        with pytest.raises(KeyStoreError, match="not a valid PEM private key"):
            handle_from_pem(data, SOURCE)


def test_a_key_loaded_again_is_the_same_key(rsa_key) -> None:
    data = pem(rsa_key)
    first, second = handle_from_pem(data, SOURCE), handle_from_pem(data, SOURCE)
    assert first.public_key().public_numbers() == second.public_key().public_numbers()
    message = b"signed twice"
    signature = second.sign_ps512(message)
    first.public_key().verify(
        signature,
        message,
        padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
        hashes.SHA512(),
    )
