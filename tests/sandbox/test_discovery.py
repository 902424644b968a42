"""Discovery: ``POST discovery/{sources,countries,platforms,categories}``, ``discovery/services``.

Shapes are checked against what the official SDKs validate: Node 16's codecs
(``{data, limit, offset, total}``, each source ``{id, name?, resource?, service?:
{id, ...}, publishedStatus?, json?: {authorisation?: {type?}}}``) and the iOS SDK's
decoder (``category`` and ``type`` arrays, ``service.publishedStatus``,
``resource.url``).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from privateshare.sandbox import Sandbox

from .conftest import RawClient
from .test_oauth import assert_error

STATUSES = {"approved", "pending", "deprecated", "blocked", "sampledataonly"}


def sources(client: RawClient, body: dict[str, Any] | None = None) -> requests.Response:
    return client.call("POST", "discovery/sources", {}, json_body=body)


def all_sources(client: RawClient, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every page of a query, following ``total``."""
    body = dict(body or {})
    found: list[dict[str, Any]] = []
    while True:
        r = sources(client, {**body, "offset": len(found), "limit": 7})
        assert r.status_code == 200, r.text
        page = r.json()
        found += page["data"]
        if len(found) >= page["total"] or not page["data"]:
            assert len(found) == page["total"]
            return found


def assert_sdk_source_shape(source: dict[str, Any]) -> None:
    assert isinstance(source["id"], int) and isinstance(source["name"], str)
    assert source["publishedStatus"] in STATUSES
    assert isinstance(source["resource"]["url"], str) and source["resource"]["mimetype"]
    service = source["service"]
    assert isinstance(service["id"], int) and service["publishedStatus"] in STATUSES
    assert source["json"]["authorisation"]["type"] in ("saas", "sdk", "none")
    for key in ("category", "type", "country", "platform"):
        assert isinstance(source[key], list)
        assert all(isinstance(item["id"], int) for item in source[key])
    assert len(source["category"]) == 1 and len(source["type"]) == 1


def test_sources_default_page_and_shape(client: RawClient) -> None:
    r = sources(client)
    assert r.status_code == 200, r.text
    page = r.json()
    assert set(page) == {"data", "limit", "offset", "total"}
    assert (page["limit"], page["offset"]) == (20, 0) and len(page["data"]) == 20
    # The defaults the SDK documents: pull sources that are approved.
    assert page["total"] == len(all_sources(client))
    for source in all_sources(client):
        assert_sdk_source_shape(source)
        assert source["publishedStatus"] == "approved"
        assert source["type"] == [{"id": 1, "name": "Pull", "reference": "pull"}]
    names = [s["name"].casefold() for s in page["data"]]
    assert names == sorted(names)


def test_catalogue_matches_the_library_accounts(sandbox: Sandbox, client: RawClient) -> None:
    """Every account's source is in the catalogue with the same ids, names and group."""
    by_id = {s["id"]: s for s in all_sources(client)}
    categories = {c["id"]: c for c in discovery_list(client, "categories")}
    assert len(sandbox.library.accounts) == 7
    for account in sandbox.library.accounts:
        source = by_id[account["sourceId"]]
        assert source["service"]["id"] == account["serviceTypeId"]
        assert source["service"]["name"] == account["serviceTypeName"]
        assert source["service"]["reference"] == account["serviceTypeReference"]
        assert source["category"][0]["id"] == account["serviceGroupId"]
        assert categories[account["serviceGroupId"]]["name"] == account["serviceGroupName"]
        assert account["id"].startswith(f"{account['serviceTypeId']}_")
        assert source["onboardable"] is True


def test_paging_is_stable_and_complete(client: RawClient) -> None:
    whole = sources(client, {"limit": 100}).json()
    assert whole["limit"] == 100 and len(whole["data"]) == whole["total"] > 25
    paged = all_sources(client)
    assert [s["id"] for s in paged] == [s["id"] for s in whole["data"]]
    last = sources(client, {"offset": whole["total"] - 2, "limit": 5}).json()
    assert len(last["data"]) == 2 and last["offset"] == whole["total"] - 2
    beyond = sources(client, {"offset": 10_000}).json()
    assert beyond["data"] == [] and beyond["total"] == whole["total"]
    # A limit over the maximum is clamped, and the answer says so.
    assert sources(client, {"limit": 5000}).json()["limit"] == 100
    desc = sources(client, {"limit": 100, "sort": {"name": "desc"}}).json()["data"]
    assert [s["id"] for s in desc] == [s["id"] for s in reversed(whole["data"])]


