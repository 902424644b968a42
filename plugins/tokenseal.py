"""How token stores seal their records at rest; shared by the ``file`` and ``sql`` stores.

One random 32-byte store key per contract, wrapped with RSA-OAEP-SHA1 to the
contract's public key (so only the contract key, wherever it lives, opens it).
Sub-keys derived with HKDF: one seals records with AES-256-GCM, one names users
by HMAC so storage reveals nothing about who they are, one is the store key's
id. Each record names the id of the store key that sealed it and is bound by its
associated data to that id, the contract, the record kind and the user's digest,
so a record copied to another user, kind, contract or store fails to open, and a
store key swapped for another store's is named as such. Records of format 1
(no key id, written before) are still read; every save writes format 2.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privateshare.checkpoint import LEGACY_SINKS
from privateshare.errors import PrivateShareError, TokenStoreError
from privateshare.hooks import PluginContext, hookimpl
from privateshare.keys import OAEP_SHA1_PADDING, KeyHandle, public_key_fingerprint
from privateshare.models import UserAccessToken

log = logging.getLogger("privateshare.tokens")

STORE_KEY_FORMAT = "privateshare-token-store-key"
STORE_KEY_VERSION = 1
RECORD_MAGIC_V1 = b"PSTOK\x01"  # magic, nonce, ciphertext
RECORD_MAGIC = b"PSTOK\x02"  # magic, store key id, nonce, ciphertext
KEY_ID_BYTES = 8
NONCE_BYTES = 12
Kind = Literal["token", "checkpoint", "journal", "run"]
#: Journal bytes past which a save folds the journal into a new base (and at least the base's size).
COMPACT_AT = 1 << 20


class TokenRecord(msgspec.Struct, frozen=True):
    user_id: str
    token: UserAccessToken
    saved_at: float = 0.0


class CheckpointRecord(msgspec.Struct, frozen=True):
    """The base snapshot of a user's delivery state; changes since are in its journal.

    ``checkpoint`` is the one mapping of records written before per-sink state
    (loaded as sink :data:`LEGACY_SINKS`); ``sinks`` maps sink -> name -> date;
    ``journal`` names the journal generation that belongs to this base.
    """

    user_id: str
    checkpoint: dict[str, int] = {}
    saved_at: float = 0.0
    sinks: dict[str, dict[str, int]] = {}
    journal: str = ""


class JournalEntry(msgspec.Struct, frozen=True):
    """One checkpoint save: sink -> name -> updatedDate, applied over the base in order."""

    changes: dict[str, dict[str, int]]


class RunRecord(msgspec.Struct, frozen=True):
    user_id: str
    run: dict[str, Any]
    saved_at: float = 0.0


class CheckpointState:
    """A loaded checkpoint's place in storage: its journal generation and sizes."""

    __slots__ = ("base_size", "journal", "journal_size", "marker")

    def __init__(self, journal: str, base_size: int, journal_size: int, marker: Any) -> None:
        self.journal = journal
        self.base_size = base_size
        self.journal_size = journal_size
        self.marker = marker


class MalformedRecord(ValueError):
    """The bytes are not a sealed record at all (truncated or overwritten)."""


class TamperedRecord(ValueError):
    """The record does not open: modified, moved, or (format 1) sealed under another key."""


