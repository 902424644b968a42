"""The sink writer base, the one metadata document, and names checked once per delivery."""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import pluggy
import pytest

from privateshare import hookimpl
from privateshare.delivery import deliver
from privateshare.errors import SinkError, UnsafeFileNameError
from privateshare.hooks import Hooks
from privateshare.hooks import specs as hookspecs
from privateshare.models import DataFile, FileMetadata, RunInfo
from privateshare.sinks import (
    SinkWriter,
    Target,
    file_target,
    metadata_document,
    metadata_json,
    names_checked,
)

RUN = RunInfo("run-1", "alice", 0.0)


def a_file(name: str = "posts.json", user: str = "alice") -> DataFile:
    return DataFile(user, name, 7, FileMetadata({"objectType": "post"}, "gzip"), "Mon")


class Recording(SinkWriter):
    """Records what the base asks of it; ``fail`` makes ``_commit`` raise."""

    def __init__(self, file: DataFile, fail: bool = False) -> None:
        super().__init__(file)
        self.calls: list[str] = []
        self.data = bytearray()
        self.fail = fail

    def _write(self, chunk: bytes | memoryview) -> None:
        self.calls.append("write")
        self.data += chunk

    def _commit(self) -> None:
        self.calls.append("commit")
        if self.fail:
            raise OSError("disk full")

    def _discard(self) -> None:
        self.calls.append("discard")


def test_a_writer_counts_and_commits_once() -> None:
    writer = Recording(a_file())
    writer.write(b"ab")
    writer.write(memoryview(b"cde"))
    writer.commit()
    assert (writer.state, writer.size, bytes(writer.data)) == ("committed", 5, b"abcde")
    with pytest.raises(SinkError, match=r"cannot commit 'posts.json': .* already committed"):
        writer.commit()
    with pytest.raises(SinkError, match=r"cannot write to 'posts.json': .* already committed"):
        writer.write(b"more")
    writer.abort()  # after a commit: nothing is undone
    assert writer.state == "committed" and writer.calls == ["write", "write", "commit"]
    assert repr(writer) == "Recording('posts.json', committed, 5 bytes)"


def test_abort_discards_once_and_refuses_a_later_commit() -> None:
    writer = Recording(a_file())
    writer.write(b"x")
    writer.abort()
    writer.abort()
    assert writer.state == "aborted" and writer.calls == ["write", "discard"]
    with pytest.raises(SinkError, match="already aborted"):
        writer.commit()


def test_a_failed_commit_ends_aborted_and_discarded() -> None:
    writer = Recording(a_file(), fail=True)
    with pytest.raises(OSError, match="disk full"):
        writer.commit()
    assert writer.state == "aborted" and writer.calls == ["commit", "discard"]
    writer.abort()
    assert writer.calls == ["commit", "discard"]


def test_a_writer_dropped_while_open_is_discarded() -> None:
    calls: list[str] = []

    class Dropped(Recording):
        def _discard(self) -> None:
            calls.append("discard")

    Dropped(a_file()).write(b"x")
    gc.collect()
    assert calls == ["discard"]


def test_the_metadata_document_is_one_shape() -> None:
    file = a_file()
    expected = {
        "user_id": "alice",
        "name": "posts.json",
        "updated_date": 7,
        "last_modified": "Mon",
        "size": 3,
        "metadata": {"objectType": "post"},
        "compression": "gzip",
    }
    assert metadata_document(file, 3) == expected
    writer = Recording(file)
    writer.write(b"abc")
    assert writer.metadata_document() == expected
    assert metadata_json(expected).startswith(b'{\n  "user_id": "alice"')
    assert metadata_json(expected).endswith(b"}\n")


def test_file_target_checks_when_called_outside_a_delivery() -> None:
    assert file_target(RUN, a_file("dir/a.json")) == Target("alice", ("dir", "a.json"))
    assert file_target(RUN, a_file("a.json", user="")).user_id == "alice"  # the run's user
    with pytest.raises(UnsafeFileNameError, match=r"'\.\./x' of user 'alice'"):
        file_target(RUN, a_file("../x"))
    with pytest.raises(UnsafeFileNameError, match="user id"):
        file_target(RUN, a_file(user="a/b"))
    with pytest.raises(UnsafeFileNameError, match=r"ends with '\.meta'"):
        file_target(RUN, a_file("a.meta"), reserved_suffix=".meta")


