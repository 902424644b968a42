"""Where a small-file pull's client CPU goes, layer by layer (cProfile and py-spy), and what
config-level experiments save.

Runs the ``benchmarks/pull.py`` small library (2,000 files of 20 KiB) against the sandbox in
this process; every pull is a fresh child process. Three views of the same pull:

- **cProfile** with a per-thread CPU clock (``time.thread_time``) in every thread: exclusive
  CPU per layer, and calls per file of what matters (fsyncs, signatures, hook calls, logging).
  Its own overhead inflates Python-heavy layers: read it for shares and counts.
- **py-spy**, sampling from outside (low overhead): ``busy`` counts every thread that is not
  idle, running or blocked in a system call (fsync, socket reads: a worker's time, not CPU);
  ``GIL`` only the thread holding the GIL (on a loaded machine, also while it waits for a core).

A sample or a function is given to the first layer met walking from the leaf to the root;
library frames with no layer of their own (cryptography's wrappers, pathlib, json, msgspec)
count for their caller. ``--variants`` instead times the same pull with config switches
(fsync off, metadata off, a 32 KiB decryption buffer, memory sink, fewer workers), alternating.

    python benchmarks/profile_pull.py [--files 2000] [--sink file|memory] [--rate 200]
                                      [--no-cprofile] [--no-pyspy] [--variants] [--repeat 3]

py-spy must be installed (``pip install py-spy``) and allowed to trace (root, or
``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import argparse
import pstats
import re
import shutil
import statistics
import sys
import sysconfig
import tempfile
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pull  # benchmarks/pull.py: the sandbox, the child processes

STDLIB = sysconfig.get_paths()["stdlib"]

#: (layer, path fragments, function names or None, source-line fragment or None); first match
#: wins, so the narrow rules of a file come before its catch-all.
RULES: list[tuple[str, tuple[str, ...], frozenset[str] | None, str | None]] = [
    ("file sink: fsync", ("sink_file.py",), None, "fsync"),
    (
        "file sink: root resolve, path checks, directory walk",
        ("sink_file.py",),
        frozenset(
            {"_real_root", "_verify_inside", "_check_path_length", "_open_dir", "open_run"}
            | {"privateshare_sink_open_run", "privateshare_sink_open_file"}
        ),
        None,
    ),
    (
        "file sink: temp file, write, rename, metadata",
        ("sink_file.py", "core/sinks.py"),
        None,
        None,
    ),
    ("memory sink", ("testing/memory.py",), None, None),
    (
        "sql sink",
        ("sink_sql.py", "sqldb.py", "/sqlalchemy/", "/psycopg", "/sqlite3/"),
        None,
        None,
    ),
    ("checkpoint save (token store)", ("tokens_file.py", "tokenseal.py", "/filelock/"), None, None),
    ("checkpoint save (token store)", ("flow.py",), frozenset({"_save_checkpoint"}), None),
    ("RSA: PS512 sign", ("keys.py",), frozenset({"sign_ps512"}), None),
    ("RSA: OAEP-SHA1 decrypt", ("keys.py",), frozenset({"decrypt_oaep_sha1"}), None),
    ("JWT building (claims, nonce, JSON, base64)", ("jws.py",), None, None),
    ("decryption: buffer allocation", ("decrypt_digime.py",), None, "bytearray("),
    ("decompression", ("decompress.py",), None, None),
    ("decompression", ("decrypt_digime.py",), frozenset({"_decompress", "__iter__"}), None),
    ("decryption: AES-CBC, reads, checks", ("decrypt_digime.py",), None, None),
    (
        "HTTP: transport plugin (pacing, body reader)",
        ("transport_requests.py", "core/transport.py"),
        None,
        None,
    ),
    ("HTTP: requests (prepare, adapter)", ("/requests/",), None, None),
    ("HTTP: urllib3", ("/urllib3/",), None, None),
    (
        "HTTP: http.client + socket",
        ("/http/client.py", "/socket.py", "/ssl.py", "/selectors.py"),
        None,
        None,
    ),
    ("logging", ("/logging/",), None, None),
    (
        "hook dispatch (pluggy, facade)",
        ("/pluggy/", "/hooks/", "/delivery.py"),
        None,
        None,
    ),
    (
        "threads: pool, locks, hand-offs",
        ("/concurrent/futures/", "/threading.py", "/queue.py"),
        None,
        None,
    ),
    (
        "flow + protocol client (per-file logic, models)",
        ("flow.py", "/flow/", "/client/", "retry.py", "models.py"),
        None,
        None,
    ),
    (
        "flow + protocol client (per-file logic, models)",
        ("errors.py", "framework.py", "secrets.py", "config.py", "/privateshare/"),
        None,
        None,
    ),
]


@cache
def source_line(filename: str, line: int) -> str:
    import linecache

    return linecache.getline(filename, line)


def layer_of(filename: str, function: str, line: int = 0) -> str | None:
    """The layer a frame belongs to, or None when it counts for its caller."""
    for layer, paths, functions, text in RULES:
        if not any(p in filename for p in paths):
            continue
        if functions is not None and function not in functions:
            continue
        if text is not None and (not line or text not in source_line(filename, line)):
            continue
        return layer
    return None


# --- py-spy ---------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def pyspy_layers(raw: Path) -> Counter[str]:
    """Samples per layer from py-spy's raw output, the pull's threads only."""
    layers: Counter[str] = Counter()
    for text in raw.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        thread, *frames = stack.split(";")
        parsed = [m.groupdict() for f in frames if (m := _FRAME.match(f))]
        if "MainThread" in thread and not any(
            f["func"] == "pull" and "flow" in f["file"] for f in parsed
        ):
            continue  # imports, consent: not the pull
        layer = "other (interpreter, stdlib)"
        for f in reversed(parsed):
            found = layer_of(f["file"], f["func"].rpartition(".")[2], int(f["line"]))
            if found:
                layer = found
                break
        layers[layer] += int(count)
    return layers


def run_pyspy(
    bench: pull.Bench, sb: Any, sink: str, rate: int, gil: bool, work: Path, keep: Path | None
) -> tuple[Counter[str], dict[str, Any]]:
    out = (keep or work) / f"pyspy-{'gil' if gil else 'busy'}.txt"
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    prefix = [pyspy, "record", "--rate", str(rate), "--format"]
    prefix += ["raw", "--full-filenames", "--threads", "--output", str(out)]
    prefix += ["--gil", "--"] if gil else ["--"]
    spec = bench.spec(sb, f"spy{int(gil)}", {})
    spec["config"]["sinks"] = sinks(sink, spec["root"])
    result = pull.run_child("pull", spec, prefix=prefix)
    return pyspy_layers(out), result


# --- cProfile -------------------------------------------------------------------------------


def cprofile_layers(stats: pstats.Stats) -> tuple[Counter[str], Counter[str]]:
    """CPU seconds per layer (exclusive), and per function name (for the top list)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()

    @cache
    def own(func: tuple[str, int, str]) -> str | None:
        filename, _line, name = func
        if filename == "~" or filename.startswith("<"):
            return None
        return layer_of(filename, name.rpartition(".")[2])

    def attribute(func: tuple[str, int, str], seconds: float, depth: int = 0) -> None:
        layer = own(func)
        if layer is None and "fsync" in func[2]:
            callers = table[func][4]
            via = {own(c) for c in callers}
            if any(v and v.startswith("file sink") for v in via):
                layer = "file sink: fsync"
        if layer is not None:
            layers[layer] += seconds
            return
        callers = table.get(func, (0, 0, 0, 0, {}))[4]
        total = sum(v[2] for v in callers.values())
        if depth > 30 or not callers or total <= 0:
            layers["other (interpreter, stdlib)"] += seconds
            return
        for caller, value in callers.items():
            attribute(caller, seconds * value[2] / total, depth + 1)

    for func, (_cc, _nc, tottime, _ct, _callers) in table.items():
        if tottime <= 0:
            continue
        filename, line, name = func
        where = "builtin" if filename == "~" else f"{Path(filename).name}:{line}"
        functions[f"{name} ({where})"] += tottime
        attribute(func, tottime)
    return layers, functions


