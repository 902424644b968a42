"""core/cli/report.py: progress lines (plain, JSON log records, rich) and the run summaries."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from privateshare.cli import logs
from privateshare.cli.report import Reporter, summary_dict
from privateshare.models import FileFailure, LibraryStatus, RunSummary


@pytest.fixture(autouse=True)
def plain_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a plain, not quiet, command (the flags are module state)."""
    monkeypatch.setattr(logs, "quiet", False)
    monkeypatch.setattr(logs, "json_mode", False)
    monkeypatch.setattr(logs, "live_console", None)


def test_plain_progress_lines_name_the_user(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter()
    assert not reporter.rich  # stderr is not a terminal under pytest
    reporter.for_user("ann")("file", ("posts.json", 12))
    reporter.for_user("bob")("status", LibraryStatus(state="partial"))
    reporter("file", ("a.json", 0))  # a run of no particular user
    reporter("unknown-event", object())  # ignored, not an error
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "user ann: delivered posts.json (12 bytes)",
        "user bob: library partial",
        "delivered a.json (0 bytes)",
    ]


@pytest.mark.parametrize(
    ("as_json", "quiet", "logs_quiet"),
    [(True, False, False), (False, True, False), (False, False, True)],
    ids=["json-output", "quiet-flag", "quiet-log-level"],
)
def test_no_progress_lines_when_quiet_or_printing_json(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    as_json: bool,
    quiet: bool,
    logs_quiet: bool,
) -> None:
    monkeypatch.setattr(logs, "quiet", logs_quiet)
    reporter = Reporter(as_json=as_json, quiet=quiet)
    assert reporter.quiet and not reporter.rich
    with reporter.live("pulling"):
        reporter.for_user("ann")("file", ("posts.json", 12))
        reporter("status", LibraryStatus(state="completed"))
    assert capsys.readouterr() == ("", "")


def test_json_log_format_turns_progress_into_info_records(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "json_mode", True)
    reporter = Reporter()
    with caplog.at_level(logging.INFO, logger="privateshare.progress"):
        reporter.for_user("ann")("file", ("posts.json", 12))
        reporter("status", LibraryStatus(state="completed"))
    assert capsys.readouterr().err == "", "the log handler prints them, not the reporter"
    file, status = caplog.records
    assert (file.name, file.levelno, file.getMessage()) == (
        "privateshare.progress",
        logging.INFO,
        "user ann: delivered posts.json (12 bytes)",
    )
    assert (file.user_id, file.event, file.file) == ("ann", "file", "posts.json")
    assert (status.user_id, status.event) == (None, "status")
    assert not hasattr(status, "file")


def test_a_terminal_gets_one_live_display_that_logs_print_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reporter = Reporter()
    reporter.rich = True  # as on a terminal
    with reporter.live("pulling") as live:
        assert live is reporter
        assert logs.live_console is not None, "log lines go through the display's console"
        reporter.for_user("ann")("file", ("a.json", 10))
        reporter.for_user("ann")("file", ("b.json", 20))
        reporter.for_user("ann")("status", LibraryStatus(state="completed"))
        task = reporter._progress.tasks[0]
        assert (task.fields["files"], task.completed) == (2, 30)
        assert task.description == "user ann: library completed"
    assert logs.live_console is None
    assert reporter._progress is None
    reporter("file", ("c.json", 1))  # after the display ends: plain lines again
    out, err = capsys.readouterr()
    assert "2 files" in out  # the display's last frame stays on screen
    assert err == "delivered c.json (1 bytes)\n"


def test_the_live_display_is_taken_down_when_the_pull_raises() -> None:
    reporter = Reporter()
    reporter.rich = True
    with pytest.raises(RuntimeError, match="broke"), reporter.live("pulling"):
        raise RuntimeError("broke")
    assert logs.live_console is None and reporter._progress is None


def _summary(**fields: object) -> RunSummary:
    fields.setdefault("final_state", "completed")
    return RunSummary(run_id="r1", user_id="ann", **fields)


def test_a_clean_run_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    summary = _summary(
        files_delivered=3,
        bytes_delivered=1234,
        files_skipped=2,
        duration_s=1.26,
        sinks_delivered={"sinks.local": 3},
    )
    Reporter().summaries([summary])
    assert capsys.readouterr().out == (
        "user ann: 3 delivered (1234 bytes), 2 skipped, 0 failed; library completed; 1.3s\n"
    )


def test_a_troubled_run_says_what_and_how_to_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    summary = _summary(
        final_state="partial",
        files_delivered=1,
        sinks_delivered={"sinks.b": 1, "sinks.a": 0},
        notes=["sinks.b is new: backfilled"],
        files_failed=[FileFailure("x.json", "cannot decrypt")],
        files_failed_total=3,
        reauthorize_urls={"acc-1": "https://example.test/reauth?x=1"},
        error="the library did not finish",
    )
    config = tmp_path / "my config.toml"
    Reporter().summaries([summary], config_path=config)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "user ann: 1 delivered (0 bytes), 0 skipped, 3 failed; library partial"
    )
    assert lines[1:] == [
        "  delivered per sink: sinks.a 0, sinks.b 1",
        "  note: sinks.b is new: backfilled",
        "  user ann: failed x.json: cannot decrypt",
        "  … and 2 more failed (see the log)",
        "  account acc-1 needs the user to reauthorize: https://example.test/reauth?x=1",
        f"    or run: privateshare reauthorize --config '{config}' --user ann --account acc-1",
        "  stopped early: the library did not finish",
    ]


def test_summary_details_shown_only_when_they_say_something(
    capsys: pytest.CaptureFixture[str],
) -> None:
    backfilled_nothing = _summary(sinks_backfilled=["sinks.new"])
    default_config = _summary(reauthorize_urls={"acc-1": "https://example.test/r"})
    reporter = Reporter()
    reporter.summaries([backfilled_nothing])
    reporter.summaries([default_config], config_path=Path("privateshare.toml"))
    reporter.summaries([default_config])  # a library caller: no command to suggest
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  delivered per sink: none"
    assert lines[4] == "    or run: privateshare reauthorize --user ann --account acc-1"
    assert not any("or run" in line for line in lines[5:])


def test_json_summaries_are_the_whole_summary_plus_ok(capsys: pytest.CaptureFixture[str]) -> None:
    good = _summary(files_delivered=2, sinks_delivered={"sinks.local": 2})
    bad = _summary(files_failed=[FileFailure("x.json", "gone", check="sha")], files_failed_total=1)
    Reporter(as_json=True).summaries([good, bad], config_path=Path("elsewhere.toml"))
    printed = json.loads(capsys.readouterr().out)
    assert printed == [summary_dict(good), summary_dict(bad)]
    assert [p["ok"] for p in printed] == [True, False]
    assert printed[1]["files_failed"] == [{"name": "x.json", "reason": "gone", "check": "sha"}]
    assert set(printed[0]) == set(RunSummary.__struct_fields__) | {"ok"}
