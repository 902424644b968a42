"""core/errors.py: config problems are objects, rendered in one place and kept on the
ConfigError; the other errors carry what callers branch on."""

from __future__ import annotations

from pathlib import Path

import pytest

import privateshare.errors as errors
from privateshare.config import load_config
from privateshare.errors import (
    ConfigError,
    ConfigProblem,
    FileDecryptionError,
    PrivateShareError,
    ServerError,
)


def test_a_problem_renders_where_key_expected_found_and_fix() -> None:
    problem = ConfigProblem(
        "[pull]", "timeout", expected="a number > 0", found="-1", fix="change it"
    )
    assert str(problem) == "[pull] timeout: expected a number > 0, found -1; change it"
    assert str(ConfigProblem("[keys]", message="is missing", fix="add it", of_table=True)) == (
        "[keys] is missing; add it"
    )
    assert str(ConfigProblem("[digime]", message="unknown key 'x'")) == "[digime]: unknown key 'x'"
    assert str(ConfigProblem(message="no sinks are configured")) == "no sinks are configured"


def test_a_config_error_keeps_the_objects_and_their_text(tmp_path: Path) -> None:
    raw = {
        "digime": {"application_id": "app", "contract_id": "c", "base_url": 3},
        "keys": {"type": "file", "path": "k.pem"},
        "sinks": {"x": {"type": "memory"}},
        "pull": {"concurrency": 0, "colour": "blue"},
    }
    with pytest.raises(ConfigError) as info:
        load_config(raw, tmp_path)
    error = info.value
    assert error.problems == [str(p) for p in error.details]
    by_key = {(p.where, p.key): p for p in error.details}
    base_url = by_key[("[digime]", "base_url")]
    assert base_url.expected == "a string" and base_url.found.startswith("an integer")
    assert by_key[("[pull]", "concurrency")].fix.startswith("change it")
    unknown = by_key[("[pull]", "")]
    assert unknown.message == "unknown key 'colour'" and "valid keys are" in unknown.fix
    assert ConfigError("plain text").details == [ConfigProblem(message="plain text")]


def test_a_problem_from_a_located_message_keeps_the_text_and_finds_where() -> None:
    problem = ConfigProblem.from_text("[keys] path: /x/contract.pem does not exist", "preflight")
    assert (problem.where, problem.key, problem.kind) == ("[keys]", "path", "preflight")
    assert str(problem) == "[keys] path: /x/contract.pem does not exist"
    table = ConfigProblem.from_text("[keys] is missing; add it")
    assert (table.where, table.key, str(table)) == ("[keys]", "", "[keys] is missing; add it")
    assert ConfigProblem.from_text("no sinks").where == ""


def test_check_returns_the_decoding_problems_structured(tmp_path: Path) -> None:
    from privateshare.checks import check

    raw = {
        "digime": {"application_id": "app", "contract_id": "c"},
        "keys": {"type": "file", "path": "k.pem"},
        "sinks": {"x": {"type": "memory"}},
        "pull": {"concurrency": 0},
    }
    problems = check(raw, base_dir=tmp_path)
    (concurrency,) = [p for p in problems if p.key == "concurrency"]
    assert isinstance(concurrency, ConfigProblem) and concurrency.where == "[pull]"
    assert concurrency.expected and concurrency.kind == "config"
    as_json = concurrency.to_dict()
    assert as_json["text"] == str(concurrency)
    assert as_json["key"] == "concurrency" and as_json["kind"] == "config"


def test_a_config_error_says_how_many_problems_and_where() -> None:
    one = ConfigError("[pull] timeout: bad", source="/etc/ps.toml")
    assert str(one) == "/etc/ps.toml: [pull] timeout: bad" and one.source == "/etc/ps.toml"
    two = ConfigError([ConfigProblem("[keys]", "path", message="missing"), "no sinks"])
    assert str(two) == "2 problems in the configuration:\n  - [keys] path: missing\n  - no sinks"
    assert two.problems == ["[keys] path: missing", "no sinks"] and two.source is None


def test_a_message_that_already_names_its_place_is_not_prefixed_twice() -> None:
    problem = ConfigProblem("[keys]", "path", message="[keys] path: /x does not exist")
    assert str(problem) == "[keys] path: /x does not exist"
    with_fix = ConfigProblem("[keys]", message="is missing", fix="add a [keys] table")
    assert str(with_fix) == "[keys]: is missing; add a [keys] table"


def test_every_error_is_a_privateshare_error() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(classes) > 15
    assert all(issubclass(cls, PrivateShareError) for cls in classes), classes


def test_decryption_and_server_errors_keep_what_callers_branch_on() -> None:
    failed = FileDecryptionError("hash", "the digest differs", "f.json")
    assert (failed.check, failed.file_name) == ("hash", "f.json")
    assert str(failed) == "hash check failed (f.json): the digest differs"
    assert str(FileDecryptionError("size", "too short")) == "size check failed: too short"
    error = ServerError("gone", code="NotFound", reference="r9", status_code=404)
    assert (error.code, error.reference, error.status_code) == ("NotFound", "r9", 404)
    assert str(error) == "gone (code NotFound, HTTP 404, reference r9)"
