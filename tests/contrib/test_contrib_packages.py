"""The contrib distributions install with pip, show up, pass their own tests, and work in a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from privateshare.flow import Flow
from privateshare.testing.sandboxed import consent, sandbox_framework

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}


def test_installed_sinks_are_listed_with_their_options(sinks_site: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "privateshare", "plugins", "--json"],
        env=env_with(sinks_site),
        capture_output=True,
        text=True,
        check=True,
    )
    sinks = {p["name"]: p for p in json.loads(proc.stdout)["sinks"]["plugins"]}
    assert sinks["parquet"]["distribution"] == "privateshare-parquet"
    assert sinks["webhook"]["distribution"] == "privateshare-webhook"
    assert sinks["dlt"]["distribution"] == "privateshare-dlt"
    dlt_options = {o["name"]: o for o in sinks["dlt"]["options"]}
    assert {"destination", "dataset_name", "table_name"} <= set(dlt_options)
    assert dlt_options["credentials"]["type"] == "Secret | None"
    assert {o["name"] for o in sinks["parquet"]["options"]} >= {"root", "raw", "compression"}
    secret = next(o for o in sinks["webhook"]["options"] if o["name"] == "secret")
    assert secret == {"name": "secret", "type": "Secret", "required": True, "default": None}


def run_demo_with_sinks(sinks_site: Path, tmp_path: Path, sinks_toml: str) -> Path:
    """`privateshare demo --sinks FILE` with the contrib sinks installed; the demo's folder."""
    (tmp_path / "sinks.toml").write_text(sinks_toml)
    demo = tmp_path / "demo"
    env = {**env_with(sinks_site), "RUNTIME__DLTHUB_TELEMETRY": "false"}
    command = ["demo", "--dir", str(demo), "--sinks", str(tmp_path / "sinks.toml")]
    result = subprocess.run(
        [sys.executable, "-m", "privateshare", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24/24 files match" in result.stdout.replace("\n", " ")
    return demo


def run_own_tests(sinks_site: Path, name: str, *selection: str) -> None:
    """Run a distribution's own test suite against its installed copy.

    ``selection`` (pytest arguments: a test file of the distribution and a ``-k``
    expression) runs a part of the suite instead of ``tests``: the dlt suite runs in parts
    from several of our files, so xdist spreads it over workers."""
    # From the distribution's directory, so its own pytest settings apply; -P keeps that
    # directory off sys.path, so the tests import the installed copy (PYTHONPATH).
    what = list(selection) or ["tests"]
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", *what],
        cwd=CONTRIB / name,
        env={**env_with(sinks_site), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard: the dlt sink's suite loads many small packages
    )
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail and "skipped" not in tail


@pytest.mark.parametrize("name", ["privateshare-parquet", "privateshare-webhook"])
def test_each_distribution_passes_its_own_tests(sinks_site: Path, name: str) -> None:
    if name == "privateshare-parquet":
        pytest.importorskip("pyarrow", reason="privateshare-parquet needs pyarrow installed")
    run_own_tests(sinks_site, name)


def test_demo_with_a_parquet_sink_reads_back_with_pyarrow(
    sinks_site: Path,
    on_path: Callable[..., None],
    privateshare_sandbox: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The issue's 'done when': the demo's library and flow, plus [sinks.lake] type = "parquet"."""
    pytest.importorskip("pyarrow", reason="privateshare-parquet needs pyarrow installed")
    import pyarrow.dataset as ds

    on_path(sinks_site, "privateshare_parquet")
    sandbox = privateshare_sandbox(files=24, seed=1)  # what `privateshare demo` serves
    sinks = {
        "local": {"type": "file", "root": str(tmp_path / "data")},
        "lake": {"type": "parquet", "root": str(tmp_path / "lake")},
    }
    fw = sandbox_framework(sandbox, tmp_path, sinks=sinks)
    flow = Flow(fw)
    token, session = consent(flow, "demo-user")
    summary = flow.pull("demo-user", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    assert type(fw.plugins["sinks.lake"]).__module__ == "privateshare_parquet"

    expected: dict[str, int] = {}
    folder = tmp_path / "data" / "demo-user"
    for meta_file in folder.glob("*.metadata.json"):
        meta = json.loads(meta_file.read_text())
        if "mimetype" not in meta["metadata"]:
            kind = meta["metadata"]["objectType"]
            count = len(json.loads((folder / meta["name"]).read_bytes()))
            expected[kind] = expected.get(kind, 0) + count
    dataset = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive")
    table = dataset.to_table(columns=["user", "object_type"])
    got: dict[str, int] = {}
    for row in table.to_pylist():
        assert row["user"] == "demo-user"
        got[row["object_type"]] = got.get(row["object_type"], 0) + 1
    assert got == expected and sum(got.values()) > 24
    from privateshare_parquet import read_table  # every column of one type, schemas unified

    for object_type, rows in expected.items():
        assert read_table(tmp_path / "lake", object_type, user="demo-user").num_rows == rows


def test_the_demo_command_with_a_parquet_sink(sinks_site: Path, tmp_path: Path) -> None:
    """Literally: add [sinks.lake] type = "parquet" to the demo, run it, read it back."""
    import pyarrow.dataset as ds

    lake = '[sinks.lake]\ntype = "parquet"\nroot = "lake"\n'
    demo = run_demo_with_sinks(sinks_site, tmp_path, lake)
    folder = demo / "data" / "demo-user"
    expected = 0
    for meta_file in folder.glob("*.metadata.json"):
        meta = json.loads(meta_file.read_text())
        if "mimetype" not in meta["metadata"]:
            expected += len(json.loads((folder / meta["name"]).read_bytes()))
    rows = ds.dataset(demo / "lake", format="parquet", partitioning="hive").count_rows()
    assert rows == expected > 24
