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


HALF = b"half of the file" * (1 << 15)


def _die_mid_write(root: str) -> None:
    sink = make_sink(Path(root))
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "f.json"))
    writer.write(HALF)  # large enough to be written at once, not gathered
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
    assert leftovers[0].read_bytes() == HALF

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


def test_directories_are_synced_once_per_batch_not_per_file(tmp_path, monkeypatch) -> None:
    sink = make_sink(tmp_path)
    run = make_run("alice")
    sink.privateshare_sink_open_run(run)
    synced: list[str] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append(kind)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    for i in range(5):
        writer = sink.privateshare_sink_open_file(run, make_file("alice", f"sub/{i}.json"))
        writer.write(b"[1]")
        writer.commit()
    # Each file's data and metadata are fsynced before their renames (old or new, never a mix);
    # no directory yet: the renames are made durable by the batch's sync.
    assert synced == ["file"] * 10
    synced.clear()
    sink.privateshare_sink_sync(run)
    # root/ (the new alice/), alice/ (the new sub/) and alice/sub/ (ten entries): each once.
    assert synced == ["dir", "dir", "dir"]
    synced.clear()
    sink.privateshare_sink_sync(run)
    assert synced == []  # nothing changed since
    assert sorted(p.name for p in (tmp_path / "root" / "alice" / "sub").iterdir()) == sorted(
        [f"{i}.json" for i in range(5)] + [f"{i}.json{METADATA_SUFFIX}" for i in range(5)]
    )


def test_without_fsync_nothing_is_synced(tmp_path, monkeypatch) -> None:
    sink = make_sink(tmp_path, fsync=False)
    run = make_run("bob")
    sink.privateshare_sink_open_run(run)
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    deliver_to(sink, run, "a.json")
    sink.privateshare_sink_sync(run)
    assert calls == []


def deliver_to(sink: FileSink, run, name: str) -> None:
    writer = sink.privateshare_sink_open_file(run, make_file(run.user_id, name))
    writer.write(b"{}")
    writer.commit()


