"""The import graph of the package: no cycles, and the core does not import built-in plugins.

Read from the source (``ast``), so the test sees every module, imported or not. An
import counts when it runs on import of the module or of a function's first call;
imports under ``if TYPE_CHECKING:`` do not (they never run). A package's
``__init__`` running before its submodules is not counted as an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Source directory -> import name (pyproject.toml's package-dir).
PACKAGES = {ROOT / "core": "privateshare", ROOT / "plugins": "privateshare.plugins"}
PLUGINS = "privateshare.plugins"
#: Core modules allowed to import built-in plugins. Keep it empty: a plugin's own code
#: (commands included) lives with the plugin. The cli branch (issue 12) moves `keys wrap`
#: and `keys import-pkcs11` to their plugins and removes this last entry.
CORE_IMPORTS_OF_PLUGINS_ALLOWED: set[str] = set()
#: Cycles known and accepted: none (issue 12 removed the last ones).
KNOWN_CYCLES: list[set[str]] = []


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory, package in PACKAGES.items():
        for path in directory.rglob("*.py"):
            if "build" in path.relative_to(directory).parts:
                continue
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The privateshare modules ``name`` imports (at import time or in its functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        if target in known:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known
            found.update(submodules)  # `from . import x` of a module x
            if len(submodules) < len(node.names):
                add(source)  # names defined by the module (or package) itself
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return result


def test_the_graph_is_read_from_every_module() -> None:
    edges = graph()
    assert "privateshare.hooks.loading" in edges and "privateshare.plugins.sink_file" in edges
    assert "privateshare.hooks.families" in edges["privateshare.hooks.loading"]
    assert "privateshare.hooks" in edges["privateshare.plugins.sink_file"]  # `from ... import`
    assert "privateshare.sinks" not in edges["privateshare.hooks.specs"]  # TYPE_CHECKING only


def test_there_are_no_import_cycles() -> None:
    found = [c for c in cycles(graph()) if set(c) not in KNOWN_CYCLES]
    assert not found, "import cycles inside privateshare:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_does_not_import_built_in_plugins() -> None:
    offenders = {
        f"{name} imports {target}"
        for name, targets in graph().items()
        if not name.startswith(PLUGINS) and name not in CORE_IMPORTS_OF_PLUGINS_ALLOWED
        for target in targets
        if target.startswith(PLUGINS)
    }
    assert not offenders, (
        "the core must not depend on a built-in plugin (move the code into the core, or "
        f"the feature into the plugin): {sorted(offenders)}"
    )
