"""Benchmark: every performance target of a pull, measured in one run against the sandbox.

The sandbox runs in this process; every client (a pull, the floor, a checkpoint save) runs in
a fresh child process, so client CPU is the child's own (``getrusage``) and peak RSS its own
high-water mark (``VmHWM``). Both share the machine's cores: the figures say how loaded it
was. Each part takes ``--repeat`` rounds, the variants alternating within a round, and prints
the median with min-max. Parts (all by default; pick some with their flags):

``--small``       2,000 files of 20 KiB plaintext (JSON gzip/brotli/none, JPEG, PDF) into the
                  file sink (its root on this disk, and on tmpfs: /dev/shm) and into the
                  memory sink: client CPU per file and files/s, against
                  the floor measured in the same run: one PS512 signature + one RSA-OAEP-SHA1
                  decryption + one ``http.client`` round trip for a file of the same library.
                  Target: CPU per file <= 2.5x the floor (file sink).
``--memory``      peak RSS of a pull and of a re-pull (nothing new) at 2,000 and 50,000 files,
                  each in a fresh process. Target: 50k within 1.2x of 2k.
``--checkpoint``  CPU (and wall) per checkpoint save with one entry changed, at 2,000 and 50,000
                  entries (the file token store). Target: O(what changed): 50k within 1.5x of 2k.
``--sql``         the sql sink's client CPU per small file on SQLite and PostgreSQL against the
                  file sink's. Target: <= 1.5x.
``--large``       one 1 GiB uncompressed file end to end (file sink, fsync included) against
                  ``curl -o /dev/null`` of the same URL. Targets: >= 70% of curl's MB/s; RSS
                  flat (growth over the process's baseline <= 64 MiB).
``--compression`` gzip and brotli files of 15 MiB, one at a time: MB/s of decompressed output
                  end to end (file sink; memory sink for reference) against zlib/brotli
                  decompressing the same bytes in one call in the client's process just
                  before and after its pull; and the client's CPU per byte (the worker
                  thread's, per file) against the bare decompressor's. Target: >= 80%.

    python benchmarks/pull.py [--small] [--memory] [--checkpoint] [--sql] [--large]
                              [--compression] [--quick] [--repeat 3] [--json out.json]

``--quick`` shrinks every part (for development: 30-40 s of CPU, a minute or more of wall
time on a loaded machine; its ratios are indicative only). ``--against CONFIG`` pulls
once from an already running sandbox with that ``privateshare.toml`` and prints one JSON line
(for side-by-side runs with other clients). PostgreSQL: ``--postgresql URL`` (default the
local server, user postgres); the benchmark creates its own database and drops it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
POSTGRESQL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: A RAM file system for the small-file part's file sink on tmpfs (skipped where absent).
TMPFS = "/dev/shm"
CURL = ["curl", "-sS", "-w", "%{http_code} %{size_download} %{time_total}"]


# --- what a child reports -------------------------------------------------------------------


def vm_kib(field_name: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def page_faults() -> int:
    """Minor page faults of this process so far (memory touched for the first time)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@contextlib.contextmanager
def cprofiled(path: str | None, timer: str | None = None) -> Iterator[None]:
    """cProfile every thread started inside (ThreadPoolExecutor workers too); merged to ``path``.

    ``timer="thread"`` measures each thread's CPU time instead of wall time.
    """
    if not path:
        yield
        return
    import cProfile
    import pstats
    import threading

    profiles: list[cProfile.Profile] = []
    run = threading.Thread.run
    clock = {"timer": time.thread_time} if timer == "thread" else {}

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile(**clock)
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    main = cProfile.Profile(**clock)
    profiles.append(main)
    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.Thread.run = run  # type: ignore[method-assign]
        pstats.Stats(*profiles).dump_stats(path)


def child_pull(spec: dict[str, Any]) -> dict[str, Any]:
    """Consent (unless ``repull``), then one measured ``Flow.pull``."""
    import privateshare
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent

    user = spec["user"]
    # (wall, CPU of the reporting thread, that thread, file name, bytes): a file event is
    # reported by the worker thread that delivered it, so at concurrency 1 the CPU between
    # two of its events is that file's client CPU (no other thread works meanwhile).
    events: list[tuple[float, float, int, str, int]] = []

    def progress(event: str, data: Any) -> None:
        if event == "file":
            events.append(
                (time.perf_counter(), time.thread_time(), threading.get_ident(), *data[:2])
            )
        elif event == "status":  # the list was read: downloads start now
            events.append((time.perf_counter(), 0.0, 0, "", 0))

    bare = bare_decompressions(spec.get("bare", []))

    with privateshare.load(spec["config"], base_dir=Path(spec["base_dir"])) as fw:
        flow = Flow(fw)
        token = session = None
        if not spec.get("repull"):
            token, session = consent(flow, user)
        fw.key_handle()
        base_rss = vm_kib("VmRSS")
        with cprofiled(spec.get("cprofile"), spec.get("cprofile_timer")):
            faults, cpu, wall = page_faults(), cpu_seconds(), time.perf_counter()
            summary = flow.pull(
                user,
                token=token,
                session=session,
                progress=progress if spec.get("timeline") else None,
            )
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            faults = page_faults() - faults
        started = time.perf_counter() - wall
    for name, seconds in bare_decompressions(spec.get("bare", [])).items():
        bare[name] = [(a + b) / 2 for a, b in zip(bare[name], seconds, strict=True)]
    return {
        "files": summary.files_delivered,
        "skipped": summary.files_skipped,
        "failed": summary.files_failed_total or len(summary.files_failed),
        "error": summary.error,
        "bytes": summary.bytes_delivered,
        "cpu_s": cpu,
        "wall_s": wall,
        "page_faults": faults,
        "base_rss_mib": base_rss / 1024,
        "peak_rss_mib": vm_kib("VmHWM") / 1024,
        "timeline": [(t - started, c, th, name, size) for t, c, th, name, size in events],
        "bare": bare,
    }


