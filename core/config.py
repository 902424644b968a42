"""The TOML configuration, decoded into msgspec Structs with errors that say where.

The core tables (``[digime]``, ``[pull]``, ``[plugins]``) are decoded here. Each
plugin table (``[keys]``, ``[tokens]``, ``[transport]``, ``[decryption]``,
``[sinks.<name>]``) only has its ``type`` read here; the rest is decoded into
that plugin's own ``Options`` Struct once the plugin is found
(:mod:`privateshare.plugins`), with the same error format.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from . import DOCS_URL
from .errors import ConfigError, ConfigProblem
from .hooks.families import FAMILIES
from .optiontypes import (  # noqa: F401 - re-exported: plugins import them from here
    MAX_SECONDS,
    Attempts,
    Delay,
    HttpUrl,
    PathOption,
    Seconds,
    Workers,
    http_url_problem,
    path_problem,
)
from .secrets import Secret

DEFAULT_CONFIG = "privateshare.toml"


def command_hint(command: str, source: str | Path | None = None) -> str:
    """``privateshare COMMAND``, with ``--config SOURCE`` unless it is the default file.

    Hints in messages must work when pasted: a config given by path is named.
    """
    import shlex

    text = f"privateshare {command}"
    if source is None or str(source).startswith("<") or Path(source) == Path(DEFAULT_CONFIG):
        return text
    return f"{text} --config {shlex.quote(str(source))}"


# --- value types with their accepted ranges ------------------------------------------
#
# The annotated option types live in privateshare.optiontypes (re-exported here for plugins).


class DigimeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[digime]``: who we are to digi.me and where its API is."""

    application_id: Annotated[str, msgspec.Meta(min_length=1)]
    contract_id: Annotated[str, msgspec.Meta(min_length=1)]
    base_url: HttpUrl = "https://api.digi.me/v1.7/"
    onboard_url: HttpUrl = "https://api.digi.me/apps/saas/"
    #: Where the consent page sends the user back; must be on the contract's allow-list.
    redirect_uri: HttpUrl = "http://127.0.0.1:8765/callback"
    #: Protocol profile, v1.7 or v1.5 (protocol.md, docs/api-profiles.md).
    api: Literal["v1.7", "v1.5"] = "v1.7"
    #: The SDK name sent in ``agent.sdk.name``.
    agent_name: Annotated[str, msgspec.Meta(min_length=1)] = "privateshare"
    #: The largest JSON answer read (file lists, tokens, JWKS), in bytes once decoded.
    max_answer_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 30


class PullConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[pull]``: how files are received."""

    #: Files downloaded at once per user.
    concurrency: Workers = 8
    #: Users pulled at once by ``pull --all-users``.
    user_concurrency: Workers = 4
    #: Seconds between file-list polls while the library is pending or running.
    poll_interval: Seconds = 3.0
    #: Give up when the library stays ``pending`` this long (seconds).
    max_pending: Seconds = 60.0
    #: Give up when the file list does not change for this long while running (seconds).
    max_unchanged: Seconds = 300.0
    #: Give up on the whole pull after this long (seconds).
    timeout: Seconds = 1800.0
    #: Attempts per file within one run before it is reported failed; also the attempts of
    #: every retried call of a pull (file-list polls, trigger, accounts, JWKS).
    file_attempts: Attempts = 5
    #: Seconds before the second attempt of a file or call; doubles for each further one.
    retry_backoff: Annotated[float, msgspec.Meta(ge=0, le=300)] = 1.0


class PluginsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[plugins]``: your own hook implementations and how broken plugins are treated."""

    #: Importable modules whose ``@hookimpl`` functions are registered.
    modules: list[str] = []
    #: Entry points of the ``privateshare`` group not to load.
    disable: list[str] = []
    #: Re-raise a broken plugin's error instead of reporting it (for plugin authors).
    strict: bool = False


