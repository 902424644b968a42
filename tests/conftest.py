"""Shared fixtures for privateshare's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TESTS = Path(__file__).parent

# A test is `slow` when it starts a server, a database, an HSM or another process, and `unit`
# otherwise: `python -m pytest -m unit` runs the fast layer alone (see CONTRIBUTING.md).
SLOW_FIXTURES = frozenset(
    {
        "privateshare_sandbox",
        "sandbox",
        "make_sandbox",
        "start_sandbox",
        "client",
        "moto_server",
        "moto_auth_server",
        "aws_env",
        "softhsm",
        "postgresql_database",
        "mariadb_database",
        "sql_db",
        "shared_db",
        "limited_user",
        "hello_dist",
        "with_hello",
        "sinks_site",
        "counting_site",
        "docs_home",
    }
)
SLOW_PATHS = ("contrib", "flow", "sandbox", "test_lint.py", "test_packaging.py")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two workers a core (``-n auto``), at most 16.

    Much of the suite waits: on the sandbox's latency, on servers, subprocesses and browsers,
    so one worker a core leaves the CPUs idle. But every worker collects the whole suite
    (~5 s of CPU) and more workers contend for the cores: on 2 cores, a quiet machine, the
    same tests took 3 workers 222 s (320 s of CPU), 4 workers 207 s (336 s), 5 workers
    214 s (360 s), 6 workers 218 s (374 s).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(16, 2 * (cores or 1))


#: The longest test files (wall on one worker, longest first), started before the others.
#: xdist's ``loadfile`` hands out whole files in collection order (``--no-loadscope-reorder``
#: in pyproject.toml; by default it would hand out the files with the most tests first, and
#: these files, with few long tests, last: they then ran alone at the end of the suite).
LONG_FILES = (
    "contrib/test_contrib_dlt_conformance.py",
    "contrib/test_contrib_dlt_sink.py",
    "contrib/test_contrib_dlt.py",
    "plugins/test_tokens_flow.py",
    "test_packaging.py",
    "contrib/test_contrib_dlt_kill.py",
    "plugins/test_sink_sql.py",
    "plugins/test_tokens_sql.py",
    "cli/test_reauthorize.py",
    "flow/test_cli_flow.py",
    "contrib/test_contrib_packages.py",
    "plugins/test_transport_requests.py",
    "plugins/test_sink_s3.py",
    "scale/test_rounds.py",
    "scale/test_failures.py",
)


def _long_first(item: pytest.Item) -> int:
    try:
        path = item.path.relative_to(TESTS).as_posix()
    except ValueError:
        return len(LONG_FILES)
    return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_long_first)  # stable: within a file, and for the rest, the order is kept
    for item in items:
        try:
            parts = item.path.relative_to(TESTS).parts
        except ValueError:  # not one of ours (a conformance suite run from elsewhere)
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        slow = (
            item.get_closest_marker("slow") is not None
            or parts[0] in SLOW_PATHS
            or bool(fixtures & SLOW_FIXTURES)
        )
        item.add_marker(pytest.mark.slow if slow else pytest.mark.unit)


@pytest.fixture(scope="session")
def hello_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``privateshare-hello`` fixture distribution, pip-installed into a target dir.

    Installed for real (wheel build, ``.dist-info`` with entry points) but into its
    own directory, so the test environment is left as it was; callers put the
    directory on ``sys.path`` or ``PYTHONPATH``.
    """
    target = tmp_path_factory.mktemp("hello-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(FIXTURES / "privateshare-hello"),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture
def with_hello(hello_dist: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import importlib

    from stevedore import ExtensionManager

    # stevedore memoises entry points per process; a plugin installed mid-run
    # (only ever in tests) needs that memo cleared, before and after.
    monkeypatch.syspath_prepend(str(hello_dist))
    importlib.invalidate_caches()
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    yield hello_dist
    ExtensionManager.ENTRY_POINT_CACHE.clear()
    sys.modules.pop("privateshare_hello", None)
