"""The digi.me Public API v1.5 client: the original Private Share generation (PROTOCOL.md Part B).

Same method names and return types as :class:`privateshare.api.DigimeClient`, so
the flow runs unchanged on either profile (``[digime] api``). What differs:

- a session is established explicitly and unauthenticated (§B2), and consent is
  given in the digi.me app (a ``digime://consent-access`` link) or, one-off, on
  the guest page in a browser (§B3);
- the callback says ``result=SUCCESS|ERROR|CANCEL`` (§B4);
- token calls carry ``redirect_uri`` and answer flat payloads (§B5, §B6);
- a saved token prepares an established session through ``trigger`` with
  ``session_key`` (§B7);
- the file list and files are read with the session key alone, and accounts are
  the encrypted file ``accounts.json`` in the session (§B8);
- files carry a SHA-512 prefix (§B9): the decryption plugin follows ``[digime] api``.

Calls v1.5 does not have raise :class:`UnsupportedCall`.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import msgspec

from . import __version__
from .api import (
    AuthorizeStart,
    ConsentDenied,
    DigimeClient,
    FileDownload,
    check_state,
    decode_file_list,
    decode_x_metadata,
    file_path,
    redacting,
    segment,
)
from .config import DigimeConfig
from .errors import ConfigError, ValidationError
from .facade import Hooks
from .jws import JwksCache, pkce_pair, random_alphanumeric
from .keys import KeyHandle
from .models import Account, FileList, FileMetadata, Session, Token, UserAccessToken
from .retry import Retry
from .transport import HttpRequest, HttpResponse

#: Status headers go to the same logger as the v1.7 client's messages.
log = logging.getLogger("privateshare.api")

DEFAULT_BASE_URL = "https://api.digi.me/v1.5"
GUEST_PATH = "/apps/quark/v1/direct-onboarding"
APP_CONSENT_LINK = "digime://consent-access"
ACCOUNTS_FILE = "accounts.json"
#: accounts.json is a small JSON file; anything larger is not what we asked for.
MAX_ACCOUNTS_FILE = 16 << 20
_DEFAULTS = DigimeConfig(application_id="", contract_id="")


class UnsupportedCall(ConfigError):
    """The call exists in API v1.7 only; ``[digime] api = "v1.5"`` has no equivalent."""

    def __init__(self, call: str, hint: str) -> None:
        super().__init__(
            f'{call} does not exist in API v1.5 ([digime] api = "v1.5"); {hint}',
        )


@dataclass(frozen=True)
class EstablishedSession:
    """A v1.5 session (§B2): its key reads the data; the exchange token opens the guest page."""

    session: Session
    exchange_token: str

    def __repr__(self) -> str:
        return f"EstablishedSession(session={self.session}, exchange_token=<redacted>)"


class _StatusWatch:
    """Sends through the transport hook and reports ``x-digi-sdk-status`` once per message."""

    def __init__(self, hooks: Hooks, agent_name: str) -> None:
        self._hooks = hooks
        self._agent = f"{agent_name} {__version__}"
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def send(self, request: HttpRequest) -> HttpResponse:
        response = self._hooks.send(request)
        status = response.headers.get("x-digi-sdk-status")
        if status:
            message = response.headers.get("x-digi-sdk-status-message") or ""
            with self._lock:
                new = (status, message) not in self._seen
                self._seen.add((status, message))
            if new:
                log.warning(
                    "the digi.me API reports status %r for this SDK (%s, API v1.5): %s",
                    status,
                    self._agent,
                    message or "(no message)",
                )
        return response


class DigimeClientV15(DigimeClient):
    """Signs, sends and decodes the Private Share calls of API v1.5."""

    api = "v1.5"

    def __init__(
        self,
        config: DigimeConfig,
        hooks: Hooks,
        key: Callable[[], KeyHandle],
        *,
        retry: Retry | None = None,
    ) -> None:
        super().__init__(config, hooks, key, retry=retry)
        self._hooks = hooks
        self.hooks = _StatusWatch(hooks, config.agent_name)  # type: ignore[assignment]
        base = config.base_url
        if base == _DEFAULTS.base_url:  # the v1.7 default was left in place
            base = DEFAULT_BASE_URL
        #: ``https://api.digi.me/v1.5``: paths are joined with one ``/`` (§B1; a trailing
        #: slash is dropped instead of producing ``//``).
        self.api_base = base.rstrip("/")
        self.base_url = self.api_base + "/"
        parts = urlsplit(self.api_base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.jwks = JwksCache(self.base_url, self._get_json_unsigned)
        #: An HTTP stand-in for the digi.me app that opens ``consent-access`` links (the
        #: sandbox has one). None against the real service: the link needs the app.
        self.app_opener: str | None = None
        if config.onboard_url != _DEFAULTS.onboard_url:
            self.app_opener = config.onboard_url.rstrip("/") + "/"

    # --- plumbing -------------------------------------------------------------

    @property
    def sdk_agent(self) -> dict[str, Any]:
        """``sdkAgent`` of §B2 (flat, unlike v1.7's ``agent.sdk``)."""
        return {
            "name": self.config.agent_name,
            "version": __version__,
            "meta": {"python": platform.python_version()},
        }

    def _v17_only(self, call: str, hint: str) -> NoReturn:
        raise UnsupportedCall(call, hint)

    # --- step 2: establish a session ---------------------------------------------

    def establish_session(self, scope: Mapping[str, Any] | None = None) -> EstablishedSession:
        """``POST permission-access/session``: unauthenticated, by application and contract."""
        body: dict[str, Any] = {
            "appId": self.config.application_id,
            "contractId": self.config.contract_id,
            "sdkAgent": self.sdk_agent,
            "accept": {"compression": "gzip"},
        }
        if scope is not None:
            body["scope"] = dict(scope)
        answer = self._json("POST", "permission-access/session", None, json=body)
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("sessionKey"), str)
            or not isinstance(answer.get("sessionExchangeToken"), str)
            or isinstance(answer.get("expiry"), bool)
            or not isinstance(answer.get("expiry"), int | float)
        ):
            raise ValidationError(
                "permission-access/session: the answer is not "
                "{expiry: number, sessionKey: string, sessionExchangeToken: string}"
            )
        return EstablishedSession(
            Session(answer["sessionKey"], int(answer["expiry"])), answer["sessionExchangeToken"]
        )

    def _session_for(self, session_options: Mapping[str, Any] | None) -> EstablishedSession:
        scope = (session_options or {}).get("scope")
        return self.establish_session(scope if isinstance(scope, Mapping) else None)

    # --- step 3: consent ------------------------------------------------------------

    def app_link(self, params: Mapping[str, str], session: Session) -> str:
        """The ``digime://consent-access`` link: option parameters, then session and app (§B3)."""
        query = {
            **params,
            "sessionKey": session.key,
            "appId": self.config.application_id,
            "sdkVersion": __version__,
        }
        return f"{APP_CONSENT_LINK}?{urlencode(query)}"

    def guest_url(self, established: EstablishedSession, callback_url: str) -> str:
        """The guest consent page in a browser, one-off (§B3)."""
        return (
            f"{self.origin}{GUEST_PATH}?sessionExchangeToken="
            f"{quote(established.exchange_token, safe='')}"
            f"&callbackUrl={quote(callback_url, safe=_URI_COMPONENT_SAFE)}"
        )

    def consent_url(
        self,
        *,
        once: bool = False,
        redirect_uri: str | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> AuthorizeStart:
        """Establish a session, then the consent link for it.

        One-off: ``url`` is the guest page (the digi.me app link is ``app_url``); our
        ``state`` rides in the callback URL's query, which the app keeps. Ongoing: a
        pre-authorization code first; ``url`` is the app link, opened through
        ``[digime] onboard_url`` when that names a stand-in for the app (the sandbox).
        """
        redirect = redirect_uri or self.config.redirect_uri
        if not once:
            return self.authorize(redirect_uri=redirect, session_options=session_options)
        established = self._session_for(session_options)
        state = random_alphanumeric(32)
        callback = _with_query(redirect, {"state": state})
        app_url = self.app_link({"callbackUrl": callback}, established.session)
        return AuthorizeStart(
            self.guest_url(established, callback),
            state,
            "",
            established.session,
            app_url=app_url,
            redirect_uri=redirect,
            exchange=False,
        )

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
        """Ongoing consent: a session, ``POST oauth/authorize`` (§B5), then the app link."""
        if access_token is not None:
            self._v17_only(
                "oauth/authorize with an existing access token",
                "consent again without one, or use a saved token with `pull`",
            )
        redirect = redirect_uri or self.config.redirect_uri
        established = self._session_for(session_options)
        verifier, challenge = pkce_pair()
        state = state or random_alphanumeric(32)
        claims = {
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "redirect_uri": redirect,
            "response_mode": "query",
            "response_type": "code",
            "state": state,
        }
        answer = self._json("POST", "oauth/authorize", claims)
        payload = self._verified(answer, "oauth/authorize")
        code = payload.get("preauthorization_code")
        if not code:
            raise ValidationError("oauth/authorize: the server token has no preauthorization_code")
        params = {"preauthorizationCode": str(code), "callbackUrl": redirect}
        app_url = self.app_link(params, established.session)
        url = app_url
        if self.app_opener is not None:
            url = f"{self.app_opener}consent-access?{urlsplit(app_url).query}"
        return AuthorizeStart(
            url, state, verifier, established.session, app_url=app_url, redirect_uri=redirect
        )

    def parse_callback(self, params: Mapping[str, str], start: AuthorizeStart) -> str | None:
        """The code from a §B4 callback (None for one-off consent); ``state`` is checked first."""
        check_state(params, start.state)
        result = params.get("result")
        if result in ("CANCEL", "ERROR"):
            raise ConsentDenied(result)
        if result != "SUCCESS":
            raise ValidationError(
                "the consent callback has no result=SUCCESS|ERROR|CANCEL; "
                "is [digime] api right for this service?"
            )
        if not start.exchange:
            return None
        code = params.get("code")
        if not code:
            raise ValidationError("the consent callback has no code")
        return code

    # --- tokens ------------------------------------------------------------------------

    def exchange_code(
        self,
        code: str,
        code_verifier: str,
        *,
        redirect_uri: str | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> UserAccessToken:
        """``POST oauth/token`` with the code, ``redirect_uri`` and the verifier if any (§B6)."""
        claims = {
            "code": code,
            "code_verifier": code_verifier or None,  # optional in v1.5
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri or self.config.redirect_uri,
        }
        return self._token_grant(claims, {}, on_answer)

    def refresh(
        self, token: UserAccessToken, *, on_answer: Callable[[str], None] | None = None
    ) -> UserAccessToken:
        """``POST oauth/token`` with the refresh token and ``redirect_uri`` (§B6)."""
        claims = {
            "grant_type": "refresh_token",
            "redirect_uri": self.config.redirect_uri,
            "refresh_token": token.refresh_token.value,
        }
        return self._token_grant(claims, {"content-type": "application/json"}, on_answer)

    @staticmethod
    def _decode_token(payload: Mapping[str, Any]) -> UserAccessToken:
        return decode_flat_token(payload)

    def reauthorize(
        self, token: UserAccessToken, *, redirect_uri: str | None = None, state: str | None = None
    ) -> AuthorizeStart:
        self._v17_only(
            "oauth/token/reference (reauthorization)",
            "when a token can no longer be refreshed, the user consents again "
            "(`privateshare authorize`)",
        )

    def reauthorize_account(
        self,
        token: UserAccessToken,
        account_id: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> AuthorizeStart:
        self._v17_only(
            "oauth/token/reference (reauthorizing an account)",
            "on API v1.5 the user reconnects the account in the digi.me app",
        )

    # --- step 4: data ---------------------------------------------------------------------

    def prepare_session(self, session_key: str, token: UserAccessToken) -> None:
        """``POST permission-access/trigger``: bind an established session to the user (§B7)."""
        claims = {
            "access_token": token.access_token.value,
            "redirect_uri": self.config.redirect_uri,
            "session_key": session_key,
        }
        self._json(
            "POST",
            "permission-access/trigger",
            claims,
            headers={"content-type": "application/json"},
        )

    def trigger(
        self, token: UserAccessToken, session_options: Mapping[str, Any] | None = None
    ) -> Session:
        """A data session for a saved token: establish one, then prepare it with the token.

        The flow's token keeper refreshes on a 401 and calls this again once (§B7). Both
        steps are retried together on transient faults: a repeat only makes another session.
        """

        def attempt() -> Session:
            established = self._session_for(session_options)
            self.prepare_session(established.session.key, token)
            return established.session

        return self.retry.call(attempt, "permission-access/session and trigger")

    def file_list(self, session_key: str, token: UserAccessToken | None = None) -> FileList:
        """``GET permission-access/query/{sessionKey}``, with the session key only (§B8)."""
        return self.retry.call(lambda: self._file_list_once(session_key, None), "the file list")

    def _file_list_once(self, session_key: str, claims: dict[str, Any] | None) -> FileList:
        response = self._send(
            "GET", f"permission-access/query/{segment(session_key)}", None, secret=session_key
        )
        try:
            with redacting(session_key):
                body = self._answer(response, "the file list")
        finally:
            response.close()
        return decode_file_list(body)

    def open_file(
        self, session_key: str, name: str, token: UserAccessToken | None = None
    ) -> FileDownload:
        """``GET .../{fileName}`` with the session key only; the body is left to stream (§B8)."""
        response = self._send(
            "GET",
            file_path(session_key, name),
            None,
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

    def file_metadata(
        self, session_key: str, name: str, token: UserAccessToken | None = None
    ) -> FileMetadata:
        self._v17_only(
            "HEAD permission-access/query/{sessionKey}/{fileName}",
            "open_file() returns the metadata with the file",
        )

    def session_accounts(self, session_key: str) -> list[Account]:
        """The accounts of a session: the encrypted file ``accounts.json`` (§B8)."""
        download = self.open_file(session_key, ACCOUNTS_FILE)
        data = bytearray()
        try:
            chunks = self._hooks.decrypt(
                download.response.stream(), download.metadata, self._key(), ACCOUNTS_FILE
            )
            for chunk in chunks:
                data += chunk
                if len(data) > MAX_ACCOUNTS_FILE:
                    raise ValidationError(
                        f"{ACCOUNTS_FILE} is larger than {MAX_ACCOUNTS_FILE} bytes; "
                        "that is not an accounts file"
                    )
        finally:
            download.response.close()
        try:
            value = msgspec.json.decode(bytes(data))
        except msgspec.DecodeError:
            raise ValidationError(f"{ACCOUNTS_FILE} is malformed: not JSON") from None
        if isinstance(value, dict) and "accounts" in value:
            value = value["accounts"]
        try:
            return msgspec.convert(value, list[Account])
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{ACCOUNTS_FILE} is malformed: {exc}") from None

    def accounts(self, token: UserAccessToken) -> list[Account]:
        """A session prepared with the token, then its ``accounts.json`` (both retried)."""
        key = self.trigger(token).key
        return self.retry.call(lambda: self.session_accounts(key), ACCOUNTS_FILE)

    def delete_user(self, token: UserAccessToken) -> None:
        self._v17_only(
            "DELETE user",
            "the user revokes the consent in the digi.me app; to forget the user here, "
            "delete their token from your token store",
        )

    def sample_datasets(self, source_id: int) -> dict[str, Any]:
        self._v17_only("permission-access/sample/datasets", "sample data sets came with v1.7")


# --- helpers -----------------------------------------------------------------------

#: What ``encodeURIComponent`` leaves alone besides letters, digits and ``_.-~``.
_URI_COMPONENT_SAFE = "!*'()"


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query (the fragment stays last)."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def decode_flat_token(payload: Mapping[str, Any]) -> UserAccessToken:
    """Map the flat v1.5 payload ``{access_token, refresh_token, expires_on}`` (§B6).

    ``expires_on`` (Unix seconds) is the access token's; the refresh token's expiry
    is not given, so it is 0 (unknown).
    """
    access, refresh = payload.get("access_token"), payload.get("refresh_token")
    if not isinstance(access, str | int) or isinstance(access, bool) or access == "":
        raise ValidationError("the server token has no access_token value")
    if not isinstance(refresh, str | int) or isinstance(refresh, bool) or refresh == "":
        raise ValidationError("the server token has no refresh_token value")
    expiry = payload.get("expires_on")
    expires_on = int(expiry) if isinstance(expiry, int | float) and expiry is not True else 0
    return UserAccessToken(
        access_token=Token(str(access), expires_on),
        refresh_token=Token(str(refresh), 0),
    )
