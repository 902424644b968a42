"""A privateshare sink that POSTs every delivered file to an HTTP endpoint, signed.

Each file is sent at commit: its bytes (``mode = "content"``) or a JSON reference to it
(``mode = "reference"``: name, size, SHA-256, metadata, an optional location in another
sink). Every request carries ``Privateshare-Timestamp`` and ``Privateshare-Signature:
sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` under a shared secret, and a
``Privateshare-Delivery`` id that is the same for every attempt at one file version, so a
receiver can drop duplicates.

Failures are retried with exponential backoff. A delivery that still fails is written
to the dead-letter directory (payload and error, atomically) and, by default, ``commit``
raises: the flow then reports the file failed and does not advance the checkpoint, so
the next run sends it again. Nothing is lost; the dead letter keeps the evidence.

Written only against privateshare's public API, as any third-party plugin would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal
from urllib.parse import quote, urlsplit

import msgspec
import requests

from privateshare import Plugin, PluginContext, Secret, hookimpl
from privateshare.config import Attempts, Delay, HttpUrl, PathOption, Seconds
from privateshare.errors import ConfigError, SinkError
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.sinks import SinkWriter, check_name, file_target

__all__ = [
    "InvalidSignature",
    "WebhookSink",
    "check_name",
    "delivery_id",
    "sign",
    "verify_signature",
]
__version__ = "0.1.0"

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "Privateshare-Timestamp"
SIGNATURE_HEADER = "Privateshare-Signature"
DELIVERY_HEADER = "Privateshare-Delivery"
#: Headers the sink sets itself; ``headers`` in the config may not override them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        TIMESTAMP_HEADER,
        SIGNATURE_HEADER,
        DELIVERY_HEADER,
        "Privateshare-Event",
        "Privateshare-User",
        "Privateshare-File",
        "Privateshare-Updated-Date",
        "Privateshare-Kind",
        "Content-Type",
        "Content-Length",
    )
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _location_problem(value: str) -> str | None:
    """Why a location template is unusable, if it is: only {user} and {name} exist."""
    try:
        value.format(user="u", name="n")
    except (KeyError, IndexError, ValueError) as exc:
        return f"only {{user}} and {{name}} may be used ({type(exc).__name__}: {exc})"
    return None


#: Status codes worth another attempt; any other non-2xx answer is final.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})

_SPOOL_IN_MEMORY = 1 << 20
_BLOCK = 1 << 20


# --- signatures --------------------------------------------------------------------


class InvalidSignature(ValueError):
    """A webhook request's signature or timestamp does not check out."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: str | int, body: bytes) -> str:
    """The ``Privateshare-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a received request; raise :class:`InvalidSignature` saying what is wrong.

    For receivers: ``timestamp`` and ``signature`` are the two headers, ``body`` the raw
    request body (before any JSON parsing). A timestamp further than ``tolerance``
    seconds from now is refused, so a captured request cannot be replayed later.
    """
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        raise InvalidSignature(f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    skew = abs((time.time() if now is None else now) - sent)
    if skew > tolerance:
        raise InvalidSignature(
            f"{TIMESTAMP_HEADER} is {skew:.0f} s away from now (tolerance {tolerance:.0f} s)"
        )
    if not hmac.compare_digest(sign(secret, timestamp, body), signature or ""):
        raise InvalidSignature(f"{SIGNATURE_HEADER} does not match the body")


def delivery_id(user_id: str, name: str, updated_date: int) -> str:
    """Stable id of one version of one file: the same on every attempt and every run."""
    digest = hashlib.sha256(f"{user_id}\0{name}\0{updated_date}".encode())
    return digest.hexdigest()[:32]


# --- names and URLs ------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


# --- the plugin ------------------------------------------------------------------------


class WebhookSink(Plugin):
    """POSTs each file (or a reference to it) to an endpoint, HMAC-signed, with retries."""

    description = "POST each delivered file, HMAC-signed, to an HTTP endpoint (with retries)."

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: The endpoint; https, or http to a loopback address (or with allow_http).
        url: HttpUrl
        #: The HMAC key shared with the receiver: { env = "VAR" } or { file = "path" }.
        secret: Secret
        #: "content": the body is the file; "reference": a JSON description of it.
        mode: Literal["content", "reference"] = "content"
        #: Reference mode: where the file lives, e.g. "s3://archive/{user}/{name}".
        location: (
            Annotated[
                str,
                msgspec.Meta(extra={"check": _location_problem, "expected": "a location template"}),
            ]
            | None
        ) = None
        #: Seconds to connect and to wait for each read of the answer.
        timeout: Seconds = 30.0
        #: Attempts per delivery, the first included.
        attempts: Attempts = 5
        #: Seconds before the second attempt; doubled each time, up to max_backoff.
        backoff: Delay = 1.0
        max_backoff: Delay = 60.0
        #: Where failed deliveries are kept (relative to the config file).
        dead_letter_dir: PathOption = "webhook-dead-letter"
        #: After the last attempt: "raise" (the file fails and is retried next run)
        #: or "dead-letter" (the file counts as delivered; the dead letter is the copy).
        on_failure: Literal["raise", "dead-letter"] = "raise"
        #: Extra request headers (not secrets: they are shown by `privateshare plugins`).
        headers: dict[str, str] = {}
        verify_tls: bool = True
        allow_http: bool = False

        def __post_init__(self) -> None:
            parts = urlsplit(self.url)
            loopback = parts.hostname in LOOPBACK_HOSTS
            if parts.scheme == "http" and not loopback and not self.allow_http:
                raise ValueError(
                    f"url: plain http to {parts.hostname} would send personal data "
                    "unencrypted; use https (or set allow_http = true on a trusted network)"
                )
            reserved = sorted(h for h in self.headers if h.lower() in RESERVED_HEADERS)
            if reserved:
                raise ValueError(f"headers: {reserved} are set by the sink itself; remove them")
            for name, value in self.headers.items():
                if not _HEADER_NAME.match(name):
                    raise ValueError(f"headers: {name!r} is not a valid header name")
                if any(c in value for c in "\r\n\x00"):
                    raise ValueError(
                        f"headers: the value of {name!r} contains a line break or NUL; "
                        "a header value is one line"
                    )
            if self.max_backoff < self.backoff:
                raise ValueError(
                    f"max_backoff: expected at least backoff ({self.backoff:g}), found "
                    f"{self.max_backoff:g}; raise max_backoff or lower backoff"
                )

    def __init__(self, options: WebhookSink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.dead_letter_dir: Path = context.resolve(options.dead_letter_dir)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"WebhookSink({self.context.name}, {redact_url(self.options.url)})"

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Check the user id and that the secret can be read, before any file is sent."""
        check_name(run.user_id, what="user id", allow_slash=False)
        self._secret()

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> WebhookWriter:
        """A writer that spools the file (or only hashes it) and POSTs it at commit."""
        file_target(run, file)
        return WebhookWriter(self, file)

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Close this thread's connection pool."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # plumbing ---------------------------------------------------------------------------

    def _secret(self) -> bytes:
        try:
            return self.options.secret.reveal().encode("utf-8")
        except ConfigError as exc:
            raise SinkError(f"sink {self.context.name}: {exc}") from None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"privateshare-webhook/{__version__}"
            self._local.session = session
        return session

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter; a numeric Retry-After wins, capped."""
        opts = self.options
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), opts.max_backoff)
        base = min(opts.backoff * 2 ** (attempt - 1), opts.max_backoff)
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


