"""The complete example in docs/testing.md runs and passes in a fresh pytest process,
which also proves the fixtures load through the ``pytest11`` entry point alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def example_module() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    examples = [b for b in blocks if b.startswith("# test_sqlite_sink.py")]
    assert len(examples) == 1, "docs/testing.md must hold one '# test_sqlite_sink.py' example"
    return examples[0]


def test_the_documented_example_passes(tmp_path: Path) -> None:
    (tmp_path / "test_sqlite_sink.py").write_text(example_module())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sqlite_sink.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 40 and "failed" not in summary and "skipped" not in summary, summary
