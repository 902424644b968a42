"""The dlt distribution's own suite, cut into parts that our test files run.

The suite is the longest item of ours (dlt runs a pipeline per test, and its full-flow
tests run whole pulls), so one test running it all would be longer than the rest of the
suite on its worker. Each part is run by a test file of its own (xdist's ``loadfile``
sends files, not tests, to workers), so the parts run side by side.

Nothing is left out, by construction: each of the suite's files is cut in two by one
``-k`` expression and its negation, and ``test_the_parts_cover_every_test_file`` checks
that every test file of the suite is in the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_contrib_packages import CONTRIB, run_own_tests

DLT = CONTRIB / "privateshare-dlt"

#: test file of the dlt suite -> the ``-k`` expression that cuts it in two.
CUTS = {
    "tests/test_flow.py": "test_sigkill_mid_run",
    "tests/test_dlt_sink.py": "TestDltSinkConformance",
}


def part(file: str, negated: bool) -> list[str]:
    """pytest arguments of one part: one half of ``file``'s tests."""
    expression = CUTS[file]
    return [file, "-k", f"not {expression}" if negated else expression]


def run_part(sinks_site: Path, file: str, negated: bool) -> None:
    pytest.importorskip("dlt", reason="privateshare-dlt needs dlt[duckdb,postgres] installed")
    run_own_tests(sinks_site, "privateshare-dlt", *part(file, negated))


def suite_files() -> list[str]:
    return sorted(str(p.relative_to(DLT)) for p in (DLT / "tests").glob("test_*.py"))
