"""``services``, ``contract`` and ``accounts`` (list, delete, revoke-url) against the sandbox."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, sandbox_config, write_sandbox_config


@pytest.fixture
def setup(privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path) -> tuple[Sandbox, Path]:
    """A sandbox, its config on disk, and alice's consent saved."""
    sandbox = privateshare_sandbox()
    config = write_sandbox_config(sandbox, tmp_path)
    with load(config) as fw:
        consent(Flow(fw), "alice")
    return sandbox, config


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_services_filter_by_country_and_category_names_or_ids(setup: tuple[Sandbox, Path]) -> None:
    _sandbox, config = setup
    everything = json.loads(run("services", "-c", str(config), "--json").output)
    assert len(everything) > 10 and all(s["id"] and s["name"] for s in everything)

    # --json prints the API's own field names (omitted when empty).
    countries = {c["code"].casefold(): c for s in everything for c in s.get("country", [])}
    code, country = next(iter(sorted(countries.items())))
    by_code = json.loads(run("services", "-c", str(config), "--country", code, "--json").output)
    by_id = json.loads(
        run("services", "-c", str(config), "--country", str(country["id"]), "--json").output
    )
    assert by_code == by_id
    # A source listed for no country is available everywhere, so it matches too.
    assert by_code and all(
        not s.get("country") or country["id"] in {c["id"] for c in s["country"]} for s in by_code
    )
    assert len(by_code) < len(everything)

    finance = json.loads(
        run("services", "-c", str(config), "--category", "finance", "--json").output
    )
    assert finance and all("Finance" in {c["name"] for c in s.get("category", [])} for s in finance)

    text = run("services", "-c", str(config), "--search", finance[0]["name"]).output
    assert f"{finance[0]['id']}  {finance[0]['name']}" in text


def test_services_unknown_country_names_the_choices(setup: tuple[Sandbox, Path]) -> None:
    _sandbox, config = setup
    result = CliRunner().invoke(main, ["services", "-c", str(config), "--country", "Narnia"])
    assert result.exit_code == 2
    assert "no country is called 'Narnia'" in result.output
    assert "United Kingdom" in result.output


def test_contract_shows_its_terms(setup: tuple[Sandbox, Path]) -> None:
    sandbox, config = setup
    details = json.loads(run("contract", "-c", str(config), "--json").output)
    raw = sandbox_config(sandbox, config.parent)
    assert details["id"] == raw["digime"]["contract_id"]
    assert details["terms"]["shareType"] == "ongoing"
    text = run("contract", "-c", str(config)).output
    assert f"contract {details['id']}" in text and "type: ongoing" in text
    assert "expires: " in text


def test_accounts_list_revoke_url_and_delete(setup: tuple[Sandbox, Path]) -> None:
    sandbox, config = setup
    listed = json.loads(run("accounts", "-c", str(config), "--user", "alice", "--json").output)
    assert {a["id"] for a in listed} == {a["id"] for a in sandbox.library.accounts}
    victim = listed[0]["id"]

    url = run("accounts", "revoke-url", "-c", str(config), "--user", "alice", "--account", victim)
    location = url.output.strip()
    assert location.startswith("http://127.0.0.1:")
    assert requests.get(location, allow_redirects=False, timeout=10).status_code < 500

    deleted = run(
        "accounts", "delete", "-c", str(config), "--user", "alice", "--account", victim, "--yes"
    )
    assert f"account {victim} of user alice deleted" in deleted.output
    after = json.loads(run("accounts", "-c", str(config), "--user", "alice", "--json").output)
    assert victim not in {a["id"] for a in after}
    assert len(after) == len(listed) - 1


def test_accounts_delete_of_an_unknown_account_is_a_clear_error(
    setup: tuple[Sandbox, Path],
) -> None:
    _sandbox, config = setup
    result = CliRunner().invoke(
        main,
        ["accounts", "delete", "-c", str(config), "--user", "alice", "--account", "nope", "--yes"],
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "nope" in result.output or "account" in result.output


def test_accounts_without_user_or_subcommand_is_a_usage_error(
    setup: tuple[Sandbox, Path],
) -> None:
    _sandbox, config = setup
    result = CliRunner().invoke(main, ["accounts", "-c", str(config)])
    assert result.exit_code == 2
    assert "--user" in result.output
