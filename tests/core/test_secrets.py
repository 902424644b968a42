"""``privateshare.secrets``: a reference says where a secret lives; the value is read on use."""

from __future__ import annotations

from pathlib import Path

import pytest

from privateshare.errors import ConfigError, SecretUnavailable
from privateshare.secrets import REFERENCE_HELP, Secret


def test_an_env_reference_is_read_when_revealed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = Secret.from_reference({"env": "PS_TEST_SECRET"})
    monkeypatch.setenv("PS_TEST_SECRET", "s3cret")
    assert secret.reveal() == "s3cret"
    monkeypatch.setenv("PS_TEST_SECRET", "rotated")
    assert secret.reveal() == "rotated"  # read on use, not kept


def test_an_unset_variable_says_which_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PS_TEST_UNSET", raising=False)
    with pytest.raises(SecretUnavailable) as info:
        Secret(env="PS_TEST_UNSET").reveal()
    assert isinstance(info.value, ConfigError)
    assert "environment variable PS_TEST_UNSET is not set; export it" in str(info.value)


def test_a_file_reference_is_relative_to_the_config_and_loses_its_newline(
    tmp_path: Path,
) -> None:
    (tmp_path / "pw.txt").write_text("hunter2\n")
    secret = Secret.from_reference({"file": "pw.txt"}, base_dir=tmp_path)
    assert secret.path == tmp_path / "pw.txt"
    assert secret.reveal() == "hunter2"


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable, match=r"does not exist; create it or fix the path"):
        Secret(file=str(tmp_path / "absent")).reveal()
    with pytest.raises(SecretUnavailable, match=r"cannot be read .*; check its permissions"):
        Secret(file=str(tmp_path)).reveal()  # a directory


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("hunter2", REFERENCE_HELP),
        ({"env": "A", "file": "b"}, "exactly one key, env or file; found ['env', 'file']"),
        ({"value": "x"}, "exactly one key"),
        ({"env": ""}, "a non-empty variable or path"),
        ({"file": 3}, "a non-empty variable or path"),
    ],
)
def test_a_literal_or_malformed_reference_is_refused_with_the_fix(
    reference: object, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        Secret.from_reference(reference)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_the_value_never_appears_in_a_repr() -> None:
    literal = Secret.literal("hunter2")
    assert literal.reveal() == "hunter2"
    assert "hunter2" not in repr(literal) and "hunter2" not in str(literal)
    assert repr(Secret(env="X")) == "Secret(environment variable X)"
    assert Secret(env="X") == Secret.from_reference({"env": "X"}) != Secret(file="X")
    assert len({Secret(env="X"), Secret(env="X")}) == 1


def test_a_reference_names_exactly_one_place() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Secret()
    with pytest.raises(ValueError, match="exactly one"):
        Secret(env="A", file="b")
    assert Secret.from_reference(Secret(env="A")) == Secret(env="A")
