"""`privateshare plugin new`: the generated distribution installs, lists, and passes its tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from privateshare.cli.scaffold import PluginNames, plugin_group, render


def ruff(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff")
    command = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True)


def test_generated_sink_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        plugin_group, ["new", "warehouse", "--family", "sink", "--dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    project = tmp_path / "out" / "privateshare-warehouse"
    assert f"created {project}" in result.output
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "README.md",
        "privateshare_warehouse.py",
        "pyproject.toml",
        "tests/test_privateshare_warehouse.py",
    ]
    for args in (("check", "."), ("format", "--check", ".")):  # clean under its own settings
        checked = ruff(*args, cwd=project)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    installed = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(site), str(project)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}

    listed = subprocess.run(
        [sys.executable, "-m", "privateshare", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sinks = {p["name"]: p for p in json.loads(listed.stdout)["sinks"]["plugins"]}
    assert sinks["warehouse"]["distribution"] == "privateshare-warehouse"
    assert [o["name"] for o in sinks["warehouse"]["options"]] == ["root", "fsync"]

    tests = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    tail = "\n".join(tests.stdout.splitlines()[-15:])
    assert tests.returncode == 0, tail + tests.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail and "skipped" not in tail


def test_names_are_spelled_consistently() -> None:
    names = PluginNames.parse("privateshare-Azure-Blob", "sink")
    assert (names.name, names.distribution, names.module, names.class_name) == (
        "azure-blob",
        "privateshare-azure-blob",
        "privateshare_azure_blob",
        "AzureBlobSink",
    )
    pyproject = render(names)["pyproject.toml"]
    assert '[project.entry-points."privateshare.sinks"]' in pyproject
    assert 'azure-blob = "privateshare_azure_blob:AzureBlobSink"' in pyproject


@pytest.mark.parametrize("name", ["9lives", "my_sink", "a--b", "", "Ünï"])
def test_a_bad_name_is_explained(tmp_path: Path, name: str) -> None:
    result = CliRunner().invoke(plugin_group, ["new", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "lower-case letters, digits and single hyphens" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_project_is_not_overwritten(tmp_path: Path) -> None:
    project = tmp_path / "privateshare-kept"
    project.mkdir()
    (project / "mine.py").write_text("# my work\n")
    result = CliRunner().invoke(plugin_group, ["new", "kept", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "--force" in result.output
    assert sorted(p.name for p in project.iterdir()) == ["mine.py"]


def test_an_unknown_family_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(plugin_group, ["new", "x", "--family", "teleport"])
    assert result.exit_code == 2 and "sink" in result.output


def test_attached_to_the_privateshare_command() -> None:
    from privateshare.cli import main

    result = CliRunner().invoke(main, ["plugin", "new", "--help"])
    assert result.exit_code == 0 and "--family" in result.output
