"""``privateshare plugins``: what is installed, per family, with options; and what is broken."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import click
import msgspec

from ..hooks.families import FAMILIES
from ..hooks.loading import discover


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


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins per family, with their options; and broken ones."""
    report: dict[str, Any] = {}
    for family in FAMILIES.values():
        found, broken = discover(family.key)
        report[family.key] = {
            "namespace": family.namespace,
            "plugins": [
                {
                    "name": p.name,
                    "distribution": p.distribution,
                    "version": p.version,
                    "description": p.description,
                    "options": _options(p.options),
                }
                for p in found
            ],
            "broken": [
                {"name": b.name, "distribution": b.distribution, "error": b.error} for b in broken
            ],
        }
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    for key, family in report.items():
        label = FAMILIES[key].label
        console.print(f"\n[bold]{label}s[/bold] ({family['namespace']})")
        for p in family["plugins"]:
            console.print(
                f"  [green]{p['name']}[/green]  {p['distribution']} {p['version']}"
                f"  {p['description']}"
            )
            if p["options"]:
                table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False)
                for o in p["options"]:
                    default = "required" if o["required"] else f"= {o['default']!r}"
                    table.add_row("     ", o["name"], o["type"], default)
                console.print(table)
        for b in family["broken"]:
            console.print(f"  [red]{b['name']} (broken)[/red]  {b['distribution']}: {b['error']}")


__all__ = ["plugins_command"]
