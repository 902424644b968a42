"""Checkpointed => on disk, with directory syncs grouped per batch (``privateshare_sink_sync``).

The file sink fsyncs each file's data before renaming it into place, and its directories
once per batch; the flow checkpoints a file only after a sync that began after the file was
committed. These tests break the batch window open: a sync that fails, and a process killed
between the commits of a batch and its checkpoint save.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from privateshare import hookimpl
from privateshare.flow import Flow, Run
from privateshare.sandbox import Sandbox

from .conftest import consent, delivered, framework_for
from .test_flow import _toml_of


class FailingSync:
    """A sink's sync that fails once, on call ``fail_on``."""

    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.calls = 0

    @hookimpl
    def privateshare_sink_sync(self, run: object) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise OSError("the disk went away")


def test_files_of_a_batch_whose_sync_failed_are_not_checkpointed(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Run, "CHECKPOINT_EVERY", 0.0)  # a save (and a sync) per batch of files
    sandbox = start_sandbox(files=30, latency=0.02)  # batches of a few files, many syncs
    truth = sandbox.ground_truth()
    fw = framework_for(sandbox, tmp_path, pull={"concurrency": 2, "poll_interval": 0.05})
    failing = FailingSync(fail_on=2)
    fw.pm.register(failing, name="failing-sync")
    flow = Flow(fw)
    consent(flow, "eve")
    first = flow.pull("eve")
    assert failing.calls > 2  # syncs after the failed one went on
    assert first.files_delivered == len(truth)
    assert any("could not make its files durable" in note for note in first.notes)
    checkpointed = set(fw.hooks.checkpoint_load("eve")["sinks.local"])
    missing = set(truth) - checkpointed
    assert missing  # the batch of the failed sync
    assert delivered(tmp_path, "eve") == truth  # committed, just not promised durable
    fw.pm.unregister(failing)
    second = flow.pull("eve")
    assert second.files_delivered == len(missing)
    assert second.files_skipped == len(checkpointed)
    assert set(fw.hooks.checkpoint_load("eve")["sinks.local"]) == set(truth)


def test_a_kill_inside_the_batch_window_leaves_the_batch_unchecked_then_redelivered(
    start_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = start_sandbox(files=60, latency=0.05)
    fw = framework_for(sandbox, tmp_path, pull={"concurrency": 2, "poll_interval": 0.05})
    flow = Flow(fw)
    consent(flow, "kim")
    # A hook module that SIGKILLs the pull in its second sync: after the files of that batch
    # were committed (renamed into place), before the checkpoint save that would name them.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "kill_in_sync.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            from privateshare import hookimpl

            calls = 0

            @hookimpl
            def privateshare_sink_sync(run):
                global calls
                calls += 1
                if calls == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    config = tmp_path / "kill.toml"
    config.write_text(_toml_of(fw) + '[plugins]\nmodules = ["kill_in_sync"]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), *sys.path])}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "privateshare", "pull", "--config", str(config), "--user", "kim"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert time.monotonic() - started > 1.0  # a periodic save came first
    truth = sandbox.ground_truth()
    on_disk = delivered(tmp_path, "kim")
    checkpointed = set(fw.hooks.checkpoint_load("kim").get("sinks.local", {}))
    assert checkpointed and checkpointed <= set(on_disk)
    window = set(on_disk) - checkpointed
    assert window  # committed in the killed batch: on disk, not checkpointed
    assert all(truth[name] == on_disk[name] for name in on_disk)
    rerun = flow.pull("kim")
    assert delivered(tmp_path, "kim") == truth
    assert rerun.files_delivered == len(truth) - len(checkpointed)
    leftovers = [p.name for p in (tmp_path / "data" / "kim").iterdir() if p.name.startswith(".")]
    assert leftovers == []