def ids(client: RawClient, query: dict[str, Any]) -> set[int]:
    return {s["id"] for s in all_sources(client, {"query": query})}


def test_filters(client: RawClient) -> None:
    every = {s["id"]: s for s in all_sources(client)}
    finance = ids(client, {"filter": {"category": {"id": [3]}}})
    assert finance == {i for i, s in every.items() if s["category"][0]["id"] == 3}
    assert {6001, 6002, 6003, 6101} <= finance and 1 not in finance
    # Country: country-specific sources of that country, plus those available everywhere.
    us = ids(client, {"filter": {"country": {"id": [1]}}})
    assert 6101 in us and 6001 not in us and 1 in us and 401 in us and 501 not in us
    nl = ids(client, {"filter": {"country": {"id": [10]}, "category": {"id": [2]}}})
    assert nl == {501, 502, 503}
    # One service, many sources (a patient portal and its providers).
    assert ids(client, {"filter": {"service": {"id": [20]}}}) == {401, 402, 403}
    assert ids(client, {"filter": {"platform": {"id": [7, 8]}}}) == {12, 13}
    assert ids(client, {"filter": {"id": [1, 19, 99999]}}) == {1, 19}
    assert ids(client, {"filter": {"sourceId": 301}}) == {301}
    assert ids(client, {"filter": {"reference": ["spotify", "monzo"]}}) == {19, 6001}
    assert ids(client, {"filter": {"alias": ["twitter"]}}) == {2}
    # Status and type defaults can be widened.
    assert ids(client, {"filter": {"publishedStatus": ["deprecated"]}}) == {3}
    statuses = {"filter": {"publishedStatus": sorted(STATUSES)}}
    wider = all_sources(client, {"query": statuses})
    assert {s["publishedStatus"] for s in wider} == STATUSES
    assert ids(client, {"filter": {"type": {"id": [2]}}}) == {901, 902}
    both = ids(client, {"filter": {"type": {"id": [1, 2]}}})
    assert both == set(every) | {901, 902}


def test_search_and_query_string(client: RawClient) -> None:
    assert ids(client, {"search": {"name": ["bank"]}}) == {6005, 6102}  # case-insensitive
    assert ids(client, {"search": {"name": ["spot", "netf"]}}) == {19, 24}  # any term
    assert ids(client, {"search": {"name": ["US - "], "address.city": ["boston"]}}) == {403}
    assert ids(client, {"search": {"abbreviation": ["bofa"]}}) == {6102}
    assert ids(client, {"search": {"practitioner": ["de vries"]}}) == {501}
    assert ids(client, {"search": {"medicalCenter": ["rijnstate"]}}) == {502}
    assert ids(client, {"search": {"address.zipCode": ["1012"]}}) == {503}
    assert ids(client, {"queryString": "openepic geisinger"}) == {402}
    assert ids(client, {"queryString": "Twitter"}) == {2}
    assert ids(client, {"queryString": "no such thing"}) == set()


def test_include_projects_fields(client: RawClient) -> None:
    body = {"limit": 100, "query": {"include": ["name", "category.name", "service.id", "nope"]}}
    data = sources(client, body).json()["data"]
    for source in data:
        assert set(source) == {"id", "name", "category", "service"}
        assert set(source["category"][0]) == {"name"} and set(source["service"]) == {"id"}
    odd = {"query": {"include": ["alias.x", "json.nope"], "filter": {"id": [2]}}}
    assert sources(client, odd).json()["data"] == [{"id": 2}]
    whole = sources(client, {"limit": 100, "query": {"include": ["country"]}}).json()["data"]
    assert any(s["country"] and set(s["country"][0]) == {"id", "code", "name"} for s in whole)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"offset": -1}, "offset"),
        ({"sort": {"name": "up"}}, "sort.name"),
        ({"sort": {"date": "asc"}}, "sort"),
        ({"query": []}, "query"),
        ({"query": {"filter": {"country": {"id": ["uk"]}}}}, "query.filter.country.id"),
        ({"query": {"filter": {"country": [3]}}}, "query.filter.country"),
        ({"query": {"filter": {"publishedStatus": ["live"]}}}, "query.filter.publishedStatus"),
        ({"query": {"filter": {"colour": "red"}}}, "query.filter"),
        ({"query": {"search": {"name": "spotify"}}}, "query.search.name"),
        ({"query": {"search": {"city": ["x"]}}}, "query.search"),
        ({"query": {"queryString": 5}}, "query.queryString"),
        ({"query": {"include": "name"}}, "query.include"),
        ({"page": 2}, "the body"),
    ],
)
def test_bad_query_is_a_400_naming_the_field(
    client: RawClient, body: dict[str, Any], field: str
) -> None:
    error = assert_error(sources(client, body), 400, "ValidationErrors")
    assert field in error["message"], error["message"]


