"""core/cli/schema.py: the config's JSON Schema accepts the configs we load and refuses the rest."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from privateshare.cli.schema import (
    SECRET_SCHEMA,
    config_schema,
    plugin_table_schema,
    struct_schema,
)
from privateshare.hooks.families import FAMILIES
from privateshare.hooks.loading import discover
from privateshare.secrets import Secret

DOCS = Path(__file__).resolve().parents[2] / "docs"


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    depth: int


class Outer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    inner: Inner
    inners: list[Inner] = []
    password: Secret | None = None


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return config_schema()


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)  # a valid 2020-12 schema, or editors ignore it
    return Draft202012Validator(schema)


def test_struct_definitions_move_into_the_shared_defs_under_a_prefix() -> None:
    defs: dict[str, Any] = {"other.Kept": {}}
    ref = struct_schema(Outer, "p.", defs)
    assert ref == {"$ref": "#/$defs/p.Outer"}
    assert set(defs) == {"other.Kept", "p.Outer", "p.Inner"}
    outer = defs["p.Outer"]["properties"]
    assert outer["inner"] == {"$ref": "#/$defs/p.Inner"}, "refs inside point at the prefixed name"
    assert outer["inners"]["items"] == {"$ref": "#/$defs/p.Inner"}
    assert {"$ref": "#/$defs/p.Inner"} not in defs.values()
    # The same struct under two prefixes (two plugins' Options) does not collide.
    struct_schema(Outer, "q.", defs)
    assert {"p.Inner", "q.Inner"} <= set(defs) and defs["p.Inner"] == defs["q.Inner"]


def test_a_secret_is_a_reference_never_a_literal() -> None:
    defs: dict[str, Any] = {}
    struct_schema(Outer, "p.", defs)
    password = defs["p.Outer"]["properties"]["password"]
    assert password["anyOf"][0] == SECRET_SCHEMA
    secret = Draft202012Validator(SECRET_SCHEMA)
    assert secret.is_valid({"env": "VAR"}) and secret.is_valid({"file": "key.txt"})
    for bad in ("hunter2", {}, {"env": ""}, {"env": "A", "file": "b"}, {"value": "x"}):
        assert not secret.is_valid(bad), bad


class Odd:
    """A type msgspec has no schema for, and not a secret reference."""


class HasOdd(msgspec.Struct):
    odd: Odd


def test_a_type_with_no_schema_is_refused() -> None:
    with pytest.raises(TypeError, match="Odd"):
        struct_schema(HasOdd, "p.", {})


@pytest.mark.parametrize("family", sorted(FAMILIES), ids=sorted(FAMILIES))
def test_a_plugin_table_is_one_of_the_installed_plugins(family: str) -> None:
    defs: dict[str, Any] = {}
    table = plugin_table_schema(family, defs)
    names = [info.name for info in discover(family)[0]]
    assert names, f"no built-in {family} plugin"
    assert table == {
        "oneOf": [{"$ref": f"#/$defs/{family}.{name}.{_options(family, name)}"} for name in names]
    }
    for name in names:
        target = defs[f"{family}.{name}.{_options(family, name)}"]
        assert next(iter(target["properties"])) == "type", (
            "type comes first (editors list it first)"
        )
        assert target["properties"]["type"] == {"const": name}
        assert target["required"][0] == "type" and target["required"].count("type") == 1
        assert target["title"] == f"{FAMILIES[family].label} {name!r}"


def _options(family: str, name: str) -> str:
    (info,) = [i for i in discover(family)[0] if i.name == name]
    return info.options.__name__


def test_every_reference_resolves(schema: dict[str, Any]) -> None:
    refs = re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(schema))
    assert refs and set(refs) <= set(schema["$defs"])


def _documented_configs() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        blocks = re.findall(r"```toml\n(.*?)```", page.read_text(), flags=re.S)
        for index, block in enumerate(blocks):
            if re.search(r"^\[digime\]", block, flags=re.M) and re.search(
                r"^\[keys\]", block, flags=re.M
            ):
                found.append((f"{page.name}#{index}", block))
    return found


DOCUMENTED = _documented_configs()


def test_the_docs_have_whole_configs_to_check() -> None:
    assert len(DOCUMENTED) >= 2, [name for name, _ in DOCUMENTED]


@pytest.mark.parametrize(("where", "text"), DOCUMENTED, ids=[w for w, _ in DOCUMENTED])
def test_every_documented_config_is_valid(
    validator: Draft202012Validator, where: str, text: str
) -> None:
    errors = [error.message for error in validator.iter_errors(tomllib.loads(text))]
    assert errors == [], where


GOOD = {
    "digime": {"application_id": "app", "contract_id": "contract"},
    "keys": {"type": "file", "path": "contract.pem", "password": {"env": "KEY_PASSWORD"}},
    "sinks": {"local": {"type": "file", "root": "data"}, "lake": {"type": "s3", "bucket": "b"}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    table = config
    for key in parents:
        table = table.setdefault(key, {})
    if value is None:
        del table[last]
    else:
        table[last] = value
    return config


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("keys", None),  # a required table
        ("digime", None),
        ("sink", {"local": {"type": "file", "root": "data"}}),  # an unknown table
        ("keys.password", "hunter2"),  # a secret written in the config
        ("keys.type", "vault"),  # no such plugin installed
        ("keys.type", None),  # a plugin table without a type
        ("keys.paht", "contract.pem"),  # a plugin's unknown option
        ("sinks.local.type", "s3"),  # another plugin's options under this type
        ("sinks.lake.bucket", None),  # a plugin's required option
        ("transport.type", 7),
    ],
    ids=[
        "no-keys",
        "no-digime",
        "unknown-table",
        "literal-secret",
        "unknown-plugin",
        "no-type",
        "unknown-option",
        "options-of-another-type",
        "missing-required-option",
        "type-not-a-string",
    ],
)
def test_the_schema_refuses_a_bad_config(
    validator: Draft202012Validator, path: str, value: Any
) -> None:
    assert validator.is_valid(GOOD)
    assert not validator.is_valid(_with(path, value))
