"""Transport ``requests``: pooled HTTPS with timeouts, deadlines, retries and per-attempt signing.

The Node SDK has no timeouts and reuses a nonce on retry in old versions; we set
connect and read timeouts, keep TLS verification on, and call the request's
``authorize`` callback for every attempt so each carries a fresh nonce and
timestamp (protocol.md#signing, protocol.md#retries). Retries follow got's policy: idempotent
methods only, on 408/413/429/5xx and connection errors, with exponential
backoff, jitter, and ``Retry-After`` when the server gives one.

The transport contract (docs/hooks.md) adds what got does not do: redirects are
followed only within the origin of the request, so a signed JWT never leaves the
API; ``request.deadline`` bounds everything, also each read of a body; a body that
trickles below ``low_speed_limit`` ends (as curl's ``--speed-limit``); and
``read(limit)`` decodes Content-Encoding in steps, counting the cap on decoded bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import queue
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, BinaryIO, TypeVar
from urllib.parse import urljoin, urlsplit

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from privateshare.config import Delay, Seconds
from privateshare.errors import ConfigError, ResponseTooLarge, TransportError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.transport import HttpRequest, content_encoding, decoded_stream, origin

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 413, 429, 500, 502, 503, 504, 521, 522, 524})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
#: Bytes asked for per read of a body; urllib3 (>= 2.6) decodes no more than this per read.
CHUNK = 1 << 16
#: The most one socket read may allocate (``read1`` allocates what it is asked for).
MAX_READ = 1 << 20


T = TypeVar("T")


class RequestsOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Seconds to establish a connection.
    connect_timeout: Seconds = 10.0
    #: Seconds to wait for the next bytes of a response.
    read_timeout: Seconds = 60.0
    #: Retries after the first attempt, for idempotent requests.
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    #: First backoff delay in seconds; doubles each retry, plus up to 10% jitter.
    backoff: Delay = 1.0
    #: Longest wait we accept from a ``Retry-After`` header, in seconds.
    max_retry_after: Delay = 60.0
    #: A CA bundle file to trust instead of the system's; verification stays on.
    ca_bundle: str | None = None
    #: Connections kept per host (match ``[pull] concurrency`` or more).
    pool_size: Annotated[int, msgspec.Meta(ge=1)] = 32
    #: The ``User-Agent`` header.
    user_agent: str = "privateshare"
    #: Use proxies from the environment (HTTPS_PROXY, NO_PROXY).
    trust_env: bool = True
    #: A body arriving slower than this many bytes per second for ``low_speed_time``
    #: seconds is abandoned; 0 turns the check off.
    low_speed_limit: Annotated[int, msgspec.Meta(ge=0)] = 1024
    #: Seconds a body may stay under ``low_speed_limit`` (time spent waiting for the
    #: server; time the caller spends between reads does not count).
    low_speed_time: Seconds = 30.0
    #: Bytes a streamed body larger than twice this may be read ahead of its consumer, by
    #: a thread of its own, so the socket keeps receiving while the consumer decrypts and
    #: writes; 0 (the default: measured no faster on a loaded machine) turns it off.
    read_ahead: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 0


class RequestsTransport(Plugin):
    """HTTP(S) through a pooled ``requests`` session, with timeouts and retries."""

    Options = RequestsOptions
    description = "HTTPS with pooled connections, timeouts and retries (requests)"

    #: What sending raises, by kind: a TLS failure (told apart so the message can point at
    #: ``ca_bundle``), a connection error or timeout (retried), anything else (not retried).
    #: A transport sending another way (``transport_urllib3``) names its library's errors.
    _tls_errors: tuple[type[BaseException], ...] = (requests.exceptions.SSLError,)
    _retried_errors: tuple[type[BaseException], ...] = (requests.ConnectionError, requests.Timeout)
    _other_errors: tuple[type[BaseException], ...] = (requests.RequestException,)

    def __init__(self, options: RequestsOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.options: RequestsOptions = options
        self._verify: bool | str = True
        if options.ca_bundle:
            path = context.resolve(options.ca_bundle)
            if not path.is_file():
                raise ConfigError(
                    f"[{context.name}] ca_bundle: {path} does not exist; give the path of a "
                    "PEM CA bundle, or remove the option to use the system's"
                )
            self._verify = str(path)
        # One thread-safe connection pool, driven through requests' adapter directly:
        # Session.request costs ~2x the CPU per call (cookies, hooks, environment merging),
        # and would follow redirects anywhere.
        self._adapter = _Adapter(pool_connections=4, pool_maxsize=options.pool_size, max_retries=0)
        self._proxies: dict[str, dict[str, str]] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        """Proxies from the environment (HTTPS_PROXY, NO_PROXY), looked up once per origin."""
        if not self.options.trust_env:
            return {}
        key = origin(url) or url
        if key not in self._proxies:
            self._proxies[key] = requests.utils.get_environ_proxies(url)
        return self._proxies[key]

    @hookimpl
    def privateshare_transport_send(self, request: HttpRequest) -> RequestsResponse:
        what = _describe(request)
        attempts = 1 + (self.options.retries if request.retryable else 0)
        for attempt in range(1, attempts + 1):
            try:
                response = self._attempt(request, what, attempt)
            except self._tls_errors as exc:
                raise TransportError(
                    f"TLS verification failed for {what}: {_reason(exc)}; "
                    f"set [{self.context.name}] ca_bundle if the server uses a private CA"
                ) from None
            except self._retried_errors as exc:
                if _left(request) == 0:
                    raise TransportError(
                        f"{what}: the deadline passed before the server answered ({_reason(exc)})"
                    ) from None
                delay = self._delay(attempt, attempts, None, request, what, type(exc).__name__)
                if delay is None:
                    raise TransportError(
                        f"{what} failed after {attempt} attempt(s): {_reason(exc)}"
                    ) from None
                time.sleep(delay)
                continue
            except self._other_errors as exc:  # an invalid URL, header or proxy
                raise TransportError(f"{what}: {_reason(exc)}") from None
            if response.status_code in RETRY_STATUSES:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if response.status_code != 413 or retry_after is not None:
                    why = f"HTTP {response.status_code}"
                    delay = self._delay(attempt, attempts, retry_after, request, what, why)
                    if delay is not None:
                        response.close()
                        time.sleep(delay)
                        continue
            return RequestsResponse(
                response, what, self._pace(request, what), read_ahead=self.options.read_ahead
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, request: HttpRequest, what: str, attempt: int) -> Any:
        """One attempt, following redirects within the request's origin, each hop signed afresh."""
        home: str | None = None  # the origin of request.url, as requests spells it
        url = request.url
        for hop in range(MAX_REDIRECTS + 1):
            left = _left(request)
            if left == 0:
                stage = "the request" if attempt == 1 else f"attempt {attempt}"
                raise TransportError(f"{what}: the deadline passed before {stage} could be sent")
            prepared = self._prepare(request, url)
            there = origin(prepared.url or "") if prepared is not None else None
            if hop == 0:
                if there is None:
                    raise TransportError(f"{what}: the URL is not a valid http(s) URL")
                home = there
            if prepared is None or there != home:
                # Checked before signing: no JWT is made for a hop we will not send.
                raise TransportError(
                    f"{what}: the server redirected to {there or 'a URL that is not valid'}, "
                    f"outside the API origin {home}; nothing was sent there (credentials stay "
                    "on the API origin). If the API has moved, set [digime] base_url to it"
                )
            if request.authorize is not None:
                prepared.headers["Authorization"] = request.authorize()
            response = self._send(prepared, url, left)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            try:
                url = urljoin(prepared.url or url, location)
            except ValueError:  # refused below, as any unusable URL
                url = ""
        raise TransportError(f"{what}: more than {MAX_REDIRECTS} redirects")

    def _send(self, prepared: Any, url: str, left: float | None) -> Any:
        """Send one prepared hop; the response's body is left unread (``raw``)."""
        return self._adapter.send(
            prepared,
            stream=True,
            timeout=(
                _within(self.options.connect_timeout, left),
                _within(self.options.read_timeout, left),
            ),
            verify=self._verify,
            proxies=self._proxies_for(url),
        )

    def _prepare(self, request: HttpRequest, url: str) -> Any:
        """The request for ``url`` as it would be sent, unsigned; None if ``url`` is unusable.

        What ``requests.Request(...).prepare()`` does, less its cookie jar and hooks (there
        are none here): a third of the CPU of a small file's GET went to them.
        """
        prepared = requests.PreparedRequest()
        try:
            prepared.prepare_method(request.method)
            prepared.prepare_url(url, None)
            prepared.prepare_headers({"User-Agent": self.options.user_agent, **request.headers})
            prepared.prepare_body(None, None, request.json)
            prepared.prepare_auth(None, url)  # user info in the URL, as requests would
        except (requests.RequestException, ValueError):
            return None
        return prepared

    def _delay(
        self,
        attempt: int,
        attempts: int,
        retry_after: float | None,
        request: HttpRequest,
        what: str,
        why: str,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when there is none to make."""
        if attempt >= attempts:
            return None
        if retry_after is not None:
            delay = min(retry_after, self.options.max_retry_after)
        else:
            base = self.options.backoff * 2 ** (attempt - 1)
            delay = base + random.uniform(0, base / 10)  # noqa: S311 - jitter, not crypto
        left = _left(request)
        if left is not None and delay >= left:
            log.info(
                "not retrying %s after %s: the next attempt would start %.2fs from now, "
                "past the request's deadline",
                what,
                why,
                delay,
            )
            return None
        log.info(
            "retrying %s (attempt %d of %d) in %.2fs after %s",
            what,
            attempt + 1,
            attempts,
            delay,
            why,
        )
        return delay

    def _pace(self, request: HttpRequest, what: str) -> Pace:
        options = self.options
        return Pace(
            what,
            deadline=request.deadline,
            read_timeout=options.read_timeout,
            low_speed_limit=options.low_speed_limit,
            low_speed_time=options.low_speed_time,
            table=self.context.name,
        )

    def close(self) -> None:
        self._adapter.close()


class _Adapter(HTTPAdapter):
    """requests' adapter, building responses without a cookie jar.

    The transport keeps no cookies (no Session), yet ``HTTPAdapter.build_response``
    parses every answer's cookies into a fresh jar through ``http.cookiejar``'s mock
    request objects: most of the adapter's own CPU per small GET.
    """

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = getattr(resp, "status", None)  # type: ignore[assignment]
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        url = req.url
        response.url = url.decode("utf-8") if isinstance(url, bytes) else (url or "")
        response.request = req
        response.connection = self
        return response


class RequestsResponse:
    """A ``requests`` response behind the transport protocol.

    The body is read from urllib3's raw stream (never requests' ``.content``, which
    inflates a Content-Encoding without bound), over a socket file paced by ``pace``.
    """

    def __init__(self, response: Any, what: str, pace: Pace, *, read_ahead: int = 0) -> None:
        self._response = response
        self._what = what
        self.status_code = response.status_code
        self.reason = response.reason or ""
        self.headers: Mapping[str, str] = response.headers
        self._raw: Any = response.raw
        self._read_ahead = read_ahead
        self._ahead: _ReadAhead | None = None
        pace.install(self._raw)

    def read(self, limit: int | None = None) -> bytes:
        # BytesIO hands its buffer over on getvalue(): a large answer is held once, not twice.
        body = io.BytesIO()
        if content_encoding(self.headers):
            # Decoded by the core's capped decoder, the one long answers stream through.
            try:
                stream = decoded_stream(self, limit, self._what)
                while chunk := stream.read(CHUNK):
                    body.write(chunk)
            except (ResponseTooLarge, TransportError):
                self.close()
                raise
            return body.getvalue()
        if limit is not None:
            declared = _content_length(self.headers.get("Content-Length"))
            if declared is not None and declared > limit:
                self.close()
                raise self._too_large(limit)
        for chunk in self._chunks(CHUNK, decode=False):
            body.write(chunk)
            if limit is not None and body.tell() > limit:
                self.close()
                raise self._too_large(limit)
        return body.getvalue()

    def iter_bytes(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Deprecated (no caller, no longer in ``HttpResponse``): use ``read`` or ``stream``."""
        warnings.warn(
            "HttpResponse.iter_bytes() is deprecated: use read(limit) or stream()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._chunks(chunk_size, decode=True)

    def stream(self) -> BinaryIO:
        body: io.RawIOBase = _RawBody(self)
        declared = _content_length(self.headers.get("Content-Length"))
        if self._read_ahead and declared is not None and declared > 2 * self._read_ahead:
            self._ahead = _ReadAhead(self, self._read_ahead)
            body = self._ahead
        return io.BufferedReader(body, buffer_size=1 << 16)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()  # before the connection goes: the reader may be in it
        self._response.close()

    def _chunks(self, size: int, *, decode: bool) -> Iterator[bytes]:
        try:
            yield from self._raw.stream(size, decode_content=decode)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: BaseException) -> TransportError:
        if isinstance(exc, urllib3.exceptions.DecodeError):
            encoding = self.headers.get("Content-Encoding", "")
            return TransportError(
                f"the body of {self._what} could not be decoded (Content-Encoding {encoding}): "
                f"{_reason(exc)}"
            )
        return TransportError(f"the body of {self._what} was cut short: {_reason(exc)}")

    def _too_large(self, limit: int) -> ResponseTooLarge:
        """A plain body past the cap (an encoded one is capped by ``decoded_stream``)."""
        return ResponseTooLarge(
            f"the answer to {self._what} is larger than {limit} bytes; it was not read further"
        )

    def __enter__(self) -> RequestsResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _RawBody(io.RawIOBase):
    """urllib3's raw stream (the body as sent) with truncation turned into ``TransportError``.

    urllib3 raises ``IncompleteRead`` when the connection ends before Content-Length
    bytes came (``enforce_content_length``, its default since 2.0), on every boundary.
    """

    def __init__(self, response: RequestsResponse) -> None:
        self._owner = response
        self._raw: Any = response._raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            count: int = self._raw.readinto(buffer)
            return count
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._owner._failed(exc) from None


