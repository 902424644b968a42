"""privateshare-dlt: tables, merges, delivery semantics, options, and the conformance suite."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from privateshare_dlt import FILES_TABLE, DltSink, object_key

from privateshare import ConfigError, PluginContext, Secret, SinkError
from privateshare.testing.conformance import MiB, SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run

if TYPE_CHECKING:
    from conftest import Warehouse

POSTS = {"objectType": "post", "serviceName": "facebook", "serviceGroup": "social"}
FHIR = {"objectType": "Observation", "serviceName": "nhs", "serviceGroup": "health"}


def make_sink(wh: Warehouse, name: str = "sinks.warehouse", **extra: Any) -> DltSink:
    options = wh.options(**extra)
    if isinstance(options.get("credentials"), dict):
        options["credentials"] = Secret(**options["credentials"])
    return DltSink(DltSink.Options(**options), PluginContext(name=name, base_dir=wh.base_dir))


def posts(n: int, start: int = 0, likes: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"p{i}", "text": f"post {i}", "likecount": i + likes, "tags": [{"t": "a"}]}
        for i in range(start, start + n)
    ]


def commit(sink: DltSink, name: str, data: bytes | list[Any], run: Any = None, **meta: Any) -> None:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    file = make_file("alice", name, metadata=meta or POSTS)
    writer = sink.privateshare_sink_open_file(run=run or make_run("alice"), file=file)
    writer.write(body[: len(body) // 2])
    writer.write(memoryview(bytearray(body[len(body) // 2 :])))
    writer.commit()


def put(sink: DltSink, *files: tuple[str, Any], **meta: Any) -> None:
    """One run that commits ``files`` and loads them at its end."""
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    for name, data in files:
        commit(sink, name, data, run, **meta)
    sink.privateshare_sink_close_run(run=run, summary=None)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- conformance: the byte-exact path is privateshare_files.content ---------------------


class TestDltSinkConformance(SinkConformance):
    """The suite checks bytes; with ``store_content = true`` every file's bytes are kept in
    ``privateshare_files.content``, so the suite runs against that (an empty file's
    content is NULL, its size 0: dlt turns an empty binary value into text).

    ``read_back`` loads the pending packages first: what the sink holds is its pipeline's
    packages and its destination together, and a load is what ``close_run`` (or the next
    run) does anyway. One test cannot hold as written: the large-file test's 8 MiB heap
    limit, because a file kept as content is one binary value, in memory once at commit
    (``content_max_bytes`` bounds it). It still runs (16 MiB here) for the bytes; streaming
    in bounded memory is checked on the default path, content off, by
    ``test_raw_files_stream_in_bounded_memory``.
    """

    large_file_size = 16 * MiB
    max_peak_memory = None

    @pytest.fixture
    def sink(self, duck: Warehouse) -> DltSink:
        self.wh = duck
        return make_sink(duck, store_content=True, content_max_bytes=32 * MiB)

    def read_back(self, user: str, name: str) -> bytes | None:
        self.sink.load_pending()
        with self.wh.reading():  # one DuckDB connection for both queries (~25 ms of CPU each)
            if FILES_TABLE not in self.wh.tables():
                return None
            rows = self.wh.query(
                "SELECT content, size FROM {d}.privateshare_files "
                "WHERE _privateshare_user_id = %s AND _privateshare_file = %s",
                user,
                name,
            )
        assert len(rows) <= 1
        if not rows:
            return None
        content, size = rows[0]
        if content is None and size == 0:
            return b""  # dlt cannot carry an empty binary value: NULL, and size says 0
        return bytes(content)

    def snapshot(self) -> set[Any]:
        """Every row of every table (by user, file, key) and every pending package."""
        held: set[Any] = {("pending", p) for p in self.sink.pending_packages()}
        with self.wh.reading():
            for table in self.wh.tables():
                if table.startswith("_dlt"):
                    continue
                key = "_privateshare_key" if table != FILES_TABLE else "_privateshare_file"
                rows = self.wh.rows(table, "_privateshare_user_id", "_privateshare_file", key)
                held |= {(table, *row) for row in rows}
        return held


# --- tables ------------------------------------------------------------------------------


def test_objects_become_rows_with_child_tables(warehouse: Warehouse) -> None:
    sink = make_sink(warehouse)
    observation = {
        "resourceType": "Observation",
        "id": "obs1",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 61.5, "unit": "beats/minute"},
        "note": [{"text": "resting"}, {"text": "after coffee"}],
    }
    put(sink, ("posts.json", posts(3)))
    put(sink, ("obs.json", [observation]), **FHIR)
    assert "facebook_post" in warehouse.tables() and "nhs_observation" in warehouse.tables()
    rows = warehouse.query(
        "SELECT _privateshare_user_id, _privateshare_file, _privateshare_key, text, likecount "
        "FROM {d}.facebook_post ORDER BY _privateshare_key"
    )
    assert rows == [("alice", "posts.json", f"p{i}", f"post {i}", i) for i in range(3)]
    (obs,) = warehouse.query(
        "SELECT resource_type, value_quantity__value, value_quantity__unit FROM {d}.nhs_observation"
    )
    assert obs == ("Observation", 61.5, "beats/minute")
    # Nested lists are dlt child tables; every child row names its user and file too.
    notes = warehouse.query(
        "SELECT _privateshare_user_id, _privateshare_file, text FROM {d}.nhs_observation__note "
        "ORDER BY _dlt_list_idx"
    )
    assert notes == [("alice", "obs.json", "resting"), ("alice", "obs.json", "after coffee")]
    codings = warehouse.rows("nhs_observation__code__coding", "_privateshare_file", "code")
    assert codings == [("obs.json", "8867-4")]
    files = warehouse.query(
        "SELECT _privateshare_file, kind, object_count, table_name FROM {d}.privateshare_files "
        "ORDER BY _privateshare_file"
    )
    assert files == [
        ("obs.json", "mapped", 1, "nhs_observation"),
        ("posts.json", "mapped", 3, "facebook_post"),
    ]


def test_an_updated_file_updates_and_deletes_its_rows(warehouse: Warehouse) -> None:
    sink = make_sink(warehouse)
    put(sink, ("a.json", posts(4)), ("b.json", posts(2, start=100)))
    # A new version of a.json: p0 and p1 changed, p2 and p3 gone, p9 new.
    put(sink, ("a.json", [*posts(2, likes=50), *posts(1, start=9)]))
    rows = warehouse.query(
        "SELECT _privateshare_file, _privateshare_key, likecount FROM {d}.facebook_post "
        "ORDER BY _privateshare_file, _privateshare_key"
    )
    assert rows == [
        ("a.json", "p0", 50),
        ("a.json", "p1", 51),
        ("a.json", "p9", 9),
        ("b.json", "p100", 100),
        ("b.json", "p101", 101),
    ]
    tags = warehouse.query(
        "SELECT _privateshare_file, count(*) FROM {d}.facebook_post__tags GROUP BY 1 ORDER BY 1"
    )
    assert tags == [("a.json", 3), ("b.json", 2)]  # child rows follow their parents
    # Same objects again, one value changed: the count stays, the value changes.
    put(sink, ("a.json", [*posts(2, likes=70), *posts(1, start=9)]))
    counted = warehouse.query("SELECT count(*), sum(likecount) FROM {d}.facebook_post")
    assert counted == [(5, 70 + 71 + 9 + 100 + 101)]
    (files,) = warehouse.query("SELECT count(*) FROM {d}.privateshare_files")
    assert files == (2,)


@pytest.mark.parametrize("version", [b"[]", b"not json", b'[{"_dlt_id": "x"}]', b"[1, 2]"])
def test_a_version_without_usable_objects_removes_the_files_rows(
    duck: Warehouse, version: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    sink = make_sink(duck)
    put(sink, ("a.json", posts(3)), ("b.json", posts(1, start=7)))
    with caplog.at_level(logging.WARNING, "privateshare_dlt"):
        put(sink, ("a.json", version))
    assert duck.rows("facebook_post", "_privateshare_file") == [("b.json",)]
    assert duck.rows("facebook_post__tags", "_privateshare_file") == [("b.json",)]
    row = duck.query(
        "SELECT object_count, size FROM {d}.privateshare_files WHERE _privateshare_file = 'a.json'"
    )
    assert row == [(0 if version == b"[]" else None, len(version))]
    if version != b"[]":
        assert "'a.json' of user 'alice'" in caplog.text and "without object rows" in caplog.text
    put(sink, ("a.json", posts(2)))  # objects again: rows again
    assert sorted(duck.rows("facebook_post", "_privateshare_file")) == [("a.json",)] * 2 + [
        ("b.json",)
    ]


def test_keys_follow_ids_then_entity_ids_then_positions(duck: Warehouse) -> None:
    objects = [
        {"id": "x"},
        {"entityId": 7},
        {"id": "x"},  # a duplicate id in one file
        {"id": True},  # not an id
        {"name": "no id"},
        {"id": "y" * 300},  # too long to be a key
    ]
    used: set[str] = set()
    assert [object_key(o, i, used) for i, o in enumerate(objects)] == [
        "x",
        "7",
        "#2",
        "#3",
        "#4",
        "#5",
    ]
    put(make_sink(duck), ("a.json", objects))
    keys = duck.rows("facebook_post", "_privateshare_key")
    assert sorted(k for (k,) in keys) == ["#2", "#3", "#4", "#5", "7", "x"]


def test_raw_files_are_recorded_with_their_metadata(
    duck: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    meta = {"mimetype": "image/jpeg", "tags": ["photo"], "accounts": [{"accountid": "1_A"}]}
    run = make_run("alice")
    sink = make_sink(duck)
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(
        run=run, file=make_file("alice", "photo.jpg", metadata=meta, last_modified="Tue")
    )
    writer.write(b"\xff\xd8 a photo")
    writer.commit()
    sink.privateshare_sink_close_run(run=run, summary=None)
    (row,) = duck.query(
        "SELECT kind, mimetype, size, sha256, metadata, last_modified, table_name, run_id "
        "FROM {d}.privateshare_files"
    )
    assert row[:4] == ("raw", "image/jpeg", 10, hashlib.sha256(b"\xff\xd8 a photo").hexdigest())
    assert json.loads(row[4]) == meta and row[5:] == ("Tue", None, run.run_id)
    assert "content" not in duck.columns(FILES_TABLE)  # off by default
    assert duck.tables() == sorted(
        [FILES_TABLE, "_dlt_loads", "_dlt_pipeline_state", "_dlt_version"]
    )

    # With content on, the bytes are kept up to content_max_bytes.
    other = duck.another(base_dir=duck.base_dir / "content")
    other.base_dir.mkdir()
    sink = make_sink(other, store_content=True, content_max_bytes=20)
    photo = {"mimetype": "image/jpeg"}
    with caplog.at_level(logging.WARNING, "privateshare_dlt"):
        put(sink, ("small.jpg", b"\xff\xd8 small"), ("big.jpg", b"\xff" * 21), **photo)
    content = dict(other.rows(FILES_TABLE, "_privateshare_file", "content"))
    assert bytes(content["small.jpg"]) == b"\xff\xd8 small" and content["big.jpg"] is None
    assert "over content_max_bytes (20)" in caplog.text


def test_raw_files_stream_in_bounded_memory(duck: Warehouse) -> None:
    """The default path (content off) keeps nothing of a raw file: 64 MiB, flat memory."""
    sink = make_sink(duck)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(
        run=run, file=make_file("alice", "archive.bin", metadata={"mimetype": "application/zip"})
    )
    chunk = bytearray(MiB)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        for i in range(64):
            chunk[:8] = i.to_bytes(8, "big")
            digest.update(chunk)
            writer.write(memoryview(chunk))
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    sink.privateshare_sink_close_run(run=run, summary=None)
    assert duck.rows(FILES_TABLE, "size", "sha256") == [(64 * MiB, digest.hexdigest())]


def test_table_names_come_from_the_template_and_are_normalised(duck: Warehouse) -> None:
    sink = make_sink(duck, table_name="{serviceGroup}_{objectType}")
    put(sink, ("a.json", posts(1)), objectType="Transaction", serviceGroup="Finance")
    put(sink, ("b.json", posts(1)), objectType="../../Escape Me", serviceGroup="x")
    put(sink, ("c.json", posts(1)), objectType="post")  # no serviceGroup
    tables = [t for t in duck.tables() if not t.startswith(("_dlt", FILES_TABLE))]
    assert "finance_transaction" in tables and "unknown_post" in tables
    assert any(t.startswith("x_") and t.endswith("escape_me") for t in tables), tables
    with pytest.raises(SinkError, match="reserved"):
        sink.privateshare_sink_open_file(
            run=make_run("alice"),
            file=make_file(
                "alice", "d.json", metadata={"serviceGroup": "privateshare", "objectType": "files"}
            ),
        )


# --- delivery semantics ---------------------------------------------------------------------


def test_commit_is_durable_and_the_destination_sees_it_at_close_run(duck: Warehouse) -> None:
    sink = make_sink(duck)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    commit(sink, "a.json", posts(2), run)
    assert len(sink.pending_packages()) == 1
    assert FILES_TABLE not in duck.tables()  # committed, not visible yet
    sink.privateshare_sink_close_run(run=run, summary=None)
    assert len(duck.rows("facebook_post")) == 2 and sink.pending_packages() == []
    # Loaded packages leave the working directory: only pending data stays on disk.
    assert not list((sink.working_dir / "load" / "loaded").iterdir())


_KILLED_AFTER_COMMIT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from privateshare import PluginContext
    from privateshare.testing.helpers import make_file, make_run
    from privateshare_dlt import DltSink

    options = DltSink.Options(**json.loads(sys.argv[1]))
    sink = DltSink(options, PluginContext("sinks.warehouse", Path(sys.argv[2])))
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    meta = {"objectType": "post", "serviceName": "facebook"}
    for name in ("a.json", "b.json"):
        file = make_file("alice", name, metadata=meta)
        writer = sink.privateshare_sink_open_file(run=run, file=file)
        writer.write(json.dumps([{"id": name, "n": 1}, {"id": name + "2", "n": 2}]).encode())
        writer.commit()
    print("committed", flush=True)
    time.sleep(120)
    """
)


