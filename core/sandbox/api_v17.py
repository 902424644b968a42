"""The emulated digi.me Public API v1.7 (protocol.md, v1.7): routes and handlers.

Handlers take a :class:`Request` and return a :class:`Response`, raising
:class:`ApiError` for every documented failure. No HTTP plumbing lives here, so
the whole v1.7 surface reads top to bottom in one file; what both versions share
(authentication, the served library, the router) is in :mod:`.routing`, and the
v1.5 surface in :mod:`.api_v15`.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from . import contracts, discovery, errors, pages
from .errors import ApiError
from .jwts import require_str
from .library import Library
from .messages import Request, Response, json_response
from .registry import Contract
from .routing import (
    API_PREFIX,
    ONBOARD_PREFIX,
    App,
    Route,
    RouteFactory,
    json_body,
    now_ms,
)
from .state import User


def _account_filter(options: Any) -> frozenset[str] | None:
    """``sourceFetchFilter.account.id`` from pull session options, if any (protocol.md#sessions)."""
    if not isinstance(options, dict):
        return None
    ids = options.get("sourceFetchFilter", {})
    ids = ids.get("account", {}) if isinstance(ids, dict) else {}
    ids = ids.get("id") if isinstance(ids, dict) else None
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids) and ids:
        return frozenset(ids)
    return None


