"""Token storage in a local directory, encrypted at rest (``file``).

Layout, one directory per contract under ``path``::

    <path>/<contract>/store.key            the store key, wrapped to the contract's public key
    <path>/<contract>/<digest>.token       a user's access + refresh token (AES-256-GCM)
    <path>/<contract>/<digest>.checkpoint  a user's delivery state: base snapshot (AES-256-GCM)
    <path>/<contract>/<digest>.<gen>.journal  changes since that base, each sealed on its own
    <path>/<contract>/<digest>.run         the user's last run record (AES-256-GCM)
    <path>/<contract>/locks/<digest>.lock  the per-user refresh lock (empty)

``<digest>`` is an HMAC of the user id under a key derived from the store key,
so file names reveal nothing about who the users are, and any user id (slashes,
dots, emoji) maps to a safe name. The store key is 32 random bytes, wrapped with
RSA-OAEP-SHA1 to the contract key and unwrapped once per process through the
key handle, so the same code works when the private key lives in KMS or an HSM.
A copy of the directory without the contract private key is useless.

A checkpoint save appends one sealed entry (a 4-byte length, then the sealed
changes) to the journal and fsyncs it: O(what changed). When the journal outgrows
a quarter of the base it is folded into a new base naming a new generation, streamed: the old
base is read and the new one written to its temp file a segment at a time (the
base is made of separately sealed segments, see ``tokenseal``); a journal whose
generation is not the base's is left over from a crash and ignored, and a torn
last entry (a crash mid-append) is ignored, never misread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import filelock
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.errors import PrivateShareError, TokenStoreError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.keys import public_key_fingerprint
from privateshare.plugins.tokenseal import (
    STORE_KEY_FORMAT,
    STORE_KEY_VERSION,
    Kind,
    SealedRecordStore,
    StoreKeys,
    key_check,
    new_store_key,
    open_store_key,
)

log = logging.getLogger("privateshare.tokens")

STORE_KEY_FILE = "store.key"
_SAFE_DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FORGET_HINT = (
    "delete that file (the user then consents again), or restore the token directory "
    "together with its store.key and the contract key it was created with"
)


class _StoreKeyFile(msgspec.Struct, frozen=True):
    """``store.key`` on disk: the wrapped store key and what it was wrapped to."""

    format: str
    version: int
    contract_id: str
    wrapping: str
    public_key_sha256: str
    wrapped_key: str
    key_check: str
    created_at: float = 0.0


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes]) -> int:
    """Write ``data`` (bytes, or chunks written as they come) to ``path`` all or nothing:
    temp file, fsync, rename, fsync directory; the bytes written.

    The temp file is created by :func:`tempfile.mkstemp`, so it is mode 0600 from
    its first byte; readers see either the old file or the new one, never a part.
    An exception from ``data`` leaves the old file as it was.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in (data,) if isinstance(data, bytes) else data:
                size += fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return size


_PERMISSIONS_FIX = (
    "check the permissions: the directories must be readable, writable and searchable "
    "(mode 0700), and the files readable and writable (mode 0600), by the user running "
    "privateshare"
)


def _unreadable(path: Path, exc: OSError, what: str = "") -> TokenStoreError:
    return TokenStoreError(
        f"cannot access {what or 'the token store path'} {path} ({exc.strerror}); "
        + _PERMISSIONS_FIX
    )


def _cannot_read(place: str, exc: OSError) -> TokenStoreError:
    """A record (or the base) that exists but cannot be read: ``place`` names it and its user."""
    return TokenStoreError(
        f"cannot read {place} ({exc.strerror}); check its permissions (mode 0600, "
        "owned by the user running privateshare)"
    )


def _exists(path: Path) -> bool:
    """``path.exists()``, with an inaccessible path reported as such."""
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return True


