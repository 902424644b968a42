"""Wire and domain objects, as msgspec Structs.

Wire structs keep the API's field names through ``rename``; Python code uses
snake_case. Anything that holds a secret (tokens) redacts it in ``repr``.
Units follow PROTOCOL.md Part D §8: token ``expiry`` in Unix seconds, session
``expiry`` and ``updated_date`` in milliseconds.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

LibraryState = Literal["pending", "running", "partial", "completed"]
FINAL_STATES: frozenset[str] = frozenset({"partial", "completed"})


class Token(msgspec.Struct, frozen=True):
    """One bearer or refresh token; the value never appears in a repr."""

    value: str
    expiry: int = 0  # Unix seconds; 0 = unknown

    def expired(self, now: float | None = None, leeway: float = 30.0) -> bool:
        return (
            bool(self.expiry) and (now if now is not None else time.time()) + leeway >= self.expiry
        )

    def __repr__(self) -> str:
        return f"Token(value=<redacted>, expiry={self.expiry})"

    __str__ = __repr__


class UserAccessToken(msgspec.Struct, frozen=True):
    """A user's ongoing-consent credentials (PROTOCOL.md §A4.2).

    ``staged`` is an answer of the token server (a signed JWT, as secret as the
    tokens) kept from the moment it arrived until it is verified: a crash between
    a refresh and its verification then loses no refresh token. The flow verifies
    and promotes it whenever the token is loaded; token stores keep it like every
    other field.
    """

    access_token: Token
    refresh_token: Token
    user_id: str = ""
    consent_id: str | None = None
    staged: str | None = None

    def __repr__(self) -> str:
        staged = "<redacted>" if self.staged is not None else None
        return (
            f"UserAccessToken(access_token={self.access_token!r}, "
            f"refresh_token={self.refresh_token!r}, user_id={self.user_id!r}, "
            f"consent_id={self.consent_id!r}, staged={staged})"
        )

    __str__ = __repr__


class Session(msgspec.Struct, frozen=True):
    """A data session: its key reads the file list and files until ``expiry`` (ms)."""

    key: str
    expiry: int = 0

    def __repr__(self) -> str:
        return f"Session(key=<redacted>, expiry={self.expiry})"

    __str__ = __repr__


class AccountError(msgspec.Struct, frozen=True, rename="camel"):
    code: str
    status_code: int = 0
    message: str | None = None
    reauth: bool | None = None
    retry_after: int | None = None


class AccountState(msgspec.Struct, frozen=True):
    state: str
    error: AccountError | None = None


class LibraryStatus(msgspec.Struct, frozen=True):
    state: LibraryState
    details: dict[str, AccountState] = {}


class FileEntry(msgspec.Struct, frozen=True, rename="camel", gc=False):
    """One row of the file list: what the flow uses of it, and nothing else.

    A list may have millions of rows, so the rest of each row (``schema``,
    ``serviceName``…; the same metadata comes with the file itself) is not decoded,
    and rows are not tracked by the garbage collector (they hold no containers).
    """

    name: str
    updated_date: int


class FileList(msgspec.Struct, frozen=True, rename="camel"):
    status: LibraryStatus
    file_list: list[FileEntry] | None = None


class FileMetadata(msgspec.Struct, frozen=True):
    """The decoded ``x-metadata`` header of a file (PROTOCOL.md §A4.4)."""

    metadata: dict[str, Any] = {}
    compression: str | None = None

    @property
    def kind(self) -> Literal["mapped", "raw"]:
        """Mapped data comes from services; raw data was pushed, with a mimetype."""
        return "raw" if "mimetype" in self.metadata else "mapped"

    @property
    def mimetype(self) -> str:
        return str(self.metadata.get("mimetype") or "application/json")


class DataFile(msgspec.Struct, frozen=True):
    """A file on its way to the sinks: who it belongs to and what it is."""

    user_id: str
    name: str
    updated_date: int
    metadata: FileMetadata = FileMetadata()
    last_modified: str | None = None

    @property
    def kind(self) -> Literal["mapped", "raw"]:
        return self.metadata.kind


class Account(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A source account the user shared (PROTOCOL.md §A4.5)."""

    id: str
    reference: str = ""
    type: str = "USER"
    created_date: int = 0
    updated_date: int = 0
    service_group_id: int = 0
    service_group_name: str = ""
    service_type_id: int = 0
    service_type_name: str = ""
    service_type_reference: str = ""
    source_id: int = 0
    username: str | None = None
    sample: bool | None = None
    access_token_status: dict[str, Any] | None = None


class RunInfo(msgspec.Struct, frozen=True):
    """Identifies one pull run for one user; given to sinks at open and close."""

    run_id: str
    user_id: str
    started_at: float


class FileFailure(msgspec.Struct, frozen=True):
    name: str
    reason: str
    check: str | None = None


#: Failures a run lists with their reasons; past this only ``files_failed_total`` counts.
MAX_FAILURES_LISTED = 1000


class RunSummary(msgspec.Struct):
    """What a run did; returned by the flow and given to ``privateshare_run_finished``.

    Each entry of the file list ends delivered (``files_delivered``), unchanged since it
    was delivered (``files_skipped``), or failed with a reason: ``files_failed`` lists
    the first :data:`MAX_FAILURES_LISTED` of them, ``files_failed_total`` counts them all.
    """

    run_id: str
    user_id: str
    files_delivered: int = 0
    bytes_delivered: int = 0
    files_skipped: int = 0
    files_failed: list[FileFailure] = []
    files_failed_total: int = 0
    accounts: dict[str, AccountState] = {}
    final_state: str = "pending"
    reauthorize_urls: dict[str, str] = {}
    duration_s: float = 0.0
    #: Why the run stopped early (polling limits, server errors), if it did.
    error: str | None = None
    #: Sink name -> files this run delivered there (a file goes only to the sinks lacking it).
    sinks_delivered: dict[str, int] = {}
    #: Sinks that had no delivery state (new or renamed) and were backfilled.
    sinks_backfilled: list[str] = []
    #: What the operator should know about this run's sinks (backfill, forgotten state).
    notes: list[str] = []

    @property
    def ok(self) -> bool:
        return (
            not self.files_failed_total
            and not self.files_failed
            and not self.error
            and self.final_state == "completed"
        )

    def add_failure(self, failure: FileFailure) -> None:
        """Count a failure; keep its reason while fewer than the limit are listed."""
        self.files_failed_total += 1
        if len(self.files_failed) < MAX_FAILURES_LISTED:
            self.files_failed.append(failure)
