"""How often a call is tried and by when it must be done: one policy for every retried call.

A pull retries the calls a transient fault can break (a connection reset, a 5xx, an
answer cut short or garbled on the way) with the same bounded attempts and backoff,
whether the call is a file download, a file-list poll, a trigger or a JWKS fetch:
:meth:`Retry.call`. Calls that must not be repeated (the single-use code exchange and
refresh of ``oauth/token``) simply do not go through it.

A pull also has one deadline (``[pull] timeout``). :func:`deadline_scope` makes it
the deadline of every request sent inside the scope, in this thread: the client puts
:func:`current_deadline` on each :class:`~privateshare.transport.HttpRequest`, so a
download in flight, a poll and a token refresh all end by it, and :class:`Retry`
does not wait for an attempt that could not start before it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from .errors import MalformedAnswer, ServerError, TransportError

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Retry", "current_deadline", "deadline_scope", "transient"]

#: Statuses worth another attempt: timeouts, rate limits and server-side failures.
TRANSIENT_STATUSES = frozenset({408, 425, 429})

_deadline: ContextVar[float | None] = ContextVar("privateshare_deadline", default=None)


def transient(error: BaseException) -> bool:
    """Whether another attempt may succeed: the fault was on the way, not in the request."""
    if isinstance(error, TransportError | MalformedAnswer):
        return True
    return isinstance(error, ServerError) and (
        error.status_code >= 500 or error.status_code in TRANSIENT_STATUSES
    )


def current_deadline() -> float | None:
    """The ``time.monotonic()`` deadline of the requests made here now, if any."""
    return _deadline.get()


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Give every request made inside (in this thread) ``deadline``; nested scopes keep the
    earlier one. Worker threads start without a scope: enter one in each."""
    outer = _deadline.get()
    if deadline is None or (outer is not None and outer <= deadline):
        deadline = outer
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def past_deadline() -> bool:
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() >= deadline


@dataclass(frozen=True, slots=True)
class Retry:
    """Bounded attempts with exponential backoff (plus up to 10% jitter) on transient faults.

    The transport may retry a failed exchange itself first (``[transport] retries``);
    this retries the whole call, which also covers what the transport cannot see: a
    body cut short while it was read, an answer that does not parse.
    """

    #: Attempts in all, the first included (``[pull] file_attempts``).
    attempts: int = 3
    #: Seconds before the second attempt; doubles for each further one (``[pull] retry_backoff``).
    backoff: float = 1.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base: float = self.backoff * 2 ** (attempt - 1)
        return base + random.uniform(0, base / 10)  # noqa: S311 - jitter, not crypto

    def call(self, operation: Callable[[], T], what: str) -> T:
        """``operation()``, tried again after a transient fault while attempts and time remain.

        The last error is raised as it is: it says what went wrong on the way.
        """
        attempts = max(1, self.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return operation()
            except Exception as exc:
                if attempt >= attempts or not transient(exc):
                    raise
                delay = self.delay(attempt)
                deadline = _deadline.get()
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise  # no time left for another attempt
                log.info(
                    "retrying %s (attempt %d of %d) in %.2fs after: %s",
                    what,
                    attempt + 1,
                    attempts,
                    delay,
                    exc,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