def _make_private_dir(path: Path, warn: bool = True) -> None:
    """Create ``path`` (and parents) as 0700; warn when an existing one is more open."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None
    except OSError as exc:
        raise _unreadable(path, exc, "the token directory") from None
    if mode is not None:
        if warn and os.name == "posix" and mode & 0o077:
            log.warning(
                "the token directory %s is accessible by group or others (mode %04o); "
                "restrict it with 'chmod 700 %s'",
                path,
                mode,
                path,
            )
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise TokenStoreError(
            f"cannot create the token directory {path} ({exc.strerror}); create it or "
            "choose another [tokens] path"
        ) from None


class FileTokenStore(SealedRecordStore, Plugin):
    """Users' tokens and checkpoints in a local directory, encrypted with a wrapped store key."""

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        #: Root directory; one subdirectory per contract is created in it.
        path: Annotated[str, msgspec.Meta(min_length=1)] = "privateshare-tokens"
        #: Seconds to wait for another process's refresh lock before giving up.
        lock_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    description = "tokens and checkpoints in a local directory, encrypted at rest (AES-256-GCM)"
    record_fix = _FORGET_HINT

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.root = context.resolve(options.path)
        contract = context.contract_id
        if _SAFE_DIR_NAME.match(contract) and contract not in (".", ".."):
            name = contract
        else:
            name = "contract-" + hashlib.sha256(contract.encode("utf-8")).hexdigest()[:32]
        self.directory = self.root / name
        self.key_path = self.directory / STORE_KEY_FILE
        self.key_where = f"its store key {self.key_path}"
        self.key_fix = f"move {self.directory} aside and let users consent again"
        self._keys: StoreKeys | None = None
        self._open_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileTokenStore({self.context.name}, directory={self.directory})"

    # --- the store key -------------------------------------------------------

    def _open(self) -> StoreKeys:
        """The store's keys, unwrapping (or creating) the store key on first use only."""
        with self._open_lock:
            if self._keys is None:
                if not self.context.contract_id:
                    raise TokenStoreError(
                        "the file token store needs the contract id; set contract_id in the "
                        "[digime] table"
                    )
                # The contract directory guards the records; the root may be shared.
                _make_private_dir(self.root, warn=False)
                _make_private_dir(self.directory)
                _make_private_dir(self.directory / "locks", warn=False)
                key_path = self.key_path
                if not _exists(key_path):
                    # Two processes may start on an empty store at once: only one creates.
                    lock_path = self.directory / "locks" / "store.key.lock"
                    with self._file_lock(lock_path, "the store key"):
                        if not _exists(key_path):
                            self._refuse_to_replace_a_lost_key()
                            self._keys = StoreKeys(self._create_store_key(key_path))
                if self._keys is None:
                    keys = StoreKeys(self._unwrap_store_key(key_path))
                    self._check_sealed_by(keys, self._samples())
                    self._keys = keys
            return self._keys

    def _samples(self, count: int = 8) -> Iterator[bytes]:
        """The heads of a few records, enough to tell which store key sealed them."""
        for path in self._record_files()[:count]:
            try:
                with path.open("rb") as fh:
                    yield fh.read(64)
            except OSError:
                continue  # reported when that record is read

    def _refuse_to_replace_a_lost_key(self) -> None:
        """Records without their store key are unreadable; a new key must not hide that."""
        records = self._record_files()
        if records:
            raise TokenStoreError(
                f"the token directory {self.directory} holds {len(records)} sealed records but "
                f"no {STORE_KEY_FILE}: the store key they were sealed with was deleted or moved, "
                f"and without it they cannot be read. Restore {self.key_path} from a backup "
                f"(with the contract key it was created with), or move {self.directory} aside "
                "to start afresh: every user then consents again"
            )

    def _record_files(self) -> list[Path]:
        """The token and checkpoint records in the directory, by name."""
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise TokenStoreError(
                f"cannot list the token directory {self.directory} ({exc.strerror}); "
                + _PERMISSIONS_FIX
            ) from None
        return sorted(
            self.directory / name
            for name in names
            if not name.startswith(".") and name.endswith((".token", ".checkpoint", ".run"))
        )

    def _public_key(self) -> rsa.RSAPublicKey:
        try:
            return self.context.key_handle().public_key()
        except PrivateShareError:
            raise
        except Exception as exc:
            raise TokenStoreError(
                f"the token store {self.directory} needs the contract key, and the key store "
                f"failed ({type(exc).__name__}); check the [keys] table"
            ) from exc

    def _create_store_key(self, key_path: Path) -> bytes:
        public = self._public_key()
        store_key, wrapped = new_store_key(public, self.context.key_handle())
        record = _StoreKeyFile(
            format=STORE_KEY_FORMAT,
            version=STORE_KEY_VERSION,
            contract_id=self.context.contract_id,
            wrapping="RSA-OAEP-SHA1",
            public_key_sha256=public_key_fingerprint(public),
            wrapped_key=base64.b64encode(wrapped).decode(),
            key_check=key_check(store_key, self.context.contract_id),
            created_at=time.time(),
        )
        try:
            atomic_write(key_path, msgspec.json.encode(record))
        except OSError as exc:
            raise TokenStoreError(
                f"cannot write the token store key {key_path} ({exc.strerror}); check free "
                f"space, and {_PERMISSIONS_FIX}"
            ) from None
        log.info("created a new token store key in %s", key_path)
        return store_key

    def _unwrap_store_key(self, key_path: Path) -> bytes:
        forget = (
            f"if the tokens are expendable, move {self.directory} aside and let users consent again"
        )
        try:
            raw = key_path.read_bytes()
        except OSError as exc:
            raise TokenStoreError(
                f"cannot read the token store key {key_path} ({exc.strerror}); check its "
                "permissions (it should be mode 0600, owned by the user running privateshare)"
            ) from None
        try:
            record = msgspec.json.decode(raw, type=_StoreKeyFile)
            wrapped = base64.b64decode(record.wrapped_key, validate=True)
        except (msgspec.DecodeError, ValueError):
            raise TokenStoreError(
                f"the token store key {key_path} is damaged (not a privateshare store key); "
                f"restore it from a backup, or {forget}"
            ) from None
        if record.format != STORE_KEY_FORMAT or record.version != STORE_KEY_VERSION:
            raise TokenStoreError(
                f"the token store key {key_path} has format {record.format!r} version "
                f"{record.version}, which this privateshare does not read; upgrade privateshare"
            )
        if record.contract_id != self.context.contract_id:
            raise TokenStoreError(
                f"the token store key {key_path} belongs to contract {record.contract_id!r}, "
                f"not to {self.context.contract_id!r}; put it back in its own contract's "
                f"directory, or {forget}"
            )
        self._public_key()  # a failing key store is reported as such, first
        return open_store_key(
            self.context.key_handle(),
            wrapped,
            public_key_sha256=record.public_key_sha256,
            check=record.key_check,
            contract_id=self.context.contract_id,
            where=f"the token store key {key_path}",
            forget=forget,
        )

    # --- records -------------------------------------------------------------

    def _path(self, digest: str, kind: Kind) -> Path:
        return self.directory / f"{digest}.{kind}"

    def _read(self, digest: str, kind: Kind, who: str) -> tuple[bytes | None, str]:
        path = self._path(digest, kind)
        place = f"the {kind} record of {who} at {path}"
        try:
            return path.read_bytes(), place
        except FileNotFoundError:
            return None, place
        except OSError as exc:
            raise _cannot_read(place, exc) from None

    def _write(self, digest: str, kind: Kind, who: str, blob: bytes) -> None:
        self._replace(digest, kind, who, blob)

    def _replace(self, digest: str, kind: Kind, who: str, data: bytes | Iterable[bytes]) -> int:
        path = self._path(digest, kind)
        try:
            return atomic_write(path, data)
        except OSError as exc:
            raise TokenStoreError(
                f"cannot write the {kind} record of {who} to {path} "
                f"({exc.strerror}); check free space and permissions of {self.directory}"
            ) from None

    def _token_blobs(self) -> Iterator[tuple[str, str, bytes | TokenStoreError]]:
        for path in self._record_files():
            if path.suffix != ".token":
                continue
            place = f"the token record at {path}"
            try:
                blob: bytes | TokenStoreError = path.read_bytes()
            except FileNotFoundError:  # deleted meanwhile
                continue
            except OSError as exc:
                blob = TokenStoreError(
                    f"cannot read {place} ({exc.strerror}); check its permissions (mode "
                    "0600, owned by the user running privateshare)"
                )
            yield path.stem, place, blob

    def _file_lock(self, path: Path, what: str) -> AbstractContextManager[None]:
        return _TimedLock(path, self.options.lock_timeout, what)

    # --- the checkpoint journal -----------------------------------------------

    def _journal_path(self, digest: str, journal: str) -> Path:
        return self.directory / f"{digest}.{journal}.journal"

    def _checkpoint_marker(self, digest: str) -> Any:
        try:
            st = self._path(digest, "checkpoint").stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(self._path(digest, "checkpoint"), exc, "the checkpoint") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _journal_read(self, digest: str, journal: str, who: str) -> tuple[list[bytes], bool, int]:
        path = self._journal_path(digest, journal)
        blobs: list[bytes] = []
        try:
            with path.open("rb") as fh:  # entry by entry: the journal is not held twice
                size = os.fstat(fh.fileno()).st_size
                at = 0
                while at < size:
                    head = fh.read(4)
                    (length,) = struct.unpack(">I", head) if len(head) == 4 else (0,)
                    blob = fh.read(length) if length else b""
                    if not length or len(blob) < length:
                        return blobs, True, size
                    blobs.append(blob)
                    at += 4 + length
        except FileNotFoundError:
            return [], False, 0
        except OSError as exc:
            raise _unreadable(path, exc, f"the checkpoint journal of {who}") from None
        return blobs, False, size

    def _journal_append(self, digest: str, journal: str, who: str, blob: bytes) -> int:
        path = self._journal_path(digest, journal)
        entry = struct.pack(">I", len(blob)) + blob
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                created = os.fstat(fd).st_size == 0
                view = memoryview(entry)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.directory)
        except OSError as exc:
            raise TokenStoreError(
                f"cannot append to the checkpoint journal of {who} at {path} ({exc.strerror}); "
                f"check free space and permissions of {self.directory}"
            ) from None
        return size

    def _checkpoint_open(self, digest: str, who: str) -> tuple[BinaryIO | None, str]:
        """The base file, open: its pieces are read one at a time, never the whole file."""
        path = self._path(digest, "checkpoint")
        place = f"the checkpoint record of {who} at {path}"
        try:
            return path.open("rb"), place
        except FileNotFoundError:
            return None, place
        except OSError as exc:
            raise _cannot_read(place, exc) from None

    def _checkpoint_rewrite(
        self, digest: str, who: str, chunks: Iterable[bytes], old: str | None
    ) -> int:
        # The new base goes to a temp file piece by piece while the old one is read.
        size = self._replace(digest, "checkpoint", who, chunks)
        if old:
            with contextlib.suppress(FileNotFoundError):
                self._journal_path(digest, old).unlink()
        return size

    def _checkpoint_lock(self, digest: str) -> AbstractContextManager[Any]:
        path = self.directory / "locks" / f"{digest}.checkpoint.lock"
        return self._file_lock(path, "a checkpoint")

    # --- hooks ---------------------------------------------------------------

    @hookimpl
    def privateshare_token_delete(self, user_id: str) -> bool:
        """Remove the user's token and checkpoint; ``False`` when there was nothing."""
        digest = self._digest(self._open(), user_id)
        deleted = False
        paths = [self._path(digest, kind) for kind in ("token", "checkpoint", "run")]
        paths += self.directory.glob(f"{digest}.*.journal")
        self._checkpoint_cache().pop(digest, None)
        for path in paths:
            kind = path.suffix[1:]
            try:
                path.unlink()
                deleted = True
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise TokenStoreError(
                    f"cannot delete the {kind} record of user {user_id!r} at {path} "
                    f"({exc.strerror}); check the permissions of {self.directory}"
                ) from None
        if deleted:
            _fsync_dir(self.directory)
        return deleted

    @hookimpl
    def privateshare_token_lock(self, user_id: str) -> AbstractContextManager[None]:
        """A per-user lock held across processes (``filelock``), waiting ``lock_timeout`` s."""
        digest = self._digest(self._open(), user_id)
        path = self.directory / "locks" / f"{digest}.lock"
        return self._file_lock(path, f"the token of user {user_id!r}")


class _TimedLock(AbstractContextManager[None]):
    """A ``filelock.FileLock`` whose timeout becomes a :class:`TokenStoreError` saying what."""

    def __init__(self, path: Path, timeout: float, what: str) -> None:
        self.path = path
        self.timeout = timeout
        self.what = what
        self._lock = filelock.FileLock(path, timeout=timeout, mode=0o600)

    def __enter__(self) -> None:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise TokenStoreError(
                f"timed out after {self.timeout:g} s waiting for the lock on {self.what} "
                f"({self.path}); another privateshare process holds it (probably refreshing). "
                "Retry later, or raise [tokens] lock_timeout"
            ) from None
        except OSError as exc:
            raise TokenStoreError(
                f"cannot take the lock {self.path} ({exc.strerror}); " + _PERMISSIONS_FIX
            ) from None

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def __repr__(self) -> str:
        return f"TokenLock({self.path})"