#: Calls per file worth knowing: (label, path fragment, exact function name); "~" = builtin,
#: "" = any Python function of that name.
COUNTS = [
    ("os.fsync", "~", "<built-in method posix.fsync>"),
    ("os.open", "~", "<built-in method posix.open>"),
    ("os.replace", "~", "<built-in method posix.replace>"),
    ("checkpoint saves", "", "privateshare_checkpoint_save"),
    ("PS512 signatures", "", "sign_ps512"),
    ("RSA-OAEP decryptions", "", "decrypt_oaep_sha1"),
    ("isinstance against a typing.Protocol", "typing.py", "__instancecheck__"),
    ("requests Request.prepare", "requests/models.py", "prepare"),
    ("HTTPAdapter.send", "requests/adapters.py", "send"),
    ("urllib3 urlopen", "urllib3/connectionpool.py", "urlopen"),
    ("pluggy hook calls", "pluggy/_manager.py", "_hookexec"),
    ("logging: Logger.isEnabledFor", "logging/__init__.py", "isEnabledFor"),
    ("Path.resolve", "pathlib.py", "resolve"),
    ("thread pool submit", "concurrent/futures/thread.py", "submit"),
    ("socket recv_into", "~", "<method 'recv_into' of '_socket.socket' objects>"),
]


