"""The Private Share flow: consent, session, then every file into every sink.

Read top to bottom: :meth:`Flow.start_consent` and :meth:`Flow.finish_consent`
get the user's consent (one-off or ongoing); :meth:`Flow.pull` reads a session
to the end. Polling follows §A6 with limits the Node SDK lacks; downloads run
concurrently in a bounded pool; a file is checkpointed only after every sink
committed it; a 401 refreshes the token once per user, saved before use.

The flow is the same for both protocol profiles (``[digime] api``): the client
(:class:`~privateshare.api.DigimeClient` for v1.7,
:class:`~privateshare.api15.DigimeClientV15` for v1.5) hides what differs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import msgspec

from .api import AuthorizeStart, ConsentDenied, DigimeClient, FileDownload, needs_refresh
from .errors import (
    AuthorizationRequired,
    DigimeError,
    FileDecryptionError,
    PrivateShareError,
    ServerError,
    TransportError,
)
from .framework import PrivateShare
from .jws import InvalidServerToken
from .models import (
    FINAL_STATES,
    Account,
    DataFile,
    FileEntry,
    FileFailure,
    FileList,
    LibraryStatus,
    RunInfo,
    RunSummary,
    Session,
    Token,
    UserAccessToken,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Consent", "ConsentDenied", "Flow", "Run", "TokenKeeper", "client_for"]


def client_for(fw: PrivateShare) -> DigimeClient:
    """The client of the configured protocol profile (``[digime] api``)."""
    digime = fw.config.digime
    if digime.api == "v1.5":
        from .api15 import DigimeClientV15

        return DigimeClientV15(digime, fw.hooks, fw.key_handle)
    return DigimeClient(digime, fw.hooks, fw.key_handle)


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
                        f"`privateshare authorize --user {self.user_id}` again",
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
                    f"({exc.code}); run `privateshare authorize --user {self.user_id}` again",
                    user_id=self.user_id,
                ) from None
            raise


class Flow:
    """The Private Share flow over an assembled :class:`PrivateShare`."""

    def __init__(self, fw: PrivateShare, *, client: DigimeClient | None = None) -> None:
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
    ) -> Consent:
        """Ask digi.me for a consent URL; the user opens it in a browser.

        API v1.5 establishes the session here (and, ongoing, pre-authorizes);
        ``consent.app_url`` is then the link for the digi.me app.
        """
        start = self.client.consent_url(
            once=once, redirect_uri=redirect_uri, session_options=session_options
        )
        return Consent(user_id, once, start)

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
    ) -> RunSummary:
        """Read one session of a user's library into every sink.

        With no ``session``, a new one is triggered with the user's saved token.
        A ``session`` with no token and ``save_token=False`` is read with the session
        key alone (API v1.5 one-off consent).
        """
        session_only = token is None and not save_token and session is not None and session.key
        if token is None and not session_only:
            keeper = self._keeper(user_id)
        else:
            keeper = TokenKeeper(self, user_id, token, save=save_token)
        if session is None or not session.key:
            session = keeper.call(lambda t: self.client.trigger(t, session_options))
        self.fw.hooks.session_established(user_id, session)
        return Run(self, user_id, session, keeper, progress).execute()

    def pull_all(self, *, progress: Callable[[str, Any], None] | None = None) -> list[RunSummary]:
        """Pull every user with a saved token, a bounded number at once."""
        users = self.fw.hooks.token_users()
        results: list[RunSummary] = []
        with ThreadPoolExecutor(max(1, self.config.pull.user_concurrency)) as pool:
            futures = {u: pool.submit(self.pull, u, progress=progress) for u in users}
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
            self._keeper(user_id).call(self.client.delete_user)
        except AuthorizationRequired:
            log.warning("user %s could not be deleted remotely; forgetting locally", user_id)
        return self.fw.hooks.token_delete(user_id)

    def _keeper(self, user_id: str) -> TokenKeeper:
        token = self._load_token(user_id)
        if token is None:
            raise AuthorizationRequired(
                f"user {user_id!r} has no saved token; run `privateshare authorize --user "
                f"{user_id}` first",
                user_id=user_id,
            )
        return TokenKeeper(self, user_id, token, save=True)


class Run:
    """One pull of one session: poll, download, deliver, checkpoint, summarise."""

    CHECKPOINT_EVERY = 1.0  # seconds; a lagging checkpoint only means re-delivery, never loss

    def __init__(
        self,
        flow: Flow,
        user_id: str,
        session: Session,
        keeper: TokenKeeper,
        progress: Callable[[str, Any], None] | None,
    ) -> None:
        self.flow = flow
        self.hooks = flow.fw.hooks
        self.client = flow.client
        self.limits = flow.config.pull
        self.user_id = user_id
        self.session = session
        self.keeper = keeper
        self.progress = progress or (lambda _event, _data: None)
        self.info = RunInfo(uuid.uuid4().hex, user_id, time.time())
        self.summary = RunSummary(run_id=self.info.run_id, user_id=user_id)
        self._lock = threading.Lock()
        self._checkpoint: dict[str, int] = {}
        self._checkpoint_dirty = False
        self._checkpoint_saved_at = 0.0
        self._skipped: set[str] = set()

    def execute(self) -> RunSummary:
        started = time.monotonic()
        self._checkpoint = self.hooks.checkpoint_load(self.user_id)
        self.hooks.sinks_open_run(self.info)
        try:
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

    # polling (§A6, with the limits of the iOS SDK)
    def _poll_and_download(self) -> None:
        limits = self.limits
        state = "pending"
        scheduled: dict[str, int] = {}
        inflight: dict[str, Future[None]] = {}
        started = last_change = time.monotonic()
        last_list: list[tuple[str, int]] | None = None
        with ThreadPoolExecutor(max(1, limits.concurrency)) as pool:
            while True:
                files = self.keeper.call(lambda t: self.client.file_list(self.session.key, t))
                now = time.monotonic()
                if files.status.state != state:
                    state = files.status.state
                    self.hooks.status_changed(self.user_id, files.status)
                    self.progress("status", files.status)
                if state == "pending":
                    if now - started > limits.max_pending:
                        raise DigimeError(
                            f"the library of user {self.user_id!r} stayed pending for "
                            f"{limits.max_pending:.0f}s; the user may not have finished consenting"
                        )
                else:
                    listing = [(f.name, f.updated_date) for f in files.file_list or []]
                    if listing != last_list:
                        last_list, last_change = listing, now
                    for entry in files.file_list or []:
                        self._schedule(pool, entry, scheduled, inflight)
                    if state in FINAL_STATES:
                        self._finish_status(files)
                        break
                    if now - last_change > limits.max_unchanged:
                        raise DigimeError(
                            f"the file list of user {self.user_id!r} did not change for "
                            f"{limits.max_unchanged:.0f}s while running; giving up this run"
                        )
                if now - started > limits.timeout:
                    raise DigimeError(
                        f"the pull of user {self.user_id!r} took longer than "
                        f"{limits.timeout:.0f}s ([pull] timeout); the next run resumes"
                    )
                time.sleep(limits.poll_interval)
            for future in list(inflight.values()):
                future.result()

    def _schedule(
        self,
        pool: ThreadPoolExecutor,
        entry: FileEntry,
        scheduled: dict[str, int],
        inflight: dict[str, Future[None]],
    ) -> None:
        name, updated = entry.name, entry.updated_date
        if scheduled.get(name, 0) >= updated:
            return
        if self._checkpoint.get(name, 0) >= updated:
            if name not in self._skipped:
                self._skipped.add(name)
                with self._lock:
                    self.summary.files_skipped += 1
            scheduled[name] = updated
            return
        scheduled[name] = updated
        previous = inflight.get(name)
        inflight[name] = pool.submit(self._deliver, entry, previous)

    def _finish_status(self, files: FileList) -> None:
        self.summary.final_state = files.status.state
        self.summary.accounts = dict(files.status.details)
        for account_id, detail in files.status.details.items():
            if detail.error is not None and detail.error.code == "ServiceAuthorizationError":
                self.summary.reauthorize_urls[account_id] = self._reauthorize_url(account_id)

    def _reauthorize_url(self, account_id: str) -> str:
        if self.keeper.token is None:
            return "(no reauthorize URL: this read has no token)"
        try:
            start = self.keeper.call(lambda t: self.client.reauthorize(t))
        except PrivateShareError as exc:  # DigimeError, or a call the API profile lacks
            return f"(could not get a reauthorize URL: {exc})"
        return start.url

    # delivering one file
    def _deliver(self, entry: FileEntry, previous: Future[None] | None) -> None:
        if previous is not None:  # an older version of this file is still on its way
            previous.exception()
        attempts = max(1, self.limits.file_attempts)
        for attempt in range(1, attempts + 1):
            try:
                size = self._download_once(entry)
            except TransportError as exc:
                if attempt < attempts:
                    log.info("retrying %s after: %s", entry.name, exc)
                    continue
                self._failed(entry.name, exc)
                return
            except (PrivateShareError, OSError) as exc:
                self._failed(entry.name, exc)
                return
            except Exception as exc:  # a plugin bug must not stop the run
                log.exception("unexpected error delivering %s", entry.name)
                self._failed(entry.name, exc)
                return
            self._delivered(entry, size)
            return

    def _download_once(self, entry: FileEntry) -> int:
        download: FileDownload = self.keeper.call(
            lambda t: self.client.open_file(self.session.key, entry.name, t)
        )
        file = DataFile(
            user_id=self.user_id,
            name=entry.name,
            updated_date=entry.updated_date,
            metadata=download.metadata,
            last_modified=download.last_modified,
        )
        try:
            chunks = self.hooks.decrypt(
                download.response.stream(),
                download.metadata,
                self.flow.fw.key_handle(),
                entry.name,
            )
            size, sinks = self.hooks.deliver(self.info, file, chunks)
        finally:
            download.response.close()
        self.hooks.file_written(self.user_id, file, size, sinks)
        return size

    def _delivered(self, entry: FileEntry, size: int) -> None:
        with self._lock:
            self.summary.files_delivered += 1
            self.summary.bytes_delivered += size
            if self._checkpoint.get(entry.name, 0) < entry.updated_date:
                self._checkpoint[entry.name] = entry.updated_date
                self._checkpoint_dirty = True
        self.progress("file", (entry.name, size))
        self._save_checkpoint()

    def _failed(self, name: str, error: BaseException) -> None:
        check = error.check if isinstance(error, FileDecryptionError) else None
        with self._lock:
            self.summary.files_failed.append(FileFailure(name, str(error), check))
        log.warning("file %s of user %s failed: %s", name, self.user_id, error)
        self.hooks.file_failed(
            self.user_id, name, error if isinstance(error, Exception) else RuntimeError(error)
        )
        self.progress("failed", (name, error))

    def _save_checkpoint(self, *, force: bool = False) -> None:
        with self._lock:
            due = time.monotonic() - self._checkpoint_saved_at >= self.CHECKPOINT_EVERY
            if not self._checkpoint_dirty or not (force or due):
                return
            snapshot = dict(self._checkpoint)
            self._checkpoint_dirty = False
            self._checkpoint_saved_at = time.monotonic()
            # Saved under the lock so two snapshots can never land out of order.
            self.hooks.checkpoint_save(self.user_id, snapshot)


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
