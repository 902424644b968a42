"""Every knob of the sandbox in one frozen dataclass.

The CLI flags map one to one onto these fields; tests and the demo build one
directly. Defaults are what a developer wants from ``privateshare sandbox``:
a realistic pace, no faults, and consent given automatically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_REDIRECT_URIS: tuple[str, ...] = (
    "http://127.0.0.1:8765/callback",
    "http://localhost:8765/callback",
)

#: Endpoint kinds faults can be applied to (see :attr:`SandboxSettings.fault_endpoints`).
FAULT_ENDPOINTS: frozenset[str] = frozenset(
    {
        "session",
        "authorize",
        "token",
        "reference",
        "trigger",
        "list",
        "file",
        "accounts",
        "user",
        "sample",
        "jwks",
        "discovery",
        "service",
        "revoke",
        "contract",
    }
)

#: ``fault_endpoints`` shorthand for every kind in :data:`FAULT_ENDPOINTS`.
ALL_ENDPOINTS = "all"

LOOPBACK_HOSTS: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class SandboxSettings:
    """Configuration of one sandbox run. Times are seconds unless the name says ms."""

    # -- network ------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    # -- the user's library (passed to ``generate_library``) -----------------
    seed: int = 1
    files: int = 24
    large_files: int = 0
    large_file_size: int = 256 << 20
    size_distribution: str = "realistic"
    updated_fraction: float = 0.2
    partial: bool = False  # one account ends ``partial`` with ServiceAuthorizationError
    # -- a hostile library (the client must deliver or report each entry) ------
    nonpositive_dates: int = 0  # this many files listed with updatedDate 0 or negative
    unsafe_names: bool = False  # add entries named "", "..", "a/../../x", "/x", ...
    # -- contracts ----------------------------------------------------------
    redirect_uris: tuple[str, ...] = DEFAULT_REDIRECT_URIS
    # -- consent and pace -----------------------------------------------------
    auto_consent: bool = True  # GET {onboard}authorize redirects with success at once
    pending_polls: int = 1  # list polls answered ``pending`` after consent
    running_polls: int = 2  # list polls answered ``running`` before the final state
    # -- lifetimes ------------------------------------------------------------
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 30 * 24 * 3600
    access_token_max_uses: int = 0  # >0: an access token expires after this many uses
    revoke_access_on_refresh: bool = False  # True: refreshing kills the old access token
    session_lifetime: int = 15 * 60
    code_lifetime: int = 10 * 60
    timestamp_window: float = 300.0  # request JWT ``timestamp`` skew allowed, either way
    #: >0: the Nth ``jwks/oauth`` request (1-based, v1.7 and v1.5 counted together) is not
    #: answered until its client goes away, so a test can kill a client inside that window.
    hold_jwks: int = 0
    # -- API v1.5 SDK status (protocol.md#sessions) -------------------------------------
    #: ``x-digi-sdk-status`` on every v1.5 API answer (e.g. ``deprecated``); "" = none.
    #: ``unsupported`` also refuses new v1.5 sessions with 403 ``SDKVersionInvalid``.
    sdk_status: str = ""
    sdk_status_message: str = ""  # ``x-digi-sdk-status-message``
    # -- faults (decided by a seeded RNG per endpoint, resource and attempt) -----
    fault_seed: int | None = None  # None = same as ``seed``
    #: Endpoint kinds faults apply to; ``"all"`` stands for every one of them.
    fault_endpoints: frozenset[str] = field(
        default_factory=lambda: frozenset({"list", "file", "accounts"})
    )
    error_rate: float = 0.0  # answer 500/502/503
    reset_rate: float = 0.0  # close the socket before answering
    truncate_rate: float = 0.0  # send Content-Length, then close halfway through the body
    corrupt_rate: float = 0.0  # flip one ciphertext byte in a file body
    bad_metadata_rate: float = 0.0  # drop or garble ``x-metadata`` on a file
    latency: float = 0.0  # added before every answer
    latency_jitter: float = 0.0  # plus uniform(0, jitter)

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"sandbox host {self.host!r} is not a loopback address; "
                "the sandbox only listens on 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        for name in (
            "error_rate",
            "reset_rate",
            "truncate_rate",
            "corrupt_rate",
            "bad_metadata_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in (
            "files",
            "large_files",
            "pending_polls",
            "running_polls",
            "nonpositive_dates",
            "hold_jwks",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.unsafe_names and self.files < 1:
            raise ValueError("unsafe_names copies an ordinary file: files must be at least 1")
        endpoints = frozenset(self.fault_endpoints)
        unknown = endpoints - FAULT_ENDPOINTS - {ALL_ENDPOINTS}
        if ALL_ENDPOINTS in endpoints:
            endpoints = FAULT_ENDPOINTS
        if unknown:
            raise ValueError(
                f"unknown fault endpoint(s) {sorted(unknown)}; "
                f"choose from {sorted(FAULT_ENDPOINTS)} or {ALL_ENDPOINTS!r}"
            )
        if not self.redirect_uris:
            raise ValueError("redirect_uris must allow at least one URI")
        for name in ("sdk_status", "sdk_status_message"):
            value = getattr(self, name)
            if any(c in value for c in "\r\n") or not value.isascii():
                raise ValueError(f"{name} must be one line of ASCII (it is sent as a header)")
        object.__setattr__(self, "fault_endpoints", endpoints)
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))

    @property
    def effective_fault_seed(self) -> int:
        """The seed the fault RNG uses."""
        return self.seed if self.fault_seed is None else self.fault_seed

    @property
    def has_faults(self) -> bool:
        """Whether any fault can fire."""
        return any(
            (
                self.error_rate,
                self.reset_rate,
                self.truncate_rate,
                self.corrupt_rate,
                self.bad_metadata_rate,
            )
        )

    def replace(self, **changes: object) -> SandboxSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def instant(cls, **changes: object) -> SandboxSettings:
        """Settings for tests: the first list poll is already final."""
        base: dict[str, object] = {"pending_polls": 0, "running_polls": 0, "auto_consent": True}
        base.update(changes)
        return cls(**base)  # type: ignore[arg-type]