def test_inside_a_delivery_the_checked_target_is_reused() -> None:
    file = a_file("a.meta")
    with names_checked(RUN, file) as checked:
        assert file_target(RUN, file) is checked
        # A sink's own rule still applies on top of the shared check.
        with pytest.raises(UnsafeFileNameError, match=r"ends with '\.meta'"):
            file_target(RUN, file, reserved_suffix=".meta")
        other = a_file("other.json")
        assert file_target(RUN, other) is not checked
    assert file_target(RUN, file) is not checked  # the block is over
    long = a_file("n" * 252)  # fits 255 bytes, but not beside "<name>.meta"
    for inside in (True, False):
        scope = names_checked(RUN, long) if inside else contextlib.nullcontext()
        room = r"room is kept for the '\.meta' file"
        with scope, pytest.raises(UnsafeFileNameError, match=room):
            file_target(RUN, long, reserved_suffix=".meta")


class TargetSink:
    """Asks for the file's target, as every built-in sink does."""

    def __init__(self) -> None:
        self.targets: list[Target] = []

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Recording:
        self.targets.append(file_target(run, file))
        return Recording(file)


class NaiveSink:
    """Checks nothing: the delivery protects it anyway."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Any:
        self.opened.append(file.name)
        return Recording(file)


def hooks_with(**plugins: object) -> Hooks:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return Hooks(pm)


def test_a_delivery_checks_the_names_once_for_every_sink() -> None:
    one, two, naive = TargetSink(), TargetSink(), NaiveSink()
    hooks = hooks_with(**{"sinks.one": one, "sinks.two": two, "sinks.naive": naive})
    assert deliver(hooks, RUN, a_file("dir/a.json"), [b"[]"]) == (
        2,
        [
            "sinks.one",
            "sinks.two",
            "sinks.naive",
        ],
    )
    assert one.targets[0] is two.targets[0]  # one check, shared
    with pytest.raises(UnsafeFileNameError, match=r"'\.\./etc' of user 'alice' is unsafe"):
        deliver(hooks, RUN, a_file("../etc"), [b"x"])
    assert naive.opened == ["dir/a.json"]  # the unsafe name reached no sink


# --- clean_stale_temps: what it removes, and that it reads a directory as it goes ---------


def test_stale_temps_are_removed_and_nothing_else(tmp_path: Any) -> None:
    import os
    import subprocess

    from privateshare.sinks import TEMP_PREFIX, clean_stale_temps

    dead = subprocess.Popen(["true"])
    dead.wait()
    user = tmp_path / "user"
    (user / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    stale = [user / f"{TEMP_PREFIX}{dead.pid}-1", user / "a" / "b" / f"{TEMP_PREFIX}{dead.pid}-2"]
    mine = user / "a" / f"{TEMP_PREFIX}{os.getpid()}-3"  # this process, being written
    aborted = user / "a" / f"{TEMP_PREFIX}{os.getpid()}-4"  # this process, not active
    kept = [user / "data.json", user / "a" / "b" / "x.json", outside / f"{TEMP_PREFIX}{dead.pid}-5"]
    for path in [*stale, mine, aborted, *kept]:
        path.write_bytes(b"x")
    (user / "link").symlink_to(outside, target_is_directory=True)  # not followed
    (user / "dangling").symlink_to(tmp_path / "nowhere")
    assert clean_stale_temps(user, {str(mine)}) == 3
    assert [p.exists() for p in stale] == [False, False] and not aborted.exists()
    assert mine.exists() and all(p.exists() for p in kept)
    assert clean_stale_temps(user) == 0 and mine.exists()  # without ``active``: own temps kept


def test_stale_temps_are_looked_for_without_listing_a_directory_whole(tmp_path: Any) -> None:
    """20,000 files in one directory: the names are not gathered (os.walk took ~1.5 MiB)."""
    import tracemalloc

    from privateshare.sinks import clean_stale_temps

    for index in range(20_000):
        (tmp_path / f"18_1_3_0_0_D_202501010000_{index:07d}.json").touch()
    tracemalloc.start()
    try:
        assert clean_stale_temps(tmp_path) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 << 10, f"{peak >> 10} KiB traced"
