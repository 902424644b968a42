"""The plugin contract: the typed calls match the specs, family plugins keep to their
family's hooks, and a plugin's hook spec range is honoured."""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import pytest
from stevedore import ExtensionManager

import privateshare
from privateshare.config import load_config
from privateshare.errors import PluginError
from privateshare.hooks import FAMILIES, SPEC_VERSION, Hooks, family_of_hook
from privateshare.hooks import specs as hookspecs
from privateshare.hooks.loading import check_config, implemented_hooks

SPECS = {
    name: fn
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("privateshare_")
}
#: Public facade methods that are not the call of one hook.
NOT_HOOK_CALLS = {
    "listens",  # whether any plugin implements a hook (to skip calls nobody receives)
    "sink_names",  # which sinks are configured
    "sink_writers",  # deprecated: privateshare.delivery.sink_writers
    "deliver",  # deprecated: privateshare.delivery.deliver
}
#: Hooks the framework's facade does not call: the CLI asks for commands with its own
#: plugin manager (privateshare.cli.root), before any config is loaded.
NOT_CALLED_BY_THE_FACADE = {"privateshare_register_commands"}


def _calls() -> dict[str, str]:
    """Facade method name -> the hook it is marked as calling."""
    found = {}
    for name, method in inspect.getmembers(Hooks, inspect.isfunction):
        hook = getattr(method, "__hook__", None)
        if hook is not None:
            found[name] = hook
    return found


def test_every_spec_has_one_typed_call_with_its_arguments() -> None:
    calls = _calls()
    by_hook: dict[str, list[str]] = {}
    for method, hook in calls.items():
        by_hook.setdefault(hook, []).append(method)
    assert set(by_hook) == set(SPECS) - NOT_CALLED_BY_THE_FACADE, (
        "hooks without a typed call, or calls of no hook"
    )
    for hook, methods in by_hook.items():
        assert len(methods) == 1, f"{hook} has several typed calls: {methods}"
        method = getattr(Hooks, methods[0])
        # A typed call may add keyword-only options of the core's own (``only=``).
        params = list(inspect.signature(method).parameters.values())[1:]
        spec_args = list(inspect.signature(SPECS[hook]).parameters)
        args = [
            p.name
            for p in params
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in spec_args
        ]
        assert args == list(inspect.signature(SPECS[hook]).parameters), (
            f"Hooks.{methods[0]} takes {args}; {hook} takes "
            f"{list(inspect.signature(SPECS[hook]).parameters)}"
        )


def test_every_public_facade_method_calls_a_hook() -> None:
    public = {n for n, _ in inspect.getmembers(Hooks, inspect.isfunction) if not n.startswith("_")}
    assert public - set(_calls()) == NOT_HOOK_CALLS


def test_family_hooks_are_specs_and_belong_to_one_family() -> None:
    seen: set[str] = set()
    for family in FAMILIES.values():
        assert set(family.hooks) <= set(SPECS), family.key
        assert not seen & set(family.hooks)
        seen |= set(family.hooks)
        for hook in family.hooks:
            assert family_of_hook(hook) is family
    assert family_of_hook("privateshare_file_written") is None  # general: open to all


def test_the_spec_version_is_exported() -> None:
    from packaging.version import Version

    assert privateshare.hooks.SPEC_VERSION == SPEC_VERSION == hookspecs.SPEC_VERSION
    assert Version(SPEC_VERSION).major >= 1


# --- family plugins, installed for real (a .dist-info with entry points) -----------------


def install(
    site: Path, monkeypatch: pytest.MonkeyPatch, group: str, name: str, source: str
) -> None:
    """A one-module distribution whose entry point ``name`` in ``group`` is ``Plugin``."""
    module = f"contract_{name.replace('-', '_')}"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:Plugin\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop(module, None)  # an earlier test's version of it
    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})


def base_config(**tables: object) -> dict:
    raw: dict = {
        "digime": {"application_id": "app", "contract_id": "contract"},
        "keys": {"type": "file", "path": "key.pem"},
        "tokens": {"type": "file", "path": "tokens"},
        "sinks": {"mem": {"type": "memory"}},
    }
    raw.update(tables)
    return raw


SINK_THAT_ANSWERS_TOKENS = """
    from privateshare import Plugin, hookimpl

    class Plugin(Plugin):
        @hookimpl
        def privateshare_sink_open_file(self, run, file):
            return None

        @hookimpl
        def privateshare_token_load(self, user_id):
            return None

        @hookimpl
        def privateshare_file_written(self, user_id, file, size, sinks):
            pass
"""


