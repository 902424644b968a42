"""Key handles: what the core asks of a contract private key.

A key store returns a handle with operations, never PEM bytes, so that the key
can live in a file, in memory after a KMS unwrap, or inside an HSM that never
lets it out. The core signs request JWTs (PS512) and unwraps file keys
(RSA-OAEP-SHA1) only through this protocol.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import NoReturn, Protocol, runtime_checkable

from cryptography.exceptions import InvalidKey, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from .errors import KeyStoreError
from .hooks import hookimpl

log = logging.getLogger("privateshare.keys")

MIN_KEY_BITS = 2048

PS512_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
# SHA-1 here is digi.me's file-key format (OAEP, where SHA-1 is not a weakness), not a choice.
OAEP_SHA1_PADDING = padding.OAEP(
    mgf=padding.MGF1(hashes.SHA1()),  # noqa: S303
    algorithm=hashes.SHA1(),  # noqa: S303
    label=None,
)

_PEM_HELP = (
    "expected a '-----BEGIN RSA PRIVATE KEY-----' (PKCS#1) or "
    "'-----BEGIN PRIVATE KEY-----' (PKCS#8) block"
)
_GENERATE_HELP = (
    "generate a new contract key with "
    "'openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out contract.pem' "
    "and register its public key with digi.me"
)


@runtime_checkable
class KeyHandle(Protocol):
    """The operations a contract private key must offer."""

    @property
    def key_size(self) -> int:
        """Modulus size in bits."""
        ...

    def sign_ps512(self, message: bytes) -> bytes:
        """RSASSA-PSS, SHA-512, MGF1-SHA-512, salt length 64 (JWS ``PS512``)."""
        ...

    def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
        """RSAES-OAEP with SHA-1 and MGF1-SHA-1, empty label.

        Raises ``ValueError`` when the ciphertext was not made for this key, so the
        decryptor can report a ``key`` check failure; other errors (an unreachable
        KMS, a locked HSM) propagate as they are.
        """
        ...

    def public_key(self) -> rsa.RSAPublicKey:
        """The public half, for verification and for encrypting to this key."""
        ...


class SoftwareKeyHandle:
    """A key handle over an in-memory ``cryptography`` RSA private key."""

    __slots__ = ("_key", "source")

    def __init__(self, key: rsa.RSAPrivateKey, source: str = "memory") -> None:
        self._key = key
        self.source = source

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def sign_ps512(self, message: bytes) -> bytes:
        return self._key.sign(message, PS512_PADDING, hashes.SHA512())

    def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
        return self._key.decrypt(ciphertext, OAEP_SHA1_PADDING)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def __repr__(self) -> str:
        return f"SoftwareKeyHandle(RSA-{self.key_size}, from {self.source})"

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the private key into a byte stream nobody asked for.
        raise TypeError("a key handle cannot be pickled; pass the key store's options instead")


def public_key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, hex: safe to log, stable across key stores."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _key_kind(key: object) -> str:
    """A human name for a non-RSA key type (never its contents)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC ({key.curve.name}) key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "an Ed25519 key"
    if isinstance(key, ed448.Ed448PrivateKey):
        return "an Ed448 key"
    if isinstance(key, dsa.DSAPrivateKey):
        return "a DSA key"
    return f"a {type(key).__name__} key"


# Digests of PEM inputs whose RSA key passed OpenSSL's consistency check in this process.
# The check (primality of p and q) costs ~40 ms a load; a process that builds many frameworks
# from one key file (a scheduler, a Celery worker, a test suite) pays it once. Only digests are
# kept, never a key; the set is bounded so a process loading endless keys cannot grow it.
_VALIDATED: set[bytes] = set()
_VALIDATED_MAX = 256
_VALIDATED_LOCK = threading.Lock()


def _load_pem(data: bytes, password: bytes | None) -> object:
    """``load_pem_private_key``, validating each distinct input once per process."""
    digest = hashlib.sha256(b"%d:" % len(password or b"") + (password or b"") + data).digest()
    with _VALIDATED_LOCK:
        known = digest in _VALIDATED
    key = serialization.load_pem_private_key(
        data, password=password, unsafe_skip_rsa_key_validation=known
    )
    if not known:
        with _VALIDATED_LOCK:
            if len(_VALIDATED) >= _VALIDATED_MAX:
                _VALIDATED.clear()
            _VALIDATED.add(digest)
    return key


