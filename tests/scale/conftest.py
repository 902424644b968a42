"""Scale-out tests: real brokers, real worker processes, a real sandbox, PostgreSQL state.

Each test gets its own queue name, Redis database number and table prefix, so runs in
parallel do not collide; worker processes are started as separate machines would run
them (their own process group, so SIGKILL takes a whole "machine").
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from privateshare.flow import Flow
from privateshare.framework import PrivateShare, load
from privateshare.sandbox import Sandbox
from privateshare.scale.state import ScaleState, UserState
from privateshare.testing.sandboxed import consent, dump_toml, sandbox_config, sha256_tree

HERE = Path(__file__).parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
AMQP_PASSWORD_VAR = "PRIVATESHARE_TEST_AMQP_PASSWORD"


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def broker_url(kind: str) -> str:
    """A broker URL on the machine's Redis (a db number per process) or RabbitMQ."""
    if kind == "redis":
        return f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}"
    return "amqp://guest@127.0.0.1:5672//"


@dataclass
class Deployment:
    """A config for a sandbox, the shared state, and worker processes started for it."""

    sandbox: Sandbox
    root: Path
    config_path: Path
    raw: dict[str, Any]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _fw: PrivateShare | None = None

    @property
    def fw(self) -> PrivateShare:
        if self._fw is None:
            self._fw = load(self.config_path)
        return self._fw

    @property
    def witness(self) -> Path:
        return self.root / "witness"

    def consent_users(self, count: int, prefix: str = "user") -> list[str]:
        flow = Flow(self.fw)
        users = [f"{prefix}-{i:03d}" for i in range(count)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda user: consent(flow, user), users))
        return users

    def start_worker(self, name: str, *, concurrency: int = 2, extra: tuple[str, ...] = ()) -> Any:
        return self.start_process(
            [
                "worker",
                "-c",
                str(self.config_path),
                "-n",
                f"{name}@scaletest",
                "--concurrency",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                *extra,
            ],
            log_name=f"worker-{name}.log",
        )

    def start_process(self, args: list[str], log_name: str = "beat.log") -> Any:
        """``python -m privateshare ARGS`` in its own process group, as on another machine."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "PRIVATESHARE_WITNESS_DIR": str(self.witness),
            AMQP_PASSWORD_VAR: "guest",
        }
        log = open(self.root / log_name, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "privateshare", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop_workers(self) -> None:
        """End every worker "machine" at once (the tests have checked what they need)."""
        for proc in self.workers:
            if proc.poll() is None:
                self.kill(proc)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every worker started says it is ready (its pool assembled the framework)."""
        deadline = time.monotonic() + timeout
        names = [
            p.args[p.args.index("-n") + 1].split("@")[0] for p in self.workers if "-n" in p.args
        ]
        while not all(b" ready." in (self.root / f"worker-{n}.log").read_bytes() for n in names):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not ready in {timeout}s")
            time.sleep(0.1)

    def state(self) -> ScaleState:
        return ScaleState(self.fw).ready()

    def wait_for(
        self, users: list[str], done: Callable[[UserState], bool], timeout: float = 90
    ) -> dict[str, UserState]:
        state = self.state()
        try:
            deadline = time.monotonic() + timeout
            while True:
                rows = {r.user_id: r for r in state.users(users)}
                if all(u in rows and done(rows[u]) for u in users):
                    return rows
                if time.monotonic() > deadline:
                    pending = {u: rows[u].state if u in rows else "-" for u in users}
                    pending = {
                        u: s for u, s in pending.items() if not (u in rows and done(rows[u]))
                    }
                    logs = "\n".join(
                        p.read_text(errors="replace")[-3000:]
                        for p in self.root.glob("worker-*.log")
                    )
                    raise AssertionError(f"not finished in {timeout}s: {pending}\n{logs}")
                time.sleep(0.2)
        finally:
            state.close()

    def runs(self) -> list[tuple[str, str, int]]:
        """``(start|end, user, pid)`` for every run the witness saw, in order."""
        path = self.witness / "runs.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            kind, user, pid, _run = line.split(" ")
            out.append((kind, user, int(pid)))
        return out

    def overlaps(self) -> list[str]:
        path = self.witness / "overlaps.log"
        return path.read_text().splitlines() if path.exists() else []

    def delivered(self, user: str) -> dict[str, str]:
        return sha256_tree(self.root / "data" / user)

    def close(self) -> None:
        self.stop_workers()
        if self._fw is not None:
            self._fw.close()
        engine = sa.create_engine(PG_URL)
        prefix = self.raw["tokens"]["table_prefix"]
        with engine.begin() as conn:
            names = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p"),
                {"p": prefix + "%"},
            ).scalars()
            for name in list(names):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        engine.dispose()


@pytest.fixture
def deploy(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> Iterator[Callable[..., Deployment]]:
    """``deploy(broker="redis"|"rabbitmq"|URL, sandbox={...}, scale={...})`` -> a Deployment."""
    made: list[Deployment] = []
    os.environ[AMQP_PASSWORD_VAR] = "guest"

    def make(
        broker: str = "redis",
        *,
        sandbox: dict[str, Any] | None = None,
        scale: dict[str, Any] | None = None,
        pull: dict[str, Any] | None = None,
    ) -> Deployment:
        for port, kind in ((6379, "redis"), (5672, "rabbitmq")):
            if broker == kind and not _reachable(port):
                pytest.fail(f"the machine's {kind} on 127.0.0.1:{port} is not running")
        # A library ready at the first poll: the tests are about tasks, not polling.
        box = privateshare_sandbox(**{"pending_polls": 0, "running_polls": 0, **(sandbox or {})})
        root = tmp_path / f"deploy-{len(made)}"
        (root / "witness").mkdir(parents=True)
        raw = sandbox_config(box, root)
        keys = raw["keys"]
        if keys.get("type") == "file":
            keys["path"] = str(box.config_path().parent / keys["path"])
        tag = uuid.uuid4().hex[:10]
        raw["tokens"] = {"type": "sql", "url": PG_URL, "table_prefix": f"t{tag}_"}
        raw["pull"] = {**raw["pull"], "concurrency": 4, **(pull or {})}
        url = broker_url(broker) if broker in ("redis", "rabbitmq") else broker
        raw["scale"] = {
            "broker": url,
            "queue": f"privateshare-test-{tag}",
            "machines": "one",
            "retry_delay": 0.5,
            **({"broker_password": {"env": AMQP_PASSWORD_VAR}} if url.startswith("amqp") else {}),
            **(scale or {}),
        }
        raw["plugins"] = {"modules": ["scale_witness"]}
        path = root / "privateshare.toml"
        path.write_text(dump_toml(raw), encoding="utf-8")
        os.environ["PRIVATESHARE_WITNESS_DIR"] = str(root / "witness")
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        deployment = Deployment(box, root, path, raw)
        made.append(deployment)
        return deployment

    try:
        yield make
    finally:
        for deployment in made:
            deployment.close()
