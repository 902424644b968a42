"""``privateshare.check``: what a run needs, checked without contacting digi.me.

The config decodes; each plugin's extra is installed; files and secret references
resolve; hook modules import and their hooks match the specs (names and arguments);
the contract key loads; each plugin that has a ``preflight(connect)`` method passes it
(``connect=True`` also reaches databases, buckets and HSMs). ``privateshare config
check`` prints the result.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from . import DOCS_URL, _moved
from .config import Config, PluginSpec, decode_options, inspect_problems, read_toml
from .errors import ConfigError, ConfigProblem, PrivateShareError


def check(
    config: Config | str | Path | Mapping[str, Any],
    *,
    connect: bool = False,
    base_dir: str | Path | None = None,
) -> list[ConfigProblem]:
    """Every problem found in ``config`` (a path, a parsed dict or a :class:`Config`).

    Nothing is sent to digi.me. With ``connect``, plugins' preflights reach their
    backends (databases, buckets, HSMs, KMS).
    """
    if not isinstance(config, Config):
        try:
            if isinstance(config, Mapping):
                raw, source = dict(config), "<dict>"
                base = Path(base_dir) if base_dir else Path.cwd()
            else:
                raw, source = read_toml(config), str(config)
                base = Path(base_dir) if base_dir else Path(config).resolve().parent
        except ConfigError as exc:
            return exc.details
        config, problems = inspect_problems(raw, source, base)
    else:
        problems = []
    classes: dict[str, Any] = {}
    for spec in config.plugin_specs():
        problems += _plugin_problems(config, spec, classes)
    problems += _hook_module_problems(config)
    from .scale.checks import check as scale_check

    problems += [ConfigProblem.from_text(text) for text in scale_check(config)]
    if problems:
        return problems
    return _preflight_problems(config, connect)


# --- plugins, extras, secrets ------------------------------------------------


def missing_extra(family: str, kind: str) -> tuple[str, list[str]] | None:
    """``(extra, missing distributions)`` when a built-in plugin's extra is not installed."""
    from .hooks.loading import EXTRAS

    extra = EXTRAS.get((family, kind))
    if extra is None:
        return None
    missing = extra_missing(extra)
    return (extra, missing) if missing else None


def extra_missing(extra: str) -> list[str]:
    """The distributions the ``privateshare[extra]`` extra needs that are not installed."""
    from importlib import metadata

    try:
        requirements = metadata.requires("privateshare") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return []
    missing = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if f'extra == "{extra}"' not in marker.replace("'", '"'):
            continue
        dist = re.split(r"[\s\[<>=!~;]", name.strip(), maxsplit=1)[0]
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def _plugin_problems(
    config: Config, spec: PluginSpec, classes: dict[str, Any]
) -> list[ConfigProblem]:
    from .errors import PluginError
    from .hooks.loading import load_plugin_class
    from .hooks.plugin import NoOptions

    where = f"[{spec.name}]"
    absent = missing_extra(spec.family, spec.type)
    if absent:
        extra, dists = absent
        return [
            ConfigProblem(
                where,
                message=f"type = {spec.type!r} needs the {extra!r} extra ({', '.join(dists)} "
                "not installed)",
                fix=f"pip install 'privateshare[{extra}]'",
                kind="extra",
            )
        ]
    try:
        cls = load_plugin_class(spec, config.source)
        options = decode_options(
            spec.options, getattr(cls, "Options", NoOptions), where, config.base_dir
        )
    except ConfigError as exc:
        return exc.details
    except PluginError as exc:
        text = str(exc).removeprefix(f"{config.source}: ")
        return [ConfigProblem.from_text(text, kind="extra")]
    classes[spec.name] = cls
    problems = [ConfigProblem(where, message=m, kind="hooks") for m in hook_problems(cls)]
    for field, secret in _secrets(options):
        try:
            secret.reveal()
        except ConfigError as exc:
            problems.append(ConfigProblem(f"{where} {field}", message=str(exc), kind="secret"))
    return problems


