"""The built-in key stores and token store pass the suites every such plugin must pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from privateshare.hooks import PluginContext
from privateshare.plugins.keys_file import EnvKeyStore, FileKeyStore
from privateshare.plugins.tokens_file import FileTokenStore
from privateshare.testing.conformance import KeyStoreConformance, TokenStoreConformance
from privateshare.testing.helpers import TestKey


def pem_lines(key: TestKey) -> list[str]:
    """The base64 lines of the PEM body: none may show in a repr or a log."""
    return [line for line in key.pem.decode().splitlines() if not line.startswith("-----")]


class TestFileKeyStore(KeyStoreConformance):
    @pytest.fixture
    def key_store(self, tmp_path: Path, privateshare_test_key: TestKey) -> FileKeyStore:
        self.test_key = privateshare_test_key
        privateshare_test_key.write(tmp_path / "contract.pem")
        return FileKeyStore(
            FileKeyStore.Options(path="contract.pem", password=None),
            PluginContext(name="keys", base_dir=tmp_path),
        )

    def secret_strings(self) -> list[str]:
        return pem_lines(self.test_key)


class TestEnvKeyStore(KeyStoreConformance):
    @pytest.fixture
    def key_store(
        self, tmp_path: Path, privateshare_test_key: TestKey, monkeypatch: pytest.MonkeyPatch
    ) -> EnvKeyStore:
        self.test_key = privateshare_test_key
        monkeypatch.setenv("PRIVATESHARE_TEST_KEY", privateshare_test_key.pem.decode())
        return EnvKeyStore(
            EnvKeyStore.Options(variable="PRIVATESHARE_TEST_KEY"),
            PluginContext(name="keys", base_dir=tmp_path),
        )

    def secret_strings(self) -> list[str]:
        return pem_lines(self.test_key)


def _token_store(tmp_path: Path, key: TestKey) -> FileTokenStore:
    return FileTokenStore(
        FileTokenStore.Options(path="tokens", lock_timeout=30.0),
        PluginContext(
            name="tokens",
            base_dir=tmp_path,
            contract_id="c1",
            application_id="a1",
            key_handle=lambda: key.handle,
        ),
    )


class TestFileTokenStore(TokenStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path, privateshare_test_key: TestKey) -> FileTokenStore:
        return _token_store(tmp_path, privateshare_test_key)

    @pytest.fixture
    def store_factory(
        self, tmp_path: Path, privateshare_test_key: TestKey
    ) -> Callable[[], FileTokenStore]:
        # A second instance over the same directory, built in the forked child.
        return lambda: _token_store(tmp_path, privateshare_test_key)
