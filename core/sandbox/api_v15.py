"""The emulated digi.me Public API v1.5 (protocol.md, v1.5), beside v1.7 on the same server.

Paths under ``/v1.5/``. A session is established unauthenticated; consent is
given in the digi.me app or, one-off, on the guest page; a token prepares an
established session through ``trigger``; the session key alone reads the data;
files are in the hashed format (protocol.md#file-format) and ``accounts.json`` is an encrypted file
of the session. The two consent surfaces are served here too:

- ``GET /apps/quark/v1/direct-onboarding`` — the guest page (one-off), as the
  real service has it;
- ``GET /_sandbox/app/consent-access`` — a stand-in for the digi.me **app**: it
  takes exactly the query of a ``digime://consent-access`` link, so a browser or
  a headless test can consent where the real service needs the app.
"""

from __future__ import annotations

import base64
import json
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import errors, filelist, pages
from .encrypt import iter_encrypt
from .errors import ApiError
from .jwts import ServerSigner, require_str
from .messages import Request, Response, json_response
from .registry import Contract
from .routing import App, Route, RouteFactory, json_body, now_ms
from .state import Grant, Session

if TYPE_CHECKING:
    from .library import Library

V15_PREFIX = "/v1.5/"
GUEST_PAGE = "/apps/quark/v1/direct-onboarding"
GUEST_FORM = "/apps/quark/v1/consent"
APP_PREFIX = "/_sandbox/app/"
ACCOUNTS_FILE = "accounts.json"
#: The grant kind of a v1.5 pre-authorization code.
GRANT_KIND = "authorize-v1.5"