class _Spool:
    """Bytes in memory up to 1 MiB, then in an anonymous temp file: bounded memory."""

    def __init__(self) -> None:
        self._memory: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        if self._memory is not None and len(self._memory) + len(chunk) <= _SPOOL_IN_MEMORY:
            self._memory += chunk
        else:
            if self._file is None:
                self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
                self._file.write(self._memory or b"")
                self._memory = None
            self._file.write(chunk)
        self.size += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes

    def body(self) -> bytes | BinaryIO:
        """Something ``requests`` sends with a Content-Length, from the start."""
        if self._file is None:
            return bytes(self._memory or b"")
        self._file.flush()
        self._file.seek(0)
        return self._file

    def blocks(self) -> Iterator[bytes]:
        body = self.body()
        if isinstance(body, bytes):
            yield body
            return
        while block := body.read(_BLOCK):
            yield block

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None


class WebhookWriter(SinkWriter):
    """One file on its way to the endpoint: nothing is sent before ``commit``.

    The state machine (open, committed, aborted; a failed commit ends aborted) is
    :class:`privateshare.sinks.SinkWriter`'s.
    """

    def __init__(self, sink: WebhookSink, file: DataFile) -> None:
        super().__init__(file)
        self._sink, self._file = sink, file
        self._hash = hashlib.sha256()
        self._spool: _Spool | None = _Spool() if sink.options.mode == "content" else None
        self.delivery_id = delivery_id(file.user_id, file.name, file.updated_date)

    def _write(self, chunk: bytes | memoryview) -> None:
        """Hash the chunk and, in content mode, spool a copy of it."""
        self._hash.update(chunk)
        if self._spool is not None:
            self._spool.write(chunk)

    def _commit(self) -> None:
        """POST the file, retrying; on final failure dead-letter it (and raise, by default)."""
        try:
            headers, payload = self._request()
            attempts = self._send(headers, payload)
            if not attempts[-1].get("ok"):
                self._dead_letter(headers, payload, attempts)
        finally:
            if self._spool is not None:
                self._spool.close()

    def _discard(self) -> None:
        """Forget the file; nothing was sent unless commit ran."""
        if self._spool is not None:
            self._spool.close()

    # plumbing ---------------------------------------------------------------------------

    def _request(self) -> tuple[dict[str, str], _Spool]:
        """Headers and body (a spool, so a retry can send it again from the start)."""
        sink, file = self._sink, self._file
        headers = {
            **sink.options.headers,
            "Privateshare-Event": "file.delivered",
            DELIVERY_HEADER: self.delivery_id,
            "Privateshare-User": quote(file.user_id, safe=""),
            "Privateshare-File": quote(file.name, safe=""),
            "Privateshare-Updated-Date": str(file.updated_date),
            "Privateshare-Kind": file.kind,
        }
        if self._spool is not None:
            headers["Content-Type"] = file.metadata.mimetype
            return headers, self._spool
        location = None
        if sink.options.location is not None:
            location = sink.options.location.format(
                user=quote(file.user_id, safe=""), name=quote(file.name, safe="/")
            )
        described = self.metadata_document()  # privateshare's one metadata document
        document = {
            "event": "file.delivered",
            "delivery_id": self.delivery_id,
            "user_id": described.pop("user_id"),
            "file": {
                **described,
                "kind": file.kind,
                "mimetype": file.metadata.mimetype,
                "sha256": self._hash.hexdigest(),
            },
            "location": location,
        }
        spool = _Spool()
        spool.write(json.dumps(document, ensure_ascii=False).encode("utf-8"))
        self._spool = spool
        headers["Content-Type"] = "application/json"
        return headers, spool

    def _send(self, headers: dict[str, str], payload: _Spool) -> list[dict[str, Any]]:
        """Up to ``attempts`` POSTs; returns what each attempt got (the last says ``ok``)."""
        sink = self._sink
        opts = sink.options
        key = sink._secret()
        url = redact_url(opts.url)
        attempts: list[dict[str, Any]] = []
        for attempt in range(1, opts.attempts + 1):
            timestamp = str(int(time.time()))
            mac = hmac.new(key, f"{timestamp}.".encode("ascii"), hashlib.sha256)
            for block in payload.blocks():
                mac.update(block)
            signed = {
                **headers,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: "sha256=" + mac.hexdigest(),
            }
            record: dict[str, Any] = {"attempt": attempt, "at": _now_iso()}
            retry_after = None
            try:
                response = sink._session().post(
                    opts.url,
                    data=payload.body(),
                    headers=signed,
                    timeout=opts.timeout,
                    allow_redirects=False,
                    verify=opts.verify_tls,
                )
                with response:
                    record["status"] = response.status_code
                    retry_after = response.headers.get("Retry-After")
                    if 200 <= response.status_code < 300:
                        record["ok"] = True
                        attempts.append(record)
                        return attempts
                    record["error"] = f"HTTP {response.status_code} {response.reason}"
                    final = response.status_code not in RETRYABLE
            except requests.RequestException as exc:
                record["error"] = f"{type(exc).__name__}: {_no_url(str(exc), opts.url)}"
                final = False
            attempts.append(record)
            log.info(
                "sink %s: POST %s for %s failed (attempt %d of %d): %s",
                sink.context.name,
                url,
                self._file.name,
                attempt,
                opts.attempts,
                record["error"],
            )
            if final or attempt == opts.attempts:
                break
            time.sleep(sink._delay(attempt, retry_after))
        return attempts

    def _dead_letter(
        self, headers: dict[str, str], payload: _Spool, attempts: list[dict[str, Any]]
    ) -> None:
        sink, file = self._sink, self._file
        last = attempts[-1]["error"]
        summary = (
            f"sink {sink.context.name}: POST {redact_url(sink.options.url)} of "
            f"{file.name!r} (user {file.user_id!r}) failed after {len(attempts)} "
            f"attempt(s): {last}"
        )
        try:
            where = self._write_dead_letter(headers, payload, attempts, summary)
        except OSError as exc:
            raise SinkError(
                f"{summary}; and the dead letter could not be written to "
                f"{sink.dead_letter_dir}: {exc.strerror or exc}. The file is reported failed "
                "and sent again on the next run."
            ) from None
        if sink.options.on_failure == "dead-letter":
            log.warning("%s; kept in %s", summary, where)
            return
        raise SinkError(
            f"{summary}; the payload is kept in {where}. The file is reported failed and sent "
            "again on the next run."
        )

    def _write_dead_letter(
        self,
        headers: dict[str, str],
        payload: _Spool,
        attempts: list[dict[str, Any]],
        error: str,
    ) -> Path:
        """payload + delivery.json in a temp directory, renamed into place: all or nothing."""
        sink, file = self._sink, self._file
        top = sink.dead_letter_dir
        top.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final = top / f"{stamp}-{self.delivery_id[:16]}"
        temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=top))
        try:
            with open(temp / "payload", "xb") as out:
                for block in payload.blocks():
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            record = {
                "url": redact_url(sink.options.url),
                "sink": sink.context.name,
                "mode": sink.options.mode,
                "delivery_id": self.delivery_id,
                "user_id": file.user_id,
                "file": file.name,
                "updated_date": file.updated_date,
                "headers": headers,  # no signature: it would be stale, and it is not needed
                "attempts": attempts,
                "error": error,
                "failed_at": _now_iso(),
            }
            (temp / "delivery.json").write_text(
                json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            os.rename(temp, final)
        except BaseException:
            for child in temp.iterdir() if temp.exists() else ():
                child.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                temp.rmdir()
            raise
        return final


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _no_url(text: str, url: str) -> str:
    """An exception text without the URL's query or credentials (they may carry tokens)."""
    parts = urlsplit(url)
    text = text.replace(url, redact_url(url))
    if parts.query:
        text = text.replace(parts.query, "<redacted>")
    if parts.password:
        text = text.replace(parts.password, "<redacted>")
    return text
