"""Benchmark: a real pull under each sandbox fault setting. Is every file exact, or reported?

For each setting a fresh sandbox serves a library of ``--files`` files; the client
(consent through the flow, as ``privateshare authorize`` does, then ``privateshare pull
--user bench --json`` twice, each in its own process, with the sandbox's generated config:
default ``[pull]`` and ``[transport]``) pulls it into the file sink. Every expected file is
then one of:

- exact: in the sink, SHA-256 equal to the sandbox's ground truth;
- failed and reported: named in ``files_failed`` (not in the sink, or an older version
  kept there), or not in the sink after a pull that stopped early with an error;
- undetectable by design: delivered wrong after the sandbox flipped a byte of its
  ciphertext, and it is brotli-compressed or uncompressed (API v1.7 files carry no MAC;
  only gzip's CRC and the CBC padding can notice a flipped byte);
- silently wrong: delivered with other bytes, or neither delivered nor reported.

Targets: every transient-fault setting delivers 100% exact in ONE pull, and no setting
has anything silently wrong (or any file written outside the sink). Exits 1 when a
target is missed.

    python benchmarks/faults.py [--files 300] [--rate 0.1] [--seed 1] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privateshare import __version__
from privateshare.sandbox import Sandbox, SandboxSettings
from privateshare.sandbox.faults import FaultPlan
from privateshare.sandbox.hostile import UNSAFE_NAMES

USER = "bench"
TRANSIENT, INTEGRITY, HOSTILE = "transient", "integrity", "hostile"
TARGETS = {
    TRANSIENT: "100% exact in one pull, nothing silent",
    INTEGRITY: "nothing silently wrong (v1.7 no-MAC cases aside)",
    HOSTILE: "every entry delivered or reported; nothing written outside the sink",
}


@dataclass(frozen=True)
class Setting:
    name: str
    what: str
    kind: str
    sandbox: dict[str, Any] = field(default_factory=dict)


def fault_settings(rate: float) -> list[Setting]:
    every = {"fault_endpoints": frozenset({"all"})}
    # Tokens that expire after 25 uses make the pull refresh (oauth/token, then jwks)
    # a dozen times, so 5xx and resets meet those endpoints too. Both faults strike
    # before the sandbox acts, so a retried refresh is safe. A cut answer to a refresh
    # is not recoverable by any client (the rotated refresh token is lost with it), so
    # the cut-bodies setting keeps tokens long-lived: there, oauth/token is cut at consent.
    refreshing = {"access_token_max_uses": 25}
    return [
        Setting("baseline", "no faults", TRANSIENT),
        Setting(
            "5xx",
            f"{rate:.0%} answered 500/502/503, every endpoint incl. trigger, token, jwks; "
            "tokens expire after 25 uses",
            TRANSIENT,
            {"error_rate": rate, **every, **refreshing},
        ),
        Setting(
            "resets",
            f"{rate:.0%} connections reset before the answer, every endpoint; "
            "tokens expire after 25 uses",
            TRANSIENT,
            {"reset_rate": rate, **every, **refreshing},
        ),
        Setting(
            "cut-bodies",
            f"{rate:.0%} bodies cut short, every endpoint (JSON answers too)",
            TRANSIENT,
            {"truncate_rate": rate, **every},
        ),
        Setting("short-tokens", "access tokens live 3 s", TRANSIENT, {"access_token_lifetime": 3}),
        Setting(
            "few-uses", "access tokens expire after 3 uses", TRANSIENT, {"access_token_max_uses": 3}
        ),
        Setting(
            "corrupt",
            f"{rate:.0%} file bodies with one ciphertext byte flipped",
            INTEGRITY,
            {"corrupt_rate": rate},
        ),
        Setting(
            "bad-metadata",
            f"{rate:.0%} file answers with x-metadata missing or malformed",
            INTEGRITY,
            {"bad_metadata_rate": rate},
        ),
        Setting(
            "hostile-list",
            f"6 files dated 0 or negative; {len(UNSAFE_NAMES)} entries with unsafe names",
            HOSTILE,
            {"nonpositive_dates": 6, "unsafe_names": True},
        ),
    ]


def pick_fault_seed(settings: SandboxSettings) -> tuple[SandboxSettings, str]:
    """Settings whose fault seed strikes the calls a pull makes once, and what it strikes.

    At a 10% rate the dice would spare pull 1's trigger and first list answer in most
    runs, so the seed is chosen (the first from ``seed`` up) for which their first
    attempts are faulted, and the first refresh's when tokens expire by use.
    """
    first = {k: 0 for k in ("trigger", "list") if k in settings.fault_endpoints}
    if settings.access_token_max_uses and "token" in settings.fault_endpoints:
        first["token"] = 1  # attempt 0 is the code exchange at consent
    if not first or not (settings.error_rate or settings.reset_rate or settings.truncate_rate):
        return settings, ""
    for fault_seed in range(settings.seed, settings.seed + 100_000):
        candidate = settings.replace(fault_seed=fault_seed)
        plan = FaultPlan(candidate)
        if all(plan.decide(kind, "", n).any for kind, n in first.items()):
            struck = ", ".join(f"{kind} attempt {n + 1}" for kind, n in first.items())
            return candidate, f"fault seed {fault_seed}: faults {struck}"
    raise SystemExit("no fault seed strikes the once-per-pull calls; raise --rate")


def cli_flags(changes: dict[str, Any]) -> str:
    """The ``privateshare sandbox`` flags that reproduce a setting's changes."""
    flags = []
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if key == "fault_endpoints":
            flags += [f"--fault-endpoint {v}" for v in sorted(value)]
        elif value is True:
            flags.append(flag)
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


