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
from urllib.parse import urlsplit

import msgspec

from .errors import ConfigError
from .hooks.families import FAMILIES
from .secrets import Secret

DEFAULT_CONFIG = "privateshare.toml"


# --- value types with their accepted ranges ------------------------------------------
#
# Options use these (or their own ``msgspec.Meta`` constraints) so that a bad value is a
# config error where the table is decoded, found by ``privateshare config check``, never a
# traceback at run time. ``Meta(extra={"check": ...})`` adds a check msgspec cannot express.

#: The longest duration any option accepts (30 days): a finite, generous upper bound.
MAX_SECONDS = 30 * 86400

#: A duration in seconds: more than 0, at most 30 days (``nan`` and ``inf`` are refused).
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
#: A pause in seconds that may be 0 (back-off delays).
Delay = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
#: A number of workers or connections.
Workers = Annotated[int, msgspec.Meta(ge=1, le=1024)]
#: A number of attempts, the first included.
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]


def http_url_problem(value: str) -> str | None:
    """What keeps ``value`` from being an http(s) URL with a host and no fragment, if anything."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return "it contains whitespace or a control character"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"it does not parse: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no scheme"
    if not parts.hostname:
        return "it has no host"
    if parts.fragment or value.endswith("#"):
        return f"it has the fragment '#{parts.fragment}'"
    return None


def path_problem(value: str) -> str | None:
    """Why ``value`` is not a path (a key or blob pasted in its place), if it is not."""
    if "-----BEGIN" in value or "\n" in value or value.lstrip().startswith("{"):
        return "it looks like a file's content pasted in place of its path"
    if "\x00" in value:
        return "it contains a NUL character"
    if len(value.encode("utf-8", "surrogatepass")) > 4096:
        return "it is longer than any path (4096 bytes)"
    return None


#: A file or directory path (relative paths are resolved against the config's directory).
PathOption = Annotated[
    str,
    msgspec.Meta(min_length=1, extra={"check": path_problem, "expected": "a path"}),
]

#: An http:// or https:// URL with a host and no ``#fragment``.
HttpUrl = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={"format": "uri"},
        extra={
            "check": http_url_problem,
            "expected": "an http:// or https:// URL with a host and no #fragment",
        },
    ),
]


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
            f"the config file {path} does not exist; create it (see docs/configuration.md) "
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
    config, problems = inspect_config(raw, source, base_dir)
    if problems:
        raise ConfigError(problems, source)
    return config


def inspect_config(raw: dict[str, Any], source: str, base_dir: Path) -> tuple[Config, list[str]]:
    """Decode what can be decoded and list every problem found on the way.

    The config is only usable when there are no problems; it is returned anyway
    so that plugin tables can still be checked.
    """
    problems: list[str] = []
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
                    f"[{family}] is missing; add it, for example:\n"
                    f'      [{family}]\n      type = "file"\n      path = "contract.pem"'
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
            f"[sinks] must be a table of named sinks such as [sinks.local]; "
            f"found {describe_value(sink_tables)}"
        )
        sink_tables = {}
    for sink_name, table in sink_tables.items():
        spec = _plugin_spec("sinks", f"sinks.{sink_name}", table, problems)
        if spec:
            sinks[spec.name] = spec
    if not sink_tables and not plugins.modules:
        problems.append(
            "no sinks are configured; add at least one, for example:\n"
            '      [sinks.local]\n      type = "file"\n      root = "data"'
        )

    # A broken [digime] still yields a config, so plugin tables can be checked too.
    digime = digime or DigimeConfig(application_id="", contract_id="")
    return Config(source, base_dir, digime, pull, plugins, providers, sinks, scale), problems


def _decode_table(
    raw: dict[str, Any],
    key: str,
    struct: type[msgspec.Struct],
    problems: list[str],
    base_dir: Path,
    *,
    required: bool = False,
) -> Any:
    table = raw.get(key)
    if table is None:
        if required:
            fields = ", ".join(f.name for f in msgspec.structs.fields(struct) if f.required)
            problems.append(f"[{key}] is missing; add it with {fields}")
        return None
    if not isinstance(table, dict):
        problems.append(f"[{key}] must be a table; found {describe_value(table)}")
        return None
    try:
        return decode_options(table, struct, f"[{key}]", base_dir)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _plugin_spec(family: str, name: str, table: Any, problems: list[str]) -> PluginSpec | None:
    if not isinstance(table, dict):
        problems.append(f"[{name}] must be a table; found {describe_value(table)}")
        return None
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(
            f'[{name}] type: expected the plugin name as a string (for example type = "file"); '
            f"found {describe_value(kind) if 'type' in table else 'nothing'}; "
            "run `privateshare plugins` to see what is installed"
        )
        return None
    options = {k: v for k, v in table.items() if k != "type"}
    return PluginSpec(family, name, kind, options)


# --- decoding options with located errors --------------------------------------

_EXPECTED = re.compile(
    r"^Expected `(?P<expected>[^`]+)`, got `(?P<found>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?$"
)
_UNKNOWN = re.compile(
    r"^Object contains unknown field `(?P<key>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?$"
)
_MISSING = re.compile(
    r"^Object missing required field `(?P<key>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?$"
)
_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_CONSTRAINT = re.compile(
    r"^Expected `(?P<type>[^`]+)` (?P<constraint>(?:>=|>|<=|<|of length|matching regex|"
    r"that's a multiple of) .*?)(?: - at `\$(?P<path>[^`]*)`)?$",
    re.S,
)

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
) -> list[str]:
    """Check each key on its own, so one run reports every problem of a table."""
    try:
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    except TypeError:
        return []
    problems = [
        unknown_key_problem(key, list(fields), where=where) for key in table if key not in fields
    ]
    problems += [
        f"{where} {name}: required but missing; add {name} = ..."
        for name, f in fields.items()
        if f.required and name not in table
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
                    f"{where} {name}: expected {expected}, found {_found(value, name)} ({wrong}); "
                    + _fix(fields[name])
                )
    return problems


def _extra_checks(kind: Any) -> list[tuple[Callable[[Any], str | None], str]]:
    """The ``Meta(extra={"check": ...})`` checks anywhere in a field's type."""
    found = []
    for meta in _metas(kind):
        check = (meta.extra or {}).get("check")
        if check is not None:
            found.append((check, meta.extra.get("expected", "a valid value")))
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


