"""The discovery queries: which sources can be onboarded, and the lists that filter them.

``POST discovery/sources`` takes ``{limit, offset, sort, query: {search,
queryString, include, filter}}`` and answers ``{data, limit, offset, total}``;
``discovery/countries``, ``platforms`` and ``categories`` take ``{query:
{include, filter: {id}}}`` and answer ``{data}``. Every malformed field is a 400
``ValidationErrors`` naming it; an unknown ``include`` name is ignored (the
official SDK types allow any string there).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from . import errors
from .catalogue import (
    CATEGORIES,
    COUNTRIES,
    PLATFORMS,
    SOURCES,
    Category,
    Country,
    Platform,
    Source,
    service_v1,
    source_wire,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
STATUSES = ("approved", "pending", "deprecated", "blocked", "sampledataonly")
#: What an absent ``filter.type`` / ``filter.publishedStatus`` means (as the SDK documents).
DEFAULT_TYPES = (1,)
DEFAULT_STATUSES = ("approved",)
SEARCH_KEYS = (
    "name",
    "abbreviation",
    "alias",
    "medicalCenter",
    "practitioner",
    "address.city",
    "address.zipCode",
)
_ID_FILTERS = ("service", "country", "category", "platform", "type")


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.validation(f"{where} must be an object")
    return value


def _keys(value: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise errors.validation(f"{where} has unknown field(s) {unknown}; use {sorted(allowed)}")


def _list(value: Any, kind: type, where: str) -> list[Any]:
    ok = isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise errors.validation(f"{where} must be an array of {kind.__name__}s")
    items: list[Any] = value
    return items


def _ids(value: Any, where: str) -> set[int]:
    """``{id: [1, 2]}`` -> ``{1, 2}``."""
    value = _object(value, where)
    _keys(value, ("id",), where)
    return set(_list(value.get("id", []), int, where + ".id"))


def _include(query: dict[str, Any], where: str) -> list[str]:
    return _list(query.get("include", []), str, where + ".include")


def _project(item: dict[str, Any], include: list[str]) -> dict[str, Any]:
    """Keep the fields ``include`` names (``"a"`` or ``"a.b"``); ``id`` always stays."""
    if not include:
        return item
    out: dict[str, Any] = {"id": item["id"]}
    for path in include:
        head, _, tail = path.partition(".")
        if head not in item:
            continue
        value = item[head]
        if not tail or not isinstance(value, dict | list):
            out[head] = copy.deepcopy(value)
            continue
        if isinstance(value, dict):
            if tail in value:
                out.setdefault(head, {})[tail] = copy.deepcopy(value[tail])
            continue
        if not all(isinstance(element, dict) for element in value):
            continue  # "alias.x": a list of strings has no sub-fields
        kept = out.setdefault(head, [{} for _ in value])
        for target, element in zip(kept, value, strict=True):
            if isinstance(element, dict) and tail in element:
                target[tail] = copy.deepcopy(element[tail])
    return out


def simple_query(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST discovery/{countries,platforms,categories}``: ``{data: [...]}``."""
    tables: dict[str, tuple[Country, ...] | tuple[Platform, ...] | tuple[Category, ...]] = {
        "countries": COUNTRIES,
        "platforms": PLATFORMS,
        "categories": CATEGORIES,
    }
    rows = tables[kind]
    _keys(body, ("query",), "the body")
    query = _object(body.get("query"), "query")
    _keys(query, ("include", "filter"), "query")
    include = _include(query, "query")
    wanted = _ids(query.get("filter"), "query.filter")
    data = [_project(r.wire(), include) for r in rows if not wanted or r.id in wanted]
    return {"data": data}


def _text_of(wire: dict[str, Any], key: str) -> list[str]:
    """The strings a search key looks at in one source."""
    head, _, tail = key.partition(".")
    value = wire.get(head)
    if tail:
        value = value.get(tail) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _matches_search(wire: dict[str, Any], search: dict[str, list[str]]) -> bool:
    """Every given key matches (AND); a key matches when any term is a substring (OR)."""
    for key, terms in search.items():
        texts = [t.casefold() for t in _text_of(wire, key)]
        if not any(term.casefold() in text for term in terms for text in texts):
            return False
    return True


def _matches_text(wire: dict[str, Any], query_string: str) -> bool:
    """Free text: every word is somewhere in the source's names, aliases, places."""
    keys = ("name", "reference", *SEARCH_KEYS[1:])
    texts = [t.casefold() for key in keys for t in _text_of(wire, key)]
    texts.append(str(wire["service"]["name"]).casefold())
    return all(any(word in text for text in texts) for word in query_string.casefold().split())


