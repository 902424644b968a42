"""Benchmark: peak RSS of one pull against file lists of 2k, 200k and 2M entries.

A minimal API server (its own process, so its memory is not counted) answers the
file list with N entries shaped as the v1.7 API sends them (name, updatedDate and the
mapped-metadata summary), and every file with the same tiny encrypted body. Two
scenarios per size, each pull in a fresh process:

- ``checkpointed``: all but ``--download`` entries are already in the user's checkpoint
  (the steady state of a large library): the per-entry cost of the list and the state.
- ``fresh``: nothing is checkpointed and ``[pull] timeout`` ends the pull after
  ``--timeout`` seconds: what a pull holds while millions of files wait for their turn.
  A pull still running ``--grace`` seconds after its timeout is killed (its peak is read
  from ``/proc`` first) and shown as ``killed``.

Prints per run: entries, files delivered / skipped / failed, peak RSS, the RSS growth
over the process's baseline, and that growth in bytes per entry.

Measured on the 2-core development machine (entries of ~220 bytes of JSON each):

    before (one future per entry)    200k: 365 MiB checkpointed, 641 MiB fresh (killed: it
                                           ignored its timeout)
                                     2M: 2.8 GiB checkpointed and still running after 35 min
                                         (a 2M checkpoint saved every second under the lock)
    after (bounded feeding)          200k: 201 MiB checkpointed, 130 MiB fresh (ended at 20 s)
                                     2M: 1.2 GiB checkpointed, 0.9 GiB fresh
    after (answers read once)        200k: 248 MiB checkpointed (1,066 B/entry), 120 MiB fresh
                                     2M: 1.2 GiB checkpointed (612 B/entry), 795 MiB fresh

Those figures were ru_maxrss, which Linux carries over exec: a child reported at least the
benchmark's own peak (seeding the checkpoint). The peak is now the child's VmHWM; taken again
that way, alternating ``main`` at 88fbfa6 and this change in the same window (load 6-8 on 2
cores; fresh runs with ``--timeout 60`` at 2M, so the 440 MB list is read whole under load):

    before (list decoded whole)      200k: 175 MiB checkpointed (669 B/entry), 123 MiB fresh (395)
                                     2M: 1,140 MiB checkpointed (573 B/entry), 798 MiB fresh (394)
    after (list read in batches,     200k: 97 MiB checkpointed (258 B/entry), 104 MiB fresh (294)
    sinks share their names)         2M: 456 MiB checkpointed (214 B/entry), 478 MiB fresh (226)

What is left is proportional to the library but not to the list: checkpointed, the loaded
checkpoint (one name and date per file, ~156 B traced under tracemalloc, the first sink; the
others share its names); fresh, the name and date of every file still to deliver and of every
file the run took (~160 + ~40 B). The answer is read in ~1 MiB pieces and decoded in batches;
a row every sink holds is dropped as it is decoded. Flat memory would need the checkpoint
on disk, keyed by name: not done, because the token stores keep it as one sealed (AES-GCM,
bound to user and contract) record plus a sealed journal and ``privateshare_checkpoint_load``
returns it as a mapping; an on-disk index would change that hook, both stores' formats and
their migration, for ~200 bytes a file (2M files: ~400 MiB).

    python benchmarks/filelist_memory.py [--sizes 2000,200000,2000000] [--download 2000]
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/v1.7/"
SESSION_KEY = "bench-session-key"
UPDATED = 1_735_689_600_000


def entry_name(index: int) -> str:
    return f"18_1_3_0_0_D_202501010000_{index:07d}.json"


def list_body(count: int) -> bytes:
    """The file-list answer, built in pieces so the server holds about one copy."""
    body = bytearray(b'{"status":{"state":"completed","details":{"acc-1":{"state":"completed"}}},')
    body += b'"fileList":['
    for index in range(count):
        if index:
            body += b","
        body += (
            b'{"name":"%s","updatedDate":%d,"serviceGroup":"social","serviceName":"facebook",'
            b'"objectType":"post","objectCount":12,'
            b'"schema":{"id":"post","standard":"digime","version":"1.0.0"}}'
            % (entry_name(index).encode(), UPDATED)
        )
    body += b"]}"
    return bytes(body)


# --- the server (a child process) -------------------------------------------------------


def serve(count: int, public_pem: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from privateshare.sandbox.encrypt import iter_encrypt

    listing = list_body(count)
    key = load_pem_public_key(public_pem.read_bytes())
    file_body = b"".join(iter_encrypt([b'[{"id":"1","text":"hello"}]'], key))  # type: ignore[arg-type]
    metadata = base64.urlsafe_b64encode(
        json.dumps({"metadata": {"objectCount": 1}}).encode()
    ).rstrip(b"=")
    query = f"{PREFIX}permission-access/query/{SESSION_KEY}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == query:
                self._answer(listing, [("Content-Type", "application/json")])
            elif self.path.startswith(query + "/"):
                headers = [("Content-Type", "application/octet-stream")]
                self._answer(file_body, [*headers, ("x-metadata", metadata.decode())])
            else:
                self._answer(b'{"error":{"code":"NotFound"}}', [], status=404)

        def _answer(self, body: bytes, headers: list[tuple[str, str]], status: int = 200) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            view = memoryview(body)
            for start in range(0, len(view), 1 << 20):
                self.wfile.write(view[start : start + (1 << 20)])

        def log_message(self, *_args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            # A client that stops at its deadline hangs up mid-answer: expected, not news.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)  # type: ignore[arg-type]

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --- the pull (a child process) -----------------------------------------------------------

CLIENT = r"""
import json, resource, sys, time
from pathlib import Path
import privateshare
from privateshare.flow import Flow
from privateshare.models import Session, Token, UserAccessToken

