"""``config check`` / ``privateshare.check``: what breaks a run is found before the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import privateshare
from privateshare.checks import extra_missing, hook_problems
from privateshare.cli import ExitCode, main

CONFIG = """
[digime]
application_id = "app"
contract_id = "contract"

[keys]
type = "file"
path = "contract.pem"

[sinks.local]
type = "file"
root = "data"
"""


@pytest.fixture
def good(tmp_path: Path, privateshare_test_key) -> Path:
    privateshare_test_key.write(tmp_path / "contract.pem")
    path = tmp_path / "privateshare.toml"
    path.write_text(CONFIG)
    return path


def check_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "privateshare", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_good_config_passes_with_c_and_with_the_environment(good: Path) -> None:
    assert privateshare.check(good) == []
    by_option = check_cli("-c", str(good))
    assert by_option.returncode == 0, by_option.stderr
    assert "OK" in by_option.stdout
    by_env = check_cli(env={**os.environ, "PRIVATESHARE_CONFIG": str(good)})
    assert by_env.returncode == 0, by_env.stderr
    assert str(good) in by_env.stdout


def test_a_missing_key_file_is_reported(good: Path) -> None:
    (good.parent / "contract.pem").unlink()
    problems = privateshare.check(good)
    assert [p.where for p in problems] == ["[keys]"]
    assert str(good.parent / "contract.pem") in problems[0].message
    result = check_cli("--config", str(good))
    assert result.returncode == ExitCode.CONFIG
    assert "1 problem" in result.stderr and "contract.pem" in result.stderr


def test_a_missing_secret_is_reported(good: Path) -> None:
    good.write_text(
        CONFIG.replace(
            'path = "contract.pem"', 'path = "contract.pem"\npassword = { env = "PS_CHECK_UNSET" }'
        )
    )
    problems = privateshare.check(good)
    assert len(problems) == 1 and problems[0].kind == "secret"
    assert problems[0].where == "[keys] password"
    assert "PS_CHECK_UNSET is not set" in str(problems[0])


def test_a_file_sink_whose_root_cannot_be_created(good: Path) -> None:
    (good.parent / "blocker").write_text("a file, not a directory")
    good.write_text(CONFIG.replace('root = "data"', 'root = "blocker/data"'))
    problems = privateshare.check(good)
    assert len(problems) == 1 and problems[0].where == "[sinks.local]"
    assert "is not a directory" in problems[0].message


def test_misspelt_hooks_and_arguments_are_reported(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ps_check_misspelt_hooks.py").write_text(
        textwrap.dedent(
            """
            from privateshare import hookimpl

            @hookimpl
            def privateshare_file_writen(user_id, file, size, sinks):
                pass

            @hookimpl
            def privateshare_file_failed(user_id, fil_name, error):
                pass

            def privateshare_run_finished(summary):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ps_check_misspelt_hooks", raising=False)
    good.write_text(
        CONFIG + '\n[plugins]\nmodules = ["ps_check_misspelt_hooks", "not_a_module_here"]\n'
    )
    problems = [str(p) for p in privateshare.check(good)]
    text = "\n".join(problems)
    assert (
        "privateshare_file_writen is not a privateshare hook; did you mean "
        "'privateshare_file_written'?" in text
    )
    assert (
        "privateshare_file_failed: argument 'fil_name' is not in the spec "
        "(user_id, file_name, error); did you mean 'file_name'?" in text
    )
    assert "privateshare_run_finished is not marked @hookimpl" in text
    assert "'not_a_module_here' cannot be imported" in text
    result = CliRunner().invoke(main, ["config", "check", "-c", str(good), "--json"])
    assert result.exit_code == ExitCode.CONFIG
    report = json.loads(result.stdout)
    assert {p["kind"] for p in report["problems"]} == {"hooks"}
    sys.modules.pop("ps_check_misspelt_hooks", None)


def test_hook_problems_of_the_built_in_plugins_are_none() -> None:
    from privateshare.plugins import keys_kms, keys_pkcs11, sink_file

    for obj in (keys_kms, keys_pkcs11, sink_file.FileSink, keys_kms.KmsKeyStore):
        assert hook_problems(obj) == []


def test_a_missing_extra_names_the_pip_command(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one stand-in: this environment has every extra, so boto3 is made to look absent."""
    from importlib import metadata

    real = metadata.distribution

    def distribution(name: str):
        if name.lower() == "boto3":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    assert extra_missing("s3") == ["boto3"]
    good.write_text(CONFIG + '\n[sinks.bucket]\ntype = "s3"\nbucket = "b"\n')
    problems = privateshare.check(good)
    assert [(p.where, p.kind) for p in problems] == [("[sinks.bucket]", "extra")]
    assert problems[0].fix == "pip install 'privateshare[s3]'"


def test_connect_reaches_the_database(good: Path) -> None:
    sql = (
        '\n[sinks.db]\ntype = "sql"\nurl = "postgresql+psycopg://postgres@127.0.0.1:{port}/test"\n'
    )
    good.write_text(CONFIG + sql.format(port=5432))
    assert privateshare.check(good) == []
    assert privateshare.check(good, connect=True) == []
    good.write_text(CONFIG + sql.format(port=1))
    assert privateshare.check(good) == []  # without --connect nothing is reached
    problems = privateshare.check(good, connect=True)
    assert len(problems) == 1 and problems[0].where == "[sinks.db]"
    result = check_cli("-c", str(good), "--connect")
    assert result.returncode == ExitCode.CONFIG
    assert "[sinks.db]" in result.stderr
