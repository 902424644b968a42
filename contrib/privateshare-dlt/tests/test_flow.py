"""The whole flow against the sandbox, into DuckDB and PostgreSQL, checked against the
sandbox's ground truth: every object a row, every nested list a child table, every file
a row with its SHA-256; updates replace; a run killed with SIGKILL and run again ends
with the same tables as a run that was never interrupted."""

from __future__ import annotations

import datetime
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privateshare_dlt import FILES_TABLE, DltSink, object_key

from privateshare import PluginContext, load
from privateshare.flow import Flow
from privateshare.testing.helpers import make_file, make_run
from privateshare.testing.sandboxed import consent, sandbox_framework, write_sandbox_config

if TYPE_CHECKING:
    from conftest import Warehouse

    from privateshare.sandbox.library import FileVersion, Library


@functools.cache
def naming() -> Any:
    """dlt's naming convention, made once: each ``dlt.Schema`` resolves dlt's configuration."""
    import dlt

    return dlt.Schema("privateshare").naming


def objects_of(version: FileVersion) -> list[dict[str, Any]]:
    return json.loads(b"".join(version.iter_plaintext()))


def table_of(version: FileVersion) -> str:
    meta = version.x_metadata["metadata"]
    return naming().normalize_table_identifier(f"{meta['serviceName']}_{meta['objectType']}")


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Top-level scalars and nested objects as dlt names their columns (lists left out)."""
    names = naming()
    out: dict[str, Any] = {}
    for key, value in obj.items():
        column = prefix + names.normalize_identifier(key)
        if isinstance(value, dict):
            out.update(flatten(value, column + "__"))
        elif not isinstance(value, list) and value is not None:
            out[column] = value
    return out


def child_counts(table: str, obj: Any, counts: Counter[str]) -> None:
    """How many rows each dlt child table gets from ``obj``'s nested lists."""
    names = naming()
    for key, value in obj.items():
        path = f"{table}__{names.normalize_identifier(key)}"
        if isinstance(value, list):
            counts[path] += len(value)
            for item in value:
                if isinstance(item, dict):
                    child_counts(path, item, counts)
        elif isinstance(value, dict):
            child_counts(path, value, counts)


def same(expected: Any, stored: Any) -> bool:
    if isinstance(stored, datetime.datetime):  # dlt types ISO timestamps
        return datetime.datetime.fromisoformat(expected.replace("Z", "+00:00")) == stored
    return bool(expected == stored)


def check_against_library(wh: Warehouse, library: Library, user: str) -> int:
    """Every table of ``wh`` holds exactly the latest version of every file; returns rows."""
    with wh.reading():
        return _check_against_library(wh, library, user)


def _check_against_library(wh: Warehouse, library: Library, user: str) -> int:
    expected: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    children: Counter[str] = Counter()
    files: dict[str, tuple[str, int | None]] = {}
    for file in library.files:
        version = file.latest
        if "mimetype" in version.x_metadata["metadata"]:
            files[file.name] = ("raw", None)
            continue
        objects = objects_of(version)
        table = table_of(version)
        used: set[str] = set()
        rows = expected.setdefault(table, {})
        for index, obj in enumerate(objects):
            rows[(file.name, object_key(obj, index, used))] = flatten(obj)
            child_counts(table, obj, children)
        files[file.name] = ("mapped", len(objects))

    truth = library.ground_truth()
    stored_files = wh.rows(FILES_TABLE, "_privateshare_user_id", "_privateshare_file", "kind")
    assert {f for _, f, _ in stored_files} == set(truth) and {u for u, _, _ in stored_files} == {
        user
    }
    for name, kind, count, sha in wh.rows(
        FILES_TABLE, "_privateshare_file", "kind", "object_count", "sha256"
    ):
        assert (kind, count) == files[name] and sha == truth[name], name

    total = 0
    for table, rows in expected.items():
        columns = wh.columns(table)
        stored = {
            (r[0], r[1]): dict(zip(columns, r[2:], strict=True))
            for r in wh.query(f"SELECT _privateshare_file, _privateshare_key, * FROM {{d}}.{table}")
        }
        assert stored.keys() == rows.keys(), table  # no object missing, none duplicated
        for key, values in rows.items():
            row = stored[key]
            assert row["_privateshare_user_id"] == user
            for column, value in values.items():
                assert same(value, row[column]), (table, key, column, value, row[column])
        total += len(rows)
    for child, count in children.items():
        (got,) = wh.query(
            f"SELECT count(*), count(DISTINCT _privateshare_user_id) FROM {{d}}.{child}"
        )
        assert got == (count, 1), child
    return total


# --- the whole flow ---------------------------------------------------------------------------


