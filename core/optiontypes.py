"""The annotated option types every config table shares (core tables, plugins, scale-out).

Kept apart from :mod:`privateshare.config` so that modules the config reader itself
imports (``privateshare.scale.settings``) can use them without an import cycle.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

# Options use these (or their own ``msgspec.Meta`` constraints) so that a bad value is a
# config error where the table is decoded, found by ``privateshare config check``, never a
# traceback at run time. ``Meta(extra={"check": ...})`` adds a check msgspec cannot express.

#: The longest duration any option accepts (30 days): a finite, generous upper bound.
MAX_SECONDS = 30 * 86400

#: A duration in seconds: more than 0, at most 30 days (``nan`` and ``inf`` are refused).
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
#: A pause in seconds that may be 0 (back-off delays).
Delay = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
#: A number of workers or connections.
Workers = Annotated[int, msgspec.Meta(ge=1, le=1024)]
#: A number of attempts, the first included.
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]


def http_url_problem(value: str) -> str | None:
    """What keeps ``value`` from being an http(s) URL with a host and no fragment, if anything."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return "it contains whitespace or a control character"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"it does not parse: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    if parts.fragment or value.endswith("#"):
        return f"it has the fragment '#{parts.fragment}'"
    return None


def path_problem(value: str) -> str | None:
    """Why ``value`` is not a path (a key or blob pasted in its place), if it is not."""
    if "-----BEGIN" in value or "\n" in value or value.lstrip().startswith("{"):
        return "it looks like a file's content pasted in place of its path"
    if "\x00" in value:
        return "it contains a NUL character"
    if len(value.encode("utf-8", "surrogatepass")) > 4096:
        return "it is longer than any path (4096 bytes)"
    return None


#: A file or directory path (relative paths are resolved against the config's directory).
PathOption = Annotated[
    str,
    msgspec.Meta(min_length=1, extra={"check": path_problem, "expected": "a path"}),
]

#: An http:// or https:// URL with a host and no ``#fragment``.
HttpUrl = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={"format": "uri"},
        extra={
            "check": http_url_problem,
            "expected": "an http:// or https:// URL with a host and no #fragment",
        },
    ),
]
