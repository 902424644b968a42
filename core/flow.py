"""The Private Share flow: consent, session, then every file into every sink.

Read top to bottom: :meth:`Flow.start_consent` and :meth:`Flow.finish_consent`
get the user's consent (one-off or ongoing); :meth:`Flow.pull` reads a session
to the end. Polling follows protocol.md#polling with limits the Node SDK lacks; downloads run
concurrently in a bounded pool fed a few files at a time, and the list is read in
batches that drop the files every sink holds, so a pull holds about ``concurrency``
files, its checkpoint and one name and date per file still to deliver; a file is
checkpointed only after every sink committed it; a 401 refreshes the token once per
user, saved before use. ``[pull] timeout`` is one deadline for the whole pull, carried
by every request it makes (:mod:`privateshare.retry`).

The flow is the same for both protocol profiles (``[digime] api``): it depends on
:class:`privateshare.client.Client` alone, and the client of the profile
(:mod:`privateshare.client.v17`, :mod:`privateshare.client.v15`) hides what differs.
A call a profile lacks is reached through :func:`privateshare.client.need`, which
says what to do instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec

from .checkpoint import DeliveryState, NameDates, name_key
from .client import (
    AuthorizeStart,
    Client,
    ConsentDenied,
    FileDownload,
    for_profile,
    need,
    needs_refresh,
)
from .config import command_hint
from .delivery import deliver
from .errors import (
    AuthorizationRequired,
    DigimeError,
    FileDecryptionError,
    PrivateShareError,
    ServerError,
    SinkError,
    TransportError,
)
from .jws import InvalidServerToken
from .logcontext import user_scope
from .models import (
    FINAL_STATES,
    Account,
    Category,
    ContractDetails,
    Country,
    DataFile,
    FileEntry,
    FileFailure,
    LibraryStatus,
    Platform,
    RevokeUrl,
    RunInfo,
    RunSummary,
    Session,
    Source,
    SourceQuery,
    SourcesPage,
    Token,
    UserAccessToken,
)
from .retry import Retry, deadline_scope, past_deadline

if TYPE_CHECKING:
    from .framework import PrivateShare  # the framework builds its flow from this module

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Consent", "ConsentDenied", "Flow", "Run", "TokenKeeper", "client_for"]


def client_for(fw: PrivateShare) -> Client:
    """The client of the configured protocol profile (``[digime] api``)."""
    return for_profile(
        fw.config.digime,
        send=fw.hooks.send,
        key=fw.key_handle,
        decrypt=fw.hooks.decrypt,
        retry=retry_policy(fw.config.pull),
    )


def retry_policy(pull: Any) -> Retry:
    """The one retry policy of a pull, from ``[pull] file_attempts`` and ``retry_backoff``."""
    return Retry(attempts=pull.file_attempts, backoff=pull.retry_backoff)


@dataclass(frozen=True)
class Consent:
    """A consent in progress: send the user to ``url``; keep the rest for the callback."""

    user_id: str
    once: bool
    start: AuthorizeStart

    @property
    def url(self) -> str:
        return self.start.url

    @property
    def state(self) -> str:
        return self.start.state

    @property
    def app_url(self) -> str | None:
        """API v1.5: the ``digime://consent-access`` link for the digi.me app (else None)."""
        return self.start.app_url


