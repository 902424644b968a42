"""Issue 11, flow side: deadlines, retries, bounded work, and no entry left unaccounted.

Against the sandbox over real HTTP, and hostile servers (``hostile.py``) for answers the
sandbox cannot be asked to give. No timed assertions: deadlines are checked by what was
sent before them and what was reported after.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from privateshare import hookimpl
from privateshare.client.files import decode_x_metadata
from privateshare.flow import Flow, Run
from privateshare.models import MAX_FAILURES_LISTED, Session, Token, UserAccessToken
from privateshare.retry import current_deadline, past_deadline
from privateshare.sandbox import Sandbox, SandboxSettings
from privateshare.sandbox.library import Library, generate_library
from privateshare.sandbox.settings import FAULT_ENDPOINTS
from privateshare.transport import HttpRequest

from .conftest import consent, delivered, framework_for
from .hostile import HostileServer, answer, list_answer, list_proxy

HANG_GUARD = 120.0  # seconds: only ever reached when something hangs


class Recorder:
    """Every request the framework sends, with when it was handed to the transport."""

    def __init__(self) -> None:
        self.sent: list[tuple[HttpRequest, float]] = []
        self._lock = threading.Lock()

    @hookimpl(wrapper=True)
    def privateshare_transport_send(self, request: HttpRequest) -> Iterator[None]:
        with self._lock:
            self.sent.append((request, time.monotonic()))
        return (yield)

    def paths(self) -> list[str]:
        return [request.url for request, _ in self.sent]


def recorded(flow: Flow) -> Recorder:
    recorder = Recorder()
    flow.fw.pm.register(recorder)
    return recorder


def library_of(files: int, **renamed: Any) -> Library:
    """A seeded library whose first files get the given names / dates."""
    library = generate_library(1, files=files, updated_fraction=0)
    changed = list(library.files)
    for index, change in enumerate(renamed.values()):
        name, date = change
        version = changed[index].versions[-1]
        if date is not None:
            version = dataclasses.replace(version, updated_date=date)
        changed[index] = dataclasses.replace(changed[index], name=name, versions=(version,))
    return dataclasses.replace(library, files=tuple(changed))


@pytest.fixture
def library_sandbox(
    privateshare_sandbox_keys: Path, tmp_path: Path
) -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(library: Library, **settings: Any) -> Sandbox:
        sandbox = Sandbox(
            SandboxSettings.instant(**settings),
            state_dir=tmp_path / f"sb{len(started)}",
            library=library,
            key_cache=privateshare_sandbox_keys,
        )
        started.append(sandbox.start())
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


# --- item 4: one deadline for the whole pull ---------------------------------------------


def test_every_request_of_a_pull_carries_the_one_run_deadline(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    # The token has expired by the time the pull starts: the pull refreshes it first, so
    # the refresh is among the requests, with the trigger, the polls and the downloads.
    # Tokens live 3 s: long enough that the refreshed one outlives this short pull on a busy
    # machine (with 1 s it could expire mid-pull and fail a file), short enough to wait out.
    sandbox = start_sandbox(files=6, access_token_lifetime=3)
    flow = Flow(framework_for(sandbox, tmp_path, api=api, pull={"timeout": 600}))
    consent(flow, "dora")
    time.sleep(3.5)
    recorder = recorded(flow)
    before = time.monotonic()
    summary = flow.pull("dora")
    after = time.monotonic()
    assert summary.ok, summary
    urls = recorder.paths()
    assert any("oauth/token" in u for u in urls), urls  # the refresh
    assert any(u.endswith("permission-access/trigger") for u in urls)
    assert sum("/query/" in u for u in urls) > len(sandbox.ground_truth())  # polls + files
    deadlines = {request.deadline for request, _ in recorder.sent}
    assert len(deadlines) == 1, deadlines
    (deadline,) = deadlines
    assert deadline is not None and before + 600 <= deadline <= after + 600
    assert current_deadline() is None  # the scope ended with the pull


def _trickle_files(timeout: float, names: list[str], hung_up: dict[str, bool]) -> Any:
    """The list, then every file's body at about 1 byte a second until ``timeout + 3``."""

    def handle(request: BaseHTTPRequestHandler) -> None:
        parts = request.path.split("/")
        if parts[-2] == "query":
            answer(request, 200, list_answer([(n, 1) for n in names]))
            return
        name = parts[-1]
        header = "eyJtZXRhZGF0YSI6e319"  # base64url of {"metadata":{}}
        request.send_response(200)
        request.send_header("content-type", "application/octet-stream")
        request.send_header("x-metadata", header)
        request.send_header("content-length", "100000")
        request.end_headers()
        hung_up[name] = False
        stop = time.monotonic() + timeout + 3
        try:
            while time.monotonic() < stop:
                request.wfile.write(b"\0")
                request.wfile.flush()
                time.sleep(1)
        except OSError:
            hung_up[name] = True  # the client went away mid-body
            return
        request.close_connection = True  # cut: far short of Content-Length

    assert decode_x_metadata("eyJtZXRhZGF0YSI6e319", "x").metadata == {}
    return handle