def counts_per_file(stats: pstats.Stats, files: int) -> list[tuple[str, float]]:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    out = []
    for label, where, name in COUNTS:
        calls = sum(
            v[1]
            for (filename, _line, func), v in table.items()
            if func == name and ((filename == "~") == (where == "~")) and where in filename
        )
        out.append((label, calls / files))
    return out


def run_cprofile(
    bench: pull.Bench, sb: Any, sink: str, work: Path, keep: Path | None
) -> tuple[pstats.Stats, dict[str, Any]]:
    path = (keep or work) / "pull.pstats"
    spec = bench.spec(sb, "cprof", {}, cprofile=str(path), cprofile_timer="thread")
    spec["config"]["sinks"] = sinks(sink, spec["root"])
    result = pull.run_child("pull", spec)
    return pstats.Stats(str(path)), result


# --- experiments ----------------------------------------------------------------------------


def sinks(kind: str, root: str, **options: Any) -> dict[str, Any]:
    if kind == "memory":
        return {"memory": {"type": "memory"}}
    return {"local": {"type": "file", "root": str(Path(root) / "data"), **options}}


VARIANTS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    # (label, sink, sink options, other tables)
    ("file sink (default)", "file", {}, {}),
    ("file sink, fsync = false", "file", {"fsync": False}, {}),
    ("file sink, metadata = false", "file", {"metadata": False}, {}),
    (
        "file sink, [decryption] chunk_size = 32 KiB",
        "file",
        {},
        {"decryption": {"type": "digime", "chunk_size": 32768}},
    ),
    ("memory sink", "memory", {}, {}),
    (
        "memory sink, chunk_size = 32 KiB",
        "memory",
        {},
        {"decryption": {"type": "digime", "chunk_size": 32768}},
    ),
    ("file sink, [pull] concurrency = 2", "file", {}, {"pull": {"concurrency": 2}}),
]


