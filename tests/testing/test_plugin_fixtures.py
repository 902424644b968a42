"""The pytest plugin's fixtures: frameworks from TOML, the test key, driving files through."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from privateshare import PrivateShare, SinkError
from privateshare.delivery import sink_writers
from privateshare.plugins.sink_file import FileSink
from privateshare.testing.helpers import TestKey, deliver, make_file, make_run
from privateshare.testing.memory import MemorySink
from privateshare.testing.plugin import (
    TEST_APPLICATION_ID,
    TEST_CONTRACT_ID,
    complete_config,
)

_seen_keys: list[TestKey] = []


@pytest.mark.parametrize("attempt", [1, 2])
def test_the_test_key_is_made_once_per_session(
    privateshare_test_key: TestKey, attempt: int
) -> None:
    _seen_keys.append(privateshare_test_key)
    assert all(key is privateshare_test_key for key in _seen_keys)
    assert privateshare_test_key.handle.key_size == 2048
    assert privateshare_test_key.pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert repr(privateshare_test_key) == "TestKey(RSA-2048)"


def test_an_empty_config_gives_a_working_framework(
    privateshare_factory, tmp_path: Path, privateshare_test_key: TestKey
) -> None:
    fw = privateshare_factory()
    assert isinstance(fw, PrivateShare)
    assert fw.config.base_dir == tmp_path
    assert (fw.config.digime.application_id, fw.config.digime.contract_id) == (
        TEST_APPLICATION_ID,
        TEST_CONTRACT_ID,
    )
    assert {"keys", "tokens", "transport", "decryption", "sinks.memory"} <= set(fw.plugins)
    key_file = tmp_path / "contract.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    handle = fw.key_handle()
    assert handle.public_key().public_numbers() == (
        privateshare_test_key.handle.public_key().public_numbers()
    )
    signature = handle.sign_ps512(b"m")
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
    privateshare_test_key.handle.public_key().verify(signature, b"m", pss, hashes.SHA512())


def test_keys_type_file_alone_gets_the_test_key(privateshare_factory, tmp_path: Path) -> None:
    fw = privateshare_factory('[keys]\ntype = "file"\n')
    assert fw.key_handle().key_size == 2048
    assert (tmp_path / "contract.pem").exists()


def test_what_the_config_says_is_kept(
    privateshare_factory, tmp_path: Path, privateshare_test_key: TestKey
) -> None:
    privateshare_test_key.write(tmp_path / "keys" / "mine.pem")
    fw = privateshare_factory(
        """
        [digime]
        application_id = "my-app"
        contract_id = "my-contract"

        [keys]
        type = "file"
        path = "keys/mine.pem"

        [sinks.local]
        type = "file"
        root = "out"
        """
    )
    assert fw.config.digime.application_id == "my-app"
    assert set(fw.plugins) >= {"sinks.local"} and "sinks.memory" not in fw.plugins
    assert not (tmp_path / "contract.pem").exists()
    assert fw.key_handle().key_size == 2048


def test_base_dir_can_be_chosen(privateshare_factory, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    fw = privateshare_factory('[sinks.local]\ntype = "file"\nroot = "data"\n', base_dir=other)
    assert fw.plugins["sinks.local"].root == other / "data"
    assert (other / "contract.pem").exists()


def test_complete_config_fills_only_gaps() -> None:
    made: list[int] = []

    def key_path() -> Path:
        made.append(1)
        return Path("/k.pem")

    assert complete_config({}, key_path) == {
        "digime": {"application_id": TEST_APPLICATION_ID, "contract_id": TEST_CONTRACT_ID},
        "keys": {"type": "file", "path": "/k.pem"},
        "sinks": {"memory": {"type": "memory"}},
    }
    made.clear()
    raw = complete_config(
        {"keys": {"type": "env-key"}, "plugins": {"modules": ["my_hooks"]}}, key_path
    )
    assert raw["keys"] == {"type": "env-key"} and "sinks" not in raw and made == []


def test_frameworks_are_closed_after_the_test(privateshare_factory) -> None:
    closed: list[str] = []

    class Closing:
        def close(self) -> None:
            closed.append("yes")

    fw = privateshare_factory()
    fw.plugins["probe"] = Closing()
    fw.close()
    assert closed == ["yes"]


def test_memory_sink_fixture_is_fresh(memory_sink: MemorySink) -> None:
    assert memory_sink.files == {}
    writer = memory_sink.privateshare_sink_open_file(run=make_run(), file=make_file())
    writer.write(memoryview(b"abc"))
    writer.commit()
    assert memory_sink.read("alice", "18_4_28_3_1_D201_1.json") == b"abc"


# --- writers for every configured sink, and a file driven through them ----------------


def test_privateshare_memory_has_one_memory_sink(privateshare_memory: PrivateShare) -> None:
    assert privateshare_memory.hooks.sink_names() == ["sinks.memory"]
    assert isinstance(privateshare_memory.plugins["sinks.memory"], MemorySink)


@pytest.fixture
def two_sinks(privateshare_factory) -> PrivateShare:
    """A framework with a memory sink and a file sink, in that order."""
    return privateshare_factory(
        """
        [sinks.mem]
        type = "memory"

        [sinks.local]
        type = "file"
        root = "data"
        """
    )


def test_a_writer_comes_back_for_every_configured_sink(two_sinks: PrivateShare) -> None:
    run = make_run("alice")
    two_sinks.hooks.sinks_open_run(run)
    writers = sink_writers(two_sinks.hooks, run, make_file("alice", "a.json"))
    try:
        assert [name for name, _ in writers] == ["sinks.mem", "sinks.local"]
        assert type(two_sinks.plugins["sinks.local"]) is FileSink
    finally:
        for _, writer in writers:
            writer.abort()


def test_a_file_is_driven_through_open_write_commit(
    two_sinks: PrivateShare, tmp_path: Path
) -> None:
    run = make_run("alice")
    two_sinks.hooks.sinks_open_run(run)
    buffer = bytearray(b"[1,")
    chunks = [memoryview(buffer), b"2]"]
    assert deliver(two_sinks, make_file("alice", "a.json"), chunks, run) == [
        "sinks.mem",
        "sinks.local",
    ]
    buffer[:] = b"xxx"
    assert two_sinks.plugins["sinks.mem"].read("alice", "a.json") == b"[1,2]"
    assert (tmp_path / "data/alice/a.json").read_bytes() == b"[1,2]"


def test_a_failing_commit_aborts_the_other_writers(privateshare_factory, tmp_path: Path) -> None:
    fw = privateshare_factory(
        """
        [sinks.mem]
        type = "memory"
        fail_on_commit = ["bad.json"]

        [sinks.local]
        type = "file"
        root = "data"
        """
    )
    with pytest.raises(SinkError, match="failed on purpose"):
        deliver(fw, make_file("alice", "bad.json"), [b"{}"])
    assert fw.plugins["sinks.mem"].files == {}
    assert not (tmp_path / "data/alice/bad.json").exists()
    assert [p.name for p in (tmp_path / "data/alice").iterdir()] == []


def test_an_unsafe_name_opens_no_writer_anywhere(two_sinks: PrivateShare, tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"sink sinks.mem could not open \.\./x"):
        deliver(two_sinks, make_file("alice", "../x"), [b"{}"])
    assert not (tmp_path / "x").exists()
