"""The API v1.5 client: the original Private Share generation (docs/protocol.md).

The same interface as :class:`~privateshare.client.v17.ClientV17`
(:class:`~privateshare.client.Client`), so the flow runs unchanged on either profile
(``[digime] api``), built from the same parts. What differs:

- a session is established explicitly and unauthenticated, and consent is given in
  the digi.me app (a ``digime://consent-access`` link) or, one-off, on the guest page
  in a browser;
- the callback says ``result=SUCCESS|ERROR|CANCEL``;
- token calls carry ``redirect_uri`` and answer flat payloads;
- a saved token prepares an established session through ``trigger`` with ``session_key``;
- the file list and files are read with the session key alone, and accounts are the
  encrypted file ``accounts.json`` in the session;
- files carry a SHA-512 prefix: the decryption plugin follows ``[digime] api``.

Calls v1.5 does not have are not methods here; :data:`MISSING` says what to do instead,
and :func:`privateshare.client.need` turns that into :class:`UnsupportedCall`. A v1.5-only
change belongs in this module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import msgspec

from ..config import DigimeConfig
from ..errors import ValidationError
from ..jws import pkce_pair, random_alphanumeric
from ..keys import KeyHandle
from ..models import (
    Account,
    FileList,
    FileMetadata,
    LibraryStatus,
    Session,
    UserAccessToken,
)
from ..retry import Retry
from ..transport import HttpRequest, HttpResponse
from .files import Files, Rows
from .protocol import (
    AuthorizeStart,
    ConsentDenied,
    FileDownload,
    Missing,
    UnsupportedCall,
    callback_code,
    check_state,
)
from .signing import Signer, package_version, sdk_meta
from .tokens import Verifier, decode_flat_token, grant, token_claims
from .wire import Send, Wire

#: Status headers go to the logger documented for them (docs/api-profiles.md).
log = logging.getLogger("privateshare.api")

DEFAULT_BASE_URL = "https://api.digi.me/v1.5"
GUEST_PATH = "/apps/quark/v1/direct-onboarding"
APP_CONSENT_LINK = "digime://consent-access"
ACCOUNTS_FILE = "accounts.json"
#: accounts.json is a small JSON file; anything larger is not what we asked for.
MAX_ACCOUNTS_FILE = 16 << 20
_DEFAULTS = DigimeConfig(application_id="", contract_id="")

#: The decryption hook: body stream, metadata, key, file name -> plaintext chunks.
Decrypt = Callable[[BinaryIO, FileMetadata, KeyHandle, str], Iterator[bytes | memoryview]]

#: The calls of API v1.7 that v1.5 lacks, with what to do instead.
MISSING: Mapping[str, Missing] = {
    "delete_user": Missing(
        "DELETE user",
        "the user revokes the consent in the digi.me app; to forget the user here, "
        "delete their token from your token store",
    ),
    "reauthorize": Missing(
        "oauth/token/reference (reauthorization)",
        "when a token can no longer be refreshed, the user consents again "
        "(`privateshare authorize`)",
    ),
    "file_metadata": Missing(
        "HEAD permission-access/query/{sessionKey}/{fileName}",
        "open_file() returns the metadata with the file",
    ),
    "sample_datasets": Missing(
        "permission-access/sample/datasets", "sample data sets came with v1.7"
    ),
    **{
        call: Missing(
            "POST discovery/sources|countries|platforms|categories (discovery)",
            "the paged discovery API came with v1.7; the catalogue is the same service's, so "
            'list it with a config that has [digime] api = "v1.7"',
        )
        for call in ("query_sources", "all_sources", "countries", "platforms", "categories")
    },
    "reauthorize_account": Missing(
        "oauth/token/reference (reauthorizing an account)",
        "on API v1.5 the user reconnects the account in the digi.me app",
    ),
    "onboard": Missing(
        "oauth/token/reference (onboarding another service)",
        "the user adds services in the digi.me app",
    ),
    "delete_account": Missing(
        "DELETE permission-access/service (delete one account)",
        "the user removes the account in the digi.me app",
    ),
    "revoke_url": Missing(
        "GET permission-access/revoke (revoke one account's permission)",
        "the user revokes the account's permission in the digi.me app",
    ),
    "contract_details": Missing(
        "GET permission-access/contract (contract details)",
        "the contract's terms are in the digi.me developer console",
    ),
}


@dataclass(frozen=True)
class EstablishedSession:
    """A v1.5 session: its key reads the data; the exchange token opens the guest page."""

    session: Session
    exchange_token: str

    def __repr__(self) -> str:
        return f"EstablishedSession(session={self.session}, exchange_token=<redacted>)"


class StatusWatch:
    """Wraps ``send`` and reports ``x-digi-sdk-status`` once per distinct message."""

    def __init__(self, send: Send, agent_name: str) -> None:
        self._send = send
        self._agent = f"{agent_name} {package_version()}"
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self._send(request)
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


class ClientV15:
    """Signs, sends and decodes the Private Share calls of API v1.5.

    ``send`` is the transport, ``key`` loads the contract key, and ``decrypt`` (the
    decryption hook) reads the accounts file of a session.
    """

    api = "v1.5"
    missing: ClassVar[Mapping[str, Missing]] = MISSING

    def __init__(
        self,
        config: DigimeConfig,
        send: Send,
        key: Callable[[], KeyHandle],
        *,
        decrypt: Decrypt,
        retry: Retry | None = None,
    ) -> None:
        self.config = config
        self.retry = retry or Retry()
        self._key = key
        self._decrypt = decrypt
        base = config.base_url
        if base == _DEFAULTS.base_url:  # the v1.7 default was left in place
            base = DEFAULT_BASE_URL
        #: ``https://api.digi.me/v1.5``: paths are joined with one ``/`` (a trailing
        #: slash is dropped instead of producing ``//``).
        self.api_base = base.rstrip("/")
        self.base_url = self.api_base + "/"
        parts = urlsplit(self.api_base)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.client_id = f"{config.application_id}_{config.contract_id}"
        self.wire = Wire(
            self.base_url,
            StatusWatch(send, config.agent_name),
            Signer(self.client_id, key),
            max_answer_bytes=config.max_answer_bytes,
            retry=self.retry,
        )
        self.verifier = Verifier(self.base_url, self.wire.get_json_unsigned)
        self.files = Files(self.wire)
        #: An HTTP stand-in for the digi.me app that opens ``consent-access`` links (the
        #: sandbox has one). None against the real service: the link needs the app.
        self.app_opener: str | None = None
        if config.onboard_url != _DEFAULTS.onboard_url:
            self.app_opener = config.onboard_url.rstrip("/") + "/"

    @property
    def sdk_agent(self) -> dict[str, Any]:
        """``sdkAgent`` (flat, unlike v1.7's ``agent.sdk``)."""
        return sdk_meta(self.config.agent_name, package_version())

    # --- establish a session -----------------------------------------------------

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
        answer = self.wire.json("POST", "permission-access/session", None, json=body)
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

    # --- consent --------------------------------------------------------------------

    def app_link(self, params: Mapping[str, str], session: Session) -> str:
        """The ``digime://consent-access`` link: option parameters, then session and app."""
        query = {
            **params,
            "sessionKey": session.key,
            "appId": self.config.application_id,
            "sdkVersion": package_version(),
        }
        return f"{APP_CONSENT_LINK}?{urlencode(query)}"

    def guest_url(self, established: EstablishedSession, callback_url: str) -> str:
        """The guest consent page in a browser, one-off."""
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
        service_id: int | None = None,
    ) -> AuthorizeStart:
        """Establish a session, then the consent link for it.

        One-off: ``url`` is the guest page (the digi.me app link is ``app_url``); our
        ``state`` rides in the callback URL's query, which the app keeps. Ongoing: a
        pre-authorization code first; ``url`` is the app link, opened through
        ``[digime] onboard_url`` when that names a stand-in for the app (the sandbox).
        """
        if service_id is not None:
            raise UnsupportedCall(
                "choosing the service to onboard (the consent URL's service)",
                "the user picks the service in the digi.me app",
            )
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
        """Ongoing consent: a session, ``POST oauth/authorize``, then the app link."""
        if access_token is not None:
            raise UnsupportedCall(
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
        answer = self.wire.json("POST", "oauth/authorize", claims)
        payload = self.verifier.verified(answer, "oauth/authorize")
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
        """The code from a consent callback (None for one-off consent); ``state`` first."""
        check_state(params, start.state)
        result = params.get("result")
        if result in ("CANCEL", "ERROR"):
            raise ConsentDenied(result)
        if result != "SUCCESS":
            raise ValidationError(
                "the consent callback has no result=SUCCESS|ERROR|CANCEL; "
                "is [digime] api right for this service?"
            )
        return callback_code(params, start)

    # --- tokens ------------------------------------------------------------------------

    def exchange_code(
        self,
        code: str,
        code_verifier: str,
        *,
        redirect_uri: str | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> UserAccessToken:
        """``POST oauth/token`` with the code, ``redirect_uri`` and the verifier if any."""
        claims = {
            "code": code,
            "code_verifier": code_verifier or None,  # optional in v1.5
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri or self.config.redirect_uri,
        }
        return grant(self.wire, self.verifier, decode_flat_token, claims, {}, on_answer)

    def refresh(
        self, token: UserAccessToken, *, on_answer: Callable[[str], None] | None = None
    ) -> UserAccessToken:
        """``POST oauth/token`` with the refresh token and ``redirect_uri``."""
        claims = {
            "grant_type": "refresh_token",
            "redirect_uri": self.config.redirect_uri,
            "refresh_token": token.refresh_token.value,
        }
        headers = {"content-type": "application/json"}
        return grant(self.wire, self.verifier, decode_flat_token, claims, headers, on_answer)

    def token_from_answer(self, answer: str, *, deferred: bool = False) -> UserAccessToken:
        """Verify a kept answer of ``oauth/token`` (as in v1.7) and decode its flat payload."""
        return self.verifier.token(answer, decode_flat_token, deferred=deferred)

    # --- data ---------------------------------------------------------------------------

    def prepare_session(self, session_key: str, token: UserAccessToken) -> None:
        """``POST permission-access/trigger``: bind an established session to the user."""
        claims = {
            **token_claims(token),
            "redirect_uri": self.config.redirect_uri,
            "session_key": session_key,
        }
        self.wire.json(
            "POST",
            "permission-access/trigger",
            claims,
            headers={"content-type": "application/json"},
        )

    def trigger(
        self, token: UserAccessToken, session_options: Mapping[str, Any] | None = None
    ) -> Session:
        """A data session for a saved token: establish one, then prepare it with the token.

        The flow's token keeper refreshes on a 401 and calls this again once. Both
        steps are retried together on transient faults: a repeat only makes another session.
        """

        def attempt() -> Session:
            established = self._session_for(session_options)
            self.prepare_session(established.session.key, token)
            return established.session

        return self.retry.call(attempt, "permission-access/session and trigger")

    def file_list(self, session_key: str, token: UserAccessToken | None = None) -> FileList:
        """``GET permission-access/query/{sessionKey}``, with the session key only."""
        return self.files.list(session_key, None)

    def scan_file_list(
        self, session_key: str, token: UserAccessToken | None, visitor: Callable[[], Rows]
    ) -> tuple[LibraryStatus, bool]:
        """:meth:`file_list` read as it arrives: its rows go to ``visitor()`` in batches."""
        return self.files.scan(session_key, None, visitor)

    def open_file(
        self, session_key: str, name: str, token: UserAccessToken | None = None
    ) -> FileDownload:
        """``GET .../{fileName}`` with the session key only; the body is left to stream."""
        return self.files.open(session_key, name, None)

    def session_accounts(self, session_key: str) -> list[Account]:
        """The accounts of a session: the encrypted file ``accounts.json``."""
        download = self.open_file(session_key, ACCOUNTS_FILE)
        data = bytearray()
        try:
            chunks = self._decrypt(
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


# --- helpers -----------------------------------------------------------------------

#: What ``encodeURIComponent`` leaves alone besides letters, digits and ``_.-~``.
_URI_COMPONENT_SAFE = "!*'()"


def _with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query (the fragment stays last)."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
