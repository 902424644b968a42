"""Transport ``requests``: pooled HTTPS with timeouts, retries and per-attempt signing.

The Node SDK has no timeouts and reuses a nonce on retry in old versions; we set
connect and read timeouts, keep TLS verification on, and call the request's
``authorize`` callback for every attempt so each carries a fresh nonce and
timestamp (PROTOCOL.md §A2.2, §A8). Retries follow got's policy: idempotent
methods only, on 408/413/429/5xx and connection errors, with exponential
backoff, jitter, and ``Retry-After`` when the server gives one.
"""

from __future__ import annotations

import email.utils
import io
import logging
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import urljoin

import msgspec
import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from privateshare.errors import ConfigError, TransportError
from privateshare.hookspecs import hookimpl
from privateshare.plugin import Plugin, PluginContext
from privateshare.transport import HttpRequest

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 413, 429, 500, 502, 503, 504, 521, 522, 524})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10


class RequestsOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: Seconds to establish a connection.
    connect_timeout: float = 10.0
    #: Seconds to wait for the next bytes of a response.
    read_timeout: float = 60.0
    #: Retries after the first attempt, for idempotent requests.
    retries: int = 2
    #: First backoff delay in seconds; doubles each retry, plus up to 10% jitter.
    backoff: float = 1.0
    #: Longest wait we accept from a ``Retry-After`` header, in seconds.
    max_retry_after: float = 60.0
    #: A CA bundle file to trust instead of the system's; verification stays on.
    ca_bundle: str | None = None
    #: Connections kept per host (match ``[pull] concurrency`` or more).
    pool_size: int = 32
    #: The ``User-Agent`` header.
    user_agent: str = "privateshare"
    #: Use proxies from the environment (HTTPS_PROXY, NO_PROXY).
    trust_env: bool = True


class RequestsTransport(Plugin):
    """HTTP(S) through a pooled ``requests`` session, with timeouts and retries."""

    Options = RequestsOptions
    description = "HTTPS with pooled connections, timeouts and retries (requests)"

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
        # Session.request costs ~2x the CPU per call (cookies, hooks, environment merging).
        self._adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=options.pool_size, max_retries=0
        )
        self._proxies: dict[str, dict[str, str]] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        """Proxies from the environment (HTTPS_PROXY, NO_PROXY), looked up once per origin."""
        if not self.options.trust_env:
            return {}
        origin = _origin(url)
        if origin not in self._proxies:
            self._proxies[origin] = requests.utils.get_environ_proxies(url)
        return self._proxies[origin]

    def _attempt(self, request: HttpRequest) -> requests.Response:
        """One attempt, following redirects (as got does, up to 10), each hop signed afresh."""
        url = request.url
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": self.options.user_agent, **request.headers}
            if request.authorize is not None:
                headers["Authorization"] = request.authorize()
            prepared = requests.Request(
                request.method, url, headers=headers, json=request.json
            ).prepare()
            response = self._adapter.send(
                prepared,
                stream=request.stream,
                timeout=(self.options.connect_timeout, self.options.read_timeout),
                verify=self._verify,
                proxies=self._proxies_for(url),
            )
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            url = urljoin(url, location)
        raise TransportError(f"{request.method} {_path(request.url)}: too many redirects")

    @hookimpl
    def privateshare_transport_send(self, request: HttpRequest) -> RequestsResponse:
        attempts = 1 + (self.options.retries if request.retryable else 0)
        for attempt in range(1, attempts + 1):
            try:
                response = self._attempt(request)
            except requests.exceptions.SSLError as exc:
                raise TransportError(
                    f"TLS verification failed for {request.method} {_origin(request.url)}: "
                    f"{_reason(exc)}; set [transport] ca_bundle if the server uses a private CA"
                ) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt < attempts:
                    self._sleep(attempt, None, request, f"{type(exc).__name__}")
                    continue
                raise TransportError(
                    f"{request.method} {_origin(request.url)} failed after {attempt} "
                    f"attempt(s): {_reason(exc)}"
                ) from None
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if response.status_code != 413 or retry_after is not None:
                    response.close()
                    self._sleep(attempt, retry_after, request, f"HTTP {response.status_code}")
                    continue
            return RequestsResponse(response, request)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(
        self, attempt: int, retry_after: float | None, request: HttpRequest, why: str
    ) -> None:
        if retry_after is not None:
            delay = min(retry_after, self.options.max_retry_after)
        else:
            base = self.options.backoff * 2 ** (attempt - 1)
            delay = base + random.uniform(0, base / 10)  # noqa: S311 - jitter, not crypto
        log.info("retrying %s %s in %.2fs after %s", request.method, _path(request.url), delay, why)
        time.sleep(delay)

    def close(self) -> None:
        self._adapter.close()


class RequestsResponse:
    """A ``requests`` response behind the transport protocol."""

    def __init__(self, response: requests.Response, request: HttpRequest) -> None:
        self._response = response
        self._request = request
        self.status_code = response.status_code
        self.reason = response.reason or ""
        self.headers: Mapping[str, str] = response.headers

    def read(self) -> bytes:
        try:
            return self._response.content
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise self._truncated(exc) from None

    def iter_bytes(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            yield from self._response.iter_content(chunk_size)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise self._truncated(exc) from None

    def stream(self) -> BinaryIO:
        return io.BufferedReader(_RawBody(self), buffer_size=1 << 16)  # type: ignore[return-value]

    def close(self) -> None:
        self._response.close()

    def _truncated(self, exc: BaseException) -> TransportError:
        return TransportError(
            f"the body of {self._request.method} {_path(self._request.url)} was cut short: "
            f"{_reason(exc)}"
        )

    def __enter__(self) -> RequestsResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _RawBody(io.RawIOBase):
    """urllib3's raw stream with truncation turned into ``TransportError``."""

    def __init__(self, response: RequestsResponse) -> None:
        self._owner = response
        self._raw: Any = response._response.raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._raw.readinto(buffer)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._owner._truncated(exc) from None


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


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _path(url: str) -> str:
    # Paths may carry a session key; log the route, not the key.
    from urllib.parse import urlsplit

    parts = urlsplit(url).path.split("/")
    if "query" in parts:
        index = parts.index("query")
        parts = [*parts[: index + 1], "…", *parts[index + 2 :]]
    return "/".join(parts)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"