def variants(bench: pull.Bench, sb: Any, repeat: int) -> None:
    cpu: dict[str, list[float]] = defaultdict(list)
    rate: dict[str, list[float]] = defaultdict(list)
    faults: dict[str, list[float]] = defaultdict(list)
    for r in range(repeat):
        for label, sink, options, tables in VARIANTS:
            spec = bench.spec(sb, f"v{r}", {}, **tables)
            spec["config"]["sinks"] = sinks(sink, spec["root"], **options)
            result = pull.run_child("pull", spec)
            shutil.rmtree(spec["root"], ignore_errors=True)
            cpu[label].append(pull.per_file_ms(result))
            rate[label].append(pull.files_per_s(result))
            faults[label].append(result["page_faults"] / max(1, result["files"]))
        pull.say(f"  round {r + 1} done; load average {pull.loadavg()}")
    base = statistics.median(cpu[VARIANTS[0][0]])
    pull.say(
        f"\n{'variant':<48} {'CPU ms/file':>22} {'vs default':>10} {'files/s':>18} "
        f"{'page faults/file':>17}"
    )
    for label, *_ in VARIANTS:
        c, f = pull.Figure(cpu[label]), pull.Figure(rate[label])
        p = statistics.median(faults[label])
        pull.say(
            f"{label:<48} {c.show():>22} {c.median - base:+10.2f} {f.show('.0f'):>18} {p:17.0f}"
        )


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--sink", choices=("file", "memory"), default="file")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-cprofile", action="store_true")
    parser.add_argument("--no-pyspy", action="store_true")
    parser.add_argument("--variants", action="store_true", help="config experiments instead")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of --variants")
    parser.add_argument("--top", type=int, default=25, help="functions listed (cProfile)")
    parser.add_argument(
        "--keep", type=Path, help="write pull.pstats and py-spy's raw samples to this directory"
    )
    args = parser.parse_args()
    args.repeat = max(1, args.repeat)
    pull.say(f"machine: {pull.machine()}")
    with tempfile.TemporaryDirectory(prefix="ps-profile-") as tmp:
        work = Path(tmp)
        bench_args = argparse.Namespace(files=args.files)
        bench = pull.Bench(work, bench_args)
        try:
            sb = bench.small_sandbox()
            pull.say(f"{args.files} files of 20 KiB into the {args.sink} sink, default [pull]")
            if args.variants:
                variants(bench, sb, args.repeat)
                return
            plain = pull.run_child("pull", spec_for(bench, sb, args.sink, "plain"))
            files = plain["files"]
            pull.say(
                f"unprofiled: {pull.per_file_ms(plain):.2f} ms CPU/file, "
                f"{pull.files_per_s(plain):.0f} files/s; load average {pull.loadavg()}"
            )
            columns: dict[str, Counter[str]] = {}
            notes = []
            if not args.no_cprofile:
                stats, result = run_cprofile(bench, sb, args.sink, work, args.keep)
                layers, functions = cprofile_layers(stats)
                columns["cProfile CPU"] = layers
                notes.append(
                    f"cProfile run: {pull.per_file_ms(result):.2f} ms CPU/file with the "
                    "profiler's overhead"
                )
            if not args.no_pyspy:
                for gil in (False, True):
                    samples, result = run_pyspy(
                        bench, sb, args.sink, args.rate, gil, work, args.keep
                    )
                    seconds = Counter({k: v / args.rate for k, v in samples.items()})
                    columns["py-spy GIL" if gil else "py-spy busy"] = seconds
                    notes.append(
                        f"py-spy {'--gil' if gil else 'busy'} run: "
                        f"{pull.per_file_ms(result):.2f} ms CPU/file, "
                        f"{sum(samples.values())} samples at {args.rate}/s"
                    )
            report(columns, files, plain)
            for note in notes:
                pull.say(note)
            if not args.no_cprofile:
                pull.say("\ncalls per file (cProfile):")
                for label, per in counts_per_file(stats, files):
                    pull.say(f"  {label:<36} {per:8.2f}")
                pull.say(f"\ntop {args.top} functions by own CPU (cProfile), ms per file:")
                for name, seconds in functions.most_common(args.top):
                    pull.say(f"  {seconds * 1000 / files:7.3f}  {name}")
        finally:
            bench.close()


def spec_for(bench: pull.Bench, sb: Any, sink: str, name: str) -> dict[str, Any]:
    spec = bench.spec(sb, name, {})
    spec["config"]["sinks"] = sinks(sink, spec["root"])
    return spec


def report(columns: dict[str, Counter[str]], files: int, plain: dict[str, Any]) -> None:
    order = [layer for layer, *_ in RULES] + ["other (interpreter, stdlib)"]
    layers = list(
        dict.fromkeys(layer for layer in order if any(layer in c for c in columns.values()))
    )
    names = list(columns)
    pull.say(f"\nms per file by layer ({files} files)")
    pull.say(f"{'layer':<54}" + "".join(f"{n:>15}" for n in names))
    for layer in layers:
        cells = "".join(f"{columns[n].get(layer, 0) * 1000 / files:15.3f}" for n in names)
        pull.say(f"{layer:<54}{cells}")
    totals = "".join(f"{sum(columns[n].values()) * 1000 / files:15.3f}" for n in names)
    pull.say(f"{'total':<54}{totals}")
    pull.say(f"(unprofiled client CPU: {pull.per_file_ms(plain):.3f} ms/file)")


if __name__ == "__main__":
    main()
