"""How token stores seal their records at rest; shared by the ``file`` and ``sql`` stores.

One random 32-byte store key per contract, wrapped with RSA-OAEP-SHA1 to the
contract's public key (so only the contract key, wherever it lives, opens it).
Sub-keys derived with HKDF: one seals records with AES-256-GCM, one names users
by HMAC so storage reveals nothing about who they are. Each record is bound by
its associated data to the contract, the record kind and the user's digest, so a
record copied to another user, kind or contract fails to open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privateshare.errors import PrivateShareError, TokenStoreError
from privateshare.hookspecs import hookimpl
from privateshare.keys import OAEP_SHA1_PADDING, KeyHandle, public_key_fingerprint
from privateshare.models import UserAccessToken

STORE_KEY_FORMAT = "privateshare-token-store-key"
STORE_KEY_VERSION = 1
RECORD_MAGIC = b"PSTOK\x01"
NONCE_BYTES = 12
Kind = Literal["token", "checkpoint"]


class TokenRecord(msgspec.Struct, frozen=True):
    user_id: str
    token: UserAccessToken
    saved_at: float = 0.0


class CheckpointRecord(msgspec.Struct, frozen=True):
    user_id: str
    checkpoint: dict[str, int] = {}
    saved_at: float = 0.0


class MalformedRecord(ValueError):
    """The bytes are not a sealed record at all (truncated or overwritten)."""


class TamperedRecord(ValueError):
    """The record does not open: modified, moved, or sealed under another store key."""


def derive(store_key: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"privateshare token store v1: " + purpose,
    ).derive(store_key)


def key_check(store_key: bytes, contract_id: str) -> str:
    """Ties a store key to its contract, so a store key copied from elsewhere is caught."""
    return hmac.new(
        derive(store_key, b"key-check"), contract_id.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def record_aad(contract_id: str, kind: Kind, digest: str) -> bytes:
    # msgspec JSON of a list: unambiguous whatever characters the parts hold.
    return msgspec.json.encode(["privateshare-token-record/v1", contract_id, kind, digest])


class StoreKeys:
    """The store key's derived sub-keys: one for sealing records, one for naming users."""

    __slots__ = ("_aead", "_names")

    def __init__(self, store_key: bytes) -> None:
        self._aead = AESGCM(derive(store_key, b"records"))
        self._names = derive(store_key, b"file-names")

    def digest(self, user_id: str) -> str:
        return hmac.new(self._names, user_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def seal(self, contract_id: str, kind: Kind, digest: str, record: msgspec.Struct) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = record_aad(contract_id, kind, digest)
        return RECORD_MAGIC + nonce + self._aead.encrypt(nonce, msgspec.json.encode(record), aad)

    def open(self, contract_id: str, kind: Kind, digest: str, blob: bytes) -> bytes:
        """The record's plaintext; :class:`MalformedRecord` or :class:`TamperedRecord`."""
        head = len(RECORD_MAGIC)
        if len(blob) < head + NONCE_BYTES + 16 or blob[:head] != RECORD_MAGIC:
            raise MalformedRecord(kind)
        nonce, sealed = blob[head : head + NONCE_BYTES], blob[head + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, record_aad(contract_id, kind, digest))
        except InvalidTag:
            raise TamperedRecord(kind) from None

    def __repr__(self) -> str:
        return "StoreKeys(<redacted>)"


class SealedRecordStore:
    """The record-level hooks both token stores share, over their own ``_load``/``_save``.

    A store subclasses this with :class:`privateshare.Plugin` and implements
    ``_load(user_id, kind, type_)`` (the decoded record or ``None``) and
    ``_save(user_id, kind, record)`` (atomic, durable before it returns).
    """

    def _load(self, user_id: str, kind: Kind, type_: type[Any]) -> Any:
        raise NotImplementedError

    def _save(self, user_id: str, kind: Kind, record: msgspec.Struct) -> None:
        raise NotImplementedError

    @hookimpl
    def privateshare_token_load(self, user_id: str) -> UserAccessToken | None:
        """The user's saved token, or ``None``; a record that fails to decrypt is an error."""
        record = self._load(user_id, "token", TokenRecord)
        return None if record is None else record.token

    @hookimpl
    def privateshare_token_save(self, user_id: str, token: UserAccessToken) -> bool:
        """Replace the user's token, durably, before returning."""
        if not isinstance(token, UserAccessToken):
            raise TokenStoreError(
                f"privateshare_token_save expects a UserAccessToken, got {type(token).__name__}"
            )
        self._save(user_id, "token", TokenRecord(user_id, token, time.time()))
        return True

    @hookimpl
    def privateshare_checkpoint_load(self, user_id: str) -> dict[str, int]:
        """The user's checkpoint (file name -> updatedDate ms); empty when none was saved."""
        record = self._load(user_id, "checkpoint", CheckpointRecord)
        return {} if record is None else dict(record.checkpoint)

    @hookimpl
    def privateshare_checkpoint_save(self, user_id: str, checkpoint: dict[str, int]) -> bool:
        """Replace the user's checkpoint, durably, before returning."""
        try:
            record = msgspec.convert(
                {"user_id": user_id, "checkpoint": checkpoint, "saved_at": time.time()},
                CheckpointRecord,
            )
        except msgspec.ValidationError as exc:
            raise TokenStoreError(
                f"the checkpoint of user {user_id!r} must map file names to integer "
                f"updatedDate values in ms: {exc}"
            ) from None
        self._save(user_id, "checkpoint", record)
        return True


def new_store_key(public: rsa.RSAPublicKey, handle: KeyHandle) -> tuple[bytes, bytes]:
    """A fresh store key and its wrapping to ``public``, proven to unwrap through ``handle``.

    The proof comes before any token depends on the key: a KMS or HSM handle whose
    public half does not match its private half is caught here, not on the next run.
    """
    store_key = secrets.token_bytes(32)
    wrapped = public.encrypt(store_key, OAEP_SHA1_PADDING)
    try:
        unwrapped = handle.decrypt_oaep_sha1(wrapped)
    except PrivateShareError:
        raise
    except Exception as exc:
        raise TokenStoreError(
            f"the contract key cannot decrypt what its own public key encrypts "
            f"({type(exc).__name__}); check the [keys] table: the key handle's private "
            "and public halves must belong together"
        ) from None
    if not hmac.compare_digest(unwrapped, store_key):
        raise TokenStoreError(
            "the contract key handle's private and public halves do not belong together; "
            "check the [keys] table"
        )
    return store_key, wrapped


def open_store_key(
    handle: KeyHandle,
    wrapped: bytes,
    *,
    public_key_sha256: str,
    check: str,
    contract_id: str,
    where: str,
    forget: str,
) -> bytes:
    """Unwrap a stored store key after checking it belongs to this contract key and store.

    ``where`` names the stored key in messages; ``forget`` says how to start afresh.
    """
    expected = public_key_fingerprint(handle.public_key())
    if not hmac.compare_digest(public_key_sha256, expected):
        raise TokenStoreError(
            f"{where} was created with a different contract key (public key sha256 "
            f"{public_key_sha256[:16]}..., the configured key is {expected[:16]}...); "
            f"configure the contract key it was created with, or {forget}"
        )
    try:
        store_key = handle.decrypt_oaep_sha1(wrapped)
    except PrivateShareError:
        raise
    except Exception as exc:
        raise TokenStoreError(
            f"{where} cannot be unwrapped with the configured contract key "
            f"({type(exc).__name__}): it is damaged or was not wrapped to this key; restore it "
            f"from a backup, or {forget}"
        ) from None
    if len(store_key) != 32 or not hmac.compare_digest(check, key_check(store_key, contract_id)):
        raise TokenStoreError(
            f"{where} does not belong to this store (its check value does not match: damaged, "
            f"or copied from another store); restore the right one, or {forget}"
        )
    return store_key
