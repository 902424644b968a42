"""Transport ``urllib3``: the ``requests`` transport's behaviour, sent through urllib3 directly.

Everything that makes the transport contract (docs/hooks.md) is shared with
:mod:`privateshare.plugins.transport_requests` and unchanged: retries and their
backoff, every attempt and redirect hop signed afresh, redirects followed only within
the request's origin (checked before signing), the deadline over the whole exchange,
the read timeout and minimum rate on every socket read of a body, ``read(limit)``
decoding in bounded steps. Only the two steps where requests spends CPU on work this
transport does not need are replaced: building the request (``PreparedRequest``'s
URL, header and body preparation) and sending it (``HTTPAdapter.send``: proxy
selection, a TLS context and header dicts per call). A urllib3 ``PoolManager`` sends
the same request, with the same headers, TLS verification (the CA bundle requests
would use, or ``ca_bundle``) and environment proxies. ``benchmarks/micro.py --http``
measures the difference per GET: about 5% (most of what requests cost per call was
already cut from the requests transport; the rest is shared code and urllib3 itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import requests
import urllib3
import urllib3.exceptions
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3 import HTTPHeaderDict
from urllib3.util import make_headers, parse_url

from privateshare.errors import TransportError
from privateshare.hooks import PluginContext
from privateshare.plugins.transport_requests import (
    RequestsOptions,
    RequestsTransport,
    _within,
)
from privateshare.transport import HttpRequest

#: Methods requests sends without a ``Content-Length: 0`` when they have no body.
_NO_LENGTH = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class _Prepared:
    """One hop as it will be sent: what ``_attempt`` reads (``url``) and signs (``headers``)."""

    method: str
    url: str
    headers: HTTPHeaderDict = field(default_factory=HTTPHeaderDict)
    body: bytes | None = None


class _Answer:
    """A urllib3 response as the shared code reads it (requests' ``Response`` subset)."""

    __slots__ = ("headers", "raw", "reason", "status_code")

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.reason = raw.reason or ""
        self.headers = raw.headers  # case-insensitive, as requests' are

    def close(self) -> None:
        """As requests does: a body left unread ends the connection; a read one is reused."""
        self.raw.close()
        self.raw.release_conn()


class Urllib3Transport(RequestsTransport):
    """The ``requests`` transport's policies over a urllib3 pool: less CPU per request."""

    Options = RequestsOptions
    description = "HTTPS like the requests transport, sent through a urllib3 pool (less CPU)"

    _tls_errors = (urllib3.exceptions.SSLError,)
    _retried_errors = (
        urllib3.exceptions.TimeoutError,  # connect and read timeouts
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.ProtocolError,  # reset, refused mid-way, a malformed answer
        urllib3.exceptions.ProxyError,
    )
    _other_errors = (urllib3.exceptions.HTTPError, ValueError)

    def __init__(self, options: RequestsOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        ca_certs = self._verify if isinstance(self._verify, str) else DEFAULT_CA_BUNDLE_PATH
        self._pool_kw: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": options.pool_size,
            "block": False,
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": ca_certs,
        }
        self._direct = urllib3.PoolManager(**self._pool_kw)
        self._via: dict[str, urllib3.PoolManager] = {}

    def _prepare(self, request: HttpRequest, url: str) -> _Prepared | None:
        """The hop for ``url``, unsigned; None if ``url`` is not a usable http(s) URL."""
        try:
            parsed = parse_url(url.strip())
        except (urllib3.exceptions.LocationParseError, ValueError):
            return None
        if (parsed.scheme or "").lower() not in ("http", "https") or not parsed.host:
            return None
        # Case-insensitive, as requests' are: the signature replaces any Authorization.
        headers = HTTPHeaderDict({"User-Agent": self.options.user_agent})
        headers.update(request.headers)
        if parsed.auth:  # user info in the URL: basic auth, as requests would send it
            user, _, password = parsed.auth.partition(":")
            headers.update(make_headers(basic_auth=f"{unquote(user)}:{unquote(password)}"))
            parsed = parsed._replace(auth=None)
        body = None
        if request.json is not None:
            body = json.dumps(request.json, allow_nan=False).encode()
            if "Content-Type" not in headers:
                headers["Content-Type"] = "application/json"
        elif request.method.upper() not in _NO_LENGTH:
            headers["Content-Length"] = "0"
        return _Prepared(request.method.upper(), parsed.url, headers, body)

    def _send(self, prepared: _Prepared, url: str, left: float | None) -> _Answer:
        raw = self._manager(prepared.url).urlopen(
            prepared.method,
            prepared.url,
            body=prepared.body,
            headers=prepared.headers,
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            timeout=urllib3.Timeout(
                connect=_within(self.options.connect_timeout, left),
                read=_within(self.options.read_timeout, left),
            ),
        )
        return _Answer(raw)

    def _manager(self, url: str) -> urllib3.PoolManager:
        """The pool for ``url``: direct, or through the environment's proxy for it."""
        proxy = requests.utils.select_proxy(url, self._proxies_for(url))
        if not proxy:
            return self._direct
        manager = self._via.get(proxy)
        if manager is None:
            manager = self._via[proxy] = self._proxy_manager(proxy)
        return manager

    def _proxy_manager(self, proxy: str) -> urllib3.PoolManager:
        parsed = parse_url(proxy)
        if (parsed.scheme or "").lower().startswith("socks"):
            try:
                from urllib3.contrib.socks import SOCKSProxyManager
            except ImportError:
                raise TransportError(
                    f"[{self.context.name}] the environment names a SOCKS proxy: install "
                    "PySocks (pip install 'urllib3[socks]') or unset it"
                ) from None
            return SOCKSProxyManager(proxy, **self._pool_kw)
        headers = {}
        if parsed.auth:
            user, _, password = parsed.auth.partition(":")
            headers = make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")
        return urllib3.ProxyManager(proxy, proxy_headers=headers, **self._pool_kw)

    def close(self) -> None:
        super().close()
        self._direct.clear()
        for manager in self._via.values():
            manager.clear()