def discovery_list(client: RawClient, kind: str, body: Any = None) -> list[dict[str, Any]]:
    r = client.call("POST", f"discovery/{kind}", {}, json_body=body)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"data"}
    return r.json()["data"]


def test_countries_platforms_categories(client: RawClient) -> None:
    countries = discovery_list(client, "countries")
    uk = next(c for c in countries if c["id"] == 3)
    assert (uk["code"], uk["name"]) == ("uk", "United Kingdom")
    assert all(isinstance(c["id"], int) and c["code"] and c["resource"]["url"] for c in countries)
    categories = discovery_list(client, "categories")
    assert [c["name"] for c in categories] == [
        "Social",
        "Health",
        "Finance",
        "Fitness",
        "Music",
        "Entertainment",
    ]
    assert all(c["categoryTypeId"] == 1 and c["title"] and c["subTitle"] for c in categories)
    platforms = discovery_list(client, "platforms")
    assert {p["json"]["authorisation"]["type"] for p in platforms} == {"saas", "sdk", "none"}
    # Every id a source names is in its list, so the lists can drive the filters.
    every = all_sources(
        client, {"query": {"filter": {"type": {"id": [1, 2]}, "publishedStatus": sorted(STATUSES)}}}
    )
    for key, listed in (("country", countries), ("category", categories), ("platform", platforms)):
        known = {item["id"] for item in listed}
        assert {item["id"] for s in every for item in s[key]} <= known
    # Filter and include, as the SDK's body params allow; no body at all is fine too.
    two = discovery_list(client, "countries", {"query": {"filter": {"id": [3, 10]}}})
    assert [c["code"] for c in two] == ["uk", "nl"]
    slim = discovery_list(client, "categories", {"query": {"include": ["name"]}})
    assert all(set(c) == {"id", "name"} for c in slim)
    r = client.call("POST", "discovery/platforms", {}, data=b"")
    assert r.status_code == 200 and len(r.json()["data"]) == len(platforms)
    r = client.call("POST", "discovery/countries", {}, json_body={"query": {"filter": {"id": 3}}})
    assert_error(r, 400, "ValidationErrors")


def test_discovery_needs_no_user_token_but_a_valid_jwt(client: RawClient) -> None:
    # An application-level JWT: client_id, nonce, timestamp; no access_token needed.
    assert sources(client).status_code == 200
    r = client.call("POST", "discovery/sources", headers={"Content-Type": "application/json"})
    assert_error(r, 406, "ValidationErrors")
    # The one-off contract may query too.
    assert sources(RawClient(client.sandbox, "oneoff"), {"limit": 1}).status_code == 200


def test_older_discovery_services(sandbox: Sandbox, client: RawClient) -> None:
    """``GET discovery/services`` (no Authorization) on v1.7 and v1.5, as Android and iOS do."""
    for base in (sandbox.base_url, sandbox.base_url_v15 + "/"):
        r = client.http.get(base + "discovery/services", timeout=30)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert set(data) == {"countries", "serviceGroups", "services"}
        services = {s["id"]: s for s in data["services"]}
        assert {1, 4, 19, 7, 301, 6001, 6002, 3} <= set(services)  # deprecated ones stay
        assert 6999 not in services and 23 not in services and 901 not in services
        for s in services.values():  # Node 5-12's codec
            assert isinstance(s["name"], str) and isinstance(s["publishedDate"], int)
            assert s["serviceGroups"] and isinstance(s["resources"][0]["type"], int)
            assert s["resources"][0]["url"] and s["resources"][0]["mimetype"]
        assert services[301]["serviceId"] == 301 and services[301]["countries"] == [{"id": 3}]
        assert all({"id", "code", "name"} <= set(c) for c in data["countries"])
        assert {g["id"] for g in data["serviceGroups"]} == {1, 2, 3, 4, 5, 6}
    sample = client.http.get(
        sandbox.base_url + "discovery/services?includeSampleDataOnlySources=true", timeout=30
    )
    assert 6999 in {s["id"] for s in sample.json()["data"]["services"]}
    mine = client.http.get(
        sandbox.base_url + "discovery/services",
        headers={"contractId": sandbox.contract().contract_id},
        timeout=30,
    )
    assert mine.status_code == 200
    r = client.http.get(
        sandbox.base_url + "discovery/services", headers={"contractId": "nope"}, timeout=30
    )
    assert_error(r, 404, "InvalidContractId")