@dataclass(frozen=True)
class PluginSpec:
    """One plugin table: which plugin, under what name, with which raw options."""

    family: str
    #: Config name, also the pluggy registration name: ``keys``, ``sinks.archive``.
    name: str
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Config:
    """A decoded configuration; plugin options are decoded when plugins load."""

    source: str
    base_dir: Path
    digime: DigimeConfig
    pull: PullConfig
    plugins: PluginsConfig
    #: Provider families by family key; sinks by their config name.
    providers: dict[str, PluginSpec] = field(default_factory=dict)
    sinks: dict[str, PluginSpec] = field(default_factory=dict)
    #: ``[scale]`` (:class:`privateshare.scale.settings.ScaleSettings`), if present.
    scale: Any = None

    def plugin_specs(self) -> list[PluginSpec]:
        return [*self.providers.values(), *self.sinks.values()]


#: Provider family key -> (default type or None when required), from the family table.
PROVIDER_DEFAULTS: dict[str, str | None] = {
    f.key: f.default for f in FAMILIES.values() if f.provider
}
CORE_TABLES = {"digime", "pull", "plugins", "sinks", "scale", *PROVIDER_DEFAULTS}


# --- reading -----------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error becomes a ConfigError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"the config file {path} does not exist; create it (see {DOCS_URL}configuration/) "
            "or pass --config PATH",
        ) from None
    except OSError as exc:
        raise ConfigError(f"the config file {path} cannot be read: {exc.strerror}") from None
    return parse_toml(data.decode("utf-8", errors="replace"), str(path))


def parse_toml(text: str, source: str = "<string>") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}; fix the syntax there", source) from None