raw = json.loads(sys.argv[1])
fw = privateshare.load(raw, base_dir=Path(sys.argv[2]))
flow = Flow(fw)
fw.key_handle()
def peak_rss():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report the
    # parent's peak (the benchmark's, after it seeded a checkpoint of millions of names).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
token = UserAccessToken(Token("bench-access", 0), Token("bench-refresh", 0))
wall = time.perf_counter()
summary = flow.pull("bench", token=token, session=Session(sys.argv[3], 0), save_token=False)
wall = time.perf_counter() - wall
failed = getattr(summary, "files_failed_total", None)
print(json.dumps({
    "delivered": summary.files_delivered, "skipped": summary.files_skipped,
    "failed": len(summary.files_failed) if failed is None else failed,
    "error": summary.error, "wall_s": wall, "base": base,
    "peak": peak_rss(),
}))
"""


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_pull(config: dict[str, object], workdir: Path, limit: float) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, json.dumps(config), str(workdir), SESSION_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        peak = vm_hwm(proc.pid)
        proc.kill()
        proc.wait()
        return {"killed": True, "peak": peak}
    if proc.returncode:
        raise SystemExit(f"the pull process failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def setup(workdir: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = workdir / "contract.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = workdir / "contract.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def config_for(port: int, workdir: Path, timeout: float) -> dict[str, object]:
    return {
        "digime": {
            "application_id": "bench-app",
            "contract_id": "bench-contract",
            "base_url": f"http://127.0.0.1:{port}{PREFIX}",
        },
        "keys": {"type": "file", "path": str(workdir / "contract.pem")},
        "tokens": {"type": "file", "path": str(workdir / "tokens")},
        "sinks": {"local": {"type": "file", "root": str(workdir / "data")}},
        "pull": {"concurrency": 8, "poll_interval": 0.2, "timeout": timeout},
        "transport": {"type": "requests", "backoff": 0.01},
    }


def seed_checkpoint(config: dict[str, object], workdir: Path, count: int, download: int) -> None:
    """All but the first ``download`` entries delivered already (in this process)."""
    import privateshare

    with privateshare.load(config, base_dir=workdir) as fw:
        done = {entry_name(i): UPDATED for i in range(download, count)}
        state = {name: done for name in fw.hooks.sink_names()}
        fw.hooks.checkpoint_save("bench", state, replace=True)


def mib(value: float) -> str:
    return f"{value / (1 << 20):8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,200000,2000000")
    parser.add_argument("--download", type=int, default=2000, help="files not yet delivered")
    parser.add_argument("--timeout", type=float, default=20.0, help="[pull] timeout, fresh runs")
    parser.add_argument("--grace", type=float, default=90.0)
    parser.add_argument("--scenarios", default="checkpointed,fresh")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--public", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.public)
        return

    print(
        f"{'scenario':<13}{'entries':>9}  {'delivered':>9} {'skipped':>9} {'failed':>9}  "
        f"{'peak RSS':>12} {'growth':>12} {'bytes/entry':>11}  note"
    )
    for count in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="ps-filelist-") as tmp:
            workdir = Path(tmp)
            public = setup(workdir)
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", str(count), "--public", str(public)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert server.stdout is not None
                port = int(server.stdout.readline())
                for scenario in args.scenarios.split(","):
                    fresh = scenario == "fresh"
                    config = config_for(port, workdir, args.timeout if fresh else 3600.0)
                    for sub in ("tokens", "data"):
                        subprocess.run(["rm", "-rf", str(workdir / sub)], check=True)
                    if not fresh:
                        seed_checkpoint(config, workdir, count, min(args.download, count))
                    started = time.perf_counter()
                    limit = (args.timeout if fresh else 3600.0) + args.grace
                    result = run_pull(config, workdir, limit)
                    wall = time.perf_counter() - started
                    peak = int(result["peak"])  # type: ignore[call-overload]
                    if result.get("killed"):
                        print(
                            f"{scenario:<13}{count:>9}  {'-':>9} {'-':>9} {'-':>9}  "
                            f"{mib(peak)} {'-':>12} {'-':>11}  killed after {wall:.0f}s "
                            "(the pull did not end by its timeout)"
                        )
                        continue
                    growth = peak - int(result["base"])  # type: ignore[call-overload]
                    note = f"{result['wall_s']:.1f}s"
                    if result.get("error"):
                        note += f"; stopped: {str(result['error'])[:60]}"
                    print(
                        f"{scenario:<13}{count:>9}  {result['delivered']:>9} "
                        f"{result['skipped']:>9} {result['failed']:>9}  {mib(peak)} "
                        f"{mib(growth)} {growth / count:>11.0f}  {note}"
                    )
            finally:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