def _trickle_pull(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, timeout: float
) -> tuple[Any, Recorder, dict[str, bool], list[str]]:
    sandbox = start_sandbox(files=1)  # for a contract key and a config
    names = [f"slow-{i}.json" for i in range(6)]
    hung_up: dict[str, bool] = {}
    with HostileServer(_trickle_files(timeout, names, hung_up)) as server:
        fw = framework_for(
            sandbox,
            tmp_path,
            digime={"base_url": server.origin + "/v1.7/"},
            pull={"timeout": timeout, "concurrency": 2, "file_attempts": 3},
        )
        flow = Flow(fw)
        recorder = recorded(flow)
        token = UserAccessToken(Token("access", 0), Token("refresh", 0))
        summary = flow.pull("eve", token=token, session=Session("key-1", 0), save_token=False)
    return summary, recorder, hung_up, names


def test_a_trickling_download_ends_the_pull_with_the_timeout_flow_side(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    summary, recorder, _hung_up, names = _trickle_pull(start_sandbox, tmp_path, timeout=3)
    # The run says why it stopped; every file is reported failed with a reason.
    assert summary.error and "[pull] timeout" in summary.error, summary.error
    assert summary.files_delivered == 0
    assert summary.files_failed_total == len(names)
    assert {f.name for f in summary.files_failed} == set(names)
    # Every request carried the run's one deadline, and none was sent after it.
    deadlines = {request.deadline for request, _ in recorder.sent}
    assert len(deadlines) == 1 and None not in deadlines
    (deadline,) = deadlines
    assert all(sent_at < deadline for _, sent_at in recorder.sent)
    started = {request.url.rsplit("/", 1)[1] for request, _ in recorder.sent}
    for failure in summary.files_failed:
        if failure.name in started:
            assert any(w in failure.reason for w in ("cut short", "deadline", "timeout")), failure
        else:
            assert failure.reason.startswith(("not attempted", "not started")), failure


def test_a_trickling_download_is_ended_by_the_deadline_end_to_end(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    summary, _recorder, hung_up, _names = _trickle_pull(start_sandbox, tmp_path, timeout=3)
    assert summary.error and "[pull] timeout" in summary.error
    # The client hung up at its deadline instead of waiting for the server to stop: the
    # server notices on its next write, a second or so later (the wait is a hang guard).
    give_up = time.monotonic() + 30
    while not (hung_up and all(hung_up.values())) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert hung_up and all(hung_up.values()), hung_up


def test_the_pool_is_fed_a_few_files_at_a_time_and_nothing_new_starts_after_the_deadline(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers held in the sink until the deadline: two run, two wait in the queue, and the
    # other sixteen are never queued. So the queue is bounded by 2 x concurrency, and past
    # the deadline the queued ones do not start and the rest are reported not attempted:
    # in batches (of 5 here, so 5 + 5 + 5 + 1), each file once to the hook and the progress.
    monkeypatch.setattr(Run, "LATE_BATCH", 5)
    sandbox = start_sandbox(files=20)
    writers: list[str] = []
    hooked: list[str] = []
    progressed: list[str] = []

    class HoldingSink:
        @hookimpl
        def privateshare_sink_open_file(self, run: Any, file: Any) -> Any:
            writers.append(file.name)
            while not past_deadline():  # the worker's scope: the run's deadline
                time.sleep(0.05)

        @hookimpl
        def privateshare_file_failed(self, user_id: str, file_name: str, error: Exception) -> None:
            hooked.append(file_name)

    def progress(event: str, data: Any) -> None:
        if event == "failed":
            progressed.append(data[0])

    fw = framework_for(
        sandbox,
        tmp_path,
        pull={"timeout": 2, "concurrency": 2},
        sinks={"memory": {"type": "memory"}},
    )
    fw.pm.register(HoldingSink())
    flow = Flow(fw)
    token, session = consent(flow, "finn")
    summary = flow.pull("finn", token=token, session=session, progress=progress)
    reasons = [f.reason for f in summary.files_failed]
    assert len(writers) == 2, writers
    assert sum(r.startswith("not attempted") for r in reasons) == 16, reasons
    assert sum(r.startswith("not started") for r in reasons) == 2, reasons
    assert summary.files_delivered + summary.files_failed_total == 20
    assert summary.error and "[pull] timeout" in summary.error
    failed = sorted(f.name for f in summary.files_failed)
    assert len(failed) == summary.files_failed_total == len(set(failed))
    assert sorted(hooked) == failed and sorted(progressed) == failed


# --- item 5: transient faults on every call -----------------------------------------------


def _consent_despite_faults(flow: Flow, user: str) -> None:
    """Consent calls are not retried (a person would start again): so does this."""
    for _ in range(20):
        try:
            consent(flow, user)
            return
        except Exception:
            continue
    raise AssertionError("consent never got through the faults")


@pytest.mark.parametrize(
    "faults",
    [{"truncate_rate": 0.1}, {"error_rate": 0.3}, {"reset_rate": 0.1}],
    ids=["cut-bodies", "5xx", "resets"],
)
def test_transient_faults_on_every_endpoint_still_deliver_everything_in_one_run(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str, faults: dict[str, float]
) -> None:
    sandbox = start_sandbox(
        files=30, pending_polls=1, running_polls=2, fault_endpoints=FAULT_ENDPOINTS, **faults
    )
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    _consent_despite_faults(flow, "gus")
    before = dict(sandbox.stats()["faults"])
    summary = flow.pull("gus")  # trigger, polls, files: every one of them may be hit
    fired = {k: v - before.get(k, 0) for k, v in sandbox.stats()["faults"].items()}
    assert sum(fired.values()) > 0, "the faults did not fire during the pull"
    assert summary.ok, (summary.error, summary.files_failed[:3])
    assert delivered(tmp_path, "gus") == sandbox.ground_truth()


def test_a_5xx_on_trigger_is_retried(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    # Faults are seeded per attempt: with this seed the first two triggers answer 5xx and
    # the third gets through, the last of the default three attempts.
    sandbox = start_sandbox(
        files=4, fault_endpoints=frozenset({"trigger"}), error_rate=0.5, fault_seed=17
    )
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "hal")
    summary = flow.pull("hal")
    assert summary.ok, summary
    assert sandbox.stats()["requests"]["trigger" if api == "v1.7" else "v1.5/trigger"] == 3
    assert sum(sandbox.stats()["faults"].values()) == 2


def test_a_cut_accounts_answer_is_retried(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    # With this fault seed the first accounts answer (v1.5: accounts.json) is cut short
    # and the second is whole.
    sandbox = start_sandbox(
        files=2,
        fault_endpoints=frozenset({"accounts", "file"}),
        truncate_rate=0.5,
        fault_seed=5,
    )
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "pia")
    assert {a.id for a in flow.accounts("pia")} == {str(a["id"]) for a in sandbox.library.accounts}
    assert sandbox.stats()["faults"] == {"truncate": 1}


def test_a_cut_file_list_is_polled_again_not_the_end_of_the_run(
    tmp_path: Path, start_sandbox: Callable[..., Sandbox]
) -> None:
    # Every other list answer is cut short: without a Content-Length (so the transport
    # cannot tell) as invalid JSON, and with one as a short body.
    sandbox = start_sandbox(files=1)
    polls: list[str] = []

    def handle(request: BaseHTTPRequestHandler) -> None:
        if request.path.split("/")[-2] != "query":
            answer(request, 404, b'{"error": {"code": "FileNotFound"}}')
            return
        polls.append(request.path)
        body = list_answer([("a/../../escape.json", 1)])
        if len(polls) == 1:
            request.send_response(200)
            request.send_header("content-type", "application/json")
            request.send_header("connection", "close")
            request.end_headers()
            request.wfile.write(body[: len(body) // 2])
            request.close_connection = True
        elif len(polls) == 2:
            request.send_response(200)
            request.send_header("content-length", str(len(body)))
            request.end_headers()
            request.wfile.write(body[:10])
            request.close_connection = True
        else:
            answer(request, 200, body)

    with HostileServer(handle) as server:
        fw = framework_for(
            sandbox,
            tmp_path,
            digime={"base_url": server.origin + "/v1.7/"},
            transport={"retries": 0},
        )
        token = UserAccessToken(Token("access", 0), Token("refresh", 0))
        summary = Flow(fw).pull("ida", token=token, session=Session("k", 0), save_token=False)
    assert len(polls) == 3
    assert summary.error is None and summary.final_state == "completed"
    assert [f.name for f in summary.files_failed] == ["a/../../escape.json"]


# --- item 6: nothing skipped silently -------------------------------------------------------


def test_files_dated_zero_or_negative_are_delivered_on_every_pull(
    library_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    # A date of 0 or less tells no versions apart: such files are never skipped.
    library = library_of(5, a=("zero.json", 0), b=("negative.json", -1000))
    sandbox = library_sandbox(library)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    consent(flow, "jo")
    first = flow.pull("jo")
    assert first.ok and first.files_delivered == 5, first
    assert delivered(tmp_path, "jo") == sandbox.ground_truth()
    second = flow.pull("jo")
    assert second.files_delivered == 2 and second.files_skipped == 3
    assert delivered(tmp_path, "jo") == sandbox.ground_truth()


def test_an_undated_file_is_taken_from_the_final_list_only(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Both versions of an updated file dated 0: the running list's version must not be the
    # one that stays delivered, so nothing undated is taken before the list is final.
    sandbox = start_sandbox(
        files=30, updated_fraction=1.0, nonpositive_dates=30, pending_polls=0, running_polls=2
    )
    flow = Flow(framework_for(sandbox, tmp_path))
    consent(flow, "kim")
    summary = flow.pull("kim")
    assert summary.ok, summary
    assert delivered(tmp_path, "kim") == sandbox.ground_truth()


UNSAFE = {
    "": "empty",
    "a/../../x.json": "'..' segment",
    "./x.json": "'.' segment",
    "a//b.json": "empty path segment",
    "/etc/passwd": "absolute",
    "bell\x07.json": "control character",
    "back\\slash.json": "backslash",
}


def test_unsafe_names_fail_with_a_reason_before_any_request(
    library_sandbox: Callable[..., Sandbox], tmp_path: Path, api: str
) -> None:
    library = library_of(len(UNSAFE) + 3, **{f"n{i}": (n, None) for i, n in enumerate(UNSAFE)})
    sandbox = library_sandbox(library)
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    token, session = consent(flow, "kim")
    recorder = recorded(flow)
    summary = flow.pull("kim", token=token, session=session)
    failed = {f.name: f.reason for f in summary.files_failed}
    assert set(failed) == set(UNSAFE)
    for name, why in UNSAFE.items():
        assert "unsafe" in failed[name] and why in failed[name], (name, failed[name])
    files_asked = [u for u in recorder.paths() if "/" in u.partition("/query/")[2]]
    assert len(files_asked) == 3  # only the safe files reached a URL
    safe = {k: v for k, v in sandbox.ground_truth().items() if k not in UNSAFE}
    assert delivered(tmp_path, "kim") == safe
    assert summary.files_delivered + summary.files_skipped + summary.files_failed_total == len(
        library.files
    )


def test_the_session_key_never_appears_in_a_relayed_server_error(
    library_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
    api: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A nested name is safe, but the sandbox routes one segment per file: its 404 says
    # "There is no endpoint at <path>", and the path holds the session key.
    sandbox = library_sandbox(library_of(3, a=("nested/file.json", None)))
    flow = Flow(framework_for(sandbox, tmp_path, api=api))
    token, session = consent(flow, "lea")
    caplog.set_level(logging.DEBUG)
    summary = flow.pull("lea", token=token, session=session)
    (failure,) = summary.files_failed
    assert failure.name == "nested/file.json"
    assert "There is no endpoint at" in failure.reason and "<redacted>" in failure.reason
    assert session.key not in failure.reason
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("privateshare")]
    assert any("nested/file.json" in message for message in ours)
    assert not [message for message in ours if session.key in message]
    assert session.key not in repr(summary)


def test_a_name_listed_twice_is_one_file_and_every_entry_is_accounted_for(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = start_sandbox(files=5)
    consent(Flow(framework_for(sandbox, tmp_path)), "max")

    def duplicate(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first, second = entries[0], entries[1]
        older = {**first, "updatedDate": first["updatedDate"] - 1000}
        return [older, *entries, dict(second)]  # an older twin first, and a same-date twin

    with list_proxy(sandbox.origin, duplicate) as proxy:
        flow = Flow(framework_for(sandbox, tmp_path, digime={"base_url": proxy.origin + "/v1.7/"}))
        summary = flow.pull("max")
        assert summary.ok, summary
        assert summary.files_delivered == 5 and summary.files_skipped == 2
        assert "more than once" in caplog.text
        assert delivered(tmp_path, "max") == sandbox.ground_truth()
        again = flow.pull("max")  # the latest date of each name was checkpointed
        assert again.files_delivered == 0 and again.files_skipped == 7


def test_a_date_that_goes_back_is_unchanged_not_older_data_over_newer(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(files=4)
    direct = Flow(framework_for(sandbox, tmp_path))
    consent(direct, "ned")
    assert direct.pull("ned").files_delivered == 4

    def back(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**entries[0], "updatedDate": entries[0]["updatedDate"] - 86_400_000}, *entries[1:]]

    with list_proxy(sandbox.origin, back) as proxy:
        flow = Flow(framework_for(sandbox, tmp_path, digime={"base_url": proxy.origin + "/v1.7/"}))
        older = flow.pull("ned")  # the list shows one file at an earlier version
        assert older.ok and older.files_delivered == 0 and older.files_skipped == 4
    assert delivered(tmp_path, "ned") == sandbox.ground_truth()  # the newer data stayed
    assert direct.pull("ned").files_delivered == 0  # and the checkpoint did not go back


def test_failures_are_all_counted_and_the_first_thousand_listed(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(files=1)
    names = [("bad/../" + str(i), i) for i in range(MAX_FAILURES_LISTED + 200)]

    def handle(request: BaseHTTPRequestHandler) -> None:
        answer(request, 200, list_answer(names))

    with HostileServer(handle) as server:
        fw = framework_for(sandbox, tmp_path, digime={"base_url": server.origin + "/v1.7/"})
        token = UserAccessToken(Token("access", 0), Token("refresh", 0))
        summary = Flow(fw).pull("ola", token=token, session=Session("k", 0), save_token=False)
        assert len(server.paths) == 1  # the list; no unsafe name reached a URL
    assert summary.files_failed_total == len(names)
    assert len(summary.files_failed) == MAX_FAILURES_LISTED
    assert not summary.ok
