"""The shared state on each database: back-pressure markers and the user lock across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import sqlalchemy as sa

from privateshare.framework import load
from privateshare.scale.state import ScaleState

SERVERS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test?ssl_disabled=true",
}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb", "file tokens"])
def config_path(request, privateshare_test_key, tmp_path):
    """A config whose shared state is on one database (each load: another "machine")."""
    prefix = f"s{uuid.uuid4().hex[:10]}_"
    if request.param == "file tokens":
        tokens = f'type = "file"\npath = "{tmp_path / "tokens"}"'
    else:
        url = SERVERS.get(request.param, f"sqlite:///{tmp_path / 'shared.db'}")
        tokens = f'type = "sql"\nurl = "{url}"\ntable_prefix = "{prefix}"'
    key = privateshare_test_key.write(tmp_path / "contract.pem")
    path = tmp_path / "privateshare.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [digime]
            application_id = "app"
            contract_id = "contract"
            [keys]
            type = "file"
            path = "{key}"
            [sinks.memory]
            type = "memory"
            [scale]
            broker = "redis://127.0.0.1:6379/0"
            """
        )
        + f"[tokens]\n{tokens}\n"
    )
    yield path
    if request.param in SERVERS:
        engine = sa.create_engine(SERVERS[request.param])
        with engine.begin() as conn:
            for table in sa.inspect(conn).get_table_names():
                if table.startswith(prefix):
                    conn.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()


@pytest.fixture
def make_state(config_path):
    made = []

    def make():
        fw = load(config_path)
        state = ScaleState(fw).ready()
        made.append((fw, state))
        return state

    yield make
    for fw, state in made:
        state.close()
        fw.close()


def test_back_pressure_claims_each_idle_user_once(make_state):
    one, other = make_state(), make_state()
    users = [f"u{i}" for i in range(1200)]  # more than one chunk
    batch, claimed = one.claim(users, stale_after=3600, revive=False)
    assert claimed == users
    _, again = other.claim(users, stale_after=3600, revive=False)
    assert again == []
    assert {s.state for s in other.users(users)} == {"queued"}
    one.started("u1", "t", "w@host", 0)
    one.finished("u1", "t", "done", result={"ok": True})
    one.finished("u2", "t", "dead", error="gone")
    _, freed = other.claim(users, stale_after=3600, revive=False)
    assert freed == ["u1"], "done users go again; dead ones only when named"
    _, revived = other.claim(["u2"], stale_after=3600, revive=True)
    assert revived == ["u2"]
    # A marker older than stale_after is taken as lost (a purged queue).
    _, stale = other.claim(["u3"], stale_after=0, revive=False)
    assert stale == ["u3"]
    rows = {s.user_id: s for s in one.users(["u1", "u2"])}
    assert rows["u1"].state == "queued" and rows["u1"].result == {"ok": True}
    # Marked running by a worker that is gone (its lock with it): enqueued again; one whose
    # lock is held is not.
    one.started("u5", "t5", "w@gone", 0)
    one.started("u6", "t6", "w@alive", 0)
    with one.user_lock("u6") as held:
        assert held
        _, orphans = other.claim(["u5", "u6"], stale_after=3600, revive=False)
    assert orphans == ["u5"]
    one.release_claim(batch, ["u4"], "broker down")
    assert one.users(["u4"])[0].state == "idle"


def test_the_user_lock_holds_across_processes_and_dies_with_them(make_state, config_path, tmp_path):
    one, other = make_state(), make_state()
    with one.user_lock("alice") as held:
        assert held
        with other.user_lock("alice") as second:
            assert not second, "a second holder is refused at once, not made to wait"
        with other.user_lock("bob") as bob:
            assert bob, "the lock is per user"
    with other.user_lock("alice") as held:
        assert held, "released on exit"

    # A process that holds the lock and is killed: the server (or the OS) drops it.
    ready = tmp_path / "ready"
    script = "\n".join(
        [
            "import pathlib, time",
            "from privateshare.framework import load",
            "from privateshare.scale.state import ScaleState",
            f"state = ScaleState(load({str(config_path)!r}))",
            "with state.user_lock('carol') as held:",
            "    assert held",
            f"    pathlib.Path({str(ready)!r}).write_text('1')",
            "    time.sleep(60)",
        ]
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(300):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the child took the lock"
        with other.user_lock("carol") as held:
            assert not held
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        for _ in range(50):
            with other.user_lock("carol") as held:
                if held:
                    break
            time.sleep(0.1)
        assert held, "the dead process's lock is gone"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
