"""The dlt sink distribution: its own suite (one part; the others are in
``test_contrib_dlt_*.py``, see ``dlt_parts``), and the demo into a DuckDB warehouse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .dlt_parts import CUTS, run_part, suite_files
from .test_contrib_packages import CONTRIB, run_demo_with_sinks


def test_the_parts_cover_every_test_file() -> None:
    """Each file of the dlt suite is cut by an expression and its negation: all of it runs."""
    assert suite_files() == sorted(CUTS)


@pytest.mark.timeout(600)  # minutes of CPU on a loaded machine
def test_the_dlt_distribution_passes_its_own_flow_tests(sinks_site: Path) -> None:
    run_part(sinks_site, "tests/test_flow.py", negated=True)


def test_the_demo_command_with_a_dlt_sink_and_the_readme_query(
    sinks_site: Path, tmp_path: Path
) -> None:
    """Literally: add [sinks.warehouse] type = "dlt" to the demo, run it, then run the SQL
    query of the plugin's README on the DuckDB file it made."""
    duckdb = pytest.importorskip("duckdb", reason="privateshare-dlt needs dlt[duckdb]")
    demo = run_demo_with_sinks(sinks_site, tmp_path, '[sinks.warehouse]\ntype = "dlt"\n')

    # What the file sink delivered is the truth: objects per table, and the spending.
    folder = demo / "data" / "demo-user"
    objects: dict[str, int] = {}
    spent: dict[str, list[float]] = {}
    for meta_file in folder.glob("*.metadata.json"):
        meta = json.loads(meta_file.read_text())["metadata"]
        if "mimetype" in meta:
            continue
        items = json.loads((folder / json.loads(meta_file.read_text())["name"]).read_bytes())
        table = f"{meta['serviceName']}_{meta['objectType']}".lower()
        objects[table] = objects.get(table, 0) + len(items)
        for item in items if meta["objectType"] == "transaction" else []:
            if item["baseType"] == "DEBIT":
                spent.setdefault(item["category"], []).append(-item["amount"]["amount"])
    readme = (CONTRIB / "privateshare-dlt" / "README.md").read_text()
    (query,) = re.findall(r"```sql\n(.*?)```", readme, re.DOTALL)
    with duckdb.connect(str(demo / "warehouse.duckdb"), read_only=True) as con:
        for table, count in objects.items():
            (got,) = con.execute(
                f"SELECT count(*), count(DISTINCT _privateshare_user_id) FROM privateshare.{table}"
            ).fetchall()
            assert got == (count, 1), table
        rows = con.execute(query).fetchall()
    assert len(objects) == 8 and spent
    expected = sorted(
        ((c, len(v), round(sum(v), 2)) for c, v in spent.items()), key=lambda r: -r[2]
    )
    assert [(c, n) for c, n, _ in rows] == [(c, n) for c, n, _ in expected]
    assert [s for _, _, s in rows] == pytest.approx([s for _, _, s in expected])
