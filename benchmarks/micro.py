"""Micro-benchmarks behind the pull profile: the cost of each HTTP layer, and which work
releases the GIL.

``--http``: one GET of the sandbox's unsigned ``discovery/services`` answer (~30 KiB, the
size of a small file's download) through each layer a download passes, from the top down:
``requests.Session.get``; privateshare's transport plugin (``fw.hooks.send``, pacing and all),
then the same with ``[transport] type = "urllib3"`` (where the checkout has it);
a fresh ``requests.Request(...).prepare()`` + ``HTTPAdapter.send`` (what the plugin does
underneath); ``HTTPAdapter.send`` of a request prepared once; a urllib3 connection pool; bare
``http.client``. The sandbox runs in this process, the client in a child process: the figures
are the child's CPU (and wall) per call, one thread, layers alternating in blocks.

``--gil``: each piece of a file's CPU work run by one thread, then by two at once
(parallelism ~2: both cores used; capped by the machine's load), and by two threads with a
1 s switch interval (fairness: ~0 when the work holds the GIL, so one thread starves; ~1 when
it releases it, whatever the load). A pure-Python loop is the control.

``--decompress``: the decryptor (RSA unwrap, AES, decompression with its caps) on the sandbox's
15 MiB gzip and brotli JSON files from memory, against one-shot zlib/brotli on the same payload.

``--decrypt``: CPU per 20 KiB file through the decryption hook with the default 1 MiB
``chunk_size`` (one zero-filled buffer per file) and with 32 KiB, in 1 and 8 threads.

    python benchmarks/micro.py [--http] [--decrypt] [--decompress] [--gil]
                               [--calls 10000] [--blocks 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


# --- HTTP layers (child) --------------------------------------------------------------------


def http_layers(url: str, config: dict[str, Any], base_dir: str) -> dict[str, Callable[[], int]]:
    """One round trip per call, through each layer; each returns the body's length."""
    import http.client
    from urllib.parse import urlsplit

    import requests
    import urllib3
    from requests.adapters import HTTPAdapter

    import privateshare
    from privateshare.transport import HttpRequest

    session = requests.Session()
    fw = privateshare.load(config, base_dir=Path(base_dir))
    # The same with [transport] type = "urllib3", where this checkout has it.
    u3 = None
    if any((Path(p) / "transport_urllib3.py").is_file() for p in plugins_path()):
        u3 = privateshare.load(
            {**config, "transport": {"type": "urllib3"}}, base_dir=Path(base_dir)
        )
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    prepared = requests.Request("GET", url, headers={"User-Agent": "bench"}).prepare()
    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=1)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

    def session_get() -> int:
        return len(session.get(url).content)

    def transport() -> int:
        response = fw.hooks.send(HttpRequest("GET", url, stream=True))
        try:
            return len(response.read())
        finally:
            response.close()

    def transport_urllib3() -> int:
        assert u3 is not None
        response = u3.hooks.send(HttpRequest("GET", url, stream=True))
        try:
            return len(response.read())
        finally:
            response.close()

    def prepare_and_send() -> int:
        request = requests.Request("GET", url, headers={"User-Agent": "bench"}).prepare()
        response = adapter.send(request, stream=True, timeout=(10, 60))
        n = len(response.raw.read())
        response.close()
        return n

    def adapter_send() -> int:
        response = adapter.send(prepared, stream=True, timeout=(10, 60))
        n = len(response.raw.read())
        response.close()
        return n

    def urllib3_pool() -> int:
        response = pool.request("GET", parts.path, preload_content=False)
        n = len(response.read())
        response.release_conn()
        return n

    def http_client() -> int:
        conn.request("GET", parts.path)
        return len(conn.getresponse().read())

    return {
        "requests.Session.get": session_get,
        "privateshare transport (fw.hooks.send)": transport,
        **({"the same, [transport] urllib3": transport_urllib3} if u3 is not None else {}),
        "Request.prepare + HTTPAdapter.send": prepare_and_send,
        "HTTPAdapter.send (prepared once)": adapter_send,
        "urllib3 HTTPConnectionPool": urllib3_pool,
        "http.client": http_client,
    }


def plugins_path() -> list[str]:
    """Where ``privateshare.plugins`` was imported from (another checkout via PYTHONPATH)."""
    import privateshare.plugins

    return list(privateshare.plugins.__path__)


