"""The digi.me Public API client: one method per call of the pull flow (PROTOCOL.md Part A).

Every request goes through the transport hook with an ``authorize`` callback,
so each attempt is signed afresh. Errors are mapped per §A4.6 onto our typed
hierarchy. The client keeps no user state: tokens are passed in and returned;
refreshing and persisting them is the flow's job.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from . import __version__
from .config import DigimeConfig
from .errors import (
    DigimeError,
    MalformedAnswer,
    ResponseTooLarge,
    SDKInvalidError,
    ServerError,
    TransportError,
    ValidationError,
)
from .facade import Hooks
from .jws import (
    InvalidServerToken,
    JwksCache,
    b64url_decode,
    pkce_pair,
    random_alphanumeric,
    sign_request,
)
from .keys import KeyHandle
from .models import Account, FileList, FileMetadata, Session, Token, UserAccessToken
from .retry import Retry, current_deadline
from .sinks import check_name
from .transport import HttpRequest, HttpResponse

JSON = {"accept": "application/json"}
#: An error answer is read up to this much; beyond, its details are dropped.
MAX_ERROR_BYTES = 64 << 10


@dataclass(frozen=True)
class AuthorizeStart:
    """What the user needs to consent, and what we keep to finish afterwards.

    ``url`` is what a browser opens. ``app_url`` is the API v1.5 ``digime://``
    deep link for the digi.me app (None in v1.7). ``exchange`` is False when the
    callback brings no code to exchange (v1.5 one-off consent: the session key is
    the only credential).
    """

    url: str
    state: str
    code_verifier: str
    session: Session
    app_url: str | None = None
    redirect_uri: str | None = None
    exchange: bool = True

    def __repr__(self) -> str:
        return f"AuthorizeStart(url=<consent url>, state={self.state[:4]}…, session={self.session})"


class ConsentDenied(DigimeError):
    """The user cancelled, or the consent page reported an error (§A3.4, §B4)."""

    def __init__(self, error_code: str) -> None:
        self.error_code = error_code
        super().__init__(f"consent was not given (errorCode {error_code})")


def error_body(response: HttpResponse) -> bytes:
    """The start of an error answer, for its details; empty when it cannot be read."""
    try:
        return response.read(MAX_ERROR_BYTES)
    except Exception:
        return b""
    finally:
        response.close()


def check_state(params: Mapping[str, str], state: str) -> None:
    """The callback's ``state`` must be the one we sent: anything else may be forged."""
    if params.get("state") != state:
        raise ValidationError(
            "the consent callback's state does not match the one we sent; "
            "ignore this callback and start the consent again"
        )


@dataclass(frozen=True)
class FileDownload:
    """An open file download: the metadata, and the response to stream the body from."""

    name: str
    metadata: FileMetadata
    last_modified: str | None
    response: HttpResponse


