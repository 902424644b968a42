"""Routing and handlers of the emulated digi.me Public API v1.7 (protocol.md, v1.7).

Handlers take a :class:`Request` and return a :class:`Response`, raising
:class:`ApiError` for every documented failure. No HTTP plumbing lives here,
so the whole v1.7 surface reads top to bottom in one file; the v1.5 surface
(Part B) is in :mod:`.app15`, routed by the same :class:`App`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote

from . import contracts, discovery, errors, filelist, pages
from .app15 import ApiV15
from .errors import ApiError
from .faults import FaultPlan, Faults
from .jwts import ServerSigner, require_str, verify_request
from .library import Library
from .messages import Request, Response, error_response, json_response
from .registry import Contract, Registry
from .settings import SandboxSettings
from .state import Store, Token, User

API_PREFIX = "/v1.7/"
ONBOARD_PREFIX = "/apps/saas/"
SANDBOX_PREFIX = "/_sandbox/"

Handler = Callable[[Request, dict[str, str]], Response]


@dataclass(frozen=True)
class Route:
    """One endpoint: methods, path pattern, a stats name and the fault kind."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    name: str
    kind: str
    handler: Handler


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; empty means ``{}``."""
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise errors.validation(f"the request body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise errors.validation("the request body must be a JSON object")
    return body


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


@dataclass
class _View:
    """The library as now served, with what is derived from it (swapped whole on a change)."""

    library: Library
    visible: dict[tuple[int | None, frozenset[str] | None], dict[str, Any]] = field(
        default_factory=dict
    )
    truth: dict[str, str] | None = None


def _garble_metadata(response: Response, how: str) -> None:
    """Drop the ``x-metadata`` header, or replace it with something that does not decode."""
    headers = [(k, v) for k, v in response.headers if k.lower() != "x-metadata"]
    if how == "malformed":
        headers.append(("x-metadata", "eyJub3QtanNvbg*not~base64url"))
    response.headers = headers


def _applicable(faults: Faults, request: Request, response: Response) -> Faults:
    """The body faults that can really be applied to this answer (and so are counted).

    A cut needs a body to cut (not HEAD, not 204); a flipped byte needs a file body
    longer than its header; metadata is garbled only on a successful file answer.
    """
    body = request.method != "HEAD" and response.content_length > 0
    good_file = response.status == 200 and response.content_length > response.corrupt_from
    return dataclasses.replace(
        faults,
        truncate_at=faults.truncate_at if body else None,
        corrupt_at=faults.corrupt_at if body and good_file else None,
        bad_metadata=faults.bad_metadata if response.status == 200 else None,
    )


class App:
    """The sandbox API: registrations, library, state and signer behind a router."""

    def __init__(
        self, settings: SandboxSettings, registry: Registry, library: Library, origin: str
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._view = _View(library)
        self._view_lock = threading.Lock()
        self._certificates: dict[str, dict[str, Any]] = {}
        self.store = Store(settings)
        self.faults = FaultPlan(settings)
        self.origin = origin.rstrip("/")
        self.base_url = self.origin + API_PREFIX
        self.onboard_url = self.origin + ONBOARD_PREFIX
        self.signer = ServerSigner(
            registry.server_key, registry.server_kid, self.base_url + "jwks/oauth"
        )
        self.v15 = ApiV15(self)
        self.routes = self._routes()
        self._jwks_served = itertools.count(1)  # for ``hold_jwks``; next() is atomic

    @property
    def library(self) -> Library:
        """The library as now served (accounts the user deleted are gone from it)."""
        return self._view.library

    def _visible(self, stage: int | None, account_filter: frozenset[str] | None) -> dict[str, Any]:
        """The files a stage shows, memoised: a download must not cost O(library size)."""
        view = self._view
        key = (stage, account_filter)
        shown = view.visible.get(key)
        if shown is None:
            s = self.settings
            shown = filelist.visible(
                view.library, stage, s.pending_polls, s.running_polls, account_filter
            )
            if len(view.visible) < 1024:
                view.visible[key] = shown
        return shown

    def remove_account(self, account_id: str) -> bool:
        """Take an account and its files out of the served library; False if it is not there."""
        with self._view_lock:
            library = self._view.library
            if not any(a["id"] == account_id for a in library.accounts):
                return False
            self._view = _View(library.without_account(account_id))
            return True

    # -- routing ----------------------------------------------------------------
    def _routes(self) -> list[Route]:
        def r(methods: str, path: str, name: str, kind: str, handler: Handler) -> Route:
            pattern = re.compile("^" + path + "$")
            return Route(frozenset(methods.split()), pattern, name, kind, handler)

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
            r("GET", api + "jwks/oauth", "jwks", "jwks", self.jwks),
            *[
                r("POST", api + f"discovery/{kind}", f"discovery/{kind}", "discovery", handler)
                for kind, handler in (
                    ("sources", self.discovery_sources),
                    ("countries", self.discovery_list),
                    ("platforms", self.discovery_list),
                    ("categories", self.discovery_list),
                )
            ],
            r("GET", api + "discovery/services", "discovery/services", "discovery", self.services),
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
            r(
                "GET",
                re.escape(SANDBOX_PREFIX) + "ground-truth",
                "ground-truth",
                "meta",
                self.truth,
            ),
            r("GET", re.escape(SANDBOX_PREFIX) + "stats", "stats", "meta", self.stats_page),
            r(
                "GET",
                re.escape(SANDBOX_PREFIX) + "fault-log",
                "fault-log",
                "meta",
                self.fault_log_page,
            ),
            r("GET", re.escape(SANDBOX_PREFIX) + "info", "info", "meta", self.info),
            *self.v15.routes(r),
        ]

    def route(self, request: Request) -> tuple[Route, dict[str, str]]:
        """The route for a request, or 404/405 as an :class:`ApiError`."""
        allowed: set[str] = set()
        for route in self.routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if request.method in route.methods:
                # Path parameters arrive percent-encoded, as any HTTP server sees them.
                return route, {k: unquote(v) for k, v in match.groupdict().items()}
            allowed |= route.methods
        if allowed:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"{request.method} is not allowed on {request.path}; "
                f"use {', '.join(sorted(allowed))}",
            )
        raise errors.not_found("NotFound", f"There is no endpoint at {request.path}")

    def handle(self, request: Request) -> Response:
        """Route, decide faults, run the handler; every failure becomes a JSON error."""
        try:
            route, params = self.route(request)
        except ApiError as exc:
            self.store.count("error_counts", exc.code)
            return error_response(exc)
        self.store.count("endpoint_counts", route.name)
        resource = params.get("file", "")
        attempt = self._attempt(route.kind, resource)
        faults = self.faults.decide(route.kind, resource, attempt)
        if faults.error_status or faults.reset:
            # Before the handler runs: the failed request changed nothing.
            kind = "reset" if faults.reset else str(faults.error_status)
            self.store.record_faults(route.kind, resource, attempt, [kind])
            status = faults.error_status or 500
            exc = ApiError(status, "InternalServerError", "The sandbox injected a server error")
            response = error_response(exc)
            response.faults = faults
            self.v15.status_headers(request, response)
            return response
        try:
            response = route.handler(request, params)
        except ApiError as exc:
            self.store.count("error_counts", exc.code)
            response = error_response(exc)
        except Exception as exc:  # a sandbox bug must still answer in the API's shape
            self.store.count("error_counts", "InternalServerError")
            response = error_response(
                ApiError(500, "InternalServerError", f"Sandbox error: {type(exc).__name__}: {exc}")
            )
        self.v15.status_headers(request, response)
        response.faults = faults = _applicable(faults, request, response)
        if faults.bad_metadata:
            _garble_metadata(response, faults.bad_metadata)
        applied = [
            name
            for name, on in (
                ("truncate", faults.truncate_at is not None),
                ("corrupt", faults.corrupt_at is not None),
                ("bad_metadata", bool(faults.bad_metadata)),
            )
            if on
        ]
        if applied:
            self.store.record_faults(route.kind, resource, attempt, applied)
        return response

    def _attempt(self, kind: str, resource: str) -> int:
        if not self.settings.has_faults and not self.settings.latency_jitter:
            return 0
        return self.store.next_attempt(kind, resource)

    # -- authentication -----------------------------------------------------------
    def auth(self, request: Request) -> tuple[Contract, dict[str, Any]]:
        """Verify the request JWT and spend its nonce."""
        window_ms = int(self.settings.timestamp_window * 1000)
        now = _now_ms()
        contract, claims = verify_request(
            request.header("authorization"), self.registry, now_ms=now, window_ms=window_ms
        )
        self.store.use_nonce(claims["nonce"], now, window_ms)
        return contract, claims

    def user_for(self, contract: Contract, claims: dict[str, Any]) -> User:
        """The user behind the ``access_token`` claim (401 InvalidToken if none is live)."""
        return self.token_for(contract, claims)[0]

    def token_for(self, contract: Contract, claims: dict[str, Any]) -> tuple[User, Token]:
        """The user and token record behind the ``access_token`` claim."""
        token = claims.get("access_token")
        if not isinstance(token, str) or not token:
            raise errors.invalid_token("access_token")
        return self.store.check_access(token, self.registry.client_id(contract), _now_ms())

    def _redirect_uri(self, contract: Contract, claims: dict[str, Any]) -> str:
        uri = require_str(claims, "redirect_uri")
        if uri not in contract.redirect_uris:
            raise errors.invalid_redirect_uri(uri)
        return uri

    @staticmethod
    def _challenge(claims: dict[str, Any], *, required: bool) -> str | None:
        challenge = claims.get("code_challenge")
        if challenge is None and not required:
            return None
        challenge = require_str(claims, "code_challenge")
        if claims.get("code_challenge_method", "S256") != "S256":
            raise errors.validation("code_challenge_method must be 'S256'")
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
            raise errors.validation("code_challenge must be 43 base64url characters (S256)")
        return challenge

    @staticmethod
    def _state(claims: dict[str, Any]) -> str | None:
        state = claims.get("state")
        if state is None:
            return None
        if not isinstance(state, str):
            raise errors.validation("the JWT claim 'state' must be a string")
        return state

    # -- OAuth ---------------------------------------------------------------------
    def authorize(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/authorize`` (protocol.md#consent): a pre-authorization code."""
        contract, claims = self.auth(request)
        redirect_uri = self._redirect_uri(contract, claims)
        challenge = self._challenge(claims, required=True)
        if claims.get("response_type", "code") != "code":
            raise errors.validation("response_type must be 'code'")
        state = self._state(claims)
        body = _json_body(request)
        user_id = None
        if claims.get("access_token") is not None:
            if not contract.ongoing:
                raise errors.insufficient_scope()
            user_id = self.user_for(contract, claims).user_id
        actions = body.get("actions")
        pull = actions.get("pull") if isinstance(actions, dict) else None
        now = _now_ms()
        client_id = self.registry.client_id(contract)
        session = self.store.create_session(client_id, now, account_filter=_account_filter(pull))
        grant = self.store.create_grant(
            "authorize", client_id, redirect_uri, state, challenge, session.key, user_id, now
        )
        token = self.signer.sign({"preauthorization_code": grant.code})
        return json_response(201, {"token": token, "session": session.wire()})

    def token(self, request: Request, params: dict[str, str]) -> Response:
        """``POST oauth/token``: authorization_code (with PKCE) or refresh_token grants."""
        contract, claims = self.auth(request)
        grant_type = require_str(claims, "grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise errors.validation(f"unsupported grant_type {grant_type!r}")
        client_id = self.registry.client_id(contract)
        if grant_type == "authorization_code":
            pair = self.store.exchange_code(
                require_str(claims, "code"),
                require_str(claims, "code_verifier"),
                client_id,
                _now_ms(),
                oneoff=not contract.ongoing,
            )
        elif not contract.ongoing:
            raise errors.insufficient_scope()
        else:
            pair = self.store.rotate(require_str(claims, "refresh_token"), client_id, _now_ms())
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
        contract, claims = self.auth(request)
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
        redirect_uri = self._redirect_uri(contract, claims)
        challenge = self._challenge(claims, required=False)
        state = self._state(claims)
        body = _json_body(request)
        actions = body.get("actions")
        pull = actions.get("pull") if isinstance(actions, dict) else None
        now = _now_ms()
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
        self.auth(request)
        body = _json_body(request)
        ref_type, value = body.get("type"), body.get("value")
        if not isinstance(ref_type, str) or not isinstance(value, str) or not value:
            raise errors.validation("the body must be {type: string, value: string}")
        return json_response(201, {"id": self.store.add_reference(ref_type, value)})

    # -- data ------------------------------------------------------------------------
    def trigger(self, request: Request, params: dict[str, str]) -> Response:
        """``POST permission-access/trigger`` (protocol.md#sessions): a new session for a token."""
        contract, claims = self.auth(request)
        if not contract.ongoing:
            raise errors.insufficient_scope()
        user = self.user_for(contract, claims)
        body = _json_body(request)
        self.store.count("counters", "triggers")
        session = self.store.create_session(
            self.registry.client_id(contract),
            _now_ms(),
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
        contract, claims = self.auth(request)
        now = _now_ms()
        session = self.store.session(key, now)
        client_id = self.registry.client_id(contract)
        if session.client_id != client_id or session.api != "v1.7":
            raise errors.not_found("InvalidSession", "The session is invalid or has expired")
        if contract.ongoing:
            user = self.user_for(contract, claims)
            if session.user_id is not None and session.user_id != user.user_id:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return contract, session, user
        if claims.get("access_token") is not None:
            user, token = self.token_for(contract, claims)
            if token.session_key != key:
                raise errors.not_found("InvalidSession", "The session is invalid or has expired")
            return contract, session, user
        user = self.store.users.get(session.user_id) if session.user_id else None
        return contract, session, user

    def file_list(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/query/{sessionKey}`` (protocol.md#files)."""
        _contract, session, _user = self._session_user(request, params["session"])
        return json_response(200, self.list_body(session))

    def list_body(self, session: Any) -> dict[str, Any]:
        """Count one list poll of a session and answer it (both API versions)."""
        s = self.settings
        consented, index = self.store.advance(session)
        if not consented:
            return {"status": {"state": "pending"}}
        stage = min(index, filelist.final_stage(s.pending_polls, s.running_polls))
        self.store.set_stage(session, stage)
        user = self.store.users.get(session.user_id) if session.user_id else None
        library = self.library
        needs_reauth = set(self.store.revoked_accounts())
        partial = library.partial_account_id
        if partial is not None and (user is None or partial not in user.reauthorized):
            needs_reauth.add(partial)
        return filelist.status_body(
            library,
            stage,
            s.pending_polls,
            s.running_polls,
            account_filter=session.account_filter,
            needs_reauth=frozenset(needs_reauth),
        )

    def file(self, request: Request, params: dict[str, str]) -> Response:
        """``GET``/``HEAD permission-access/query/{sessionKey}/{fileName}`` (protocol.md#files)."""
        contract, session, _user = self._session_user(request, params["session"])
        name = params["file"]
        version = self._visible(session.stage, session.account_filter).get(name)
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
        contract, claims = self.auth(request)
        if contract.ongoing or claims.get("access_token") is not None:
            self.user_for(contract, claims)
        return json_response(200, self.account_list())

    def account_list(self) -> list[dict[str, Any]]:
        """The library's accounts; one whose permission was withdrawn is not authorized."""
        revoked = self.store.revoked_accounts()
        return [
            {**a, "accessTokenStatus": {"authorized": False}} if a["id"] in revoked else a
            for a in self.library.accounts
        ]

    def delete_user(self, request: Request, params: dict[str, str]) -> Response:
        """``DELETE user`` (protocol.md#other-calls): the user and their tokens and sessions go."""
        contract, claims = self.auth(request)
        user = self.user_for(contract, claims)
        self.store.delete_user(user.user_id)
        return Response(204)

    def sample_datasets(self, request: Request, params: dict[str, str]) -> Response:
        """``GET permission-access/sample/datasets/{sourceId}`` (protocol.md#other-calls)."""
        self.auth(request)
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

    def jwks(self, request: Request, params: dict[str, str]) -> Response:
        """``GET jwks/oauth``: the key that signs its tokens (protocol.md#server-tokens)."""
        response = json_response(200, self.signer.jwks())
        response.hold = next(self._jwks_served) == self.settings.hold_jwks
        return response

    # -- discovery, account management, contract (protocol.md#discovery) ---------------------------
    def discovery_sources(self, request: Request, params: dict[str, str]) -> Response:
        """``POST discovery/sources``: application JWT, no user token; paged."""
        self.auth(request)
        return json_response(200, discovery.query_sources(_json_body(request)))

    def discovery_list(self, request: Request, params: dict[str, str]) -> Response:
        """``POST discovery/{countries,platforms,categories}``: application JWT."""
        self.auth(request)
        kind = request.path.rsplit("/", 1)[-1]
        return json_response(200, discovery.simple_query(kind, _json_body(request)))

    def services(self, request: Request, params: dict[str, str]) -> Response:
        """``GET discovery/services`` (the older discovery call): no Authorization.

        An optional ``contractId`` header must name a registered contract.
        """
        contract_id = request.header("contractid")
        if contract_id is not None and not any(
            c.contract_id == contract_id for c in self.registry.contracts.values()
        ):
            raise errors.not_found("InvalidContractId", f"The contract ({contract_id}) is invalid")
        flag = (request.param("includeSampleDataOnlySources") or "false").lower()
        if flag not in ("true", "false"):
            raise errors.validation("includeSampleDataOnlySources must be true or false")
        return json_response(200, discovery.services_v1(include_sample=flag == "true"))

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
        contract, claims = self.auth(request)
        self.user_for(contract, claims)
        account_id = self._account_header(request)
        if not self.remove_account(account_id):  # deleted meanwhile by another request
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
        contract, claims = self.auth(request)
        user = self.user_for(contract, claims)
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
            _now_ms(),
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
        contract, _claims = self.auth(request)
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
            return self._html(400, pages.message_page("Missing code", "The link has no code."))
        try:
            grant = self.store.grant(code, _now_ms())
        except ApiError:
            return self._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        expected = "authorize" if page == "authorize" else "reference"
        if grant.kind != expected:
            return self._html(
                400, pages.message_page("Wrong page", f"This code is not for the {page} page.")
            )
        if page == "user-reauth" and grant.code_challenge is None:
            return self._html(
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
        return self._html(200, html)

    def revoke_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET {onboardUrl}revoke?code=…``: withdraw an account's permission, or not."""
        code = request.param("code") or ""
        try:
            grant = self.store.grant(code, _now_ms())
        except ApiError:
            grant = None
        if grant is None or grant.kind != "revoke" or grant.account_id is None:
            return self._html(
                404, pages.message_page("Invalid link", "This code is unknown, used or expired.")
            )
        if self.settings.auto_consent:
            return self._decide_revoke(code, "share")
        account = next((a for a in self.library.accounts if a["id"] == grant.account_id), None)
        html = pages.revoke_page(
            code=code, action=ONBOARD_PREFIX + "consent", account=account or {"id": ""}
        )
        return self._html(200, html)

    def _decide_revoke(self, code: str, decision: str) -> Response:
        """Withdraw (``share``) or keep (``cancel``) the permission; back to the redirectUri."""
        try:
            grant = self.store.spend(code, _now_ms())
        except ApiError:
            return self._html(
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
        return self._redirect(pages.callback_url(grant.redirect_uri, params))

    def consent(self, request: Request, params: dict[str, str]) -> Response:
        """``POST {onboardUrl}consent``: the Share or Cancel button."""
        form = parse_qs(request.body.decode("utf-8", "replace"))
        code = (form.get("code") or [""])[0]
        page = (form.get("page") or ["authorize"])[0]
        decision = (form.get("decision") or [""])[0]
        if decision not in ("share", "cancel") or not code:
            return self._html(400, pages.message_page("Bad form", "Choose Share or Cancel."))
        try:
            kind: str | None = self.store.grant(code, _now_ms()).kind
        except ApiError:
            kind = None  # _decide and _decide_revoke answer the "invalid link" page
        if kind is not None and (page == "revoke") != (kind == "revoke"):
            return self._html(
                400, pages.message_page("Wrong page", f"This code is not for the {page} page.")
            )
        if page == "revoke":
            return self._decide_revoke(code, decision)
        return self._decide(page, code, decision, (form.get("accountRef") or [None])[0])

    def _decide(self, page: str, code: str, decision: str, account_ref: str | None) -> Response:
        now = _now_ms()
        try:
            if decision == "cancel":
                grant = self.store.cancel(code, now)
                params: dict[str, str | None] = {
                    "success": "false",
                    "errorCode": "USER_CANCEL",
                    "state": grant.state,
                }
                return self._redirect(pages.callback_url(grant.redirect_uri, params))
            issue_code = page in ("authorize", "user-reauth")
            grant, user_id, auth_code = self.store.consent(code, now, issue_code=issue_code)
        except ApiError:
            return self._html(
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
        return self._redirect(pages.callback_url(grant.redirect_uri, params))

    @staticmethod
    def _html(status: int, text: str) -> Response:
        return Response(status, [("Content-Type", "text/html; charset=utf-8")], text.encode())

    @staticmethod
    def _redirect(location: str) -> Response:
        return Response(302, [("Location", location)], b"")

    # -- sandbox-only ---------------------------------------------------------------------
    def ground_truth(self) -> dict[str, str]:
        """File name -> SHA-256 of the final plaintext of the library as now served."""
        view = self._view
        if view.truth is None:
            view.truth = view.library.ground_truth()
        return dict(view.truth)

    def truth(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /_sandbox/ground-truth``."""
        return json_response(200, self.ground_truth())

    def stats_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /_sandbox/stats``."""
        return json_response(200, self.store.stats())

    def fault_log_page(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /_sandbox/fault-log``: which request (kind, file, attempt) got which faults."""
        return json_response(200, self.store.faults())

    def info(self, request: Request, params: dict[str, str]) -> Response:
        """``GET /_sandbox/info``: ids and URLs, for tools that start against a running sandbox."""
        return json_response(
            200,
            {
                "application_id": self.registry.application_id,
                "contracts": {
                    c.name: {"contract_id": c.contract_id, "kind": c.kind}
                    for c in self.registry.contracts.values()
                },
                "base_url": self.base_url,
                "onboard_url": self.onboard_url,
                "jwks_url": self.signer.jku,
            },
        )
