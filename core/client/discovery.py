"""Service discovery (protocol.md#discovery): which sources a user can onboard.

Application-level calls (no user token). They are ``POST``s that only read, so both
the transport and the client repeat them on transient faults, as the official SDK does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from ..errors import ValidationError
from ..models import Category, Country, Platform, Source, SourceQuery, SourcesPage
from .wire import Wire

T = TypeVar("T")

#: The lists that filter sources, by path, and what each entry is.
LISTS: dict[str, type[Any]] = {
    "countries": Country,
    "platforms": Platform,
    "categories": Category,
}


class Discovery:
    """``POST discovery/sources`` and the three lists, over ``wire``."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self.wire.retry.call(
            lambda: self.wire.json(
                "POST",
                path,
                {},
                json=body,
                headers={"accept": "application/json", "content-type": "application/json"},
                retry=True,
            ),
            path,
        )

    def sources(self, query: SourceQuery | None = None) -> SourcesPage:
        """One page of the sources that match ``query`` (default: every approved pull source)."""
        query = query or SourceQuery()
        if query.limit is not None and query.limit < 1:
            raise ValidationError(f"the page size (limit) must be at least 1, got {query.limit}")
        if query.offset < 0:
            raise ValidationError(f"the offset must be 0 or more, got {query.offset}")
        answer = self._post("discovery/sources", query.body())
        page: SourcesPage = _convert(answer, SourcesPage, "discovery/sources")
        return page

    def all_sources(self, query: SourceQuery | None = None) -> Iterator[Source]:
        """Every source that matches ``query``, page after page from ``query.offset``."""
        query = query or SourceQuery()
        while True:
            page = self.sources(query)
            yield from page.data
            if page.last:
                return
            query = msgspec.structs.replace(query, offset=page.offset + len(page.data))

    def listing(self, kind: str, ids: Sequence[int] = ()) -> list[Any]:
        """``POST discovery/{countries,platforms,categories}``, all or the given ``ids``."""
        model = LISTS[kind]
        query: dict[str, Any] = {"filter": {"id": list(ids)}} if ids else {}
        answer = self._post(f"discovery/{kind}", {"query": query})
        data = answer.get("data") if isinstance(answer, dict) else None
        rows: list[Any] = _convert(data, list[model], f"discovery/{kind}")  # type: ignore[valid-type]
        return rows


def _convert(value: Any, kind: Any, what: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise ValidationError(
            f"{what}: the answer does not have the expected shape: {exc}"
        ) from None
