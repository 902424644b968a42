"""Start-up time of the ``privateshare`` command: ``--version``, ``--help`` and a bare interpreter.

Runs each command N times in fresh subprocesses and prints the median wall time and the
median CPU time (user + sys, which a loaded machine disturbs less), plus what ``--help``
imports that it should not. Target: ``--version`` and ``--help`` under 0.3 s.
Run: ``python benchmarks/startup.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "privateshare --version": [sys.executable, "-m", "privateshare", "--version"],
    "privateshare --help": [sys.executable, "-m", "privateshare", "--help"],
    "privateshare keys --help": [sys.executable, "-m", "privateshare", "keys", "--help"],
}
HEAVY = ("requests", "privateshare.sandbox", "privateshare.flow", "boto3", "pkcs11", "rich")


def measure(command: list[str], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def heavy_imports(argument: str) -> list[str]:
    code = (
        "import sys\nfrom privateshare.cli import main\n"
        f"try:\n    main([{argument!r}])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return [m for m in result.stderr.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"start-up, median of {args.runs} runs (target < 0.300 s); load {os.getloadavg()[0]:.1f}")
    for label, command in COMMANDS.items():
        wall, cpu = measure(command, args.runs)
        print(f"  {label:28} wall {wall:.3f} s   cpu {cpu:.3f} s")
    for argument in ("--version", "--help"):
        print(
            f"  heavy modules imported by {argument}: "
            + (", ".join(heavy_imports(argument)) or "none")
        )


if __name__ == "__main__":
    main()
