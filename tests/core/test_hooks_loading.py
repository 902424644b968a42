"""The plugin manager: only configured plugins load, by name, from entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import privateshare
from privateshare.config import load_config
from privateshare.delivery import sink_writers
from privateshare.errors import ConfigError, PluginError
from privateshare.hooks.loading import FAMILIES, check_config, discover, installed_names

BUILTINS = {
    "transport": {"requests", "urllib3"},
    "keys": {"file", "env-key"},
    "tokens": {"file"},
    "decryption": {"digime"},
    "sinks": {"file", "memory"},
}


def config(tmp_path: Path, **tables: object) -> dict:
    raw: dict = {
        "digime": {"application_id": "app", "contract_id": "contract"},
        "keys": {"type": "file", "path": "key.pem"},
        "tokens": {"type": "file", "path": "tokens"},
        "sinks": {"mem": {"type": "memory"}},
    }
    raw.update(tables)
    return raw


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_builtins_are_entry_points_of_this_distribution(family: str) -> None:
    found, broken = discover(family)
    assert not broken, broken
    names = {p.name for p in found if p.distribution == "privateshare"}
    assert BUILTINS[family] <= names
    for info in found:
        assert info.version == privateshare.__version__ or info.distribution != "privateshare"


def test_plugins_register_under_their_config_names(tmp_path: Path) -> None:
    fw = privateshare.load(
        config(tmp_path, sinks={"a": {"type": "memory"}, "b": {"type": "memory"}}),
        base_dir=tmp_path,
    )
    names = set(fw.plugins)
    assert {"keys", "tokens", "transport", "decryption", "sinks.a", "sinks.b"} <= names
    assert fw.pm.get_plugin("sinks.a") is fw.plugins["sinks.a"]
    assert fw.plugins["sinks.a"] is not fw.plugins["sinks.b"]
    assert fw.hooks.sink_names()[:2] == ["sinks.a", "sinks.b"]


def test_plugin_options_are_decoded_into_their_struct(tmp_path: Path) -> None:
    raw = config(tmp_path, transport={"type": "requests", "read_timeout": 5.5, "retries": 0})
    fw = privateshare.load(raw, base_dir=tmp_path)
    options = fw.plugins["transport"].options
    assert (options.read_timeout, options.retries, options.connect_timeout) == (5.5, 0, 10.0)


def test_bad_plugin_options_are_located(tmp_path: Path) -> None:
    raw = config(tmp_path, transport={"type": "requests", "read_timeut": 5, "retries": "x"})
    with pytest.raises(ConfigError) as info:
        privateshare.load(raw, base_dir=tmp_path)
    text = str(info.value)
    assert "[transport]: unknown key 'read_timeut'; did you mean 'read_timeout'?" in text
    assert "[transport] retries: expected an integer, found a string ('x')" in text


def test_unknown_type_lists_installed_plugins_and_the_fix(tmp_path: Path) -> None:
    raw = config(tmp_path, sinks={"lake": {"type": "parquet"}})
    with pytest.raises(ConfigError) as info:
        privateshare.load(raw, base_dir=tmp_path)
    text = str(info.value)
    assert "[sinks.lake] type: unknown sink plugin 'parquet'" in text
    assert "installed sink plugins: file, memory" in text
    assert "pip install privateshare-parquet" in text


def test_unknown_builtin_backend_names_the_extra(tmp_path: Path) -> None:
    from privateshare.hooks.loading import install_hint

    assert install_hint("sinks", "s3") == "pip install 'privateshare[s3]'"
    assert install_hint("keys", "pkcs11") == "pip install 'privateshare[hsm]'"


def test_only_configured_plugins_are_imported(tmp_path: Path, with_hello: Path) -> None:
    sys.modules.pop("privateshare_hello", None)
    raw = config(tmp_path)
    raw["plugins"] = {"disable": ["hello-observer", "broken-observer"]}
    privateshare.load(raw, base_dir=tmp_path)
    assert "privateshare_hello" not in sys.modules


def test_installed_distribution_is_discovered(with_hello: Path) -> None:
    assert "hello" in installed_names("sinks")
    found, broken = discover("sinks")
    hello = next(p for p in found if p.name == "hello")
    assert (hello.distribution, hello.version) == ("privateshare-hello", "1.2.3")
    assert hello.description == "a sink that says hello"
    assert [o.name for o in __import__("msgspec").structs.fields(hello.options)] == [
        "greeting",
        "repeat",
    ]
    (bad,) = [b for b in broken if b.name == "broken"]
    assert bad.distribution == "privateshare-hello"
    assert "ModuleNotFoundError" in bad.error


def test_third_party_sink_and_observer_run(tmp_path: Path, with_hello: Path) -> None:
    from privateshare.models import DataFile, RunInfo

    raw = config(tmp_path, sinks={"hi": {"type": "hello", "greeting": "bonjour"}})
    fw = privateshare.load(raw, base_dir=tmp_path)
    hello = sys.modules["privateshare_hello"]
    # The broken observer of the same distribution was reported, not fatal.
    assert [(b.family, b.name) for b in fw.broken] == [("hooks", "broken-observer")]
    run = RunInfo("r1", "alice", 0.0)
    file = DataFile("alice", "f.json", 1)
    ((name, writer),) = sink_writers(fw.hooks, run, file)
    writer.write(b"data")
    writer.commit()
    fw.hooks.file_written("alice", file, 4, [name])
    assert hello.DELIVERED[-1] == ("bonjour", "f.json", b"data")
    assert hello.OBSERVED[-1] == "alice:f.json:4"


def test_strict_mode_reraises_a_broken_hook_plugin(tmp_path: Path, with_hello: Path) -> None:
    with pytest.raises(PluginError) as info:
        privateshare.load(config(tmp_path), base_dir=tmp_path, strict=True)
    assert "broken-observer" in str(info.value)
    assert "privateshare-hello" in str(info.value)


def test_broken_configured_sink_fails_files_not_the_run(tmp_path: Path, with_hello: Path) -> None:
    from privateshare.errors import SinkError
    from privateshare.models import DataFile, RunInfo

    raw = config(tmp_path, sinks={"ok": {"type": "memory"}, "bad": {"type": "broken"}})
    raw["plugins"] = {"disable": ["broken-observer"]}
    fw = privateshare.load(raw, base_dir=tmp_path)
    assert [(b.family, b.name) for b in fw.broken] == [("sinks", "sinks.bad")]
    with pytest.raises(SinkError) as info:
        sink_writers(fw.hooks, RunInfo("r", "u", 0.0), DataFile("u", "f", 1))
    assert "sinks.bad is broken" in str(info.value)
    with pytest.raises(PluginError):
        privateshare.load(raw, base_dir=tmp_path, strict=True)


def test_hook_modules_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_hooks.py").write_text(
        textwrap.dedent("""
        from privateshare import hookimpl
        SEEN = []

        @hookimpl
        def privateshare_run_finished(summary):
            SEEN.append(summary.user_id)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = config(tmp_path)
    raw["plugins"] = {"modules": ["my_hooks"]}
    fw = privateshare.load(raw, base_dir=tmp_path)
    from privateshare.models import RunSummary

    fw.hooks.run_finished(RunSummary(run_id="r", user_id="bob"))
    assert sys.modules["my_hooks"].SEEN == ["bob"]


