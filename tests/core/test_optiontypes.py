"""core/optiontypes.py: the shared option types' bounds and checks, decoded directly.

How their problems read in a config (where, key, expected, found, fix), for the core tables
and every built-in plugin, is in test_option_ranges.py.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from privateshare.optiontypes import (
    MAX_SECONDS,
    Attempts,
    Delay,
    Seconds,
    Workers,
    http_url_problem,
    path_problem,
)


@pytest.mark.parametrize(
    ("kind", "accepted", "refused"),
    [
        (Seconds, [0.001, MAX_SECONDS], [0, -1, MAX_SECONDS + 1, math.nan, math.inf]),
        (Delay, [0, 0.0, MAX_SECONDS], [-0.001, MAX_SECONDS + 1, math.nan]),
        (Workers, [1, 1024], [0, 1025, 2.5]),
        (Attempts, [1, 100], [0, 101, True]),
    ],
    ids=["Seconds", "Delay", "Workers", "Attempts"],
)
def test_the_bounds(kind: Any, accepted: list[Any], refused: list[Any]) -> None:
    for value in accepted:
        assert msgspec.convert(value, kind) == value
    for value in refused:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(value, kind)


def test_http_urls() -> None:
    for good in ("https://api.digi.me/v1.7/", "HTTP://127.0.0.1:8765/cb?x=1", "http://[::1]:80/"):
        assert http_url_problem(good) is None, good
    assert http_url_problem("https://h/\x7f") == "it contains whitespace or a control character"
    assert http_url_problem("https://h/a\tb") == "it contains whitespace or a control character"
    assert http_url_problem("mailto:me@h") == "its scheme is 'mailto'"
    assert http_url_problem("https://[::1/") == "it does not parse: Invalid IPv6 URL"


def test_paths() -> None:
    for good in ("contract.pem", "/etc/privateshare/k.pem", "~/k.pem", "a" * 4096):
        assert path_problem(good) is None
    pasted = "it looks like a file's content pasted in place of its path"
    assert path_problem('{"type": "service_account"}') == pasted
    assert path_problem("  {") == pasted
    assert path_problem("line one\nline two") == pasted
    assert path_problem("a\x00b") == "it contains a NUL character"
    assert path_problem("é" * 2049) == "it is longer than any path (4096 bytes)"  # bytes, not chars
