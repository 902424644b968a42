"""What users read points at the documentation site, never at a path of this repository.

A wheel has no ``docs/`` folder: an error that says "see docs/configuration.md" sends its
reader nowhere. Every string the package and contrib distributions build at run time
(docstrings and comments aside: they are read with the source) must name the site
(``privateshare.DOCS_URL``) instead. Read from the source (``ast``), so every module counts,
imported or not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "core", ROOT / "plugins", ROOT / "contrib"]
REPO_PATH = re.compile(r"\bdocs/[\w.-]+\.md\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def repository_paths_in_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of each run-time string constant that names a docs/*.md path."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return sorted(
        (node.lineno, match.group())
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for match in REPO_PATH.finditer(node.value)
    )


def test_the_check_sees_messages_and_skips_docstrings() -> None:
    source = (
        '"""See docs/hooks.md."""\n'
        "def f():\n"
        '    """docs/sql.md"""\n'
        '    raise ValueError(f"bad {1}; see docs/configuration.md")\n'
        'X = "docs/cli.md"  # docs/a.md\n'
    )
    assert repository_paths_in_strings(source) == [
        (4, "docs/configuration.md"),
        (5, "docs/cli.md"),
    ]


def test_no_run_time_string_names_a_repository_path() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for directory in SOURCES
        for path in sorted(directory.rglob("*.py"))
        if "build" not in path.relative_to(directory).parts
        and "tests" not in path.relative_to(directory).parts
        for line, text in repository_paths_in_strings(path.read_text(encoding="utf-8"))
    ]
    assert not found, "link the site (privateshare.DOCS_URL) instead:\n" + "\n".join(found)
