"""pytest plugin entry point (registered as ``pytest11``, so it loads by itself).

Fixtures for plugin authors and for privateshare's own tests:

* ``privateshare_test_key`` — one RSA-2048 key per session (:class:`TestKey`).
* ``privateshare_factory`` — build a :class:`PrivateShare` from a TOML string,
  with ``tmp_path`` as the base directory and the gaps of a minimal config
  filled in (test ids, a key file, a memory sink).
* ``privateshare_memory`` — a framework with one memory sink, ``sinks.memory``.
* ``memory_sink`` — a stand-alone :class:`MemorySink`.

The conformance suites live in :mod:`privateshare.testing.conformance`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..config import parse_toml
from ..framework import PrivateShare, load
from .helpers import TestKey, generate_test_key
from .memory import MemorySink

#: Filled in when the TOML leaves them out.
TEST_APPLICATION_ID = "test-application"
TEST_CONTRACT_ID = "test-contract"
#: Where the factory writes the test key (relative to the base directory).
TEST_KEY_FILE = "contract.pem"


class PrivateShareFactory(Protocol):
    """The ``privateshare_factory`` fixture's signature."""

    def __call__(
        self,
        toml: str = "",
        *,
        base_dir: str | Path | None = None,
        strict: bool = True,
        extra_plugins: Mapping[str, Any] | None = None,
    ) -> PrivateShare: ...


def complete_config(raw: dict[str, Any], key_path: Callable[[], Path]) -> dict[str, Any]:
    """Fill what a minimal test config leaves out; anything given is kept as is.

    ``[digime]`` gets test ids; a missing ``[keys]`` (or a ``type = "file"``
    one without ``path``) gets the session's test key; with no sink and no
    hook module, ``[sinks.memory] type = "memory"`` is added.
    """
    digime = raw.setdefault("digime", {})
    if isinstance(digime, dict):
        digime.setdefault("application_id", TEST_APPLICATION_ID)
        digime.setdefault("contract_id", TEST_CONTRACT_ID)
    keys = raw.get("keys")
    if keys is None:
        raw["keys"] = {"type": "file", "path": str(key_path())}
    elif isinstance(keys, dict) and keys.get("type") == "file" and "path" not in keys:
        keys["path"] = str(key_path())
    plugins = raw.get("plugins")
    has_modules = isinstance(plugins, dict) and bool(plugins.get("modules"))
    if "sinks" not in raw and not has_modules:
        raw["sinks"] = {"memory": {"type": "memory"}}
    return raw


@pytest.fixture(scope="session")
def privateshare_test_key() -> TestKey:
    """One RSA-2048 key for the whole session (generating one per test would be slow)."""
    return generate_test_key()


@pytest.fixture
def privateshare_factory(
    tmp_path: Path, privateshare_test_key: TestKey
) -> Iterator[PrivateShareFactory]:
    """Build frameworks from TOML strings; each is closed at the end of the test.

    ``strict`` defaults to ``True`` so a broken plugin fails the test instead of
    being reported and skipped.
    """
    made: list[PrivateShare] = []

    def build(
        toml: str = "",
        *,
        base_dir: str | Path | None = None,
        strict: bool = True,
        extra_plugins: Mapping[str, Any] | None = None,
    ) -> PrivateShare:
        base = Path(base_dir) if base_dir is not None else tmp_path

        def key_path() -> Path:
            path = base / TEST_KEY_FILE
            return path if path.exists() else privateshare_test_key.write(path)

        raw = complete_config(parse_toml(textwrap.dedent(toml), "<privateshare_factory>"), key_path)
        framework = load(raw, base_dir=base, strict=strict, extra_plugins=extra_plugins)
        made.append(framework)
        return framework

    yield build
    for framework in made:
        framework.close()


@pytest.fixture
def privateshare_memory(privateshare_factory: PrivateShareFactory) -> PrivateShare:
    """A framework whose only sink is ``[sinks.memory] type = "memory"``.

    Its sink is ``fw.plugins["sinks.memory"]``; drive files through it with
    :func:`privateshare.testing.helpers.deliver`.
    """
    return privateshare_factory('[sinks.memory]\ntype = "memory"\n')


@pytest.fixture
def memory_sink() -> MemorySink:
    """A fresh memory sink outside any framework (register it with ``extra_plugins``)."""
    return MemorySink.create("memory_sink")


@pytest.fixture(scope="session")
def privateshare_sandbox_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sandbox key cache: contract and signing keys made once per test session."""
    return tmp_path_factory.mktemp("privateshare-sandbox-keys")


@pytest.fixture
def privateshare_sandbox(privateshare_sandbox_keys: Path, tmp_path: Path) -> Iterator[Any]:
    """``start(**settings)`` starts a sandbox (instant pace by default) on 127.0.0.1.

    Every sandbox started is stopped after the test. Build a framework for it with
    :func:`privateshare.testing.sandboxed.sandbox_framework`.
    """
    from .sandboxed import sandbox_starter

    yield from sandbox_starter(privateshare_sandbox_keys, tmp_path)
