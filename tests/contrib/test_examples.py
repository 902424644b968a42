"""The custom-hook examples, in a real flow: as a config module and as an installed plugin."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from privateshare.flow import Flow
from privateshare.testing.sandboxed import consent, sandbox_framework

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def expected_counts(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Objects per type (from the delivered JSON itself) and raw files per mimetype."""
    objects: dict[str, int] = {}
    raw: dict[str, int] = {}
    for meta_file in folder.glob("*.metadata.json"):
        meta = json.loads(meta_file.read_text())
        mimetype = meta["metadata"].get("mimetype")
        if mimetype:
            raw[mimetype] = raw.get(mimetype, 0) + 1
        else:
            kind = meta["metadata"]["objectType"]
            count = len(json.loads((folder / meta["name"]).read_bytes()))
            objects[kind] = objects.get(kind, 0) + count
    return objects, raw


def pull_and_read_report(
    start: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **tables: Any
) -> tuple[dict[str, Any], Any]:
    reports = tmp_path / "counts"
    monkeypatch.setenv("PRIVATESHARE_COUNTS_DIR", str(reports))
    sandbox = start(files=20)
    fw = sandbox_framework(sandbox, tmp_path, **tables)
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    report = json.loads((reports / "alice.json").read_text())
    assert report["run_id"] == summary.run_id
    assert report["files_delivered"] == summary.files_delivered == 20
    assert sorted(p.name for p in reports.iterdir()) == ["alice.json"]  # no temp file left
    return report, fw


def test_hook_module_from_config(
    on_path: Callable[..., None],
    privateshare_sandbox: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_path(EXAMPLES, "counting_hooks")  # what PYTHONPATH=examples does
    report, fw = pull_and_read_report(
        privateshare_sandbox,
        tmp_path,
        monkeypatch,
        plugins={"modules": ["counting_hooks"], "strict": True},
    )
    assert fw.pm.has_plugin("module:counting_hooks")
    objects, raw = expected_counts(tmp_path / "data" / "alice")
    assert report["objects"] == objects and report["raw_files"] == raw
    assert sum(objects.values()) > 20 and raw


def test_packaged_hook_plugin_through_its_entry_point(
    counting_site: Path,
    on_path: Callable[..., None],
    privateshare_sandbox: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_path(counting_site, "privateshare_counting")
    report, fw = pull_and_read_report(
        privateshare_sandbox, tmp_path, monkeypatch, plugins={"strict": True}
    )
    assert fw.pm.has_plugin("entry:counting")  # no config: installing it was enough
    objects, raw = expected_counts(tmp_path / "data" / "alice")
    assert report["objects"] == objects and report["raw_files"] == raw


def test_packaged_hook_plugin_can_be_disabled(
    counting_site: Path, on_path: Callable[..., None], privateshare_factory: Any
) -> None:
    on_path(counting_site, "privateshare_counting")
    assert privateshare_factory().pm.has_plugin("entry:counting")
    fw = privateshare_factory('[plugins]\ndisable = ["counting"]\n')
    assert not fw.pm.has_plugin("entry:counting")
