"""The sandbox's router, and what its two API versions share.

:class:`App` holds the registrations, the library as now served, the state and the
fault plan; it routes each request to a handler, decides the faults, and turns every
failure into an answer in the API's shape. The handlers of each version live in
:mod:`.api_v17` and :mod:`.api_v15`, which import this module and never each other;
:class:`~privateshare.sandbox.server.Sandbox` gives the app both.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from . import discovery, errors, filelist
from .errors import ApiError
from .faults import FaultPlan, Faults
from .jwts import ServerSigner, require_str, verify_request
from .library import Library
from .messages import Request, Response, error_response, json_response
from .registry import Contract, Registry
from .settings import SandboxSettings
from .state import Store, Token, User

#: The v1.7 API, its web client, and the sandbox's own paths.
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


#: Builds a route: ``route(methods, path pattern, stats name, fault kind, handler)``.
RouteFactory = Callable[[str, str, str, str, Handler], Route]


def route(methods: str, path: str, name: str, kind: str, handler: Handler) -> Route:
    """A route for ``methods`` (space-separated) on the regular expression ``path``."""
    pattern = re.compile("^" + path + "$")
    return Route(frozenset(methods.split()), pattern, name, kind, handler)


class Api(Protocol):
    """One API version's handlers, as the router uses them."""

    def routes(self, r: RouteFactory) -> list[Route]: ...

    def status_headers(self, request: Request, response: Response) -> None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def json_body(request: Request) -> dict[str, Any]:
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
    """The sandbox API: registrations, library, state and signer behind a router.

    ``apis`` build the handlers of each API version from the app (``ApiV17``, ``ApiV15``).
    """

    def __init__(
        self,
        settings: SandboxSettings,
        registry: Registry,
        library: Library,
        origin: str,
        apis: Sequence[Callable[[App], Api]] = (),
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._view = _View(library)
        self._view_lock = threading.Lock()
        self.store = Store(settings)
        self.faults = FaultPlan(settings)
        self.origin = origin.rstrip("/")
        self.base_url = self.origin + API_PREFIX
        self.onboard_url = self.origin + ONBOARD_PREFIX
        self.signer = ServerSigner(
            registry.server_key, registry.server_kid, self.base_url + "jwks/oauth"
        )
        self._jwks_served = itertools.count(1)  # for ``hold_jwks``; next() is atomic
        self.apis = [make(self) for make in apis]
        self.routes = self._routes()

    # -- shared by both API versions ------------------------------------------------
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
            injected = ApiError(
                status, "InternalServerError", "The sandbox injected a server error"
            )
            response = error_response(injected)
            response.faults = faults
            self._status_headers(request, response)
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
        self._status_headers(request, response)
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
        now = now_ms()
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
        return self.store.check_access(token, self.registry.client_id(contract), now_ms())

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

    def account_list(self) -> list[dict[str, Any]]:
        """The library's accounts; one whose permission was withdrawn is not authorized."""
        revoked = self.store.revoked_accounts()
        return [
            {**a, "accessTokenStatus": {"authorized": False}} if a["id"] in revoked else a
            for a in self.library.accounts
        ]

    def jwks(self, request: Request, params: dict[str, str]) -> Response:
        """``GET jwks/oauth``: the key that signs its tokens (protocol.md#server-tokens)."""
        response = json_response(200, self.signer.jwks())
        response.hold = next(self._jwks_served) == self.settings.hold_jwks
        return response

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

    # -- routing ----------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        """The sandbox's own paths, then each API version's routes."""
        r = route
        meta = [
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
        ]
        return meta + [each for api in self.apis for each in api.routes(route)]

    def _status_headers(self, request: Request, response: Response) -> None:
        for api in self.apis:
            api.status_headers(request, response)
