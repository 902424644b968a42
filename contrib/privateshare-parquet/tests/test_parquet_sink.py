"""privateshare-parquet: the conformance suite, the dataset layout, and a real flow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from privateshare_parquet import ParquetSink, parquet_file_name, read_raw, read_table

from privateshare import ConfigError, PluginContext, SinkError, UnsafeFileNameError
from privateshare.config import decode_options
from privateshare.models import DataFile, FileMetadata
from privateshare.testing.conformance import HOSTILE_FILE_NAMES, SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run

NAME = "18_4_28_3_1_D201_1.json"


def make_sink(root: Path, **options: Any) -> ParquetSink:
    return ParquetSink(
        ParquetSink.Options(root=str(root), **options),
        PluginContext(name="sinks.lake", base_dir=root.parent),
    )


def posts(n: int, start: int = 0) -> bytes:
    rows = [{"id": f"p{i}", "text": f"post {i}", "likecount": i} for i in range(start, start + n)]
    return json.dumps(rows).encode()


def put(sink: ParquetSink, name: str, data: bytes, *, user: str = "alice", **meta: Any) -> None:
    file = make_file(user, name, metadata=meta or {"objectType": "post"})
    run = make_run(user)
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(run=run, file=file)
    half = len(data) // 2
    writer.write(data[:half])
    writer.write(memoryview(bytearray(data[half:])))
    writer.commit()


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- conformance: the byte-exact path is raw storage --------------------------------


class TestParquetRawStorage(SinkConformance):
    """The suite checks bytes; the sink keeps bytes as they are only for raw files.

    So the suite runs with ``raw = "store"`` and raw files; the mapped path (bytes
    become rows) has its own tests below, including the hostile names.
    """

    large_file_size = 16 << 20

    @pytest.fixture
    def sink(self, tmp_path: Path) -> ParquetSink:
        self.tmp_path = tmp_path
        return make_sink(tmp_path / "lake", raw="store")

    def open_file(self, user: str, name: str, run: Any = None) -> Any:
        run = run or make_run(user)
        file = DataFile(
            user_id=user,
            name=name,
            updated_date=1_700_000_000_000,
            metadata=FileMetadata({"mimetype": "application/octet-stream"}),
        )
        writer = self.sink.privateshare_sink_open_file(run=run, file=file)
        assert writer is not None
        return writer

    def read_back(self, user: str, name: str) -> bytes | None:
        return read_raw(self.sink.root, user, name)

    def snapshot(self) -> set[str]:
        return {str(p.relative_to(self.tmp_path)) for p in self.tmp_path.rglob("*")}


# --- mapped data ----------------------------------------------------------------------


def test_objects_become_rows_in_the_partition_layout(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "lake")
    put(sink, NAME, posts(3))
    path = tmp_path / "lake" / "user=alice" / "object_type=post" / "18_4_28_3_1_D201_1.parquet"
    assert parquet_files(tmp_path / "lake") == [path]
    table = pq.read_table(path)
    assert table.num_rows == 3
    assert table.column("id").to_pylist() == ["p0", "p1", "p2"]
    assert table.column("likecount").type == pa.int64()
    assert table.column("_source_file").to_pylist() == [NAME] * 3
    assert table.column("_source_index").to_pylist() == [0, 1, 2]
    stored = json.loads(table.schema.metadata[b"privateshare"])
    assert stored["user_id"] == "alice" and stored["metadata"]["objectType"] == "post"


def test_an_updated_file_replaces_its_rows_and_new_files_append(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(3))
    put(sink, "other.json", posts(2, start=100))
    put(sink, NAME, posts(5, start=10))  # a new version of the first file
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 5 + 2
    rows = table.to_pylist()
    assert {r["user"] for r in rows} == {"alice"} and {r["object_type"] for r in rows} == {"post"}
    first = sorted(r["id"] for r in rows if r["_source_file"] == NAME)
    assert first == [f"p{i}" for i in range(10, 15)]
    assert len(parquet_files(root)) == 2  # no temp files, no second copy


def test_a_file_whose_type_changed_moves_partition(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(3), objectType="post")
    put(sink, NAME, posts(4), objectType="media")
    assert parquet_files(root) == [
        root / "user=alice" / "object_type=media" / parquet_file_name(NAME)
    ]


def test_an_empty_array_removes_the_old_rows(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(3))
    put(sink, NAME, b"[]")
    assert parquet_files(root) == []


def test_partition_values_round_trip_through_hive_decoding(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, "a.json", posts(1), user="user@example.com", objectType="Observation")
    put(sink, "b.json", posts(2), user="zoë 100%", objectType="a=b c")
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    pairs = {(r["user"], r["object_type"]) for r in table.to_pylist()}
    assert pairs == {("user@example.com", "Observation"), ("zoë 100%", "a=b c")}


def test_read_table_unifies_the_schemas_of_one_object_type(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, "a.json", json.dumps([{"id": 1, "score": 2}]).encode())
    put(sink, "b.json", json.dumps([{"id": 2, "score": 2.5, "tag": "x"}]).encode())
    put(sink, "c.json", json.dumps([{"id": 3, "score": None}]).encode(), user="bob")
    put(sink, "d.json", json.dumps([{"other": [1]}]).encode(), objectType="media")
    table = read_table(root, "post").sort_by("id")
    assert table.column("score").to_pylist() == [2.0, 2.5, None]
    assert table.column("tag").to_pylist() == [None, "x", None]
    assert table.column("user").to_pylist() == ["alice", "alice", "bob"]
    assert read_table(root, "post", user="bob", columns=["id"]).to_pylist() == [{"id": 3}]
    assert read_table(root, "nothing").num_rows == 0


def test_inconsistent_values_are_kept_as_json_text(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "value": 3, "extra": {}},
        {"id": 2, "value": "high", "nested": {"a": [1, 2]}},
        {"id": 3},
    ]
    sink = make_sink(tmp_path / "lake")
    put(sink, NAME, json.dumps(rows).encode())
    (path,) = parquet_files(tmp_path / "lake")
    table = pq.read_table(path)
    assert table.column("value").to_pylist() == ["3", '"high"', None]
    assert table.column("extra").to_pylist() == ["{}", None, None]
    assert table.column("nested").to_pylist() == [None, {"a": [1, 2]}, None]


def test_nothing_is_visible_before_commit_and_abort_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(2))
    before = parquet_files(root)
    for update in (True, False):
        run = make_run("alice")
        name = NAME if update else "new.json"
        writer = sink.privateshare_sink_open_file(run=run, file=make_file("alice", name))
        writer.write(posts(9))
        assert parquet_files(root) == before
        writer.abort()
        writer.abort()
        assert parquet_files(root) == before
    assert pq.read_table(before[0]).num_rows == 2


def test_invalid_json_fails_clearly_and_keeps_the_old_version(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(2))
    for data, what in ((b"[{", "not valid JSON"), (b'"text"', "not a JSON array of objects")):
        with pytest.raises(SinkError, match=what) as caught:
            put(sink, NAME, data)
        assert NAME in str(caught.value)
    (path,) = parquet_files(root)
    assert pq.read_table(path).num_rows == 2


def test_a_mapped_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "lake", max_mapped_bytes=1000)
    with pytest.raises(SinkError, match="max_mapped_bytes"):
        put(sink, NAME, posts(100))
    assert parquet_files(tmp_path / "lake") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"row_group_size": 0}, "[sinks.lake] row_group_size: expected an integer >= 1, found 0; "
         "change it, or remove the key for the default 65536"),
        ({"max_mapped_bytes": -1}, "[sinks.lake] max_mapped_bytes: expected an integer >= 1, "
         "found -1;"),
        ({"root": ""}, "[sinks.lake] root: expected a non-empty string, found ''"),
        ({"compression": "zip"}, "[sinks.lake] compression: expected one of 'zstd'"),
    ],
)  # fmt: skip
def test_options_out_of_range_are_config_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_options({"root": "lake", **options}, ParquetSink.Options, "[sinks.lake]", tmp_path)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_key_named_like_a_source_column_is_explained(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "lake")
    data = json.dumps([{"_source_file": "mine"}]).encode()
    with pytest.raises(SinkError, match="source_columns = false"):
        put(sink, NAME, data)
    put(make_sink(tmp_path / "lake", source_columns=False), NAME, data)
    (path,) = parquet_files(tmp_path / "lake")
    assert pq.read_table(path).column("_source_file").to_pylist() == ["mine"]


def test_raw_files_are_skipped_by_default(tmp_path: Path) -> None:
    sink = make_sink(tmp_path / "lake")
    raw = make_file("alice", "photo.jpg", metadata={"mimetype": "image/jpeg"})
    assert sink.privateshare_sink_open_file(run=make_run("alice"), file=raw) is None


@pytest.mark.parametrize("name", HOSTILE_FILE_NAMES, ids=repr)
def test_hostile_names_are_refused_for_mapped_data(tmp_path: Path, name: str) -> None:
    sink = make_sink(tmp_path / "lake")
    with pytest.raises(SinkError):
        put(sink, name, posts(1))
    assert parquet_files(tmp_path / "lake") == []


def test_hostile_object_types_stay_inside_the_partition(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    sink = make_sink(root)
    put(sink, NAME, posts(1), objectType="../../escape")
    (path,) = parquet_files(root)
    assert path.parent.parent == root / "user=alice"
    with pytest.raises(UnsafeFileNameError, match="too long"):
        put(sink, "b.json", posts(1), objectType="t" * 300)


# --- inside a framework and a real flow ------------------------------------------------


def test_configured_by_type_through_its_entry_point(
    privateshare_factory: Any, tmp_path: Path
) -> None:
    fw = privateshare_factory(
        """
        [sinks.lake]
        type = "parquet"
        root = "lake"
        compression = "snappy"
        """
    )
    sink = fw.plugins["sinks.lake"]
    assert isinstance(sink, ParquetSink) and sink.root == tmp_path / "lake"
    assert deliver(fw, make_file("alice", NAME), [posts(4)]) == ["sinks.lake"]
    (path,) = parquet_files(tmp_path / "lake")
    assert pq.read_metadata(path).row_group(0).column(0).compression == "SNAPPY"


def test_unknown_options_are_rejected(privateshare_factory: Any) -> None:
    from privateshare import ConfigError

    with pytest.raises(ConfigError, match="compresion"):
        privateshare_factory('[sinks.lake]\ntype = "parquet"\nroot = "x"\ncompresion = "zstd"\n')


def test_full_flow_against_the_sandbox(
    privateshare_sandbox: Callable[..., Any], tmp_path: Path
) -> None:
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent, sandbox_framework

    sandbox = privateshare_sandbox(files=24, running_polls=3, updated_fraction=0.5)
    sinks = {
        "local": {"type": "file", "root": str(tmp_path / "data")},
        "lake": {"type": "parquet", "root": str(tmp_path / "lake"), "raw": "store"},
    }
    fw = sandbox_framework(sandbox, tmp_path, sinks=sinks)
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    assert summary.files_delivered > len(sandbox.library.files)  # some files were updated

    # The file sink holds the latest version of every file: the truth to compare with.
    expected: dict[tuple[str, str], int] = {}
    raw_names = []
    for meta_path in (tmp_path / "data" / "alice").glob("*.metadata.json"):
        meta = json.loads(meta_path.read_text())
        name = meta["name"]
        if "mimetype" in meta["metadata"]:
            raw_names.append(name)
            continue
        objects = json.loads((tmp_path / "data" / "alice" / name).read_bytes())
        expected[(meta["metadata"]["objectType"], name)] = len(objects)
    assert expected and raw_names

    table = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive").to_table(
        columns=["user", "object_type", "_source_file"]
    )
    counted: dict[tuple[str, str], int] = {}
    for row in table.to_pylist():
        assert row["user"] == "alice"
        key = (row["object_type"], row["_source_file"])
        counted[key] = counted.get(key, 0) + 1
    assert counted == expected  # updated files replaced, not duplicated
    for object_type in {kind for kind, _name in expected}:  # every column, schemas unified
        table = read_table(tmp_path / "lake", object_type)
        assert table.num_rows == sum(n for (k, _), n in expected.items() if k == object_type)
        assert set(table.column("object_type").to_pylist()) == {object_type}
        assert table.num_columns > 5
    for name in raw_names:
        assert (
            read_raw(tmp_path / "lake", "alice", name)
            == (tmp_path / "data" / "alice" / name).read_bytes()
        )