class _ReadAhead(io.RawIOBase):
    """A large body read ahead of its consumer by a thread of its own, ``budget`` bytes at most.

    One thread reading, decrypting and writing in turn leaves the socket idle while it
    decrypts and writes. Here a reader thread reads the paced body (deadline, read
    timeout and minimum rate still apply to each socket read) in pieces of 1 MiB, as
    urllib3 returns them (no copy of its own), and the consumer takes them in order;
    errors reach the consumer at the point of the stream where they happened. Only the
    reader thread touches the connection until :meth:`stop`, which wakes it (shutting the
    socket down if it is blocked in a read) and waits for it, before the response closes.
    """

    _PIECE = 1 << 20

    def __init__(self, owner: RequestsResponse, budget: int) -> None:
        self._owner = owner
        self._raw: Any = owner._raw
        self._room = threading.Semaphore(max(2, budget // self._PIECE))
        self._pieces: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._stopping = False
        self._current: memoryview | None = None
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="privateshare-read-ahead")
        self._thread.daemon = True
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _run(self) -> None:
        try:
            while True:
                self._room.acquire()
                if self._stopping:
                    return
                piece = self._raw.read(self._PIECE)
                if not piece:
                    self._pieces.put(None)
                    return
                self._pieces.put(piece)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._pieces.put(self._owner._failed(exc))
        except BaseException as exc:  # handed to the consumer, raised where it reads
            self._pieces.put(exc)

    def readinto(self, buffer: Any) -> int:
        while self._current is None:
            if self._done:
                return 0
            piece = self._pieces.get()
            if isinstance(piece, BaseException):
                self._done = True
                raise piece
            if piece is None:
                self._done = True
                return 0
            self._current, self._pos = memoryview(piece), 0
        k = min(len(buffer), len(self._current) - self._pos)
        buffer[:k] = self._current[self._pos : self._pos + k]
        self._pos += k
        if self._pos == len(self._current):
            self._current.release()
            self._current = None
            self._room.release()
        return k

    def stop(self) -> None:
        """Stop the reader thread and wait for it; the connection is not reused after this."""
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._room.release()  # wakes a reader waiting for room
        sock = getattr(getattr(self._raw, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in the socket
        self._thread.join()

    def close(self) -> None:
        self.stop()
        super().close()


class Pace:
    """When a read of one body gives up: the deadline, ``read_timeout``, a minimum rate.

    Each blocking socket read gets a timeout of whatever is nearest, so a stalled or
    trickling server cannot hold a read past it. The rate is measured over the time
    spent waiting for the server only, so a slow consumer (a sink, decryption) is not
    mistaken for a slow server.
    """

    def __init__(
        self,
        what: str,
        *,
        deadline: float | None,
        read_timeout: float,
        low_speed_limit: int,
        low_speed_time: float,
        table: str,
    ) -> None:
        self.what = what
        self.deadline = deadline
        self.read_timeout = read_timeout
        self.low_speed_limit = low_speed_limit
        self.low_speed_time = low_speed_time
        self.table = table
        self._waited = 0.0
        self._bytes = 0

    def install(self, raw: Any) -> None:
        """Put a paced file under http.client's response, below every read path of urllib3.

        The socket is the connection's, or (when the response ends the connection, as
        an HTTP/1.0 or ``Connection: close`` answer does, and http.client has already
        let go of it there) the one under the response's socket file. Without either,
        the body could not be paced: that is a bug here, not a server's doing.
        """
        response = getattr(raw, "_fp", None)  # http.client.HTTPResponse
        fp = getattr(response, "fp", None)
        if response is None or fp is None:
            return  # no body to read (HEAD, 204, or already closed)
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        sock = sock or getattr(getattr(fp, "raw", None), "_sock", None)
        if sock is None:
            raise TransportError(
                f"{self.what}: cannot pace the body's reads (no socket found under urllib3 "
                f"{urllib3.__version__}); report this to privateshare"
            )
        response.fp = _PacedFile(fp, sock, self)

    def wait(self, sock: Any, read: Callable[[int], T], size: int) -> tuple[T, float]:
        """``read(size)`` with the socket's timeout set to what is left; and how long it took."""
        started = time.monotonic()
        budget, limit = self._budget(started)
        if budget <= 0:
            raise self.error(limit)
        sock.settimeout(budget)
        try:
            result = read(size)
        except TimeoutError:
            raise self.error(limit) from None
        return result, time.monotonic() - started

    def account(self, received: int, waited: float) -> None:
        """Count bytes against the minimum rate, in windows of ``low_speed_time`` of waiting."""
        if not self.low_speed_limit:
            return
        self._bytes += received
        self._waited += waited
        if self._waited >= self.low_speed_time:
            if self._bytes < self.low_speed_limit * self._waited:
                raise self.error("low_speed")
            self._bytes, self._waited = 0, 0.0

    def _budget(self, now: float) -> tuple[float, str]:
        limits = [(self.read_timeout, "read_timeout")]
        if self.low_speed_limit:
            limits.append((self.low_speed_time, "low_speed"))
        if self.deadline is not None:
            limits.append((self.deadline - now, "deadline"))
        return min(limits)

    def error(self, limit: str) -> TransportError:
        if limit == "deadline":
            return TransportError(
                f"{self.what}: the request's deadline passed while its body was still arriving"
            )
        if limit == "low_speed":
            return TransportError(
                f"{self.what}: the body arrived slower than {self.low_speed_limit} bytes/s "
                f"for {self.low_speed_time:g}s ([{self.table}] low_speed_limit, "
                "low_speed_time); the server is stalled or too slow"
            )
        return TransportError(
            f"{self.what}: no bytes of the body for {self.read_timeout:g}s "
            f"([{self.table}] read_timeout)"
        )


class _PacedFile:
    """The socket file http.client reads a body from, each blocking read paced.

    ``read(n)`` is made of ``read1`` calls (one socket read each) so that no call
    blocks on a trickle for more than one timeout; ``readline`` (chunk sizes) likewise.
    """

    def __init__(self, inner: Any, sock: Any, pace: Pace) -> None:
        self._inner = inner
        self._sock = sock
        self._pace = pace

    def read1(self, size: int = -1) -> bytes:
        size = MAX_READ if size is None or size < 0 else min(size, MAX_READ)
        data: bytes
        data, waited = self._pace.wait(self._sock, self._inner.read1, size)
        self._pace.account(len(data), waited)
        return data

    def read(self, size: int | None = -1) -> bytes:
        parts: list[bytes] = []
        wanted = -1 if size is None else size
        got = 0
        while wanted < 0 or got < wanted:
            part = self.read1(wanted - got if wanted >= 0 else -1)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        line = bytearray()
        while limit < 0 or len(line) < limit:
            view, waited = self._pace.wait(self._sock, self._inner.peek, 1)
            if not view:
                break
            room = len(view) if limit < 0 else min(len(view), limit - len(line))
            end = view.find(b"\n", 0, room)
            take = end + 1 if end >= 0 else room
            line += self._inner.read(take)  # already buffered: no socket read
            self._pace.account(take, waited)
            if end >= 0:
                break
        return bytes(line)

    def peek(self, size: int = 0) -> bytes:
        peeked: bytes = self._pace.wait(self._sock, self._inner.peek, size)[0]
        return peeked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _left(request: HttpRequest) -> float | None:
    """Seconds until the request's deadline (0 once passed), or None without one."""
    if request.deadline is None:
        return None
    return max(0.0, request.deadline - time.monotonic())


def _within(timeout: float, left: float | None) -> float:
    return timeout if left is None else max(min(timeout, left), 0.001)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _describe(request: HttpRequest) -> str:
    """``GET https://host/route`` for messages and logs: no user info, query or session key."""
    parts = urlsplit(request.url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{request.method} {parts.scheme}://{host}{port}{_path(request.url)}"


def _path(url: str) -> str:
    # Paths may carry a session key; log the route, not the key.
    parts = urlsplit(url).path.split("/")
    if "query" in parts:
        index = parts.index("query")
        parts = [*parts[: index + 1], "…", *parts[index + 2 :]]
    return "/".join(parts)


#: A session key in a URL quoted by a library's message (requests names the path).
_SESSION_KEY = re.compile(r"(/query/)[^/\s'\")]+")


def _reason(exc: BaseException) -> str:
    text = _SESSION_KEY.sub(r"\1…", str(exc))
    return text if len(text) < 300 else text[:300] + "…"