def _secrets(options: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    from .secrets import Secret

    if isinstance(options, Secret):
        yield prefix, options
    elif isinstance(options, msgspec.Struct):
        for name in options.__struct_fields__:
            yield from _secrets(getattr(options, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(options, dict):
        for key, value in options.items():
            yield from _secrets(value, f"{prefix}.{key}")
    elif isinstance(options, list | tuple):
        for i, value in enumerate(options):
            yield from _secrets(value, f"{prefix}[{i}]")


# --- hooks -------------------------------------------------------------------


def hook_problems(obj: Any) -> list[str]:
    """Hook implementations of a module or class that do not match the specs.

    A function named ``privateshare_*`` that is no hook (a misspelling), a hook not
    marked ``@hookimpl``, or an argument the spec does not have.
    """
    from .hooks import specs as hookspecs

    specs = {
        name: [p for p in inspect.signature(fn).parameters]
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("privateshare_")
    }
    problems = []
    for name, member in inspect.getmembers(obj):
        if not name.startswith("privateshare_") or not callable(member):
            continue
        marked = hasattr(member, f"{hookspecs.PROJECT}_impl")
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see {DOCS_URL}hooks/ for the names"
            problems.append(f"{name} is not a privateshare hook; {hint}")
            continue
        try:
            params = [p for p in inspect.signature(member).parameters if p not in ("self", "cls")]
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        unknown = [p for p in params if p not in specs[name]]
        for param in unknown:
            close = difflib.get_close_matches(param, specs[name], n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{name}: argument {param!r} is not in the spec "
                f"({', '.join(specs[name]) or 'no arguments'}); {hint}".rstrip("; ")
            )
        if not marked and not unknown:
            problems.append(f"{name} is not marked @hookimpl, so it is never called; add it")
    return problems


def _hook_module_problems(config: Config) -> list[ConfigProblem]:
    from importlib import metadata

    problems = []
    for module_name in config.plugins.modules:
        where = "[plugins] modules"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            problems.append(
                ConfigProblem(
                    where,
                    message=f"{module_name!r} cannot be imported ({type(exc).__name__}: {exc})",
                    fix="check the name and that it is on PYTHONPATH",
                    kind="hooks",
                )
            )
            continue
        problems += [
            ConfigProblem(where, message=f"{module_name}: {m}", kind="hooks")
            for m in hook_problems(module)
        ]
    disabled = set(config.plugins.disable)
    for entry_point in metadata.entry_points(group="privateshare"):
        if entry_point.name in disabled:
            continue
        where = f"hook plugin {entry_point.name!r}"
        try:
            plugin = entry_point.load()
        except Exception as exc:
            problems.append(
                ConfigProblem(
                    where,
                    message=f"cannot be imported ({type(exc).__name__}: {exc})",
                    fix=f"fix or uninstall it, or add {entry_point.name!r} to [plugins] disable",
                    kind="hooks",
                )
            )
            continue
        problems += [ConfigProblem(where, message=m, kind="hooks") for m in hook_problems(plugin)]
    return problems


# --- preflight -----------------------------------------------------------------


def _preflight_problems(config: Config, connect: bool) -> list[ConfigProblem]:
    from .framework import PrivateShare

    try:
        fw = PrivateShare(config, strict=True)
    except PrivateShareError as exc:
        text = str(exc).removeprefix(f"{config.source}: ")
        return [ConfigProblem.from_text(text, kind="preflight")]
    problems = []
    with fw:
        for name, plugin in fw.plugins.items():
            preflight = getattr(plugin, "preflight", None)
            try:
                if callable(preflight):
                    preflight(connect)
                elif name == "keys":
                    fw.key_handle()  # local key stores: the key must load now
            except PrivateShareError as exc:
                text = str(exc)
                where = f"[{name}]"
                problems.append(
                    ConfigProblem.from_text(text, "preflight")
                    if text.startswith("[")
                    else ConfigProblem(where, message=text, kind="preflight")
                )
            except Exception as exc:
                problems.append(
                    ConfigProblem(
                        f"[{name}]", message=f"{type(exc).__name__}: {exc}", kind="preflight"
                    )
                )
    return problems


#: ``Problem`` is :class:`privateshare.errors.ConfigProblem` (deprecated name).
__getattr__ = _moved.attributes(__name__)

__all__ = ["check", "extra_missing", "hook_problems", "missing_extra"]
