"""Benchmark: users/s and files/s through Celery with 1, 2 and 4 worker processes.

One sandbox runs in its own process (so its CPU is its own); the users consent once and
their tokens live in the sql token store on PostgreSQL; the broker is the machine's Redis
(``--broker`` for another, e.g. ``amqp://guest:guest@127.0.0.1:5672//``). For each worker
count a fresh file sink is configured and the checkpoints are cleared (every file is pulled again),
``N`` worker processes with ``--concurrency 1`` are started and made ready, every user is
enqueued, and the wall time to the last ``done`` is measured. CPU seconds are read from
``/proc`` for the workers (every process of their groups) and the sandbox, from ``INFO``
for Redis and from ``pg_stat_database`` for PostgreSQL's transactions.

The per-user cost is then split: the sandbox's CPU (what digi.me would spend), the
worker's crypto (PS512 per request, RSA-OAEP + AES-CBC per file: measured here on the
contract key), the sink (the file sink writing the same bytes, fsync included: measured
here), and the rest of the worker's CPU (HTTP client, JSON, framework, Celery, SQL state).

    python benchmarks/scale.py [--users 60] [--files 12] [--workers 1,2,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import sqlalchemy as sa

from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.testing.helpers import deliver, make_file
from privateshare.testing.sandboxed import consent, dump_toml

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TICK = os.sysconf("SC_CLK_TCK")


def sandbox_process(conn: Any, workdir: str, files: int) -> None:
    """Child: run the sandbox until told to stop; report its config path and pid."""
    from privateshare.sandbox import Sandbox, SandboxSettings

    box = Sandbox(
        SandboxSettings.instant(files=files, seed=7),
        state_dir=Path(workdir) / "sandbox",
        key_cache=Path(workdir) / "keys",
    ).start()
    truth = box.ground_truth()
    conn.send({"config": str(box.config_path()), "pid": os.getpid(), "files": len(truth)})
    while True:
        message = conn.recv()
        if message == "stats":
            conn.send(box.stats())
        else:
            break
    box.stop()


def cpu_of_group(pgid: int) -> float:
    """CPU seconds (user + system, children reaped included) of every process in a group."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is pgrp (field 5 of stat)
            total += sum(int(x) for x in fields[11:15]) / TICK
    return total


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / TICK


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pg_commits(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = 'test'")
            ).scalar()
        )


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:8]
        self.parent, child = mp.Pipe()
        self.sandbox = mp.get_context("fork").Process(
            target=sandbox_process, args=(child, str(workdir), args.files), daemon=True
        )
        self.sandbox.start()
        info = self.parent.recv()
        self.sandbox_pid = info["pid"]
        self.files_per_user = info["files"]
        self.raw = tomllib.loads(Path(info["config"]).read_text())
        keys = self.raw["keys"]
        if keys.get("type") == "file":
            keys["path"] = str(Path(info["config"]).parent / keys["path"])
        self.raw["tokens"] = {"type": "sql", "url": PG_URL, "table_prefix": f"b{self.tag}_"}
        self.raw["pull"] = {"poll_interval": 0.05, "retry_backoff": 0.01, "concurrency": 4}
        self.raw["transport"] = {"type": "requests", "backoff": 0.01}
        parts = urlsplit(args.broker)
        broker = args.broker
        self.raw["scale"] = {"queue": f"privateshare-bench-{self.tag}", "machines": "one"}
        if parts.password:  # [scale] takes the password by reference only
            os.environ["PRIVATESHARE_BENCH_BROKER_PW"] = parts.password
            netloc = parts.netloc.replace(f":{parts.password}@", "@")
            broker = urlunsplit(parts._replace(netloc=netloc))
            self.raw["scale"]["broker_password"] = {"env": "PRIVATESHARE_BENCH_BROKER_PW"}
        self.raw["scale"]["broker"] = broker
        self.users: list[str] = []

    def config(self, sink: str) -> Path:
        raw = dict(self.raw)
        raw["sinks"] = {sink: {"type": "file", "root": str(self.workdir / sink)}}
        path = self.workdir / f"{sink}.toml"
        path.write_text(dump_toml(raw))
        return path

    def consent(self) -> None:
        fw = load(self.config("consent"))
        flow = Flow(fw)
        self.users = [f"bench-{i:04d}" for i in range(self.args.users)]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda u: consent(flow, u), self.users))
        fw.close()

    def stats(self) -> dict[str, Any]:
        self.parent.send("stats")
        return self.parent.recv()

    def round(self, workers: int) -> dict[str, Any]:
        from privateshare.scale import enqueue_users
        from privateshare.scale.state import ScaleState

        path = self.config(f"run{workers}")
        procs = []
        for i in range(workers):
            log = open(self.workdir / f"w{workers}-{i}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "privateshare", "worker", "-c", str(path),
                     "-n", f"b{i}@bench", "--concurrency", "1", "--without-gossip",
                     "--without-mingle", "--loglevel", "WARNING"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )  # fmt: skip
            log.close()
        fw = load(path)
        for user in self.users:  # every file is pulled again in each round
            fw.hooks.checkpoint_save(user, {})
        state = ScaleState(fw).ready()
        try:
            # Ready: every worker answers a ping.
            from privateshare.scale import create_app

            app = create_app(path)
            deadline = time.monotonic() + 120
            while len(app.control.ping(timeout=1.0) or []) < workers:
                if time.monotonic() > deadline:
                    raise SystemExit("workers did not start; see the w*.log files")
            time.sleep(2)  # pool processes assemble the framework
            rc, pg = redis.Redis.from_url(self.args.redis_info), sa.create_engine(PG_URL)
            before = (
                sum(cpu_of_group(p.pid) for p in procs),
                cpu_of(self.sandbox_pid),
                redis_cpu(rc),
                pg_commits(pg),
                self.stats(),
            )
            start = time.perf_counter()
            enqueue_users(path, all_users=True)
            while True:
                rows = state.users(self.users)
                if len(rows) == len(self.users) and all(r.state == "done" for r in rows):
                    break
                bad = [r for r in rows if r.state in ("dead", "failed")]
                if bad:
                    raise SystemExit(f"pulls failed: {bad[0]}")
                time.sleep(0.05)
            wall = time.perf_counter() - start
            loadavg = os.getloadavg()[0]
            after = (
                sum(cpu_of_group(p.pid) for p in procs),
                cpu_of(self.sandbox_pid),
                redis_cpu(rc),
                pg_commits(pg),
                self.stats(),
            )
            files = sum(r.result["files_delivered"] for r in rows)
            requests = sum(after[4]["requests"].values()) - sum(before[4]["requests"].values())
            pg.dispose()
            n = len(self.users)
            return {
                "workers": workers,
                "users": n,
                "files": files,
                "wall_s": wall,
                "users_per_s": n / wall,
                "files_per_s": files / wall,
                "worker_cpu_ms_per_user": 1000 * (after[0] - before[0]) / n,
                "sandbox_cpu_ms_per_user": 1000 * (after[1] - before[1]) / n,
                "redis_cpu_ms_per_user": 1000 * (after[2] - before[2]) / n,
                "pg_commits_per_user": (after[3] - before[3]) / n,
                "requests_per_user": requests / n,
                "bytes_per_user": (after[4]["bytes_sent"] - before[4]["bytes_sent"]) / n,
                "load": loadavg,
            }
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            state.close()
            fw.close()

    def micro(self, requests_per_user: float, bytes_per_user: float) -> dict[str, float]:
        """Crypto and sink cost of one user, measured on the contract key and a file sink."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        fw = load(self.config("micro"))
        key = fw.key_handle()
        n = 200
        t = time.process_time()
        for i in range(n):
            key.sign_ps512(b"x" * 300 + str(i).encode())
        sign_ms = 1000 * (time.process_time() - t) / n
        wrapped = key.public_key().encrypt(os.urandom(32), _oaep())
        t = time.process_time()
        for _ in range(n):
            key.decrypt_oaep_sha1(wrapped)
        oaep_ms = 1000 * (time.process_time() - t) / n
        size = max(1, int(bytes_per_user / self.files_per_user))
        body = os.urandom(size - size % 16 + 16)
        aes = Cipher(algorithms.AES(os.urandom(32)), modes.CBC(os.urandom(16)))
        t = time.process_time()
        for _ in range(n):
            d = aes.decryptor()
            d.update(body)
            d.finalize()
        aes_ms = 1000 * (time.process_time() - t) / n
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            deliver(fw, make_file("micro", name=f"f{i}.json"), [body])
        sink_wall_ms = 1000 * (time.perf_counter() - t0) / n
        sink_cpu_ms = 1000 * (time.process_time() - c0) / n
        fw.close()
        f = self.files_per_user
        return {
            "sign_ms": sign_ms,
            "oaep_ms": oaep_ms,
            "aes_ms_per_file": aes_ms,
            "crypto_ms_per_user": requests_per_user * sign_ms + f * (oaep_ms + aes_ms),
            "sink_cpu_ms_per_user": f * sink_cpu_ms,
            "sink_wall_ms_per_user": f * sink_wall_ms,
        }

    def close(self) -> None:
        self.parent.send("stop")
        self.sandbox.join(10)
        engine = sa.create_engine(PG_URL)
        with engine.begin() as conn:
            names = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p"),
                {"p": f"b{self.tag}_%"},
            ).scalars()
            for name in list(names):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
        engine.dispose()


def _oaep() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--redis-info", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="privateshare-scale-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            t = time.perf_counter()
            bench.consent()
            print(f"{args.users} users consented in {time.perf_counter() - t:.1f} s", flush=True)
            rounds = []
            for workers in (int(w) for w in args.workers.split(",")):
                r = bench.round(workers)
                rounds.append(r)
                print(
                    f"{workers} worker(s): {r['wall_s']:.1f} s, {r['users_per_s']:.1f} users/s, "
                    f"{r['files_per_s']:.0f} files/s",
                    flush=True,
                )
            micro = bench.micro(
                statistics.mean(r["requests_per_user"] for r in rounds),
                statistics.mean(r["bytes_per_user"] for r in rounds),
            )
        finally:
            bench.close()
    report(rounds, micro, bench.files_per_user)
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "micro": micro}, indent=2))


def report(rounds: list[dict[str, Any]], micro: dict[str, float], files: int) -> None:
    print()
    print("| workers | users/s | files/s | wall s | worker CPU ms/user | sandbox CPU ms/user | "
          "Redis CPU ms/user | PG commits/user | cores busy (ours) | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        cpu = (
            r["worker_cpu_ms_per_user"] + r["sandbox_cpu_ms_per_user"] + r["redis_cpu_ms_per_user"]
        )
        busy = cpu * r["users_per_s"] / 1000
        print(
            f"| {r['workers']} | {r['users_per_s']:.1f} | {r['files_per_s']:.0f} | "
            f"{r['wall_s']:.1f} | {r['worker_cpu_ms_per_user']:.0f} | "
            f"{r['sandbox_cpu_ms_per_user']:.0f} | {r['redis_cpu_ms_per_user']:.1f} | "
            f"{r['pg_commits_per_user']:.1f} | {busy:.2f} | {r['load']:.1f} |"
        )
    worker = statistics.median(r["worker_cpu_ms_per_user"] for r in rounds)
    sandbox = statistics.median(r["sandbox_cpu_ms_per_user"] for r in rounds)
    redis_ms = statistics.median(r["redis_cpu_ms_per_user"] for r in rounds)
    req = statistics.mean(r["requests_per_user"] for r in rounds)
    crypto, sink = micro["crypto_ms_per_user"], micro["sink_cpu_ms_per_user"]
    rest = worker - crypto - sink
    total = worker + sandbox + redis_ms
    print()
    print(f"per-user cost ({files} files, {req:.0f} signed requests per user), CPU ms:")
    print(f"  sandbox (digi.me's side)        {sandbox:7.1f}")
    print(f"  worker: crypto                  {crypto:7.1f}   (PS512 {micro['sign_ms']:.2f} ms x "
          f"{req:.0f}, RSA-OAEP {micro['oaep_ms']:.2f} ms + AES {micro['aes_ms_per_file']:.3f} "
          f"ms x {files})")  # fmt: skip
    print(f"  worker: sink (file, fsync)      {sink:7.1f}   "
          f"(wall {micro['sink_wall_ms_per_user']:.1f} ms)")  # fmt: skip
    print(f"  worker: network + framework     {rest:7.1f}   "
          "(HTTP client, JSON, JWT checks, Celery, SQL state and checkpoints)")  # fmt: skip
    print(f"  broker (Redis)                  {redis_ms:7.1f}")
    print(f"  total                           {total:7.1f}")
    cores = os.cpu_count() or 1
    print(
        f"\nthis machine: {cores} cores -> at most {1000 * cores / total:.1f} users/s if every "
        "core did nothing else; measured best "
        f"{max(r['users_per_s'] for r in rounds):.1f} users/s. 'cores busy' is the CPU our "
        "processes used per second of wall time (PostgreSQL not counted): when it stops "
        "growing with the workers while the load average stays above the cores, the machine's "
        "CPU is the limit, not the broker or the lock."
    )


if __name__ == "__main__":
    main()
