"""Install the contrib and example distributions for real, into directories of their own.

Each is built from its own ``pyproject.toml`` into a wheel and installed with pip
(``--target``, offline), exactly as ``pip install ./contrib/<name>`` would; the test
environment itself is left as it was, so the plugins exist only for the tests that put
the directory on ``sys.path`` or ``PYTHONPATH``. Sources are copied first, because an
in-tree build would leave ``build/`` and ``*.egg-info`` in the checkout.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
EXAMPLES = ROOT / "examples"


def pip_install_target(sources: list[Path], target: Path, workdir: Path) -> Path:
    """``pip install --no-deps --no-build-isolation --target target`` of copies of ``sources``."""
    copies = []
    for source in sources:
        copy = workdir / source.name
        shutil.copytree(
            source,
            copy,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
        )
        copies.append(str(copy))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    result = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(target), *copies],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory that every xdist worker of this session sees (one per session without
    workers): the parent of the workers' own temporary directories."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


@pytest.fixture(scope="session")
def sinks_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """privateshare-parquet, -webhook and -dlt, installed into one directory.

    Installed once per test session and shared by the xdist workers (several test files
    use it, on different workers): the first worker installs under a lock, the others wait
    for it and reuse the directory, which nobody writes to afterwards."""
    from filelock import FileLock

    shared = shared_dir(tmp_path_factory, "contrib-sinks")
    shared.mkdir(exist_ok=True)
    site, done = shared / "site", shared / "installed"
    with FileLock(str(shared / "lock")):
        if not done.exists():
            shutil.rmtree(site, ignore_errors=True)
            shutil.rmtree(shared / "src", ignore_errors=True)
            (shared / "src").mkdir()
            sources = [
                CONTRIB / "privateshare-parquet",
                CONTRIB / "privateshare-webhook",
                CONTRIB / "privateshare-dlt",
            ]
            pip_install_target(sources, site, shared / "src")
            done.touch()
    return site


@pytest.fixture(scope="session")
def counting_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged hook example, alone: once importable it joins every framework."""
    work = tmp_path_factory.mktemp("counting-src")
    sources = [EXAMPLES / "privateshare-counting"]
    return pip_install_target(sources, tmp_path_factory.mktemp("counting-site"), work)


def _fresh_entry_points() -> None:
    from stevedore import ExtensionManager

    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``on_path(directory, *modules)``: importable (with its entry points) for this test."""
    added: list[str] = []

    def put(directory: Path, *modules: str) -> None:
        monkeypatch.syspath_prepend(str(directory))
        added.extend(modules)
        _fresh_entry_points()

    yield put
    # stevedore memoises entry points per process: forget what this test could see.
    _fresh_entry_points()
    for module in added:
        sys.modules.pop(module, None)
