"""Old module paths keep working for third parties, with a warning naming the new path."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

import privateshare
from privateshare import _moved
from privateshare.delivery import deliver
from privateshare.hooks.calls import Hooks
from privateshare.models import DataFile, RunInfo

MODULES = sorted((old, new) for old, new in _moved.MOVED.items() if ":" not in old)
NAMES = sorted((old, new) for old, new in _moved.MOVED.items() if ":" in old)


def _forget(module: str) -> None:
    sys.modules.pop(module, None)
    parent, _, leaf = module.rpartition(".")
    if parent:
        vars(importlib.import_module(parent)).pop(leaf, None)


def _module_exists(module: str) -> bool:
    """A module that is still there (names moved out of it), not a stand-in."""
    return getattr(importlib.import_module(module), "__file__", None) is not None


@pytest.mark.parametrize(("old", "new"), MODULES)
def test_an_old_path_warns_and_is_the_new_module(old: str, new: str) -> None:
    _forget(old)
    with pytest.deprecated_call(match=rf"^{old} is deprecated; import {new} instead$"):
        module = importlib.import_module(old)
    if any(name.startswith(f"{old}:") for name, _ in NAMES):
        # A gone module whose names moved to several homes: a stand-in that has them all.
        assert module.__name__ == old and module.__all__
        return
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the alias did not take over the module's identity


@pytest.mark.parametrize(("old", "new"), NAMES)
def test_an_old_name_warns_naming_its_new_home_and_is_the_new_object(old: str, new: str) -> None:
    module_name, _, name = old.partition(":")
    new_module = new.partition(":")[0]
    expected = _moved.resolve(new)
    if module_name in _moved.MOVED:  # its module's import warned: the names are silent
        _forget(module_name)
        with pytest.deprecated_call():
            module = importlib.import_module(module_name)
        assert name in module.__all__
        assert getattr(module, name) is expected
        return
    module = importlib.import_module(module_name)
    gone = not _module_exists(module_name)
    subject = module_name if gone else f"{module_name}.{name}"
    with pytest.deprecated_call(match=rf"^{re.escape(subject)} is deprecated; .*{new_module}"):
        value = getattr(module, name)
    assert value is expected
    if gone:
        assert name in module.__all__
        with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
            _ = module.no_such_name


def test_every_new_path_of_the_table_exists() -> None:
    """A typo in the table would only show when a user hits it: resolve every target."""
    for new in _moved.MOVED.values():
        assert _moved.resolve(new) is not None, new


def test_from_imports_of_old_paths_still_give_the_names() -> None:
    for name in ("privateshare.hookspecs", "privateshare.plugin"):
        sys.modules.pop(name, None)
        vars(privateshare).pop(name.rpartition(".")[2], None)
    with pytest.deprecated_call():
        from privateshare.hookspecs import PROJECT, hookimpl
    with pytest.deprecated_call():
        from privateshare.plugin import Plugin
    assert PROJECT == "privateshare"
    assert (hookimpl, Plugin) == (privateshare.hookimpl, privateshare.Plugin)


def test_the_facade_delivery_methods_warn_and_delegate(privateshare_memory) -> None:
    hooks: Hooks = privateshare_memory.hooks
    run, file = RunInfo("r", "alice", 0.0), DataFile("alice", "a.json", 1)
    with pytest.deprecated_call(match=r"Hooks\.deliver is deprecated; use privateshare\.delivery"):
        assert hooks.deliver(run, file, [b"x"]) == (1, ["sinks.memory"])
    with pytest.deprecated_call(match=r"Hooks\.sink_writers is deprecated"):
        ((name, writer),) = hooks.sink_writers(run, file)
    writer.abort()
    assert name == "sinks.memory"
    assert deliver(hooks, run, file, [b"yz"]) == (2, ["sinks.memory"])