def test_full_flow_into_the_warehouse_matches_the_sandbox(
    privateshare_sandbox: Callable[..., Any], tmp_path: Path, warehouse: Warehouse
) -> None:
    sandbox = privateshare_sandbox(files=24, running_polls=3, updated_fraction=0.5)
    sinks = {
        "local": {"type": "file", "root": str(tmp_path / "data")},
        "warehouse": {"type": "dlt", **warehouse.options()},
    }
    with sandbox_framework(sandbox, tmp_path, sinks=sinks) as fw:
        sink = fw.plugins["sinks.warehouse"]
        flow = Flow(fw)
        token, session = consent(flow, "alice")
        summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    updated = [f for f in sandbox.library.files if len(f.versions) > 1]
    assert updated and summary.files_delivered == len(sandbox.library.files) + len(updated)
    rows = check_against_library(warehouse, sandbox.library, "alice")
    assert rows > 24 and sink.pending_packages() == []


def test_an_updated_file_replaces_its_rows_across_runs(
    privateshare_sandbox: Callable[..., Any], duck: Warehouse
) -> None:
    """Each updated file of the sandbox: its first version in one run, its last in the next."""
    library = privateshare_sandbox(files=8, updated_fraction=1.0).library
    updated = [f for f in library.files if len(f.versions) > 1]
    sink = DltSink(DltSink.Options(**duck.options()), PluginContext("sinks.w", duck.base_dir))

    def run_with(version_of: Callable[[Any], FileVersion]) -> None:
        run = make_run("alice")
        sink.privateshare_sink_open_run(run=run)
        for file in updated:
            version = version_of(file)
            data = make_file_of(file.name, version)
            deliver_to(sink, run, data, version)
        sink.privateshare_sink_close_run(run=run, summary=None)

    run_with(lambda f: f.versions[0])
    first = {table_of(f.versions[0]) for f in updated}
    before = sum(len(duck.rows(t)) for t in first)
    assert before == sum(len(objects_of(f.versions[0])) for f in updated)
    run_with(lambda f: f.latest)
    after = sum(len(duck.rows(t)) for t in first)
    assert after == sum(len(objects_of(f.latest)) for f in updated) != before
    for file in updated:  # the first version's objects are gone, the last one's are there
        table = table_of(file.latest)
        keys = {
            k
            for (k,) in duck.query(
                f"SELECT _privateshare_key FROM {{d}}.{table} WHERE _privateshare_file = %s",
                file.name,
            )
        }
        assert keys == {o["id"] for o in objects_of(file.latest)}
        assert not keys & {o["id"] for o in objects_of(file.versions[0])}


def make_file_of(name: str, version: FileVersion) -> Any:
    return make_file(
        "alice",
        name,
        updated_date=version.updated_date,
        metadata=version.x_metadata["metadata"],
        compression=version.x_metadata.get("compression"),
    )


def deliver_to(sink: DltSink, run: Any, file: Any, version: FileVersion) -> None:
    writer = sink.privateshare_sink_open_file(run=run, file=file)
    for chunk in version.iter_plaintext(4096):
        writer.write(chunk)
    writer.commit()


# --- a run killed with SIGKILL -------------------------------------------------------------


def test_sigkill_mid_run_then_rerun_gives_the_tables_of_an_uninterrupted_run(
    privateshare_sandbox: Callable[..., Any], tmp_path: Path, duck: Warehouse
) -> None:
    sandbox = privateshare_sandbox(files=30, updated_fraction=0.3, latency=0.03)

    def setup(root: Path) -> Path:
        sinks = {
            "local": {"type": "file", "root": str(root / "data")},
            "warehouse": {"type": "dlt", "database": str(root / "warehouse.duckdb")},
        }
        with sandbox_framework(sandbox, root, sinks=sinks) as fw:
            consent(Flow(fw), "jack")  # the token is saved; the pulls below use it
        return write_sandbox_config(sandbox, root, sinks=sinks)

    killed_root, uninterrupted_root = tmp_path / "killed", tmp_path / "uninterrupted"
    config = setup(killed_root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "privateshare", "pull", "--config", str(config), "--user", "jack"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Kill once a checkpoint is saved and a few load packages are committed, before the
    # end-of-run load: then some checkpointed files exist only as pending packages.
    normalized = killed_root / "dlt-pipelines" / "privateshare_warehouse" / "load" / "normalized"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        checkpointed = any((killed_root / "tokens").rglob("*.checkpoint"))
        if checkpointed and normalized.is_dir() and len(list(normalized.iterdir())) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""

    duckdb_file = killed_root / "warehouse.duckdb"
    sink = DltSink(
        DltSink.Options(database=str(duckdb_file)), PluginContext("sinks.warehouse", config.parent)
    )
    assert len(sink.pending_packages()) >= 3
    sink.close()
    killed = duck.another(base_dir=killed_root, dataset="privateshare")
    assert killed.tables() == []  # nothing loaded yet: the packages are all there is
    with load(config) as fw:  # run again: pending packages first, then what is missing
        summary = Flow(fw).pull("jack")
    assert not summary.files_failed and summary.files_skipped >= 1

    config = setup(uninterrupted_root)
    with load(config) as fw:
        Flow(fw).pull("jack")

    uninterrupted = duck.another(base_dir=uninterrupted_root, dataset="privateshare")
    assert killed.contents() == uninterrupted.contents()
    assert check_against_library(killed, sandbox.library, "jack") > 30
