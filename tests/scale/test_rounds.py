"""Several worker processes pull 60+ users through each real broker: once each per round."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.scale import enqueue_users
from privateshare.scale.app import create_app, queue_length

USERS = 60


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_every_user_exactly_once_per_round(deploy, broker):
    d = deploy(broker, sandbox={"files": 6})
    users = d.consent_users(USERS)
    truth = d.sandbox.ground_truth()

    # Enqueued before any worker runs: the second enqueue sends nothing (back-pressure).
    first = enqueue_users(d.config_path, all_users=True)
    assert sorted(first.enqueued) == users
    again = enqueue_users(d.config_path, all_users=True)
    assert again.enqueued == []
    assert again.busy == {u: "queued" for u in users}
    app = create_app(d.config_path)
    assert queue_length(app, d.raw["scale"]["queue"]) == USERS

    for name in ("w1", "w2", "w3"):
        d.start_worker(name, concurrency=2)
    rows = d.wait_for(users, lambda r: r.state == "done")
    assert d.overlaps() == []
    starts = Counter(u for kind, u, _ in d.runs() if kind == "start")
    assert starts == Counter({u: 1 for u in users})
    for user in users:
        result = rows[user].result
        assert result["ok"] and result["user_id"] == user
        assert result["files_delivered"] == len(truth)
        assert d.delivered(user) == truth
    assert len({rows[u].worker for u in users}) == 3, "every worker took a share"
    assert d.sandbox.stats()["triggers"] == USERS

    # Round two: each user once more, nothing new to deliver.
    second = enqueue_users(d.config_path, all_users=True)
    assert sorted(second.enqueued) == users
    rows = d.wait_for(
        users, lambda r: r.state == "done" and r.task_id != first_task(first, r.user_id)
    )
    starts = Counter(u for kind, u, _ in d.runs() if kind == "start")
    assert starts == Counter({u: 2 for u in users})
    for user in users:
        assert rows[user].result["files_skipped"] == len(truth)
        assert d.delivered(user) == truth
    assert d.overlaps() == []
    assert d.sandbox.stats()["triggers"] == 2 * USERS

    shown = CliRunner().invoke(main, ["scale-status", "--json", "-c", str(d.config_path)])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["counts"] == {"done": USERS}
    assert report["queue_length"] == 0
    assert {u["user_id"] for u in report["users"]} == set(users)

    # privateshare status shows each user's task beside the token and the last run.
    status = CliRunner().invoke(main, ["status", "--json", "-c", str(d.config_path)])
    assert status.exit_code == 0, status.output
    by_user = {row["user_id"]: row for row in json.loads(status.output)}
    assert set(by_user) == set(users)
    assert {row["queue"]["state"] for row in by_user.values()} == {"done"}
    text = CliRunner().invoke(main, ["status", "-c", str(d.config_path)]).output
    assert f"user {users[0]}: pull done" in text


def first_task(outcome, user):
    from privateshare.scale.state import task_id_for

    return task_id_for(outcome.batch, user)


def test_a_new_consent_can_enqueue_its_first_pull(deploy):
    from privateshare.flow import Flow
    from privateshare.scale.hooks import after_consent
    from privateshare.testing.sandboxed import consent

    d = deploy("redis", sandbox={"files": 2}, scale={"enqueue_on_authorize": True, "every": "1s"})
    consent(Flow(d.fw), "newcomer")
    assert after_consent(d.fw, "newcomer", None)  # [scale] enqueue_on_authorize
    assert not after_consent(d.fw, "newcomer", None), "already queued: not sent twice"
    assert not after_consent(d.fw, "newcomer", False)
    app = create_app(d.config_path)
    assert queue_length(app, d.raw["scale"]["queue"]) == 1

    # Task events carry the user id (what Flower shows): listen before the worker starts.
    events: list[dict] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": events.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        listening.start()
        try:
            d.start_worker("w", concurrency=4, extra=("--pool", "threads"))  # threads pool
            rows = d.wait_for(["newcomer"], lambda r: r.state == "done")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                e["type"] == "task-succeeded" for e in events
            ):
                time.sleep(0.1)
        finally:
            receiver.should_stop = True
            listening.join(10)
    assert d.delivered("newcomer") == d.sandbox.ground_truth()
    assert rows["newcomer"].result["ok"]
    kinds = {e["type"]: e for e in events if e["type"].startswith("task-")}
    assert "'user_id': 'newcomer'" in kinds["task-received"]["kwargs"]
    assert kinds["task-pulling"]["user_id"] == "newcomer"
    assert "'user_id': 'newcomer'" in kinds["task-succeeded"]["result"]

    # The schedule: beat enqueues every user each second; back-pressure keeps it to one
    # pull of a user at a time, whatever the pace.
    beat = d.start_process(["beat", "-c", str(d.config_path), "-s", str(d.root / "schedule")])
    deadline = time.monotonic() + 60
    while sum(1 for k, u, _ in d.runs() if k == "end") < 3:
        assert time.monotonic() < deadline, "beat did not enqueue the user again"
        time.sleep(0.2)
    d.kill(beat)
    assert d.overlaps() == []