def test_a_kill_after_commit_loses_nothing(duck: Warehouse) -> None:
    """SIGKILL between commit and close_run: the next run's open_run loads the packages."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    options = json.dumps(duck.options())
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AFTER_COMMIT, options, str(duck.base_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "committed", line + (proc.stderr.read() if proc.stderr else "")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert FILES_TABLE not in duck.tables()
    sink = make_sink(duck)
    assert len(sink.pending_packages()) == 2
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    assert sorted(duck.rows("facebook_post", "_privateshare_key", "n")) == [
        ("a.json", 1),
        ("a.json2", 2),
        ("b.json", 1),
        ("b.json2", 2),
    ]
    sink.privateshare_sink_close_run(run=run, summary=None)


def test_abort_leaves_nothing_in_the_pipeline(duck: Warehouse) -> None:
    sink = make_sink(duck)
    put(sink, ("a.json", posts(1)))
    before = tree(sink.working_dir)
    run = make_run("alice")
    for name in ("a.json", "new.json"):
        writer = sink.privateshare_sink_open_file(
            run=run, file=make_file("alice", name, metadata=POSTS)
        )
        writer.write(json.dumps(posts(5)).encode())
        writer.abort()
        writer.abort()
        with pytest.raises(SinkError, match="already aborted"):
            writer.commit()
    assert sink.pending_packages() == [] and tree(sink.working_dir) == before
    sink.load_pending()
    assert duck.rows("facebook_post", "_privateshare_key") == [("p0",)]


def test_concurrent_commits_from_the_download_pool(duck: Warehouse) -> None:
    sink = make_sink(duck)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(3):
                commit(sink, f"f{n}-{k}.json", posts(2, start=10 * n + k), run)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert 1 <= len(sink.pending_packages()) <= 18
    sink.privateshare_sink_close_run(run=run, summary=None)
    files = duck.query("SELECT count(DISTINCT _privateshare_file), count(*) FROM {d}.facebook_post")
    assert files == [(18, 36)]


def test_commits_that_wait_share_one_package(duck: Warehouse) -> None:
    """While a package is written, the commits that arrive queue up and share the next
    one; a file that cannot be written then fails alone."""
    sink = make_sink(duck)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)

    def burst(files: dict[str, list[Any]]) -> dict[str, BaseException | None]:
        results: dict[str, BaseException | None] = {}

        def one(name: str) -> None:
            try:
                commit(sink, name, files[name], run)
                results[name] = None
            except BaseException as exc:
                results[name] = exc

        rest = list(files)[1:]
        threads = [threading.Thread(target=one, args=(name,)) for name in files]
        with sink._pipeline.use():  # the pipeline is busy: the first commit waits in it
            threads[0].start()
            while not sink._committer._busy:
                threads[0].join(0.01)
            for thread in threads[1:]:
                thread.start()
            while len(sink._committer._queue) < len(rest):
                threads[0].join(0.01)
        for thread in threads:
            thread.join(120)
        return results

    before = len(sink.pending_packages())
    assert burst({f"q{i}.json": posts(1, start=i) for i in range(5)}) == dict.fromkeys(
        [f"q{i}.json" for i in range(5)]
    )
    assert len(sink.pending_packages()) == before + 2  # q0 alone, then the other four
    # A number dlt cannot take (beyond 64 bits) fails its file, and only its file.
    files = {"r0.json": posts(1), "r1.json": posts(1), "big.json": [{"id": "b", "v": 10**30}]}
    results = burst(files)
    assert results["r0.json"] is None and results["r1.json"] is None
    assert isinstance(results["big.json"], SinkError) and "64-bit" in str(results["big.json"])
    assert "'big.json' of user 'alice'" in str(results["big.json"])
    sink.privateshare_sink_close_run(run=run, summary=None)
    loaded = sorted(f for (f,) in duck.rows("facebook_post", "_privateshare_file"))
    assert loaded == sorted([f"q{i}.json" for i in range(5)] + ["r0.json", "r1.json"])


def test_a_destination_that_fails_keeps_the_packages_for_the_next_run(pg: Warehouse) -> None:
    down = pg.another(url=pg.url.replace(":5432/", ":1/"))
    sink = make_sink(down)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)  # the destination is configured, just down
    commit(sink, "a.json", posts(3), run)
    with pytest.raises(SinkError) as failed:
        sink.privateshare_sink_close_run(run=run, summary=None)
    message = str(failed.value)
    assert "loaded by the next run" in message and str(sink.working_dir) in message
    assert "unused" not in message  # the password of the connection string
    assert len(sink.pending_packages()) == 1
    up = pg.another(dataset=down.dataset)
    sink = make_sink(up)
    sink.privateshare_sink_open_run(run=make_run("alice"))
    assert len(up.rows("facebook_post")) == 3 and sink.pending_packages() == []


def test_another_process_waits_for_the_pipeline(duck: Warehouse) -> None:
    holder = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from privateshare import PluginContext
        from privateshare.testing.helpers import make_run
        from privateshare_dlt import DltSink

        options = DltSink.Options(**json.loads(sys.argv[1]))
        sink = DltSink(options, PluginContext("sinks.warehouse", Path(sys.argv[2])))
        sink.privateshare_sink_open_run(run=make_run("bob"))
        print("holding", flush=True)
        sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, json.dumps(duck.options()), str(duck.base_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout and proc.stdin
    assert proc.stdout.readline().strip() == "holding"
    opened = threading.Event()
    sink = make_sink(duck)

    def open_run() -> None:
        sink.privateshare_sink_open_run(run=make_run("alice"))
        opened.set()

    thread = threading.Thread(target=open_run)
    thread.start()
    try:
        assert not opened.wait(2), "the pipeline was taken while another process had it"
    finally:
        proc.stdin.close()  # the other process ends and lets go
        proc.wait(30)
    assert opened.wait(60)
    thread.join(60)
    sink.close()


# --- configuration -------------------------------------------------------------------------


def test_configured_by_type_with_its_files_beside_the_config(
    privateshare_factory: Any, tmp_path: Path, duck: Warehouse
) -> None:
    fw = privateshare_factory('[sinks.warehouse]\ntype = "dlt"\n')
    sink = fw.plugins["sinks.warehouse"]
    assert isinstance(sink, DltSink)
    assert sink.database == tmp_path / "warehouse.duckdb"
    assert sink.working_dir == tmp_path / "dlt-pipelines" / "privateshare_warehouse"
    run = make_run("alice")
    fw.hooks.sinks_open_run(run)
    assert deliver(
        fw, make_file("alice", "a.json", metadata=POSTS), [json.dumps(posts(2)).encode()], run
    ) == ["sinks.warehouse"]
    fw.hooks.sinks_close_run(run, None)
    assert duck.another(dataset="privateshare").rows("facebook_post", "id") != []
    assert (tmp_path / "dlt-pipelines").stat().st_mode & 0o077 == 0  # personal data: 0700


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('tabel_name = "x"', "tabel_name"),
        ('table_name = "{service}"', "placeholders"),
        ('destination = "nosuch"', "not a dlt destination"),
        ('destination = "filesystem"', "cannot merge"),
        ('destination = "postgres"\ndatabase = "x.duckdb"', "duckdb destination only"),
        ('credentials = { env = "X" }', "takes a database file"),
        ('credentials = "postgresql://u:p@h/db"', "reference"),
        ("content_max_bytes = -1", "content_max_bytes"),
        ('pipeline_name = "a/b"', "pipeline_name"),
        ('dataset_name = " "', "dataset_name"),
    ],
)
def test_bad_options_are_explained(privateshare_factory: Any, table: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        privateshare_factory(f'[sinks.warehouse]\ntype = "dlt"\n{table}\n')


def test_credentials_from_a_secret_reference_never_show(
    pg: Warehouse, caplog: pytest.LogCaptureFixture
) -> None:
    wh = pg
    sink = make_sink(wh)
    assert "unused" not in repr(sink) and "PS_DLT_TEST_POSTGRES" not in repr(sink)
    put(sink, ("a.json", posts(2)))
    assert len(wh.rows("facebook_post")) == 2
    # A wrong password in a URL that then fails: the error names neither it nor the URL's.
    secret = "S3cr3t-" + os.urandom(4).hex()
    os.environ["PS_DLT_BAD"] = pg.url.replace(":unused@", f":{secret}@").replace(":5432/", ":1/")
    bad = DltSink(
        DltSink.Options(
            destination="postgres", dataset_name=wh.dataset, credentials=Secret(env="PS_DLT_BAD")
        ),
        PluginContext("sinks.bad", pg.base_dir),
    )
    run = make_run("alice")
    with caplog.at_level(logging.DEBUG):
        bad.privateshare_sink_open_run(run=run)
        commit(bad, "a.json", posts(1), run)
        with pytest.raises(SinkError) as failed:
            bad.privateshare_sink_close_run(run=run, summary=None)
    assert secret not in str(failed.value) and secret not in caplog.text and secret not in repr(bad)


def test_credentials_from_dlt_environment_variables_or_secrets_toml(
    pg: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials option: dlt finds them as for any pipeline (env vars, secrets.toml)."""
    wh, tmp_path = pg, pg.base_dir
    sink = DltSink(
        DltSink.Options(destination="postgres", dataset_name=wh.dataset),
        PluginContext("sinks.warehouse", tmp_path),
    )
    monkeypatch.delenv("DESTINATION__POSTGRES__CREDENTIALS", raising=False)
    monkeypatch.chdir(tmp_path)  # no .dlt/secrets.toml here
    with pytest.raises(SinkError, match="DESTINATION__POSTGRES__CREDENTIALS"):
        sink.privateshare_sink_open_run(run=make_run("alice"))
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", pg.url)
    put(sink, ("a.json", posts(2)))
    assert len(wh.rows("facebook_post")) == 2
    # The same from .dlt/secrets.toml in the directory privateshare runs in (a new
    # process there: dlt reads its TOML files once per process).
    monkeypatch.delenv("DESTINATION__POSTGRES__CREDENTIALS")
    project = tmp_path / "project"
    (project / ".dlt").mkdir(parents=True)
    (project / ".dlt" / "secrets.toml").write_text(
        f'[destination.postgres]\ncredentials = "{pg.url}"\n'
    )
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from privateshare import PluginContext
        from privateshare.testing.helpers import make_file, make_run
        from privateshare_dlt import DltSink

        options = DltSink.Options(destination="postgres", dataset_name=sys.argv[1])
        sink = DltSink(options, PluginContext("sinks.warehouse", Path(sys.argv[2])))
        run = make_run("alice")
        sink.privateshare_sink_open_run(run=run)
        meta = {"objectType": "post", "serviceName": "facebook"}
        file = make_file("alice", "b.json", metadata=meta)
        writer = sink.privateshare_sink_open_file(run=run, file=file)
        writer.write(json.dumps([{"id": n} for n in range(3)]).encode())
        writer.commit()
        sink.privateshare_sink_close_run(run=run, summary=None)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESTINATION__")}
    done = subprocess.run(
        [sys.executable, "-c", script, wh.dataset, str(tmp_path)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(wh.rows("facebook_post")) == 5


def test_two_sinks_of_one_process_cannot_share_a_pipeline(
    privateshare_factory: Any, duck: Warehouse
) -> None:
    fw = privateshare_factory(
        """
        [sinks.a]
        type = "dlt"
        pipeline_name = "shared"

        [sinks.b]
        type = "dlt"
        pipeline_name = "shared"
        """
    )
    with pytest.raises(SinkError, match=r"in use by sink sinks\.a of this process") as refused:
        fw.hooks.sinks_open_run(make_run("alice"))
    assert "own pipeline_name" in str(refused.value)
    fw.plugins["sinks.a"].close()
    fw.plugins["sinks.b"].privateshare_sink_open_run(run=make_run("alice"))  # free again
