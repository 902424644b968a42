"""Wire and domain objects, as msgspec Structs.

Wire structs keep the API's field names through ``rename``; Python code uses
snake_case. Anything that holds a secret (tokens) redacts it in ``repr``.
Units (protocol.md#tokens, #sessions): token ``expiry`` in Unix seconds, session
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
    """A user's ongoing-consent credentials (protocol.md#tokens).

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
    """The decoded ``x-metadata`` header of a file (protocol.md#files)."""

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
    """A source account the user shared (protocol.md#accounts)."""

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

    def add_failures(self, names: list[str], reason: str) -> None:
        """:meth:`add_failure` for many files that failed for one reason (no check)."""
        self.files_failed_total += len(names)
        room = MAX_FAILURES_LISTED - len(self.files_failed)
        self.files_failed.extend(FileFailure(name, reason) for name in names[: max(0, room)])


# --- discovery and account management (protocol.md#discovery, #account-management) ----


class _Wire(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """A read-only answer of the API; ``to_dict()`` gives it back in the API's field names."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready builtins (what ``--json`` prints)."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class Country(_Wire, frozen=True):
    """A country sources are available in (``POST discovery/countries``)."""

    id: int
    name: str = ""
    code: str = ""


class Category(_Wire, frozen=True):
    """A category of sources, e.g. Health & Fitness (``POST discovery/categories``)."""

    id: int
    name: str = ""
    reference: str = ""


class Platform(_Wire, frozen=True):
    """A platform sources run on (``POST discovery/platforms``)."""

    id: int
    name: str = ""
    reference: str = ""


class SourceService(_Wire, frozen=True):
    """The service a source belongs to."""

    id: int
    name: str = ""
    reference: str = ""


class Source(_Wire, frozen=True):
    """A source a user can onboard (one entry of ``POST discovery/sources``).

    ``countries`` empty means every country. The ``id`` is what ``authorize``/onboarding
    takes as the service to onboard (``service_id``).
    """

    id: int
    name: str = ""
    reference: str = ""
    published_status: str | None = None
    onboardable: bool | None = None
    service: SourceService | None = None
    countries: list[Country] = msgspec.field(default_factory=list, name="country")
    categories: list[Category] = msgspec.field(default_factory=list, name="category")
    platforms: list[Platform] = msgspec.field(default_factory=list, name="platform")


class SourcesPage(_Wire, frozen=True):
    """One page of ``POST discovery/sources``: ``total`` counts every match."""

    data: list[Source]
    limit: int
    offset: int
    total: int

    @property
    def last(self) -> bool:
        """Whether no page follows this one."""
        return not self.data or self.offset + len(self.data) >= self.total


class SourceQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What ``POST discovery/sources`` is asked (protocol.md#discovery).

    ``search`` is free text (every word must match); ``names`` match source names.
    ``country``, ``category``, ``platform``, ``service`` and ``ids`` are ids (from
    :class:`Country`, ... or an earlier answer). ``types`` defaults to pull sources and
    ``published_status`` to approved ones, as the official SDK sends.
    """

    search: str | None = None
    names: tuple[str, ...] = ()
    country: tuple[int, ...] = ()
    category: tuple[int, ...] = ()
    platform: tuple[int, ...] = ()
    service: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    types: tuple[int, ...] = (1,)
    published_status: tuple[str, ...] = ("approved",)
    sort: Literal["asc", "desc"] | None = None
    include: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0

    def body(self) -> dict[str, Any]:
        """The request body, with only what was asked for (and the SDK's two defaults)."""
        filters: dict[str, Any] = {
            "type": {"id": list(self.types)},
            "publishedStatus": list(self.published_status),
        }
        if self.ids:
            filters["id"] = list(self.ids)
        for name in ("country", "category", "platform", "service"):
            ids = getattr(self, name)
            if ids:
                filters[name] = {"id": list(ids)}
        query: dict[str, Any] = {"filter": filters}
        if self.names:
            query["search"] = {"name": list(self.names)}
        if self.search:
            query["queryString"] = self.search
        if self.include:
            query["include"] = list(self.include)
        body: dict[str, Any] = {"query": query}
        if self.limit is not None:
            body["limit"] = self.limit
        if self.offset:
            body["offset"] = self.offset
        if self.sort is not None:
            body["sort"] = {"name": self.sort}
        return body


class ContractApplication(_Wire, frozen=True):
    id: str
    name: str = ""
    resources: dict[str, Any] = {}
    status: int = 0


class ContractTerms(_Wire, frozen=True):
    """What the contract itself says (decoded from its certificate when it carries it).

    ``share_type`` is ``ongoing`` or ``oneoff``; ``service_groups`` what it asks for
    (``{id, name}``); ``time_ranges`` the data's time range (``{type: "all"}``,
    ``{from}``, ``{last: "6m"}``...); ``document`` the whole contract as JSON.
    """

    name: str = ""
    share_type: str = ""
    purpose: str = ""
    service_groups: list[dict[str, Any]] = []
    time_ranges: list[dict[str, Any]] = []
    document: dict[str, Any] = {}


class ContractDetails(_Wire, frozen=True):
    """``GET permission-access/contract``: the contract of the configured credentials.

    ``expiration_date`` is in ms; ``access_type`` ``r`` (read) or ``w`` (write); ``terms``
    is decoded from ``certificate`` when ``type`` is ``x509`` (None if it cannot be).
    """

    id: str
    access_type: str
    application: ContractApplication
    certificate: str
    certificate_contract_schema_version: str
    expiration_date: int
    partner_id: str
    type: str
    terms: ContractTerms | None = None


class RevokeUrl(_Wire, frozen=True):
    """Where the user withdraws one account's permission (``GET permission-access/revoke``).

    After it, the user is sent to the redirect URI with ``result=success|failed``. The URL
    carries a one-time code, so a repr does not show it.
    """

    location: str

    def __repr__(self) -> str:
        return "RevokeUrl(location=<revoke url>)"
