"""``privateshare plugins``: what is installed, per family, with options; and what is broken."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import click
import msgspec

from ..hooks.families import FAMILIES
from ..hooks.loading import discover
from .options import config_option


def _type_name(kind: Any) -> str:
    """A short, readable type: ``int``, ``str | None``, ``'gzip' | 'brotli'``."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if kind is type(None):
        return "None"
    return getattr(kind, "__name__", str(kind))


def _options(struct: type[msgspec.Struct]) -> list[dict[str, Any]]:
    rows = []
    for f in msgspec.structs.fields(struct):
        default: Any
        if f.required:
            default = None
        elif f.default is not msgspec.NODEFAULT:
            default = f.default
        else:
            default = f.default_factory()
        rows.append(
            {
                "name": f.encode_name,
                "type": _type_name(f.type),
                "required": f.required,
                "default": default,
            }
        )
    return rows


def _hooks_of(obj: Any) -> list[str]:
    from ..hooks.specs import PROJECT

    return sorted(
        name
        for name in dir(obj)
        if name.startswith("privateshare_") and hasattr(getattr(obj, name, None), f"{PROJECT}_impl")
    )


def _spec_range(target: Any) -> dict[str, Any]:
    """The hook spec range a plugin declares (``requires_spec``) and, when the running
    specs are outside it, why it will not load."""
    from ..errors import PluginError
    from ..hooks.loading import check_spec_version

    wanted = getattr(target, "requires_spec", None)
    if wanted is None:
        return {}
    try:
        check_spec_version(target, "this plugin")
    except PluginError as exc:
        return {"requires_spec": str(wanted), "spec_problem": str(exc)}
    return {"requires_spec": str(wanted)}


def _hook_plugin(name: str, source: str, load: Any, fix: str) -> dict[str, Any]:
    """One hook plugin (entry point or module): the hooks it implements, or why it is broken."""
    from ..checks import hook_problems

    try:
        plugin = load()
    except Exception as exc:
        return {"name": name, "source": source, "error": f"{type(exc).__name__}: {exc}", "fix": fix}
    spec = _spec_range(plugin)
    problems = hook_problems(plugin)
    if "spec_problem" in spec:
        problems = [*problems, spec.pop("spec_problem")]
    return {
        "name": name,
        "source": source,
        "hooks": _hooks_of(plugin),
        "problems": problems,
        **spec,
    }


def hook_plugins(config_path: Path | None) -> dict[str, list[dict[str, Any]]]:
    """Hook plugins of the entry-point group ``privateshare`` and of ``[plugins] modules``."""
    import importlib
    from importlib import metadata

    from .root import main

    commands = {p.name: p for p in main.load_plugin_commands()}
    entries = []
    for ep in sorted(metadata.entry_points(group="privateshare"), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        row = _hook_plugin(
            ep.name,
            f"{dist} (entry point)",
            ep.load,
            f"fix or uninstall {dist}, or add {ep.name!r} to [plugins] disable",
        )
        added = commands.get(ep.name)
        row["commands"] = list(added.commands) if added else []
        if added and added.error and "error" not in row:
            row["problems"] = [*row["problems"], f"adding its commands failed: {added.error}"]
        entries.append(row)
    modules = []
    if config_path is not None and Path(config_path).is_file():
        from ..config import read_toml

        try:  # only [plugins] modules matters here; config check reports the rest
            names = read_toml(config_path).get("plugins", {}).get("modules", [])
        except Exception:
            names = []
        names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        for module_name in names:
            modules.append(
                _hook_plugin(
                    module_name,
                    f"{config_path} [plugins] modules",
                    lambda m=module_name: importlib.import_module(m),
                    "check the name and that it is on PYTHONPATH",
                )
            )
    return {"entry_points": entries, "modules": modules}


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@config_option
def plugins_command(as_json: bool, config_path: Path) -> None:
    """List installed plugins per family with their options, hook plugins, broken ones."""
    from .. import __version__
    from ..checks import missing_extra
    from ..hooks.loading import EXTRAS, install_hint
    from ..hooks.specs import SPEC_VERSION

    report: dict[str, Any] = {"spec_version": SPEC_VERSION, "privateshare": __version__}
    for family in FAMILIES.values():
        found, broken = discover(family.key)
        plugins = []
        for p in found:
            row: dict[str, Any] = {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "description": p.description,
                "options": _options(p.options),
                **_spec_range(p.target),
            }
            absent = missing_extra(family.key, p.name) if p.distribution == "privateshare" else None
            if absent:
                row["needs"] = f"pip install 'privateshare[{absent[0]}]'"
            plugins.append(row)
        rows = []
        for b in broken:
            row = {"name": b.name, "distribution": b.distribution, "error": b.error}
            if (family.key, b.name) in EXTRAS and "ModuleNotFoundError" in b.error:
                row["needs"] = install_hint(family.key, b.name)
                plugins.append({**row, "options": [], "description": "", "version": ""})
                continue
            row["fix"] = (
                "reinstall privateshare and report it"
                if b.distribution == "privateshare"
                else f"reinstall or upgrade {b.distribution}, or report it to its authors"
            )
            rows.append(row)
        report[family.key] = {"namespace": family.namespace, "plugins": plugins, "broken": rows}
    hooks = hook_plugins(config_path)
    report["hooks"] = {"namespace": "privateshare", **hooks}
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=True)
    console.print(
        f"privateshare {__version__}, hook spec {SPEC_VERSION} (a plugin states the spec "
        "versions it needs with requires_spec)"
    )
    for key, family in report.items():
        if key not in FAMILIES:
            continue
        label = FAMILIES[key].label
        console.print(f"\n[bold]{label}s[/bold] ({family['namespace']})")
        for p in family["plugins"]:
            if p.get("needs"):
                console.print(
                    f"  [yellow]{p['name']}[/yellow]  {p['distribution']}  needs its extra: "
                    f"{escape(p['needs'])}"
                )
                continue
            console.print(
                f"  [green]{p['name']}[/green]  {p['distribution']} {p['version']}"
                f"  {p['description']}{_needs_spec(p)}"
            )
            if p.get("spec_problem"):
                console.print(f"    [red]problem:[/red] {escape(p['spec_problem'])}")
            if p["options"]:
                table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
                for o in p["options"]:
                    default = "required" if o["required"] else f"= {o['default']!r}"
                    table.add_row("     ", o["name"], o["type"], default)
                console.print(table)
        for b in family["broken"]:
            console.print(
                f"  [red]{b['name']} (broken)[/red]  {b['distribution']}: {escape(b['error'])}; "
                f"{b['fix']}"
            )
    console.print("\n[bold]hook plugins[/bold] (privateshare, \\[plugins] modules)")
    for row in [*hooks["entry_points"], *hooks["modules"]]:
        if "error" in row:
            console.print(
                f"  [red]{row['name']} (broken)[/red]  {escape(row['source'])}: "
                f"{escape(row['error'])}; {row['fix']}"
            )
            continue
        commands = f"; commands: {', '.join(row['commands'])}" if row.get("commands") else ""
        console.print(
            f"  [green]{row['name']}[/green]  {escape(row['source'])}  hooks: "
            f"{', '.join(row['hooks']) or 'none'}{commands}{_needs_spec(row)}"
        )
        for problem in row["problems"]:
            console.print(f"    [red]problem:[/red] {escape(problem)}")


def _needs_spec(row: dict[str, Any]) -> str:
    return f"  (needs hook spec {row['requires_spec']})" if row.get("requires_spec") else ""


__all__ = ["hook_plugins", "plugins_command"]
