"""Per-sink delivery state against the sandbox over real HTTP: backfill, removal,
rename, ``--full``, ``--since`` and the migration of per-user checkpoints."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from privateshare.cli import main
from privateshare.flow import Flow
from privateshare.plugins.tokenseal import CheckpointRecord
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import dump_toml, sandbox_config, sha256_tree

from .conftest import consent, framework_for


def sinks(root: Path, *names: str) -> dict[str, dict[str, str]]:
    return {name: {"type": "file", "root": str(root / name)} for name in names}


def tree(root: Path, sink: str, user: str) -> dict[str, str]:
    return sha256_tree(root / sink / user)


def downloads(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["file_downloads"])


def test_an_added_sink_is_backfilled_downloading_each_file_once(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    truth = sandbox.ground_truth()
    flow = Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a")))
    consent(flow, "ann")
    first = flow.pull("ann")
    assert first.files_delivered == len(truth) and first.sinks_delivered == {"sinks.a": len(truth)}
    assert first.sinks_backfilled == [] and first.notes == []
    a_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "ann").iterdir()}

    both = Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b")))
    before = downloads(sandbox)
    second = both.pull("ann")
    assert downloads(sandbox) - before == len(truth)  # each file downloaded once
    assert second.files_delivered == len(truth)
    assert second.sinks_delivered == {"sinks.b": len(truth)}  # and only to the sink lacking it
    assert second.sinks_backfilled == ["sinks.b"]
    assert any("backfilled" in note and "renamed" in note for note in second.notes)
    assert tree(tmp_path, "b", "ann") == truth
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "ann").iterdir()} == a_before

    third = both.pull("ann")
    assert third.files_delivered == 0 and third.files_skipped == len(truth)
    assert third.notes == []
    state = both.fw.hooks.checkpoint_load("ann")
    assert set(state) == {"sinks.a", "sinks.b"} and len(state["sinks.b"]) == len(truth)


def test_a_removed_sink_is_forgotten_and_a_renamed_one_backfilled(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    truth = sandbox.ground_truth()
    flow = Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b")))
    consent(flow, "bo")
    assert flow.pull("bo").sinks_delivered == {"sinks.a": len(truth), "sinks.b": len(truth)}

    only_a = Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a")))
    removed = only_a.pull("bo")
    assert removed.files_delivered == 0
    assert any("no longer configured" in note and "sinks.b" in note for note in removed.notes)
    assert set(only_a.fw.hooks.checkpoint_load("bo")) == {"sinks.a"}

    # "b" renamed to "c" (same directory): a new sink, so it is backfilled, and said so.
    renamed = {"a": sinks(tmp_path, "a")["a"], "c": {"type": "file", "root": str(tmp_path / "b")}}
    again = Flow(framework_for(sandbox, tmp_path, sinks=renamed)).pull("bo")
    assert again.sinks_delivered == {"sinks.c": len(truth)} and again.sinks_backfilled == [
        "sinks.c"
    ]
    assert tree(tmp_path, "b", "bo") == truth


def test_full_redelivers_and_since_limits_by_updated_date(sandbox: Sandbox, tmp_path: Path) -> None:
    truth = sandbox.ground_truth()
    fw = framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b"))
    flow = Flow(fw)
    consent(flow, "cy")
    flow.pull("cy")
    full = flow.pull("cy", full=True)
    assert full.files_delivered == len(truth)
    assert full.sinks_delivered == {"sinks.a": len(truth), "sinks.b": len(truth)}
    future = int((time.time() + 86_400) * 1000)
    assert flow.pull("cy", full=True, since=future).files_delivered == 0
    assert flow.pull("cy", full=True, since=future).files_skipped == len(truth)
    assert flow.pull("cy", full=True, since=0).files_delivered == len(truth)

    # The CLI: --full and --since on pull, a bad date named with how to fix it.
    config = sandbox.config_path("ongoing", "v1.7").parent / "state-cli.toml"
    raw = sandbox_config(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b"))
    config.write_text(dump_toml(raw))
    runner = CliRunner()
    args = ["pull", "--user", "cy", "--config", str(config), "--json"]
    result = runner.invoke(main, [*args, "--full", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["files_delivered"] == len(truth)
    result = runner.invoke(main, [*args, "--since", "2999-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["files_skipped"] == len(truth)
    bad = runner.invoke(main, [*args, "--since", "yesterday"])
    assert bad.exit_code == 2 and "--since" in bad.output and "ISO date" in bad.output


def test_a_per_user_checkpoint_migrates_to_every_configured_sink(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    truth = sandbox.ground_truth()
    fw = framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b"))
    flow = Flow(fw)
    consent(flow, "di")
    # What privateshare saved before state was per sink: one mapping for the user.
    flow.pull("di")
    store = fw.pm.get_plugin("tokens")
    dates = fw.hooks.checkpoint_load("di")["sinks.a"]
    store._save("di", "checkpoint", CheckpointRecord("di", checkpoint=dates))
    for journal in (tmp_path / "tokens").rglob("*.journal"):
        journal.unlink()
    assert fw.hooks.checkpoint_load("di") == {"*": dates}

    migrated = Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b"))).pull("di")
    assert migrated.files_delivered == 0 and migrated.files_skipped == len(truth)
    assert any("every sink" in n or "counts as delivered" in n for n in migrated.notes)
    assert fw.hooks.checkpoint_load("di") == {"sinks.a": dates, "sinks.b": dates}


def test_the_pull_summary_names_the_backfilled_sink_and_counts_per_sink(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    truth = sandbox.ground_truth()
    runner = CliRunner()
    config = sandbox.config_path("ongoing", "v1.7").parent / "state-summary.toml"
    config.write_text(dump_toml(sandbox_config(sandbox, tmp_path, sinks=sinks(tmp_path, "a"))))
    consent(Flow(framework_for(sandbox, tmp_path, sinks=sinks(tmp_path, "a"))), "eli")
    first = runner.invoke(main, ["pull", "--user", "eli", "-c", str(config)])
    assert first.exit_code == 0, first.output
    assert "note:" not in first.stdout
    config.write_text(dump_toml(sandbox_config(sandbox, tmp_path, sinks=sinks(tmp_path, "a", "b"))))
    second = runner.invoke(main, ["pull", "--user", "eli", "-c", str(config)])
    assert second.exit_code == 0, second.output
    assert f"user eli: {len(truth)} delivered" in second.stdout
    assert f"delivered per sink: sinks.b {len(truth)}" in second.stdout
    assert "note: sink(s) sinks.b have no delivery state" in second.stdout
    assert "renamed" in second.stdout