def test_small_chunks_are_gathered_large_ones_written_at_once_in_order(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    run = make_run("alice")
    writer = sink.privateshare_sink_open_file(run, make_file("alice", "mixed.bin"))
    reused = bytearray(600 << 10)  # a decryptor's buffer: overwritten after every write
    expected = bytearray()
    for i, size in enumerate([10, 300 << 10, 7, 200 << 10, 100 << 10, 600 << 10, 1, 3]):
        reused[:size] = bytes([i + 1]) * size
        writer.write(memoryview(reused)[:size])
        expected += reused[:size]
        reused[:size] = b"\xff" * size  # whatever was kept of the chunk would show this
    wide = memoryview(bytearray(range(8)) * 40000).cast("I")  # 4-byte items: 320,000 bytes
    writer.write(wide)
    expected += wide.tobytes()
    writer.commit()
    data = (tmp_path / "root/alice/mixed.bin").read_bytes()
    assert data == bytes(expected)
    assert writer.size == len(expected)
    meta = json.loads((tmp_path / f"root/alice/mixed.bin{METADATA_SUFFIX}").read_text())
    assert meta["size"] == len(expected)


def test_a_short_os_write_is_continued(tmp_path: Path, monkeypatch) -> None:
    real_write = os.write

    def short_write(fd: int, data) -> int:  # the kernel may take less than asked
        return real_write(fd, memoryview(data)[:1000])

    sink = make_sink(tmp_path)
    monkeypatch.setattr(os, "write", short_write)
    payload = os.urandom(700 << 10)
    deliver_to_with(sink, make_run("alice"), "short.bin", [b"head", payload, b"tail"])
    monkeypatch.undo()
    assert (tmp_path / "root/alice/short.bin").read_bytes() == b"head" + payload + b"tail"


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_large_file_leaves_the_page_cache_as_it_reaches_the_disk(
    tmp_path: Path, monkeypatch
) -> None:
    from privateshare.plugins import sink_file

    # Scaled down: past 1 MiB, every 256 KiB.
    monkeypatch.setattr(sink_file, "_DROP_AFTER", 1 << 20)
    monkeypatch.setattr(sink_file, "_DROP_STEP", 256 << 10)
    events: list[tuple[str, int, int]] = []
    real_fadvise, real_fsync = os.posix_fadvise, os.fsync

    def spying_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        events.append(("drop", offset, length))
        real_fadvise(fd, offset, length, advice)

    def spying_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            events.append(("fsync", os.fstat(fd).st_size, 0))
        real_fsync(fd)

    monkeypatch.setattr(sink_file, "_FADVISE", spying_fadvise)
    monkeypatch.setattr(os, "fsync", spying_fsync)
    payload = os.urandom(3 << 20)
    chunks = [payload[i : i + (300 << 10)] for i in range(0, len(payload), 300 << 10)]
    deliver_to_with(make_sink(tmp_path), make_run("alice"), "big.bin", chunks)
    assert (tmp_path / "root/alice/big.bin").read_bytes() == payload

    k = 1 << 10
    # Written so far after each 300 KiB chunk: 300, 600, ... 3000, then 3072 KiB. Past 1 MiB,
    # each call starts the writeback of what came since the previous one and drops what the
    # previous one started; nothing is dropped that was not handed to the disk first.
    while_writing = [("drop", 0, 1200 * k)]
    for end in range(1500, 3001, 300):
        while_writing += [("drop", (end - 300) * k, 300 * k), ("drop", (end - 600) * k, 300 * k)]
    while_writing[2] = ("drop", 0, 1200 * k)
    # Then the data fsync, and only after it (the pages are clean) the whole file is dropped.
    assert events[: len(while_writing) + 2] == [
        *while_writing,
        ("fsync", len(payload), 0),
        ("drop", 0, 0),
    ]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_mid_size_file_starts_its_writeback_early_and_stays_cached(
    tmp_path: Path, monkeypatch
) -> None:
    from privateshare.plugins import sink_file

    # Scaled down: writeback every 256 KiB, dropping only past 4 MiB (never reached here).
    monkeypatch.setattr(sink_file, "_DROP_AFTER", 4 << 20)
    monkeypatch.setattr(sink_file, "_WRITEBACK_STEP", 256 << 10)
    events: list[tuple[str, int, int]] = []
    written = [0]
    real_write = os.write

    def spying_write(fd: int, data) -> int:
        n = real_write(fd, data)
        written[0] += n if len(data) > 4096 else 0  # the data file's chunks, not the metadata
        return n

    def spying_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        # Never ahead of what was handed to the kernel.
        assert offset + length <= written[0], (offset, length, written[0])
        events.append(("advise", offset, length))

    monkeypatch.setattr(sink_file, "_FADVISE", spying_fadvise)
    monkeypatch.setattr(os, "write", spying_write)
    payload = os.urandom(1 << 20)
    chunks = [payload[i : i + (300 << 10)] for i in range(0, len(payload), 300 << 10)]
    deliver_to_with(make_sink(tmp_path), make_run("alice"), "mid.bin", chunks)
    monkeypatch.undo()
    assert (tmp_path / "root/alice/mid.bin").read_bytes() == payload
    k = 1 << 10
    # After 300, 600 and 900 KiB: each call covers what came since the previous one; the
    # last 124 KiB is left to the fsync, and no whole-file drop follows it (the file is
    # under _DROP_AFTER: it stays cached).
    assert events == [
        ("advise", 0, 300 * k),
        ("advise", 300 * k, 300 * k),
        ("advise", 600 * k, 300 * k),
    ]


def test_drop_cache_false_gives_no_advice(tmp_path: Path, monkeypatch) -> None:
    from privateshare.plugins import sink_file

    monkeypatch.setattr(sink_file, "_DROP_AFTER", 1 << 20)
    monkeypatch.setattr(sink_file, "_DROP_STEP", 256 << 10)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(sink_file, "_FADVISE", lambda fd, o, n, a: calls.append((o, n)))
    payload = os.urandom(3 << 20)
    deliver_to_with(make_sink(tmp_path, drop_cache=False), make_run("alice"), "b.bin", [payload])
    assert (tmp_path / "root/alice/b.bin").read_bytes() == payload
    assert calls == []


def deliver_to_with(sink: FileSink, run, name: str, chunks: list[bytes]) -> None:
    writer = sink.privateshare_sink_open_file(run, make_file(run.user_id, name))
    for chunk in chunks:
        writer.write(chunk)
    writer.commit()
