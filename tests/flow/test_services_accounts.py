"""Discovery, account management and contract details from the Python API, over real HTTP.

The sandbox answers from its own catalogue and library; the expectations below come from
that catalogue (``privateshare.sandbox.catalogue``) and from plain HTTP, not from the client.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from privateshare.client import UnsupportedCall
from privateshare.errors import ServerError, ValidationError
from privateshare.flow import Flow
from privateshare.models import ContractDetails, SourcesPage
from privateshare.sandbox import Sandbox
from privateshare.sandbox.catalogue import CATEGORIES, COUNTRIES, PLATFORMS, SOURCES

from .conftest import consent, delivered, framework_for

#: What discovery/sources lists by default: approved pull sources (the SDK's defaults).
LISTED = [s for s in SOURCES if s.type == 1 and s.status == "approved"]


def test_sources_page_through_the_whole_catalogue(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    first = fw.sources(limit=3)
    assert isinstance(first, SourcesPage)
    assert (first.limit, first.offset, first.total) == (3, 0, len(LISTED))
    assert len(first.data) == 3 and not first.last
    every = fw.all_sources()
    assert sorted(s.id for s in every) == sorted(s.id for s in LISTED)
    assert len({s.id for s in every}) == len(every)  # pages neither overlap nor skip
    paged = []
    offset = 0
    while True:
        page = fw.sources(limit=4, offset=offset)
        paged += page.data
        if page.last:
            break
        offset += len(page.data)
    assert [s.id for s in paged] == [s.id for s in every]
    # The answer round-trips as plain JSON (what a --json command prints).
    wire = first.to_dict()
    assert wire["total"] == len(LISTED) and wire["data"][0]["id"] == first.data[0].id


def test_sources_filter_by_country_category_platform_search_and_ids(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    fw = framework_for(sandbox, tmp_path)
    country = next(c for c in COUNTRIES if any(c.id in s.countries for s in LISTED))
    found = fw.all_sources(country=[country.id])
    expected = {s.id for s in LISTED if not s.countries or country.id in s.countries}
    assert {s.id for s in found} == expected
    assert all(not s.countries or country.id in {c.id for c in s.countries} for s in found)

    category = next(c for c in CATEGORIES if any(s.category == c.id for s in LISTED))
    assert {s.id for s in fw.all_sources(category=[category.id])} == {
        s.id for s in LISTED if s.category == category.id
    }
    platform = next(p for p in PLATFORMS if any(s.platform == p.id for s in LISTED))
    assert {s.id for s in fw.all_sources(platform=[platform.id])} == {
        s.id for s in LISTED if s.platform == platform.id
    }
    target = LISTED[-1]
    assert target.id in {s.id for s in fw.all_sources(search=target.name)}
    assert target.id in {s.id for s in fw.all_sources(names=[target.name])}
    only = fw.sources(ids=[target.id])
    assert [s.id for s in only.data] == [target.id] and only.total == 1
    assert only.data[0].name == target.name
    assert fw.sources(search="no-such-source-anywhere").total == 0


def test_countries_platforms_and_categories(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    assert {(c.id, c.code, c.name) for c in fw.countries()} == {
        (c.id, c.code, c.name) for c in COUNTRIES
    }
    assert {(p.id, p.name) for p in fw.platforms()} == {(p.id, p.name) for p in PLATFORMS}
    assert {(c.id, c.name, c.reference) for c in fw.categories()} == {
        (c.id, c.name, c.reference) for c in CATEGORIES
    }
    assert [c.id for c in Flow(fw).countries((COUNTRIES[0].id,))] == [COUNTRIES[0].id]


def test_bad_paging_is_refused_before_any_request(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    before = sandbox.stats()["requests"]
    with pytest.raises(ValidationError, match="at least 1"):
        fw.sources(limit=0)
    with pytest.raises(ValidationError, match="offset"):
        fw.sources(offset=-1)
    assert sandbox.stats()["requests"] == before


def test_discovery_and_account_calls_are_retried_on_transient_faults(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(
        fault_endpoints=["discovery", "service", "revoke", "contract"],
        error_rate=0.4,
        reset_rate=0.2,
        fault_seed=7,
    )
    fw = framework_for(sandbox, tmp_path, pull={"file_attempts": 8, "retry_backoff": 0.01})
    consent(fw.flow, "ivy")
    assert len(fw.all_sources()) == len(LISTED)
    assert fw.countries() and fw.platforms() and fw.categories()
    assert fw.contract().id == fw.config.digime.contract_id
    account = fw.accounts("ivy")[0]
    assert fw.revoke_url("ivy", account.id).location
    fw.delete_account("ivy", account.id)
    faulted = {entry["kind"] for entry in sandbox.fault_log()}
    assert "discovery" in faulted  # faults happened, and every call still succeeded


def test_delete_one_account(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    flow = fw.flow
    consent(flow, "amy")
    accounts = fw.accounts("amy")
    assert len(accounts) >= 2
    gone = accounts[0]
    fw.delete_account("amy", gone.id)
    assert gone.id not in {a.id for a in fw.accounts("amy")}
    # Its files leave later sessions: a pull delivers exactly what is left.
    summary = flow.pull("amy")
    assert summary.ok and delivered(tmp_path, "amy") == sandbox.ground_truth()
    with pytest.raises(ServerError) as info:
        fw.delete_account("amy", gone.id)
    assert (info.value.status_code, info.value.code) == (404, "AccountNotFound")
    before = sandbox.stats()["requests"]
    for bad in ("", "  ", "a\r\nX-Injected: 1"):
        with pytest.raises(ValidationError, match="account id"):
            fw.delete_account("amy", bad)
    assert sandbox.stats()["requests"] == before  # refused before any request


def test_revoke_url_leads_to_the_revoke_page(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    consent(fw.flow, "bea")
    account = fw.accounts("bea")[0]
    revoke = fw.revoke_url("bea", account.id)
    assert revoke.location.startswith(sandbox.onboard_url + "revoke?code=")
    assert revoke.to_dict() == {"location": revoke.location}
    assert "code=" not in repr(revoke)  # the one-time code stays out of logs
    answer = requests.get(revoke.location, allow_redirects=False, timeout=30)
    assert answer.status_code in (302, 303)
    target = urlsplit(answer.headers["Location"])
    redirect = urlsplit(fw.config.digime.redirect_uri)
    assert (target.netloc, target.path) == (redirect.netloc, redirect.path)
    assert dict(parse_qsl(target.query))["result"] == "success"
    with pytest.raises(ServerError) as info:
        fw.revoke_url("bea", account.id, redirect_uri="https://evil.example/callback")
    assert info.value.code == "InvalidRedirectUri"


def test_account_calls_refresh_the_token_once_on_a_401(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(access_token_max_uses=1)  # every token serves one request
    fw = framework_for(sandbox, tmp_path)
    consent(fw.flow, "cal")
    account = fw.accounts("cal")[0]  # the consent's token: its one use
    refreshed = sandbox.stats()["refresh"]
    assert fw.revoke_url("cal", account.id).location  # 401, refresh, repeat
    fw.delete_account("cal", account.id)  # the same once more
    assert sandbox.stats()["refresh"] == refreshed + 2
    assert account.id not in {a.id for a in fw.accounts("cal")}


def test_calls_need_a_saved_token(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path)
    with pytest.raises(Exception, match="privateshare authorize --user nobody"):
        fw.delete_account("nobody", "x")


@pytest.mark.parametrize("contract", ["ongoing", "oneoff"])
def test_contract_details(sandbox: Sandbox, tmp_path: Path, contract: str) -> None:
    fw = framework_for(sandbox, tmp_path, contract)
    details = fw.contract()
    assert isinstance(details, ContractDetails)
    assert details.id == fw.config.digime.contract_id
    assert details.application.id == fw.config.digime.application_id
    assert details.access_type == "r" and details.type == "x509"
    assert details.expiration_date > 1_700_000_000_000  # ms
    base64.b64decode(details.certificate, validate=True)
    terms = details.terms
    assert terms is not None
    assert terms.share_type == contract
    assert {g["id"] for g in terms.service_groups} == {c.id for c in CATEGORIES}
    if contract == "ongoing":
        assert terms.time_ranges == [{"type": "all"}]
    else:
        assert terms.time_ranges and "from" in terms.time_ranges[0]
    assert details.to_dict()["accessType"] == "r"


def test_v15_says_what_to_do_instead(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path, api="v1.5")
    consent(fw.flow, "dee")
    before = sandbox.stats()["requests"]
    for call, name in (
        (lambda: fw.sources(), "discovery"),
        (fw.countries, "discovery"),
        (lambda: fw.delete_account("dee", "acc"), "DELETE permission-access/service"),
        (lambda: fw.revoke_url("dee", "acc"), "permission-access/revoke"),
        (fw.contract, "permission-access/contract"),
    ):
        with pytest.raises(UnsupportedCall) as info:
            call()
        text = str(info.value)
        assert name in text and "does not exist in API v1.5" in text and ";" in text
    assert sandbox.stats()["requests"] == before


def test_consent_and_onboarding_take_a_service_from_discovery(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    fw = framework_for(sandbox, tmp_path)
    flow = fw.flow
    chosen = fw.sources(limit=1).data[0]
    pending = flow.start_consent("eli", service_id=chosen.id)
    query = dict(parse_qsl(urlsplit(pending.url).query))
    assert query["service"] == str(chosen.id) and query["sourceType"] == "pull"
    answer = requests.get(pending.url, allow_redirects=False, timeout=30)
    token, _session = flow.finish_consent(
        pending, dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    )
    assert token is not None

    # A user with a saved token adds another service; the token stays as it was.
    other = fw.sources(limit=2).data[1]
    onboarding = flow.start_onboarding("eli", service_id=other.id)
    url = urlsplit(onboarding.url)
    assert url.geturl().startswith(sandbox.onboard_url + "onboard?")
    assert dict(parse_qsl(url.query))["service"] == str(other.id)
    answer = requests.get(onboarding.url, allow_redirects=False, timeout=30)
    callback = dict(parse_qsl(urlsplit(answer.headers["Location"]).query))
    assert callback["state"] == onboarding.state and "code" not in callback
    none, session = flow.finish_consent(onboarding, callback)
    assert none is None and session.key
    assert fw.hooks.token_load("eli") == token
    summary = flow.pull("eli", session=session)  # the onboarding's session, saved token
    assert summary.ok and delivered(tmp_path, "eli") == sandbox.ground_truth()
    with pytest.raises(ValidationError, match="state"):
        flow.finish_consent(onboarding, {**callback, "state": "forged"})


def test_v15_cannot_choose_the_service(sandbox: Sandbox, tmp_path: Path) -> None:
    fw = framework_for(sandbox, tmp_path, api="v1.5")
    with pytest.raises(UnsupportedCall, match=r"digi\.me app"):
        fw.flow.start_consent("fay", service_id=1)
    consent(fw.flow, "fay")
    with pytest.raises(UnsupportedCall, match="onboarding another service"):
        fw.flow.start_onboarding("fay", service_id=1)