class TokenKeeper:
    """One user's current token, shared by every caller of a run (threads).

    A caller whose token drew a refreshable 401, or is about to expire, takes a
    fresher one: the token another caller got since, once, if it has not expired;
    else a refresh, made under the user's token lock after re-loading the token, so
    that one refresh serves every thread and process. The caller that refreshes
    uses the new token first and only then hands it to the others: a token that
    expires after a few uses is not used up before the caller that paid for it,
    so every call ends after at most three attempts.

    With no token (an API v1.5 one-off read: the session key is the only
    credential) operations run without one and nothing is refreshed.
    """

    #: Seconds before its expiry a token is replaced; at most half its lifetime.
    LEEWAY = 30.0

    def __init__(
        self, flow: Flow, user_id: str, token: UserAccessToken | None, *, save: bool
    ) -> None:
        self.flow = flow
        self.user_id = user_id
        self.save = save
        self.refreshes = 0
        # (token, generation, when this keeper got it): replaced as a whole, read without a lock.
        self._state: tuple[UserAccessToken | None, int, float] = (token, 0, time.time())
        self._lock = threading.Lock()

    @property
    def token(self) -> UserAccessToken | None:
        return self._state[0]

    def call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` with a fresh token; on a refreshable 401, with a fresher one."""
        token, generation, _ = state = self._state
        if token is None:
            return operation(None)
        if not self._expiring(state):
            try:
                return operation(token)
            except ServerError as exc:
                if not needs_refresh(exc):
                    raise
        newer_tried = False
        while True:
            with self._lock:
                state = self._state
                if state[1] == generation or newer_tried or self._expiring(state):
                    return self._renew_and_call(operation)
                token, generation, _ = state
                newer_tried = True
            try:
                return operation(token)  # another caller's newer token
            except ServerError as exc:
                if not needs_refresh(exc):
                    raise

    def refresh(self, stale: UserAccessToken) -> UserAccessToken:
        """A token fresher than ``stale``: another caller's, if not expired, else a new one."""
        with self._lock:
            state = self._state
            if state[0] is not None and state[0] != stale and not self._expiring(state):
                return state[0]
            return self._renew_and_call(lambda token: token)

    def _expiring(self, state: tuple[UserAccessToken | None, int, float]) -> bool:
        token, _, obtained = state
        if token is None or not token.access_token.expiry:
            return False
        lifetime = token.access_token.expiry - obtained
        return token.access_token.expired(leeway=min(self.LEEWAY, max(0.0, lifetime / 2)))

    def _renew_and_call(self, operation: Callable[[UserAccessToken], T]) -> T:
        """Under ``self._lock``: a new token, used first by ``operation``, then handed out."""
        fresh, adopted = self._renew(force=False)
        try:
            try:
                return operation(fresh)
            except ServerError as exc:
                if not (adopted and needs_refresh(exc)):
                    raise
            # The token another process saved was used up already: refresh it ourselves.
            fresh, _ = self._renew(force=True)
            return operation(fresh)
        finally:
            self._state = (fresh, self._state[1] + 1, time.time())

    def _renew(self, *, force: bool) -> tuple[UserAccessToken, bool]:
        """A token to replace the current one, and whether another process made it."""
        current = self._state[0]
        assert current is not None
        hooks = self.flow.fw.hooks
        if not self.save:
            fresh = self._refresh_remote(current, None)
        else:
            with hooks.token_lock(self.user_id):
                stored = self.flow._load_locked(self.user_id)
                if stored is None:
                    raise AuthorizationRequired(
                        f"the token of user {self.user_id!r} was deleted during the run; run "
                        f"`{command_hint('authorize', self.flow.config.source)} "
                        f"--user {self.user_id}` again",
                        user_id=self.user_id,
                    )
                if not force and stored != current and not self._expiring((stored, 0, time.time())):
                    return stored, True  # another process refreshed it: reuse, don't repeat
                fresh = self.flow._granted(
                    self.user_id, stored, lambda stage: self._refresh_remote(stored, stage)
                )
            hooks.token_refreshed(self.user_id, fresh)
        self.refreshes += 1
        return fresh, False

    def _refresh_remote(
        self, base: UserAccessToken, stage: Callable[[str], None] | None
    ) -> UserAccessToken:
        try:
            return self.flow.client.refresh(base, on_answer=stage)
        except ServerError as exc:
            if exc.status_code == 401 or exc.code in ("InvalidToken", "InvalidGrant"):
                raise AuthorizationRequired(
                    f"the token of user {self.user_id!r} can no longer be refreshed "
                    f"({exc.code}); run `{command_hint('authorize', self.flow.config.source)} "
                    f"--user {self.user_id}` again",
                    user_id=self.user_id,
                ) from None
            raise


