"""The CLI: version, plugins, config check and schema — run as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import privateshare
from privateshare.cli import ExitCode, main

GOOD = """
[digime]
application_id = "app"
contract_id = "contract"

[keys]
type = "file"
path = "contract.pem"

[sinks.local]
type = "file"
root = "data"

[sinks.archive]
type = "file"
root = "archive"
"""

BROKEN = """
[digime]
application_id = "app"
contract_id = 7

[keys]
type = "env-key"
variabel = "KEY"

[tokens]
type = "file"
lock_timeout = "soon"

[sinks.lake]
type = "parquet"

[sinks.local]
type = "file"
root = "data"
fsync = "yes"
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0
    assert privateshare.__version__ in out


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "privateshare", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert privateshare.__version__ in proc.stdout


def test_plugins_lists_builtins_with_options() -> None:
    code, out, _ = run("plugins")
    assert code == 0
    for family in ("transports", "key stores", "token stores", "decryptors", "sinks"):
        assert family in out
    assert "requests  privateshare" in out
    assert "read_timeout" in out and "60.0" in out


def test_plugins_json() -> None:
    code, out, _ = run("plugins", "--json")
    assert code == 0
    report = json.loads(out)
    keys = {p["name"]: p for p in report["keys"]["plugins"]}
    assert {"file", "env-key"} <= set(keys)
    path = next(o for o in keys["file"]["options"] if o["name"] == "path")
    assert path == {"name": "path", "type": "str", "required": True, "default": None}
    password = next(o for o in keys["file"]["options"] if o["name"] == "password")
    assert password["type"] == "Secret | None"


def test_plugins_shows_third_party_and_broken(hello_dist: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(hello_dist)}
    proc = subprocess.run(
        [sys.executable, "-m", "privateshare", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "hello  privateshare-hello 1.2.3  a sink that says hello" in proc.stdout
    assert "greeting" in proc.stdout
    assert "broken (broken)  privateshare-hello: ModuleNotFoundError" in proc.stdout


def test_config_check_ok(tmp_path: Path, privateshare_test_key) -> None:
    path = tmp_path / "privateshare.toml"
    path.write_text(GOOD)
    privateshare_test_key.write(tmp_path / "contract.pem")
    code, out, err = run("config", "check", str(path))
    assert code == 0, err
    assert "OK" in out and "sinks.local (file)" in out and "sinks.archive (file)" in out


def test_config_check_names_each_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    code, _, err = run("config", "check", str(path))
    assert code == ExitCode.CONFIG
    assert f"{path}: 5 problems:" in err
    expected = [
        "[digime] contract_id: expected a string, found an integer (7)",
        "[keys]: unknown key 'variabel'; did you mean 'variable'?",
        "[tokens] lock_timeout: expected a number, found a string ('soon')",
        "[sinks.lake] type: unknown sink plugin 'parquet'; installed sink plugins: file, memory",
        "pip install privateshare-parquet",
        "[sinks.local] fsync: expected a boolean, found a string ('yes')",
    ]
    for text in expected:
        assert text in err


def test_config_check_missing_file(tmp_path: Path) -> None:
    code, _, err = run("config", "check", str(tmp_path / "absent.toml"))
    assert code == ExitCode.CONFIG
    assert "absent.toml does not exist" in err


def test_config_schema_includes_plugin_options() -> None:
    code, out, _ = run("config", "schema")
    assert code == 0
    schema = json.loads(out)
    defs = schema["$defs"]
    transport = defs["transport.requests.RequestsOptions"]
    assert transport["properties"]["type"] == {"const": "requests"}
    assert transport["properties"]["read_timeout"]["default"] == 60.0
    assert transport["additionalProperties"] is False
    sink_choices = schema["properties"]["sinks"]["additionalProperties"]["oneOf"]
    assert len(sink_choices) >= 2
    keys_file = next(v for k, v in defs.items() if k.startswith("keys.file."))
    assert "oneOf" in json.dumps(keys_file["properties"]["password"])
    assert schema["properties"]["digime"] == {"$ref": "#/$defs/core.DigimeConfig"}


@pytest.mark.parametrize(
    "exc, code",
    [
        (privateshare.ConfigError("x"), ExitCode.CONFIG),
        (privateshare.AuthorizationRequired("x"), ExitCode.AUTHORIZATION),
        (privateshare.ServerError("x"), ExitCode.SERVER),
        (privateshare.PluginError("x"), ExitCode.PLUGIN),
    ],
)
def test_exit_codes(exc: Exception, code: int) -> None:
    from privateshare.cli import exit_code_for

    assert exit_code_for(exc) == code
