"""Old module paths keep working for third parties, with a warning naming the new path."""

from __future__ import annotations

import importlib
import sys

import pytest

import privateshare
from privateshare import _moved
from privateshare.delivery import deliver
from privateshare.hooks.calls import Hooks
from privateshare.models import DataFile, RunInfo


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_an_old_path_warns_and_is_the_new_module(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    parent, _, leaf = old.rpartition(".")
    vars(importlib.import_module(parent)).pop(leaf, None)
    with pytest.deprecated_call(match=rf"^{old} is deprecated; import {new} instead$"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the alias did not take over the module's identity


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