def _number(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.validation(f"{name} must be a whole number")
    if value < minimum:
        raise errors.validation(f"{name} must be at least {minimum}, got {value}")
    return value


def _source_filter(filters: dict[str, Any]) -> Callable[[Source], bool]:
    """The predicate of ``query.filter`` (with the SDK's defaults for type and status)."""
    allowed = ("id", "publishedStatus", *_ID_FILTERS, "sourceId", "reference", "alias")
    _keys(filters, allowed, "query.filter")
    ids = set(_list(filters.get("id", []), int, "query.filter.id"))
    source_id = filters.get("sourceId")
    if source_id is not None:
        if isinstance(source_id, bool) or not isinstance(source_id, int):
            raise errors.validation("query.filter.sourceId must be a number")
        ids = ids & {source_id} if ids else {source_id}
    statuses = filters.get("publishedStatus", list(DEFAULT_STATUSES))
    statuses = set(_list(statuses, str, "query.filter.publishedStatus"))
    if statuses - set(STATUSES):
        raise errors.validation(
            f"query.filter.publishedStatus must be among {list(STATUSES)}, "
            f"got {sorted(statuses - set(STATUSES))}"
        )
    by = {name: _ids(filters.get(name), f"query.filter.{name}") for name in _ID_FILTERS}
    if "type" not in filters:
        by["type"] = set(DEFAULT_TYPES)
    references = set(_list(filters.get("reference", []), str, "query.filter.reference"))
    aliases = {a.casefold() for a in _list(filters.get("alias", []), str, "query.filter.alias")}

    def keep(s: Source) -> bool:
        countries = set(s.countries)
        return (
            (not ids or s.id in ids)
            and s.status in statuses
            and (not by["service"] or s.service_id in by["service"])
            # A source with no country list is available in every country.
            and (not by["country"] or not countries or bool(countries & by["country"]))
            and (not by["category"] or s.category in by["category"])
            and (not by["platform"] or s.platform in by["platform"])
            and (not by["type"] or s.type in by["type"])
            and (not references or s.reference in references)
            and (not aliases or bool({a.casefold() for a in s.search.get("alias", ())} & aliases))
        )

    return keep


def query_sources(body: dict[str, Any]) -> dict[str, Any]:
    """``POST discovery/sources``: filter, search, sort, page, project."""
    _keys(body, ("limit", "offset", "sort", "query"), "the body")
    limit = min(_number(body, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
    offset = _number(body, "offset", 0, 0)
    sort = _object(body.get("sort"), "sort")
    _keys(sort, ("name",), "sort")
    order = sort.get("name", "asc")
    if order not in ("asc", "desc"):
        raise errors.validation("sort.name must be 'asc' or 'desc'")
    query = _object(body.get("query"), "query")
    _keys(query, ("search", "queryString", "include", "filter"), "query")
    include = _include(query, "query")
    search = _object(query.get("search"), "query.search")
    _keys(search, SEARCH_KEYS, "query.search")
    terms = {k: _list(v, str, f"query.search.{k}") for k, v in search.items()}
    query_string = query.get("queryString", "")
    if not isinstance(query_string, str):
        raise errors.validation("query.queryString must be a string")
    keep = _source_filter(_object(query.get("filter"), "query.filter"))

    found = []
    for source in SOURCES:
        if not keep(source):
            continue
        wire = source_wire(source)
        if _matches_search(wire, terms) and _matches_text(wire, query_string):
            found.append(wire)
    found.sort(key=lambda w: (w["name"].casefold(), w["id"]), reverse=order == "desc")
    page = found[offset : offset + limit]
    return {
        "data": [_project(w, include) for w in page],
        "limit": limit,
        "offset": offset,
        "total": len(found),
    }


def services_v1(*, include_sample: bool) -> dict[str, Any]:
    """``GET discovery/services``: ``{data: {countries, serviceGroups, services}}``.

    Pull sources that are approved or deprecated (and sample-only ones when asked).
    """
    statuses = {"approved", "deprecated"} | ({"sampledataonly"} if include_sample else set())
    listed = [s for s in SOURCES if s.type == 1 and s.status in statuses]
    groups = {s.category for s in listed}
    countries = {c for s in listed for c in s.countries}
    return {
        "data": {
            "countries": [
                {"id": c.id, "code": c.code, "name": c.name, "resources": [c.wire()["resource"]]}
                for c in COUNTRIES
                if c.id in countries
            ],
            "serviceGroups": [
                {k: v for k, v in c.wire().items() if k != "resource"}
                for c in CATEGORIES
                if c.id in groups
            ],
            "services": [service_v1(s) for s in listed],
        }
    }
