"""Benchmark: pull 2,000 files of 20 KiB and 5 files of 200 MiB from the sandbox into the file sink.

Prints files/s, MB/s, client CPU ms per small file next to the floor (one PS512
signature plus one RSA-OAEP decryption per file, measured here in the same run),
and peak RSS. The sandbox runs in its own process so its CPU is not counted.

Targets: CPU per small file within 1.5x of the floor; peak RSS under 200 MiB.

    python benchmarks/pull.py [--small 2000] [--large 5] [--large-size 200M]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_sandbox(
    state: Path, files: int, large: int, large_size: str
) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "privateshare",
            "sandbox",
            "--port",
            "0",
            "--dir",
            str(state),
            "--files",
            str(files),
            "--size-distribution",
            "fixed:20480",
            "--updated-fraction",
            "0",
            "--large-files",
            str(large),
            "--large-file-size",
            large_size,
            "--pending-polls",
            "0",
            "--running-polls",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.time() + 60
    config = None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"config\s+(\S+privateshare\.toml)", line)
        if match and config is None:
            config = Path(match.group(1))
        if "Press Ctrl+C" in line:
            break
    if config is None:
        proc.kill()
        raise SystemExit("the sandbox did not start")
    time.sleep(0.5)
    return proc, config


def floor_ms(rounds: int = 200) -> float:
    """CPU ms for one PS512 signature plus one RSA-OAEP-SHA1 decryption."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from privateshare.keys import OAEP_SHA1_PADDING, SoftwareKeyHandle

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    handle = SoftwareKeyHandle(key)
    blob = key.public_key().encrypt(os.urandom(32), OAEP_SHA1_PADDING)
    started = time.process_time()
    for _ in range(rounds):
        handle.sign_ps512(b"x" * 600)
        handle.decrypt_oaep_sha1(blob)
    return (time.process_time() - started) * 1000 / rounds


CLIENT = r"""
import json, resource, sys, time, tomllib
from pathlib import Path
import privateshare
from privateshare.flow import Flow
from privateshare.testing.sandboxed import consent

config_path, root, sink = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
raw = tomllib.loads(config_path.read_text())
raw["tokens"] = {"type": "file", "path": str(root / "tokens")}
raw["sinks"] = {"local": {"type": "file", "root": str(root / "data")}}
if sink == "memory":
    raw["sinks"] = {"memory": {"type": "memory"}}
raw["pull"] = {"concurrency": 8, "poll_interval": 0.2}
fw = privateshare.load(raw, base_dir=config_path.parent)
flow = Flow(fw)
token, session = consent(flow, "bench")
fw.key_handle()
cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
summary = flow.pull("bench", token=token, session=session)
cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
print(json.dumps({"files": summary.files_delivered, "bytes": summary.bytes_delivered,
                  "failed": len(summary.files_failed), "cpu_s": cpu, "wall_s": wall1 - wall0,
                  "peak_rss_mib": cpu1.ru_maxrss / 1024}))
"""


def pull(config: Path, root: Path, sink: str = "file") -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(config), str(root), sink],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=5)
    parser.add_argument("--large-size", default="200M")
    args = parser.parse_args()

    floor = floor_ms()
    print(f"floor: PS512 sign + RSA-OAEP decrypt = {floor:.2f} ms CPU per file")
    with tempfile.TemporaryDirectory(prefix="privateshare-bench-") as tmp:
        base = Path(tmp)
        proc, config = start_sandbox(base / "small-sandbox", args.small, 0, "1M")
        try:
            small = pull(config, base / "small")
            memory = pull(config, base / "small-memory", "memory")
        finally:
            proc.terminate()
            proc.wait()
        per_file = small["cpu_s"] * 1000 / max(1, small["files"])
        print(
            f"small: {small['files']} files of 20 KiB in {small['wall_s']:.1f} s = "
            f"{small['files'] / small['wall_s']:.0f} files/s; client CPU {per_file:.2f} ms/file "
            f"= {per_file / floor:.2f}x the floor; peak RSS {small['peak_rss_mib']:.0f} MiB; "
            f"failed {small['failed']}"
        )

        memory_ms = memory["cpu_s"] * 1000 / max(1, memory["files"])
        print(
            f"  the same into the memory sink (no file system): {memory_ms:.2f} ms/file = "
            f"{memory_ms / floor:.2f}x the floor; the file sink's writes, renames and fsyncs "
            f"account for {per_file - memory_ms:.2f} ms/file"
        )
        results = {"small": small}
        if args.large:
            proc, config = start_sandbox(base / "large-sandbox", 0, args.large, args.large_size)
            try:
                large = pull(config, base / "large")
            finally:
                proc.terminate()
                proc.wait()
            mb_s = large["bytes"] / 1e6 / large["wall_s"]
            print(
                f"large: {large['files']} files, {large['bytes'] / 2**20:.0f} MiB in "
                f"{large['wall_s']:.1f} s = {mb_s:.0f} MB/s; peak RSS "
                f"{large['peak_rss_mib']:.0f} MiB; failed {large['failed']}"
            )
            results["large"] = large
    rss = max(r["peak_rss_mib"] for r in results.values())
    print(
        f"target CPU/file <= 1.5x floor: {'PASS' if per_file <= 1.5 * floor else 'FAIL'} "
        f"({per_file / floor:.2f}x)"
    )
    print(f"target peak RSS < 200 MiB: {'PASS' if rss < 200 else 'FAIL'} ({rss:.0f} MiB)")


if __name__ == "__main__":
    main()
