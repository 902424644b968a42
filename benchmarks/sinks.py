"""The sinks alone: client CPU per small file delivered through ``fw.hooks.deliver``.

No network, no decryption: the sandbox's small library (the plaintext of ``--files`` files of
20 KiB, mapped JSON and raw as ``pull.py --small`` pulls them) is delivered in one thread to
each sink in turn, alternating in rounds, each in a fresh child process. This isolates what
``pull.py --sql`` measures end to end (the sql sink against the file sink) from the rest of a
pull, and is what to profile (``--profile FILE`` writes cProfile stats of one sink's run).

    python benchmarks/sinks.py [--files 1000] [--repeat 3] [--sinks file,sqlite,postgresql]
                               [--postgresql URL] [--profile FILE --sinks sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import pull  # noqa: E402 - benchmarks/pull.py: PostgreSQL scratch databases, load average

KiB = 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Deliver the library to one sink; CPU per file of the delivery loop only."""
    import privateshare
    from privateshare.models import DataFile, FileMetadata, RunInfo
    from privateshare.sandbox.library import generate_library

    library = generate_library(
        7, files=spec["files"], size_distribution=f"fixed:{20 * KiB}", updated_fraction=0
    )
    items = []
    for lf in library.files:
        version = lf.latest
        meta = version.x_metadata
        items.append(
            (
                DataFile(
                    user_id="bench",
                    name=lf.name,
                    updated_date=version.updated_date,
                    metadata=FileMetadata(meta.get("metadata", {}), meta.get("compression")),
                ),
                b"".join(version.iter_plaintext()),
            )
        )
    key = Path(spec["dir"]) / "contract.pem"
    if not key.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key.write_bytes(pem)
    config = {
        "digime": {"application_id": "bench", "contract_id": "bench"},
        "keys": {"type": "file", "path": str(key)},
        "sinks": {"out": spec["sink"]},
    }
    fw = privateshare.load(config, base_dir=Path(spec["dir"]))
    run = RunInfo(run_id="bench", user_id="bench", started_at=time.time())
    fw.hooks.sinks_open_run(run)
    profile = None
    if spec.get("profile"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    began = pull.cpu_seconds()
    for file, data in items:
        fw.hooks.deliver(run, file, [memoryview(data)])
    cpu = pull.cpu_seconds() - began
    if profile is not None:
        profile.disable()
        profile.dump_stats(spec["profile"])
    fw.close()
    return {"cpu_ms_per_file": 1000 * cpu / len(items), "files": len(items)}


def sink_config(kind: str, work: Path, pg_url: str, round_: int) -> dict[str, Any]:
    if kind == "file":
        return {"type": "file", "root": str(work / f"files-{round_}")}
    if kind == "sqlite":
        return {"type": "sql", "url": f"sqlite:///{work}/sink-{round_}.sqlite"}
    return {"type": "sql", "url": pg_url, "table_prefix": f"b{round_}_"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sinks", default="file,sqlite,postgresql")
    parser.add_argument("--postgresql", default=pull.POSTGRESQL)
    parser.add_argument("--profile", help="cProfile stats of the last round to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    kinds = args.sinks.split(",")
    figures: dict[str, list[float]] = {k: [] for k in kinds}
    print(f"sinks alone: {args.files} small files (20 KiB), one thread; load {pull.loadavg()}")
    with tempfile.TemporaryDirectory() as tmp, pull.postgresql_database(args.postgresql) as pg:
        work = Path(tmp)
        for r in range(args.repeat):
            for kind in kinds:
                spec = {
                    "files": args.files,
                    "sink": sink_config(kind, work, pg, r),
                    "dir": tmp,
                    "profile": args.profile if r == args.repeat - 1 else None,
                }
                out = subprocess.run(
                    [sys.executable, str(HERE), "--child", json.dumps(spec)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                figures[kind].append(json.loads(out.stdout.splitlines()[-1])["cpu_ms_per_file"])
            line = ", ".join(f"{k} {figures[k][-1]:.2f}" for k in kinds)
            print(f"  round {r + 1}: {line} ms CPU/file; load {pull.loadavg()}")
    base = figures.get("file")
    for kind in kinds:
        values = figures[kind]
        text = (
            f"{kind:>10}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) ms"
        )
        if base and kind != "file":
            ratios = [v / b for v, b in zip(values, base, strict=True)]
            text += f" = {statistics.median(ratios):.2f}x the file sink (per round)"
        print(text)


if __name__ == "__main__":
    main()