class ApiV17:
    """The v1.7 handlers and the web client's pages; they share the :class:`App`'s state."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.settings = app.settings
        self.registry = app.registry
        self.store = app.store
        self.signer = app.signer
        self.base_url = app.base_url
        self.onboard_url = app.onboard_url
        self._certificates: dict[str, dict[str, Any]] = {}

    @property
    def library(self) -> Library:
        """The library as now served (the :class:`App`'s)."""
        return self.app.library

    def status_headers(self, request: Request, response: Response) -> None:
        """v1.7 answers carry no SDK status headers."""

    def routes(self, r: RouteFactory) -> list[Route]:
        """The v1.7 API and web-client routes, built with the app's route factory."""

        api = re.escape(API_PREFIX)
        onboard = re.escape(ONBOARD_PREFIX)
        seg = r"(?P<%s>[^/]+)"
        return [
            r("POST", api + "oauth/authorize", "authorize", "authorize", self.authorize),
            r("POST", api + "oauth/token", "token", "token", self.token),
            r(
                "POST",
                api + "oauth/token/reference",
                "token/reference",
                "reference",
                self.reference,
            ),
            r("POST", api + "reference", "reference", "reference", self.storage_reference),
            r("POST", api + "permission-access/trigger", "trigger", "trigger", self.trigger),
            r(
                "GET",
                api + "permission-access/query/" + seg % "session",
                "query",
                "list",
                self.file_list,
            ),
            r(
                "GET HEAD",
                api + "permission-access/query/" + seg % "session" + "/" + seg % "file",
                "file",
                "file",
                self.file,
            ),
            r("GET", api + "permission-access/accounts", "accounts", "accounts", self.accounts),
            r("DELETE", api + "user", "user", "user", self.delete_user),
            r(
                "GET",
                api + "permission-access/sample/datasets/" + seg % "source",
                "sample",
                "sample",
                self.sample_datasets,
            ),
            r("GET", api + "jwks/oauth", "jwks", "jwks", self.app.jwks),
            *[
                r("POST", api + f"discovery/{kind}", f"discovery/{kind}", "discovery", handler)
                for kind, handler in (
                    ("sources", self.discovery_sources),
                    ("countries", self.discovery_list),
                    ("platforms", self.discovery_list),
                    ("categories", self.discovery_list),
                )
            ],
            r(
                "GET",
                api + "discovery/services",
                "discovery/services",
                "discovery",
                self.app.services,
            ),
            r(
                "DELETE",
                api + "permission-access/service/h:accountId",
                "service",
                "service",
                self.delete_account,
            ),
            r(
                "GET",
                api + "permission-access/revoke/h:accountId",
                "revoke",
                "revoke",
                self.revoke_url,
            ),
            r("GET", api + "permission-access/contract", "contract", "contract", self.contract),
            r(
                "GET",
                api + "permission-access/contract/" + seg % "contract" + "/" + seg % "app",
                "contract",
                "contract",
                self.contract_by_ids,
            ),
            r(
                "GET",
                onboard + "(?P<page>authorize|onboard|user-reauth|reauthorize)",
                "page",
                "page",
                self.page,
            ),
            r("GET", onboard + "revoke", "revoke-page", "page", self.revoke_page),
            r("POST", onboard + "consent", "consent", "page", self.consent),
        ]

    # -- OAuth ---------------------------------------------------------------------
    def authorize(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/authorize`` (protocol.md#consent): a pre-authorization code."""
        contract, claims = self.app.auth(request)
        redirect_uri = self.app._redirect_uri(contract, claims)
        challenge = self.app._challenge(claims, required=True)
        if claims.get("response_type", "code") != "code":
            raise errors.validation("response_type must be 'code'")
        state = self.app._state(claims)
        body = json_body(request)
        user_id = None
        if claims.get("access_token") is not None:
            if not contract.ongoing:
                raise errors.insufficient_scope()
            user_id = self.app.user_for(contract, claims).user_id
        actions = body.get("actions")
        pull = actions.get("pull") if isinstance(actions, dict) else None
        now = now_ms()
        client_id = self.registry.client_id(contract)
        session = self.store.create_session(client_id, now, account_filter=_account_filter(pull))
        grant = self.store.create_grant(
            "authorize", client_id, redirect_uri, state, challenge, session.key, user_id, now
        )
        token = self.signer.sign({"preauthorization_code": grant.code})
        return json_response(201, {"token": token, "session": session.wire()})

    def token(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/token``: authorization_code (with PKCE) or refresh_token grants."""
        contract, claims = self.app.auth(request)
        grant_type = require_str(claims, "grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise errors.validation(f"unsupported grant_type {grant_type!r}")
        client_id = self.registry.client_id(contract)
        if grant_type == "authorization_code":
            pair = self.store.exchange_code(
                require_str(claims, "code"),
                require_str(claims, "code_verifier"),
                client_id,
                now_ms(),
                oneoff=not contract.ongoing,
            )
        elif not contract.ongoing:
            raise errors.insufficient_scope()
        else:
            pair = self.store.rotate(require_str(claims, "refresh_token"), client_id, now_ms())
        payload = {
            "access_token": {"value": pair.access, "expires_on": pair.access_expires_on},
            "refresh_token": {"value": pair.refresh, "expires_on": pair.refresh_expires_on},
            "sub": pair.user.user_id,
            "consentid": pair.user.consent_id,
            "identifier": {"id": pair.user.identifier},
            "token_type": "Bearer",
        }
        return json_response(201, {"token": self.signer.sign(payload)})

    def reference(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/token/reference`` (protocol.md#tokens): a code for user-reauth, onboard or
        reauthorize.

        An expired access token is accepted here (reauthorization is what one
        does once tokens have expired); an unknown one is not.
        """
        contract, claims = self.app.auth(request)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        client_id = self.registry.client_id(contract)
        access = require_str(claims, "access_token")
        record = self.store.access.get(access)
        if (
            record is None
            or record.client_id != client_id
            or record.user_id not in self.store.users
        ):
            raise errors.invalid_token("access_token")
        redirect_uri = self.app._redirect_uri(contract, claims)
        challenge = self.app._challenge(claims, required=False)
        state = self.app._state(claims)
        body = json_body(request)
        actions = body.get("actions")
        pull = actions.get("pull") if isinstance(actions, dict) else None
        now = now_ms()
        session = self.store.create_session(client_id, now, account_filter=_account_filter(pull))
        grant = self.store.create_grant(
            "reference", client_id, redirect_uri, state, challenge, session.key, record.user_id, now
        )
        token = self.signer.sign(
            {
                "reference_code": grant.code,
                "token_type": "Bearer",
                "expires_on": grant.expires_ms // 1000,
            }
        )
        return json_response(201, {"token": token, "session": session.wire()})

    def storage_reference(self, request: Request, params: dict[str, str]) -> Response:
        """``POST reference``: store ``{type, value}`` (an account id) under a new id."""
        self.app.auth(request)
        body = json_body(request)
        ref_type, value = body.get("type"), body.get("value")
        if not isinstance(ref_type, str) or not isinstance(value, str) or not value:
            raise errors.validation("the body must be {type: string, value: string}")
        return json_response(201, {"id": self.store.add_reference(ref_type, value)})

    # -- data ------------------------------------------------------------------------
    def trigger(self, request: Request, params: dict[str, str]) -> Response:
        """``POST permission-access/trigger`` (protocol.md#sessions): a new session for a token."""
        contract, claims = self.app.auth(request)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        user = self.app.user_for(contract, claims)
        body = json_body(request)
        self.store.count("counters", "triggers")
        session = self.store.create_session(
            self.registry.client_id(contract),
            now_ms(),
            user_id=user.user_id,
            consented=True,
            account_filter=_account_filter(body),
        )
        return json_response(202, {"session": session.wire()})

    def _session_user(self, request: Request, key: str) -> tuple[Contract, Any, User | None]:
        """Authenticate a session read; return the contract, session and its user.

        Ongoing contracts read with their access token. A one-off contract reads
        with its one-off token (bound to this session), or with no token at all:
        its signed JWT plus the consented session key suffice.
        """
        contract, claims = self.app.auth(request)
        now = now_ms()
        session = self.store.session(key, now)
        client_id = self.registry.client_id(contract)
        if session.client_id != client_id or session.api != "v1.7":
            raise errors.not_found("InvalidSession", "The session is invalid or has expired")
        if contract.ongoing:
            user = self.app.user_for(contract, claims)
            if session.user_id is not None and session.user_id != user.user_id:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return contract, session, user
        if claims.get("access_token") is not None:
            user, token = self.app.token_for(contract, claims)
            if token.session_key != key:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return contract, session, user
        reader = self.store.users.get(session.user_id) if session.user_id else None
        return contract, session, reader

    def file_list(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/query/{sessionKey}`` (protocol.md#files)."""
        _contract, session, _user = self._session_user(request, params["session"])
        return json_response(200, self.app.list_body(session))

    def file(self, request: Request, params: dict[str, str]) -> Response:
        """``GET``/``HEAD permission-access/query/{sessionKey}/{fileName}`` (protocol.md#files)."""
        contract, session, _user = self._session_user(request, params["session"])
        name = params["file"]
        version = self.app._visible(session.stage, session.account_filter).get(name)
        if version is None:
            raise errors.not_found(
                "FileNotFound", f"The file ({name}) was not found in this session"
            )
        length = version.encrypted_size()
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("x-metadata", version.x_metadata_header()),
            ("Last-Modified", formatdate(version.updated_date / 1000, usegmt=True)),
        ]
        if request.method == "HEAD":
            return Response(200, headers, b"", length=length)
        self.store.count("counters", "file_downloads")
        body = version.iter_encrypted(contract.public_key)
        return Response(200, headers, body, length=length, corrupt_from=272)

    def accounts(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/accounts`` (protocol.md#accounts): a bare JSON array.

        A one-off contract may call it without a token; the sandbox answers it
        from the signed JWT alone (there is one library for everyone here).
        """
        contract, claims = self.app.auth(request)
        if contract.ongoing or claims.get("access_token") is not None:
            self.app.user_for(contract, claims)
        return json_response(200, self.app.account_list())

    def delete_user(self, request: Request, params: dict[str, str]) -> Response:
        """``DELETE user`` (protocol.md#other-calls): the user and their tokens and sessions go."""
        contract, claims = self.app.auth(request)
        user = self.app.user_for(contract, claims)
        self.store.delete_user(user.user_id)
        return Response(204)

    def sample_datasets(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/sample/datasets/{sourceId}`` (protocol.md#other-calls)."""
        self.app.auth(request)
        source = params["source"]
        if not source.isdigit():
            raise errors.validation(f"sourceId must be a number, got {source!r}")
        return json_response(
            200,
            {
                "default": {
                    "name": "Default",
                    "description": f"The sandbox's synthetic library for source {source}",
                }
            },
        )

    # -- discovery, account management, contract (protocol.md#discovery) ---------------------------
    def discovery_sources(self, request: Request, params: dict[str, str]) -> Response:
        """``POST discovery/sources``: application JWT, no user token; paged."""
        self.app.auth(request)
        return json_response(200, discovery.query_sources(json_body(request)))

    def discovery_list(self, request: Request, params: dict[str, str]) -> Response:
        """``POST discovery/{countries,platforms,categories}``: application JWT."""
        self.app.auth(request)
        kind = request.path.rsplit("/", 1)[-1]
        return json_response(200, discovery.simple_query(kind, json_body(request)))

    def _account_header(self, request: Request) -> str:
        """The ``accountId`` header (the SDK's ``h:accountId`` path means "from a header")."""
        account_id = (request.header("accountid") or "").strip()
        if not account_id:
            raise errors.validation("the accountId header is required (the account's id)")
        if not any(a["id"] == account_id for a in self.library.accounts):
            raise errors.not_found(
                "AccountNotFound", f"The account ({account_id}) was not found in this library"
            )
        return account_id

    def delete_account(self, request: Request, params: dict[str, str]) -> Response:
        """``DELETE permission-access/service/h:accountId``: **204**; the account and its files go.

        The sandbox has one library for every user, so the account leaves every later
        list, the accounts answer and the ground truth.
        """
        contract, claims = self.app.auth(request)
        self.app.user_for(contract, claims)
        account_id = self._account_header(request)
        if not self.app.remove_account(account_id):  # deleted meanwhile by another request
            raise errors.not_found(
                "AccountNotFound", f"The account ({account_id}) was not found in this library"
            )
        self.store.count("counters", "accounts_deleted")
        return Response(204)

    def revoke_url(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/revoke/h:accountId``: **201** ``{location}``.

        ``location`` is ``{onboardUrl}revoke?code=…``: a page where the user withdraws
        the account's permission, then is sent to ``redirectUri`` (a header, on the
        contract's allow-list) with ``result=success`` or ``result=failed``.
        """
        contract, claims = self.app.auth(request)
        user = self.app.user_for(contract, claims)
        account_id = self._account_header(request)
        redirect_uri = (request.header("redirecturi") or "").strip()
        if not redirect_uri:
            raise errors.validation("the redirectUri header is required")
        if redirect_uri not in contract.redirect_uris:
            raise errors.invalid_redirect_uri(redirect_uri)
        grant = self.store.create_grant(
            "revoke",
            self.registry.client_id(contract),
            redirect_uri,
            None,
            None,
            "",
            user.user_id,
            now_ms(),
            account_id=account_id,
        )
        return json_response(201, {"location": f"{self.onboard_url}revoke?code={grant.code}"})

    def _contract_details(self, contract: Contract) -> Response:
        cached = self._certificates.get(contract.contract_id)
        if cached is None:
            cached = self._certificates[contract.contract_id] = contracts.details(
                self.registry, contract
            )
        return json_response(200, cached)

    def contract(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/contract``: the JWT's contract (application JWT)."""
        contract, _claims = self.app.auth(request)
        return self._contract_details(contract)

    def contract_by_ids(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/contract/{contractId}/{appId}`` (the iOS SDK's form): no auth."""
        client_id = f"{params['app']}_{params['contract']}"
        contract = self.registry.contracts.get(client_id)
        if contract is None:
            raise errors.invalid_client(client_id)
        return self._contract_details(contract)

    # -- web pages ----------------------------------------------------------------------
    def page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET {onboardUrl}authorize|onboard|user-reauth|reauthorize``: consent or redirect."""
        page = params["page"]
        code = request.param("code")
        if not code:
            return self.app._html(400, pages.message_page("Missing code", "The link has no code."))
        try:
            grant = self.store.grant(code, now_ms())
        except ApiError:
            return self.app._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        expected = "authorize" if page == "authorize" else "reference"
        if grant.kind != expected:
            return self.app._html(
                400, pages.message_page("Wrong page", f"This code is not for the {page} page.")
            )
        if page == "user-reauth" and grant.code_challenge is None:
            return self.app._html(
                400, pages.message_page("Wrong page", "user-reauth needs a code_challenge.")
            )
        account_ref = request.param("accountRef")
        if self.settings.auto_consent:
            return self._decide(page, code, "share", account_ref)
        contract = self.registry.contracts[grant.client_id]
        html = pages.consent_page(
            page=page,
            code=code,
            action=ONBOARD_PREFIX + "consent",
            application_id=self.registry.application_id,
            contract_id=contract.contract_id,
            contract_kind=contract.kind,
            accounts=self.library.accounts,
            account_ref=account_ref,
        )
        return self.app._html(200, html)

    def revoke_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET {onboardUrl}revoke?code=…``: withdraw an account's permission, or not."""
        code = request.param("code") or ""
        try:
            grant = self.store.grant(code, now_ms())
        except ApiError:
            grant = None
        if grant is None or grant.kind != "revoke" or grant.account_id is None:
            return self.app._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        if self.settings.auto_consent:
            return self._decide_revoke(code, "share")
        account = next((a for a in self.library.accounts if a["id"] == grant.account_id), None)
        html = pages.revoke_page(
            code=code, action=ONBOARD_PREFIX + "consent", account=account or {"id": ""}
        )
        return self.app._html(200, html)

    def _decide_revoke(self, code: str, decision: str) -> Response:
        """Withdraw (``share``) or keep (``cancel``) the permission; back to the redirectUri."""
        try:
            grant = self.store.spend(code, now_ms())
        except ApiError:
            return self.app._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        params: dict[str, str | None] = {"result": "success"}
        if decision == "cancel":
            params = {"result": "failed", "error_message": "USER_CANCEL"}
        elif grant.account_id is not None and any(
            a["id"] == grant.account_id for a in self.library.accounts
        ):
            self.store.revoke_account(grant.account_id)
        else:  # the account was deleted since the link was made
            params = {"result": "failed", "error_message": "ACCOUNT_NOT_FOUND"}
        return self.app._redirect(pages.callback_url(grant.redirect_uri, params))

    def consent(self, request: Request, params: dict[str, str]) -> Response:
        """``POST {onboardUrl}consent``: the Share or Cancel button."""
        form = parse_qs(request.body.decode("utf-8", "replace"))
        code = (form.get("code") or [""])[0]
        page = (form.get("page") or ["authorize"])[0]
        decision = (form.get("decision") or [""])[0]
        if decision not in ("share", "cancel") or not code:
            return self.app._html(400, pages.message_page("Bad form", "Choose Share or Cancel."))
        try:
            kind: str | None = self.store.grant(code, now_ms()).kind
        except ApiError:
            kind = None  # _decide and _decide_revoke answer the "invalid link" page
        if kind is not None and (page == "revoke") != (kind == "revoke"):
            return self.app._html(
                400, pages.message_page("Wrong page", f"This code is not for the {page} page.")
            )
        if page == "revoke":
            return self._decide_revoke(code, decision)
        return self._decide(page, code, decision, next(iter(form.get("accountRef") or ()), None))

    def _decide(self, page: str, code: str, decision: str, account_ref: str | None) -> Response:
        now = now_ms()
        try:
            if decision == "cancel":
                grant = self.store.cancel(code, now)
                params: dict[str, str | None] = {
                    "success": "false",
                    "errorCode": "USER_CANCEL",
                    "state": grant.state,
                }
                return self.app._redirect(pages.callback_url(grant.redirect_uri, params))
            issue_code = page in ("authorize", "user-reauth")
            grant, user_id, auth_code = self.store.consent(code, now, issue_code=issue_code)
        except ApiError:
            return self.app._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        params = {"success": "true", "state": grant.state}
        if auth_code:
            params["code"] = auth_code
        if page == "authorize" and self.library.accounts:
            params["accountReference"] = str(self.library.accounts[0].get("reference", ""))
        if page == "reauthorize":
            account = None
            if account_ref and account_ref in self.store.references:
                account = self.store.references[account_ref][1]
            account = account or self.library.partial_account_id
            if account:
                self.store.reauthorize_account(user_id, account)
        return self.app._redirect(pages.callback_url(grant.redirect_uri, params))
