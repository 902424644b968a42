"""The flow commands as users run them: real subprocesses against a sandbox."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from privateshare.cli import ExitCode
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import write_sandbox_config

from ..helpers import cli, consent_command, free_port
from .conftest import delivered


def authorize(config: Path, user: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``authorize`` and act as the browser: open the printed URL (auto-consent)."""

    def answer(url: str) -> None:
        for _ in range(50):  # the callback server is up before the URL is printed
            try:
                requests.get(url, timeout=10)  # follows the redirect to our callback
                break
            except requests.ConnectionError:
                time.sleep(0.1)

    return consent_command(
        "authorize", "--config", str(config), "--user", user, *extra, answer=answer
    )


def test_authorize_pull_accounts_users_delete(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = start_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})

    result = authorize(config, "alice")
    assert result.returncode == 0, result.stderr
    assert "Consent saved for user alice" in result.stderr

    pull = cli("pull", "--config", str(config), "--user", "alice", "--json")
    assert pull.returncode == ExitCode.OK, pull.stderr
    (summary,) = json.loads(pull.stdout)
    assert summary["ok"] and summary["files_delivered"] == len(sandbox.ground_truth())
    assert delivered(tmp_path, "alice") == sandbox.ground_truth()

    again = cli("pull", "--config", str(config), "--all-users")
    assert again.returncode == ExitCode.OK, again.stderr
    assert "user alice: 0 delivered" in again.stdout

    users = cli("users", "--config", str(config), "--json")
    assert json.loads(users.stdout) == ["alice"]

    accounts = cli("accounts", "--config", str(config), "--user", "alice", "--json")
    assert {a["id"] for a in json.loads(accounts.stdout)} == {
        a["id"] for a in sandbox.library.accounts
    }

    deleted = cli("delete-user", "--config", str(config), "--user", "alice", "--yes")
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert json.loads(cli("users", "--config", str(config), "--json").stdout) == []


def test_authorize_once_reads_now_and_keeps_nothing(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = start_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, "oneoff", digime={"redirect_uri": redirect})
    result = authorize(config, "bob", "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert delivered(tmp_path, "bob") == sandbox.ground_truth()
    assert json.loads(cli("users", "--config", str(config), "--json").stdout) == []


def test_exit_codes_mean_something(start_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = start_sandbox(partial=True)
    config = write_sandbox_config(sandbox, tmp_path)
    no_token = cli("pull", "--config", str(config), "--user", "ghost")
    assert no_token.returncode == ExitCode.AUTHORIZATION
    # The hint works when pasted: it names the config the command was given.
    assert f"privateshare authorize --config {config} --user ghost" in no_token.stderr

    missing = cli("pull", "--config", str(tmp_path / "absent.toml"), "--user", "x")
    assert missing.returncode == ExitCode.CONFIG
    assert "absent.toml does not exist" in missing.stderr

    usage = cli("pull", "--config", str(config))
    assert usage.returncode == 2 and "exactly one of --user ID or --all-users" in usage.stderr

    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent, sandbox_framework

    consent(Flow(sandbox_framework(sandbox, tmp_path)), "pat")
    partial = cli("pull", "--config", str(config), "--user", "pat")
    assert partial.returncode == ExitCode.PARTIAL, partial.stderr
    assert "needs the user to reauthorize" in partial.stdout


def test_server_errors_exit_with_the_server_code(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"  # no clash with parallel runs
    sandbox = start_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(
        sandbox, tmp_path, digime={"contract_id": "unknown", "redirect_uri": redirect}
    )
    result = cli(
        "authorize", "--config", str(config), "--user", "x", "--no-browser", "--timeout", "1"
    )
    assert result.returncode == ExitCode.SERVER
    assert "InvalidClient" in result.stderr


def test_v15_authorize_pull_accounts_and_calls_it_lacks(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = start_sandbox(
        redirect_uris=(redirect,), sdk_status="deprecated", sdk_status_message="please upgrade"
    )
    config = write_sandbox_config(sandbox, tmp_path, api="v1.5", digime={"redirect_uri": redirect})

    result = authorize(config, "alice")  # the sandbox's stand-in for the digi.me app
    assert result.returncode == 0, result.stderr
    assert "digime://consent-access?preauthorizationCode=" in result.stderr
    assert "Consent saved for user alice" in result.stderr

    pull = cli("pull", "--config", str(config), "--user", "alice", "--json")
    assert pull.returncode == ExitCode.OK, pull.stderr
    assert delivered(tmp_path, "alice") == sandbox.ground_truth()
    # The server's SDK status reaches the user, once per run (protocol.md#sessions).
    assert pull.stderr.count("'deprecated'") == 1 and "please upgrade" in pull.stderr

    accounts = cli("accounts", "--config", str(config), "--user", "alice", "--json")
    assert accounts.returncode == ExitCode.OK, accounts.stderr
    assert {a["id"] for a in json.loads(accounts.stdout)} == {
        a["id"] for a in sandbox.library.accounts
    }

    deleted = cli("delete-user", "--config", str(config), "--user", "alice", "--yes")
    assert deleted.returncode == ExitCode.CONFIG
    assert "DELETE user does not exist in API v1.5" in deleted.stderr
    assert json.loads(cli("users", "--config", str(config), "--json").stdout) == ["alice"]


def test_v15_authorize_once_uses_the_guest_page_and_keeps_nothing(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = start_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(
        sandbox, tmp_path, "oneoff", api="v1.5", digime={"redirect_uri": redirect}
    )
    result = authorize(config, "bob", "--once", "--json")
    assert result.returncode == 0, result.stderr
    assert sandbox.guest_url + "?sessionExchangeToken=" in result.stdout
    assert "digime://consent-access?callbackUrl=" in result.stderr
    assert delivered(tmp_path, "bob") == sandbox.ground_truth()
    assert json.loads(cli("users", "--config", str(config), "--json").stdout) == []