class ForeignRecord(ValueError):
    """The record was sealed by another store key; ``key_id`` is that key's id."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(key_id)


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


def record_aad(contract_id: str, kind: Kind, digest: str, key_id: str | None = None) -> bytes:
    # msgspec JSON of a list: unambiguous whatever characters the parts hold.
    if key_id is None:  # format 1
        return msgspec.json.encode(["privateshare-token-record/v1", contract_id, kind, digest])
    return msgspec.json.encode(["privateshare-token-record/v2", contract_id, kind, digest, key_id])


class StoreKeys:
    """The store key's derived sub-keys (sealing records, naming users) and its id."""

    __slots__ = ("_aead", "_id", "_names", "key_id")

    def __init__(self, store_key: bytes) -> None:
        self._aead = AESGCM(derive(store_key, b"records"))
        self._names = derive(store_key, b"file-names")
        self._id = derive(store_key, b"key-id")[:KEY_ID_BYTES]
        #: Names this store key in messages and in the records it seals; reveals nothing of it.
        self.key_id = self._id.hex()

    def digest(self, user_id: str) -> str:
        return hmac.new(self._names, user_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def seal(self, contract_id: str, kind: Kind, digest: str, record: msgspec.Struct) -> bytes:
        return self.seal_encoded(contract_id, kind, digest, [msgspec.json.encode(record)])

    def seal_encoded(self, contract_id: str, kind: Kind, digest: str, holder: list[bytes]) -> bytes:
        """Seal the encoded record that ``holder`` holds, taking it out as soon as it is sealed.

        A checkpoint's record may hold millions of names: its plaintext goes before the
        sealed bytes are joined to their header, so at most two copies are held at once.
        """
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = record_aad(contract_id, kind, digest, self.key_id)
        sealed = self._aead.encrypt(nonce, holder.pop(), aad)
        return RECORD_MAGIC + self._id + nonce + sealed

    def open(self, contract_id: str, kind: Kind, digest: str, blob: bytes) -> bytes:
        """The record's plaintext, or MalformedRecord, ForeignRecord or TamperedRecord."""
        head = len(RECORD_MAGIC)
        key_id: str | None = None
        if blob[:head] == RECORD_MAGIC and len(blob) >= head + KEY_ID_BYTES + NONCE_BYTES + 16:
            key_id = blob[head : head + KEY_ID_BYTES].hex()
            if key_id != self.key_id:
                raise ForeignRecord(key_id)
            head += KEY_ID_BYTES
        elif blob[:head] != RECORD_MAGIC_V1 or len(blob) < head + NONCE_BYTES + 16:
            raise MalformedRecord(kind)
        # A view, not a copy: a checkpoint's record may hold millions of names.
        nonce, sealed = blob[head : head + NONCE_BYTES], memoryview(blob)[head + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, record_aad(contract_id, kind, digest, key_id))
        except InvalidTag:
            raise TamperedRecord(kind) from None

    def __repr__(self) -> str:
        return f"StoreKeys(key_id={self.key_id})"


def sealed_by(blob: bytes) -> str | None:
    """The id of the store key that sealed a record (None: format 1, or not a record)."""
    end = len(RECORD_MAGIC) + KEY_ID_BYTES
    return (
        blob[len(RECORD_MAGIC) : end].hex() if blob[: len(RECORD_MAGIC)] == RECORD_MAGIC else None
    )


class SealedRecordStore:
    """The record-level hooks both token stores share, over their own storage.

    A store subclasses this with :class:`privateshare.Plugin`, sets the message
    parts below and implements ``_open()`` (its :class:`StoreKeys`, the store key
    unwrapped or created), ``_read(digest, kind, who)`` (the sealed bytes or ``None``,
    and where they are), ``_write(digest, kind, who, blob)`` (atomic, durable before it
    returns) and ``_token_blobs()`` (every token record: its digest, where it is, and
    its bytes or the :class:`TokenStoreError` that reading it raised).
    """

    context: PluginContext  # given by Plugin

    #: Prefix of every message (the sql store names its config table).
    label: str = ""
    #: How to get rid of one bad record, in the store's words.
    record_fix: str = ""
    #: Where the store key is kept, and how to start afresh without it.
    key_where: str = "the store key"
    key_fix: str = ""

    def _open(self) -> StoreKeys:
        raise NotImplementedError

    def _read(self, digest: str, kind: Kind, who: str) -> tuple[bytes | None, str]:
        raise NotImplementedError

    def _write(self, digest: str, kind: Kind, who: str, blob: bytes) -> None:
        raise NotImplementedError

    def _token_blobs(self) -> Iterator[tuple[str, str, bytes | TokenStoreError]]:
        raise NotImplementedError

    # --- records -------------------------------------------------------------

    def _digest(self, keys: StoreKeys, user_id: str) -> str:
        if not isinstance(user_id, str) or not user_id:
            raise TokenStoreError(f"{self.label}a user id must be a non-empty string")
        return keys.digest(user_id)

    def _unseal(
        self, keys: StoreKeys, kind: Kind, digest: str, blob: bytes, place: str, type_: type[Any]
    ) -> Any:
        """The decoded record ``place`` holds, or a TokenStoreError saying what is wrong."""
        return self._decode(self._plaintext(keys, kind, digest, blob, place), place, type_)

    def _plaintext(
        self, keys: StoreKeys, kind: Kind, digest: str, blob: bytes, place: str
    ) -> bytes:
        """The opened record ``place`` holds, or a TokenStoreError saying what is wrong."""
        head = f"{self.label}{place}"
        try:
            plaintext = keys.open(self.context.contract_id, kind, digest, blob)
        except MalformedRecord:
            raise TokenStoreError(
                f"{head} is not a privateshare record (truncated or overwritten); {self.record_fix}"
            ) from None
        except ForeignRecord as exc:
            raise ForeignKeyError(
                f"{head} was sealed by store key {exc.key_id}, but {self.key_where} is store key "
                f"{keys.key_id}: the store key was replaced (by another store's?) or the record "
                f"was copied from another store; put back the store key {exc.key_id} from a "
                f"backup, or {self.record_fix}",
                exc.key_id,
            ) from None
        except TamperedRecord:
            raise TokenStoreError(
                f"{head} cannot be decrypted: it was modified, moved from another user or "
                f"contract, or written under another store key; {self.record_fix}"
            ) from None
        return plaintext

    def _decode(self, plaintext: bytes, place: str, type_: type[Any]) -> Any:
        try:
            return msgspec.json.decode(plaintext, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise TokenStoreError(
                f"{self.label}{place} decrypts but its content is not understood (written by "
                f"a newer privateshare?); upgrade privateshare, or {self.record_fix}"
            ) from None

    def _load(self, user_id: str, kind: Kind, type_: type[Any]) -> Any:
        keys = self._open()
        digest = self._digest(keys, user_id)
        who = f"user {user_id!r}"
        blob, place = self._read(digest, kind, who)
        if blob is None:
            return None
        record = self._unseal(keys, kind, digest, blob, place, type_)
        if record.user_id != user_id:
            raise TokenStoreError(
                f"{self.label}{place} holds the record of another user; {self.record_fix}"
            )
        return record

    def _save(self, user_id: str, kind: Kind, record: msgspec.Struct) -> None:
        keys = self._open()
        digest = self._digest(keys, user_id)
        blob = keys.seal(self.context.contract_id, kind, digest, record)
        self._write(digest, kind, f"user {user_id!r}", blob)

    # --- hooks ---------------------------------------------------------------

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
    def privateshare_token_users(self) -> list[str]:
        """Every user with a readable token, sorted; each record is decrypted to read its id.

        A record that cannot be read is left out with a warning saying which and why,
        so one damaged record does not stop the others. When no record is readable
        because every one was sealed by another store key, the store key itself is
        wrong: that is an error.
        """
        keys = self._open()
        users: list[str] = []
        foreign: list[ForeignKeyError] = []
        for digest, place, blob in self._token_blobs():
            try:
                if isinstance(blob, TokenStoreError):
                    raise blob
                record = self._unseal(keys, "token", digest, blob, place, TokenRecord)
                if keys.digest(record.user_id) != digest:
                    raise TokenStoreError(
                        f"{self.label}{place} does not belong where it is (renamed or moved?); "
                        f"{self.record_fix}"
                    )
            except TokenStoreError as exc:
                if isinstance(exc, ForeignKeyError):
                    foreign.append(exc)
                log.warning("a token record was left out of the users: %s", exc)
                continue
            users.append(record.user_id)
        if foreign and not users:
            raise self._foreign_key([exc.key_id for exc in foreign], keys)
        return sorted(users)

    def _check_sealed_by(self, keys: StoreKeys, samples: Iterable[bytes]) -> None:
        """Refuse a store key that sealed none of the records sampled from the store.

        Users' records are found by digests of their ids under the store key, so with
        another store's key every user would look as if they had no token.
        """
        ids = [key_id for key_id in map(sealed_by, samples) if key_id is not None]
        if ids and keys.key_id not in ids:
            raise self._foreign_key(ids, keys)

    def _foreign_key(self, ids: list[str], keys: StoreKeys) -> TokenStoreError:
        named = ", ".join(sorted(set(ids)))
        return TokenStoreError(
            f"{self.label}the token records cannot be read with {self.key_where} (store key "
            f"{keys.key_id}): the ones checked ({len(ids)}) were sealed by store key {named}. The "
            f"store key was replaced, by another store's perhaps; put back the store key "
            f"{named} from a backup, or {self.key_fix}"
        )

    # --- checkpoints: a sealed base snapshot and a journal of sealed changes ------

    def _checkpoint_marker(self, digest: str) -> Any:
        """Something that changes whenever the base snapshot is rewritten (None: no base)."""
        raise NotImplementedError

    def _journal_read(self, digest: str, journal: str, who: str) -> tuple[list[bytes], bool, int]:
        """The journal's sealed entries, whether its tail was torn, and its size in bytes."""
        raise NotImplementedError

    def _journal_append(self, digest: str, journal: str, who: str, blob: bytes) -> int:
        """Append one sealed entry durably; the journal's size afterwards."""
        raise NotImplementedError

    def _checkpoint_rewrite(self, digest: str, who: str, blob: bytes, old: str | None) -> None:
        """Replace the base atomically and durably, then drop journal ``old``."""
        raise NotImplementedError

    def _checkpoint_lock(self, digest: str) -> AbstractContextManager[Any]:
        """Serialises appends and rewrites of one user's checkpoint (across processes if it can)."""
        raise NotImplementedError

    def _checkpoint_cache(self) -> dict[str, CheckpointState]:
        cache: dict[str, CheckpointState] | None = self.__dict__.get("_checkpoint_states")
        if cache is None:
            cache = self.__dict__.setdefault("_checkpoint_states", {})
        return cache

    def _checkpoint_read(
        self, keys: StoreKeys, user_id: str, digest: str
    ) -> tuple[dict[str, dict[str, int]], CheckpointState | None, bool]:
        """The state (base + journal), where it is, and whether the journal's tail was torn."""
        who = f"user {user_id!r}"
        marker = self._checkpoint_marker(digest)
        blob, place = self._read(digest, "checkpoint", who)
        if blob is None:
            return {}, None, False
        # A base of millions of names: the sealed bytes go before the plaintext is decoded.
        base_size = len(blob)
        plaintext = self._plaintext(keys, "checkpoint", digest, blob, place)
        del blob
        record = self._decode(plaintext, place, CheckpointRecord)
        del plaintext
        if record.user_id != user_id:
            raise TokenStoreError(
                f"{self.label}{place} holds the record of another user; {self.record_fix}"
            )
        state = dict(record.sinks)  # the decoded dicts are this call's own: no copies
        if record.checkpoint:
            state.setdefault(LEGACY_SINKS, {}).update(record.checkpoint)
        torn, size = False, 0
        if record.journal:
            blobs, torn, size = self._journal_read(digest, record.journal, who)
            bound = f"{digest}.{record.journal}"
            for index, entry_blob in enumerate(blobs):
                where = f"entry {index + 1} of the checkpoint journal of {who}"
                try:
                    entry = self._unseal(keys, "journal", bound, entry_blob, where, JournalEntry)
                except ForeignKeyError:
                    raise
                except TokenStoreError:
                    if index < len(blobs) - 1:
                        raise
                    torn = True  # a save cut short by a crash: its changes were never promised
                    break
                for sink, names in entry.changes.items():
                    state.setdefault(sink, {}).update(names)
        return state, CheckpointState(record.journal, base_size, size, marker), torn

    def _checkpoint_write(
        self,
        keys: StoreKeys,
        user_id: str,
        digest: str,
        state: dict[str, dict[str, int]],
        old: str | None,
    ) -> CheckpointState:
        """A new base holding ``state`` and naming a fresh, empty journal."""
        journal = secrets.token_hex(8)
        record = CheckpointRecord(user_id, {}, time.time(), state, journal)
        return self._checkpoint_put(
            keys, user_id, digest, [msgspec.json.encode(record)], journal, old
        )

    def _checkpoint_put(
        self,
        keys: StoreKeys,
        user_id: str,
        digest: str,
        holder: list[bytes],
        journal: str,
        old: str | None,
    ) -> CheckpointState:
        blob = keys.seal_encoded(self.context.contract_id, "checkpoint", digest, holder)
        self._checkpoint_rewrite(digest, f"user {user_id!r}", blob, old)
        return CheckpointState(journal, len(blob), 0, self._checkpoint_marker(digest))

    def _checkpoint_compact(
        self,
        keys: StoreKeys,
        user_id: str,
        digest: str,
        changes: dict[str, dict[str, int]] | None = None,
    ) -> CheckpointState:
        """Fold the journal (and ``changes``) into a new base, read from storage.

        Holds the decoded state only until it is encoded: a compaction of a large
        checkpoint peaks at the decoded state plus one encoded copy, not three.
        """
        state, where, _ = self._checkpoint_read(keys, user_id, digest)
        for sink, names in (changes or {}).items():
            state.setdefault(sink, {}).update(names)
        journal = secrets.token_hex(8)
        holder = [msgspec.json.encode(CheckpointRecord(user_id, {}, time.time(), state, journal))]
        del state
        return self._checkpoint_put(
            keys, user_id, digest, holder, journal, where.journal if where else None
        )

    @hookimpl
    def privateshare_checkpoint_load(self, user_id: str) -> dict[str, dict[str, int]]:
        """The user's delivery state: sink -> file name -> updatedDate ms (base + journal).

        A record written before per-sink state comes back under sink ``"*"``. A journal
        whose last entry was torn by a crash is read up to that entry and compacted.
        """
        keys = self._open()
        digest = self._digest(keys, user_id)
        state, where, torn = self._checkpoint_read(keys, user_id, digest)
        if torn:
            log.warning(
                "%sthe checkpoint journal of user %r ends in a save cut short (a crash?); it is "
                "ignored and the journal compacted: those files are delivered again",
                self.label,
                user_id,
            )
            with self._checkpoint_lock(digest):
                state, where, _ = self._checkpoint_read(keys, user_id, digest)
                where = self._checkpoint_write(
                    keys, user_id, digest, state, where.journal if where else None
                )
        cache = self._checkpoint_cache()
        if where is None:
            cache.pop(digest, None)
        else:
            cache[digest] = where
        return state

    @hookimpl
    def privateshare_checkpoint_save(
        self, user_id: str, changes: dict[str, dict[str, int]], replace: bool
    ) -> bool:
        """Append ``changes`` to the user's journal durably (O(changes)); compact now and then.

        ``replace`` writes ``changes`` as the whole state instead: sinks not in it are
        forgotten.
        """
        try:
            changes = msgspec.convert(changes, dict[str, dict[str, int]])
        except msgspec.ValidationError as exc:
            raise TokenStoreError(
                f"the checkpoint changes of user {user_id!r} must map sink names to mappings "
                f"of file names to integer updatedDate values in ms: {exc}"
            ) from None
        keys = self._open()
        digest = self._digest(keys, user_id)
        cache = self._checkpoint_cache()
        with self._checkpoint_lock(digest):
            where = cache.get(digest)
            if replace:
                cache[digest] = self._checkpoint_write(
                    keys, user_id, digest, changes, where.journal if where else None
                )
                return True
            changes = {sink: names for sink, names in changes.items() if names}
            if not changes:
                return True
            if where is None or where.marker != self._checkpoint_marker(digest):
                # First save of this process, or another one rewrote the base meanwhile.
                state, where, torn = self._checkpoint_read(keys, user_id, digest)
                del state
                if where is None or torn:
                    cache[digest] = self._checkpoint_compact(keys, user_id, digest, changes)
                    return True
            blob = keys.seal(
                self.context.contract_id,
                "journal",
                f"{digest}.{where.journal}",
                JournalEntry(changes),
            )
            where.journal_size = self._journal_append(
                digest, where.journal, f"user {user_id!r}", blob
            )
            cache[digest] = where
            if where.journal_size > max(COMPACT_AT, where.base_size):
                cache[digest] = self._checkpoint_compact(keys, user_id, digest)
        return True

    # --- the record of the last run ---------------------------------------------

    @hookimpl
    def privateshare_run_record_load(self, user_id: str) -> dict[str, Any] | None:
        """The user's last run record as saved, or ``None``."""
        record = self._load(user_id, "run", RunRecord)
        return None if record is None else dict(record.run)

    @hookimpl
    def privateshare_run_record_save(self, user_id: str, record: dict[str, Any]) -> bool:
        """Replace the user's last run record, durably."""
        self._save(user_id, "run", RunRecord(user_id, dict(record), time.time()))
        return True


class ForeignKeyError(TokenStoreError):
    """A record sealed by another store key than this store's (``key_id`` is that key's)."""

    def __init__(self, message: str, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(message)


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
