"""``privateshare demo`` on both profiles: the seed's four steps, the library byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from privateshare.cli.demo import run_demo


def test_demo_delivers_the_library_on_both_profiles(tmp_path: Path, api: str) -> None:
    summary, check = run_demo(tmp_path, files=6, seed=3, api=api)
    assert summary.ok, summary
    assert check and all(row["matches"] for row in check.values()), check


def test_demo_command_v15(tmp_path: Path) -> None:
    args = ["demo", "--api", "v1.5", "--dir", str(tmp_path), "--files", "4"]
    result = subprocess.run(
        [sys.executable, "-m", "privateshare", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    steps = result.stderr
    for text in ("API v1.5", "2. session established", "digime://consent-access", "4. reading"):
        assert text in steps
    assert "4/4 files match" in result.stdout.replace("\n", " ")