def load_config(source: str | Path | Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Decode a TOML path or an already-parsed mapping; report every problem at once."""
    if isinstance(source, Mapping):
        raw, name = dict(source), "<dict>"
        base = base_dir or Path.cwd()
    else:
        raw, name = read_toml(source), str(source)
        base = base_dir or Path(source).resolve().parent
    return decode_config(raw, name, base)


def decode_config(raw: dict[str, Any], source: str, base_dir: Path) -> Config:
    config, problems = inspect_problems(raw, source, base_dir)
    if problems:
        raise ConfigError(problems, source)
    return config


def inspect_config(raw: dict[str, Any], source: str, base_dir: Path) -> tuple[Config, list[str]]:
    """Decode what can be decoded and list every problem found on the way.

    The config is only usable when there are no problems; it is returned anyway
    so that plugin tables can still be checked.
    """
    config, problems = inspect_problems(raw, source, base_dir)
    return config, [str(problem) for problem in problems]


def inspect_problems(
    raw: dict[str, Any], source: str, base_dir: Path
) -> tuple[Config, list[ConfigProblem]]:
    """:func:`inspect_config` with the problems as objects (where, key, expected, found, fix)."""
    problems: list[ConfigProblem] = []
    for key in raw:
        if key not in CORE_TABLES:
            problems.append(
                unknown_key_problem(key, sorted(CORE_TABLES), where="top level", table=True)
            )

    digime = _decode_table(raw, "digime", DigimeConfig, problems, base_dir, required=True)
    pull = _decode_table(raw, "pull", PullConfig, problems, base_dir) or PullConfig()
    plugins = _decode_table(raw, "plugins", PluginsConfig, problems, base_dir) or PluginsConfig()
    from .scale.settings import ScaleSettings  # the scale package imports this module

    scale = _decode_table(raw, "scale", ScaleSettings, problems, base_dir)

    providers: dict[str, PluginSpec] = {}
    for family, default in PROVIDER_DEFAULTS.items():
        table = raw.get(family)
        if table is None:
            if default is None:
                problems.append(
                    ConfigProblem(
                        f"[{family}]",
                        message="is missing",
                        fix="add it, for example:\n"
                        f'      [{family}]\n      type = "file"\n      path = "contract.pem"',
                        of_table=True,
                    )
                )
            else:
                providers[family] = PluginSpec(family, family, default, {})
            continue
        spec = _plugin_spec(family, family, table, problems)
        if spec:
            providers[family] = spec

    sinks: dict[str, PluginSpec] = {}
    sink_tables = raw.get("sinks", {})
    if not isinstance(sink_tables, dict):
        problems.append(
            ConfigProblem(
                "[sinks]",
                message="must be a table of named sinks such as [sinks.local]",
                fix=f"found {describe_value(sink_tables)}",
                of_table=True,
            )
        )
        sink_tables = {}
    for sink_name, table in sink_tables.items():
        spec = _plugin_spec("sinks", f"sinks.{sink_name}", table, problems)
        if spec:
            sinks[spec.name] = spec
    if not sink_tables and not plugins.modules:
        problems.append(
            ConfigProblem(
                message="no sinks are configured",
                fix="add at least one, for example:\n"
                '      [sinks.local]\n      type = "file"\n      root = "data"',
            )
        )

    # A broken [digime] still yields a config, so plugin tables can be checked too.
    digime = digime or DigimeConfig(application_id="", contract_id="")
    return Config(source, base_dir, digime, pull, plugins, providers, sinks, scale), problems


def _decode_table(
    raw: dict[str, Any],
    key: str,
    struct: type[msgspec.Struct],
    problems: list[ConfigProblem],
    base_dir: Path,
    *,
    required: bool = False,
) -> Any:
    table = raw.get(key)
    if table is None:
        if required:
            fields = ", ".join(f.name for f in msgspec.structs.fields(struct) if f.required)
            problems.append(
                ConfigProblem(
                    f"[{key}]", message="is missing", fix=f"add it with {fields}", of_table=True
                )
            )
        return None
    if not isinstance(table, dict):
        problems.append(_not_a_table(f"[{key}]", table))
        return None
    try:
        return decode_options(table, struct, f"[{key}]", base_dir)
    except ConfigError as exc:
        problems.extend(exc.details)
        return None


def _not_a_table(where: str, value: Any) -> ConfigProblem:
    return ConfigProblem(
        where, message="must be a table", fix=f"found {describe_value(value)}", of_table=True
    )


def _plugin_spec(
    family: str, name: str, table: Any, problems: list[ConfigProblem]
) -> PluginSpec | None:
    if not isinstance(table, dict):
        problems.append(_not_a_table(f"[{name}]", table))
        return None
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(
            ConfigProblem(
                f"[{name}]",
                "type",
                expected='the plugin name as a string (for example type = "file")',
                found=f"{describe_value(kind) if 'type' in table else 'nothing'}",
                fix="run `privateshare plugins` to see what is installed",
            )
        )
        return None
    options = {k: v for k, v in table.items() if k != "type"}
    return PluginSpec(family, name, kind, options)


# --- decoding options with located errors --------------------------------------

#: msgspec reports a validation failure as text only: "<what> - at `$<path>`". These read
#: its kinds of <what> into the fields of a ConfigProblem; nothing else parses messages.
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]+)`$")
_EXPECTED = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<found>[^`]+)`$")
_CONSTRAINT = re.compile(
    r"^Expected `(?P<type>[^`]+)` (?P<constraint>(?:>=|>|<=|<|of length|matching regex|"
    r"that's a multiple of) .*)$",
    re.S,
)
_POST_INIT = re.compile(r"^[a-z_][a-z0-9_]*(?: and [a-z_][a-z0-9_]*)?: ")

_SECRET_NAMES = ("password", "secret", "token", "pin", "key_material", "credential")


def decode_options(
    table: Mapping[str, Any], struct: type[Any], where: str, base_dir: Path | None = None
) -> Any:
    """Decode ``table`` into ``struct``; any failure is a ConfigError naming ``where``."""

    def dec_hook(kind: type, obj: Any) -> Any:
        if kind is Secret:
            return Secret.from_reference(obj, base_dir)
        if kind is Path and isinstance(obj, str):
            return Path(obj)
        raise NotImplementedError(kind)

    problems = _field_problems(table, struct, where, dec_hook)
    if problems:
        raise ConfigError(problems)
    try:
        return msgspec.convert(dict(table), struct, dec_hook=dec_hook, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(located_problem(str(exc), table, struct, where)) from None


def _field_problems(
    table: Mapping[str, Any], struct: type[Any], where: str, dec_hook: Any
) -> list[ConfigProblem]:
    """Check each key on its own, so one run reports every problem of a table."""
    try:
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    except TypeError:
        return []
    problems = [
        unknown_key_problem(key, list(fields), where=where) for key in table if key not in fields
    ]
    problems += [
        _missing(where, name) for name, f in fields.items() if f.required and name not in table
    ]
    for name, value in table.items():
        if name not in fields:
            continue
        try:
            msgspec.convert(
                {name: value}, _single_field(struct, fields[name]), dec_hook=dec_hook, strict=True
            )
        except msgspec.ValidationError as exc:
            problems.append(located_problem(str(exc), table, struct, where))
            continue
        for check, expected in _extra_checks(fields[name].type):
            wrong = check(value) if value is not None else None
            if wrong:
                problems.append(
                    ConfigProblem(
                        where,
                        name,
                        expected=expected,
                        found=f"{_found(value, name)} ({wrong})",
                        fix=_fix(fields[name]),
                    )
                )
    return problems


def _extra_checks(kind: Any) -> list[tuple[Callable[[Any], str | None], str]]:
    """The ``Meta(extra={"check": ...})`` checks anywhere in a field's type."""
    found = []
    for meta in _metas(kind):
        extra = meta.extra or {}
        check = extra.get("check")
        if check is not None:
            found.append((check, extra.get("expected", "a valid value")))
    return found


def _metas(kind: Any) -> list[msgspec.Meta]:
    """Every ``msgspec.Meta`` in a (possibly Optional or Annotated) type."""
    metas = []
    if typing.get_origin(kind) is Annotated:
        metas += [m for m in kind.__metadata__ if isinstance(m, msgspec.Meta)]
    for arg in typing.get_args(kind):
        if not isinstance(arg, msgspec.Meta):
            metas += _metas(arg)
    return metas


def _fix(field_info: Any) -> str:
    """How to fix a value that is out of range: change it, or go back to the default."""
    default = None if field_info is None else field_info.default
    if default is msgspec.NODEFAULT or default is None or isinstance(default, dict | list):
        return "change it"
    return f"change it, or remove the key for the default {_toml(default)}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _single_field(struct: type[Any], field_info: Any) -> type[msgspec.Struct]:
    """A one-field Struct with the same type, to validate that field alone."""
    return msgspec.defstruct(
        f"{struct.__name__}_{field_info.name}",
        [(field_info.name, field_info.type)],
        rename={field_info.name: field_info.encode_name},
    )


def located_problem(
    message: str, table: Mapping[str, Any], struct: type[Any], where: str
) -> ConfigProblem:
    """A msgspec validation message as a ConfigProblem: where, key, expected, found, fix."""
    at = _AT.match(message)
    assert at is not None  # the pattern matches any text
    what, raw_path = at["what"], at["path"] or ""
    path = _dotted(raw_path)
    if m := _UNKNOWN.match(what):
        known = _field_names(struct) if not path else []
        return unknown_key_problem(m["key"], known, where=_join(where, path))
    if m := _MISSING.match(what):
        return _missing(_join(where, path), m["key"])
    found = _lookup(table, raw_path)
    if m := _CONSTRAINT.match(what):
        description = _description(struct, path)
        return ConfigProblem(
            where,
            path or "(table)",
            expected=_constraint_words(m["type"], m["constraint"]),
            found=_found(found, path) + (f" ({description})" if description else ""),
            fix=_fix(_field(struct, path)),
        )
    if m := _EXPECTED.match(what):
        expected = _type_words(m["expected"])
        return ConfigProblem(
            where,
            path or "(table)",
            expected=expected,
            found=_type_words(m["found"]) + _show(found, path),
            fix=f"change the value to {expected}",
        )
    if raw_path and what.startswith("Invalid enum value"):
        return ConfigProblem(
            where,
            path,
            expected=f"one of {_literal_values(struct, path)}",
            found=repr(found),
            fix="choose one of those",
        )
    if raw_path:
        return ConfigProblem(where, path, message=what)
    if _POST_INIT.match(message):
        key, _, text = message.partition(": ")  # a Struct's __post_init__ naming its key
        return ConfigProblem(where, key, message=text)
    return ConfigProblem(where, message=message)


def _missing(where: str, key: str) -> ConfigProblem:
    return ConfigProblem(where, key, message="required but missing", fix=f"add {key} = ...")


def _constraint_words(kind: str, constraint: str) -> str:
    """msgspec's ``float`` + ``> 0.0`` as "a number > 0"; lengths and patterns in words."""
    noun = _type_words(kind)
    if m := re.match(r"of length (>=|<=) (\d+)$", constraint):
        op, n = m[1], int(m[2])
        unit = {"str": "character", "array": "item", "object": "key"}.get(kind, "item")
        if kind == "str" and op == ">=" and n == 1:
            return "a non-empty string"
        bound = "at least" if op == ">=" else "at most"
        return f"{noun} of {bound} {n} {unit}{'s' if n != 1 else ''}"
    if m := re.match(r"matching regex (.+)$", constraint, re.S):
        try:
            pattern = ast.literal_eval(m[1])  # msgspec shows the pattern's repr
        except (ValueError, SyntaxError):
            pattern = m[1]
        return f"{noun} matching {pattern}"
    if m := re.match(r"that's a multiple of (\S+)$", constraint):
        return f"{noun} that is a multiple of {_number(m[1])}"
    op, _, bound = constraint.partition(" ")
    return f"{noun} {op} {_number(bound)}"


def _number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else text


def _field(struct: type[Any], path: str) -> Any:
    if not path or "." in path or "[" in path:
        return None
    try:
        return next((f for f in msgspec.structs.fields(struct) if f.encode_name == path), None)
    except TypeError:
        return None


def _description(struct: type[Any], path: str) -> str | None:
    field_info = _field(struct, path)
    if field_info is None:
        return None
    return next((m.description for m in _metas(field_info.type) if m.description), None)


def _found(value: Any, path: str) -> str:
    """A found value as a message may show it: never a secret, a key or a huge string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and value:
        hidden = any(s in path.lower() for s in _SECRET_NAMES)
        if hidden or "-----" in value or "\n" in value or len(value) > 60:
            return f"a string of {len(value)} characters (not shown)"
        return repr(redact_url_text(value))
    if isinstance(value, dict | list):
        return f"{describe_value(value)} of {len(value)} entries"
    return repr(value)


def redact_url_text(text: str) -> str:
    """Text with any URL's ``user:password@`` password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


_URL_PASSWORD = re.compile(r"(//[^/@:]*):[^/@]*@")


def unknown_key_problem(
    key: str, known: list[str], *, where: str, table: bool = False
) -> ConfigProblem:
    what = "table" if table else "key"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        fix = f"did you mean {close[0]!r}?"
    else:
        fix = f"valid {what}s are: {', '.join(known)}" if known else ""
    return ConfigProblem(where, message=f"unknown {what} {key!r}", fix=fix)


def describe_value(value: Any) -> str:
    kinds = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }
    if value is None:
        return "nothing"
    return kinds.get(type(value), type(value).__name__)


