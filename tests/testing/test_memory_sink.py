"""The ``memory`` sink: the sink conformance suite, plus what tests rely on it for."""

from __future__ import annotations

import pytest

from privateshare import SinkError, UnsafeFileNameError
from privateshare.testing.conformance import SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run
from privateshare.testing.memory import MemorySink


class TestMemorySinkConformance(SinkConformance):
    """The memory sink behaves like a real sink, so flows tested against it are honest."""

    max_peak_memory = None  # it keeps files in memory by design

    @pytest.fixture
    def sink(self) -> MemorySink:
        return MemorySink.create("sinks.conformance")

    def read_back(self, user: str, name: str) -> bytes | None:
        return self.sink.read(user, name)

    def snapshot(self) -> set[tuple[str, str]]:
        return set(self.sink.files)


def test_files_appear_only_on_commit_with_their_metadata() -> None:
    sink = MemorySink.create()
    file = make_file("alice", "a.json", updated_date=42, metadata={"objectType": "post"})
    writer = sink.privateshare_sink_open_file(run=make_run(), file=file)
    writer.write(b"[1]")
    assert sink.files == {} and sink.metadata == {}
    writer.commit()
    assert sink.files == {("alice", "a.json"): b"[1]"}
    assert sink.metadata[("alice", "a.json")] == file
    assert sink.commits == {("alice", "a.json"): 1}


def test_an_update_counts_as_a_second_commit_of_one_file() -> None:
    sink = MemorySink.create()
    for body in (b"v1", b"v2"):
        writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "a"))
        writer.write(body)
        writer.commit()
    assert sink.files == {("alice", "a"): b"v2"}
    assert sink.commits == {("alice", "a"): 2}


def test_runs_are_recorded() -> None:
    sink = MemorySink.create()
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    from privateshare.models import RunSummary

    summary = RunSummary(run_id=run.run_id, user_id="alice", final_state="completed")
    sink.privateshare_sink_close_run(run=run, summary=summary)
    assert sink.runs_opened == [run]
    assert sink.runs_closed == [(run, summary)]
    sink.clear()
    assert sink.runs_opened == [] and sink.files == {}


def test_fail_on_commit_fails_that_file_only() -> None:
    sink = MemorySink.create(fail_on_commit=["bad.json"])
    bad = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "bad.json"))
    bad.write(b"x")
    with pytest.raises(SinkError, match=r"commit of 'bad.json' failed on purpose"):
        bad.commit()
    bad.abort()
    good = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "ok.json"))
    good.commit()
    assert sink.files == {("alice", "ok.json"): b""}


def test_unsafe_names_are_refused_like_the_file_sink() -> None:
    sink = MemorySink.create()
    with pytest.raises(UnsafeFileNameError, match=r"'\.\./x'"):
        sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "../x"))
    with pytest.raises(UnsafeFileNameError, match="user id"):
        sink.privateshare_sink_open_run(run=make_run("a/b"))


def test_find_returns_the_instance_a_framework_created(privateshare_factory) -> None:
    fw = privateshare_factory('[sinks.mem]\ntype = "memory"\n')
    assert MemorySink.find("sinks.mem") is fw.plugins["sinks.mem"]
    deliver(fw, make_file("alice", "f.json"), [b"{}"])
    assert MemorySink.find("sinks.mem").read("alice", "f.json") == b"{}"


def test_find_of_an_unknown_name_lists_the_known_ones() -> None:
    MemorySink.create("sinks.known")
    with pytest.raises(KeyError, match=r"no memory sink named 'mem'.*sinks.known.*\"sinks.mem\""):
        MemorySink.find("mem")


def test_options_are_checked(privateshare_factory) -> None:
    from privateshare import ConfigError

    with pytest.raises(ConfigError, match="fail_on_commit"):
        privateshare_factory('[sinks.mem]\ntype = "memory"\nfail_on_commit = "a.json"\n')
