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

A checkpoint's base may hold millions of names, so it is not one record but a container
of separately sealed pieces (format 3), written, read and merged one piece at a time::

    PSCKP\x03 || store key id (8 bytes) || journal generation (16 ASCII hex digits)
    then pieces, each: length (4 bytes, big-endian) || 96-bit nonce || ciphertext+tag
      piece 0         BaseHeader {user_id, saved_at, journal, format}
      pieces 1..n     Segment [sink, {name: updatedDate}]: one sink's names, at most
                      SEGMENT_NAMES of them and about SEGMENT_BYTES; a sink's are contiguous
      piece n+1       BaseEnd {segments: n}

Each piece is AES-256-GCM sealed on its own, its associated data binding the contract,
the user's digest, the store key id, the journal generation (new at every rewrite), the
piece's role and its index: a piece modified, dropped, reordered, duplicated or taken
from another user, contract, store or base fails to open, and a base cut short lacks
its end piece. Bases of formats 1 and 2 (one ``CheckpointRecord``) are still read; every
rewrite writes format 3.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import secrets
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, BinaryIO, Literal

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
#: Journal bytes past which a save folds the journal into a new base: at least this, a quarter
#: of the base's size (so a save costs O(changes) over time), but at most JOURNAL_MAX, since a
#: compaction holds the journal's changes decoded (~150 bytes a name) and those only.
COMPACT_AT = 1 << 18
JOURNAL_MAX = 16 << 20
BASE_MAGIC = b"PSCKP\x03"  # magic, store key id, journal generation, sealed pieces
BASE_FORMAT = 3
#: A base segment holds at most this many names, and stops growing past SEGMENT_BYTES.
SEGMENT_NAMES = 1024
SEGMENT_BYTES = 1 << 16
#: A piece longer than this is damage, not something to read into memory.
MAX_PIECE = 64 << 20
_LENGTH = struct.Struct(">I")
_GENERATION = re.compile(rb"^[0-9a-f]{16}$")


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


class BaseHeader(msgspec.Struct, frozen=True):
    """The first piece of a format-3 base: whose it is and the journal that follows it."""

    user_id: str
    saved_at: float
    journal: str
    format: int = BASE_FORMAT


class Segment(msgspec.Struct, frozen=True, array_like=True):
    """One piece of a format-3 base: some of one sink's names and their updatedDate."""

    sink: str
    names: dict[str, int]


