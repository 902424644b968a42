"""Sending a request and reading its answer, with errors mapped and secrets redacted.

Shared by every profile. :class:`Wire` takes the narrow callables it needs (``send``,
the transport; ``authorizer``, which signs each attempt) rather than the hook facade,
so a profile can wrap either (the v1.5 client watches a status header on ``send``).
Errors follow protocol.md#errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import msgspec

from ..errors import (
    MalformedAnswer,
    ResponseTooLarge,
    SDKInvalidError,
    ServerError,
    TransportError,
    ValidationError,
)
from ..retry import Retry, current_deadline
from ..sinks import check_name
from ..transport import HttpRequest, HttpResponse, content_encoding, decoded_stream

JSON = {"accept": "application/json"}
#: An error answer is read up to this much; beyond, its details are dropped.
MAX_ERROR_BYTES = 64 << 10
#: Pieces in which a long answer (the file list) is read and decoded.
STREAM_CHUNK = 256 << 10

#: The transport: one request in, one response out (``Hooks.send``).
Send = Callable[[HttpRequest], HttpResponse]
#: Claims in, a callback out that returns a fresh ``Authorization`` value per attempt.
Authorizer = Callable[[Mapping[str, Any]], Callable[[], str]]


class Wire:
    """One API base URL: sends signed or unsigned requests and decodes JSON answers."""

    def __init__(
        self,
        base_url: str,
        send: Send,
        authorizer: Authorizer,
        *,
        max_answer_bytes: int,
        retry: Retry,
    ) -> None:
        self.base_url = base_url
        self.send_request = send
        self.authorizer = authorizer
        self.max_answer_bytes = max_answer_bytes
        self.retry = retry

    def send(
        self,
        method: str,
        path: str,
        claims: Mapping[str, Any] | None,
        *,
        json: Any = None,
        headers: Mapping[str, str] = JSON,
        stream: bool = False,
        secret: str | None = None,
        retry: bool | None = None,
    ) -> HttpResponse:
        """Send one request (unsigned when ``claims`` is None); an error answer becomes a
        ServerError with ``secret`` (the session key in the path) redacted from whatever
        the server echoed. ``retry`` overrides whether the transport may repeat it (by
        default: when the method is idempotent)."""
        request = HttpRequest(
            method=method,
            url=self.base_url + path,
            headers=dict(headers),
            json=json,
            authorize=self.authorizer(claims) if claims is not None else None,
            stream=stream,
            retry=retry,
            deadline=current_deadline(),
        )
        with redacting(secret):
            response = self.send_request(request)
        if response.status_code >= 400:
            body = error_body(response)
            raise server_error(
                response.status_code, response.reason, response.headers, body, secrets=(secret,)
            )
        return response

    def json(self, method: str, path: str, claims: Mapping[str, Any] | None, **kw: Any) -> Any:
        """The decoded JSON answer of one request (None for an empty body)."""
        response = self.send(method, path, claims, **kw)
        try:
            body = self.answer(response, f"{method} {path}")
        finally:
            response.close()
        if not body:
            return None
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise MalformedAnswer(
                f"{method} {path.split('/')[0]}: the server's answer is not JSON"
            ) from None

    def get_json_unsigned(self, url: str) -> Any:
        """An unsigned GET of a JSON document (the JWKS), retried on transient faults."""
        return self.retry.call(lambda: self._get_json_unsigned_once(url), f"GET {url}")

    def _get_json_unsigned_once(self, url: str) -> Any:
        request = HttpRequest("GET", url, headers=JSON, deadline=current_deadline())
        response = self.send_request(request)
        if response.status_code >= 400:
            body = error_body(response)
            raise server_error(response.status_code, response.reason, response.headers, body)
        try:
            body = self.answer(response, "the JWKS")
        finally:
            response.close()
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise MalformedAnswer(f"{url} did not return JSON") from None

    def answer(self, response: HttpResponse, what: str) -> bytes:
        """The whole answer, at most ``[digime] max_answer_bytes`` of it once decoded."""
        try:
            return response.read(self.max_answer_bytes)
        except ResponseTooLarge:
            raise self._too_large(what) from None

    def answer_chunks(self, response: HttpResponse, what: str) -> Iterator[bytes | memoryview]:
        """The answer in pieces of about ``STREAM_CHUNK`` bytes, capped as :meth:`answer`.

        The body is read from the stream, so no more than one piece is held; an encoded
        one (gzip, deflate, br) goes through :func:`~privateshare.transport.decoded_stream`,
        which decodes it in bounded steps and stops once the decoded bytes pass the cap.
        """
        if content_encoding(response.headers):
            try:
                decoded = decoded_stream(response, self.max_answer_bytes, what)
                while chunk := decoded.read(STREAM_CHUNK):
                    yield chunk
            except ResponseTooLarge:
                response.close()
                coding = response.headers.get("Content-Encoding", "")
                raise self._too_large(what, f" once decoded (Content-Encoding {coding})") from None
            return
        cap = self.max_answer_bytes
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            response.close()
            raise self._too_large(what)
        stream = response.stream()
        total = 0
        while chunk := stream.read(STREAM_CHUNK):
            total += len(chunk)
            if total > cap:
                response.close()
                raise self._too_large(what)
            yield chunk

    def _too_large(self, what: str, decoded: str = "") -> ResponseTooLarge:
        return ResponseTooLarge(
            f"{what}: the answer is larger than {self.max_answer_bytes} bytes{decoded} ([digime] "
            "max_answer_bytes); if this answer can really be that large, raise [digime] "
            "max_answer_bytes"
        )


def error_body(response: HttpResponse) -> bytes:
    """The start of an error answer, for its details; empty when it cannot be read."""
    try:
        return response.read(MAX_ERROR_BYTES)
    except Exception:
        return b""
    finally:
        response.close()


def segment(value: str) -> str:
    """A server-issued key or file name as a URL path segment.

    The Node SDK inserts them raw; plain names (``file1.json``) come out the same here,
    but a ``?``, ``#``, ``%`` or space can no longer turn into a query, a fragment or
    another file. ``/`` is kept, as the API's own names may nest.
    """
    return quote(value, safe="/")


def file_path(session_key: str, name: str) -> str:
    """The path of a file of a session; the name is checked before it reaches a URL.

    Quoting alone is not enough: an HTTP library normalises ``a/../../x`` into another
    resource, and empty or ``.`` segments name something else too. Such names (and
    control characters) raise :class:`~privateshare.errors.UnsafeFileNameError`.
    """
    check_name(name)
    return f"permission-access/query/{segment(session_key)}/{segment(name)}"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` without any of ``secrets``, raw or percent-encoded as in a request path."""
    for secret in secrets:
        if secret:
            for form in (secret, quote(secret, safe="/"), quote(secret, safe="")):
                text = text.replace(form, "<redacted>")
    return text