def child_http(spec: dict[str, Any]) -> dict[str, Any]:
    layers = http_layers(spec["url"], spec["config"], spec["base_dir"])
    per_block = max(1, spec["calls"] // spec["blocks"])
    cpu: dict[str, list[float]] = {name: [] for name in layers}
    wall: dict[str, list[float]] = {name: [] for name in layers}
    size = 0
    for call in layers.values():  # connect and warm every layer first
        size = call()
    for _ in range(spec["blocks"]):
        for name, call in layers.items():
            c, w = time.process_time(), time.perf_counter()
            for _ in range(per_block):
                call()
            wall[name].append((time.perf_counter() - w) * 1000 / per_block)
            cpu[name].append((time.process_time() - c) * 1000 / per_block)
    return {"cpu_ms": cpu, "wall_ms": wall, "size": size, "calls": per_block * spec["blocks"]}


def run_http(args: argparse.Namespace) -> None:
    from privateshare.sandbox import Sandbox, SandboxSettings
    from privateshare.testing.sandboxed import sandbox_config

    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxSettings.instant(files=0)) as sb:
        config = sandbox_config(sb, Path(tmp), sinks={"memory": {"type": "memory"}})
        spec = {
            "url": sb.base_url + "discovery/services",
            "config": config,
            "base_dir": str(sb.config_path().parent),
            "calls": args.calls,
            "blocks": args.blocks,
        }
        result = child("http", spec)
    print(
        f"HTTP layers: GET of {result['size'] / 1024:.1f} KiB, {result['calls']} calls per "
        f"layer in {args.blocks} blocks; client CPU and wall per call, median (min-max) of "
        f"the blocks; load average {loadavg()}"
    )
    base = statistics.median(result["cpu_ms"]["http.client"])
    print(f"{'layer':<42} {'CPU ms/call':>22} {'wall ms/call':>22} {'CPU vs http.client':>19}")
    for name, values in result["cpu_ms"].items():
        print(
            f"{name:<42} {show(values):>22} {show(result['wall_ms'][name]):>22} "
            f"{statistics.median(values) / base:18.2f}x"
        )


# --- the decryptor's buffer (child) -----------------------------------------------------------


def child_decrypt(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU per 20 KiB file through the ``privateshare_decrypt`` hook, by ``chunk_size``."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import privateshare
    from privateshare.models import FileMetadata
    from privateshare.sandbox.encrypt import iter_encrypt

    frameworks = {}
    for chunk in spec["chunks"]:
        config = {**spec["config"], "decryption": {"type": "digime", "chunk_size": chunk}}
        frameworks[chunk] = privateshare.load(config, base_dir=Path(spec["base_dir"]))
    key = next(iter(frameworks.values())).key_handle()
    blob = b"".join(iter_encrypt([os.urandom(20 << 10)], key.public_key()))
    metadata = FileMetadata()

    def one(fw: Any) -> None:
        for _ in fw.hooks.decrypt(io.BytesIO(blob), metadata, key, "bench.json"):
            pass

    files = spec["files"]
    cpu: dict[str, list[float]] = {}
    for _ in range(spec["blocks"]):
        for chunk, fw in frameworks.items():
            for threads in (1, 8):
                c = time.process_time()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda _i, fw=fw: one(fw), range(files)))
                label = f"chunk_size {chunk >> 10} KiB, {threads} thread(s)"
                cpu.setdefault(label, []).append((time.process_time() - c) * 1000 / files)
    return {"cpu_ms": cpu, "wire": len(blob)}