class DigimeClient:
    """Signs, sends and decodes the pull-flow calls of API v1.7.

    Calls that may be repeated (the file list, ``trigger``, accounts, JWKS, sample data
    sets, file metadata) are retried on transient faults with ``retry``; the
    single-use ``oauth/token`` calls and the consent calls are not. Every request
    carries the deadline of the :func:`~privateshare.retry.deadline_scope` it is made in.
    """

    #: The protocol profile this client speaks (``[digime] api``).
    api = "v1.7"

    def __init__(
        self,
        config: DigimeConfig,
        hooks: Hooks,
        key: Callable[[], KeyHandle],
        *,
        retry: Retry | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self._key = key
        self.retry = retry or Retry()
        self.base_url = config.base_url if config.base_url.endswith("/") else config.base_url + "/"
        self.onboard_url = (
            config.onboard_url if config.onboard_url.endswith("/") else config.onboard_url + "/"
        )
        self.client_id = f"{config.application_id}_{config.contract_id}"
        self.jwks = JwksCache(self.base_url, self._get_json_unsigned)

    # --- plumbing -------------------------------------------------------------

    @property
    def agent(self) -> dict[str, Any]:
        import platform

        return {
            "sdk": {
                "name": self.config.agent_name,
                "version": __version__,
                "meta": {"python": platform.python_version()},
            }
        }

    def _authorizer(self, claims: Mapping[str, Any]) -> Callable[[], str]:
        fixed = {"client_id": self.client_id, **claims}

        def authorize() -> str:
            return "Bearer " + sign_request(self._key(), fixed)

        return authorize

    def _send(
        self,
        method: str,
        path: str,
        claims: Mapping[str, Any] | None,
        *,
        json: Any = None,
        headers: Mapping[str, str] = JSON,
        stream: bool = False,
        secret: str | None = None,
    ) -> HttpResponse:
        """Send one request; an error answer becomes a ServerError with ``secret`` (the
        session key in the path) redacted from whatever the server echoed."""
        request = HttpRequest(
            method=method,
            url=self.base_url + path,
            headers=dict(headers),
            json=json,
            authorize=self._authorizer(claims) if claims is not None else None,
            stream=stream,
            deadline=current_deadline(),
        )
        with redacting(secret):
            response = self.hooks.send(request)
        if response.status_code >= 400:
            body = error_body(response)
            raise server_error(
                response.status_code, response.reason, response.headers, body, secrets=(secret,)
            )
        return response

    def _json(self, method: str, path: str, claims: Mapping[str, Any] | None, **kw: Any) -> Any:
        response = self._send(method, path, claims, **kw)
        try:
            body = self._answer(response, f"{method} {path}")
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

    def _get_json_unsigned(self, url: str) -> Any:
        """An unsigned GET of a JSON document (the JWKS), retried on transient faults."""
        return self.retry.call(lambda: self._get_json_unsigned_once(url), f"GET {url}")

    def _get_json_unsigned_once(self, url: str) -> Any:
        request = HttpRequest("GET", url, headers=JSON, deadline=current_deadline())
        response = self.hooks.send(request)
        if response.status_code >= 400:
            body = error_body(response)
            raise server_error(response.status_code, response.reason, response.headers, body)
        try:
            body = self._answer(response, "the JWKS")
        finally:
            response.close()
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise MalformedAnswer(f"{url} did not return JSON") from None

    def _answer(self, response: HttpResponse, what: str) -> bytes:
        """The whole answer, at most ``[digime] max_answer_bytes`` of it once decoded."""
        cap = self.config.max_answer_bytes
        try:
            return response.read(cap)
        except ResponseTooLarge:
            raise ResponseTooLarge(
                f"{what}: the answer is larger than {cap} bytes ([digime] max_answer_bytes); "
                "if this answer can really be that large, raise [digime] max_answer_bytes"
            ) from None

    def _verified(self, body: Any, what: str) -> dict[str, Any]:
        from .jws import verify_server_token

        if not isinstance(body, dict):
            raise ValidationError(f"{what}: the server's answer is not a JSON object")
        return verify_server_token(body.get("token"), self.jwks)

    # --- authorization --------------------------------------------------------

    def authorize(
        self,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
        access_token: UserAccessToken | None = None,
        session_options: Mapping[str, Any] | None = None,
        service_id: int | None = None,
        locale: str | None = None,
    ) -> AuthorizeStart:
        """``POST oauth/authorize``, then the consent URL for the user (§A3.1, §A3.3)."""
        verifier, challenge = pkce_pair()
        state = state or random_alphanumeric(32)
        claims = {
            "access_token": access_token.access_token.value if access_token else None,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "redirect_uri": redirect_uri or self.config.redirect_uri,
            "response_mode": "query",
            "response_type": "code",
            "state": state,
        }
        body: dict[str, Any] = {"agent": self.agent}
        if session_options is not None:
            body["actions"] = {"pull": dict(session_options)}
        answer = self._json("POST", "oauth/authorize", claims, json=body)
        payload = self._verified(answer, "oauth/authorize")
        code = payload.get("preauthorization_code")
        if not code:
            raise ValidationError("oauth/authorize: the server token has no preauthorization_code")
        params: dict[str, str] = {"code": str(code), "sourceType": "pull"}
        if service_id:
            params["service"] = str(service_id)
        if locale:
            params["lng"] = locale
        url = f"{self.onboard_url}authorize?{urlencode(params)}"
        return AuthorizeStart(
            url,
            state,
            verifier,
            decode_session(answer.get("session")),
            redirect_uri=claims["redirect_uri"],
        )

    def consent_url(
        self,
        *,
        once: bool = False,
        redirect_uri: str | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> AuthorizeStart:
        """Where the user consents. In v1.7 one-off and ongoing consent start alike."""
        return self.authorize(redirect_uri=redirect_uri, session_options=session_options)

    def parse_callback(self, params: Mapping[str, str], start: AuthorizeStart) -> str | None:
        """The authorization code from a §A3.4 callback; ``state`` is checked first."""
        check_state(params, start.state)
        if params.get("success") != "true":
            raise ConsentDenied(params.get("errorCode") or params.get("error_message") or "?")
        code = params.get("code")
        if not code:
            raise ValidationError("the consent callback has no code")
        return code

    def exchange_code(
        self,
        code: str,
        code_verifier: str,
        *,
        redirect_uri: str | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> UserAccessToken:
        """``POST oauth/token`` with the authorization code (§A3.5).

        ``redirect_uri`` is accepted for symmetry with API v1.5 and not sent: v1.7
        has no ``redirect_uri`` claim here. ``on_answer`` as for :meth:`refresh`.
        """
        claims = {
            "code": code,
            "code_verifier": code_verifier,
            "grant_type": "authorization_code",
        }
        return self._token_grant(claims, {}, on_answer)

    def refresh(
        self, token: UserAccessToken, *, on_answer: Callable[[str], None] | None = None
    ) -> UserAccessToken:
        """``POST oauth/token`` with the refresh token (§A3.6).

        ``on_answer`` gets the server's answer (a signed JWT, secret) the moment it
        arrives, before its keys are fetched and it is verified, so the caller can
        keep it: the server has already retired the old refresh token. Verify a
        kept answer later with :meth:`token_from_answer`.
        """
        claims = {"grant_type": "refresh_token", "refresh_token": token.refresh_token.value}
        return self._token_grant(claims, {"content-type": "application/json"}, on_answer)

    def token_from_answer(self, answer: str, *, deferred: bool = False) -> UserAccessToken:
        """Verify an answer of ``oauth/token`` and decode the token it carries.

        ``deferred``: the answer was kept when it arrived and is checked now, so an
        ``exp`` it may carry is not held against it. Raises
        :class:`~privateshare.jws.InvalidServerToken` when the answer itself is bad
        (forged, damaged, not a token); other errors mean its keys could not be had,
        and a later attempt may succeed.
        """
        from .jws import verify_server_token

        payload = verify_server_token(answer, self.jwks, verify_exp=not deferred)
        try:
            return self._decode_token(payload)
        except ValidationError as exc:
            raise InvalidServerToken(str(exc)) from None

    @staticmethod
    def _decode_token(payload: Mapping[str, Any]) -> UserAccessToken:
        return decode_token(payload)

    def _token_grant(
        self,
        claims: Mapping[str, Any],
        headers: Mapping[str, str],
        on_answer: Callable[[str], None] | None,
    ) -> UserAccessToken:
        answer = self._json("POST", "oauth/token", claims, headers=headers)
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ValidationError("oauth/token: the server's answer has no token")
        if on_answer is not None:
            on_answer(token)
        return self.token_from_answer(token)

    def reauthorize(
        self, token: UserAccessToken, *, redirect_uri: str | None = None, state: str | None = None
    ) -> AuthorizeStart:
        """``POST oauth/token/reference``: a consent URL when the refresh token expired."""
        verifier, challenge = pkce_pair()
        state = state or random_alphanumeric(32)
        claims = {
            "access_token": token.access_token.value,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "redirect_uri": redirect_uri or self.config.redirect_uri,
            "state": state,
        }
        answer = self._json("POST", "oauth/token/reference", claims, json={"agent": self.agent})
        payload = self._verified(answer, "oauth/token/reference")
        code = payload.get("reference_code")
        if not code:
            raise ValidationError("oauth/token/reference: the server token has no reference_code")
        url = f"{self.onboard_url}user-reauth?{urlencode({'code': str(code)})}"
        return AuthorizeStart(url, state, verifier, decode_session(answer.get("session")))

    def reauthorize_account(
        self,
        token: UserAccessToken,
        account_id: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> AuthorizeStart:
        """``POST oauth/token/reference`` and ``POST reference``: a URL to reconnect one account.

        For an account that reports ``ServiceAuthorizationError`` (a partial library).
        The callback brings ``success`` and ``state`` and no code: the next pull reads the
        account again (§A3.13 ``getReauthorizeAccountUrl``).
        """
        state = state or random_alphanumeric(32)
        claims = {
            "access_token": token.access_token.value,
            "redirect_uri": redirect_uri or self.config.redirect_uri,
            "state": state,
        }
        answer = self._json("POST", "oauth/token/reference", claims, json={"agent": self.agent})
        payload = self._verified(answer, "oauth/token/reference")
        code = payload.get("reference_code")
        if not code:
            raise ValidationError("oauth/token/reference: the server token has no reference_code")
        reference = self._json(
            "POST", "reference", {}, json={"type": "accountId", "value": account_id}
        )
        ref_id = reference.get("id") if isinstance(reference, dict) else None
        if not isinstance(ref_id, str) or not ref_id:
            raise ValidationError("POST reference: the answer has no id")
        query = urlencode({"code": str(code), "accountRef": ref_id})
        return AuthorizeStart(
            f"{self.onboard_url}reauthorize?{query}",
            state,
            "",
            decode_session(answer.get("session")),
            redirect_uri=redirect_uri,
            exchange=False,
        )

    # --- data -----------------------------------------------------------------

    def trigger(
        self, token: UserAccessToken, session_options: Mapping[str, Any] | None = None
    ) -> Session:
        """``POST permission-access/trigger``: a new data session for a saved token (§A3.7).

        Retried on transient faults: a repeated trigger only starts another session.
        """
        body = {**dict(session_options or {}), "agent": self.agent}
        answer = self.retry.call(
            lambda: self._json(
                "POST",
                "permission-access/trigger",
                {"access_token": token.access_token.value},
                json=body,
            ),
            "permission-access/trigger",
        )
        if not isinstance(answer, dict) or "session" not in answer:
            raise ValidationError("permission-access/trigger: the answer has no session")
        return decode_session(answer["session"], strict=True)

    def file_list(self, session_key: str, token: UserAccessToken | None) -> FileList:
        """``GET permission-access/query/{sessionKey}`` (§A3.8), retried on transient faults."""
        claims = self._token_claims(token)
        return self.retry.call(lambda: self._file_list_once(session_key, claims), "the file list")

    def _file_list_once(self, session_key: str, claims: dict[str, Any] | None) -> FileList:
        response = self._send(
            "GET", f"permission-access/query/{segment(session_key)}", claims, secret=session_key
        )
        try:
            with redacting(session_key):
                body = self._answer(response, "the file list")
        finally:
            response.close()
        return decode_file_list(body)

    def open_file(self, session_key: str, name: str, token: UserAccessToken | None) -> FileDownload:
        """``GET .../{fileName}``: headers checked, body left to stream (§A3.9).

        Not retried here: the flow retries a file's whole delivery, body included.
        """
        response = self._send(
            "GET",
            file_path(session_key, name),
            self._token_claims(token),
            headers={"accept": "application/octet-stream"},
            stream=True,
            secret=session_key,
        )
        try:
            metadata = decode_x_metadata(response.headers.get("x-metadata"), name)
        except ValidationError:
            response.close()
            raise
        return FileDownload(name, metadata, response.headers.get("last-modified"), response)

    def file_metadata(self, session_key: str, name: str, token: UserAccessToken) -> FileMetadata:
        """``HEAD .../{fileName}``: the metadata only (§A3.10)."""

        def head() -> FileMetadata:
            response = self._send(
                "HEAD", file_path(session_key, name), self._token_claims(token), secret=session_key
            )
            response.close()
            return decode_x_metadata(response.headers.get("x-metadata"), name)

        return self.retry.call(head, f"the metadata of {name!r}")

    def accounts(self, token: UserAccessToken) -> list[Account]:
        """``GET permission-access/accounts`` (§A3.11)."""
        answer = self.retry.call(
            lambda: self._json("GET", "permission-access/accounts", self._token_claims(token)),
            "permission-access/accounts",
        )
        try:
            return msgspec.convert(answer, list[Account])
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"the accounts answer does not have the expected shape: {exc}"
            ) from None

    def delete_user(self, token: UserAccessToken) -> None:
        """``DELETE user``: the user's library and consent are removed at digi.me (§A3.12)."""
        self._json("DELETE", "user", self._token_claims(token))

    def sample_datasets(self, source_id: int) -> dict[str, Any]:
        """``GET permission-access/sample/datasets/{sourceId}`` (§A3.14)."""
        answer = self.retry.call(
            lambda: self._json("GET", f"permission-access/sample/datasets/{source_id}", {}),
            "permission-access/sample/datasets",
        )
        if not isinstance(answer, dict):
            raise ValidationError("the sample data sets answer is not a JSON object")
        return answer

    @staticmethod
    def _token_claims(token: UserAccessToken | None) -> dict[str, Any]:
        # No token: a one-off contract reads its consented session with the signed JWT alone.
        return {"access_token": token.access_token.value} if token is not None else {}


# --- decoding -------------------------------------------------------------------


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


def decode_file_list(body: bytes) -> FileList:
    """A file-list answer: a body that does not parse is malformed (maybe cut short) and
    worth another poll; a parsed one of the wrong shape is not."""
    try:
        return msgspec.json.decode(body, type=FileList)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"the file list does not have the expected shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedAnswer(f"the file list is not valid JSON (cut short?): {exc}") from None


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


def decode_session(value: Any, *, strict: bool = False) -> Session:
    if isinstance(value, dict) and isinstance(value.get("key"), str):
        expiry = value.get("expiry", 0)
        if isinstance(expiry, int | float):
            return Session(value["key"], int(expiry))
    if strict:
        raise ValidationError("the session is not {key: string, expiry: number}")
    return Session("", 0)


def decode_token(payload: Mapping[str, Any]) -> UserAccessToken:
    """Map the server token payload (§A4.2) to a :class:`UserAccessToken`."""

    def token(name: str) -> Token:
        part = payload.get(name)
        if not isinstance(part, dict) or not isinstance(part.get("value"), str):
            raise ValidationError(f"the server token has no {name} value")
        expiry = part.get("expires_on") or 0
        return Token(part["value"], int(expiry) if isinstance(expiry, int | float) else 0)

    consent = payload.get("consentid")
    return UserAccessToken(
        access_token=token("access_token"),
        refresh_token=token("refresh_token"),
        user_id=str(payload.get("sub") or ""),
        consent_id=str(consent) if consent is not None else None,
    )


def decode_x_metadata(header: str | None, name: str) -> FileMetadata:
    """The base64url JSON ``x-metadata`` header (§A4.4)."""
    if not header:
        raise MalformedAnswer(f"{name}: the x-metadata header is missing")
    try:
        data = msgspec.json.decode(b64url_decode(header.strip()))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise MalformedAnswer(f"{name}: the x-metadata header is not base64url JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
        raise MalformedAnswer(f"{name}: the x-metadata header has no metadata object")
    compression = data.get("compression")
    return FileMetadata(
        metadata=data.get("metadata", {}),
        compression=compression if isinstance(compression, str) else None,
    )


def server_error(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: Iterable[str | None] = (),
) -> ServerError:
    """Map an error response to ServerError / SDKInvalidError (§A4.6).

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
    """A 401 that a token refresh can fix (§A7): InvalidToken or no standard error body."""
    return (
        isinstance(error, ServerError)
        and error.status_code == 401
        and error.code in ("InvalidToken", "DigiMeServerError")
    )


def now_ms() -> int:
    return int(time.time() * 1000)