@contextmanager
def redacting(secret: str | None) -> Iterator[None]:
    """A transport error that quotes the request path is re-raised without ``secret``."""
    try:
        yield
    except TransportError as exc:
        text = str(exc)
        clean = redact(text, (secret,))
        if clean == text:
            raise
        raise TransportError(clean) from None


def server_error(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str | None] = (),
) -> ServerError:
    """Map an error response to ServerError / SDKInvalidError (protocol.md#errors).

    Servers echo the request path (``There is no endpoint at …/query/<key>/…``):
    ``secrets`` are redacted from everything taken from the answer.
    """
    secrets = tuple(secrets)
    code = message = reference = None
    try:
        data = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code, message, reference = (
                error.get("code"),
                error.get("message"),
                error.get("reference"),
            )
        elif isinstance(error, str):
            code, message = error, data.get("message")
    code = code or headers.get("x-error-code")
    message = message or headers.get("x-error-message")
    reference = reference or headers.get("x-error-reference")
    cls = SDKInvalidError if code in ("SDKInvalid", "SDKVersionInvalid") else ServerError
    return cls(
        redact(str(message or f"HTTP {status} {reason}".strip()), secrets),
        code=redact(str(code or "DigiMeServerError"), secrets),
        reference=redact(str(reference or "Unknown reference"), secrets),
        status_code=status,
        status_message=redact(reason, secrets),
    )


def needs_refresh(error: BaseException) -> bool:
    """A 401 that a token refresh can fix (protocol.md#errors): InvalidToken or no
    standard error body."""
    return (
        isinstance(error, ServerError)
        and error.status_code == 401
        and error.code in ("InvalidToken", "DigiMeServerError")
    )


def expect_object(answer: Any, what: str) -> dict[str, Any]:
    """``answer`` if it is a JSON object, else a ValidationError naming the call."""
    if not isinstance(answer, dict):
        raise ValidationError(f"{what}: the server's answer is not a JSON object")
    return answer


def now_ms() -> int:
    return int(time.time() * 1000)
