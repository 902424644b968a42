"""Token store trouble as a CLI user meets it: a message and an exit code, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from privateshare.cli import ExitCode
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, write_sandbox_config

from ..helpers import cli


def test_damaged_records_and_a_lost_store_key_from_the_command_line(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = write_sandbox_config(sandbox, tmp_path)
    fw = load(config)
    flow = Flow(fw)
    for user in ("amy", "bob", "cat"):
        consent(flow, user)
    store = fw.plugins["tokens"]
    keys = store._open()
    damaged = store.directory / f"{keys.digest('bob')}.token"
    damaged.write_bytes(b"not a record")
    checkpoint = store.directory / f"{keys.digest('cat')}.checkpoint"
    fw.close()

    users = cli("users", "--config", str(config), "--json")
    assert users.returncode == ExitCode.OK, users.stderr
    assert json.loads(users.stdout) == ["amy", "cat"]
    assert str(damaged) in users.stderr and "not a privateshare record" in users.stderr

    checkpoint.write_bytes(b"not a record either")
    pull = cli("pull", "--config", str(config), "--all-users", "--json")
    assert pull.returncode == ExitCode.PARTIAL, pull.stderr
    summaries = {s["user_id"]: s for s in json.loads(pull.stdout)}
    assert summaries["amy"]["ok"] and summaries["amy"]["files_delivered"] > 0
    assert not summaries["cat"]["ok"]
    assert str(checkpoint) in summaries["cat"]["files_failed"][0]["reason"]
    assert "Traceback" not in pull.stderr

    store.key_path.unlink()
    # 3 tokens, the checkpoints of amy and cat, and the records of their last runs.
    for command in (("users",), ("pull", "--all-users"), ("pull", "--user", "amy")):
        result = cli(*command, "--config", str(config))
        assert result.returncode == ExitCode.PLUGIN, result.stderr
        assert f"error: the token directory {store.directory} holds 7 sealed records" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr
    assert not store.key_path.exists()
