"""``[scale]``: how pulls run on Celery workers (decoded without importing Celery).

The table is optional; without it the scale-out commands say how to add it. The
broker password (and a result backend's) is a secret reference injected into the
URL when the app is built, never written in the URL itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from ..optiontypes import Delay, Seconds
from ..secrets import Secret

#: Broker URL schemes Celery (kombu) accepts that we test or document.
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp", "sentinel")
BACKEND_SCHEMES = ("redis", "rediss", "db+postgresql", "db+mysql", "db+sqlite", "rpc")
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "ip6-localhost"}


def parse_every(value: str) -> float:
    """``"15m"`` as 900.0 seconds; ``ValueError`` naming the accepted forms otherwise."""
    match = _EVERY.match(value)
    if not match:
        raise ValueError(
            f"{value!r} is not a duration; write a number with s, m, h or d, e.g. "
            '"30s", "15m", "1h", "1d"'
        )
    seconds = float(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= 30 * 86400:
        raise ValueError(f"{value!r} is {seconds:g} s; a schedule runs every 1 s to 30 days")
    return seconds


def _url_problem(schemes: tuple[str, ...], what: str) -> object:
    def check(value: str) -> str | None:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            return f"it does not parse: {exc}"
        if parts.scheme not in schemes:
            return f"its scheme is {parts.scheme!r}; {what} URLs start with " + ", ".join(
                f"{s}://" for s in schemes
            )
        if parts.password:
            return (
                "it holds a password; remove it from the URL and reference it instead with "
                f'{what}_password = {{ env = "VARIABLE" }}'
            )
        return None

    return check


def _every_problem(value: str) -> str | None:
    try:
        parse_every(value)
    except ValueError as exc:
        return str(exc)
    return None


BrokerUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        extra={
            "check": _url_problem(BROKER_SCHEMES, "broker"),
            "expected": "a broker URL such as redis://host:6379/0 or amqp://user@host:5672//",
        },
    ),
]
BackendUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        extra={
            "check": _url_problem(BACKEND_SCHEMES, "result_backend"),
            "expected": "a result backend URL such as redis://host:6379/1",
        },
    ),
]
QueueName = Annotated[
    str,
    msgspec.Meta(
        pattern=_QUEUE.pattern,
        description="letters, digits and _ . : - (at most 200)",
    ),
]
Every = Annotated[
    str,
    msgspec.Meta(extra={"check": _every_problem, "expected": 'a duration such as "15m"'}),
]


class ScaleSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[scale]``: the broker, the queue, time limits, retries and the schedule."""

    #: The Celery broker: Redis (``redis://``) or RabbitMQ (``amqp://``), no password in it.
    broker: BrokerUrl
    #: The broker's password, injected into ``broker`` when connecting.
    broker_password: Secret | None = None
    #: Where task results are kept (optional; the run summary is kept in the shared
    #: database either way, which is what ``scale-status`` reads).
    result_backend: BackendUrl | None = None
    result_backend_password: Secret | None = None
    #: The queue pull tasks go to; give each deployment its own.
    queue: QueueName = "privateshare"
    #: Seconds after which a pull is asked to stop (SoftTimeLimitExceeded), then killed.
    soft_time_limit: Seconds = 3600.0
    time_limit: Seconds = 3900.0
    #: Retries of a task that raised (broker, database or digi.me unreachable) before
    #: the user is put in the dead letters; ``retry_delay`` doubles each time.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    retry_delay: Delay = 60.0
    #: Redis only: seconds before the task of a worker that died is delivered again
    #: (RabbitMQ redelivers when the connection drops). Longer than the longest pull.
    visibility_timeout: Seconds = 7200.0
    #: A queued or running marker older than this is taken as lost (a purged queue)
    #: and the user can be enqueued again.
    stale_after: Seconds = 6 * 3600.0
    #: Celery beat enqueues every user this often (``"15m"``); none: no schedule.
    every: Every | None = None
    #: ``authorize`` enqueues the first pull of a new consent.
    enqueue_on_authorize: bool = False
    #: ``auto``: many machines when the broker is not on this machine.
    machines: Literal["auto", "one", "many"] = "auto"
    #: File sinks (and SQLite) sit on a filesystem every worker machine mounts.
    shared_filesystem: bool = False

    def __post_init__(self) -> None:
        if self.time_limit <= self.soft_time_limit:
            raise ValueError(
                f"time_limit and soft_time_limit: time_limit ({self.time_limit:g}) must be "
                f"longer than soft_time_limit ({self.soft_time_limit:g}), so a pull can stop "
                "cleanly before it is killed"
            )

    @property
    def every_seconds(self) -> float | None:
        return parse_every(self.every) if self.every else None

    @property
    def many_machines(self) -> bool:
        """Whether workers may run on several machines (explicit, or a remote broker)."""
        if self.machines != "auto":
            return self.machines == "many"
        return (urlsplit(self.broker).hostname or "") not in LOCAL_HOSTS

    def broker_url(self) -> str:
        """The broker URL with its password (reveals the secret: never log it)."""
        return _with_password(self.broker, self.broker_password)

    def backend_url(self) -> str | None:
        if self.result_backend is None:
            return None
        return _with_password(self.result_backend, self.result_backend_password)

    def __repr__(self) -> str:
        return f"ScaleSettings(broker={self.broker!r}, queue={self.queue!r})"


def _with_password(url: str, secret: Secret | None) -> str:
    if secret is None:
        return url
    parts = urlsplit(url)
    user = quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:{quote(secret.reveal(), safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def safe_url(url: str) -> str:
    """A URL as it may be printed: any password replaced by ``***``."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)
