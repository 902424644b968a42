"""The ``file`` sink: the conformance suite, plus its own layout, metadata and safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from privateshare import ConfigError, SinkError, UnsafeFileNameError
from privateshare.hooks import PluginContext
from privateshare.plugins.sink_file import METADATA_SUFFIX, FileSink
from privateshare.sinks import TEMP_PREFIX, check_name
from privateshare.testing.conformance import SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run


def make_sink(base: Path, root: str = "root", **options: object) -> FileSink:
    return FileSink(
        FileSink.Options(root=root, **options),  # type: ignore[arg-type]
        PluginContext(name="sinks.local", base_dir=base),
    )


def everything_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


class TestFileSinkConformance(SinkConformance):
    """The built-in file sink passes the suite every sink must pass."""

    @pytest.fixture
    def sink(self, tmp_path: Path) -> FileSink:
        self.tmp_path = tmp_path
        return make_sink(tmp_path)

    def read_back(self, user: str, name: str) -> bytes | None:
        path = self.tmp_path / "root" / user / name
        return path.read_bytes() if path.is_file() else None

    def snapshot(self) -> set[str]:
        # Everything under tmp_path, root or not, temp files included.
        return everything_under(self.tmp_path)


class TestFileSinkWithoutMetadataOrFsync(TestFileSinkConformance):
    """The same guarantees hold with both options off."""

    large_file_size = 8 << 20

    @pytest.fixture
    def sink(self, tmp_path: Path) -> FileSink:
        self.tmp_path = tmp_path
        return make_sink(tmp_path, metadata=False, fsync=False)


# --- layout and metadata ---------------------------------------------------------


def test_layout_is_root_user_name_with_metadata_beside(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, root="data")
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    file = make_file(
        "alice",
        "18_4_28_3_1_D201_1.json",
        updated_date=1_700_000_000_123,
        metadata={"objectType": "post", "serviceGroup": "social"},
        compression="brotli",
        last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
    )
    writer = sink.privateshare_sink_open_file(run=run, file=file)
    writer.write(b'[{"id": 1}]')
    writer.commit()

    user_dir = tmp_path / "data" / "alice"
    assert sorted(p.name for p in user_dir.iterdir()) == [
        "18_4_28_3_1_D201_1.json",
        "18_4_28_3_1_D201_1.json" + METADATA_SUFFIX,
    ]
    assert (user_dir / "18_4_28_3_1_D201_1.json").read_bytes() == b'[{"id": 1}]'
    meta = json.loads((user_dir / ("18_4_28_3_1_D201_1.json" + METADATA_SUFFIX)).read_text())
    assert meta == {
        "user_id": "alice",
        "name": "18_4_28_3_1_D201_1.json",
        "updated_date": 1_700_000_000_123,
        "last_modified": "Tue, 14 Nov 2023 22:13:20 GMT",
        "size": 11,
        "metadata": {"objectType": "post", "serviceGroup": "social"},
        "compression": "brotli",
    }


def test_metadata_follows_an_update(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    run = make_run("alice")
    for updated, body in ((1, b"v1"), (2, b"version two")):
        writer = sink.privateshare_sink_open_file(
            run=run, file=make_file("alice", "f.json", updated)
        )
        writer.write(body)
        writer.commit()
    meta = json.loads((tmp_path / "root/alice/f.json.metadata.json").read_text())
    assert (meta["updated_date"], meta["size"]) == (2, 11)
    assert (tmp_path / "root/alice/f.json").read_bytes() == b"version two"
    assert len(list((tmp_path / "root/alice").iterdir())) == 2


def test_metadata_false_writes_only_the_data(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, metadata=False)
    deliver_one(sink, "alice", "f.json", b"x")
    assert everything_under(tmp_path / "root") == {"alice", "alice/f.json"}


def test_nothing_but_a_temp_file_exists_before_commit(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "f.json"))
    writer.write(b"partial")
    names = [p.name for p in (tmp_path / "root/alice").iterdir()]
    assert len(names) == 1 and names[0].startswith(TEMP_PREFIX)
    writer.commit()
    assert sorted(p.name for p in (tmp_path / "root/alice").iterdir()) == [
        "f.json",
        "f.json.metadata.json",
    ]


def test_files_and_directories_are_private(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    deliver_one(sink, "alice", "sub/f.json", b"personal data")
    for path in (
        tmp_path / "root/alice/sub/f.json",
        tmp_path / "root/alice/sub/f.json.metadata.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (tmp_path / "root/alice", tmp_path / "root/alice/sub"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_slashes_make_subdirectories(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    deliver_one(sink, "alice", "raw/2024/photo.jpg", b"\xff\xd8")
    assert (tmp_path / "root/alice/raw/2024/photo.jpg").read_bytes() == b"\xff\xd8"


def test_relative_root_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    assert make_sink(tmp_path, root="out/data").root == tmp_path / "out" / "data"
    assert make_sink(tmp_path, root=str(tmp_path / "abs")).root == tmp_path / "abs"


def test_repr_names_the_sink_and_root(tmp_path: Path) -> None:
    assert repr(make_sink(tmp_path)) == f"FileSink(sinks.local, root={str(tmp_path / 'root')!r})"


def deliver_one(sink: FileSink, user: str, name: str, data: bytes) -> None:
    run = make_run(user)
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(run=run, file=make_file(user, name))
    writer.write(data)
    writer.commit()


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("a\\b", "backslash"),
        ("a\x00b", "U+0000"),
        ("a\tb", "U+0009"),
        ("", "empty"),
        ("a//b", "empty path segment"),
        ("x" * 300, "300 bytes long"),
        ("/".join(["d" * 250] * 4) + "/" + "f" * 30, "1034 bytes long; names are limited to 1024"),
        (TEMP_PREFIX + "1-2", "reserves for temp files"),
        ("f.json" + METADATA_SUFFIX, "metadata files"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(tmp_path: Path, name: str, reason: str) -> None:
    sink = make_sink(tmp_path)
    with pytest.raises(UnsafeFileNameError) as caught:
        sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", name))
    message = str(caught.value)
    assert reason in message
    assert "'alice'" in message and "nothing was written" in message
    assert not (tmp_path / "root").exists()


def test_the_last_segment_keeps_room_for_the_metadata_suffix(tmp_path: Path) -> None:
    room = 255 - len(METADATA_SUFFIX)
    deliver_one(make_sink(tmp_path), "alice", "n" * room, b"fits")
    with pytest.raises(UnsafeFileNameError, match="room is kept"):
        deliver_one(make_sink(tmp_path), "alice", "n" * (room + 1), b"too long")
    deliver_one(make_sink(tmp_path / "plain", metadata=False), "alice", "n" * 255, b"fits")


def test_metadata_suffix_is_a_plain_name_without_metadata(tmp_path: Path) -> None:
    deliver_one(make_sink(tmp_path, metadata=False), "alice", "f.metadata.json", b"{}")
    assert (tmp_path / "root/alice/f.metadata.json").read_bytes() == b"{}"


def test_user_ids_follow_the_same_rules_and_may_not_nest() -> None:
    assert check_name("alice@example.com", what="user id", allow_slash=False) == [
        "alice@example.com"
    ]
    with pytest.raises(UnsafeFileNameError, match="user id 'a/b' is unsafe: it contains '/'"):
        check_name("a/b", what="user id", allow_slash=False)
    with pytest.raises(UnsafeFileNameError, match="plain name"):
        check_name("..", what="user id", allow_slash=False)


def test_hostile_user_id_is_refused_at_open_run(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileNameError, match="user id"):
        make_sink(tmp_path).privateshare_sink_open_run(run=make_run("../evil"))
    assert everything_under(tmp_path) == set()


def test_names_are_bounded_in_total_not_only_per_segment(tmp_path: Path) -> None:
    longest = "/".join(["d" * 254] * 4) + "/" + "f" * 4  # 1024 bytes exactly
    assert len(check_name(longest)) == 5
    with pytest.raises(UnsafeFileNameError, match="1025 bytes long; names are limited to 1024"):
        check_name(longest + "f")
    # Bytes, not characters: 'é' is two bytes of UTF-8.
    with pytest.raises(UnsafeFileNameError, match=r"\(517 characters\) is unsafe: it is 1029 "):
        check_name("/".join(["é" * 100] * 5) + "/" + "é" * 12)


def test_a_path_over_the_os_limit_fails_that_file_with_the_reason(tmp_path: Path) -> None:
    # A root deep enough that a legal 1024-byte name no longer fits PATH_MAX (4096 on Linux).
    limit = os.pathconf(tmp_path, "PC_PATH_MAX") - 1
    root = tmp_path.joinpath(*["r" * 250] * ((limit - len(str(tmp_path)) - 700) // 251))
    sink = make_sink(tmp_path, root=str(root))
    name = "/".join(["n" * 250] * 3 + ["n" * 240])
    with pytest.raises(UnsafeFileNameError) as caught:
        deliver_one(sink, "alice", name, b"x")
    message = str(caught.value)
    assert f"over this system's limit of {limit} (PATH_MAX)" in message
    assert "nothing was written" in message and "shorter root" in message
    assert not (root / "alice" / ("n" * 250)).exists()  # no directory was made
    deliver_one(sink, "alice", "short.json", b"fits")  # the sink carries on with other files
    assert (root / "alice" / "short.json").read_bytes() == b"fits"
    assert sorted(p.name for p in (root / "alice").iterdir()) == [
        "short.json",
        "short.json" + METADATA_SUFFIX,
    ]


def test_a_very_long_hostile_name_is_shortened_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileNameError) as caught:
        check_name("../" + "z" * 5000)
    assert len(str(caught.value)) < 600
    assert "5003 characters" in str(caught.value)


# --- symlinks ----------------------------------------------------------------------


def test_a_symlinked_user_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "alice").symlink_to(outside)
    sink = make_sink(tmp_path)
    with pytest.raises(UnsafeFileNameError, match="outside"):
        deliver_one(sink, "alice", "f.json", b"escaped")
    assert list(outside.iterdir()) == []


def test_a_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root" / "alice").mkdir(parents=True)
    (tmp_path / "root" / "alice" / "sub").symlink_to(outside)
    sink = make_sink(tmp_path)
    with pytest.raises(UnsafeFileNameError):
        sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "sub/f.json"))
    assert list(outside.iterdir()) == []


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"untouched")
    (tmp_path / "root" / "alice").mkdir(parents=True)
    (tmp_path / "root" / "alice" / "f.json").symlink_to(outside)
    deliver_one(make_sink(tmp_path), "alice", "f.json", b"new")
    target = tmp_path / "root" / "alice" / "f.json"
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert outside.read_bytes() == b"untouched"


def test_a_symlinked_root_is_allowed(tmp_path: Path) -> None:
    # The operator chose the root; only what is below it must stay below it.
    (tmp_path / "disk").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "disk")
    deliver_one(make_sink(tmp_path), "alice", "f.json", b"ok")
    assert (tmp_path / "disk/alice/f.json").read_bytes() == b"ok"


# --- failures and leftovers ---------------------------------------------------------


def test_a_failed_commit_removes_its_temp_files(tmp_path: Path) -> None:
    (tmp_path / "root/alice/f.json").mkdir(parents=True)  # a directory where the file goes
    sink = make_sink(tmp_path)
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "f.json"))
    writer.write(b"data")
    with pytest.raises(SinkError, match=r"cannot commit .*f\.json"):
        writer.commit()
    writer.abort()
    assert everything_under(tmp_path / "root") == {"alice", "alice/f.json"}


def test_write_after_commit_is_an_error(tmp_path: Path) -> None:
    writer = make_sink(tmp_path).privateshare_sink_open_file(
        run=make_run(), file=make_file("alice", "f.json")
    )
    writer.commit()
    with pytest.raises(SinkError, match="already committed"):
        writer.write(b"late")
    with pytest.raises(SinkError, match="already committed"):
        writer.commit()


def test_root_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a directory")
    sink = make_sink(tmp_path, root="blocker/data")
    with pytest.raises(SinkError, match=r"cannot create its root directory .*blocker/data"):
        deliver_one(sink, "alice", "f.json", b"x")


def _die_mid_write(root: str) -> None:
    sink = make_sink(Path(root))
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "f.json"))
    writer.write(b"half of the file")
    writer._out.flush()  # type: ignore[union-attr]
    os._exit(1)  # killed: no commit, no abort, no cleanup


def test_a_killed_writer_leaves_no_file_and_its_temp_is_cleaned_at_open_run(
    tmp_path: Path,
) -> None:
    child = multiprocessing.get_context("fork").Process(
        target=_die_mid_write, args=(str(tmp_path),)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 1
    leftovers = list((tmp_path / "root/alice").iterdir())
    assert [p.name.startswith(TEMP_PREFIX) for p in leftovers] == [True]
    assert leftovers[0].read_bytes() == b"half of the file"

    sink = make_sink(tmp_path)
    deliver_one(sink, "bob", "g.json", b"other user")  # cleans bob's directory only
    assert leftovers[0].exists()
    sink.privateshare_sink_open_run(run=make_run("alice"))
    assert list((tmp_path / "root/alice").iterdir()) == []


def test_open_run_keeps_temp_files_of_live_writers(tmp_path: Path) -> None:
    user_dir = tmp_path / "root/alice/sub"
    user_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        live_other = user_dir / f"{TEMP_PREFIX}{sleeper.pid}-aaaa"
        dead_other = user_dir / f"{TEMP_PREFIX}{dead.pid}-bbbb"
        ours_stale = user_dir / f"{TEMP_PREFIX}{os.getpid()}-cccc"
        garbage = user_dir / f"{TEMP_PREFIX}not-a-pid"
        for path in (live_other, dead_other, ours_stale, garbage):
            path.write_bytes(b"leftover")
        sink = make_sink(tmp_path)
        writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "sub/x"))
        writer.write(b"in flight")
        sink.privateshare_sink_open_run(run=make_run("alice"))
        remaining = {p.name for p in user_dir.iterdir()}
        assert live_other.name in remaining
        assert not {dead_other.name, ours_stale.name, garbage.name} & remaining
        writer.commit()  # the in-flight writer's temp file was not touched
        assert (user_dir / "x").read_bytes() == b"in flight"
    finally:
        sleeper.kill()
        sleeper.wait()


# --- through the framework ------------------------------------------------------------


def test_configured_by_toml_and_driven_through_the_hooks(
    privateshare_factory, tmp_path: Path
) -> None:
    fw = privateshare_factory(
        """
        [sinks.local]
        type = "file"
        root = "data"
        metadata = false
        """
    )
    sink = fw.plugins["sinks.local"]
    assert isinstance(sink, FileSink) and sink.root == tmp_path / "data"
    run = make_run("alice")
    fw.hooks.sinks_open_run(run)
    assert deliver(fw, make_file("alice", "a.json"), [b"[", memoryview(b"1]")], run) == [
        "sinks.local"
    ]
    assert (tmp_path / "data/alice/a.json").read_bytes() == b"[1]"


def test_unknown_option_is_a_config_error(privateshare_factory) -> None:
    with pytest.raises(
        ConfigError, match=r"\[sinks.local\]: unknown key 'rot'; did you mean 'root'"
    ):
        privateshare_factory('[sinks.local]\ntype = "file"\nrot = "data"\n')
