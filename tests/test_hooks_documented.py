"""Every hook is documented in docs/hooks.md and exercised by some test (after datasette)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from privateshare.hooks import specs as hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("privateshare_")
)
DOC = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
TEST_SOURCES = {
    path: path.read_text(encoding="utf-8")
    for path in (ROOT / "tests").rglob("test_*.py")
    if path.name != Path(__file__).name
}


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 19


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    assert re.search(rf"^### {hook}$", DOC, re.M), f"{hook} has no section in docs/hooks.md"
    signature = inspect.signature(getattr(hookspecs, hook))
    for param in signature.parameters:
        assert f"{param}:" in DOC.split(f"### {hook}")[1].split("###")[0], (
            f"docs/hooks.md does not show parameter {param!r} of {hook}"
        )


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    users = [p.name for p, text in TEST_SOURCES.items() if hook in text]
    assert users, f"no test mentions {hook}; add one that exercises it"


def test_docstrings_follow_the_template() -> None:
    for hook in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
        assert ":result:" in doc and ":called:" in doc, f"{hook} docstring misses the template"


def test_no_documented_hook_is_missing_from_the_specs() -> None:
    documented = set(re.findall(r"^### (privateshare_\w+)$", DOC, re.M))
    assert documented == set(HOOKS)
