"""The Celery side: our app (or yours), the pull task, enqueueing, the schedule.

A worker process assembles the framework once, on its first task (after the
pool forked it), and then pulls one user per task through the same
:meth:`~privateshare.flow.Flow.pull` as ``pull --user``. The task is acknowledged
late and rejected back to the queue if its process dies, so a pull cut short
runs again elsewhere; checkpoints and all-or-nothing sinks make that safe. The
user lock (:mod:`privateshare.scale.state`) keeps a user off two workers at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from kombu.exceptions import OperationalError

from .. import DOCS_URL
from ..config import Config, load_config
from ..errors import AuthorizationRequired, ConfigError
from ..flow import Flow
from ..framework import PrivateShare
from .db import ScaleError
from .settings import ScaleSettings, safe_url
from .state import DEAD, DONE, FAILED, QUEUED, ScaleState, task_id_for

log = logging.getLogger("privateshare.scale")

PULL_TASK = "privateshare.pull_user"
ENQUEUE_TASK = "privateshare.enqueue_all"

ConfigSource = str | os.PathLike[str] | Config


def scale_settings(config: Config) -> ScaleSettings:
    """The ``[scale]`` table of ``config``, or a ConfigError saying how to add it."""
    if config.scale is None:
        raise ConfigError(
            f"{config.source}: [scale] is missing; add it to run pulls on Celery workers, "
            'for example:\n      [scale]\n      broker = "redis://127.0.0.1:6379/0"\n'
            f"  (see {DOCS_URL}scale-out/)"
        )
    settings: ScaleSettings = config.scale
    return settings


def _config(source: ConfigSource) -> Config:
    if isinstance(source, Config):
        return source
    return load_config(Path(source).resolve())


def _source(source: ConfigSource) -> str:
    """What a worker process re-reads the config from: an absolute path."""
    if isinstance(source, Config):
        if source.source.startswith("<"):
            raise ConfigError(
                "the scale-out tasks read the config from a file in each worker process; "
                "pass the path of a TOML file, not a dict"
            )
        return str(Path(source.base_dir, source.source).resolve())
    return str(Path(source).resolve())


def create_app(config: ConfigSource, *, name: str = "privateshare") -> Celery:
    """A Celery app for ``config``'s ``[scale]`` table, with our tasks registered."""
    loaded = _config(config)
    settings = scale_settings(loaded)
    app = Celery(name, set_as_current=False)
    configure(app, settings)
    register(app, loaded)
    return app


def configure(app: Celery, settings: ScaleSettings) -> None:
    """Set the broker, queue and delivery guarantees our tasks rely on."""
    app.conf.update(
        broker_url=settings.broker_url(),
        result_backend=settings.backend_url(),
        task_default_queue=settings.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # One message at a time per process: a long pull does not hold others back.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=7 * 86400,
    )
    every = settings.every_seconds
    if every:
        app.conf.beat_schedule = {
            "privateshare-enqueue-all": {
                "task": ENQUEUE_TASK,
                "schedule": every,
                "options": {"queue": settings.queue, "expires": every},
            }
        }


def register(app: Celery, config: ConfigSource) -> dict[str, Task]:
    """Register the pull and enqueue tasks on ``app`` (yours or ours), for ``config``.

    Your app keeps its broker and settings; the tasks bring their own delivery
    options (late acknowledgement, rejection on worker loss, time limits) and go
    to ``[scale] queue``, which your workers must consume (``-Q``).
    """
    loaded = _config(config)
    settings = scale_settings(loaded)
    path = _source(loaded)
    _registered.add(path)
    _route(app, settings.queue)

    # shared=False: the task belongs to this app alone; a shared one would be added to every
    # app made later in the process, for this config, ahead of theirs.
    @app.task(
        name=PULL_TASK,
        shared=False,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=settings.soft_time_limit,
        time_limit=settings.time_limit,
        max_retries=settings.max_retries,
        track_started=True,
    )
    def pull_user(self: Task, user_id: str, batch: str | None = None) -> dict[str, Any]:
        """Pull one user into every sink; the result is the run summary."""
        return runtime(path).run(self, user_id)

    @app.task(name=ENQUEUE_TASK, shared=False, bind=True, ignore_result=True)
    def enqueue_all(self: Task) -> dict[str, Any]:
        """Beat's periodic task: enqueue every user whose last pull is over."""
        rt = runtime(path)
        outcome = enqueue(rt.fw, app=app, all_users=True)
        return outcome.as_dict()

    return {PULL_TASK: pull_user, ENQUEUE_TASK: enqueue_all}


