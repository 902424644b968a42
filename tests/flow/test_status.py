"""``privateshare status`` and ``PrivateShare.status()`` against the sandbox over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from privateshare import AuthorizationRequired
from privateshare.cli import main
from privateshare.flow import Flow
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import dump_toml, sandbox_config

from .conftest import consent, framework_for


def write_config(sandbox: Sandbox, root: Path, name: str = "status.toml") -> Path:
    config = sandbox.config_path("ongoing", "v1.7").parent / name
    config.write_text(dump_toml(sandbox_config(sandbox, root)))
    return config


def test_status_shows_tokens_last_runs_and_what_needs_a_person(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(partial=True)
    truth = sandbox.ground_truth()
    fw = framework_for(sandbox, tmp_path)
    flow = Flow(fw)
    consent(flow, "gina")
    consent(flow, "hal")
    summary = flow.pull("gina")
    assert summary.final_state == "partial"
    account = sandbox.library.partial_account_id

    statuses = {s.user_id: s for s in fw.status()}
    assert set(statuses) == {"gina", "hal"}
    gina, hal = statuses["gina"], statuses["hal"]
    assert gina.token.state == "valid" and gina.token.action is None
    assert gina.token.refresh_expires_at and gina.token.refresh_expires_at > time.time()
    run = gina.last_run
    assert run is not None
    assert run["final_state"] == "partial" and run["ok"] is False
    assert run["files_delivered"] == summary.files_delivered == len(truth)
    assert run["sinks"] == {"sinks.local": len(truth)}
    assert run["started_at"] <= run["finished_at"] <= time.time()
    assert gina.reauthorize[account].startswith(sandbox.onboard_url)
    assert gina.needs_attention
    assert hal.last_run is None  # never pulled
    assert not hal.needs_attention

    # The CLI, as JSON and as the table.
    config = write_config(sandbox, tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["status", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    data = {entry["user_id"]: entry for entry in json.loads(result.stdout)}
    assert data["gina"]["last_run"]["sinks"] == {"sinks.local": len(truth)}
    assert data["gina"]["needs_attention"] is True
    assert data["gina"]["reauthorize"] == {account: gina.reauthorize[account]}
    assert data["hal"]["last_run"] is None and data["hal"]["token"]["state"] == "valid"

    table = runner.invoke(main, ["status", "--config", str(config)])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "user", "token", "expires", "last", "run", "state", "delivered", "failed", "per", "sink"
    ]  # fmt: skip
    gina_row = next(line for line in lines if line.startswith("gina "))
    assert "partial" in gina_row and f"local {len(truth)}" in gina_row
    assert any(line.startswith("hal ") and "never" in line for line in lines)
    assert f"user gina: account {account} needs the user to reauthorize" in table.stdout

    only = runner.invoke(main, ["status", "-c", str(config), "--user", "hal", "--json"])
    assert [entry["user_id"] for entry in json.loads(only.stdout)] == ["hal"]


def test_status_says_when_a_token_expired_and_the_last_pull_failed(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(access_token_lifetime=1, refresh_token_lifetime=1)
    fw = framework_for(sandbox, tmp_path)
    flow = Flow(fw)
    consent(flow, "frank")
    time.sleep(2.1)
    with pytest.raises(AuthorizationRequired):
        flow.pull("frank")
    [frank] = fw.status()
    assert frank.token.state == "refresh-expired"
    assert "privateshare authorize --user frank" in (frank.token.action or "")
    assert frank.last_run is not None and frank.last_run["final_state"] == "failed"
    assert "privateshare authorize --user frank" in frank.last_run["error"]
    config = write_config(sandbox, tmp_path, "expired.toml")
    table = CliRunner().invoke(main, ["status", "-c", str(config)])
    assert table.exit_code == 0, table.output
    assert "user frank: token refresh-expired: run `privateshare authorize" in table.stdout
    assert "user frank: last run stopped:" in table.stdout


def test_status_with_no_users_says_how_to_add_one(sandbox: Sandbox, tmp_path: Path) -> None:
    config = write_config(sandbox, tmp_path, "empty.toml")
    result = CliRunner().invoke(main, ["status", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "privateshare authorize --user" in result.stdout
    as_json = CliRunner().invoke(main, ["status", "-c", str(config), "--json"])
    assert json.loads(as_json.stdout) == []
