"""How fast does the sandbox serve? Prints 10 KiB files per second and MB/s for large files.

The sandbox runs in its own process (``python -m privateshare.sandbox``) so the
client does not share its GIL; ``--in-process`` runs it in this one instead.
Client side: plain ``requests`` with a pooled session per thread, request JWTs
signed PS512 here with PyJWT (as any client must), bodies read and discarded
(no decryption: this measures the server). Then, what the test suite only checks
for behaviour: the time to generate a 5000-file library, the time until the CLI
serves with cached keys, and 8 requests with 0.4 s latency served at once. Run:

    python benchmarks/sandbox.py [--files 2000] [--threads 8] [--large 4] [--large-mib 128]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization

from privateshare.sandbox import Sandbox, SandboxSettings
from privateshare.sandbox.library import generate_library

REDIRECT = "http://127.0.0.1:8765/callback"


@dataclass
class Target:
    """Where a sandbox runs and how to sign for its ongoing contract."""

    base_url: str
    onboard_url: str
    client_id: str
    key_path: Path


@contextlib.contextmanager
def sandbox(in_process: bool, key_cache: str, **settings: object) -> Iterator[Target]:
    """Start a sandbox in this process or in a child process."""
    if in_process:
        with Sandbox(SandboxSettings.instant(**settings), key_cache=key_cache) as sb:  # type: ignore[arg-type]
            yield Target(sb.base_url, sb.onboard_url, sb.client_id(), sb.key_path())
        return
    with tempfile.TemporaryDirectory() as state:
        for pem in Path(key_cache).glob("*.pem"):
            (Path(state) / pem.name).write_bytes(pem.read_bytes())
        args = [sys.executable, "-m", "privateshare.sandbox", "--port", "0", "--dir", state]
        args += ["--pending-polls", "0", "--running-polls", "0"]
        for name, value in settings.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            base = ""
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.strip().startswith("base URL"):  # not "v1.5 base URL"
                    base = line.split()[-1]
                if line.startswith("Press Ctrl+C"):
                    break
            info = requests.get(base.replace("/v1.7/", "/_sandbox/info"), timeout=10).json()
            client_id = f"{info['application_id']}_{info['contracts']['ongoing']['contract_id']}"
            yield Target(base, info["onboard_url"], client_id, Path(state) / "ongoing.pem")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class Client:
    """Just enough of the v1.7 protocol to onboard and download."""

    def __init__(self, sb: Target) -> None:
        self.sb = sb
        self.client_id = sb.client_id
        self.key = serialization.load_pem_private_key(sb.key_path.read_bytes(), password=None)
        self.local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def bearer(self, **claims: object) -> dict[str, str]:
        payload = {
            "client_id": self.client_id,
            "nonce": secrets.token_hex(16),
            "timestamp": int(time.time() * 1000),
            **claims,
        }
        return {"Authorization": "Bearer " + jwt.encode(payload, self.key, algorithm="PS512")}

    def onboard(self) -> tuple[str, str]:
        """(access token, session key) through authorize, auto-consent and code exchange."""
        verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        r = self.http.post(
            self.sb.base_url + "oauth/authorize",
            headers=self.bearer(
                code_challenge=challenge, code_challenge_method="S256", redirect_uri=REDIRECT
            ),
            json={},
        )
        r.raise_for_status()
        code = jwt.decode(r.json()["token"], options={"verify_signature": False})
        session = r.json()["session"]["key"]
        page = self.http.get(
            self.sb.onboard_url + "authorize",
            params={"code": code["preauthorization_code"]},
            allow_redirects=False,
        )
        callback = parse_qs(urlsplit(page.headers["Location"]).query)
        r = self.http.post(
            self.sb.base_url + "oauth/token",
            headers=self.bearer(
                grant_type="authorization_code",
                code=callback["code"][0],
                code_verifier=verifier,
            ),
        )
        r.raise_for_status()
        token = jwt.decode(r.json()["token"], options={"verify_signature": False})
        return token["access_token"]["value"], session

    def names(self, access: str, session: str) -> list[str]:
        r = self.http.get(
            self.sb.base_url + f"permission-access/query/{session}",
            headers=self.bearer(access_token=access),
        )
        r.raise_for_status()
        return [f["name"] for f in r.json()["fileList"]]

    def download(self, access: str, session: str, name: str) -> int:
        r = self.http.get(
            self.sb.base_url + f"permission-access/query/{session}/{name}",
            headers=self.bearer(access_token=access),
            stream=True,
        )
        r.raise_for_status()
        n = 0
        for chunk in r.iter_content(1 << 20):
            n += len(chunk)
        return n


def small_files(count: int, threads: int, key_cache: str, in_process: bool) -> None:
    settings = {"files": count, "size_distribution": "fixed:10240"}
    with sandbox(in_process, key_cache, **settings) as sb:
        c = Client(sb)
        access, session = c.onboard()
        names = c.names(access, session)
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(lambda n: c.download(access, session, n), names))
        elapsed = time.perf_counter() - start
    print(
        f"10 KiB files: {len(names) / elapsed:8.0f} files/s "
        f"({len(names)} files, {threads} threads, {total / 1e6:.1f} MB on the wire, "
        f"{elapsed:.2f} s)"
    )


def large_files(count: int, mib: int, threads: int, key_cache: str, in_process: bool) -> None:
    settings = {"files": 0, "large_files": count, "large_file_size": mib << 20}
    with sandbox(in_process, key_cache, **settings) as sb:
        c = Client(sb)
        access, session = c.onboard()
        names = c.names(access, session)
        start = time.perf_counter()
        with ThreadPoolExecutor(min(threads, count)) as pool:
            total = sum(pool.map(lambda n: c.download(access, session, n), names))
        elapsed = time.perf_counter() - start
    print(
        f"large files:  {total / 1e6 / elapsed:8.0f} MB/s    "
        f"({count} x {mib} MiB, {min(threads, count)} threads, {elapsed:.2f} s)"
    )


def startup(key_cache: str) -> None:
    start = time.perf_counter()
    generate_library(11, files=5000, large_files=2, large_file_size=8 << 30)
    generated = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as state:
        for pem in Path(key_cache).glob("*.pem"):
            (Path(state) / pem.name).write_bytes(pem.read_bytes())
        args = [sys.executable, "-m", "privateshare.sandbox", "--port", "0", "--dir", state]
        start = time.perf_counter()
        proc = subprocess.Popen([*args, "--files", "3"], stdout=subprocess.PIPE, text=True)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("Press Ctrl+C"):
                    break
            ready = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    settings = SandboxSettings.instant(latency=0.4, fault_endpoints=frozenset({"sample"}))
    with Sandbox(settings, key_cache=key_cache) as sb:
        sessions = [requests.Session() for _ in range(8)]
        url = sb.base_url + "permission-access/sample/datasets/1"
        client_id = sb.client_id()
        key = serialization.load_pem_private_key(sb.key_path().read_bytes(), password=None)

        def call(session: requests.Session) -> int:
            claims = {"client_id": client_id, "nonce": secrets.token_hex(16)}
            token = jwt.encode({**claims, "timestamp": int(time.time() * 1000)}, key, "PS512")
            headers = {"Authorization": f"Bearer {token}"}
            return session.get(url, headers=headers, timeout=30).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, sessions))
        concurrent = time.perf_counter() - start
    print(f"library of 5000 files generated in {generated:.2f} s")
    print(f"CLI serving (cached keys) after   {ready:.2f} s")
    print(
        f"8 requests x 0.4 s latency:        {concurrent:.2f} s "
        f"(serial would be 3.2 s; statuses {sorted(set(statuses))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=128)
    parser.add_argument("--in-process", action="store_true", help="share this process's GIL")
    parser.add_argument("--startup", action="store_true", help="only the startup figures")
    args = parser.parse_args()
    where = "in this process" if args.in_process else "in its own process"
    print(f"sandbox {where}; client: requests + PyJWT, {args.threads} threads")
    with tempfile.TemporaryDirectory() as key_cache:
        # Generate the keys once (a throw-away in-process start fills the cache).
        Sandbox(SandboxSettings.instant(files=0), key_cache=key_cache).start().stop()
        startup(key_cache)
        if args.startup:
            return
        small_files(args.files, args.threads, key_cache, args.in_process)
        large_files(args.large, args.large_mib, args.threads, key_cache, args.in_process)


if __name__ == "__main__":
    main()
