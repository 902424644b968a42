"""``privateshare plugins``: hook plugins and their hooks, broken ones with the fix, extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from privateshare.cli import main


def plugins(*args: str, site: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "privateshare", "plugins", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": site},
        check=True,
    )


def test_hook_plugins_and_modules_with_their_hooks(hello_dist: Path, tmp_path: Path) -> None:
    (tmp_path / "ps_listing_hooks.py").write_text(
        textwrap.dedent(
            """
            from privateshare import hookimpl

            @hookimpl
            def privateshare_run_finished(summary):
                pass

            @hookimpl
            def privateshare_file_writen(user_id, file, size, sinks):
                pass
            """
        )
    )
    site = f"{hello_dist}{os.pathsep}{tmp_path}"
    config = tmp_path / "privateshare.toml"
    config.write_text('[plugins]\nmodules = ["ps_listing_hooks", "ps_listing_absent"]\n')
    report = json.loads(plugins("--json", "-c", str(config), site=site).stdout)["hooks"]
    entries = {row["name"]: row for row in report["entry_points"]}
    assert entries["hello-observer"]["hooks"] == ["privateshare_file_written"]
    assert entries["keys-kms"]["commands"] == ["keys wrap"]
    assert entries["broken-observer"]["error"].startswith("ModuleNotFoundError")
    assert "add 'broken-observer' to [plugins] disable" in entries["broken-observer"]["fix"]
    modules = {row["name"]: row for row in report["modules"]}
    assert modules["ps_listing_hooks"]["hooks"] == [
        "privateshare_file_writen",
        "privateshare_run_finished",
    ]
    assert "did you mean 'privateshare_file_written'?" in modules["ps_listing_hooks"]["problems"][0]
    assert modules["ps_listing_absent"]["fix"] == "check the name and that it is on PYTHONPATH"
    text = plugins("-c", str(config), site=site).stdout
    assert (
        "hello-observer  privateshare-hello (entry point)  hooks: privateshare_file_written" in text
    )
    assert "broken-observer (broken)  privateshare-hello (entry point): ModuleNotFoundError" in text
    assert "[plugins] modules" in text and "problem: privateshare_file_writen" in text


def test_a_backend_without_its_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one stand-in: this environment has every extra, so SQLAlchemy is made to look absent."""
    from importlib import metadata

    real = metadata.distribution

    def distribution(name: str):
        if name.lower() == "sqlalchemy":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "sql  privateshare  needs its extra: pip install 'privateshare[sql]'" in result.stdout
    assert "(broken)" not in result.stdout.split("hook plugins")[0]
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    sql = next(p for p in data["sinks"]["plugins"] if p["name"] == "sql")
    assert sql["needs"] == "pip install 'privateshare[sql]'"


def test_the_hook_spec_version_and_each_plugins_range_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privateshare.hooks import SPEC_VERSION

    for name, wanted in [("ps_spec_fits", ">=1.0,<2"), ("ps_spec_too_new", ">=99")]:
        (tmp_path / f"{name}.py").write_text(
            textwrap.dedent(
                f"""
                from privateshare import hookimpl

                requires_spec = {wanted!r}

                @hookimpl
                def privateshare_run_finished(summary):
                    pass
                """
            )
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "privateshare.toml"
    config.write_text('[plugins]\nmodules = ["ps_spec_fits", "ps_spec_too_new"]\n')
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json", "-c", str(config)]).stdout)
    assert data["spec_version"] == SPEC_VERSION
    modules = {row["name"]: row for row in data["hooks"]["modules"]}
    assert modules["ps_spec_fits"]["requires_spec"] == ">=1.0,<2"
    assert modules["ps_spec_fits"]["problems"] == []
    assert modules["ps_spec_too_new"]["requires_spec"] == ">=99"
    (problem,) = modules["ps_spec_too_new"]["problems"]
    assert f"needs hook spec version >=99 but this privateshare has hook spec {SPEC_VERSION}" in (
        problem
    )
    text = CliRunner().invoke(main, ["plugins", "-c", str(config)]).stdout
    assert text.startswith("privateshare ") and f"hook spec {SPEC_VERSION}" in text.splitlines()[0]
    assert "ps_spec_too_new" in text and "(needs hook spec >=99)" in text
    assert "problem: this plugin needs hook spec version >=99" in text