def located_problem(message: str, table: Mapping[str, Any], struct: type[Any], where: str) -> str:
    """Rewrite a msgspec validation message as: where, key, expected, found, fix."""
    if m := _UNKNOWN.match(message):
        path = _dotted(m["path"])
        known = _field_names(struct) if not path else []
        return unknown_key_problem(m["key"], known, where=_join(where, path))
    if m := _MISSING.match(message):
        key = m["key"]
        location = _join(where, _dotted(m["path"]))
        return f"{location} {key}: required but missing; add {key} = ..."
    if m := _CONSTRAINT.match(message):
        path = _dotted(m["path"])
        found = _lookup(table, m["path"] or "")
        expected = _constraint_words(m["type"], m["constraint"])
        description = _description(struct, path)
        reason = f" ({description})" if description else ""
        return (
            f"{where} {path or '(table)'}: expected {expected}, "
            f"found {_found(found, path)}{reason}; {_fix(_field(struct, path))}"
        )
    if m := _EXPECTED.match(message):
        path = _dotted(m["path"])
        found = _lookup(table, m["path"] or "")
        shown = _show(found, path)
        expected = _type_words(m["expected"])
        return (
            f"{where} {path or '(table)'}: expected {expected}, "
            f"found {_type_words(m['found'])}{shown}; change the value to {expected}"
        )
    if m := _AT.match(message):
        path = _dotted(m["path"])
        text = m["message"]
        if text.startswith("Invalid enum value"):
            allowed = _literal_values(struct, path)
            found = _lookup(table, m["path"] or "")
            return (
                f"{where} {path}: expected one of {allowed}, found {found!r}; choose one of those"
            )
        return f"{where} {path}: {text}"
    if re.match(r"^[a-z_][a-z0-9_]*(?: and [a-z_][a-z0-9_]*)?: ", message):
        return f"{where} {message}"  # a Struct's __post_init__ naming its key
    return f"{where}: {message}"


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


def unknown_key_problem(key: str, known: list[str], *, where: str, table: bool = False) -> str:
    what = "table" if table else "key"
    text = f"{where}: unknown {what} {key!r}"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        text += f"; did you mean {close[0]!r}?"
    elif known:
        text += f"; valid {what}s are: {', '.join(known)}"
    return text


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