def bare_decompressions(files: list[dict[str, str]]) -> dict[str, list[float]]:
    """[wall, CPU] seconds of zlib/brotli decompressing each payload in one call, in this
    process: the compression part measures them just before and just after the pull, so
    the bare decompressor and the pull see the same machine (the load drifts)."""
    import zlib

    import brotli

    seconds: dict[str, list[float]] = {}
    for f in files:
        payload = Path(f["path"]).read_bytes()
        wall, cpu = time.perf_counter(), time.thread_time()
        if f["kind"] == "gzip":
            zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)
        else:
            brotli.decompress(payload)
        seconds[f["name"]] = [time.perf_counter() - wall, time.thread_time() - cpu]
    return seconds


def child_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU ms of the unavoidable work per file: PS512 sign, RSA-OAEP-SHA1 decrypt, one
    ``http.client`` round trip for a file of the library (each request signed beforehand)."""
    import http.client
    import secrets
    from urllib.parse import quote, urlsplit

    import jwt
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    import privateshare
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent

    config, base = spec["config"], Path(spec["base_dir"])
    with privateshare.load(config, base_dir=base) as fw:
        token, session = consent(Flow(fw), spec["user"])
    assert token is not None
    pem = (base / config["keys"]["path"]).read_bytes()
    key: Any = serialization.load_pem_private_key(pem, password=None)
    rounds = spec["rounds"]

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    message = secrets.token_bytes(600)  # a request JWT's signing input is ~600 bytes
    cpu = cpu_seconds()
    for _ in range(rounds):
        key.sign(message, pss, hashes.SHA512())
    sign_ms = (cpu_seconds() - cpu) * 1000 / rounds

    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    wrapped = key.public_key().encrypt(secrets.token_bytes(32), oaep)
    cpu = cpu_seconds()
    for _ in range(rounds):
        key.decrypt(wrapped, oaep)
    decrypt_ms = (cpu_seconds() - cpu) * 1000 / rounds

    digime = config["digime"]
    claims = {
        "client_id": f"{digime['application_id']}_{digime['contract_id']}",
        "access_token": token.access_token.value,
    }

    def bearer() -> dict[str, str]:
        payload = {**claims, "nonce": secrets.token_hex(16), "timestamp": int(time.time() * 1000)}
        return {"Authorization": "Bearer " + jwt.encode(payload, key, algorithm="PS512")}

    url = urlsplit(digime["base_url"])
    query = f"{url.path}permission-access/query/{session.key}"
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
    conn.request("GET", query, headers=bearer())
    names = [f["name"] for f in json.loads(conn.getresponse().read())["fileList"]]
    paths = [f"{query}/{quote(names[i % len(names)], safe='')}" for i in range(rounds)]
    headers = [bearer() for _ in paths]  # signed outside the measurement: counted above
    wire = 0
    cpu = cpu_seconds()
    for path, header in zip(paths, headers, strict=True):
        conn.request("GET", path, headers=header)
        response = conn.getresponse()
        wire += len(response.read())
    http_ms = (cpu_seconds() - cpu) * 1000 / rounds
    conn.close()
    return {
        "sign_ms": sign_ms,
        "decrypt_ms": decrypt_ms,
        "http_ms": http_ms,
        "floor_ms": sign_ms + decrypt_ms + http_ms,
        "wire_kib": wire / rounds / 1024,
    }


def child_checkpoint(spec: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds per checkpoint save (wall and CPU) with one entry changed each time.

    A save passes what changed (``privateshare_checkpoint_save(changes, replace=False)``),
    as the flow does; the store appends it to its journal and compacts now and then, so
    the median is an append; compactions (and fsync stalls) show in the mean.
    """
    import privateshare

    entries, saves = spec["entries"], spec["saves"]
    checkpoint = {
        f"18_1_3_0_0_D_202501010000_{i:07d}.json": 1_735_689_600_000 for i in range(entries)
    }
    names = list(checkpoint)
    with privateshare.load(spec["config"], base_dir=Path(spec["base_dir"])) as fw:
        fw.hooks.checkpoint_save("bench", {"sinks.local": checkpoint}, replace=True)
        walls, cpus = [], []
        for i in range(saves):
            name = names[i % entries]
            checkpoint[name] += 1
            cpu, wall = cpu_seconds(), time.perf_counter()
            fw.hooks.checkpoint_save("bench", {"sinks.local": {name: checkpoint[name]}})
            walls.append(time.perf_counter() - wall)
            cpus.append(cpu_seconds() - cpu)
        wall = time.perf_counter()
        loaded = fw.hooks.checkpoint_load("bench")
        load_ms = (time.perf_counter() - wall) * 1000
    assert loaded == {"sinks.local": checkpoint}, "the checkpoint did not round-trip"
    return {
        "save_ms": statistics.median(walls) * 1000,
        "save_cpu_ms": statistics.median(cpus) * 1000,
        "mean_ms": statistics.fmean(walls) * 1000,
        "load_ms": load_ms,
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pull": child_pull,
    "floor": child_floor,
    "checkpoint": child_checkpoint,
}