def _route(app: Celery, queue: str) -> None:
    """Send our tasks to ``queue`` ahead of the app's own routes, which stay as they are."""
    ours = {PULL_TASK: {"queue": queue}, ENQUEUE_TASK: {"queue": queue}}
    existing = app.conf.task_routes
    if not existing:
        app.conf.task_routes = ours
    elif isinstance(existing, list | tuple):
        app.conf.task_routes = (ours, *existing)
    else:
        app.conf.task_routes = (ours, existing)


# --- one framework per worker process ------------------------------------------------

_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()
_registered: set[str] = set()


def runtime(path: str) -> Runtime:
    """This process's framework for ``path``, assembled on first use (after the fork)."""
    with _runtimes_lock:
        found = _runtimes.get(path)
        if found is None or found.pid != os.getpid():
            found = _runtimes[path] = Runtime(path)
        return found


@worker_process_init.connect
def _assemble_runtimes(**_: Any) -> None:
    """Assemble the framework as each pool process starts, not on its first task."""
    for path in list(_registered):
        try:
            runtime(path)
        except Exception as exc:  # the first task tries again and reports it
            log.error("cannot assemble privateshare from %s: %s", path, exc)


@worker_process_shutdown.connect
def _close_runtimes(**_: Any) -> None:
    with _runtimes_lock:
        for rt in _runtimes.values():
            rt.close()
        _runtimes.clear()


class Runtime:
    """The framework, flow and shared state of one worker process."""

    def __init__(self, path: str) -> None:
        from ..framework import load

        self.pid = os.getpid()
        self.fw: PrivateShare = load(path)
        self.settings = scale_settings(self.fw.config)
        self.flow = Flow(self.fw)
        self.state = ScaleState(self.fw).ready()

    def close(self) -> None:
        self.state.close()
        self.fw.close()

    def run(self, task: Task, user_id: str) -> dict[str, Any]:
        """Pull ``user_id`` under the user lock; retry what raised, then give up (dead)."""
        request = task.request
        task_id = request.id or "-"
        worker = request.hostname or socket.gethostname()
        attempt = request.retries or 0
        try:
            return self._locked_pull(task, user_id, task_id, worker, attempt)
        except (Retry, SoftTimeLimitExceeded):
            raise
        except Exception as exc:  # the database, digi.me or a sink unreachable: try again
            error = f"{type(exc).__name__}: {exc}"
            if attempt < self.settings.max_retries:
                delay = self.settings.retry_delay * (2**attempt)
                log.warning(
                    "pull of user %s failed (%s); retry %d of %d in %g s",
                    user_id,
                    error,
                    attempt + 1,
                    self.settings.max_retries,
                    delay,
                )
                self._record(user_id, task_id, QUEUED, error=error)
                raise task.retry(exc=exc, countdown=delay) from None
            return self._dead(user_id, task_id, worker, error)

    def _locked_pull(
        self, task: Task, user_id: str, task_id: str, worker: str, attempt: int
    ) -> dict[str, Any]:
        with self.state.user_lock(user_id) as held:
            if not held:
                reason = (
                    f"skipped: user {user_id!r} is being pulled by another worker right now; "
                    "this task did nothing (the running pull delivers the data)"
                )
                log.warning("task %s: %s", task_id, reason)
                return {"user_id": user_id, "task_id": task_id, "worker": worker, "skipped": reason}
            self._event(task, "task-pulling", user_id)
            self.state.started(user_id, task_id, worker, attempt)
            try:
                summary = self.flow.pull(user_id)
            except AuthorizationRequired as exc:
                # Retrying cannot help: the user must consent again.
                return self._dead(user_id, task_id, worker, str(exc))
            except SoftTimeLimitExceeded:
                error = (
                    f"stopped after [scale] soft_time_limit ({self.settings.soft_time_limit:g} s); "
                    "what was delivered is checkpointed and the next pull goes on from there"
                )
                result = _failure(user_id, task_id, worker, error)
                self.state.finished(user_id, task_id, FAILED, result=result, error=error)
                return result
            result = {**msgspec.to_builtins(summary), "task_id": task_id, "worker": worker}
            result["ok"] = summary.ok
            self.state.finished(
                user_id,
                task_id,
                DONE if summary.ok else FAILED,
                result=result,
                error=summary.error,
            )
            return result

    def _record(self, user_id: str, task_id: str, state: str, **fields: Any) -> None:
        """Record a state on the way out of a failure; the database may be what failed."""
        try:
            self.state.finished(user_id, task_id, state, **fields)
        except Exception as exc:
            log.error("cannot record that user %s is %s: %s", user_id, state, exc)

    def _dead(self, user_id: str, task_id: str, worker: str, error: str) -> dict[str, Any]:
        log.error("pull of user %s put in the dead letters: %s", user_id, error)
        result = _failure(user_id, task_id, worker, error)
        result["dead"] = True
        self._record(user_id, task_id, DEAD, result=result, error=error)
        return result

    def _event(self, task: Task, kind: str, user_id: str) -> None:
        """A custom task event carrying the user id (Flower and event monitors show it)."""
        if not task.request.hostname or not task.app.conf.worker_send_task_events:
            return
        try:
            task.send_event(kind, user_id=user_id, retry=False)
        except Exception as exc:  # an event is a nicety; the pull goes on
            log.debug("could not send %s: %s", kind, exc)


