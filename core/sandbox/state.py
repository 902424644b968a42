"""Shared mutable state of a running sandbox, behind one lock.

Nonces, users, pre-authorization and authorization codes, tokens, sessions and
counters live here. Handlers run on many threads; every method takes the lock,
so each one is atomic (a refresh token can rotate only once, a code is
exchanged only once, a nonce is accepted only once).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

from . import errors
from .settings import SandboxSettings

#: Faulted answers remembered by the fault log (the oldest are forgotten first).
FAULT_LOG_SIZE = 100_000


def s256(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class User:
    """A digi.me user who consented; all users see the sandbox's one library."""

    user_id: str
    consent_id: str
    identifier: str
    reauthorized: set[str] = field(default_factory=set)  # account ids fixed by reauthorize


@dataclass
class Session:
    """A read session: its key, owner and where it is in the file-list state machine."""

    key: str
    client_id: str
    expiry_ms: int
    user_id: str | None = None
    consented: bool = False
    polls: int = 0  # list polls answered since consent
    stage: int | None = None  # None: nothing listed yet; else the last stage listed
    account_filter: frozenset[str] | None = None
    api: str = "v1.7"  # a session is read on the API version that made it
    exchange_token: str | None = None  # v1.5: opens the guest consent page (protocol.md#consent)

    def wire(self) -> dict[str, object]:
        """The ``{key, expiry}`` object the API returns."""
        return {"key": self.key, "expiry": self.expiry_ms}


@dataclass
class Grant:
    """A pre-authorization or reference code waiting for the user on a web page."""

    code: str
    kind: str  # "authorize" or "reference"
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str | None
    session_key: str
    user_id: str | None
    expires_ms: int
    used: bool = False
    account_id: str | None = None  # the account a ``revoke`` code is for


@dataclass
class AuthCode:
    """An authorization code from a callback, exchangeable once with its PKCE verifier."""

    client_id: str
    user_id: str
    code_challenge: str | None
    expires_ms: int
    session_key: str | None = None  # the consented session (what a one-off token may read)
    redirect_uri: str | None = None  # v1.5: the exchange must name the same redirect_uri


@dataclass
class Token:
    """An access or refresh token record."""

    client_id: str
    user_id: str
    expires_on: int  # Unix seconds
    uses: int = 0
    partner: str | None = None  # the access token issued with a refresh token
    session_key: str | None = None  # set for one-off tokens: the only session they may read


@dataclass(frozen=True)
class TokenPair:
    """What ``oauth/token`` returns, before signing."""

    access: str
    access_expires_on: int
    refresh: str
    refresh_expires_on: int
    user: User