CONSENT = r"""
import json, sys
import privateshare
from privateshare.flow import Flow
from privateshare.testing.sandboxed import consent

errors, done = [], False
with privateshare.load(sys.argv[1]) as fw:
    flow = Flow(fw)
    while not done and len(errors) < int(sys.argv[2]):
        try:
            consent(flow, sys.argv[3])
            done = True
        except Exception as exc:  # a user would click the link again
            errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"attempts": len(errors) + done, "ok": done, "errors": errors}))
"""


@dataclass
class PullRun:
    """What one ``privateshare pull --json`` process reported."""

    seconds: float
    returncode: int | None  # None: killed by the guard
    summary: dict[str, Any] | None  # the user's summary, if the command printed one
    stderr: str

    @property
    def failed(self) -> dict[str, str]:
        if self.summary is None:
            return {}
        return {f["name"]: f["reason"] for f in self.summary.get("files_failed", [])}

    @property
    def stop(self) -> str | None:
        """Why the run stopped early ("" for none): the run's error, a crash or the guard."""
        if self.returncode is None:
            return "hung: killed by the benchmark's guard"
        if self.summary is not None:
            return self.summary.get("error") or None
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        if any(ln.startswith("Traceback") for ln in lines):
            return "crashed: " + (lines[-1] if lines else "?")
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or [f"exit {self.returncode}, no output"])[-1]