def _failure(user_id: str, task_id: str, worker: str, error: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "task_id": task_id,
        "worker": worker,
        "ok": False,
        "final_state": "failed",
        "error": error,
    }


# --- enqueueing -----------------------------------------------------------------------


@dataclass
class Enqueued:
    """What an enqueue did: the users sent, and those left alone (with why)."""

    batch: str
    enqueued: list[str] = field(default_factory=list)
    busy: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "enqueued": self.enqueued, "busy": self.busy}


def enqueue(
    fw: PrivateShare,
    *,
    app: Celery | None = None,
    users: Iterable[str] | None = None,
    all_users: bool = False,
    revive: bool | None = None,
) -> Enqueued:
    """Send a pull task for each user not already queued or running; return what was sent.

    ``users`` (explicit users also leave the dead letters) or ``all_users`` (every user
    with a saved token, dead ones excepted unless ``revive``).
    """
    settings = scale_settings(fw.config)
    if (users is None) == (not all_users):
        raise ValueError("give users or all_users=True, not both")
    wanted = fw.hooks.token_users() if all_users else list(users or [])
    if revive is None:
        revive = not all_users
    app = app or create_app(fw.config)
    state = ScaleState(fw)
    try:
        batch, claimed = state.claim(wanted, stale_after=settings.stale_after, revive=revive)
        outcome = Enqueued(batch)
        claimed_set = set(claimed)
        if len(claimed) < len(wanted):
            current = {
                s.user_id: s for s in state.users([u for u in wanted if u not in claimed_set])
            }
            for user_id in wanted:
                if user_id not in claimed_set:
                    s = current.get(user_id)
                    outcome.busy[user_id] = s.state if s else "unknown"
        sent = 0
        try:
            with app.producer_or_acquire() as producer:
                for user_id in claimed:
                    app.send_task(
                        PULL_TASK,
                        kwargs={"user_id": user_id, "batch": batch},
                        task_id=task_id_for(batch, user_id),
                        queue=settings.queue,
                        producer=producer,
                        retry=True,
                    )
                    outcome.enqueued.append(user_id)
                    sent += 1
        except (OperationalError, OSError) as exc:
            unsent = claimed[sent:]
            where = safe_url(settings.broker)
            state.release_claim(batch, unsent, f"the broker {where} could not be reached")
            raise ScaleError(
                f"cannot send pull tasks to the broker {where} ([scale] broker): {exc}. "
                f"{sent} of {len(claimed)} users were enqueued; the other {len(unsent)} are "
                "left idle and go with the next enqueue. Check that the broker runs and is "
                "reachable from here, then enqueue again"
            ) from None
        return outcome
    finally:
        state.close()


def enqueue_users(
    config: ConfigSource,
    users: Iterable[str] | None = None,
    *,
    all_users: bool = False,
    revive: bool | None = None,
    app: Celery | None = None,
) -> Enqueued:
    """:func:`enqueue` for a config path (builds and closes the framework)."""
    from ..framework import PrivateShare as Framework

    with Framework(_config(config)) as fw:
        return enqueue(fw, app=app, users=users, all_users=all_users, revive=revive)


def queue_length(app: Celery, queue: str) -> int | None:
    """Messages waiting in ``queue`` on the broker (None if the broker cannot be asked).

    A queue the broker does not know (Redis drops an empty list) holds nothing.
    """
    from kombu.exceptions import ChannelError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            try:
                declared = conn.default_channel.queue_declare(queue, passive=True)
            except ChannelError:
                return 0
            return int(declared.message_count)
    except Exception as exc:
        log.debug("cannot read the length of queue %s: %s", queue, exc)
        return None


def status(config: ConfigSource | PrivateShare, users: Iterable[str] | None = None) -> list[Any]:
    """Queued / running / last result per user, as the shared database knows it."""
    if isinstance(config, PrivateShare):
        return _status(config, users)
    with PrivateShare(_config(config)) as fw:
        return _status(fw, users)


def _status(fw: PrivateShare, users: Iterable[str] | None) -> list[Any]:
    state = ScaleState(fw)
    try:
        return state.users(users)
    finally:
        state.close()
