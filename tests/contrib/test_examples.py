"""The custom-hook examples, in a real flow: as a config module and as an installed plugin."""

from __future__ import annotations

import hashlib
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


def test_redacting_transform_from_config(
    on_path: Callable[..., None],
    privateshare_sandbox: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_path(EXAMPLES, "redact_hooks")
    monkeypatch.setenv("PRIVATESHARE_REDACT_FIELDS", "personusername,owner,location")
    sandbox = privateshare_sandbox(files=20)
    fw = sandbox_framework(sandbox, tmp_path, plugins={"modules": ["redact_hooks"], "strict": True})
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    folder = tmp_path / "data" / "alice"
    truth = sandbox.ground_truth()
    seen_fields: set[str] = set()
    for library_file in sandbox.library.files:
        delivered = (folder / library_file.name).read_bytes()
        if library_file.latest.x_metadata["metadata"].get("mimetype"):
            assert hashlib.sha256(delivered).hexdigest() == truth[library_file.name]
            continue
        original = json.loads(b"".join(library_file.latest.iter_plaintext()))
        objects = json.loads(delivered)
        assert len(objects) == len(original)  # objects kept, fields removed
        for before, after in zip(original, objects, strict=True):
            seen_fields |= set(before) & {"personusername", "owner", "location"}
            assert set(after) == set(before) - {"personusername", "owner", "location"}
    assert seen_fields == {"personusername", "owner", "location"}  # the test had work to do
