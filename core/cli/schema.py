"""JSON Schema of the whole config, including every installed plugin's options."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ..config import DigimeConfig, PluginsConfig, PullConfig
from ..hooks.families import FAMILIES
from ..hooks.loading import discover
from ..scale.settings import ScaleSettings
from ..secrets import Secret

SECRET_SCHEMA: dict[str, Any] = {
    "title": "Secret reference",
    "description": "Where a secret lives; never the secret itself.",
    "oneOf": [
        {
            "type": "object",
            "properties": {"env": {"type": "string", "minLength": 1}},
            "required": ["env"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"file": {"type": "string", "minLength": 1}},
            "required": ["file"],
            "additionalProperties": False,
        },
    ],
}


def _schema_hook(kind: type) -> dict[str, Any]:
    if kind is Secret:
        return SECRET_SCHEMA
    raise NotImplementedError(kind)


def struct_schema(struct: type[Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """The schema of ``struct``, its definitions moved into ``defs`` under ``prefix``."""
    schema: dict[str, Any] = msgspec.json.schema(struct, schema_hook=_schema_hook)
    text = json.dumps(schema).replace('"#/$defs/', f'"#/$defs/{prefix}')
    schema = json.loads(text)
    for name, definition in schema.pop("$defs", {}).items():
        defs[f"{prefix}{name}"] = definition
    return schema


def plugin_table_schema(family: str, defs: dict[str, Any]) -> dict[str, Any]:
    choices = []
    plugins, _broken = discover(family)
    for info in plugins:
        prefix = f"{family}.{info.name}."
        ref = struct_schema(info.options, prefix, defs)
        target = defs[ref["$ref"].removeprefix("#/$defs/")]
        target.setdefault("properties", {})
        target["properties"] = {"type": {"const": info.name}, **target["properties"]}
        target["required"] = ["type", *target.get("required", [])]
        target["title"] = f"{FAMILIES[family].label} {info.name!r}"
        choices.append(ref)
    return {"oneOf": choices} if choices else {"type": "object"}


def config_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    properties: dict[str, Any] = {
        "digime": struct_schema(DigimeConfig, "core.", defs),
        "pull": struct_schema(PullConfig, "core.", defs),
        "plugins": struct_schema(PluginsConfig, "core.", defs),
        "scale": struct_schema(ScaleSettings, "core.", defs),
    }
    for family in ("keys", "tokens", "transport", "decryption"):
        properties[family] = plugin_table_schema(family, defs)
    properties["sinks"] = {
        "type": "object",
        "description": "Named sinks: [sinks.<name>] with a type.",
        "additionalProperties": plugin_table_schema("sinks", defs),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "privateshare configuration",
        "type": "object",
        "properties": properties,
        "required": ["digime", "keys"],
        "additionalProperties": False,
        "$defs": defs,
    }
