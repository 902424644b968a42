"""The protocol reference users have: every citation names a section of docs/protocol.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITING = ("core", "plugins", "docs", "tests", "contrib", "benchmarks")


def _anchors() -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def _sources() -> list[Path]:
    files: list[Path] = []
    for top in CITING:
        files += [p for p in (ROOT / top).rglob("*") if p.suffix in (".py", ".md")]
    return [p for p in files if p.name != Path(__file__).name]


def test_every_cited_section_exists() -> None:
    anchors = _anchors()
    assert {"signing", "errors", "discovery", "account-management"} <= anchors
    broken = [
        f"{path.relative_to(ROOT)}: #{anchor}"
        for path in _sources()
        for anchor in re.findall(r"protocol\.md#([a-z0-9-]+)", path.read_text(encoding="utf-8"))
        if anchor not in anchors
    ]
    assert not broken, f"citations of sections docs/protocol.md does not have: {broken}"


def test_nothing_cites_a_file_users_do_not_have() -> None:
    outside = [
        str(path.relative_to(ROOT))
        for path in _sources()
        if re.search(r"PROTOCOL\.md|§[AB]\d", path.read_text(encoding="utf-8"))
    ]
    assert not outside, f"cite docs/protocol.md sections instead of PROTOCOL.md in: {outside}"