def test_missing_hook_module_is_reported_or_raised(tmp_path: Path) -> None:
    raw = config(tmp_path)
    raw["plugins"] = {"modules": ["no_such_module_here"]}
    fw = privateshare.load(raw, base_dir=tmp_path)
    assert fw.broken[0].name == "no_such_module_here"
    raw["plugins"]["strict"] = True
    with pytest.raises(PluginError) as info:
        privateshare.load(raw, base_dir=tmp_path)
    assert "no_such_module_here" in str(info.value)


def test_misspelled_hook_fails_check_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "typo_hooks.py").write_text(
        textwrap.dedent("""
        from privateshare import hookimpl

        @hookimpl
        def privateshare_file_writen(user_id, file):
            pass
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = config(tmp_path)
    raw["plugins"] = {"modules": ["typo_hooks"]}
    with pytest.raises(PluginError) as info:
        privateshare.load(raw, base_dir=tmp_path)
    assert "privateshare_file_writen" in str(info.value)
    assert f"{privateshare.DOCS_URL}hooks/" in str(info.value)


def test_check_config_reports_plugin_problems_without_starting_plugins(tmp_path: Path) -> None:
    raw = config(tmp_path, keys={"type": "file"}, sinks={"x": {"type": "nope"}})
    problems = check_config(load_config(raw, tmp_path))
    assert any("[keys] path: required but missing" in p for p in problems)
    assert any("unknown sink plugin 'nope'" in p for p in problems)
    assert not (tmp_path / "tokens").exists()


def test_extra_plugins_registered_by_name(tmp_path: Path) -> None:
    seen: list[str] = []

    class Observer:
        @privateshare.hookimpl
        def privateshare_file_failed(self, user_id: str, file_name: str) -> None:
            seen.append(file_name)

    fw = privateshare.load(
        config(tmp_path), base_dir=tmp_path, extra_plugins={"observer": Observer()}
    )
    fw.hooks.file_failed("u", "bad.json", RuntimeError("x"))
    assert seen == ["bad.json"]
