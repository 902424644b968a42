"""The API v1.7 client: one method per call of the pull flow (docs/protocol.md).

Every request goes through ``send`` (the transport hook) with an ``authorize``
callback, so each attempt is signed afresh. Errors are mapped onto our typed
hierarchy (protocol.md#errors). The client keeps no user state: tokens are passed
in and returned; refreshing and persisting them is the flow's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode

import msgspec

from ..config import DigimeConfig
from ..errors import ValidationError
from ..jws import pkce_pair, random_alphanumeric
from ..keys import KeyHandle
from ..models import (
    Account,
    Category,
    ContractDetails,
    Country,
    FileList,
    FileMetadata,
    LibraryStatus,
    Platform,
    RevokeUrl,
    Session,
    Source,
    SourceQuery,
    SourcesPage,
    UserAccessToken,
)
from ..retry import Retry
from .discovery import Discovery
from .files import Files, Rows
from .manage import Management
from .protocol import (
    AuthorizeStart,
    ConsentDenied,
    FileDownload,
    Missing,
    callback_code,
    check_state,
)
from .signing import Signer, package_version, sdk_meta
from .tokens import Verifier, decode_session, decode_token, grant, token_claims
from .wire import Send, Wire


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class ClientV17:
    """Signs, sends and decodes the pull-flow calls of API v1.7.

    Calls that may be repeated (the file list, ``trigger``, accounts, JWKS, sample data
    sets, file metadata) are retried on transient faults with ``retry``; the
    single-use ``oauth/token`` calls and the consent calls are not. Every request
    carries the deadline of the :func:`~privateshare.retry.deadline_scope` it is made in.
    ``send`` is the transport (``fw.hooks.send``); ``key`` loads the contract key.
    """

    #: The protocol profile this client speaks (``[digime] api``).
    api = "v1.7"
    #: v1.7 has every call.
    missing: ClassVar[Mapping[str, Missing]] = {}

    def __init__(
        self,
        config: DigimeConfig,
        send: Send,
        key: Callable[[], KeyHandle],
        *,
        retry: Retry | None = None,
    ) -> None:
        self.config = config
        self.retry = retry or Retry()
        self.base_url = _slash(config.base_url)
        self.onboard_url = _slash(config.onboard_url)
        self.client_id = f"{config.application_id}_{config.contract_id}"
        self.sign = Signer(self.client_id, key)
        self.wire = Wire(
            self.base_url,
            send,
            self.sign,
            max_answer_bytes=config.max_answer_bytes,
            retry=self.retry,
        )
        self.verifier = Verifier(self.base_url, self.wire.get_json_unsigned)
        self.files = Files(self.wire)
        self.discovery = Discovery(self.wire)
        self.manage = Management(self.wire, config.redirect_uri)

    @property
    def agent(self) -> dict[str, Any]:
        """``agent`` of oauth/authorize and trigger: ``{sdk: {name, version, meta}}``."""
        return {"sdk": sdk_meta(self.config.agent_name, package_version())}

    def _retried(
        self, what: str, method: str, path: str, claims: Mapping[str, Any], **kw: Any
    ) -> Any:
        return self.retry.call(lambda: self.wire.json(method, path, claims, **kw), what)

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
        """``POST oauth/authorize``, then the consent URL for the user (protocol.md#consent)."""
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
        answer = self.wire.json("POST", "oauth/authorize", claims, json=body)
        payload = self.verifier.verified(answer, "oauth/authorize")
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
        service_id: int | None = None,
    ) -> AuthorizeStart:
        """Where the user consents. In v1.7 one-off and ongoing consent start alike.

        ``service_id`` (a source's ``id`` from discovery) opens the consent on that service.
        """
        return self.authorize(
            redirect_uri=redirect_uri, session_options=session_options, service_id=service_id
        )

    def parse_callback(self, params: Mapping[str, str], start: AuthorizeStart) -> str | None:
        """The authorization code from a consent callback; ``state`` is checked first."""
        check_state(params, start.state)
        if params.get("success") != "true":
            raise ConsentDenied(params.get("errorCode") or params.get("error_message") or "?")
        return callback_code(params, start)  # None: onboarding keeps the saved token

    # --- tokens ---------------------------------------------------------------

    def exchange_code(
        self,
        code: str,
        code_verifier: str,
        *,
        redirect_uri: str | None = None,
        on_answer: Callable[[str], None] | None = None,
    ) -> UserAccessToken:
        """``POST oauth/token`` with the authorization code (protocol.md#tokens).

        ``redirect_uri`` is accepted for symmetry with API v1.5 and not sent: v1.7
        has no ``redirect_uri`` claim here. ``on_answer`` as for :meth:`refresh`.
        """
        claims = {
            "code": code,
            "code_verifier": code_verifier,
            "grant_type": "authorization_code",
        }
        return grant(self.wire, self.verifier, decode_token, claims, {}, on_answer)

    def refresh(
        self, token: UserAccessToken, *, on_answer: Callable[[str], None] | None = None
    ) -> UserAccessToken:
        """``POST oauth/token`` with the refresh token (protocol.md#tokens).

        ``on_answer`` gets the server's answer (a signed JWT, secret) the moment it
        arrives, before its keys are fetched and it is verified, so the caller can
        keep it: the server has already retired the old refresh token. Verify a
        kept answer later with :meth:`token_from_answer`.
        """
        claims = {"grant_type": "refresh_token", "refresh_token": token.refresh_token.value}
        headers = {"content-type": "application/json"}
        return grant(self.wire, self.verifier, decode_token, claims, headers, on_answer)

    def token_from_answer(self, answer: str, *, deferred: bool = False) -> UserAccessToken:
        """Verify an answer of ``oauth/token`` and decode the token it carries.

        ``deferred``: the answer was kept when it arrived and is checked now, so an
        ``exp`` it may carry is not held against it. Raises
        :class:`~privateshare.jws.InvalidServerToken` when the answer itself is bad
        (forged, damaged, not a token); other errors mean its keys could not be had,
        and a later attempt may succeed.
        """
        return self.verifier.token(answer, decode_token, deferred=deferred)

    def _reference_code(
        self, claims: dict[str, Any], body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``POST oauth/token/reference``: the verified ``reference_code``, and the answer."""
        answer = self.wire.json("POST", "oauth/token/reference", claims, json=body)
        payload = self.verifier.verified(answer, "oauth/token/reference")
        code = payload.get("reference_code")
        if not code:
            raise ValidationError("oauth/token/reference: the server token has no reference_code")
        return str(code), answer

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
        code, answer = self._reference_code(claims, {"agent": self.agent})
        url = f"{self.onboard_url}user-reauth?{urlencode({'code': str(code)})}"
        return AuthorizeStart(url, state, verifier, decode_session(answer.get("session")))

    def onboard(
        self,
        token: UserAccessToken,
        *,
        service_id: int | None = None,
        redirect_uri: str | None = None,
        state: str | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> AuthorizeStart:
        """``POST oauth/token/reference``, then ``{onboard_url}onboard``: the user adds a
        source (``service_id``, from discovery) to an existing consent.

        The callback brings no code (``exchange`` is False): the saved token stays valid,
        and the answer's session reads the data once the user has onboarded.
        """
        state = state or random_alphanumeric(32)
        redirect = redirect_uri or self.config.redirect_uri
        claims = {
            "access_token": token.access_token.value,
            "redirect_uri": redirect,
            "state": state,
        }
        body: dict[str, Any] = {"agent": self.agent}
        if session_options is not None:
            body["actions"] = {"pull": dict(session_options)}
        code, answer = self._reference_code(claims, body)
        params: dict[str, str] = {"code": str(code), "sourceType": "pull"}
        if service_id:
            params["service"] = str(service_id)
        url = f"{self.onboard_url}onboard?{urlencode(params)}"
        session = decode_session(answer.get("session"))
        return AuthorizeStart(url, state, "", session, redirect_uri=redirect, exchange=False)

    def reauthorize_account(
        self,
        token: UserAccessToken,
        account_id: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> AuthorizeStart:
        """``POST oauth/token/reference`` and ``POST reference``: a URL to reconnect one account.

        For an account that reports ``ServiceAuthorizationError`` (a partial library). The
        callback brings ``success`` and ``state`` and no code (``exchange`` is False): the
        next pull reads the account again (protocol.md#consent).
        """
        state = state or random_alphanumeric(32)
        redirect = redirect_uri or self.config.redirect_uri
        claims = {
            "access_token": token.access_token.value,
            "redirect_uri": redirect,
            "state": state,
        }
        code, answer = self._reference_code(claims, {"agent": self.agent})
        reference = self.wire.json(
            "POST", "reference", {}, json={"type": "accountId", "value": account_id}
        )
        ref_id = reference.get("id") if isinstance(reference, dict) else None
        if not isinstance(ref_id, str) or not ref_id:
            raise ValidationError("POST reference: the answer has no id")
        query = urlencode({"code": str(code), "accountRef": ref_id})
        session = decode_session(answer.get("session"))
        return AuthorizeStart(
            f"{self.onboard_url}reauthorize?{query}",
            state,
            "",
            session,
            redirect_uri=redirect,
            exchange=False,
        )

    # --- data -----------------------------------------------------------------

    def trigger(
        self, token: UserAccessToken, session_options: Mapping[str, Any] | None = None
    ) -> Session:
        """``POST permission-access/trigger``: a new data session for a saved token.

        Retried on transient faults: a repeated trigger only starts another session.
        """
        body = {**dict(session_options or {}), "agent": self.agent}
        answer = self._retried(
            "permission-access/trigger",
            "POST",
            "permission-access/trigger",
            token_claims(token),
            json=body,
        )
        if not isinstance(answer, dict) or "session" not in answer:
            raise ValidationError("permission-access/trigger: the answer has no session")
        return decode_session(answer["session"], strict=True)

    def file_list(self, session_key: str, token: UserAccessToken | None) -> FileList:
        """``GET permission-access/query/{sessionKey}``, retried on transient faults.

        No token: a one-off contract reads its consented session with the signed JWT alone.
        """
        return self.files.list(session_key, token_claims(token))

    def scan_file_list(
        self, session_key: str, token: UserAccessToken | None, visitor: Callable[[], Rows]
    ) -> tuple[LibraryStatus, bool]:
        """:meth:`file_list` read as it arrives: its rows go to ``visitor()`` in batches."""
        return self.files.scan(session_key, token_claims(token), visitor)

    def open_file(self, session_key: str, name: str, token: UserAccessToken | None) -> FileDownload:
        """``GET .../{fileName}``: headers checked, body left to stream."""
        return self.files.open(session_key, name, token_claims(token))

    def file_metadata(self, session_key: str, name: str, token: UserAccessToken) -> FileMetadata:
        """``HEAD .../{fileName}``: the metadata only."""
        return self.files.metadata(session_key, name, token_claims(token))

    def accounts(self, token: UserAccessToken) -> list[Account]:
        """``GET permission-access/accounts``."""
        answer = self._retried(
            "permission-access/accounts", "GET", "permission-access/accounts", token_claims(token)
        )
        try:
            return msgspec.convert(answer, list[Account])
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"the accounts answer does not have the expected shape: {exc}"
            ) from None

    def delete_user(self, token: UserAccessToken) -> None:
        """``DELETE user``: the user's library and consent are removed at digi.me."""
        self.wire.json("DELETE", "user", token_claims(token))

    def sample_datasets(self, source_id: int) -> dict[str, Any]:
        """``GET permission-access/sample/datasets/{sourceId}``."""
        path = f"permission-access/sample/datasets/{source_id}"
        answer = self._retried("permission-access/sample/datasets", "GET", path, {})
        if not isinstance(answer, dict):
            raise ValidationError("the sample data sets answer is not a JSON object")
        return answer

    # --- discovery (application-level) ------------------------------------------

    def query_sources(self, query: SourceQuery | None = None) -> SourcesPage:
        """``POST discovery/sources``: one page of the sources a user can onboard."""
        return self.discovery.sources(query)

    def all_sources(self, query: SourceQuery | None = None) -> Iterator[Source]:
        """Every matching source, page after page."""
        return self.discovery.all_sources(query)

    def countries(self, ids: Sequence[int] = ()) -> list[Country]:
        """``POST discovery/countries``."""
        return self.discovery.listing("countries", ids)

    def platforms(self, ids: Sequence[int] = ()) -> list[Platform]:
        """``POST discovery/platforms``."""
        return self.discovery.listing("platforms", ids)

    def categories(self, ids: Sequence[int] = ()) -> list[Category]:
        """``POST discovery/categories``."""
        return self.discovery.listing("categories", ids)

    # --- account management -----------------------------------------------------

    def delete_account(self, token: UserAccessToken, account_id: str) -> None:
        """``DELETE permission-access/service`` for one account of the user."""
        self.manage.delete_account(token, account_id)

    def revoke_url(
        self, token: UserAccessToken, account_id: str, redirect_uri: str | None = None
    ) -> RevokeUrl:
        """``GET permission-access/revoke``: where the user withdraws one account's permission."""
        return self.manage.revoke_url(token, account_id, redirect_uri)

    def contract_details(self) -> ContractDetails:
        """``GET permission-access/contract``: what the configured contract allows."""
        return self.manage.contract()
