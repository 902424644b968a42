"""What a transport plugin is given and returns: one HTTP exchange.

Modelled on httpx's one-method transport. The request carries an ``authorize``
callback rather than a fixed header, because every attempt (including retries)
must be signed afresh with a new nonce and timestamp (protocol.md#signing, protocol.md#retries).
The contract every transport keeps is in docs/hooks.md and is checked by
:class:`privateshare.testing.conformance.TransportConformance`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str | None:
    """``scheme://host:port`` of ``url``, normalised so that spellings of one origin compare equal.

    Scheme and host are lower-cased and a default port is written out, so
    ``HTTPS://API.example`` and ``https://api.example:443/x`` have the same origin.
    User info, path and query are left out (they may carry secrets). ``None`` for a URL
    without a host, with an unusable port, or with a scheme that has no default port
    and names none.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    host = parts.hostname
    if not host or not port:
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host.lower()}:{port}"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One logical request; the transport may send it several times."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: object | None = None
    #: Called once per attempt; returns the ``Authorization`` header value.
    authorize: Callable[[], str] | None = field(default=None, repr=False)
    #: Stream the body instead of reading it whole (file downloads).
    stream: bool = False
    #: Whether retrying is safe; defaults to the method's idempotence.
    retry: bool | None = None
    #: ``time.monotonic()`` by which the whole exchange, body included, must be done;
    #: past it the transport stops (also mid-body and between retries) with ``TransportError``.
    deadline: float | None = None

    @property
    def retryable(self) -> bool:
        return self.method.upper() in IDEMPOTENT_METHODS if self.retry is None else self.retry


class HttpResponse(Protocol):
    """A response whose body is read either whole or as a stream.

    ``iter_bytes`` was part of this interface until 0.2; nothing called it, so transports
    need not have it (the requests transport keeps it, deprecated).
    """

    status_code: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive

    def read(self, limit: int | None = None) -> bytes:
        """The whole body (for small JSON answers), with any Content-Encoding decoded.

        With ``limit``, a body larger than ``limit`` bytes (after decoding) raises
        :class:`~privateshare.errors.ResponseTooLarge` without holding more than about
        ``limit`` bytes in memory.
        """
        ...

    def stream(self) -> BinaryIO:
        """The body as sent, as a readable binary stream (``read``/``readinto``), for decryption.

        Raises ``TransportError`` from ``read`` if the body is cut short.
        """
        ...

    def close(self) -> None: ...
