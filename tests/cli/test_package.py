"""The CLI is one package: plugins add commands through a hook, loading stays lazy, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.hooks import specs as hookspecs

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, site: Path | None = None, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = None
    if site is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(site)}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "privateshare"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def command_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution installed (a ``.dist-info`` with entry points) into its own directory.

    ``cmds_good`` adds ``hello`` and ``keys rotate-demo`` through
    ``privateshare_register_commands``; ``cmds_raises`` fails inside the hook and
    ``cmds_missing`` does not import: neither may take the others down.
    """
    site = tmp_path_factory.mktemp("command-site")
    (site / "cmds_good.py").write_text(
        textwrap.dedent(
            '''
            import click
            from privateshare import hookimpl

            @click.command("hello")
            @click.option("--name", default="world")
            def hello(name):
                """Say hello from a plugin."""
                click.echo(f"hello {name}")

            @click.command("rotate-demo")
            def rotate():
                """A keys sub-command from a plugin."""
                click.echo("rotated")

            @hookimpl
            def privateshare_register_commands(cli):
                cli.add_command(hello)
                cli.commands["keys"].add_command(rotate)
            '''
        )
    )
    (site / "cmds_raises.py").write_text(
        textwrap.dedent(
            """
            from privateshare import hookimpl

            @hookimpl
            def privateshare_register_commands(cli):
                raise RuntimeError("this plugin is broken on purpose")
            """
        )
    )
    dist = site / "privateshare_cmds-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: privateshare-cmds\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[privateshare]\n"
        "cmds-good = cmds_good\n"
        "cmds-raises = cmds_raises\n"
        "cmds-missing = cmds_missing_module\n"
    )
    return site


def test_a_plugin_adds_a_command_through_privateshare_register_commands(
    command_plugins: Path,
) -> None:
    assert hasattr(hookspecs, "privateshare_register_commands")
    result = run("hello", "--name", "alice", site=command_plugins)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello alice\n"
    help_text = run("--help", site=command_plugins)
    assert help_text.returncode == 0, help_text.stderr
    assert "hello" in help_text.stdout and "Say hello from a plugin." in help_text.stdout
    keys = run("keys", "--help", site=command_plugins)
    for name in ("wrap", "import-pkcs11", "rotate-demo"):
        assert name in keys.stdout, keys.stdout
    assert run("keys", "rotate-demo", site=command_plugins).stdout == "rotated\n"


def test_broken_command_plugins_are_recorded_not_raised(command_plugins: Path) -> None:
    code = (
        "from privateshare.cli import main\n"
        "for p in main.load_plugin_commands():\n"
        "    print(p.name, '|', ','.join(p.commands), '|', p.error)\n"
    )
    result = run(site=command_plugins, code=code)
    assert result.returncode == 0, result.stderr
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in result.stdout.splitlines()}
    assert rows["cmds-good"] == ["hello,keys rotate-demo", "None"]
    assert "RuntimeError: this plugin is broken on purpose" in rows["cmds-raises"][1]
    assert "ModuleNotFoundError" in rows["cmds-missing"][1]
    assert rows["keys-kms"][0] == "keys wrap"
    assert rows["keys-pkcs11"][0] == "keys import-pkcs11"


def test_key_commands_live_with_their_plugins() -> None:
    from privateshare.plugins import keys_kms, keys_pkcs11

    keys = main.get_command(click.Context(main), "keys")
    assert isinstance(keys, click.Group)
    assert keys.commands["wrap"] is keys_kms.wrap_command
    assert keys.commands["import-pkcs11"] is keys_pkcs11.import_pkcs11_command


def test_help_imports_neither_boto3_nor_pkcs11() -> None:
    code = (
        "import sys\n"
        "from privateshare.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "for name in ('boto3', 'botocore', 'pkcs11'):\n"
        "    print(name, name in sys.modules)\n"
    )
    result = run(code=code)
    assert result.returncode == 0, result.stderr
    assert "keys" in result.stdout
    assert "boto3 False" in result.stdout
    assert "botocore False" in result.stdout
    assert "pkcs11 False" in result.stdout


def _module_imports(path: Path, package: str) -> set[str]:
    """Absolute names of the privateshare modules ``path`` imports at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("privateshare")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.startswith("privateshare"):
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}
    return found


def _core_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "core").rglob("*.py"):
        parts = list(path.relative_to(ROOT / "core").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(["privateshare", *parts])] = path
    return modules


def test_the_cli_package_has_no_import_cycles() -> None:
    modules = _core_modules()
    cli = {name: path for name, path in modules.items() if name.startswith("privateshare.cli")}
    graph = {}
    for name, path in cli.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _module_imports(path, package) if m in cli and m != name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_core_imports_no_built_in_plugin() -> None:
    offenders = []
    for name, path in _core_modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for module in _module_imports(path, package):
            if module.startswith("privateshare.plugins"):
                offenders.append(f"{name} imports {module}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "privateshare.plugins"
            ):
                offenders.append(f"{name} imports {node.module} inside a function")
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("privateshare.commands", "pull_command", "privateshare.cli.run"),
        ("privateshare.commands", "config_option", "privateshare.cli.options"),
        ("privateshare.demo", "run_demo", "privateshare.cli.demo"),
        ("privateshare.report", "Reporter", "privateshare.cli.report"),
        ("privateshare.schema", "config_schema", "privateshare.cli.schema"),
        ("privateshare.scaffold", "plugin_group", "privateshare.cli.scaffold"),
        ("privateshare.keycommands", "wrap_command", "privateshare.plugins.keys_kms"),
    ],
)
def test_old_module_paths_are_deprecated_aliases(old: str, name: str, new: str) -> None:
    import importlib

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated; import {name} from"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    with warnings.catch_warnings(), pytest.raises(AttributeError):
        warnings.simplefilter("ignore")
        _ = module.no_such_name


def test_the_old_keys_group_still_runs_the_moved_commands() -> None:
    from privateshare import keycommands

    with pytest.warns(DeprecationWarning):
        group = keycommands.keys_group
    result = CliRunner().invoke(group, ["--help"])
    assert "wrap" in result.output and "import-pkcs11" in result.output
