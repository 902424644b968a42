"""The request and response objects passed between the HTTP plumbing and the app."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .faults import NO_FAULTS, Faults


@dataclass(frozen=True)
class Request:
    """One HTTP request, already read off the socket."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        """The first value of a query (or form) parameter."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    """One HTTP response; ``body`` may be a stream of chunks with a known ``length``."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""
    length: int | None = None
    faults: Faults = NO_FAULTS
    corrupt_from: int = 0  # byte offset where corruption may start (after the file header)
    hold: bool = False  # answer only if the client is still there after 120 s (``hold_jwks``)

    @property
    def content_length(self) -> int:
        """The Content-Length to announce."""
        if self.length is not None:
            return self.length
        if isinstance(self.body, bytes):
            return len(self.body)
        raise ValueError("a streamed response needs a length")


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", "application/json; charset=utf-8"), *headers], body)


def error_response(error: ApiError) -> Response:
    """The standard error body plus the ``X-Error-*`` headers."""
    return json_response(error.status, error.body(), error.headers())