class Store:
    """All of the sandbox's mutable state, each method atomic under one lock."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._nonces: dict[str, int] = {}  # nonce -> ms after which it can be forgotten
        self._nonce_prune_at = 0
        self.users: dict[str, User] = {}
        self.sessions: dict[str, Session] = {}
        self.exchange_tokens: dict[str, str] = {}  # v1.5 sessionExchangeToken -> session key
        self.grants: dict[str, Grant] = {}
        self.codes: dict[str, AuthCode] = {}
        self.access: dict[str, Token] = {}
        self.refresh: dict[str, Token] = {}
        self.references: dict[str, tuple[str, str]] = {}  # id -> (type, value)
        self.revoked: set[str] = set()  # account ids whose permission the user withdrew
        self.counters: Counter[str] = Counter()
        self.endpoint_counts: Counter[str] = Counter()
        self.error_counts: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.fault_log: deque[dict[str, object]] = deque(maxlen=FAULT_LOG_SIZE)

    # -- counters -------------------------------------------------------------
    def count(self, counter: str, key: str, n: int = 1) -> None:
        """Add to one of the stats counters."""
        with self._lock:
            getattr(self, counter)[key] += n

    def record_faults(self, kind: str, resource: str, attempt: int, faults: list[str]) -> None:
        """Count the faults injected into one answer and log which request got them."""
        with self._lock:
            self.fault_counts.update(faults)
            self.fault_log.append(
                {"kind": kind, "resource": resource, "attempt": attempt, "faults": faults}
            )

    def faults(self) -> list[dict[str, object]]:
        """The fault log, oldest first (the last :data:`FAULT_LOG_SIZE` faulted answers)."""
        with self._lock:
            return list(self.fault_log)

    def next_attempt(self, kind: str, resource: str) -> int:
        """The 0-based attempt number of a request for one resource (drives faults)."""
        with self._lock:
            n = self.attempts[(kind, resource)]
            self.attempts[(kind, resource)] = n + 1
            return n

    def stats(self) -> dict[str, object]:
        """A snapshot of the counters, JSON-ready."""
        with self._lock:
            return {
                "requests": dict(self.endpoint_counts),
                "refresh": self.counters["refresh"],
                "refresh_failed": self.counters["refresh_failed"],
                "code_exchanges": self.counters["code_exchanges"],
                "triggers": self.counters["triggers"],
                "sessions": len(self.sessions),
                "file_downloads": self.counters["file_downloads"],
                "bytes_sent": self.counters["bytes_sent"],
                "errors": dict(self.error_counts),
                "faults": dict(self.fault_counts),
                "users": len(self.users),
            }

    # -- nonces ---------------------------------------------------------------
    def use_nonce(self, nonce: str, now_ms: int, window_ms: int) -> None:
        """Accept a nonce once; 406 InvalidRequest if it was used before.

        A nonce needs remembering only while its JWT's timestamp is inside the
        window; after that the timestamp check rejects a replay anyway.
        """
        with self._lock:
            if nonce in self._nonces:
                raise errors.nonce_used(nonce)
            self._nonces[nonce] = now_ms + 2 * window_ms
            if now_ms >= self._nonce_prune_at:
                self._nonces = {n: t for n, t in self._nonces.items() if t > now_ms}
                self._nonce_prune_at = now_ms + 10_000

    # -- users and sessions -----------------------------------------------------
    def _new_user(self) -> User:
        user = User(
            user_id="user-" + secrets.token_hex(8),
            consent_id="consent-" + secrets.token_hex(8),
            identifier="id-" + secrets.token_hex(8),
        )
        self.users[user.user_id] = user
        return user

    def create_session(
        self,
        client_id: str,
        now_ms: int,
        *,
        user_id: str | None = None,
        consented: bool = False,
        account_filter: frozenset[str] | None = None,
        api: str = "v1.7",
    ) -> Session:
        """A new read session, pending until consent (or already consented for ``trigger``).

        A v1.5 session also gets a ``sessionExchangeToken`` for the guest page.
        """
        with self._lock:
            session = Session(
                key=secrets.token_urlsafe(24),
                client_id=client_id,
                expiry_ms=now_ms + self.settings.session_lifetime * 1000,
                user_id=user_id,
                consented=consented,
                account_filter=account_filter,
                api=api,
            )
            if api == "v1.5":
                session.exchange_token = secrets.token_urlsafe(24)
                self.exchange_tokens[session.exchange_token] = session.key
            self.sessions[session.key] = session
            return session

    def session(self, key: str, now_ms: int) -> Session:
        """A live session, or 404 InvalidSession."""
        with self._lock:
            session = self.sessions.get(key)
            if session is None or session.expiry_ms < now_ms:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return session

    def session_v15(self, key: str, now_ms: int, *, by_exchange_token: bool = False) -> Session:
        """A live v1.5 session by key (or by exchange token), or 404 InvalidSession."""
        with self._lock:
            if by_exchange_token:
                key = self.exchange_tokens.get(key, "")
            session = self.sessions.get(key)
            if session is None or session.expiry_ms < now_ms or session.api != "v1.5":
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return session

    def consent_v15(
        self, session_key: str, grant_code: str | None, now_ms: int
    ) -> tuple[Session, Grant | None, str | None]:
        """The user shared a v1.5 session in the app or on the guest page (protocol.md#consent).

        The session is bound to a new user and consented. With a pre-authorization
        code (ongoing consent) the grant is spent and an authorization code minted,
        bound to the grant's PKCE challenge and redirect_uri. Returns the session,
        the grant (or None) and the authorization code (or None).
        """
        with self._lock:
            session = self.sessions.get(session_key)
            if (
                session is None
                or session.api != "v1.5"
                or session.expiry_ms < now_ms
                or session.consented
            ):
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            grant = None
            if grant_code is not None:
                grant = self.grants.get(grant_code)
                if (
                    grant is None
                    or grant.used
                    or grant.expires_ms < now_ms
                    or grant.kind != "authorize-v1.5"
                    or grant.client_id != session.client_id
                ):
                    raise errors.not_found("InvalidCode", "The code is invalid, used or expired")
                grant.used = True
            user = self._new_user()
            session.user_id = user.user_id
            session.consented = True
            auth_code = None
            if grant is not None:
                auth_code = secrets.token_urlsafe(24)
                self.codes[auth_code] = AuthCode(
                    client_id=grant.client_id,
                    user_id=user.user_id,
                    code_challenge=grant.code_challenge,
                    expires_ms=now_ms + self.settings.code_lifetime * 1000,
                    session_key=session.key,
                    redirect_uri=grant.redirect_uri,
                )
            return session, grant, auth_code

    def bind_session(self, session: Session, user_id: str) -> None:
        """v1.5 ``trigger``: the token's user takes a session (protocol.md#sessions)."""
        with self._lock:
            if session.user_id is not None and session.user_id != user_id:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            session.user_id = user_id
            session.consented = True

    def advance(self, session: Session) -> tuple[bool, int]:
        """Count one list poll; return (consented, poll index) atomically."""
        with self._lock:
            if not session.consented:
                return False, 0
            index = session.polls
            session.polls += 1
            return True, index

    def set_stage(self, session: Session, stage: int) -> None:
        """Record the stage a list poll showed; never moves backwards."""
        with self._lock:
            if session.stage is None or stage > session.stage:
                session.stage = stage

    def user(self, user_id: str) -> User:
        with self._lock:
            user = self.users.get(user_id)
            if user is None:
                raise errors.invalid_token("access_token")
            return user

    def delete_user(self, user_id: str) -> None:
        """Forget a user with every token, code and session of theirs."""
        with self._lock:
            self.users.pop(user_id, None)
            for table in (self.access, self.refresh, self.codes):
                for value in [v for v, rec in table.items() if rec.user_id == user_id]:
                    del table[value]
            for key in [k for k, s in self.sessions.items() if s.user_id == user_id]:
                del self.sessions[key]

    # -- grants (pre-authorization and reference codes) ---------------------------
    def create_grant(
        self,
        kind: str,
        client_id: str,
        redirect_uri: str,
        state: str | None,
        code_challenge: str | None,
        session_key: str,
        user_id: str | None,
        now_ms: int,
        *,
        account_id: str | None = None,
    ) -> Grant:
        """A code for a web page; the page turns it into consent or a cancel."""
        with self._lock:
            grant = Grant(
                code=secrets.token_urlsafe(24),
                kind=kind,
                client_id=client_id,
                redirect_uri=redirect_uri,
                state=state,
                code_challenge=code_challenge,
                session_key=session_key,
                user_id=user_id,
                expires_ms=now_ms + self.settings.code_lifetime * 1000,
                account_id=account_id,
            )
            self.grants[grant.code] = grant
            return grant

    def grant(self, code: str, now_ms: int) -> Grant:
        """An unused, unexpired grant, or 404 INVALID_CODE."""
        with self._lock:
            grant = self.grants.get(code)
            if grant is None or grant.used or grant.expires_ms < now_ms:
                raise errors.not_found("InvalidCode", "The code is invalid, used or expired")
            return grant

    def consent(self, code: str, now_ms: int, *, issue_code: bool) -> tuple[Grant, str, str | None]:
        """The user shared: bind the session to a user; maybe mint an authorization code.

        Returns the grant, the user id and the authorization code (or None).
        """
        with self._lock:
            grant = self.grants.get(code)
            if grant is None or grant.used or grant.expires_ms < now_ms:
                raise errors.not_found("InvalidCode", "The code is invalid, used or expired")
            grant.used = True
            user = self.users.get(grant.user_id) if grant.user_id else None
            if user is None:
                user = self._new_user()
            session = self.sessions.get(grant.session_key)
            if session is not None:
                session.user_id = user.user_id
                session.consented = True
            auth_code = None
            if issue_code:
                auth_code = secrets.token_urlsafe(24)
                self.codes[auth_code] = AuthCode(
                    client_id=grant.client_id,
                    user_id=user.user_id,
                    code_challenge=grant.code_challenge,
                    expires_ms=now_ms + self.settings.code_lifetime * 1000,
                    session_key=grant.session_key,
                )
            return grant, user.user_id, auth_code

    def cancel(self, code: str, now_ms: int) -> Grant:
        """The user cancelled: the grant is spent, the session stays pending."""
        return self.spend(code, now_ms)

    def spend(self, code: str, now_ms: int) -> Grant:
        """Use a grant up (a page acted on it); 404 InvalidCode if it cannot be used."""
        with self._lock:
            grant = self.grants.get(code)
            if grant is None or grant.used or grant.expires_ms < now_ms:
                raise errors.not_found("InvalidCode", "The code is invalid, used or expired")
            grant.used = True
            return grant

    def add_reference(self, ref_type: str, value: str) -> str:
        """``POST reference``: remember a value under a new id."""
        with self._lock:
            ref = "ref-" + secrets.token_hex(8)
            self.references[ref] = (ref_type, value)
            return ref

    def reauthorize_account(self, user_id: str, account_id: str) -> None:
        """The user fixed an account's authorization: it is no longer ``partial``."""
        with self._lock:
            self.revoked.discard(account_id)
            user = self.users.get(user_id)
            if user is not None:
                user.reauthorized.add(account_id)

    def revoke_account(self, account_id: str) -> None:
        """The user withdrew an account's permission: it needs reauthorizing to sync again."""
        with self._lock:
            self.revoked.add(account_id)

    def revoked_accounts(self) -> frozenset[str]:
        """Accounts whose permission was withdrawn (and not reauthorized since)."""
        with self._lock:
            return frozenset(self.revoked)

    # -- tokens -------------------------------------------------------------------
    def _issue(
        self, client_id: str, user: User, now_s: int, *, oneoff_session: str | None = None
    ) -> TokenPair:
        """A new token pair; a one-off one is bound to one session and has no refresh token."""
        access = secrets.token_urlsafe(32)
        self.access[access] = Token(
            client_id,
            user.user_id,
            now_s + self.settings.access_token_lifetime,
            session_key=oneoff_session,
        )
        if oneoff_session is not None:
            return TokenPair(access, self.access[access].expires_on, "", 0, user)
        refresh = secrets.token_urlsafe(32)
        pair = TokenPair(
            access=access,
            access_expires_on=self.access[access].expires_on,
            refresh=refresh,
            refresh_expires_on=now_s + self.settings.refresh_token_lifetime,
            user=user,
        )
        self.refresh[refresh] = Token(
            client_id, user.user_id, pair.refresh_expires_on, partner=access
        )
        return pair

    def exchange_code(
        self,
        code: str,
        verifier: str | None,
        client_id: str,
        now_ms: int,
        *,
        oneoff: bool = False,
        redirect_uri: str | None = None,
    ) -> TokenPair:
        """Authorization code + PKCE verifier -> tokens; the code works once.

        A one-off contract gets an access token for the consented session only
        and an empty, unusable refresh token. The verifier may be missing (v1.5)
        only when the code was issued without a challenge; a code issued for a
        ``redirect_uri`` (v1.5) must be exchanged naming the same one.
        """
        with self._lock:
            record = self.codes.get(code)
            if record is None or record.client_id != client_id:
                raise errors.invalid_grant("The authorization code is invalid or has been used")
            if record.expires_ms < now_ms:
                del self.codes[code]
                raise errors.invalid_grant("The authorization code has expired")
            if record.code_challenge is not None and verifier is None:
                raise errors.invalid_grant(
                    "The code_verifier is required: the code was issued for a code_challenge"
                )
            if record.code_challenge is not None and s256(verifier or "") != record.code_challenge:
                raise errors.invalid_grant(
                    "The code_verifier does not match the code_challenge (S256)"
                )
            if record.redirect_uri is not None and redirect_uri != record.redirect_uri:
                raise errors.invalid_grant(
                    "The redirect_uri is not the one the authorization code was issued for"
                )
            del self.codes[code]
            user = self.users.get(record.user_id)
            if user is None:
                raise errors.invalid_grant("The authorization code is invalid or has been used")
            self.counters["code_exchanges"] += 1
            bound = (record.session_key or "") if oneoff else None
            return self._issue(client_id, user, now_ms // 1000, oneoff_session=bound)

    def rotate(self, refresh_token: str, client_id: str, now_ms: int) -> TokenPair:
        """Refresh: the old refresh token dies, a new pair is issued."""
        with self._lock:
            self.counters["refresh"] += 1
            record = self.refresh.get(refresh_token)
            if record is None or record.client_id != client_id:
                self.counters["refresh_failed"] += 1
                raise errors.invalid_token("refresh_token")
            if record.expires_on * 1000 < now_ms:
                self.counters["refresh_failed"] += 1
                del self.refresh[refresh_token]
                raise errors.invalid_token("refresh_token", expired=True)
            user = self.users.get(record.user_id)
            if user is None:
                self.counters["refresh_failed"] += 1
                raise errors.invalid_token("refresh_token")
            del self.refresh[refresh_token]
            if self.settings.revoke_access_on_refresh and record.partner:
                self.access.pop(record.partner, None)
            return self._issue(client_id, user, now_ms // 1000)

    def check_access(self, access_token: str, client_id: str, now_ms: int) -> tuple[User, Token]:
        """A live access token of this contract -> its user and record; else 401 InvalidToken."""
        with self._lock:
            record = self.access.get(access_token)
            if record is None or record.client_id != client_id:
                raise errors.invalid_token("access_token")
            max_uses = self.settings.access_token_max_uses
            if record.expires_on * 1000 < now_ms or (max_uses and record.uses >= max_uses):
                raise errors.invalid_token("access_token", expired=True)
            record.uses += 1
            user = self.users.get(record.user_id)
            if user is None:
                raise errors.invalid_token("access_token")
            return user, record