def _literal_values(struct: type[Any], path: str) -> str:
    try:
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(struct)}
    except TypeError:
        return "the documented values"
    kind = fields.get(path.split(".")[0].split("[")[0])
    values = [a for a in typing.get_args(kind) if not isinstance(a, type)]
    return ", ".join(repr(v) for v in values) or "the documented values"


def _field_names(struct: type[Any]) -> list[str]:
    try:
        return [f.encode_name for f in msgspec.structs.fields(struct)]
    except TypeError:
        return []


def _dotted(path: str | None) -> str:
    if not path:
        return ""
    return path.lstrip(".").replace("].", "]").replace(".", ".")


def _join(where: str, path: str) -> str:
    return f"{where} {path}".rstrip() if path else where


def _lookup(table: Mapping[str, Any], path: str) -> Any:
    node: Any = table
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        key, index = part
        try:
            node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _show(value: Any, path: str) -> str:
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, str) and any(s in path.lower() for s in _SECRET_NAMES):
        return ""
    text = repr(value)
    return f" ({text})" if len(text) <= 60 else ""


_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "a table",
    "null": "nothing",
}


def _type_words(name: str) -> str:
    return " or ".join(_TYPE_WORDS.get(p.strip(), f"`{p.strip()}`") for p in name.split("|"))