def run_child(
    kind: str, spec: dict[str, Any], *, prefix: list[str] | None = None
) -> dict[str, Any]:
    """Run one child process (optionally under ``prefix``, e.g. a profiler) and read its JSON."""
    cmd = [*(prefix or []), sys.executable, str(HERE), "--child", kind, json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]  # a profiler
    if out.returncode or not lines:  # may print after the child
        raise SystemExit(f"the {kind} child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


# --- figures --------------------------------------------------------------------------------


@dataclass
class Figure:
    """Runs of one measured value: prints as ``median (min-max)``."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, fmt: str = ".2f", unit: str = "") -> str:
        med = format(self.median, fmt) + unit
        if len(self.values) < 2:
            return med
        return f"{med} ({min(self.values):{fmt}}-{max(self.values):{fmt}})"


@dataclass
class Target:
    """One target of the issue: what is required, what was measured, met or missed."""

    part: str
    what: str
    goal: str
    measured: str
    ratio: float
    limit: float
    higher_is_better: bool = False
    #: Printed for comparison only: not a target of the issue.
    reference: bool = False

    @property
    def met(self) -> bool:
        return self.ratio >= self.limit if self.higher_is_better else self.ratio <= self.limit


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def say(text: str = "") -> None:
    print(text, flush=True)


# --- the sandbox ----------------------------------------------------------------------------


class Bench:
    """Sandboxes, a key cache and a work directory for one benchmark run."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        from privateshare.sandbox import Sandbox, SandboxSettings

        self.work = work
        self.args = args
        self.keys = work / "keys"
        Sandbox(SandboxSettings.instant(files=0), key_cache=self.keys).start().stop()
        self.targets: list[Target] = []
        self.results: dict[str, Any] = {}
        self._small: Any = None
        self._discarded: list[Path] = []
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()
        for root in self._discarded:
            shutil.rmtree(root, ignore_errors=True)

    def discard(self, root: str | Path) -> None:
        """Remove a pulled root at the end of the run, not now.

        Deleting thousands of files just before the next pull measures the file system,
        not the client: on ext4 without a journal (this machine's), creating a file skips,
        one by one, every inode of its group freed in the last 30-330 s
        (``recently_deleted`` in ``find_inode_bit``), so each new file then costs the next
        pull up to ~1 ms of kernel CPU: the next variant of a round could pay for the
        previous one's clean-up. (Other processes' deletions still count; measured with and
        without this, the difference was inside the noise.)
        """
        self._discarded.append(Path(root))

    @contextlib.contextmanager
    def sandbox(self, *, warm: bool = True, **settings: Any) -> Iterator[Any]:
        from privateshare.sandbox import Sandbox, SandboxSettings

        state = self.work / f"sandbox-{uuid.uuid4().hex[:8]}"
        sb = Sandbox(SandboxSettings.instant(**settings), state_dir=state, key_cache=self.keys)
        with sb:
            if warm:  # build and compress the files now, not while a client waits
                sb.library.warm()
            yield sb

    def small_sandbox(self) -> Any:
        """The 20 KiB library, shared by the parts that pull it."""
        if self._small is None:
            self._small = self._stack.enter_context(
                self.sandbox(
                    files=self.args.files,
                    size_distribution=f"fixed:{20 * KiB}",
                    updated_fraction=0,
                )
            )
        return self._small

    def spec(self, sb: Any, name: str, sinks: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A child's spec: the sandbox's config with tokens and sinks under a fresh root."""
        from privateshare.testing.sandboxed import sandbox_config

        root = self.work / f"{name}-{uuid.uuid4().hex[:8]}"
        root.mkdir()
        tables = {k: extra.pop(k) for k in list(extra) if k in ("pull", "decryption", "transport")}
        raw = sandbox_config(sb, root, sinks=sinks or {"memory": {"type": "memory"}}, **tables)
        return {
            "config": raw,
            "base_dir": str(sb.config_path().parent),
            "root": str(root),
            "user": name,
            **extra,
        }

    def file_sink(self, root: str) -> dict[str, Any]:
        return {"local": {"type": "file", "root": str(Path(root) / "data")}}

    def pull(self, sb: Any, name: str, sink: str = "file", **extra: Any) -> dict[str, Any]:
        """One pull in a fresh child; the root is removed afterwards (unless ``keep``)."""
        keep = extra.pop("keep", False)
        # The file sink's data elsewhere (e.g. on tmpfs); tokens stay under the work root.
        data_base = extra.pop("data_base", None)
        spec = self.spec(sb, name, {}, **extra)
        root = spec["root"]
        if sink == "file" and data_base:
            data = tempfile.mkdtemp(prefix=f"ps-bench-{name}-", dir=data_base)
            self.discard(data)
            spec["config"]["sinks"] = self.file_sink(data)
        elif sink == "file":
            spec["config"]["sinks"] = self.file_sink(root)
        elif sink == "memory":
            spec["config"]["sinks"] = {"memory": {"type": "memory"}}
        else:
            spec["config"]["sinks"] = {"db": {"type": "sql", **sink_options(sink)}}
        result = run_child("pull", spec)
        result["root"] = root
        if result["failed"] or result["error"]:
            raise SystemExit(f"pull {name}: {result['failed']} failed, error {result['error']}")
        if not keep:
            self.discard(root)
        return result


def sink_options(sink: str) -> dict[str, Any]:
    """``kind=URL`` as the sql sink's options, with a table prefix of its own."""
    url = sink.partition("=")[2]
    return {"url": url, "table_prefix": f"b{uuid.uuid4().hex[:8]}_"}


def per_file_ms(result: dict[str, Any]) -> float:
    return result["cpu_s"] * 1000 / max(1, result["files"])


def files_per_s(result: dict[str, Any]) -> float:
    return result["files"] / result["wall_s"]


# --- the parts ------------------------------------------------------------------------------


def has_plugin_module(name: str) -> bool:
    """Whether the privateshare imported here ships ``plugins/<name>.py``.

    Looked up in the directory ``privateshare.plugins`` was imported from, not by module
    name: run against another checkout (``PYTHONPATH``), an editable install's finder
    would still resolve the name to this one.
    """
    import privateshare.plugins

    return any((Path(p) / f"{name}.py").is_file() for p in privateshare.plugins.__path__)


def part_small(bench: Bench) -> None:
    args = bench.args
    sb = bench.small_sandbox()
    say(f"\n## small files: {args.files} x 20 KiB plaintext, default [pull] (concurrency 8)")
    say(f"load average {loadavg()}")
    floor, sign, unwrap, trip = Figure(), Figure(), Figure(), Figure()
    # file: the default transport (requests); urllib3: the same pull with [transport] urllib3
    # (when this privateshare has it: an older checkout, measured for comparison, may not).
    u3 = has_plugin_module("transport_urllib3")
    # tmpfs: the same file sink with its root on a RAM file system (/dev/shm), which
    # separates the sink's own cost from this disk's file system's (creating an inode).
    shm = TMPFS if os.path.isdir(TMPFS) else None
    variants = ["file", *(["tmpfs"] if shm else []), *(["urllib3"] if u3 else []), "memory"]
    cpu = {v: Figure() for v in ("file", "tmpfs", "urllib3", "memory")}
    rate = {v: Figure() for v in ("file", "tmpfs", "urllib3", "memory")}
    rss = Figure()
    wire = 0.0
    for r in range(args.repeat):
        f = run_child("floor", bench.spec(sb, f"floor{r}", {}, rounds=args.floor_rounds))
        floor.add(f["floor_ms"])
        sign.add(f["sign_ms"])
        unwrap.add(f["decrypt_ms"])
        trip.add(f["http_ms"])
        wire = f["wire_kib"]
        for variant in variants:
            if variant == "urllib3":
                result = bench.pull(sb, f"{variant}{r}", "file", transport={"type": "urllib3"})
            elif variant == "tmpfs":
                result = bench.pull(sb, f"{variant}{r}", "file", data_base=shm)
            else:
                result = bench.pull(sb, f"{variant}{r}", variant)
            cpu[variant].add(per_file_ms(result))
            rate[variant].add(files_per_s(result))
            if variant == "file":
                rss.add(result["peak_rss_mib"])
        say(
            f"  round {r + 1}: floor {f['floor_ms']:.2f} ms; file sink "
            f"{cpu['file'].values[-1]:.2f} ms/file, {rate['file'].values[-1]:.0f} files/s; "
            + (f"on tmpfs {cpu['tmpfs'].values[-1]:.2f} ms/file; " if shm else "")
            + (f"with urllib3 {cpu['urllib3'].values[-1]:.2f} ms/file; " if u3 else "")
            + f"memory sink {cpu['memory'].values[-1]:.2f} ms/file, "
            f"{rate['memory'].values[-1]:.0f} files/s; load {loadavg()}"
        )
    ratio = Figure([c / f for c, f in zip(cpu["file"].values, floor.values, strict=True)])
    ratio_mem = Figure([c / f for c, f in zip(cpu["memory"].values, floor.values, strict=True)])
    ratio_u3 = Figure([c / f for c, f in zip(cpu["urllib3"].values, floor.values, strict=u3)])
    ratio_shm = Figure([c / f for c, f in zip(cpu["tmpfs"].values, floor.values, strict=bool(shm))])
    say(
        f"floor (CPU ms per file, measured in each round): PS512 sign {sign.show()} + "
        f"RSA-OAEP-SHA1 decrypt {unwrap.show()} + http.client round trip of "
        f"{wire:.1f} KiB {trip.show()} = {floor.show()}"
    )
    say(
        f"file sink:   {cpu['file'].show()} ms CPU/file = {ratio.show()}x the floor; "
        f"{rate['file'].show('.0f')} files/s; peak RSS {rss.show('.0f')} MiB"
    )
    if shm:
        say(
            f"file sink on tmpfs ({shm}): {cpu['tmpfs'].show()} ms CPU/file = "
            f"{ratio_shm.show()}x the floor; {rate['tmpfs'].show('.0f')} files/s (this disk's "
            f"file system: {cpu['file'].median - cpu['tmpfs'].median:.2f} ms/file more)"
        )
    if u3:
        say(
            f"file sink, [transport] urllib3: {cpu['urllib3'].show()} ms CPU/file = "
            f"{ratio_u3.show()}x the floor; {rate['urllib3'].show('.0f')} files/s"
        )
    say(
        f"memory sink: {cpu['memory'].show()} ms CPU/file = {ratio_mem.show()}x the floor; "
        f"{rate['memory'].show('.0f')} files/s (the file sink's disk work: "
        f"{cpu['file'].median - cpu['memory'].median:.2f} ms/file)"
    )
    bench.results["small"] = {
        "floor_ms": floor.values,
        "sign_ms": sign.values,
        "decrypt_ms": unwrap.values,
        "http_ms": trip.values,
        "file_ms": cpu["file"].values,
        "tmpfs_ms": cpu["tmpfs"].values,
        "urllib3_ms": cpu["urllib3"].values,
        "memory_ms": cpu["memory"].values,
        "file_files_s": rate["file"].values,
        "memory_files_s": rate["memory"].values,
    }
    bench.targets.append(
        Target(
            "small",
            "client CPU per small file (file sink) vs the floor",
            "<= 2.5x",
            f"{cpu['file'].show()} ms vs {floor.show()} ms",
            ratio.median,
            2.5,
        )
    )
    if shm:
        bench.targets.append(
            Target(
                "small",
                "the same with the file sink's root on tmpfs, reference",
                "<= 2.5x",
                f"{cpu['tmpfs'].show()} ms vs {floor.show()} ms",
                ratio_shm.median,
                2.5,
                reference=True,
            )
        )
    if u3:
        bench.targets.append(
            Target(
                "small",
                "the same with [transport] type = urllib3",
                "<= 2.5x",
                f"{cpu['urllib3'].show()} ms vs {floor.show()} ms",
                ratio_u3.median,
                2.5,
            )
        )
    bench.targets.append(
        Target(
            "small",
            "the same into the memory sink (no disk), for reference",
            "<= 2.5x",
            f"{cpu['memory'].show()} ms vs {floor.show()} ms",
            ratio_mem.median,
            2.5,
        )
    )


def part_memory(bench: Bench) -> None:
    args = bench.args
    size = args.rss_file_size
    say(
        f"\n## memory: peak RSS of a pull and a re-pull (nothing new), each in a fresh process; "
        f"files of {size} bytes, file sink"
    )
    peaks: dict[tuple[str, int], float] = {}
    for count in args.rss_files:
        with bench.sandbox(
            files=count, size_distribution=f"fixed:{size}", updated_fraction=0
        ) as sb:
            say(f"  {count} files: load average {loadavg()}")
            first = bench.pull(sb, f"rss{count}", keep=True)
            spec = bench.spec(sb, f"rss{count}", {}, repull=True)
            spec["config"]["tokens"] = {"type": "file", "path": str(Path(first["root"]) / "tokens")}
            spec["config"]["sinks"] = bench.file_sink(first["root"])
            again = run_child("pull", spec)
            bench.discard(first["root"])
            bench.discard(spec["root"])
            if again["files"] or again["skipped"] != count:
                raise SystemExit(f"the re-pull delivered {again['files']} files: expected none")
            for what, result in (("pull", first), ("re-pull", again)):
                peaks[(what, count)] = result["peak_rss_mib"]
                say(
                    f"  {what:<8} {count:>6} files: peak RSS {result['peak_rss_mib']:6.1f} MiB "
                    f"(baseline before the pull {result['base_rss_mib']:.1f} MiB); "
                    f"{result['wall_s']:.1f} s, {result['files'] / result['wall_s']:.0f} files/s"
                )
    low, high = min(args.rss_files), max(args.rss_files)
    bench.results["memory"] = {f"{w} {n}": v for (w, n), v in peaks.items()}
    for what in ("pull", "re-pull"):
        a, b = peaks[(what, low)], peaks[(what, high)]
        bench.targets.append(
            Target(
                "memory",
                f"peak RSS of a {what} at {high:,} files vs {low:,}",
                "<= 1.2x",
                f"{b:.0f} MiB vs {a:.0f} MiB",
                b / a,
                1.2,
            )
        )


def part_checkpoint(bench: Bench) -> None:
    args = bench.args
    say(
        f"\n## checkpoint saves: file token store, one entry changed per save, median of "
        f"{args.saves} saves"
    )
    with bench.sandbox(files=0) as sb:
        costs: dict[int, Figure] = {}
        cpus: dict[int, Figure] = {}
        for r in range(args.repeat):
            for entries in args.rss_files:
                spec = bench.spec(sb, f"cp{entries}", {}, entries=entries, saves=args.saves)
                result = run_child("checkpoint", spec)
                bench.discard(spec["root"])
                costs.setdefault(entries, Figure()).add(result["save_ms"])
                cpus.setdefault(entries, Figure()).add(result["save_cpu_ms"])
                say(
                    f"  round {r + 1}: {entries:>6} entries: save {result['save_ms']:.2f} ms "
                    f"(CPU {result['save_cpu_ms']:.2f} ms, mean "
                    f"{result['mean_ms']:.2f} ms), load {result['load_ms']:.1f} ms; "
                    f"load average {loadavg()}"
                )
    low, high = min(args.rss_files), max(args.rss_files)
    bench.results["checkpoint"] = {str(k): v.values for k, v in costs.items()}
    bench.results["checkpoint_cpu"] = {str(k): v.values for k, v in cpus.items()}
    # CPU is the store's own work; the wall time adds one fsync's latency, which is the
    # disk's (and, on a shared machine, the neighbours'), the same at any size.
    bench.targets.append(
        Target(
            "checkpoint",
            f"CPU per checkpoint save at {high:,} entries vs {low:,}",
            "<= 1.5x (O(changed))",
            f"{cpus[high].show()} ms vs {cpus[low].show()} ms",
            cpus[high].median / cpus[low].median,
            1.5,
        )
    )
    say(
        f"  wall per save (one fsync's latency included): {costs[high].show()} ms at "
        f"{high:,} entries vs {costs[low].show()} ms at {low:,}"
    )


@contextlib.contextmanager
def postgresql_database(url: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards."""
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(url)
    name = f"ps_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def part_sql(bench: Bench) -> None:
    args = bench.args
    sb = bench.small_sandbox()
    say(
        f"\n## sql sink: {args.files} small files, client CPU per file (the database "
        "servers' CPU is not counted)"
    )
    say(f"load average {loadavg()}")
    with postgresql_database(args.postgresql) as pg_url:
        cpu = {k: Figure() for k in ("file", "sqlite", "postgresql")}
        ratios = {k: Figure() for k in ("sqlite", "postgresql")}
        for r in range(args.repeat):
            file = per_file_ms(bench.pull(sb, f"sqlfile{r}", "file"))
            cpu["file"].add(file)
            db = bench.work / f"bench-{r}.sqlite"
            for kind, url in (("sqlite", f"sqlite:///{db}"), ("postgresql", pg_url)):
                ms = per_file_ms(bench.pull(sb, f"{kind}{r}", f"{kind}={url}"))
                cpu[kind].add(ms)
                ratios[kind].add(ms / file)
            db.unlink(missing_ok=True)
            say(
                f"  round {r + 1}: file {file:.2f}, sqlite {cpu['sqlite'].values[-1]:.2f}, "
                f"postgresql {cpu['postgresql'].values[-1]:.2f} ms/file; load {loadavg()}"
            )
    for kind in ("sqlite", "postgresql"):
        say(
            f"{kind:<10} {cpu[kind].show()} ms CPU/file = {ratios[kind].show()}x the file sink "
            f"({cpu['file'].show()} ms)"
        )
        bench.targets.append(
            Target(
                "sql",
                f"sql sink CPU per small file, {kind}, vs the file sink",
                "<= 1.5x",
                f"{cpu[kind].show()} ms vs {cpu['file'].show()} ms",
                ratios[kind].median,
                1.5,
            )
        )
    bench.results["sql"] = {k: v.values for k, v in cpu.items()}


def signed_headers(sb: Any, key_path: Path, access_token: str) -> str:
    """An Authorization header value for one request of the sandbox's ongoing contract."""
    import secrets

    import jwt
    from cryptography.hazmat.primitives import serialization

    key: Any = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    payload = {
        "client_id": sb.client_id(),
        "access_token": access_token,
        "nonce": secrets.token_hex(16),
        "timestamp": int(time.time() * 1000),
    }
    return "Bearer " + jwt.encode(payload, key, algorithm="PS512")


def curl(
    sb: Any, session_key: str, access_token: str, name: str = "", out: str = "/dev/null"
) -> tuple[int, float]:
    """(bytes, seconds) of ``curl`` fetching one file of the session (or its list) to ``out``.

    With a file as ``out`` the time includes ``sync -d`` of it (fdatasync): the file sink's
    commit makes the data durable too, so that is the like-for-like disk reference.
    """
    from urllib.parse import quote

    url = f"{sb.base_url}permission-access/query/{session_key}"
    if name:
        url += "/" + quote(name, safe="")
    header = "Authorization: " + signed_headers(sb, sb.key_path(), access_token)
    done = subprocess.run(
        [*CURL, "-o", out, "-H", header, url],
        capture_output=True,
        text=True,
        check=False,
    )
    status, size, seconds = [*done.stdout.split(), "", "", ""][:3]
    if done.returncode or status != "200":
        raise SystemExit(f"curl: exit {done.returncode}, HTTP {status}: {done.stderr.strip()}")
    if out != "/dev/null":
        started = time.perf_counter()
        subprocess.run(["sync", "-d", out], check=True)
        seconds = str(float(seconds) + time.perf_counter() - started)
        os.unlink(out)
    return int(size), float(seconds)


def part_large(bench: Bench) -> None:
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent, sandbox_framework

    args = bench.args
    size = args.large_size
    say(
        f"\n## large file: one file of {size / MiB:.0f} MiB, uncompressed, file sink "
        "(fsync included)"
    )
    with bench.sandbox(files=0, large_files=1, large_file_size=size, warm=False) as sb:
        name = sb.library.files[0].name
        root = bench.work / "curl"
        with sandbox_framework(sb, root) as fw:
            token, session = consent(Flow(fw), "curl")
        assert token is not None
        access = token.access_token.value
        ours, theirs, ratios, growth, peaks = Figure(), Figure(), Figure(), Figure(), Figure()
        to_disk, disk_ratios = Figure(), Figure()
        curl(sb, session.key, access)  # the list: a file is served once it was listed
        expected = sb.library.files[0].latest.encrypted_size()
        for r in range(args.repeat):
            got, seconds = curl(sb, session.key, access, name)
            if got != expected:
                raise SystemExit(f"curl got {got} bytes")
            theirs.add(got / 1e6 / seconds)
            # The same into a file on the sink's disk, synced: what writing it costs curl.
            got, seconds = curl(sb, session.key, access, name, out=str(bench.work / "curl.out"))
            if got != expected:
                raise SystemExit(f"curl got {got} bytes")
            to_disk.add(got / 1e6 / seconds)
            result = bench.pull(sb, f"large{r}")
            ours.add(result["bytes"] / 1e6 / result["wall_s"])
            ratios.add(ours.values[-1] / theirs.values[-1])
            disk_ratios.add(ours.values[-1] / to_disk.values[-1])
            growth.add(result["peak_rss_mib"] - result["base_rss_mib"])
            peaks.add(result["peak_rss_mib"])
            say(
                f"  round {r + 1}: curl {theirs.values[-1]:.0f} MB/s to /dev/null, "
                f"{to_disk.values[-1]:.0f} MB/s to a file (synced); privateshare "
                f"{ours.values[-1]:.0f} MB/s (CPU {result['cpu_s']:.1f} s), peak RSS "
                f"{result['peak_rss_mib']:.0f} MiB; load {loadavg()}"
            )
    say(
        f"privateshare {ours.show('.0f')} MB/s = {ratios.show()}x curl's "
        f"{theirs.show('.0f')} MB/s to /dev/null, {disk_ratios.show()}x its "
        f"{to_disk.show('.0f')} MB/s to a file; "
        f"peak RSS {peaks.show('.0f')} MiB, {growth.show('.0f')} MiB over the baseline"
    )
    bench.results["large"] = {
        "ours": ours.values,
        "curl": theirs.values,
        "curl_file": to_disk.values,
        "growth": growth.values,
    }
    bench.targets.append(
        Target(
            "large",
            f"{size / MiB:.0f} MiB uncompressed end to end vs curl -o /dev/null",
            ">= 0.70x",
            f"{ours.show('.0f')} MB/s vs {theirs.show('.0f')} MB/s",
            ratios.median,
            0.70,
            higher_is_better=True,
        )
    )
    bench.targets.append(
        Target(
            "large",
            "the same vs curl -o FILE + fdatasync (same disk)",
            "(reference)",
            f"{ours.show('.0f')} MB/s vs {to_disk.show('.0f')} MB/s",
            disk_ratios.median,
            0.70,
            higher_is_better=True,
            reference=True,
        )
    )
    bench.targets.append(
        Target(
            "large",
            "RSS flat: peak growth over the baseline during that pull",
            "<= 64 MiB",
            f"{growth.show('.0f')} MiB (peak {peaks.show('.0f')} MiB)",
            growth.median / 64,
            1.0,
        )
    )


def part_compression(bench: Bench) -> None:
    args = bench.args
    size = args.compressed_size
    say(
        f"\n## compressed files: {args.compressed_files} files of {size / MiB:.0f} MiB "
        "plaintext, one at a time ([pull] concurrency 1), into the file sink (fsync) and the "
        "memory sink"
    )
    say(
        "the sandbox serves from this process, the client is a child process (no shared GIL); "
        "the bare decompressor runs in the client's process just before and after its pull "
        "(the mean of the two), so both see the same load"
    )
    kinds = ("gzip", "brotli")
    sinks = ("file", "memory")
    with bench.sandbox(
        files=args.compressed_files, size_distribution=f"fixed:{size}", updated_fraction=0
    ) as sb:
        payloads: list[dict[str, str]] = []
        for i, f in enumerate(sb.library.files):
            kind = f.latest.compression
            if kind in kinds:
                path = bench.work / f"payload-{i}"
                path.write_bytes(b"".join(f.latest.iter_payload()))
                payloads.append({"name": f.name, "kind": kind, "path": str(path)})
        kind_of = {p["name"]: p["kind"] for p in payloads}
        # (sink, kind) -> Figure, per round: MB/s end to end, MB/s bare, wall and CPU ratios
        speed, bare_speed, wall_ratio, cpu_ratio, cpu_ms = ({} for _ in range(5))
        for key in itertools.product(sinks, kinds):
            for d in (speed, bare_speed, wall_ratio, cpu_ratio, cpu_ms):
                d[key] = Figure()
        for r in range(args.repeat):
            line = []
            for sink in sinks:
                result = bench.pull(
                    sb, f"z{sink}{r}", sink, pull={"concurrency": 1}, timeline=True, bare=payloads
                )
                wall = {k: 0.0 for k in kinds}
                cpu = {k: 0.0 for k in kinds}
                bare_wall = {k: 0.0 for k in kinds}
                bare_cpu = {k: 0.0 for k in kinds}
                plain = {k: 0 for k in kinds}
                cpu_at: dict[int, float] = {}
                previous = result["timeline"][0][0]
                # Files arrive one at a time: each took from the previous event to its own.
                for t, c, thread, name, got in result["timeline"][1:]:
                    took, previous = t - previous, t
                    spent, cpu_at[thread] = c - cpu_at.get(thread, 0.0), c
                    kind = kind_of.get(name)
                    if kind:
                        wall[kind] += took
                        cpu[kind] += spent
                        plain[kind] += got
                        bare_wall[kind] += result["bare"][name][0]
                        bare_cpu[kind] += result["bare"][name][1]
                for k in kinds:
                    speed[sink, k].add(plain[k] / 1e6 / wall[k])
                    bare_speed[sink, k].add(plain[k] / 1e6 / bare_wall[k])
                    wall_ratio[sink, k].add(bare_wall[k] / wall[k])
                    cpu_ratio[sink, k].add(bare_cpu[k] / cpu[k])
                    cpu_ms[sink, k].add(cpu[k] * 1000 * MiB / plain[k])
                    line.append(
                        f"{sink} {k} {speed[sink, k].values[-1]:.0f} MB/s (bare "
                        f"{bare_speed[sink, k].values[-1]:.0f}), CPU x"
                        f"{cpu_ratio[sink, k].values[-1]:.2f}"
                    )
            say(f"  round {r + 1}: {'; '.join(line)}; load {loadavg()}")
    for sink, k in itertools.product(sinks, kinds):
        say(
            f"{sink:<6} {k:<7} {speed[sink, k].show('.0f')} MB/s of plaintext end to end = "
            f"{wall_ratio[sink, k].show()}x the bare decompressor's "
            f"{bare_speed[sink, k].show('.0f')} MB/s; client CPU {cpu_ms[sink, k].show()} ms "
            f"per MiB = {cpu_ratio[sink, k].show()}x the bare decompressor's CPU"
        )
        bare_name = "zlib" if k == "gzip" else "brotli"
        reference = sink != "file"
        into = "file sink" if sink == "file" else "memory sink, reference"
        bench.targets.append(
            Target(
                "compression",
                f"{k} files end to end ({into}) vs bare {bare_name}, wall",
                ">= 0.80x",
                f"{speed[sink, k].show('.0f')} MB/s vs {bare_speed[sink, k].show('.0f')} MB/s",
                wall_ratio[sink, k].median,
                0.80,
                higher_is_better=True,
                reference=reference,
            )
        )
        bench.targets.append(
            Target(
                "compression",
                f"the same, client CPU per byte vs bare {bare_name}'s",
                ">= 0.80x",
                f"{cpu_ms[sink, k].show()} ms/MiB",
                cpu_ratio[sink, k].median,
                0.80,
                higher_is_better=True,
                reference=reference,
            )
        )
    bench.results["compression"] = {
        f"{sink} {k} {what}": d[sink, k].values
        for sink, k in itertools.product(sinks, kinds)
        for what, d in (("wall", wall_ratio), ("cpu", cpu_ratio), ("MB/s", speed))
    }


PARTS: dict[str, Callable[[Bench], None]] = {
    "small": part_small,
    "memory": part_memory,
    "checkpoint": part_checkpoint,
    "sql": part_sql,
    "large": part_large,
    "compression": part_compression,
}


def machine() -> str:
    from privateshare import __version__

    return (
        f"{platform.platform()}; {os.cpu_count()} CPUs; python {platform.python_version()}; "
        f"privateshare {__version__}; load average (1/5/15 min) {loadavg()}"
    )


def print_targets(targets: list[Target]) -> None:
    say("\n## targets")
    width = max(len(t.what) for t in targets)
    say(f"{'target':<{width}}  {'goal':<20} {'ratio':>6}  {'':<6}  measured (median, min-max)")
    for t in targets:
        verdict = "(ref)" if t.reference else "met" if t.met else "MISSED"
        say(f"{t.what:<{width}}  {t.goal:<20} {t.ratio:6.2f}  {verdict:<6}  {t.measured}")


def against(config_path: Path, user: str, root: Path, sink: str) -> None:
    """One pull from a running sandbox (its ``privateshare.toml``), as one JSON line."""
    import tomllib

    raw = tomllib.loads(config_path.read_text())
    raw["tokens"] = {"type": "file", "path": str(root / "tokens")}
    raw["pull"] = {"poll_interval": 0.2}
    if sink == "memory":
        raw["sinks"] = {"memory": {"type": "memory"}}
    else:  # "file", or "file-nofsync" to compare with clients that do not fsync
        local = {"type": "file", "root": str(root / "data"), "fsync": sink == "file"}
        raw["sinks"] = {"local": local}
    result = child_pull({"config": raw, "base_dir": str(config_path.parent), "user": user})
    result.pop("timeline")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for part in PARTS:
        parser.add_argument(f"--{part}", action="store_true", help=f"run the {part} part")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--repeat", type=int, help="rounds per part (default 3; --quick 1)")
    parser.add_argument("--files", type=int, help="small files (default 2000)")
    parser.add_argument("--postgresql", default=POSTGRESQL, help="server URL for --sql")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--against", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--user", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sink", default="file", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return
    if args.against:
        with tempfile.TemporaryDirectory(prefix="ps-against-") as tmp:
            against(args.against, args.user, args.root or Path(tmp), args.sink)
        return
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 3)
    args.files = args.files or (100 if quick else 2000)
    args.floor_rounds = 50 if quick else 300
    args.rss_files = [100, 1000] if quick else [2000, 50000]
    args.rss_file_size = 2 * KiB
    args.saves = 5 if quick else 20
    args.large_size = 32 * MiB if quick else GiB
    args.compressed_files = 10
    # The largest plaintext whose gzip payload the sandbox still caches (4 MiB): bigger files
    # would be rebuilt by the sandbox on every request, and that would be measured instead.
    args.compressed_size = (1 if quick else 15) * MiB
    chosen = [p for p in PARTS if getattr(args, p)] or list(PARTS)

    say(f"machine: {machine()}")
    say(
        "the sandbox serves from this process, each client is a fresh child process: client "
        f"CPU and RSS are the child's alone; the {os.cpu_count()} cores are shared by both "
        "(and by anything else running)"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ps-bench-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            for part in chosen:
                PARTS[part](bench)
        finally:
            bench.close()
    print_targets(bench.targets)
    say(f"\n{time.monotonic() - started:.0f} s; load average at the end {loadavg()}")
    if args.json:
        payload = {
            "machine": machine(),
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "against", "root")},
            "results": bench.results,
            "targets": [{**vars(t), "met": t.met} for t in bench.targets],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
