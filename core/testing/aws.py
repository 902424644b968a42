"""A real S3/KMS endpoint for tests: moto's standalone server on 127.0.0.1.

Load it with ``pytest_plugins = ["privateshare.testing.aws"]`` in a test module. It needs
moto's S3 and KMS backends and its server's web framework: ``pip install "moto[s3,kms]"
flask flask-cors`` (privateshare's ``test`` extra has them).

* ``moto_server`` (session) starts ``python -m moto.server`` in a subprocess on a
  free port; like a fresh AWS account it holds nothing, and it accepts any
  credentials.
* ``moto_auth_server`` (session) is a second one with IAM authentication on: an
  IAM user with full access is created while it still accepts anything, then
  ``/moto-api/reset-auth`` switches checks on, so requests signed with unknown
  or wrong credentials fail as on AWS. Tests of bad credentials use it. (It is
  separate because moto's signature check rejects keys with percent-encoded
  characters, which S3 accepts.)
* ``aws_env`` (test) points the standard AWS chain (environment variables) at
  ``moto_server`` and isolates it from the developer's ``~/.aws``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

__all__ = [
    "MotoServer",
    "aws_env",
    "free_port",
    "moto_auth_server",
    "moto_server",
    "start_moto_server",
]

REGION = "eu-west-1"
_ADMIN_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """A running moto server and the IAM credentials it accepts."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = REGION
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def env(self) -> dict[str, str]:
        """Environment variables that aim the standard AWS chain at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self, service: str, **overrides: Any) -> Any:
        """A boto3 client for ``service`` on this server, with the admin credentials.

        Without ``overrides`` one client per service is kept (clients are thread-safe
        and slow to make).
        """
        import boto3

        if not overrides and service in self._clients:
            return self._clients[service]
        args: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }
        args.update(overrides)
        client = boto3.session.Session().client(service, **args)
        if not overrides:
            self._clients[service] = client
        return client

    def make_bucket(self, prefix: str = "ps-test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client("s3").create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region}
        )
        return name

    def make_kms_key(self, description: str = "privateshare test") -> str:
        """Create a symmetric KMS key; return its key id."""
        meta = self.client("kms").create_key(Description=description)["KeyMetadata"]
        return str(meta["KeyId"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with status {process.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/moto-api/data.json", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer on {url} within {timeout:.0f} s")


def start_moto_server(
    log_path: Path | None = None, *, auth: bool = False, timeout: float = 30.0
) -> MotoServer:
    """Start moto's server in a subprocess (IAM auth on if ``auth``); the caller stops it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_until_up(url, process, timeout)
        if not auth:
            return MotoServer(url, "testing", "testing", process=process)
        bootstrap = MotoServer(url, "bootstrap", "bootstrap", process=process)
        iam = bootstrap.client("iam", region_name="us-east-1")
        iam.create_user(UserName="privateshare-tests")
        iam.put_user_policy(
            UserName="privateshare-tests", PolicyName="admin", PolicyDocument=_ADMIN_POLICY
        )
        key = iam.create_access_key(UserName="privateshare-tests")["AccessKey"]
        # From here on every request must be signed by a key moto's IAM knows.
        response = requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10)
        response.raise_for_status()
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return MotoServer(url, key["AccessKeyId"], key["SecretAccessKey"], process=process)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server (S3, KMS, IAM) per test session, on 127.0.0.1; any credentials do."""
    server = start_moto_server(tmp_path_factory.mktemp("moto") / "moto-server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server that checks credentials and signatures like AWS (IAM auth on)."""
    log = tmp_path_factory.mktemp("moto-auth") / "moto-server.log"
    server = start_moto_server(log, auth=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """Point the standard AWS chain (env vars) at ``moto_server``, away from ``~/.aws``."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server