def run_decrypt(args: argparse.Namespace) -> None:
    from privateshare.sandbox import Sandbox, SandboxSettings
    from privateshare.testing.sandboxed import sandbox_config

    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxSettings.instant(files=0)) as sb:
        spec = {
            "config": sandbox_config(sb, Path(tmp), sinks={"memory": {"type": "memory"}}),
            "base_dir": str(sb.config_path().parent),
            "chunks": [1 << 20, 32 << 10],
            "files": max(50, args.calls // 5),
            "blocks": args.blocks,
        }
        result = child("decrypt", spec)
    print(
        f"\ndecryptor buffer: one {result['wire'] / 1024:.1f} KiB file (RSA-OAEP unwrap included) "
        f"through the privateshare_decrypt hook, {spec['files']} files per block; client CPU "
        f"ms per file, median (min-max) of {args.blocks} blocks; load average {loadavg()}"
    )
    for label, values in result["cpu_ms"].items():
        print(f"{label:<36} {show(values):>22}")


# --- decompression through the decryptor (child) ---------------------------------------------


def child_decompress(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU of the decryptor (RSA unwrap, AES, decompression, caps) vs the bare decompressor.

    The sandbox's 15 MiB JSON files, gzip and brotli, from memory: no HTTP, no sink, so
    what is left is the pipeline's own cost over one-shot ``zlib``/``brotli`` on the
    same payload.
    """
    import io
    import zlib

    import brotli

    import privateshare
    from privateshare.models import FileMetadata
    from privateshare.sandbox.encrypt import iter_encrypt
    from privateshare.sandbox.library import generate_library

    fw = privateshare.load(spec["config"], base_dir=Path(spec["base_dir"]))
    key = fw.key_handle()
    library = generate_library(
        5, files=3, size_distribution=f"fixed:{spec['size']}", updated_fraction=0
    )
    out: dict[str, Any] = {}
    for lf in library.files:
        version = lf.latest
        kind = version.compression
        if kind not in ("gzip", "brotli"):
            continue
        payload = b"".join(version.iter_payload())
        blob = b"".join(iter_encrypt([payload], key.public_key()))
        metadata = FileMetadata(compression=kind)
        bare, ours = [], []
        for _ in range(spec["blocks"]):
            c = time.process_time()
            if kind == "gzip":
                size = len(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload))
            else:
                size = len(brotli.decompress(payload))
            bare.append((time.process_time() - c) * 1000)
            c = time.process_time()
            got = 0
            for chunk in fw.hooks.decrypt(io.BytesIO(blob), metadata, key, "bench.json"):
                got += len(chunk)
            ours.append((time.process_time() - c) * 1000)
            assert got == size
        out[kind] = {"bare_ms": bare, "ours_ms": ours, "size": size}
    return out


def run_decompress(args: argparse.Namespace) -> None:
    from privateshare.sandbox import Sandbox, SandboxSettings
    from privateshare.testing.sandboxed import sandbox_config

    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxSettings.instant(files=0)) as sb:
        spec = {
            "config": sandbox_config(sb, Path(tmp), sinks={"memory": {"type": "memory"}}),
            "base_dir": str(sb.config_path().parent),
            "size": 15 << 20,
            "blocks": max(3, args.blocks),
        }
        result = child("decompress", spec)
    print(
        f"\ndecompression: the sandbox's 15 MiB JSON file, from memory, no HTTP and no sink; "
        f"client CPU ms per file, median (min-max) of {spec['blocks']}; load average {loadavg()}"
    )
    for kind, r in result.items():
        ratios = [b / o for b, o in zip(r["bare_ms"], r["ours_ms"], strict=True)]
        print(
            f"{kind:<7} bare {show(r['bare_ms'])} ms, through the decryptor {show(r['ours_ms'])} "
            f"ms: the bare decompressor's speed x {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )


# --- the GIL (child) ------------------------------------------------------------------------


def gil_work() -> dict[str, tuple[Callable[[], None], int]]:
    """(one operation, how many make a run) per piece of a file's CPU work."""
    import secrets
    import zlib

    import brotli
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    message = secrets.token_bytes(600)
    wrapped = key.public_key().encrypt(secrets.token_bytes(32), oaep)
    aes_key, iv = secrets.token_bytes(32), secrets.token_bytes(16)
    block = secrets.token_bytes(1 << 20)
    out = bytearray(len(block) + 16)
    text = json.dumps([{"id": i, "text": f"post number {i} " * 8} for i in range(6000)]).encode()
    gz, br = zlib.compress(text, 6), brotli.compress(text, quality=4)

    def sign() -> None:
        key.sign(message, pss, hashes.SHA512())

    def unwrap() -> None:
        key.decrypt(wrapped, oaep)

    def aes() -> None:
        Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor().update_into(block, out)

    def gunzip() -> None:
        zlib.decompress(gz)

    def unbrotli() -> None:
        brotli.decompress(br)

    def python_loop() -> None:
        total = 0
        for i in range(20000):
            total += i * i

    def zero_fill() -> None:
        bytearray((1 << 20) + 48)

    return {
        "PS512 sign (RSA-2048)": (sign, 150),
        "RSA-OAEP-SHA1 decrypt": (unwrap, 150),
        "AES-256-CBC decrypt, 1 MiB": (aes, 300),
        f"zlib decompress, {len(text) >> 10} KiB out": (gunzip, 150),
        f"brotli decompress, {len(text) >> 10} KiB out": (unbrotli, 150),
        "bytearray(1 MiB) (the decryptor's buffer)": (zero_fill, 2000),
        "pure-Python loop (control)": (python_loop, 150),
    }


def fairness(op: Callable[[], None], window: float) -> float:
    """Ops of the slower of two threads over the faster's, with a 1 s switch interval.

    A thread that holds the GIL through ``op`` keeps it until the interpreter forces a
    switch (after the interval), so the other thread starves: ~0. Work that releases the
    GIL lets both threads progress, on one core or two: ~1. The machine's load does not
    change which.
    """
    counts = [0, 0]
    stop = threading.Event()
    go = threading.Barrier(3)

    def run(i: int) -> None:
        go.wait()
        while not stop.is_set():
            op()
            counts[i] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        go.wait()
        time.sleep(window)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return min(counts) / max(1, max(counts))


def child_gil(spec: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (op, n) in gil_work().items():
        n = max(1, int(n * spec["scale"]))

        def run(op: Callable[[], None] = op, n: int = n) -> None:
            for _ in range(n):
                op()

        one, two, fair = [], [], []
        for _ in range(spec["blocks"]):
            w = time.perf_counter()
            run()
            one.append(time.perf_counter() - w)
            threads = [threading.Thread(target=run) for _ in range(2)]
            w, c = time.perf_counter(), time.process_time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - w
            two.append((wall, (time.process_time() - c) / wall))
            fair.append(fairness(op, 0.3))
        best = statistics.median(2 * a / b for a, (b, _) in zip(one, two, strict=True))
        results[name] = {
            "one_ms": statistics.median(one) * 1000 / n,
            "parallelism": best,
            "cpu_per_wall": statistics.median(x for _, x in two),
            "fairness": statistics.median(fair),
        }
    return results


def run_gil(args: argparse.Namespace) -> None:
    result = child("gil", {"blocks": args.blocks, "scale": args.scale})
    print(
        f"\nGIL: one thread, then two threads at once, each doing the same run; median of "
        f"{args.blocks}; load average {loadavg()}"
    )
    print(
        f"{'work':<44} {'ms/op':>8} {'parallelism':>12} {'CPU/wall':>9} {'fairness':>9}  "
        "GIL during the work"
    )
    for name, r in result.items():
        verdict = "released" if r["fairness"] > 0.3 else "HELD"
        print(
            f"{name:<44} {r['one_ms']:8.3f} {r['parallelism']:12.2f} {r['cpu_per_wall']:9.2f} "
            f"{r['fairness']:9.2f}  {verdict}"
        )
    print(
        "parallelism: 2 x one thread's time / two threads' time (2 = both cores busy; capped "
        "by the machine's load); fairness: the slower thread's share with a 1 s switch "
        "interval (~0: the GIL is held, ~1: released)"
    )


# --- plumbing -------------------------------------------------------------------------------

CHILDREN = {
    "http": child_http,
    "gil": child_gil,
    "decrypt": child_decrypt,
    "decompress": child_decompress,
}


def child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", kind, json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"the {kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def show(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--gil", action="store_true")
    parser.add_argument("--decrypt", action="store_true", help="the decryptor's buffer size")
    parser.add_argument(
        "--decompress", action="store_true", help="decryptor vs bare zlib/brotli, in memory"
    )
    parser.add_argument("--calls", type=int, default=10000, help="HTTP calls per layer")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="GIL runs' length factor")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; load average {loadavg()}")
    every = not (args.http or args.gil or args.decrypt or args.decompress)
    if args.http or every:
        run_http(args)
    if args.decrypt or every:
        run_decrypt(args)
    if args.decompress or every:
        run_decompress(args)
    if args.gil or every:
        run_gil(args)


if __name__ == "__main__":
    main()
