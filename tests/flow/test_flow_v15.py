"""What only the API v1.5 profile does, through our client and flow, over real HTTP.

The flow tests that run on both profiles are in test_flow.py (``api`` fixture);
here: the consent links, what goes on the wire, the SDK status warning, refresh
at trigger time, and the calls v1.5 does not have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import msgspec
import pytest
import requests

from privateshare import SDKInvalidError, ServerError, ValidationError, hookimpl
from privateshare.client import ClientV15, UnsupportedCall, need
from privateshare.flow import ConsentDenied, Flow
from privateshare.sandbox import Sandbox
from privateshare.transport import HttpRequest

from .conftest import consent, delivered, framework_for


def v15_flow(sandbox: Sandbox, root: Path, contract: str = "ongoing", **tables: Any) -> Flow:
    return Flow(framework_for(sandbox, root, contract, api="v1.5", **tables))


def record_requests(flow: Flow) -> list[HttpRequest]:
    """Every request the client sends, as the transport hook receives it."""
    sent: list[HttpRequest] = []
    wire = flow.client.wire  # type: ignore[attr-defined]
    send = wire.send_request

    def recording(request: HttpRequest) -> Any:
        sent.append(request)
        return send(request)

    wire.send_request = recording
    return sent


def test_the_profile_picks_the_client_and_the_v15_base_url(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    flow = v15_flow(sandbox, tmp_path)
    assert isinstance(flow.client, ClientV15)
    assert flow.client.base_url == sandbox.base_url_v15 + "/"
    # The v1.7 default base URL means "the default": v1.5's (protocol.md#addresses).
    default = v15_flow(sandbox, tmp_path / "d", digime={"base_url": "https://api.digi.me/v1.7/"})
    assert default.client.base_url == "https://api.digi.me/v1.5/"
    assert default.client.app_opener is not None  # the sandbox config names its app stand-in


def test_one_off_consent_link_is_the_guest_page_and_the_app_link(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    flow = v15_flow(sandbox, tmp_path, "oneoff")
    pending = flow.start_consent("ann", once=True)
    guest = urlsplit(pending.url)
    assert f"{guest.scheme}://{guest.netloc}{guest.path}" == sandbox.guest_url
    query = parse_qs(guest.query)
    assert set(query) == {"sessionExchangeToken", "callbackUrl"}
    callback = urlsplit(query["callbackUrl"][0])
    redirect = urlsplit(flow.config.digime.redirect_uri)
    assert (callback.netloc, callback.path) == (redirect.netloc, redirect.path)
    assert parse_qs(callback.query) == {"state": [pending.state]}  # our CSRF check rides here
    assert pending.app_url is not None
    app = urlsplit(pending.app_url)
    assert (app.scheme, app.netloc) == ("digime", "consent-access")
    assert [k for k, _ in parse_qsl(app.query)] == [
        "callbackUrl",
        "sessionKey",
        "appId",
        "sdkVersion",
    ]
    assert dict(parse_qsl(app.query))["callbackUrl"] == query["callbackUrl"][0]
    assert "sessionKey" not in repr(pending) and pending.start.session.key not in repr(pending)


def test_ongoing_consent_link_carries_the_preauthorization_code(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    flow = v15_flow(sandbox, tmp_path)
    pending = flow.start_consent("bea")
    assert pending.app_url is not None and pending.app_url.startswith("digime://consent-access?")
    keys = [k for k, _ in parse_qsl(urlsplit(pending.app_url).query)]
    assert keys == ["preauthorizationCode", "callbackUrl", "sessionKey", "appId", "sdkVersion"]
    # The sandbox config names a stand-in for the app, so a browser can open the same link.
    assert pending.url == sandbox.app_url + "consent-access?" + urlsplit(pending.app_url).query
    # Against the real service there is no such stand-in: the link is for the app only.
    real = v15_flow(
        sandbox, tmp_path / "r", digime={"onboard_url": "https://api.digi.me/apps/saas/"}
    )
    assert real.start_consent("bea").url.startswith("digime://consent-access?")


def test_the_wire_session_call_and_session_key_only_reads(sandbox: Sandbox, tmp_path: Path) -> None:
    flow = v15_flow(sandbox, tmp_path, pull={"concurrency": 2, "poll_interval": 0.05})
    sent = record_requests(flow)
    token, session = consent(flow, "cat")
    summary = flow.pull("cat", token=token, session=session)
    assert summary.ok and delivered(tmp_path, "cat") == sandbox.ground_truth()
    first = sent[0]
    assert (
        first.method == "POST" and first.url == sandbox.base_url_v15 + "/permission-access/session"
    )
    assert first.authorize is None  # no Authorization header (protocol.md#sessions)
    body = first.json
    assert isinstance(body, dict)
    assert body["appId"] == flow.config.digime.application_id
    assert body["contractId"] == flow.config.digime.contract_id
    assert body["accept"] == {"compression": "gzip"}
    assert set(body["sdkAgent"]) == {"name", "version", "meta"}
    reads = [r for r in sent if "/permission-access/query/" in r.url]
    assert len(reads) > len(sandbox.ground_truth())
    assert all(r.authorize is None and "authorization" not in r.headers for r in reads)
    signed = {r.url.rsplit("/v1.5/", 1)[1] for r in sent if r.authorize is not None}
    assert signed == {"oauth/authorize", "oauth/token"}


def test_a_saved_token_is_refreshed_once_when_the_trigger_fails(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # The access token works for one trigger; the second pull's trigger gets a 401,
    # refreshes (with redirect_uri), saves the new token and triggers again (protocol.md#sessions).
    sandbox = start_sandbox(access_token_max_uses=1)
    flow = v15_flow(sandbox, tmp_path)
    refreshed: list[str] = []

    class Observer:
        @hookimpl
        def privateshare_token_refreshed(self, user_id: str) -> None:
            refreshed.append(user_id)

    flow.fw.pm.register(Observer())
    token, _session = consent(flow, "dan")
    assert flow.pull("dan").files_delivered == len(sandbox.ground_truth())
    second = flow.pull("dan")
    assert second.ok and second.files_skipped == len(sandbox.ground_truth())
    stats = sandbox.stats()
    assert (stats["refresh"], stats["refresh_failed"], stats["triggers"]) == (1, 0, 2)
    assert stats["errors"].get("InvalidToken") == 1
    assert refreshed == ["dan"]
    saved = flow.fw.hooks.token_load("dan")
    assert saved is not None and saved != token


def test_sdk_status_is_logged_once_per_distinct_message(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = start_sandbox(sdk_status="deprecated", sdk_status_message="status-message-test")
    flow = v15_flow(sandbox, tmp_path)
    with caplog.at_level(logging.WARNING, logger="privateshare.api"):
        token, session = consent(flow, "eve")
        flow.pull("eve", token=token, session=session)
    warnings = [r for r in caplog.records if r.name == "privateshare.api"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "'deprecated'" in message and "status-message-test" in message
    assert warnings[0].levelno == logging.WARNING
    assert session.key not in caplog.text  # nothing secret in the log


def test_an_unsupported_sdk_version_is_a_clear_error(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(sdk_status="unsupported")
    with pytest.raises(SDKInvalidError) as info:
        v15_flow(sandbox, tmp_path).start_consent("fay")
    assert (info.value.code, info.value.status_code) == ("SDKVersionInvalid", 403)


def test_callback_results_and_the_guest_page_error(sandbox: Sandbox, tmp_path: Path) -> None:
    flow = v15_flow(sandbox, tmp_path, "oneoff")
    pending = flow.start_consent("gil", once=True)
    with pytest.raises(ConsentDenied) as denied:
        flow.finish_consent(pending, {"result": "ERROR", "state": pending.state})
    assert denied.value.error_code == "ERROR"
    with pytest.raises(ValidationError, match="result=SUCCESS"):
        flow.finish_consent(pending, {"success": "true", "state": pending.state})
    # A used link: the guest page calls back with result=ERROR.
    token, session = consent(flow, "gil", once=True)
    assert token is None and session.key
    again = flow.start_consent("gil", once=True)
    requests.get(again.url, allow_redirects=False, timeout=10)  # consents
    second = requests.get(again.url, allow_redirects=False, timeout=10)
    params = dict(parse_qsl(urlsplit(second.headers["Location"]).query))
    assert params == {"state": again.state, "result": "ERROR"}


def test_v17_only_calls_say_so(sandbox: Sandbox, tmp_path: Path) -> None:
    flow = v15_flow(sandbox, tmp_path)
    token, session = consent(flow, "hal")
    assert token is not None
    for call, name in (
        (lambda: need(flow.client, "delete_user")(token), "DELETE user"),
        (lambda: need(flow.client, "reauthorize")(token), "oauth/token/reference"),
        (lambda: need(flow.client, "file_metadata")(session.key, "x.json", token), "HEAD"),
        (lambda: need(flow.client, "sample_datasets")(1), "sample/datasets"),
    ):
        with pytest.raises(UnsupportedCall) as info:
            call()
        text = str(info.value)
        assert name in text and "does not exist in API v1.5" in text and ";" in text
    # Absent, not vetoed: the v1.5 client has no such methods at all.
    for call in ("delete_user", "reauthorize", "file_metadata", "sample_datasets"):
        assert not hasattr(flow.client, call)


def test_exchange_without_the_verifier_is_refused_when_pkce_was_used(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    flow = v15_flow(sandbox, tmp_path)
    pending = flow.start_consent("ida")
    params = dict(
        parse_qsl(
            urlsplit(
                requests.get(pending.url, allow_redirects=False, timeout=10).headers["Location"]
            ).query
        )
    )
    assert params["result"] == "SUCCESS" and params["state"] == pending.state
    with pytest.raises(ServerError) as info:
        flow.client.exchange_code(params["code"], "")  # the verifier is optional on the wire
    assert info.value.code == "InvalidGrant"
    token = flow.client.exchange_code(params["code"], pending.start.code_verifier)
    assert token.access_token.expiry > 0 and token.refresh_token.value


def test_scope_goes_to_the_session_and_the_callback_url_survives(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    flow = v15_flow(sandbox, tmp_path, "oneoff")
    sent = record_requests(flow)
    scope = {"timeRanges": [{"last": "6m"}], "serviceGroups": [{"id": 1, "serviceTypes": []}]}
    redirect = flow.config.digime.redirect_uri + "?a=1&b=2#c"
    pending = flow.start_consent(
        "jon", once=True, redirect_uri=redirect, session_options={"scope": scope}
    )
    assert sent[0].json["scope"] == scope  # type: ignore[index]
    location = requests.get(pending.url, allow_redirects=False, timeout=10).headers["Location"]
    assert location == (
        flow.config.digime.redirect_uri + f"?a=1&b=2&state={pending.state}&result=SUCCESS#c"
    )
    token, session = flow.finish_consent(pending, dict(parse_qsl(urlsplit(location).query)))
    assert token is None and session == pending.start.session


def test_sdk_invalid_and_a_malformed_session_answer(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nameless = v15_flow(sandbox, tmp_path)
    # A config refuses an empty agent_name; a client built in code can still send one.
    nameless.client.config = msgspec.structs.replace(nameless.client.config, agent_name="")
    with pytest.raises(SDKInvalidError) as info:
        nameless.client.establish_session()
    assert (info.value.code, info.value.status_code) == ("SDKInvalid", 400)

    # The sandbox never answers a malformed session; a stub transport does (protocol.md#sessions).
    class Stub:
        status_code, reason, headers = 201, "Created", {"content-type": "application/json"}

        def read(self, limit: int | None = None) -> bytes:
            return b'{"expiry": "0", "sessionKey": 0}'

        def close(self) -> None:
            pass

    flow = v15_flow(sandbox, tmp_path / "stub")
    monkeypatch.setattr(flow.fw.hooks, "send", lambda request: Stub())
    flow = Flow(flow.fw)  # a client takes the transport when it is built
    with pytest.raises(ValidationError, match="sessionExchangeToken"):
        flow.client.establish_session()
