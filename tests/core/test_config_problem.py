"""Config problems are objects, rendered in one place, and kept on the ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from privateshare.config import load_config
from privateshare.errors import ConfigError, ConfigProblem


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
