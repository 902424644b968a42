"""What a transport plugin is given and returns: one HTTP exchange.

Modelled on httpx's one-method transport. The request carries an ``authorize``
callback rather than a fixed header, because every attempt (including retries)
must be signed afresh with a new nonce and timestamp (PROTOCOL.md §A2.2, §A8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


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
    """A response whose body is read either whole or as a stream."""

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

    def iter_bytes(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The body as chunks; raises ``TransportError`` if it is cut short."""
        ...

    def stream(self) -> BinaryIO:
        """The body as a readable binary stream (``read``/``readinto``), for decryption.

        Raises ``TransportError`` from ``read`` if the body is cut short.
        """
        ...

    def close(self) -> None: ...
