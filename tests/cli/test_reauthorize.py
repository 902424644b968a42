"""``privateshare reauthorize``: a partial account is fixed from the CLI, over real HTTP."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import requests

from privateshare.cli import ExitCode
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import write_sandbox_config

from ..helpers import cli, consent_command, free_port


def share(url: str) -> None:
    requests.get(url, timeout=30)  # the auto-consenting page redirects to our callback


def test_reauthorize_fixes_a_partial_account(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = privateshare_sandbox(partial=True, redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    c = str(config)
    assert consent_command("authorize", "-c", c, "--user", "amy", answer=share).returncode == 0
    first = cli("pull", "-c", c, "--user", "amy")
    assert first.returncode == ExitCode.PARTIAL
    summary = json.loads(cli("pull", "-c", c, "--user", "amy", "--json").stdout)[0]
    (account,) = summary["reauthorize_urls"]
    assert f"or run: privateshare reauthorize --config {c} --user amy --account {account}" in (
        first.stdout
    )

    fixed = consent_command(
        "reauthorize", "-c", c, "--user", "amy", "--account", account, answer=share
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "/reauthorize?" in fixed.stdout
    assert f"Account {account} of user amy reconnected" in fixed.stderr
    after = json.loads(cli("pull", "-c", c, "--user", "amy", "--json").stdout)[0]
    assert after["ok"] and after["final_state"] == "completed", after
    assert after["reauthorize_urls"] == {}


def test_reauthorize_renews_consent_and_cancel_and_timeout(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = privateshare_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    c = str(config)
    assert cli("reauthorize", "-c", c, "--user", "bob").returncode == ExitCode.AUTHORIZATION
    assert consent_command("authorize", "-c", c, "--user", "bob", answer=share).returncode == 0
    renewed = consent_command("reauthorize", "-c", c, "--user", "bob", answer=share)
    assert renewed.returncode == 0, renewed.stderr
    assert "/user-reauth?" in renewed.stdout and "Consent renewed for user bob" in renewed.stderr
    assert cli("pull", "-c", c, "--user", "bob").returncode == 0

    timed_out = cli(
        "reauthorize", "-c", c, "--user", "bob", "--no-browser", "--timeout", "1", timeout=120
    )
    assert timed_out.returncode == ExitCode.TIMEOUT, timed_out.stderr


def click_on_the_form(decision: str) -> Callable[[str], None]:
    """The consent page as a person uses it: load the form, press Share or Cancel."""

    def answer(url: str) -> None:
        page = requests.get(url, timeout=30)
        assert page.status_code == 200 and 'id="cancel"' in page.text, page.text
        action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text)[1])
        fields = {
            html.unescape(name): html.unescape(value)
            for name, value in re.findall(
                r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text
            )
        }
        requests.post(urljoin(url, action), data={**fields, "decision": decision}, timeout=30)

    return answer


def test_share_and_cancel_on_the_consent_form(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = privateshare_sandbox(partial=True, redirect_uris=(redirect,), auto_consent=False)
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    c = str(config)
    cancelled = consent_command(
        "authorize", "-c", c, "--user", "cy", answer=click_on_the_form("cancel")
    )
    assert cancelled.returncode == ExitCode.AUTHORIZATION, cancelled.stderr
    assert "USER_CANCEL" in cancelled.stderr
    shared = consent_command(
        "authorize", "-c", c, "--user", "cy", answer=click_on_the_form("share")
    )
    assert shared.returncode == 0, shared.stderr
    summary = json.loads(cli("pull", "-c", c, "--user", "cy", "--json").stdout)[0]
    (account,) = summary["reauthorize_urls"]
    no = consent_command(
        "reauthorize",
        "-c",
        c,
        "--user",
        "cy",
        "--account",
        account,
        answer=click_on_the_form("cancel"),
    )
    assert no.returncode == ExitCode.AUTHORIZATION, no.stderr
    yes = consent_command(
        "reauthorize",
        "-c",
        c,
        "--user",
        "cy",
        "--account",
        account,
        answer=click_on_the_form("share"),
    )
    assert yes.returncode == 0, yes.stderr
    assert json.loads(cli("pull", "-c", c, "--user", "cy", "--json").stdout)[0]["ok"]


def test_authorize_on_a_chosen_service_then_reauthorize_adds_another(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    sandbox = privateshare_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    c = str(config)
    services = json.loads(cli("services", "-c", c, "--json").stdout)
    first, second = services[0]["id"], services[1]["id"]

    seen: list[str] = []

    def share_and_keep(url: str) -> None:
        seen.append(url)
        share(url)

    chosen = consent_command(
        "authorize", "-c", c, "--user", "sam", "--service", str(first), answer=share_and_keep
    )
    assert chosen.returncode == 0, chosen.stderr
    assert f"service={first}" in seen[0], seen[0]

    added = consent_command(
        "reauthorize", "-c", c, "--user", "sam", "--service", str(second), answer=share_and_keep
    )
    assert added.returncode == 0, added.stderr
    assert "/onboard?" in added.stdout and f"service={second}" in added.stdout
    assert f"Service {second} added for user sam" in added.stderr


def test_reauthorize_takes_an_account_or_a_service_not_both(tmp_path: Path) -> None:
    result = cli(
        "reauthorize",
        "-c",
        str(tmp_path / "x.toml"),
        "--user",
        "u",
        "--account",
        "a",
        "--service",
        "1",
    )
    assert result.returncode == ExitCode.CONFIG, result.stderr  # usage errors exit 2
    assert "--account" in result.stderr and "--service" in result.stderr


def test_the_python_api_reconnects_a_partial_account(
    privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    from privateshare.errors import AuthorizationRequired
    from privateshare.flow import Flow
    from privateshare.framework import load
    from privateshare.testing.sandboxed import consent, consent_as_browser

    sandbox = privateshare_sandbox(partial=True)
    config = write_sandbox_config(sandbox, tmp_path)
    with load(config) as fw:
        flow = Flow(fw)
        consent(flow, "amy")
        first = flow.pull("amy")
        (account,) = first.reauthorize_urls
        assert first.final_state == "partial"

        pending = flow.start_reauthorize("amy", account_id=account)
        token, _session = flow.finish_consent(pending, consent_as_browser(pending.url))
        assert token is None  # reconnecting keeps the saved token
        after = flow.pull("amy")
        assert after.final_state == "completed" and after.reauthorize_urls == {}

        try:
            flow.start_reauthorize("nobody")
        except AuthorizationRequired as exc:
            assert "authorize" in str(exc) and "nobody" in str(exc)
        else:
            raise AssertionError("a user with no token cannot be reauthorized")
