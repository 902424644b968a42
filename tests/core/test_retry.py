"""``privateshare.retry``: which faults are retried, how often, and never past the deadline."""

from __future__ import annotations

import time

import pytest

from privateshare.errors import (
    MalformedAnswer,
    ServerError,
    TransportError,
    ValidationError,
)
from privateshare.retry import Retry, current_deadline, deadline_scope, past_deadline, transient


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TransportError("reset"), True),
        (MalformedAnswer("not JSON"), True),
        (ServerError("boom", status_code=503), True),
        (ServerError("slow down", status_code=429), True),
        (ServerError("timeout", status_code=408), True),
        (ServerError("bad request", status_code=400), False),
        (ServerError("no such user", status_code=404), False),
        (ValidationError("wrong shape"), False),
        (ValueError("ours"), False),
    ],
)
def test_only_faults_on_the_way_are_transient(error: BaseException, expected: bool) -> None:
    assert transient(error) is expected


def test_nested_deadline_scopes_keep_the_earlier_deadline() -> None:
    assert current_deadline() is None
    with deadline_scope(100.0):
        assert current_deadline() == 100.0
        with deadline_scope(200.0):
            assert current_deadline() == 100.0  # a later one does not extend it
        with deadline_scope(50.0):
            assert current_deadline() == 50.0
        with deadline_scope(None):
            assert current_deadline() == 100.0
        assert current_deadline() == 100.0
    assert current_deadline() is None


def test_past_deadline_is_only_true_once_the_deadline_has_passed() -> None:
    assert not past_deadline()
    with deadline_scope(time.monotonic() - 1):
        assert past_deadline()
    with deadline_scope(time.monotonic() + 3600):
        assert not past_deadline()


def test_the_backoff_doubles_with_at_most_ten_percent_jitter() -> None:
    retry = Retry(attempts=4, backoff=2.0)
    for attempt, base in ((1, 2.0), (2, 4.0), (3, 8.0)):
        delay = retry.delay(attempt)
        assert base <= delay <= base * 1.1


def _failing(errors: list[BaseException], result: str = "ok"):
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return operation, calls


def test_a_transient_fault_is_retried_until_the_call_succeeds() -> None:
    operation, calls = _failing([TransportError("reset"), ServerError("x", status_code=502)])
    assert Retry(attempts=3, backoff=0.0).call(operation, "a download") == "ok"
    assert len(calls) == 3


def test_the_last_error_is_raised_as_it_is_when_attempts_run_out() -> None:
    last = TransportError("reset again")
    operation, calls = _failing([TransportError("reset"), last])
    with pytest.raises(TransportError) as info:
        Retry(attempts=2, backoff=0.0).call(operation, "a download")
    assert info.value is last and len(calls) == 2


def test_a_fault_in_the_request_is_not_retried() -> None:
    operation, calls = _failing([ServerError("bad request", status_code=400)])
    with pytest.raises(ServerError):
        Retry(attempts=5, backoff=0.0).call(operation, "a poll")
    assert len(calls) == 1


def test_zero_attempts_still_tries_once() -> None:
    operation, calls = _failing([])
    assert Retry(attempts=0).call(operation, "a poll") == "ok"
    assert len(calls) == 1


def test_no_attempt_is_waited_for_that_would_start_after_the_deadline() -> None:
    operation, calls = _failing([TransportError("reset"), TransportError("reset")])
    with deadline_scope(time.monotonic() + 3600), pytest.raises(TransportError):
        Retry(attempts=3, backoff=7200.0).call(operation, "a download")
    assert len(calls) == 1  # the backoff would end after the deadline: raised at once
