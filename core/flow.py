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
from typing import Any, TypeVar

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
    """One user's current token, refreshed at most once however many callers hit a 401.

    With no token (an API v1.5 one-off read: the session key is the only
    credential) operations run without one and nothing is refreshed.
    """

    def __init__(
        self, flow: Flow, user_id: str, token: UserAccessToken | None, *, save: bool
    ) -> None:
        self.flow = flow
        self.user_id = user_id
        self.token = token
        self.save = save
        self.refreshes = 0
        self._lock = threading.Lock()

    def call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` with the token; on a refreshable 401, refresh and retry once."""
        token = self.token
        if token is None:
            return operation(None)
        try:
            return operation(token)
        except ServerError as exc:
            if not needs_refresh(exc):
                raise
        return operation(self.refresh(stale=token))

    def refresh(self, stale: UserAccessToken) -> UserAccessToken:
        """A fresh token: reuse one another caller already got, else refresh and save it."""
        with self._lock:
            if self.token is not None and self.token != stale:
                return self.token  # another thread refreshed while we waited
            hooks = self.flow.fw.hooks
            if not self.save:
                self.token = self._refresh_remote(stale)
                return self.token
            with hooks.token_lock(self.user_id):
                stored = hooks.token_load(self.user_id)
                if stored is not None and stored != stale:
                    self.token = stored  # another process refreshed it: reuse, don't repeat
                    return stored
                fresh = self._refresh_remote(stale)
                hooks.token_save(self.user_id, fresh)  # saved before it is used
            self.token = fresh
            hooks.token_refreshed(self.user_id, fresh)
            return fresh

    def _refresh_remote(self, stale: UserAccessToken) -> UserAccessToken:
        try:
            fresh = self.flow.client.refresh(stale)
        except ServerError as exc:
            if exc.status_code == 401 or exc.code in ("InvalidToken", "InvalidGrant"):
                raise AuthorizationRequired(
                    f"the token of user {self.user_id!r} can no longer be refreshed "
                    f"({exc.code}); run `privateshare authorize --user {self.user_id}` again",
                    user_id=self.user_id,
                ) from None
            raise
        self.refreshes += 1
        return fresh


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
        token = self.client.exchange_code(
            code, consent.start.code_verifier, redirect_uri=consent.start.redirect_uri
        )
        if not consent.once:
            self.fw.hooks.token_save(consent.user_id, token)
        return token, consent.start.session

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
        hooks = self.fw.hooks
        session_only = token is None and not save_token and session is not None and session.key
        if token is None and not session_only:
            token = hooks.token_load(user_id)
            if token is None:
                raise AuthorizationRequired(
                    f"user {user_id!r} has no saved token; run `privateshare authorize --user "
                    f"{user_id}` first",
                    user_id=user_id,
                )
        keeper = TokenKeeper(self, user_id, token, save=save_token)
        if session is None or not session.key:
            assert token is not None
            if token.access_token.expired():
                keeper.refresh(stale=token)
            session = keeper.call(lambda t: self.client.trigger(t, session_options))
        hooks.session_established(user_id, session)
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
                except PrivateShareError as exc:
                    log.error("pull of user %s failed: %s", user_id, exc)
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
        token = self.fw.hooks.token_load(user_id)
        if token is None:
            return False
        try:
            self._keeper(user_id).call(self.client.delete_user)
        except AuthorizationRequired:
            log.warning("user %s could not be deleted remotely; forgetting locally", user_id)
        return self.fw.hooks.token_delete(user_id)

    def _keeper(self, user_id: str) -> TokenKeeper:
        token = self.fw.hooks.token_load(user_id)
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


def status_summary(status: LibraryStatus) -> str:
    parts = [f"{account}: {detail.state}" for account, detail in status.details.items()]
    return f"{status.state} ({', '.join(parts)})" if parts else status.state