def _b64url_json(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _same_endpoint(url: str, allowed: str) -> bool:
    """Scheme, host, port and path agree; the query (the client's own state) may differ."""
    a, b = urlsplit(url), urlsplit(allowed)
    return (a.scheme, a.netloc.lower(), a.path or "/") == (
        b.scheme,
        b.netloc.lower(),
        b.path or "/",
    )


class ApiV15:
    """The v1.5 handlers; they share the :class:`App`'s registry, store and library."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.settings = app.settings
        self.registry = app.registry
        self.store = app.store
        self.base_url = app.origin + V15_PREFIX
        self.signer = ServerSigner(
            app.registry.server_key, app.registry.server_kid, self.base_url + "jwks/oauth"
        )

    @property
    def library(self) -> Library:
        """The library as now served (the :class:`App`'s)."""
        return self.app.library

    def routes(self, r: RouteFactory) -> list[Route]:
        """The routes, built with the app's route factory ``r(methods, path, name, kind, f)``."""
        import re

        api = re.escape(V15_PREFIX)
        seg = r"(?P<%s>[^/]+)"
        return [
            r("POST", api + "permission-access/session", "v1.5/session", "session", self.session),
            r("POST", api + "oauth/authorize", "v1.5/authorize", "authorize", self.authorize),
            r("POST", api + "oauth/token", "v1.5/token", "token", self.token),
            r("POST", api + "permission-access/trigger", "v1.5/trigger", "trigger", self.trigger),
            r(
                "GET",
                api + "permission-access/query/" + seg % "session",
                "v1.5/query",
                "list",
                self.file_list,
            ),
            r(
                "GET",
                api + "permission-access/query/" + seg % "session" + "/" + seg % "file",
                "v1.5/file",
                "file",
                self.file,
            ),
            r("GET", api + "jwks/oauth", "v1.5/jwks", "jwks", self.jwks),
            r(
                "GET",
                api + "discovery/services",
                "v1.5/discovery/services",
                "discovery",
                self.app.services,
            ),
            r("GET", re.escape(GUEST_PAGE), "v1.5/guest", "page", self.guest_page),
            r("POST", re.escape(GUEST_FORM), "v1.5/guest-consent", "page", self.consent_form),
            r("GET", re.escape(APP_PREFIX) + "consent-access", "v1.5/app", "page", self.app_page),
            r(
                "POST",
                re.escape(APP_PREFIX) + "consent",
                "v1.5/app-consent",
                "page",
                self.consent_form,
            ),
        ]

    def status_headers(self, request: Request, response: Response) -> None:
        """``x-digi-sdk-status`` on v1.5 answers, when set (protocol.md#errors)."""
        if self.settings.sdk_status and request.path.startswith(V15_PREFIX):
            response.headers.append(("x-digi-sdk-status", self.settings.sdk_status))
            if self.settings.sdk_status_message:
                response.headers.append(
                    ("x-digi-sdk-status-message", self.settings.sdk_status_message)
                )

    # -- session (protocol.md#sessions) ------------------------------------------------------------
    def session(self, request: Request, params: dict[str, str]) -> Response:
        """``POST permission-access/session``: no Authorization; app, contract and SDK agent."""

        body = json_body(request)
        app_id, contract_id = body.get("appId"), body.get("contractId")
        for name, value in (("appId", app_id), ("contractId", contract_id)):
            if not isinstance(value, str) or not value:
                raise errors.validation(f"{name} is required and must be a string")
        agent = body.get("sdkAgent")
        if (
            not isinstance(agent, dict)
            or not isinstance(agent.get("name"), str)
            or not agent["name"]
            or not isinstance(agent.get("version"), str)
            or not agent["version"]
            or not isinstance(agent.get("meta", {}), dict)
        ):
            raise ApiError(
                400,
                "SDKInvalid",
                "The SDK is invalid: sdkAgent must be {name: string, version: string, meta?: {}}",
            )
        if self.settings.sdk_status == "unsupported":
            raise ApiError(403, "SDKVersionInvalid", "This SDK version is no longer supported.")
        for name in ("scope", "accept"):
            if body.get(name) is not None and not isinstance(body[name], dict):
                raise errors.validation(f"{name} must be an object")
        compression = (body.get("accept") or {}).get("compression")
        if compression is not None and not isinstance(compression, str):
            raise errors.validation("accept.compression must be a string")
        if app_id != self.registry.application_id:
            raise errors.not_found(
                "InvalidConsentAccessApplication", f"The application ({app_id}) is invalid"
            )
        client_id = f"{app_id}_{contract_id}"
        if client_id not in self.registry.contracts:
            raise errors.not_found("InvalidContractId", f"The contract ({contract_id}) is invalid")
        session = self.store.create_session(client_id, now_ms(), api="v1.5")
        return json_response(
            201,
            {
                "expiry": session.expiry_ms,
                "sessionKey": session.key,
                "sessionExchangeToken": session.exchange_token,
            },
        )

    # -- OAuth (protocol.md#consent, protocol.md#tokens) -------------------------------------------
    def authorize(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/authorize``: a pre-authorization code for the app link; no session."""
        contract, claims = self.app.auth(request)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        redirect_uri = self.app._redirect_uri(contract, claims)
        challenge = self.app._challenge(claims, required=False)
        if claims.get("response_type", "code") != "code":
            raise errors.validation("response_type must be 'code'")
        state = self.app._state(claims)
        grant = self.store.create_grant(
            GRANT_KIND,
            self.registry.client_id(contract),
            redirect_uri,
            state,
            challenge,
            "",
            None,
            now_ms(),
        )
        return json_response(
            201, {"token": self.signer.sign({"preauthorization_code": grant.code})}
        )

    def token(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/token``: both grants name ``redirect_uri``; the payload is flat."""
        contract, claims = self.app.auth(request)
        grant_type = require_str(claims, "grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise errors.validation(f"unsupported grant_type {grant_type!r}")
        redirect_uri = self.app._redirect_uri(contract, claims)
        client_id = self.registry.client_id(contract)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        if grant_type == "authorization_code":
            verifier = claims.get("code_verifier")
            if verifier is not None and (not isinstance(verifier, str) or not verifier):
                raise errors.validation("the JWT claim 'code_verifier' must be a string")
            pair = self.store.exchange_code(
                require_str(claims, "code"),
                verifier,
                client_id,
                now_ms(),
                redirect_uri=redirect_uri,
            )
        else:
            pair = self.store.rotate(require_str(claims, "refresh_token"), client_id, now_ms())
        payload = {
            "access_token": pair.access,
            "refresh_token": pair.refresh,
            "expires_on": pair.access_expires_on,
        }
        return json_response(201, {"token": self.signer.sign(payload)})

    # -- data (protocol.md#sessions, protocol.md#files) --------------------------------------------
    def trigger(self, request: Request, params: dict[str, str]) -> Response:
        """``POST permission-access/trigger``: the token's user takes an established session."""
        contract, claims = self.app.auth(request)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        self.app._redirect_uri(contract, claims)
        user = self.app.user_for(contract, claims)
        session = self.store.session_v15(require_str(claims, "session_key"), now_ms())
        if session.client_id != self.registry.client_id(contract):
            raise errors.not_found("InvalidSession", "The session is invalid or has expired")
        self.store.bind_session(session, user.user_id)
        self.store.count("counters", "triggers")
        return Response(202)

    def file_list(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/query/{sessionKey}``: the session key is the credential."""
        session = self.store.session_v15(params["session"], now_ms())
        body = self.app.list_body(session)
        return json_response(200, filelist.v15_body(body))

    def file(self, request: Request, params: dict[str, str]) -> Response:
        """``GET .../{fileName}``: hashed (protocol.md#file-format)."""
        session = self.store.session_v15(params["session"], now_ms())
        contract = self.registry.contracts[session.client_id]
        name = params["file"]
        if name == ACCOUNTS_FILE:
            return self._accounts_file(session, contract)
        version = self.app._visible(session.stage, session.account_filter).get(name)
        if version is None:
            raise errors.not_found(
                "FileNotFound", f"The file ({name}) was not found in this session"
            )
        x_metadata = dict(version.x_metadata)
        metadata = x_metadata.get("metadata")
        if isinstance(metadata, dict) and "schema" in metadata:  # v1.5 had no schema
            x_metadata["metadata"] = {k: v for k, v in metadata.items() if k != "schema"}
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("x-metadata", _b64url_json(x_metadata)),
            ("Last-Modified", formatdate(version.updated_date / 1000, usegmt=True)),
        ]
        self.store.count("counters", "file_downloads")
        body = version.iter_encrypted(contract.public_key, hashed=True)
        return Response(
            200, headers, body, length=version.encrypted_size(hashed=True), corrupt_from=272
        )

    def _accounts_file(self, session: Session, contract: Contract) -> Response:
        """The session's accounts as an encrypted JSON file; there once the user consented."""
        if not session.consented:
            raise errors.not_found(
                "FileNotFound", f"The file ({ACCOUNTS_FILE}) was not found in this session"
            )
        accounts = self.app.account_list()
        data = json.dumps(accounts, separators=(",", ":")).encode()
        x_metadata = {
            "metadata": {
                "objectCount": len(accounts),
                "objectType": "account",
                "serviceGroup": "digi.me",
                "serviceName": "digi.me",
            }
        }
        body = b"".join(iter_encrypt(data, contract.public_key, hashed=True))
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("x-metadata", _b64url_json(x_metadata)),
        ]
        return Response(200, headers, body, corrupt_from=272)

    def jwks(self, request: Request, params: dict[str, str]) -> Response:
        """``GET jwks/oauth``: the same key as v1.7's (and the same ``hold_jwks`` count)."""
        return self.app.jwks(request, params)

    # -- consent: the guest page and the stand-in for the digi.me app (protocol.md#consent) --------
    def _callback_allowed(self, callback: str, contract: Contract | None) -> bool:
        contracts = [contract] if contract else list(self.registry.contracts.values())
        return any(_same_endpoint(callback, uri) for c in contracts for uri in c.redirect_uris)

    def guest_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /apps/quark/v1/direct-onboarding?sessionExchangeToken=…&callbackUrl=…``."""
        callback = request.param("callbackUrl") or ""
        try:
            session: Session | None = self.store.session_v15(
                request.param("sessionExchangeToken") or "", now_ms(), by_exchange_token=True
            )
        except ApiError:
            session = None
        return self._consent(
            "direct-onboarding", GUEST_FORM, session, None, callback, bool(session is None)
        )

    def app_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /_sandbox/app/consent-access?…``: what the app does with a consent link."""
        callback = request.param("callbackUrl") or ""
        invalid = False
        try:
            session: Session | None = self.store.session_v15(
                request.param("sessionKey") or "", now_ms()
            )
        except ApiError:
            session, invalid = None, True
        if request.param("appId") != self.registry.application_id:
            invalid = True
        grant: Grant | None = None
        code = request.param("preauthorizationCode")
        if code is not None:
            try:
                grant = self.store.grant(code, now_ms())
            except ApiError:
                invalid = True
            if grant is not None and (
                grant.kind != GRANT_KIND
                or session is None
                or grant.client_id != session.client_id
                or grant.redirect_uri != callback
            ):
                invalid = True
        return self._consent(
            "consent-access", APP_PREFIX + "consent", session, grant, callback, invalid
        )

    def _consent(
        self,
        page: str,
        action: str,
        session: Session | None,
        grant: Grant | None,
        callback: str,
        invalid: bool,
    ) -> Response:
        contract = self.registry.contracts.get(session.client_id) if session else None
        if not callback or not self._callback_allowed(callback, contract):
            return self.app._html(
                400,
                pages.message_page(
                    "Callback not allowed",
                    "The callbackUrl is missing or not on the contract's redirect allow-list.",
                ),
            )
        if invalid or session is None or session.consented:
            # What the app does with a link it cannot use: it calls back with an error.
            return self._callback(callback, "ERROR", grant)
        if self.settings.auto_consent:
            return self._decide(session.key, grant.code if grant else None, callback, "share")
        fields = {"sessionKey": session.key, "callbackUrl": callback}
        if grant is not None:
            fields["preauthorizationCode"] = grant.code
        assert contract is not None
        html = pages.consent_page(
            page=page,
            code="",
            action=action,
            application_id=self.registry.application_id,
            contract_id=contract.contract_id,
            contract_kind="ongoing" if grant is not None else "oneoff",
            accounts=self.library.accounts,
            fields=fields,
        )
        return self.app._html(200, html)

    def consent_form(self, request: Request, params: dict[str, str]) -> Response:
        """``POST`` of the Share or Cancel button on either page."""
        form = parse_qs(request.body.decode("utf-8", "replace"))

        def field(name: str) -> str | None:
            return next(iter(form.get(name) or ()), None)

        decision, key, callback = field("decision"), field("sessionKey"), field("callbackUrl")
        if decision not in ("share", "cancel") or not key or not callback:
            return self.app._html(400, pages.message_page("Bad form", "Choose Share or Cancel."))
        try:
            session = self.store.session_v15(key, now_ms())
        except ApiError:
            session = None
        contract = self.registry.contracts.get(session.client_id) if session else None
        if not self._callback_allowed(callback, contract):
            return self.app._html(
                400, pages.message_page("Callback not allowed", "This callbackUrl is not allowed.")
            )
        return self._decide(key, field("preauthorizationCode"), callback, decision)

    def _decide(self, key: str, code: str | None, callback: str, decision: str) -> Response:
        now = now_ms()
        if decision == "cancel":
            grant = None
            if code is not None:
                try:
                    grant = self.store.cancel(code, now)
                except ApiError:
                    grant = None
            return self._callback(callback, "CANCEL", grant)
        try:
            _session, grant, auth_code = self.store.consent_v15(key, code, now)
        except ApiError:
            return self._callback(callback, "ERROR", None)
        return self._callback(callback, "SUCCESS", grant, auth_code)

    def _callback(
        self, callback: str, result: str, grant: Grant | None, code: str | None = None
    ) -> Response:
        """Back to the callback URL with ``result`` (+ ``code`` and ``state`` when ongoing)."""
        params: dict[str, str | None] = {"result": result, "code": code}
        if grant is not None:
            params["state"] = grant.state
        return self.app._redirect(pages.callback_url(callback, params))
