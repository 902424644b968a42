"""Config decoding: every error names the file, table, key, expectation and fix."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from privateshare.config import decode_options, inspect_config, load_config
from privateshare.errors import ConfigError
from privateshare.secrets import Secret

BASE = {
    "digime": {"application_id": "app", "contract_id": "contract"},
    "keys": {"type": "file", "path": "key.pem"},
    "sinks": {"local": {"type": "file", "root": "data"}},
}


def problems_of(raw: dict, tmp_path: Path) -> list[str]:
    _config, problems = inspect_config(raw, "test.toml", tmp_path)
    return problems


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(BASE, tmp_path)
    assert config.digime.base_url == "https://api.digi.me/v1.7/"
    assert config.digime.api == "v1.7"
    assert config.providers["transport"].type == "requests"
    assert config.providers["tokens"].type == "file"
    assert config.providers["decryption"].type == "digime"
    assert config.providers["keys"].options == {"path": "key.pem"}
    assert config.pull.concurrency == 8


def test_named_sinks_of_the_same_type(tmp_path: Path) -> None:
    raw = {
        **BASE,
        "sinks": {"a": {"type": "file", "root": "a"}, "b": {"type": "file", "root": "b"}},
    }
    config = load_config(raw, tmp_path)
    assert [(s.name, s.type) for s in config.sinks.values()] == [
        ("sinks.a", "file"),
        ("sinks.b", "file"),
    ]
    assert config.sinks["sinks.b"].options == {"root": "b"}


def test_file_source_sets_base_dir(tmp_path: Path) -> None:
    path = tmp_path / "privateshare.toml"
    path.write_text(
        '[digime]\napplication_id = "a"\ncontract_id = "c"\n'
        '[keys]\ntype = "file"\npath = "k.pem"\n[sinks.x]\ntype = "file"\nroot = "d"\n'
    )
    config = load_config(path)
    assert config.base_dir == tmp_path
    assert config.source == str(path)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml does not exist" in str(info.value)
    assert "--config" in str(info.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[digime\napplication_id = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "line 1" in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    raw = {
        "digime": {"application_id": "a", "contract_id": 42, "base_ur": "x"},
        "pull": {"concurrency": "8"},
        "extra": {},
        "sinks": {"x": {"root": "d"}},
    }
    problems = problems_of(raw, tmp_path)
    text = "\n".join(problems)
    assert "top level: unknown table 'extra'" in text
    assert "[digime]: unknown key 'base_ur'; did you mean 'base_url'?" in text
    assert "[digime] contract_id: expected a string, found an integer (42)" in text
    assert "[pull] concurrency: expected an integer, found a string ('8')" in text
    assert "[keys] is missing" in text
    assert "[sinks.x] type: expected the plugin name as a string" in text
    assert len(problems) == 6


def test_error_carries_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"digime": {}}, tmp_path)
    assert str(info.value).startswith("<dict>: ")
    assert "[digime] application_id: required but missing" in str(info.value)


def test_no_sinks_is_a_problem(tmp_path: Path) -> None:
    raw = {k: v for k, v in BASE.items() if k != "sinks"}
    assert any("no sinks are configured" in p for p in problems_of(raw, tmp_path))


def test_api_profile_is_checked(tmp_path: Path) -> None:
    raw = {**BASE, "digime": {**BASE["digime"], "api": "v2"}}
    (problem,) = problems_of(raw, tmp_path)
    assert "[digime] api" in problem and "v1.7" in problem


class SecretOptions(msgspec.Struct, forbid_unknown_fields=True):
    password: Secret
    port: int = 5432


def test_secret_reference_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PS_TEST_SECRET", "s3cret-value")
    options = decode_options({"password": {"env": "PS_TEST_SECRET"}}, SecretOptions, "[x]")
    assert options.password.reveal() == "s3cret-value"
    assert "s3cret-value" not in repr(options)
    assert "PS_TEST_SECRET" in repr(options.password)

    (tmp_path / "pw").write_text("from-file\n")
    options = decode_options({"password": {"file": "pw"}}, SecretOptions, "[x]", tmp_path)
    assert options.password.reveal() == "from-file"


def test_literal_secret_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        decode_options({"password": "hunter2"}, SecretOptions, "[sinks.db]")
    message = str(info.value)
    assert "hunter2" not in message
    assert "[sinks.db] password" in message
    assert '{ env = "VARIABLE_NAME" }' in message


def test_malformed_secret_reference() -> None:
    with pytest.raises(ConfigError) as info:
        decode_options({"password": {"env": "A", "file": "b"}}, SecretOptions, "[x]")
    assert "exactly one key, env or file" in str(info.value)


def test_unset_secret_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PS_TEST_MISSING", raising=False)
    secret = Secret.from_reference({"env": "PS_TEST_MISSING"})
    with pytest.raises(ConfigError) as info:
        secret.reveal()
    assert "environment variable PS_TEST_MISSING is not set" in str(info.value)


def test_missing_secret_file(tmp_path: Path) -> None:
    secret = Secret.from_reference({"file": "absent"}, tmp_path)
    with pytest.raises(ConfigError) as info:
        secret.reveal()
    assert str(tmp_path / "absent") in str(info.value)


def test_type_error_on_secret_named_key_hides_value() -> None:
    class Options(msgspec.Struct):
        token_ttl: int = 1

    with pytest.raises(ConfigError) as info:
        decode_options({"token_ttl": "abc-secret"}, Options, "[x]")
    assert "abc-secret" not in str(info.value)
    assert "[x] token_ttl: expected an integer, found a string" in str(info.value)
