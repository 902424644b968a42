"""The dlt distribution's own suite, one part (see ``dlt_parts``):
tables, merges, delivery semantics and options.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .dlt_parts import run_part


@pytest.mark.timeout(600)  # minutes of CPU on a loaded machine
def test_the_dlt_distribution_passes_its_own_tests(sinks_site: Path) -> None:
    run_part(sinks_site, "tests/test_dlt_sink.py", negated=True)
