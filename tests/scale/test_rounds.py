"""Several worker processes pull 60+ users through each real broker: once each per round."""

from __future__ import annotations

from collections import Counter

import pytest

from privateshare.scale import enqueue_users
from privateshare.scale.app import create_app, queue_length

USERS = 64


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


def first_task(outcome, user):
    from privateshare.scale.state import task_id_for

    return task_id_for(outcome.batch, user)