class Flow:
    """The Private Share flow over an assembled :class:`PrivateShare`."""

    def __init__(self, fw: PrivateShare, *, client: Client | None = None) -> None:
        self.fw = fw
        self.config = fw.config
        self.client = client or client_for(fw)

    # --- step 3: authorize ----------------------------------------------------

    def start_consent(
        self,
        user_id: str,
        *,
        once: bool = False,
        redirect_uri: str | None = None,
        session_options: Mapping[str, Any] | None = None,
        service_id: int | None = None,
    ) -> Consent:
        """Ask digi.me for a consent URL; the user opens it in a browser.

        ``service_id`` (a source's ``id`` from :meth:`sources`) opens the consent on
        that service (v1.7). API v1.5 establishes the session here (and, ongoing,
        pre-authorizes); ``consent.app_url`` is then the link for the digi.me app.
        """
        start = self.client.consent_url(
            once=once,
            redirect_uri=redirect_uri,
            session_options=session_options,
            service_id=service_id,
        )
        return Consent(user_id, once, start)

    def start_onboarding(
        self,
        user_id: str,
        *,
        service_id: int | None = None,
        redirect_uri: str | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> Consent:
        """A URL where a user with a saved token adds a service (v1.7 ``onboard``).

        Finish it with :meth:`finish_consent`, which returns ``(None, session)``: the
        saved token stays, and ``pull(user_id, session=session)`` reads the new data.
        """
        onboard = need(self.client, "onboard")
        start = self._keeper(user_id).call(
            lambda token: onboard(
                token,
                service_id=service_id,
                redirect_uri=redirect_uri,
                session_options=session_options,
            )
        )
        return Consent(user_id, False, start)

    def start_reauthorize(
        self, user_id: str, *, account_id: str | None = None, redirect_uri: str | None = None
    ) -> Consent:
        """A URL for a user with a saved token: reconnect ``account_id`` (one a pull reported
        in ``reauthorize_urls``), or, without it, consent again when the token can no longer
        be refreshed (v1.7).

        Finish it with :meth:`finish_consent`: reconnecting returns ``(None, session)`` and
        the next pull reads the account again; consenting again saves the new token.
        """
        token = self._load_token(user_id)
        if token is None:
            raise AuthorizationRequired(
                f"user {user_id!r} has no saved token; authorize the user first "
                f"({command_hint('authorize', self.fw.config.source)} --user {user_id})",
                user_id=user_id,
            )
        if account_id:
            reconnect = need(self.client, "reauthorize_account")
            start = reconnect(token, account_id, redirect_uri=redirect_uri)
        else:
            start = need(self.client, "reauthorize")(token, redirect_uri=redirect_uri)
        return Consent(user_id, False, start)

    def finish_consent(
        self, consent: Consent, callback: Mapping[str, str]
    ) -> tuple[UserAccessToken | None, Session]:
        """Check the callback (``state`` first), exchange the code, keep the token if ongoing.

        The token is None for API v1.5 one-off consent: the session key alone reads
        the data (``pull(user, token=None, session=session, save_token=False)``).
        """
        code = self.client.parse_callback(callback, consent.start)
        if code is None:
            return None, consent.start.session
        start = consent.start

        def exchange(stage: Callable[[str], None] | None) -> UserAccessToken:
            return self.client.exchange_code(
                code, start.code_verifier, redirect_uri=start.redirect_uri, on_answer=stage
            )

        if consent.once:
            return exchange(None), start.session
        with self.fw.hooks.token_lock(consent.user_id):
            token = self._granted(consent.user_id, None, exchange)
        return token, start.session

    # --- tokens at rest: an answer of the token server is kept before it is verified -----

    def _granted(
        self,
        user_id: str,
        previous: UserAccessToken | None,
        grant: Callable[[Callable[[str], None]], UserAccessToken],
    ) -> UserAccessToken:
        """Call the token server through ``grant`` and save what it gives, under the token lock.

        Its answer is saved the moment it arrives, as ``staged`` beside ``previous``,
        before the keys to verify it are fetched: a crash or a failed fetch there
        loses nothing, and the next load verifies and promotes it.
        """
        hooks = self.fw.hooks
        staged: list[UserAccessToken] = []

        def stage(answer: str) -> None:
            staged.append(_with_staged(previous, answer))
            hooks.token_save(user_id, staged[0])

        try:
            fresh = grant(stage)
        except InvalidServerToken as exc:
            if not staged:
                raise
            self._discard(user_id, staged[0], exc)
        except DigimeError as exc:
            if not staged:
                raise
            raise DigimeError(_unverified(user_id, exc)) from None
        hooks.token_save(user_id, fresh)
        return fresh

    def _load_token(self, user_id: str) -> UserAccessToken | None:
        """The user's saved token, a staged answer verified and promoted first."""
        hooks = self.fw.hooks
        token = hooks.token_load(user_id)
        if token is not None and token.staged is not None:
            with hooks.token_lock(user_id):
                return self._load_locked(user_id)
        return token if token is not None and _has_values(token) else None

    def _load_locked(self, user_id: str) -> UserAccessToken | None:
        """:meth:`_load_token` for a caller holding the user's token lock."""
        hooks = self.fw.hooks
        token = hooks.token_load(user_id)
        if token is not None and token.staged is not None:
            try:
                fresh = self.client.token_from_answer(token.staged, deferred=True)
            except InvalidServerToken as exc:
                self._discard(user_id, token, exc)
            except DigimeError as exc:
                raise DigimeError(_unverified(user_id, exc)) from None
            hooks.token_save(user_id, fresh)
            log.info("user %s: the token server's saved answer was verified and kept", user_id)
            if _has_values(token):
                hooks.token_refreshed(user_id, fresh)
            return fresh
        return token if token is not None and _has_values(token) else None

    def _discard(self, user_id: str, staged: UserAccessToken, error: Exception) -> NoReturn:
        """Drop a staged answer that failed verification; the user must consent again."""
        self.fw.hooks.token_save(user_id, msgspec.structs.replace(staged, staged=None))
        log.error("user %s: the token server's answer failed verification: %s", user_id, error)
        spent = (
            " The previous token is kept, but the server has likely retired its refresh token."
            if _has_values(staged)
            else ""
        )
        raise AuthorizationRequired(
            f"the token server's answer for user {user_id!r} failed verification ({error}); "
            f"it was discarded, as it may be forged or damaged.{spent} Run `privateshare "
            f"authorize --user {user_id}` again",
            user_id=user_id,
        )

    # --- step 4: receive the data ----------------------------------------------

    def pull(
        self,
        user_id: str,
        *,
        token: UserAccessToken | None = None,
        session: Session | None = None,
        save_token: bool = True,
        session_options: Mapping[str, Any] | None = None,
        progress: Callable[[str, Any], None] | None = None,
        full: bool = False,
        since: int | None = None,
    ) -> RunSummary:
        """Read one session of a user's library into every sink.

        With no ``session``, a new one is triggered with the user's saved token.
        A ``session`` with no token and ``save_token=False`` is read with the session
        key alone (API v1.5 one-off consent). ``[pull] timeout`` bounds all of it,
        the trigger and the downloads in flight included. Each file goes only to the
        sinks that lack its version (:mod:`privateshare.checkpoint`); ``full``
        re-delivers every file to every sink; ``since`` (ms since the epoch, see
        :func:`privateshare.checkpoint.parse_since`) leaves out files updated before it.
        """
        deadline = time.monotonic() + self.config.pull.timeout
        started = time.time()
        try:
            with deadline_scope(deadline):
                summary = self._pull(
                    user_id,
                    token,
                    session,
                    save_token,
                    session_options,
                    progress,
                    deadline,
                    full=full,
                    since=since,
                )
        except PrivateShareError as exc:
            self._record_run(user_id, None, started, str(exc))
            raise
        self._record_run(user_id, summary, started, None)
        return summary

    def _record_run(
        self, user_id: str, summary: RunSummary | None, started: float, error: str | None
    ) -> None:
        """Save what ``privateshare status`` shows of this pull; a failure here is only logged."""
        from .status import run_record

        try:
            self.fw.hooks.run_record_save(user_id, run_record(summary, user_id, started, error))
        except Exception as exc:  # the pull's outcome stands whatever the record's fate
            log.warning("user %s: the record of this run was not saved: %s", user_id, exc)

    def _pull(
        self,
        user_id: str,
        token: UserAccessToken | None,
        session: Session | None,
        save_token: bool,
        session_options: Mapping[str, Any] | None,
        progress: Callable[[str, Any], None] | None,
        deadline: float,
        *,
        full: bool = False,
        since: int | None = None,
    ) -> RunSummary:
        session_only = token is None and not save_token and session is not None and session.key
        if token is None and not session_only:
            keeper = self._keeper(user_id)
        else:
            keeper = TokenKeeper(self, user_id, token, save=save_token)
        if session is None or not session.key:
            session = keeper.call(lambda t: self.client.trigger(t, session_options))
        self.fw.hooks.session_established(user_id, session)
        run = Run(self, user_id, session, keeper, progress, deadline=deadline)
        run.full, run.since = full, since
        return run.execute()

    def pull_all(
        self,
        *,
        progress: Callable[[str, Any], None] | None = None,
        full: bool = False,
        since: int | None = None,
    ) -> list[RunSummary]:
        """Pull every user with a saved token, a bounded number at once."""
        users = self.fw.hooks.token_users()
        results: list[RunSummary] = []
        with ThreadPoolExecutor(max(1, self.config.pull.user_concurrency)) as pool:
            futures = {
                u: pool.submit(self.pull, u, progress=progress, full=full, since=since)
                for u in users
            }
            for user_id, future in futures.items():
                try:
                    results.append(future.result())
                except Exception as exc:  # one user's failure, whatever it is, is theirs alone
                    if isinstance(exc, PrivateShareError):
                        log.error("pull of user %s failed: %s", user_id, exc)
                    else:
                        log.exception("pull of user %s failed unexpectedly", user_id)
                        exc = PrivateShareError(f"{type(exc).__name__}: {exc}")
                    results.append(
                        RunSummary(
                            run_id="-",
                            user_id=user_id,
                            final_state="failed",
                            files_failed=[FileFailure("*", str(exc))],
                            files_failed_total=1,
                        )
                    )
        return results

    def accounts(self, user_id: str) -> list[Account]:
        """The source accounts the user shared (v1.5: ``accounts.json`` of a new session)."""
        keeper = self._keeper(user_id)
        return keeper.call(self.client.accounts)

    def delete_user(self, user_id: str) -> bool:
        """Delete the user at digi.me, then forget their token and checkpoint here."""
        if self.fw.hooks.token_load(user_id) is None:
            return False
        try:
            self._keeper(user_id).call(need(self.client, "delete_user"))
        except AuthorizationRequired:
            log.warning("user %s could not be deleted remotely; forgetting locally", user_id)
        return self.fw.hooks.token_delete(user_id)

    # --- discovery, account management, contract -------------------------------
    # A call the API profile lacks raises UnsupportedCall (saying what to do instead)
    # before any request; user calls refresh the token once on a 401, as the pull does.

    def sources(self, query: SourceQuery | None = None) -> SourcesPage:
        """One page of the sources a user can onboard (``POST discovery/sources``)."""
        return need(self.client, "query_sources")(query)  # type: ignore[no-any-return]

    def all_sources(self, query: SourceQuery | None = None) -> list[Source]:
        """Every source matching ``query``, all pages from ``query.offset`` on."""
        return list(need(self.client, "all_sources")(query))

    def countries(self, ids: tuple[int, ...] = ()) -> list[Country]:
        return need(self.client, "countries")(ids)  # type: ignore[no-any-return]

    def platforms(self, ids: tuple[int, ...] = ()) -> list[Platform]:
        return need(self.client, "platforms")(ids)  # type: ignore[no-any-return]

    def categories(self, ids: tuple[int, ...] = ()) -> list[Category]:
        return need(self.client, "categories")(ids)  # type: ignore[no-any-return]

    def delete_account(self, user_id: str, account_id: str) -> None:
        """Delete one of the user's accounts at digi.me; its files leave later sessions."""
        delete = need(self.client, "delete_account")
        self._keeper(user_id).call(lambda token: delete(token, account_id))

    def revoke_url(
        self, user_id: str, account_id: str, *, redirect_uri: str | None = None
    ) -> RevokeUrl:
        """The page where the user withdraws one account's permission."""
        revoke = need(self.client, "revoke_url")
        return self._keeper(user_id).call(  # type: ignore[no-any-return]
            lambda token: revoke(token, account_id, redirect_uri)
        )

    def contract(self) -> ContractDetails:
        """What the configured contract allows (``GET permission-access/contract``)."""
        return need(self.client, "contract_details")()  # type: ignore[no-any-return]

    def _keeper(self, user_id: str) -> TokenKeeper:
        token = self._load_token(user_id)
        if token is None:
            raise AuthorizationRequired(
                f"user {user_id!r} has no saved token; run "
                f"`{command_hint('authorize', self.config.source)} --user {user_id}` first",
                user_id=user_id,
            )
        return TokenKeeper(self, user_id, token, save=True)


class Run:
    """One pull of one session: poll, download, deliver, checkpoint, summarise.

    Memory is bounded by the concurrency, not by the list: the pool is fed at most
    ``2 * concurrency`` files at a time, a list is read in batches and kept only as one
    name and date per file that may need work (:class:`_Rows`, :class:`_Listing`), and what
    the run remembers per file is the date it took (``_taken``). The checkpoint and
    ``_taken`` keep a digest of each name, not the name (:class:`NameDates`).
    """

    #: Least seconds between checkpoint saves; a lagging checkpoint only means
    #: re-delivery, never loss. Saves of a large checkpoint are spaced further apart.
    CHECKPOINT_EVERY = 1.0
    #: Files reported "not attempted" at a time once the deadline passed (see :meth:`_late`).
    LATE_BATCH = 10_000

    def __init__(
        self,
        flow: Flow,
        user_id: str,
        session: Session,
        keeper: TokenKeeper,
        progress: Callable[[str, Any], None] | None,
        *,
        deadline: float | None = None,
    ) -> None:
        self.flow = flow
        self.hooks = flow.fw.hooks
        self.client = flow.client
        self.limits = flow.config.pull
        self.retry = retry_policy(self.limits)
        self.deadline = time.monotonic() + self.limits.timeout if deadline is None else deadline
        self.user_id = user_id
        self.session = session
        self.keeper = keeper
        # A progress receiver with ``for_user`` gets one callback per user (--all-users lines
        # name their user); a plain callable gets every user's events.
        for_user = getattr(progress, "for_user", None)
        self.progress = (
            for_user(user_id) if callable(for_user) else progress or (lambda _event, _data: None)
        )
        self._progress_given = progress is not None
        self.info = RunInfo(uuid.uuid4().hex, user_id, time.time())
        self.summary = RunSummary(run_id=self.info.run_id, user_id=user_id)
        self._lock = threading.Lock()
        #: ``pull --full`` / ``--since``: set by the caller before :meth:`execute`.
        self.full = False
        self.since: int | None = None
        self._state = DeliveryState({}, [])
        self._checkpoint_dirty = False
        self._checkpoint_saved_at = 0.0
        self._checkpoint_every = self.CHECKPOINT_EVERY
        #: name -> the updatedDate this run delivered, failed, or has on its way.
        self._taken = NameDates()
        #: name -> its download in the pool (queued or running); at most 2 * concurrency.
        self._inflight: dict[str, Future[None]] = {}
        self._workers = max(1, self.limits.concurrency)
        self._slots = threading.Semaphore(2 * self._workers)
        self._duplicates_logged = False
        #: files cut short or not attempted because the deadline passed.
        self._timed_out = 0

    def execute(self) -> RunSummary:
        started = time.monotonic()
        self._state = state = DeliveryState.from_pieces(
            self.hooks.checkpoint_pieces(self.user_id),
            self.hooks.sink_names(),
            full=self.full,
            since_ms=self.since,
            whole=lambda: self.hooks.checkpoint_load(self.user_id),
        )
        for note in state.messages():
            log.warning("user %s: %s", self.user_id, note)
            self.summary.notes.append(note)
        self.summary.sinks_backfilled = list(state.new)
        self._checkpoint_dirty = state.replace
        self.hooks.sinks_open_run(self.info)
        try:
            with deadline_scope(self.deadline):
                self._poll_and_download()
        except AuthorizationRequired:
            raise
        except DigimeError as exc:
            # Files delivered so far are checkpointed below; the next run resumes.
            self.summary.error = str(exc)
            log.error("pull of user %s stopped: %s", self.user_id, exc)
        finally:
            self._save_checkpoint(force=True)
            self.summary.duration_s = round(time.monotonic() - started, 3)
            self.hooks.sinks_close_run(self.info, self.summary)
            self.hooks.run_finished(self.summary)
        return self.summary

    # polling (protocol.md#polling, with the limits of the iOS SDK)
    def _poll_and_download(self) -> None:
        with ThreadPoolExecutor(self._workers) as pool:
            stopped_by_deadline = not self._poll(pool)
        # Downloads in flight at the deadline were ended by it (every request carries it),
        # and queued ones did not start: all are counted now.
        if stopped_by_deadline or self._timed_out:
            raise self._timeout()

    def _poll(self, pool: ThreadPoolExecutor) -> bool:
        """Poll and schedule until the library is final (True) or the deadline passed."""
        limits = self.limits
        state = "pending"
        started = last_change = time.monotonic()
        while True:
            if past_deadline():
                return False
            status, listing, skipped = self._list()
            now = time.monotonic()
            if status.state != state:
                state = status.state
                self.hooks.status_changed(self.user_id, status)
                self.progress("status", status)
            if state == "pending":
                if now - started > limits.max_pending:
                    raise DigimeError(
                        f"the library of user {self.user_id!r} stayed pending for "
                        f"{limits.max_pending:.0f}s; the user may not have finished consenting"
                    )
            else:
                if self._schedule(pool, listing, skipped, final=state in FINAL_STATES):
                    last_change = time.monotonic()
                del listing
                if state in FINAL_STATES:
                    self._finish_status(status)
                    return True  # files the deadline kept out are counted in _timed_out
                if now - last_change > limits.max_unchanged:
                    raise DigimeError(
                        f"the file list of user {self.user_id!r} did not change for "
                        f"{limits.max_unchanged:.0f}s while running; giving up this run"
                    )
            time.sleep(max(0.0, min(limits.poll_interval, self.deadline - time.monotonic())))

    def _list(self) -> tuple[LibraryStatus, _Listing, int]:
        """One poll: the status, the files that may need work as name -> updatedDate, and
        how many rows were skipped already (left out by ``--since``, held by every sink, or
        repeating a name).

        The list is read as it arrives (:meth:`Client.scan_file_list`) and a row that
        every sink already holds is counted and dropped there, so a large library's pull
        holds its checkpoint and the files still to deliver, not the list. A name listed
        more than once is one file, taken at its latest date; the extra rows count as
        skipped (and are logged once per run).
        """
        attempt: list[_Rows] = []

        def visitor() -> _Rows:
            attempt[:] = [_Rows(self._state, self._taken)]  # an attempt cut short starts over
            return attempt[0]

        status, _ = self.keeper.call(
            lambda t: self.client.scan_file_list(self.session.key, t, visitor)
        )
        rows = attempt[0]
        rows.listing.done()
        if rows.duplicates and not self._duplicates_logged:
            self._duplicates_logged = True
            log.warning(
                "the file list of user %s names %d file(s) more than once; each is taken "
                "once, at its latest updatedDate",
                self.user_id,
                rows.duplicates,
            )
        return status, rows.listing, rows.skipped

    def _schedule(
        self, pool: ThreadPoolExecutor, listing: _Listing, skipped: int, *, final: bool
    ) -> bool:
        """Feed the pool every listed file newer than what the run and the checkpoint hold.

        Returns True if any was new. A name with no checkpoint entry is new; one listed at
        or before its checkpointed date is unchanged: running lists may show a file at an
        earlier version than the one already delivered, and delivering that would put older
        data over newer. An ``updatedDate`` of 0 or less tells no versions apart, so such a
        file is taken from the final list only, and on every pull (never skipped).
        """
        scheduled = False
        state = self._state
        undated = 0
        self._taken.reserve(len(listing))
        with self._lock:
            state.reserve(len(listing))
        #: Files the deadline kept from starting: reported failed in batches (see _late).
        late: list[str] = []
        too_late = False
        for name, key, updated in listing.items():
            taken = self._taken.get_key(key)
            if state.too_old(updated):
                skipped += 1  # pull --since: left out
                continue
            if updated <= 0:
                undated += 1
                if not final or taken is not None:
                    continue
            elif taken is not None and updated <= taken:
                continue  # this version or a later one was delivered, failed or is on its way
            elif taken is None and not state.needs_key(key, updated):
                skipped += 1  # every sink holds this version or a later one
                continue
            scheduled = True
            if not too_late and self._submit(pool, name, updated):
                self._taken.set_key(key, updated)
                continue
            too_late = True  # and the pull ends with this list: nothing more to take
            late.append(name)
            if len(late) >= self.LATE_BATCH:
                self._late(late)
        self._late(late)
        with self._lock:
            self.summary.files_skipped = skipped
        if final and undated:
            log.warning(
                "the file list of user %s dates %d file(s) 0 or earlier: such a date tells no "
                "versions apart, so they are delivered on every pull",
                self.user_id,
                undated,
            )
        return scheduled

    def _submit(self, pool: ThreadPoolExecutor, name: str, updated: int) -> bool:
        """Queue one delivery once a slot is free; False when the deadline came first."""
        if not self._slots.acquire(timeout=max(0.0, self.deadline - time.monotonic())):
            return False
        if past_deadline():
            self._slots.release()
            return False
        with self._lock:
            previous = self._inflight.get(name)
            future = pool.submit(self._deliver, name, updated, previous)
            self._inflight[name] = future
        future.add_done_callback(partial(self._done, name))
        return True

    def _done(self, name: str, future: Future[None]) -> None:
        with self._lock:
            if self._inflight.get(name) is future:
                del self._inflight[name]
        self._slots.release()

    def _late(self, names: list[str]) -> None:
        """Report files the deadline kept from starting as failed ("not attempted"), and empty
        ``names``.

        A long list can leave millions at its deadline: one error and one lock for a batch,
        and the per-file log, hook and progress calls only where something receives them, so
        that reporting them does not hold the pull long past its timeout.
        """
        if not names:
            return
        error = self._too_late("not attempted")
        with self._lock:
            self._timed_out += len(names)
            self.summary.add_failures(names, str(error))
        if log.isEnabledFor(logging.DEBUG):
            for name in names:
                log.debug("file %s of user %s failed: %s", name, self.user_id, error)
        if self.hooks.listens("privateshare_file_failed"):
            for name in names:
                self.hooks.file_failed(self.user_id, name, error)
        if self._progress_given:
            for name in names:
                self.progress("failed", (name, error))
        names.clear()

    def _too_late(self, what: str) -> DigimeError:
        return DigimeError(
            f"{what}: the pull reached its [pull] timeout ({self.limits.timeout:g}s) first; "
            "the next run delivers it"
        )

    def _timeout(self) -> DigimeError:
        cut = ""
        if self._timed_out:
            cut = f"; {self._timed_out} file(s) cut short or not attempted are reported failed"
        return DigimeError(
            f"the pull of user {self.user_id!r} reached its [pull] timeout of "
            f"{self.limits.timeout:g}s{cut}; the next run resumes"
        )

    def _finish_status(self, status: LibraryStatus) -> None:
        self.summary.final_state = status.state
        self.summary.accounts = dict(status.details)
        for account_id, detail in status.details.items():
            if detail.error is not None and detail.error.code == "ServiceAuthorizationError":
                self.summary.reauthorize_urls[account_id] = self._reauthorize_url(account_id)

    def _reauthorize_url(self, account_id: str) -> str:
        if self.keeper.token is None:
            return "(no reauthorize URL: this read has no token)"
        try:
            reauthorize = need(self.client, "reauthorize")
            start = self.keeper.call(lambda t: reauthorize(t))
        except PrivateShareError as exc:  # DigimeError, or a call the API profile lacks
            return f"(could not get a reauthorize URL: {exc})"
        url: str = start.url
        return url

    # delivering one file
    def _deliver(self, name: str, updated: int, previous: Future[None] | None) -> None:
        # A worker thread starts without a deadline and without a user to name in logs.
        with deadline_scope(self.deadline), user_scope(self.user_id):
            if previous is not None:  # an older version of this file is still on its way
                previous.exception()
            if past_deadline():
                self._failed(name, self._too_late("not started"), timed_out=True)
                return
            # Decided now, not when listed: a sink may have taken it since (an older version).
            with self._lock:
                only = self._state.needs(name, updated)
            try:
                size = self.retry.call(
                    lambda: self._download_once(name, updated, only),
                    f"file {name} of user {self.user_id}",
                )
            except (PrivateShareError, OSError) as exc:
                self._failed(name, exc)
                return
            except Exception as exc:  # a plugin bug must not stop the run
                log.exception("unexpected error delivering %s", name)
                self._failed(name, exc)
                return
            self._delivered(name, updated, size, only)

    def _download_once(self, name: str, updated: int, only: list[str]) -> int:
        download: FileDownload = self.keeper.call(
            lambda t: self.client.open_file(self.session.key, name, t)
        )
        file = DataFile(
            user_id=self.user_id,
            name=name,
            updated_date=updated,
            metadata=download.metadata,
            last_modified=download.last_modified,
        )
        try:
            chunks = self.hooks.decrypt(
                download.response.stream(),
                download.metadata,
                self.flow.fw.key_handle(),
                name,
            )
            size, sinks = deliver(self.hooks, self.info, file, chunks, only)
        finally:
            download.response.close()
        self.hooks.file_written(self.user_id, file, size, sinks)
        return size

    def _delivered(self, name: str, updated: int, size: int, sinks: list[str]) -> None:
        with self._lock:
            self.summary.files_delivered += 1
            self.summary.bytes_delivered += size
            per_sink = self.summary.sinks_delivered
            for sink in sinks:
                per_sink[sink] = per_sink.get(sink, 0) + 1
            if self._state.record(name, updated, sinks):
                self._checkpoint_dirty = True
        self.progress("file", (name, size))
        self._save_checkpoint()

    def _failed(self, name: str, error: BaseException, *, timed_out: bool = False) -> None:
        check = error.check if isinstance(error, FileDecryptionError) else None
        with self._lock:
            if timed_out or (isinstance(error, TransportError) and past_deadline()):
                self._timed_out += 1  # not attempted, or cut short by the deadline
            self.summary.add_failure(FileFailure(name, str(error), check))
        # Files the deadline kept from starting are summed up in the run's error instead.
        log.log(
            logging.DEBUG if timed_out else logging.WARNING,
            "file %s of user %s failed: %s",
            name,
            self.user_id,
            error,
        )
        self.hooks.file_failed(
            self.user_id, name, error if isinstance(error, Exception) else RuntimeError(error)
        )
        self.progress("failed", (name, error))

    def _save_checkpoint(self, *, force: bool = False) -> None:
        with self._lock:
            due = time.monotonic() - self._checkpoint_saved_at >= self._checkpoint_every
            if not self._checkpoint_dirty or not (force or due):
                return
            changes, replace = self._state.take_changes()
            self._checkpoint_dirty = False
            began = time.monotonic()
            # Checkpointed => on disk: the files of ``changes`` were committed before this
            # sync, so it covers them (a sink may make commits durable in batches).
            try:
                self.hooks.sinks_sync(self.info)
            except SinkError as exc:
                log.error("user %s: %s; those files are delivered again", self.user_id, exc)
                self.summary.notes.append(f"{exc}: the files since are not checkpointed")
                self._state.unsaved(changes, replace)
                return
            # Saved under the lock so two saves can never land out of order.
            self.hooks.checkpoint_save(self.user_id, changes, replace=replace)
            self._checkpoint_saved_at = now = time.monotonic()
            # A save of millions of names takes a while: keep saving to ~10% of the time.
            self._checkpoint_every = max(self.CHECKPOINT_EVERY, 10 * (now - began))


class _Rows:
    """Takes a file list's rows as they are decoded: keeps those that may need work.

    A row left out by ``--since``, or one every sink holds at that version or later
    (and this run has not taken), is counted as skipped and dropped at once; the rest
    go to :attr:`listing`, a name listed again taken at its latest date. Which rows a
    run has taken and which are undated is decided later, as for the whole list.
    """

    __slots__ = ("duplicates", "listing", "skipped", "state", "taken")

    def __init__(self, state: DeliveryState, taken: NameDates) -> None:
        self.state = state
        self.taken = taken
        #: name -> updatedDate of the rows that may need work.
        self.listing = _Listing()
        #: rows already skipped (duplicates included), and the duplicates alone.
        self.skipped = 0
        self.duplicates = 0

    def __call__(self, rows: list[FileEntry]) -> None:
        listing, taken, state = self.listing, self.taken, self.state
        skipped = duplicates = 0
        for row in rows:
            name, updated = row.name, row.updated_date
            key = name_key(name)
            seen = listing.get_key(key)
            if state.too_old(updated) or (
                updated > 0 and taken.get_key(key) is None and not state.needs_key(key, updated)
            ):
                skipped += 1  # left out by --since, or every sink holds this version
                if seen is not None and seen < updated:
                    listing.remove_key(key)  # a later row than the one kept: the name is skipped
                    skipped += 1
                    duplicates += 1
                elif seen is not None:
                    duplicates += 1
                continue
            if seen is None:
                listing.add(name, key, updated)
                continue
            skipped += 1
            duplicates += 1
            if updated > seen:
                listing.update_key(key, updated)
        self.skipped += skipped
        self.duplicates += duplicates


class _Listing:
    """The listed files that may need work: name -> updatedDate, in the order listed.

    Held for the whole of a fresh pull (every file of the library may need work), so the
    names are kept as UTF-8 in one buffer and found through a :class:`NameDates` of
    their positions: ~100 bytes a file instead of the ~160 of a ``dict`` of ``str``.
    """

    __slots__ = ("_big", "_dates", "_ends", "_gone", "_index", "_names")

    def __init__(self) -> None:
        self._index = NameDates()  # name -> its position
        self._names = bytearray()
        self._ends = array("Q")
        self._dates = array("q")
        #: Dates past the signed 64-bit range, by position (kept exact; never in practice).
        self._big: dict[int, int] = {}
        #: Positions of names dropped again (a later row of the name was skipped).
        self._gone: set[int] = set()

    def get_key(self, key: int) -> int | None:
        where = self._index.get_key(key)
        if where is None or where in self._gone:
            return None
        return self._date(where)

    def _date(self, where: int) -> int:
        return self._big.get(where, self._dates[where])

    def add(self, name: str, key: int, updated: int) -> None:
        where = len(self._dates)
        self._names += name.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._names))
        self._dates.append(0)
        self._set(where, updated)
        self._index.set_key(key, where)

    def _set(self, where: int, updated: int) -> None:
        if -(1 << 63) <= updated < (1 << 63):
            self._dates[where] = updated
            self._big.pop(where, None)
        else:
            self._big[where] = updated

    def update_key(self, key: int, updated: int) -> None:
        where = self._index.get_key(key)
        assert where is not None
        self._set(where, updated)

    def remove_key(self, key: int) -> None:
        where = self._index.get_key(key)
        if where is not None:
            self._gone.add(where)

    def done(self) -> None:
        """The list is read: drop the index (names are only looked up while reading it)."""
        self._index = NameDates()

    def __len__(self) -> int:
        return len(self._dates) - len(self._gone)

    def items(self) -> Iterator[tuple[str, int, int]]:
        """(name, its :func:`name_key`, updatedDate) of each file, in the order listed."""
        names, ends, gone = self._names, self._ends, self._gone
        start = 0
        for where, end in enumerate(ends):
            if where not in gone:
                name = names[start:end].decode("utf-8", "surrogatepass")
                yield name, name_key(name), self._date(where)
            start = end


def _with_staged(previous: UserAccessToken | None, answer: str) -> UserAccessToken:
    """``previous`` with ``answer`` staged; no previous token (a consent): the answer alone."""
    if previous is None:
        return UserAccessToken(Token(""), Token(""), staged=answer)
    return msgspec.structs.replace(previous, staged=answer)


def _has_values(token: UserAccessToken) -> bool:
    """False for what a consent whose answer failed verification leaves behind."""
    return bool(token.access_token.value or token.refresh_token.value)


def _unverified(user_id: str, error: Exception) -> str:
    return (
        f"the token server's answer for user {user_id!r} is saved but could not be verified "
        f"yet ({error}); it is kept and verified on the next attempt, so nothing is lost: "
        "retry when the digi.me API is reachable"
    )


def status_summary(status: LibraryStatus) -> str:
    parts = [f"{account}: {detail.state}" for account, detail in status.details.items()]
    return f"{status.state} ({', '.join(parts)})" if parts else status.state