def test_a_sink_implementing_a_token_hook_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        tmp_path / "site", monkeypatch, "privateshare.sinks", "greedy", SINK_THAT_ANSWERS_TOKENS
    )
    raw = base_config(sinks={"g": {"type": "greedy"}, "mem": {"type": "memory"}})
    with pytest.raises(PluginError) as info:
        privateshare.load(raw, base_dir=tmp_path, strict=True)
    message = str(info.value)
    assert "[sinks.g]" in message and "contract_greedy.Plugin" in message
    assert "privateshare_token_load" in message and "token store family ([tokens])" in message
    # Not strict: the sink is reported broken, and so are the files it would take.
    fw = privateshare.load(raw, base_dir=tmp_path)
    assert [b.name for b in fw.broken] == ["sinks.g"]
    assert fw.pm.hook.privateshare_token_load.get_hookimpls()[0].plugin_name == "tokens"
    # `privateshare check` finds it without starting the plugin.
    problems = check_config(load_config(raw, tmp_path))
    assert any("privateshare_token_load" in p for p in problems)


def test_a_plugin_in_the_wrong_group_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
        from privateshare import Plugin, hookimpl

        class Plugin(Plugin):
            @hookimpl
            def privateshare_sink_open_file(self, run, file):
                return None
    """
    install(tmp_path / "site", monkeypatch, "privateshare.token_stores", "sinkish", source)
    with pytest.raises(PluginError) as info:
        privateshare.load(base_config(tokens={"type": "sinkish"}), base_dir=tmp_path)
    message = str(info.value)
    assert "[tokens]" in message and "privateshare_sink_open_file" in message
    assert "sink family" in message


def test_general_hooks_are_open_to_family_plugins_and_hook_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
        from privateshare import Plugin, hookimpl

        class Plugin(Plugin):
            @hookimpl
            def privateshare_sink_open_file(self, run, file):
                return None

            @hookimpl
            def privateshare_run_finished(self, summary):
                pass

            @hookimpl
            def privateshare_transform_file(self, file, chunks):
                return None
    """
    install(tmp_path / "site", monkeypatch, "privateshare.sinks", "observing", source)
    # A hook module may answer family hooks too: it is not a family plugin.
    (tmp_path / "any_hooks.py").write_text(
        textwrap.dedent("""
        from privateshare import hookimpl

        @hookimpl
        def privateshare_token_users():
            return ["from-a-module"]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = base_config(sinks={"o": {"type": "observing"}}, plugins={"modules": ["any_hooks"]})
    fw = privateshare.load(raw, base_dir=tmp_path, strict=True)
    assert implemented_hooks(fw.plugins["sinks.o"]) == [
        "privateshare_run_finished",
        "privateshare_sink_open_file",
        "privateshare_transform_file",
    ]
    assert "from-a-module" in fw.hooks.token_users()


def test_every_installed_family_plugin_keeps_to_its_family() -> None:
    from privateshare.hooks.loading import discover

    for key, family in FAMILIES.items():
        found, broken = discover(key)
        assert not broken, broken
        for info in found:
            hooks = set(implemented_hooks(info.target))
            assert hooks & set(family.hooks), f"{info.name} implements no {key} hook"
            for hook in hooks:
                owner = family_of_hook(hook)
                assert owner in (None, family), f"{key} plugin {info.name} implements {hook}"


# --- hook spec versions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "loads"),
    [(">=1.0,<2", True), (f"=={SPEC_VERSION}", True), (">=2", False), ("<1.0", False)],
)
def test_a_plugin_states_the_spec_versions_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wanted: str, loads: bool
) -> None:
    source = f"""
        from privateshare import Plugin, hookimpl

        class Plugin(Plugin):
            requires_spec = {wanted!r}

            @hookimpl
            def privateshare_sink_open_file(self, run, file):
                return None
    """
    install(tmp_path / "site", monkeypatch, "privateshare.sinks", "versioned", source)
    raw = base_config(sinks={"v": {"type": "versioned"}})
    if loads:
        assert "sinks.v" in privateshare.load(raw, base_dir=tmp_path, strict=True).plugins
        return
    with pytest.raises(PluginError) as info:
        privateshare.load(raw, base_dir=tmp_path, strict=True)
    message = str(info.value)
    assert f"[sinks.v] the 'versioned' plugin needs hook spec version {wanted}" in message
    assert f"this privateshare has hook spec {SPEC_VERSION}" in message


def test_a_malformed_spec_range_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ranged_hooks.py").write_text('requires_spec = "one point oh"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = base_config(plugins={"modules": ["ranged_hooks"], "strict": True})
    with pytest.raises(PluginError) as info:
        privateshare.load(raw, base_dir=tmp_path)
    assert "'ranged_hooks'" in str(info.value)
    assert "requires_spec = 'one point oh' is not a version range" in str(info.value)
    problems = check_config(load_config(raw, tmp_path))
    assert any("is not a version range" in p for p in problems)
