"""Decryption throughput and memory of the ``digime`` decryptor, against OpenSSL.

Creates digi.me-format files (uncompressed, v1.7) of 1 MiB, 64 MiB and 1 GiB in a
temporary directory, encrypting them straight to disk, then decrypts each one
streamed from disk through :func:`privateshare.plugins.decrypt_digime.decrypt_stream`
(chunks consumed and discarded) and prints:

- MB/s per size, for regular files (mmap path) and for a plain stream (readinto path);
- ``openssl speed -evp aes-256-cbc -decrypt`` at its largest block size, and our ratio;
- peak RSS of decrypting the 1 GiB file in a fresh subprocess, against a bare
  interpreter subprocess.

Targets: >= 80% of OpenSSL on uncompressed data; peak RSS < 100 MiB above a bare
interpreter for 1 GiB. Run: ``python benchmarks/decrypt.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privateshare.keys import SoftwareKeyHandle
from privateshare.plugins.decrypt_digime import decrypt_stream

MiB = 1024 * 1024
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
THROUGHPUT_TARGET = 0.80
RSS_TARGET_MIB = 100

PEAK_RSS = """
def peak_rss_kib():
    # VmHWM is this process's own high-water mark; ru_maxrss can carry the parent's
    # value over fork/exec (subprocess uses vfork), which would hide the difference.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""
CHILD = (
    PEAK_RSS
    + """
import sys
from privateshare.keys import handle_from_pem
from privateshare.plugins.decrypt_digime import decrypt_stream
key_path, path, use_mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with open(key_path, "rb") as k:
    handle = handle_from_pem(k.read(), key_path)
n = 0
with open(path, "rb") as f:
    for chunk in decrypt_stream(f, handle, use_mmap=use_mmap):
        n += len(chunk)
print(n, peak_rss_kib())
"""
)
BARE = PEAK_RSS + "print(0, peak_rss_kib())"
IMPORTS = PEAK_RSS + "import privateshare.plugins.decrypt_digime\nprint(0, peak_rss_kib())"


def make_file(path: Path, size: int, public: rsa.RSAPublicKey) -> None:
    """Write ``size`` plaintext bytes encrypted the digi.me way, 1 MiB at a time."""
    dsk, iv = os.urandom(32), os.urandom(16)
    enc = Cipher(algorithms.AES(dsk), modes.CBC(iv)).encryptor()
    block = os.urandom(MiB)  # CBC makes a repeated plaintext block irrelevant
    out = bytearray(MiB + 16)
    with path.open("wb") as f:
        f.write(public.encrypt(dsk, OAEP_SHA1) + iv)
        left = size
        while left:
            piece = memoryview(block)[: min(MiB, left)]
            n = enc.update_into(piece, out)
            f.write(memoryview(out)[:n])
            left -= len(piece)
        pad = 16 - size % 16
        tail = enc.update(bytes([pad]) * pad) + enc.finalize()
        f.write(tail)


def time_decrypt(path: Path, handle: SoftwareKeyHandle, *, use_mmap: bool, repeat: int) -> float:
    """Best wall time of decrypting ``path`` streamed from disk, output discarded."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with path.open("rb") as f:
            for _chunk in decrypt_stream(f, handle, use_mmap=use_mmap):
                pass
        best = min(best, time.perf_counter() - start)
    return best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def openssl_speed(seconds: int) -> float | None:
    """Bytes/s of ``openssl speed -evp aes-256-cbc -decrypt`` at its largest block size."""
    try:
        done = subprocess.run(
            ["openssl", "speed", "-evp", "aes-256-cbc", "-decrypt", "-seconds", str(seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"openssl speed failed: {exc}")
        return None
    for line in done.stdout.splitlines():
        if re.match(r"(?i)^aes-256-cbc\s", line):
            last = line.split()[-1]
            return float(last.rstrip("k")) * 1000
    print("openssl speed: no aes-256-cbc line in its output")
    return None


def child_rss(code: str, *args: str) -> tuple[int, int]:
    """(bytes decrypted, peak RSS in KiB) of a fresh interpreter running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,64M,1G", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs per size")
    parser.add_argument("--openssl-seconds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to put the files (default: tmp)")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    handle = SoftwareKeyHandle(key, "benchmark")
    failed = False
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmpdir = Path(tmp)
        key_path = tmpdir / "key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files: dict[int, Path] = {}
        for size in sizes:
            files[size] = tmpdir / f"{size}.bin"
            make_file(files[size], size, key.public_key())

        print(f"Python {sys.version.split()[0]}, chunk size 1 MiB (default), best of {args.repeat}")
        ossl = openssl_speed(args.openssl_seconds)
        if ossl:
            print(f"openssl speed -evp aes-256-cbc -decrypt (largest block): {ossl / 1e6:.0f} MB/s")
        wrapped = files[min(files)].read_bytes()[:256]
        t_rsa = min(_timed(lambda: handle.decrypt_oaep_sha1(wrapped)) for _ in range(20))
        print(f"per-file RSA-OAEP unwrap: {t_rsa * 1e3:.2f} ms (included in the rates below)")

        def pct(rate: float) -> str:
            return f"{rate / ossl:.0%}" if ossl else "n/a"

        print(
            f"{'size':>10} {'file (mmap)':>12} {'vs OpenSSL':>10} {'stream':>10} {'vs OpenSSL':>10}"
        )
        rates: dict[int, tuple[float, float]] = {}
        for size, path in files.items():
            t_file = time_decrypt(path, handle, use_mmap=True, repeat=args.repeat)
            t_stream = time_decrypt(path, handle, use_mmap=False, repeat=args.repeat)
            rates[size] = (size / t_file, size / t_stream)
            f_rate, s_rate = rates[size]
            print(
                f"{size / MiB:>6g} MiB {f_rate / 1e6:>7.0f} MB/s {pct(f_rate):>10} "
                f"{s_rate / 1e6:>5.0f} MB/s {pct(s_rate):>10}"
            )
        if ossl:
            largest = max(rates)
            f_rate, s_rate = rates[largest]
            ok = f_rate / ossl >= THROUGHPUT_TARGET
            failed |= not ok
            print(
                f"throughput, {largest / MiB:g} MiB regular file: {pct(f_rate)} of OpenSSL "
                f"(target >= {THROUGHPUT_TARGET:.0%}) {'PASS' if ok else 'FAIL'}"
            )
            print(
                f"  (non-file stream path, bounded by the read() copy: {pct(s_rate)} of OpenSSL; "
                "smaller files pay the fixed per-file RSA unwrap)"
            )

        big = max(files)
        _, bare = child_rss(BARE)
        _, imports = child_rss(IMPORTS)
        print(
            f"peak RSS, bare interpreter: {bare / 1024:.1f} MiB; "
            f"after importing the decryptor: {imports / 1024:.1f} MiB"
        )
        for use_mmap in (True, False):
            n, peak = child_rss(CHILD, str(key_path), str(files[big]), "1" if use_mmap else "0")
            assert n == big, f"decrypted {n} bytes, expected {big}"
            extra = (peak - bare) / 1024
            verdict = "PASS" if extra < RSS_TARGET_MIB else "FAIL"
            failed |= extra >= RSS_TARGET_MIB
            path_name = "mmap" if use_mmap else "stream"
            print(
                f"peak RSS decrypting {big / MiB:g} MiB ({path_name}): {peak / 1024:.1f} MiB, "
                f"{extra:.1f} MiB above bare interpreter (target < {RSS_TARGET_MIB}) {verdict}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
