"""The smaller points: demo --json and its counts, a busy sandbox port, typos, docs links."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import privateshare
from privateshare.cli import ExitCode, main


def test_demo_json_counts_match_its_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "privateshare",
            "demo",
            "--dir",
            str(tmp_path),
            "--files",
            "6",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["matched"] == len(report["files"]) == 6
    assert report["summary"]["ok"] is True
    assert all(row["matches"] for row in report["files"].values())


def test_demo_summary_counts_the_rows_of_its_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "privateshare", "demo", "--dir", str(tmp_path), "--files", "6"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 6  # one row per file (the header row is drawn with ┃)
    assert "6 files delivered" in result.stdout
    assert "6/6 files match" in result.stdout


def test_sandbox_on_a_busy_port_names_it_and_suggests_port_0(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # --dir: the default, ./privateshare-sandbox, would be made in the checkout.
        command = ["sandbox", "--port", str(port), "--dir", str(tmp_path / "sandbox")]
        result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.output
    assert "--port 0" in result.output


def test_a_typo_in_a_plugin_type_gets_did_you_mean(tmp_path: Path) -> None:
    config = tmp_path / "privateshare.toml"
    config.write_text(
        '[digime]\napplication_id = "a"\ncontract_id = "c"\n'
        '[keys]\ntype = "file"\npath = "k.pem"\n[sinks.local]\ntype = "files"\nroot = "d"\n'
    )
    problems = [str(p) for p in privateshare.check(config)]
    assert any(
        "[sinks.local] type: unknown sink plugin 'files'; did you mean 'file'?" in p
        for p in problems
    ), problems
    assert not any("pip install privateshare-files" in p for p in problems)


def test_errors_point_at_the_docs_site(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["users", "-c", str(tmp_path / "absent.toml")])
    assert result.exit_code == ExitCode.CONFIG
    assert f"{privateshare.DOCS_URL}configuration/" in result.stderr
    assert "docs/configuration.md" not in result.stderr