class BaseEnd(msgspec.Struct, frozen=True):
    """The last piece of a format-3 base: how many segments came before it."""

    segments: int


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

    def __init__(self, kind: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(kind)


class UnknownContent(ValueError):
    """The record opens but its content is not what this privateshare writes."""


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


def compact_at(base_size: int) -> int:
    """The journal size past which a save folds the journal into a new base."""
    return max(COMPACT_AT, min(base_size // 4, JOURNAL_MAX))


def piece_aad(
    contract_id: str, digest: str, key_id: str, journal: str, role: str, index: int
) -> bytes:
    """What a base's piece is bound to: contract, user, store key, base, role and place."""
    return msgspec.json.encode(
        ["privateshare-checkpoint-base/v3", contract_id, digest, key_id, journal, role, index]
    )


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
        elif blob[:head] == BASE_MAGIC:  # a checkpoint's base, moved where a record was
            raise TamperedRecord(kind)
        elif blob[:head] != RECORD_MAGIC_V1 or len(blob) < head + NONCE_BYTES + 16:
            raise MalformedRecord(kind)
        # A view, not a copy: a checkpoint's record may hold millions of names.
        nonce, sealed = blob[head : head + NONCE_BYTES], memoryview(blob)[head + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, record_aad(contract_id, kind, digest, key_id))
        except InvalidTag:
            raise TamperedRecord(kind) from None

    def seal_piece(self, aad: bytes, plaintext: bytes) -> bytes:
        """One piece of a base, framed: its length, its nonce, its ciphertext."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        return _LENGTH.pack(NONCE_BYTES + len(sealed)) + nonce + sealed

    def open_piece(self, aad: bytes, piece: bytes, detail: str) -> bytes:
        """A piece's plaintext (``piece`` is its nonce and ciphertext), or TamperedRecord."""
        try:
            return self._aead.decrypt(piece[:NONCE_BYTES], piece[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedRecord("checkpoint", detail) from None

    def __repr__(self) -> str:
        return f"StoreKeys(key_id={self.key_id})"


def seal_base(
    keys: StoreKeys,
    contract_id: str,
    digest: str,
    user_id: str,
    journal: str,
    state: Iterable[tuple[str, Mapping[str, int]]],
) -> Iterator[bytes]:
    """A format-3 base holding ``state``, in the pieces to write in order.

    ``state`` is (sink, names) pieces, a sink's contiguous; they are cut into bounded
    segments and each is sealed as it comes, so only one is held at a time.
    """
    yield BASE_MAGIC + bytes.fromhex(keys.key_id) + journal.encode("ascii")

    def seal(role: str, index: int, record: msgspec.Struct) -> bytes:
        aad = piece_aad(contract_id, digest, keys.key_id, journal, role, index)
        return keys.seal_piece(aad, msgspec.json.encode(record))

    yield seal("head", 0, BaseHeader(user_id, time.time(), journal))
    count = 0
    for sink, names in _bounded(state):
        count += 1
        yield seal("segment", count, Segment(sink, names))
    yield seal("end", count + 1, BaseEnd(count))


def _bounded(
    state: Iterable[tuple[str, Mapping[str, int]]],
) -> Iterator[tuple[str, dict[str, int]]]:
    """``state`` cut (and small pieces of one sink joined) into segments of bounded size.

    A sink with no names still gets one (empty) segment: it is in the state, delivered nothing.
    """
    sink: str | None = None
    names: dict[str, int] = {}
    size = 0
    given = False  # whether ``sink`` has had a segment yet
    for piece_sink, piece in state:
        if piece_sink != sink:
            if sink is not None and (names or not given):
                yield sink, names
            sink, names, size, given = piece_sink, {}, 0, False
        for name, updated in piece.items():
            names[name] = updated
            size += len(name) + 24
            if len(names) >= SEGMENT_NAMES or size >= SEGMENT_BYTES:
                yield sink, names
                names, size, given = {}, 0, True
    if sink is not None and (names or not given):
        yield sink, names


def open_base(
    keys: StoreKeys, contract_id: str, digest: str, stream: BinaryIO
) -> tuple[BaseHeader, Iterator[tuple[str, dict[str, int]]]]:
    """A format-3 base's header, and its segments read one at a time from ``stream``.

    ``stream`` is past the magic. Raises MalformedRecord, ForeignRecord or TamperedRecord,
    also while the segments are read (a base cut short: at its end).
    """
    head = stream.read(KEY_ID_BYTES + 16)
    if len(head) < KEY_ID_BYTES + 16 or not _GENERATION.match(head[KEY_ID_BYTES:]):
        raise MalformedRecord("checkpoint")
    key_id = head[:KEY_ID_BYTES].hex()
    if key_id != keys.key_id:
        raise ForeignRecord(key_id)
    journal = head[KEY_ID_BYTES:].decode("ascii")

    def read(index: int) -> bytes:
        size = stream.read(_LENGTH.size)
        if len(size) < _LENGTH.size:
            raise MalformedRecord("checkpoint")
        (length,) = _LENGTH.unpack(size)
        if length <= NONCE_BYTES + 16 or length > MAX_PIECE:
            raise TamperedRecord("checkpoint", f"piece {index} has an impossible length")
        sealed = stream.read(length)
        if len(sealed) < length:
            raise MalformedRecord("checkpoint")
        return sealed

    def open_(sealed: bytes, role: str, index: int, type_: type[Any]) -> Any:
        aad = piece_aad(contract_id, digest, keys.key_id, journal, role, index)
        plaintext = keys.open_piece(aad, sealed, f"piece {index}")
        try:
            return msgspec.json.decode(plaintext, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UnknownContent(f"piece {index}") from None

    header: BaseHeader = open_(read(0), "head", 0, BaseHeader)
    if header.journal != journal or header.format != BASE_FORMAT:
        raise UnknownContent("piece 0")

    def segments() -> Iterator[tuple[str, dict[str, int]]]:
        sinks: set[str] = set()
        last = None
        index = 1
        while True:
            sealed = read(index)
            try:
                segment: Segment = open_(sealed, "segment", index, Segment)
            except TamperedRecord:
                end: BaseEnd = open_(sealed, "end", index, BaseEnd)  # or damage
                if end.segments != index - 1 or stream.read(1):
                    raise TamperedRecord("checkpoint", "its end") from None
                return
            if segment.sink != last:
                if segment.sink in sinks:  # the writer keeps a sink's segments together
                    raise UnknownContent(f"piece {index}")
                sinks.add(segment.sink)
                last = segment.sink
            del sealed
            yield segment.sink, segment.names
            index += 1

    return header, segments()


def sealed_by(blob: bytes) -> str | None:
    """The id of the store key that sealed a record (None: format 1, or not a record)."""
    head = blob[: len(RECORD_MAGIC)]
    if head not in (RECORD_MAGIC, BASE_MAGIC):
        return None
    return blob[len(RECORD_MAGIC) : len(RECORD_MAGIC) + KEY_ID_BYTES].hex()


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
        try:
            return keys.open(self.context.contract_id, kind, digest, blob)
        except (MalformedRecord, ForeignRecord, TamperedRecord) as exc:
            raise self._unopened(exc, keys, place) from None

    def _unopened(self, exc: ValueError, keys: StoreKeys, place: str) -> TokenStoreError:
        """What to tell about a record (or a base's piece) that does not open."""
        head = f"{self.label}{place}"
        if isinstance(exc, ForeignRecord):
            return ForeignKeyError(
                f"{head} was sealed by store key {exc.key_id}, but {self.key_where} is store key "
                f"{keys.key_id}: the store key was replaced (by another store's?) or the record "
                f"was copied from another store; put back the store key {exc.key_id} from a "
                f"backup, or {self.record_fix}",
                exc.key_id,
            )
        if isinstance(exc, TamperedRecord):
            detail = f" ({exc.detail})" if exc.detail else ""
            return TokenStoreError(
                f"{head} cannot be decrypted{detail}: it was modified, moved from another user "
                f"or contract, or written under another store key, or pieces of it were "
                f"dropped, reordered or mixed with another's; {self.record_fix}"
                if detail
                else f"{head} cannot be decrypted: it was modified, moved from another user or "
                f"contract, or written under another store key; {self.record_fix}"
            )
        if isinstance(exc, UnknownContent):
            return self._not_understood(place)
        return TokenStoreError(
            f"{head} is not a privateshare record (truncated or overwritten); {self.record_fix}"
        )

    def _not_understood(self, place: str) -> TokenStoreError:
        return TokenStoreError(
            f"{self.label}{place} decrypts but its content is not understood (written by "
            f"a newer privateshare?); upgrade privateshare, or {self.record_fix}"
        )

    def _decode(self, plaintext: bytes, place: str, type_: type[Any]) -> Any:
        try:
            return msgspec.json.decode(plaintext, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise self._not_understood(place) from None

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

    def _checkpoint_open(self, digest: str, who: str) -> tuple[BinaryIO | None, str]:
        """The base's sealed bytes as a stream to read pieces from (None: no base), and where.

        This default reads the whole base with ``_read``; a store that can stream it
        (a file) reads it piece by piece instead.
        """
        blob, place = self._read(digest, "checkpoint", who)
        return (None if blob is None else io.BytesIO(blob)), place

    def _journal_read(self, digest: str, journal: str, who: str) -> tuple[list[bytes], bool, int]:
        """The journal's sealed entries, whether its tail was torn, and its size in bytes."""
        raise NotImplementedError

    def _journal_append(self, digest: str, journal: str, who: str, blob: bytes) -> int:
        """Append one sealed entry durably; the journal's size afterwards."""
        raise NotImplementedError

    def _checkpoint_rewrite(
        self, digest: str, who: str, chunks: Iterable[bytes], old: str | None
    ) -> int:
        """Replace the base with ``chunks`` (joined) atomically and durably, then drop journal
        ``old``; the new base's size. ``chunks`` may read the old base: consume it first."""
        raise NotImplementedError

    def _checkpoint_lock(self, digest: str) -> AbstractContextManager[Any]:
        """Serialises appends and rewrites of one user's checkpoint (across processes if it can)."""
        raise NotImplementedError

    def _checkpoint_cache(self) -> dict[str, CheckpointState]:
        cache: dict[str, CheckpointState] | None = self.__dict__.get("_checkpoint_states")
        if cache is None:
            cache = self.__dict__.setdefault("_checkpoint_states", {})
        return cache

    def _base_segments(
        self, keys: StoreKeys, user_id: str, digest: str, stream: BinaryIO, place: str
    ) -> tuple[str, Iterator[tuple[str, dict[str, int]]]]:
        """A base's journal generation and its (sink, names) segments, read as they are used.

        A base of format 1 or 2 is one record: it is opened and decoded whole (once: the
        next rewrite writes format 3).
        """
        head = stream.read(len(BASE_MAGIC))
        if head != BASE_MAGIC:
            blob = head + stream.read()
            plaintext = self._plaintext(keys, "checkpoint", digest, blob, place)
            del blob
            record = self._decode(plaintext, place, CheckpointRecord)
            del plaintext
            self._check_user(record.user_id, user_id, place)
            sinks = record.sinks
            if record.checkpoint:
                sinks = dict(sinks)
                sinks.setdefault(LEGACY_SINKS, {}).update(record.checkpoint)
            return record.journal, iter(sinks.items())
        try:
            header, segments = open_base(keys, self.context.contract_id, digest, stream)
        except (MalformedRecord, ForeignRecord, TamperedRecord, UnknownContent) as exc:
            raise self._unopened(exc, keys, place) from None
        self._check_user(header.user_id, user_id, place)

        def checked() -> Iterator[tuple[str, dict[str, int]]]:
            try:
                yield from segments
            except (MalformedRecord, ForeignRecord, TamperedRecord, UnknownContent) as exc:
                raise self._unopened(exc, keys, place) from None

        return header.journal, checked()

    def _check_user(self, found: str, user_id: str, place: str) -> None:
        if found != user_id:
            raise TokenStoreError(
                f"{self.label}{place} holds the record of another user; {self.record_fix}"
            )

    def _journal_changes(
        self, keys: StoreKeys, digest: str, journal: str, who: str
    ) -> tuple[dict[str, dict[str, int]], bool, int]:
        """The journal's changes merged in order (a later entry wins), whether its tail was
        torn, and its size in bytes.

        The journal is compacted once it outgrows a quarter of the base (:func:`compact_at`),
        so it stays small next to the state; each sealed entry is let go once it is merged.
        """
        changes: dict[str, dict[str, int]] = {}
        if not journal:
            return changes, False, 0
        blobs, torn, size = self._journal_read(digest, journal, who)
        bound = f"{digest}.{journal}"
        count = len(blobs)
        blobs.reverse()
        for index in range(count):
            entry_blob = blobs.pop()
            where = f"entry {index + 1} of the checkpoint journal of {who}"
            try:
                entry = self._unseal(keys, "journal", bound, entry_blob, where, JournalEntry)
            except ForeignKeyError:
                raise
            except TokenStoreError:
                if index < count - 1:
                    raise
                torn = True  # a save cut short by a crash: its changes were never promised
                break
            _merge(changes, entry.changes.items())
        return changes, torn, size

    def _checkpoint_where(
        self, keys: StoreKeys, user_id: str, digest: str
    ) -> tuple[CheckpointState | None, bool]:
        """Where the checkpoint is (None: no base) and whether its journal's tail was torn.

        Reads the base's header and the journal, not the base's segments (a base of
        format 1 or 2 is one record, read whole).
        """
        who = f"user {user_id!r}"
        marker = self._checkpoint_marker(digest)
        stream, place = self._checkpoint_open(digest, who)
        if stream is None:
            return None, False
        with stream:
            journal, segments = self._base_segments(keys, user_id, digest, stream, place)
            del segments
            base_size = _stream_size(stream)
        _, torn, size = self._journal_changes(keys, digest, journal, who)
        return CheckpointState(journal, base_size, size, marker), torn

    def _checkpoint_pieces(
        self, keys: StoreKeys, user_id: str, digest: str
    ) -> Iterator[tuple[str, dict[str, int]]]:
        """The user's state as (sink, names) pieces to apply in order: base, then journal.

        A journal whose last entry was torn by a crash is compacted first. Remembers where
        the checkpoint is for the saves that follow.
        """
        who = f"user {user_id!r}"
        for attempt in range(2):
            marker = self._checkpoint_marker(digest)
            stream, place = self._checkpoint_open(digest, who)
            cache = self._checkpoint_cache()
            if stream is None:
                cache.pop(digest, None)
                return
            with stream:
                journal, segments = self._base_segments(keys, user_id, digest, stream, place)
                changes, torn, size = self._journal_changes(keys, digest, journal, who)
                if torn and not attempt:
                    del segments
                    log.warning(
                        "%sthe checkpoint journal of user %r ends in a save cut short (a "
                        "crash?); it is ignored and the journal compacted: those files are "
                        "delivered again",
                        self.label,
                        user_id,
                    )
                    with self._checkpoint_lock(digest):
                        cache[digest] = self._checkpoint_compact(keys, user_id, digest)
                    continue
                cache[digest] = CheckpointState(journal, _stream_size(stream), size, marker)
                yield from segments
            yield from changes.items()
            return

    def _checkpoint_write(
        self,
        keys: StoreKeys,
        user_id: str,
        digest: str,
        state: Iterable[tuple[str, Mapping[str, int]]],
        old: str | None,
    ) -> CheckpointState:
        """A new base holding ``state`` (sink, names pieces) and naming a fresh, empty journal."""
        journal = secrets.token_hex(8)
        sealed = seal_base(keys, self.context.contract_id, digest, user_id, journal, state)
        size = self._checkpoint_rewrite(digest, f"user {user_id!r}", sealed, old)
        return CheckpointState(journal, size, 0, self._checkpoint_marker(digest))

    def _checkpoint_compact(
        self,
        keys: StoreKeys,
        user_id: str,
        digest: str,
        changes: dict[str, dict[str, int]] | None = None,
    ) -> CheckpointState:
        """Fold the journal (and ``changes``) into a new base, read from storage.

        Streams: the journal's changes are held (it is small), the old base is read and
        the new one written a segment at a time, each with the journal's newer dates
        applied; names the base lacked follow their sink's last segment. A journal whose
        tail was torn is folded up to that entry.
        """
        who = f"user {user_id!r}"
        stream, place = self._checkpoint_open(digest, who)
        newer: dict[str, dict[str, int]] = {}
        old: str | None = None
        with stream if stream is not None else nullcontext():
            base: Iterator[tuple[str, dict[str, int]]] = iter(())
            if stream is not None:
                old, base = self._base_segments(keys, user_id, digest, stream, place)
                newer, _, _ = self._journal_changes(keys, digest, old, who)
            for sink, names in (changes or {}).items():
                newer.setdefault(sink, {}).update(names)
            return self._checkpoint_write(keys, user_id, digest, _merged(base, newer), old or None)

    @hookimpl
    def privateshare_checkpoint_load(self, user_id: str) -> dict[str, dict[str, int]]:
        """The user's delivery state: sink -> file name -> updatedDate ms (base + journal).

        A record written before per-sink state comes back under sink ``"*"``. A journal
        whose last entry was torn by a crash is read up to that entry and compacted.
        """
        keys = self._open()
        digest = self._digest(keys, user_id)
        state: dict[str, dict[str, int]] = {}
        _merge(state, self._checkpoint_pieces(keys, user_id, digest))
        return state

    @hookimpl
    def privateshare_checkpoint_pieces(self, user_id: str) -> Iterator[tuple[str, dict[str, int]]]:
        """The user's state in pieces: the base's segments, then the journal's changes.

        Holds one segment (and the journal, which is small) at a time, never the state.
        """
        keys = self._open()
        return self._checkpoint_pieces(keys, user_id, self._digest(keys, user_id))

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
                    keys, user_id, digest, changes.items(), where.journal if where else None
                )
                return True
            changes = {sink: names for sink, names in changes.items() if names}
            if not changes:
                return True
            torn = False
            if where is None or where.marker != self._checkpoint_marker(digest):
                # First save of this process, or another one rewrote the base meanwhile.
                where, torn = self._checkpoint_where(keys, user_id, digest)
            # A base without a journal generation was written before journals: rewritten.
            if where is None or torn or not where.journal:
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
            if where.journal_size > compact_at(where.base_size):
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


def _merge(state: dict[str, dict[str, int]], pieces: Iterable[tuple[str, dict[str, int]]]) -> None:
    """Apply ``pieces`` over ``state`` in order (a later date for a name wins).

    A sink's first piece is kept, not copied: the pieces are the caller's own, decoded for it.
    """
    for sink, names in pieces:
        known = state.get(sink)
        if known is None:
            state[sink] = names
        else:
            known.update(names)


def _stream_size(stream: BinaryIO) -> int:
    """The size of the base ``stream`` reads (a file or the bytes read from a row)."""
    where = stream.tell()
    size = stream.seek(0, io.SEEK_END)
    stream.seek(where)
    return size


def _merged(
    base: Iterable[tuple[str, dict[str, int]]], newer: dict[str, dict[str, int]]
) -> Iterator[tuple[str, dict[str, int]]]:
    """The base's segments with ``newer``'s dates applied, each sink's new names after its
    last segment, then the sinks the base lacks. Holds ``newer`` and one segment.

    Relies on a sink's segments being together (the writer keeps them so; the reader checks).
    """
    current: str | None = None
    for sink, names in base:
        if sink != current:
            if current is not None and (rest := newer.pop(current, None)):
                yield current, rest
            current = sink
        dates = newer.get(sink)
        if dates:
            if len(dates) < len(names):
                for name in [name for name in dates if name in names]:
                    names[name] = dates.pop(name)
            else:
                for name in names:
                    if name in dates:
                        names[name] = dates.pop(name)
        yield sink, names
    if current is not None and (rest := newer.pop(current, None)):
        yield current, rest
    yield from newer.items()


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
