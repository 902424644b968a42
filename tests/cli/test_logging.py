"""Logs like a well-behaved CLI: levels, JSON lines, one handler, every file line names its user."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from privateshare.flow import Flow
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, sandbox_framework, write_sandbox_config

from ..helpers import cli


def consented(sandbox: Sandbox, root: Path, *users: str) -> Path:
    with sandbox_framework(sandbox, root) as fw:
        for user in users:
            consent(Flow(fw), user)
    return write_sandbox_config(sandbox, root)


@pytest.fixture
def start(privateshare_sandbox: Callable[..., Sandbox]) -> Callable[..., Sandbox]:
    return privateshare_sandbox


def test_a_failed_file_is_printed_once_plus_in_the_summary(
    start: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start(files=4, corrupt_rate=1.0, fault_endpoints=frozenset({"file"}))
    config = consented(sandbox, tmp_path, "ann")
    result = cli("pull", "-c", str(config), "--user", "ann")
    assert result.returncode == 1, result.stderr
    summary = json.loads(cli("pull", "-c", str(config), "--user", "ann", "--json").stdout)
    failed = [f["name"] for f in summary[0]["files_failed"]]
    assert failed
    for name in failed:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert lines == [lines[0]] and lines[0].startswith(
            f"warning: file {name} of user ann failed: "
        ), result.stderr
        assert result.stdout.count(f"user ann: failed {name}: ") == 1


def test_retries_show_at_v_only(start: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = start(files=6, error_rate=0.5, fault_endpoints=frozenset({"file"}), fault_seed=4)
    config = consented(sandbox, tmp_path, "ann")
    quiet = cli("pull", "-c", str(config), "--user", "ann")
    assert "retrying" not in quiet.stderr
    sandbox2 = start(files=6, error_rate=0.5, fault_endpoints=frozenset({"file"}), fault_seed=4)
    config2 = consented(sandbox2, tmp_path / "second", "ann")
    verbose = cli("-v", "pull", "-c", str(config2), "--user", "ann")
    retries = [line for line in verbose.stderr.splitlines() if "retrying" in line]
    assert retries, verbose.stderr
    assert all(line.startswith("info: user ann: retrying") for line in retries), retries


def test_json_log_lines(start: Callable[..., Sandbox], tmp_path: Path) -> None:
    config = consented(start(files=3), tmp_path, "ann")
    result = cli("--log-format", "json", "-v", "pull", "-c", str(config), "--user", "ann")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    delivered = [r for r in records if r.get("event") == "file"]
    assert len(delivered) == 3 and all(r["user_id"] == "ann" for r in delivered)
    quiet = cli("-q", "pull", "-c", str(config), "--user", "ann")
    assert quiet.stderr == ""
    level = cli("--log-level", "error", "pull", "-c", str(config), "--user", "ann")
    assert "info:" not in level.stderr


def test_all_users_lines_name_their_user(start: Callable[..., Sandbox], tmp_path: Path) -> None:
    config = consented(start(files=3), tmp_path, "ann", "bob")
    result = cli("pull", "-c", str(config), "--all-users")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "delivered" in line]
    assert len(lines) == 6
    assert sum(line.startswith("user ann: delivered ") for line in lines) == 3
    assert sum(line.startswith("user bob: delivered ") for line in lines) == 3


def test_users_with_none_says_so(start: Callable[..., Sandbox], tmp_path: Path) -> None:
    config = write_sandbox_config(start(), tmp_path)
    result = cli("users", "-c", str(config))
    assert result.returncode == 0
    assert result.stdout == ""
    assert (
        f"no users have a saved token yet; add one with: privateshare authorize --config "
        f"{config} --user ID" in result.stderr
    )
