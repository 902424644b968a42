"""Small builders and a file driver for tests of plugins and flows.

``deliver`` pushes one file through every configured sink the way the flow
does (one writer per sink, stream, commit all, or abort all on failure), so a
sink can be tested inside a real framework without a digi.me server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .. import delivery
from ..framework import PrivateShare
from ..hooks.calls import Hooks
from ..keys import SoftwareKeyHandle
from ..models import DataFile, FileMetadata, RunInfo

__all__ = ["TestKey", "deliver", "generate_test_key", "make_file", "make_run"]


def make_run(user_id: str = "alice", run_id: str | None = None) -> RunInfo:
    """A RunInfo for ``user_id`` with a fresh run id."""
    return RunInfo(
        run_id=run_id or f"run-{uuid.uuid4().hex[:12]}", user_id=user_id, started_at=time.time()
    )


def make_file(
    user_id: str = "alice",
    name: str = "18_4_28_3_1_D201_1.json",
    updated_date: int = 1_700_000_000_000,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = None,
    last_modified: str | None = None,
) -> DataFile:
    """A DataFile as the flow hands it to sinks (mapped data unless metadata has a mimetype)."""
    return DataFile(
        user_id=user_id,
        name=name,
        updated_date=updated_date,
        metadata=FileMetadata(dict(metadata or {"objectType": "post"}), compression),
        last_modified=last_modified,
    )


def deliver(
    target: PrivateShare | Hooks,
    file: DataFile,
    chunks: Iterable[bytes | memoryview],
    run: RunInfo | None = None,
) -> list[str]:
    """Write ``file`` to every sink and commit, as the flow does; return the sink names.

    On any failure every writer is aborted and the error re-raised, so a test
    can check that nothing was half-written anywhere.
    """
    hooks = target.hooks if isinstance(target, PrivateShare) else target
    _size, sinks = delivery.deliver(hooks, run or make_run(file.user_id), file, chunks)
    return sinks


class TestKey:
    """An RSA test key: PEM for files and variables, a handle for direct use."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self.handle = SoftwareKeyHandle(key, "the privateshare test key")

    @property
    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def public_pem(self) -> bytes:
        """The public key, to register with the sandbox or a test server."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write(self, path: Path) -> Path:
        """Write the private key to ``path`` with mode 0600 (as a key store expects)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.pem)
        path.chmod(0o600)
        return path

    def __repr__(self) -> str:
        return f"TestKey(RSA-{self._key.key_size})"

    def __reduce__(self) -> Any:
        raise TypeError("a test key cannot be pickled")


def generate_test_key(bits: int = 2048) -> TestKey:
    """A fresh RSA key (about 0.1 s for 2048 bits; the fixture caches one per session)."""
    return TestKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))