def pull(config: Path, guard: float) -> PullRun:
    started = time.monotonic()
    cmd = [sys.executable, "-m", "privateshare", "pull", "--user", USER, "--config", str(config)]
    try:
        out = subprocess.run(
            [*cmd, "--json"], capture_output=True, text=True, timeout=guard, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return PullRun(time.monotonic() - started, None, None, stderr)
    summary = None
    start = out.stdout.find("[")  # the JSON list, after anything else printed first
    try:
        summaries = json.loads(out.stdout[start:]) if start >= 0 else []
        summary = next(s for s in summaries if s.get("user_id") == USER)
    except (ValueError, StopIteration, AttributeError, TypeError):
        pass
    return PullRun(time.monotonic() - started, out.returncode, summary, out.stderr)


def sink_digest(user_dir: Path, name: str) -> str | None:
    """SHA-256 of the sink's file for ``name``, if one is there under that name."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    try:
        return hashlib.sha256(user_dir.joinpath(*parts).read_bytes()).hexdigest()
    except OSError:
        return None


def escapes(workspace: Path, user_dir: Path, before: set[Path]) -> list[str]:
    """Files the unsafe names would produce outside the user's sink directory."""
    found = []
    for folder, _dirs, names in os.walk(workspace):
        for n in names:
            path = Path(folder) / n
            if "escaped-" in n and not path.is_relative_to(user_dir):
                found.append(str(path))
    found += [str(p) for p in LEAK_PATHS if p.exists() and p not in before]
    return found


LEAK_PATHS = [Path(n) for n in UNSAFE_NAMES if n.startswith("/")]


@dataclass
class Outcome:
    setting: Setting
    expected: int = 0
    exact1: int = 0
    reported: int = 0
    silent: int = 0
    undetectable: int = 0
    exact2: int = 0
    stop1: str | None = None
    stop2: str | None = None
    server_errors: dict[str, int] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    silent_names: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        if self.silent or self.leaks:
            return False
        return self.setting.kind != TRANSIENT or self.exact1 == self.expected


def classify(
    out: Outcome, sandbox: Sandbox, user_dir: Path, run: PullRun, corrupted: set[str]
) -> None:
    truth = sandbox.ground_truth()
    failed = run.failed
    stop = run.stop
    out.expected = len(truth)
    for name, digest in truth.items():
        got = sink_digest(user_dir, name)
        if got == digest:
            out.exact1 += 1
        elif name in failed:  # not delivered, or an older version kept: either way, said so
            out.reported += 1
            out.reasons[_gist(failed[name])] += 1
        elif got is not None:
            compression = sandbox.library.file(name).latest.compression
            if name in corrupted and compression in (None, "brotli"):
                out.undetectable += 1
            else:
                out.silent += 1
                out.silent_names.append(f"{name!r} delivered with wrong bytes")
        elif stop:
            out.reported += 1
        else:
            out.silent += 1
            out.silent_names.append(f"{name!r} neither delivered nor reported")
    for name in set(failed) - set(truth):
        out.reasons[f"(reported under a name not in the list: {name!r})"] += 1


def sandbox_settings(setting: Setting, args: argparse.Namespace) -> tuple[SandboxSettings, str]:
    """The sandbox's settings for one benchmark setting, and a note on the fault seed."""
    settings = SandboxSettings(
        seed=args.seed,
        files=args.files,
        pending_polls=0,
        running_polls=args.running_polls,
        **setting.sandbox,
    )
    return pick_fault_seed(settings)


def _gist(reason: str) -> str:
    """A failure reason without what differs per file (references, keys), for grouping."""
    reason = re.sub(r"reference [0-9a-f]+", "reference …", reason)
    return re.sub(r"[A-Za-z0-9_-]{20,}", "…", reason)[:120]


def run_setting(
    setting: Setting,
    settings: SandboxSettings,
    args: argparse.Namespace,
    keys: Path,
    workspace: Path,
) -> Outcome:
    out = Outcome(setting)
    before = {p for p in LEAK_PATHS if p.exists()}
    started = time.monotonic()
    with Sandbox(settings, state_dir=workspace / "sandbox", key_cache=keys) as sb:
        config = sb.config_path()
        user_dir = config.parent / "data" / USER
        done = subprocess.run(
            [sys.executable, "-c", CONSENT, str(config), str(args.consent_attempts), USER],
            capture_output=True,
            text=True,
            timeout=args.guard,
            check=False,
        )
        try:
            out.consent = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out.consent = {"attempts": "?", "errors": [done.stderr.strip()[-300:]]}
        first = pull(config, args.guard)
        corrupted = {
            e["resource"] for e in sb.fault_log() if "corrupt" in e["faults"] and e["resource"]
        }
        classify(out, sb, user_dir, first, corrupted)
        out.stop1 = first.stop
        second = pull(config, args.guard)
        out.exact2 = sum(
            sink_digest(user_dir, name) == digest for name, digest in sb.ground_truth().items()
        )
        for entry in sb.fault_log():
            for fault in entry["faults"]:
                out.faults[f"{entry['kind']}:{fault}"] += 1
        stats = sb.stats()
        out.refreshes = stats["refresh"]
        out.server_errors = stats["errors"]
        out.stop2 = second.stop
        out.leaks = escapes(workspace, user_dir, before) if setting.kind == HOSTILE else []
    out.seconds = time.monotonic() - started
    return out


def print_machine(
    args: argparse.Namespace, settings: list[tuple[Setting, SandboxSettings, str]]
) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {platform.platform()}; {os.cpu_count()} CPUs; load average {load}")
    print(f"python {platform.python_version()}; privateshare {__version__} from {_source()}")
    print(
        f"library: {args.files} files (seed {args.seed}), list polls: 1 final"
        + (f" after {args.running_polls} running" if args.running_polls else "")
        + f"; fault rate {args.rate}; client: default [pull] and [transport]"
    )
    print("settings (privateshare sandbox flags):")
    for s, sandbox, note in settings:
        print(f"  {s.name:<13} {s.kind:<9} {s.what}")
        if s.sandbox:
            seed = f" --fault-seed {sandbox.fault_seed}" if sandbox.fault_seed is not None else ""
            print(f"  {'':<23} {cli_flags(s.sandbox)}{seed}")
        if note:
            print(f"  {'':<23} ({note})")
    print()


def _source() -> str:
    import privateshare

    root = Path(privateshare.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(root)
    return f"{root} ({rev})"


def print_table(outcomes: list[Outcome]) -> None:
    head = (
        f"{'setting':<13} {'expected':>8} {'exact@1':>8} {'reported':>8} {'silent':>6} "
        f"{'no-MAC':>6} {'exact@2':>8}  {'stopped early':<14} {'secs':>5}  target"
    )
    print(head)
    print("-" * len(head))
    for o in outcomes:
        stop = "no" if not o.stop1 else o.stop1.split(":")[0][:14]
        print(
            f"{o.setting.name:<13} {o.expected:>8} {o.exact1:>8} {o.reported:>8} {o.silent:>6} "
            f"{o.undetectable:>6} {o.exact2:>8}  {stop:<14} {o.seconds:>5.0f}  "
            f"{'met' if o.met else 'MISSED'}"
        )
    print()
    print(
        "exact@1/@2: SHA-256 equal to the ground truth after one pull / after a rerun. "
        "reported: failed and named in files_failed, or the run stopped early with an error. "
        "silent: delivered wrong, or neither delivered nor reported. no-MAC: delivered wrong "
        "after a flipped ciphertext byte in a brotli or uncompressed file - API v1.7 files "
        "carry no MAC, so no client can detect it (gzip's CRC and the CBC padding catch "
        "some flips); counted apart, not as silent."
    )
    print()
    for o in outcomes:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(o.faults.items())) or "none"
        consent = o.consent.get("attempts", "?")
        print(
            f"{o.setting.name}: target ({TARGETS[o.setting.kind]}) {'met' if o.met else 'MISSED'}"
        )
        print(f"  injected: {faults}; refreshes {o.refreshes}; consent attempts {consent}")
        for error in o.consent.get("errors", [])[:2]:
            print(f"  consent attempt failed: {error[:160]}")
        errors = ", ".join(f"{k} {v}" for k, v in sorted(o.server_errors.items())) or "none"
        print(f"  sandbox error answers (not injected): {errors}")
        if o.stop1:
            print(f"  pull 1 stopped early: {o.stop1[:200]}")
        if o.stop2:
            print(f"  pull 2 stopped early: {o.stop2[:200]}")
        for reason, n in o.reasons.most_common(4):
            print(f"  {n} x {reason}")
        for line in o.silent_names[:4]:
            print(f"  SILENT: {line}")
        for leak in o.leaks:
            print(f"  WRITTEN OUTSIDE THE SINK: {leak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="library size (default 300)")
    parser.add_argument("--rate", type=float, default=0.1, help="fault rate (default 0.1)")
    parser.add_argument("--seed", type=int, default=1, help="library and fault seed")
    parser.add_argument(
        "--running-polls", type=int, default=1, help="list polls answered 'running' first"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these settings")
    parser.add_argument(
        "--consent-attempts", type=int, default=5, help="consent tries (as a user re-clicks)"
    )
    parser.add_argument(
        "--guard", type=float, default=180.0, help="seconds before a hung pull is killed"
    )
    args = parser.parse_args()
    settings = fault_settings(args.rate)
    if args.only:
        unknown = set(args.only) - {s.name for s in settings}
        if unknown:
            parser.error(f"unknown setting(s) {sorted(unknown)}; see the list in --help")
        settings = [s for s in settings if s.name in args.only]
    planned = [(s, *sandbox_settings(s, args)) for s in settings]
    print_machine(args, planned)
    outcomes = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="privateshare-faults-") as tmp:
        keys = Path(tmp) / "keys"
        for setting, sandbox, _note in planned:
            outcome = run_setting(setting, sandbox, args, keys, Path(tmp) / setting.name)
            print(
                f"  {setting.name}: {outcome.exact1}/{outcome.expected} exact in one pull "
                f"({outcome.seconds:.0f} s)",
                flush=True,
            )
            outcomes.append(outcome)
    print(f"\ntotal {time.monotonic() - started:.0f} s\n")
    print_table(outcomes)
    missed = [o.setting.name for o in outcomes if not o.met]
    print(f"\ntargets missed: {', '.join(missed)}" if missed else "\nall targets met")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
