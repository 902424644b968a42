"""What a transport plugin is given and returns: one HTTP exchange.

Modelled on httpx's one-method transport. The request carries an ``authorize``
callback rather than a fixed header, because every attempt (including retries)
must be signed afresh with a new nonce and timestamp (protocol.md#signing, protocol.md#retries).
The contract every transport keeps is in docs/hooks.md and is checked by
:class:`privateshare.testing.conformance.TransportConformance`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlsplit

from .decompress import Corrupt, gunzip, inflate, unbrotli
from .errors import ResponseTooLarge, TransportError

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


#: Most bytes one decoding step reads from the body or produces from it.
DECODE_STEP = 64 << 10
#: Content-Encodings :func:`decoded_stream` decodes, and how (``x-gzip`` is gzip's old name).
_DECODERS: dict[str, Callable[[Iterator[bytes], int], Iterator[bytes]]] = {
    "gzip": gunzip,
    "x-gzip": gunzip,
    "deflate": inflate,
    "br": unbrotli,
}
ENCODINGS = tuple(_DECODERS)


def content_encoding(headers: Mapping[str, str]) -> list[str]:
    """``Content-Encoding``'s codings in the order they were applied, ``identity`` left out."""
    value = headers.get("Content-Encoding", "") or ""
    return [c for c in (p.strip().lower() for p in value.split(",")) if c and c != "identity"]


def decoded_stream(response: HttpResponse, limit: int | None, what: str = "the answer") -> BinaryIO:
    """``response``'s body with its Content-Encoding decoded, as a stream capped at ``limit``.

    Shared by every transport's ``read(limit)`` and by readers of long answers (the file
    list), so an encoded answer is read at flat memory like a plain one: the body as sent
    (``response.stream()``) is decoded in steps of at most :data:`DECODE_STEP` bytes in
    and out, and :class:`~privateshare.errors.ResponseTooLarge` is raised as soon as the
    decoded bytes pass ``limit`` (a bomb costs one step, not its inflated size).
    ``TransportError`` for an unknown coding, corrupt data or a stream cut short.
    """
    codings = content_encoding(response.headers)
    for coding in codings:
        if coding not in ENCODINGS:
            response.close()
            raise TransportError(
                f"the body of {what} has Content-Encoding {coding!r}, which privateshare "
                f"cannot decode (it decodes {', '.join(ENCODINGS)}); the server should not "
                "send it: we ask for nothing but those"
            )
    raw = response.stream()
    pieces: Iterator[bytes] = iter(lambda: raw.read(DECODE_STEP), b"")
    for coding in reversed(codings):
        pieces = _decode_steps(pieces, coding, what)
    body = _CappedBody(pieces, limit, what, ", ".join(codings) or "identity")
    return cast(BinaryIO, io.BufferedReader(body, buffer_size=DECODE_STEP))


class _CappedBody(io.RawIOBase):
    """Decoded pieces as a raw stream; past ``limit`` decoded bytes, ResponseTooLarge."""

    def __init__(self, pieces: Iterator[bytes], limit: int | None, what: str, coding: str) -> None:
        self._pieces = pieces
        self._limit = limit
        self._what = what
        self._coding = coding
        self._left = b""
        self._total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._total += len(piece)
            if self._limit is not None and self._total > self._limit:
                once = "" if self._coding == "identity" else f" once decoded ({self._coding})"
                raise ResponseTooLarge(
                    f"the answer to {self._what} is larger than {self._limit} bytes{once}; "
                    "it was not read further"
                )
            self._left = piece
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _decode_steps(pieces: Iterator[bytes], coding: str, what: str) -> Iterator[bytes]:
    first = next(pieces, None)
    if first is None:
        return  # an empty body is empty, whatever its coding (as urllib3 reads it)
    try:
        yield from _DECODERS[coding](itertools.chain((first,), pieces), DECODE_STEP)
    except Corrupt as exc:
        raise TransportError(
            f"the body of {what} could not be decoded (Content-Encoding {coding}): {exc}"
        ) from None
