"""The dlt sink distribution: its own suite, and the demo into a DuckDB warehouse.

In a file of its own: the dlt suite is the longest single test of the project (dlt runs a
pipeline per test), so xdist's ``loadfile`` gives it a worker while the rest go on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .test_contrib_packages import CONTRIB, run_demo_with_sinks, run_own_tests


@pytest.mark.timeout(900)  # ~95 s of CPU alone; several times that on a loaded machine
def test_the_dlt_distribution_passes_its_own_tests(sinks_site: Path) -> None:
    pytest.importorskip("dlt", reason="privateshare-dlt needs dlt[duckdb,postgres] installed")
    run_own_tests(sinks_site, "privateshare-dlt")


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