def handle_from_pem(data: bytes, source: str, password: bytes | None = None) -> SoftwareKeyHandle:
    """Load a PKCS#1 or PKCS#8 RSA private key; every failure names ``source``, never the key.

    ``source`` says where the bytes came from (``file /etc/contract.pem``,
    ``environment variable PRIVATESHARE_PRIVATE_KEY``); it is the only thing
    about the input an error message repeats.
    """
    if not data.strip():
        raise KeyStoreError(
            f"the private key from {source} is empty; put the contract's PEM private key there"
        )
    if b"-----BEGIN" not in data:
        raise KeyStoreError(f"the private key from {source} is not PEM; {_PEM_HELP}")
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data or b"CERTIFICATE-----" in data:
            raise KeyStoreError(
                f"{source} holds a public key or certificate, not a private key; "
                f"use the contract's private key ({_PEM_HELP})"
            )
        raise KeyStoreError(f"{source} holds a PEM block that is not a private key; {_PEM_HELP}")
    try:
        key = _load_pem(data, password)
    except TypeError:
        if password is None:
            raise KeyStoreError(
                f"the private key from {source} is encrypted; give its password "
                '(password = { env = "VAR" }) or store it unencrypted with mode 0600'
            ) from None
        raise KeyStoreError(
            f"the private key from {source} is not encrypted but a password was given; "
            "remove the password option"
        ) from None
    except (ValueError, InvalidKey):
        if password is not None and b"ENCRYPTED" in data:
            raise KeyStoreError(
                f"the private key from {source} cannot be decrypted: the password is wrong; "
                "check the secret the password option refers to"
            ) from None
        raise KeyStoreError(
            f"the private key from {source} is not a valid PEM private key (damaged, "
            "truncated or an unsupported format); export it again, e.g. "
            "'openssl pkey -in original.pem -out contract.pem'"
        ) from None
    except UnsupportedAlgorithm:
        raise KeyStoreError(
            f"the private key from {source} uses an unsupported algorithm or encryption; "
            "re-export it as unencrypted or AES-encrypted PKCS#8 "
            "('openssl pkcs8 -topk8 -in original.pem -out contract.pem')"
        ) from None
    except Exception as exc:
        raise KeyStoreError(
            f"the private key from {source} cannot be loaded ({type(exc).__name__}); "
            "export it again as PKCS#8 PEM"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyStoreError(
            f"the private key from {source} is {_key_kind(key)}, not RSA; digi.me contracts "
            f"use RSA keys: use the contract's RSA key, or {_GENERATE_HELP}"
        )
    if key.key_size < MIN_KEY_BITS:
        raise KeyStoreError(
            f"the private key from {source} is RSA-{key.key_size}; digi.me requires at "
            f"least {MIN_KEY_BITS} bits: {_GENERATE_HELP}"
        )
    return SoftwareKeyHandle(key, source)


class KeyStore:
    """Base for key store plugins: the handle is loaded on first use, once, under a lock.

    Subclass it together with :class:`privateshare.Plugin`, set ``self.source`` (where
    the key lives, safe to print) and implement :meth:`_load`. A failed load raises
    and is tried again on the next call, so a transient KMS or HSM error is not sticky.
    """

    source: str = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._handle: KeyHandle | None = None
        self._lock = threading.Lock()

    def _load(self) -> KeyHandle:
        raise NotImplementedError

    @hookimpl
    def privateshare_key_handle(self) -> KeyHandle:
        """Return the contract key handle, loading it on the first call only."""
        with self._lock:
            if self._handle is None:
                handle = self._load()
                log.info(
                    "contract key ready: RSA-%d from %s (public key sha256 %s)",
                    handle.key_size,
                    self.source,
                    public_key_fingerprint(handle.public_key())[:16],
                )
                self._handle = handle
            return self._handle
