"""The distributions as a user gets them: built, checked as an index would, installed for real.

One test builds the sdist and, from the unpacked sdist, the wheel (``python -m build``: so the
sdist is proven to rebuild the wheel), checks both with ``twine check --strict``, installs the
wheel (not editable) into a fresh virtual environment and runs ``privateshare --version`` and
``privateshare demo`` there, from a directory outside the checkout. Then, with privateshare
uninstalled again, it follows the contrib and scaffold READMEs' "from a checkout" instructions
in that environment (privateshare is not on the index: pip must take it from the checkout).

Dependencies come from the package index (or pip's cache), as for a user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PROJECT["version"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    return result.stdout


def fresh_venv(path: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment with pip, and an environment that has only it on PATH."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    bindir = path / "bin"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(path))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # No bytecode compiled at install (`--no-compile`): pip would compile every module of
    # every dependency (~2 s of this test's ~26 s of CPU), where the commands import a few
    # (compiled when imported). What is installed, and how it runs, is the same.
    env["PIP_COMPILE"] = "0"
    return bindir / "python", env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools, from the test extra) is already here.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


def test_sdist_and_wheel_build_check_and_carry_what_they_should(dists: Path) -> None:
    sdist = dists / f"privateshare-{VERSION}.tar.gz"
    wheel = dists / f"privateshare-{VERSION}-py3-none-any.whl"
    assert sdist.is_file() and wheel.is_file(), sorted(p.name for p in dists.iterdir())
    checked = run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=dists)
    assert checked.count("PASSED") == 2, checked

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
        "README.md",
        "mkdocs.yml",
        "docs/hooks.md",
        "docs/compatibility.md",
        "tests/conftest.py",
        "tests/test_packaging.py",
        "tests/fixtures/privateshare-hello/pyproject.toml",
        "contrib/privateshare-parquet/pyproject.toml",
        "contrib/privateshare-dlt/tests/test_dlt_sink.py",
        "examples/privateshare-counting/pyproject.toml",
        "benchmarks/pull.py",
        "core/py.typed",
        "plugins/sink_file.py",
    ):
        assert needed in names, f"{needed} is not in the sdist"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        metadata = whl.read(f"privateshare-{VERSION}.dist-info/METADATA").decode()
    assert f"privateshare-{VERSION}.dist-info/licenses/LICENSE" in files
    assert {"privateshare/py.typed", "privateshare/plugins/sink_file.py"} <= files
    assert not [f for f in files if f.startswith(("tests/", "docs/", "contrib/"))]
    assert "License-Expression: Apache-2.0" in metadata
    for label in ("Homepage", "Documentation", "Source", "Changelog", "Issues"):
        assert f"Project-URL: {label}, https://" in metadata, label
    assert "Classifier: Programming Language :: Python :: 3.13" in metadata
    # The long description is the README; on an index page relative links would break.
    assert "](docs/" not in metadata and "](../" not in metadata


def test_the_wheel_in_a_fresh_venv_runs_the_demo_and_contrib_installs_from_a_checkout(
    dists: Path, tmp_path: Path
) -> None:
    python, env = fresh_venv(tmp_path / "venv")
    wheel = dists / f"privateshare-{VERSION}-py3-none-any.whl"
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path, env=env)

    where = run(python, "-c", "import privateshare; print(privateshare.__file__)", cwd=tmp_path)
    assert str(tmp_path / "venv") in where and str(ROOT) not in where  # not the checkout
    assert run("privateshare", "--version", cwd=tmp_path, env=env).strip().endswith(VERSION)

    home = tmp_path / "user"
    home.mkdir()
    out = " ".join(run("privateshare", "demo", "--files", "12", cwd=home, env=env).split())
    assert "12/12 files match the sandbox's ground truth byte for byte" in out, out
    data = home / "privateshare-demo" / "data" / "demo-user"
    delivered = [p for p in data.iterdir() if not p.name.endswith(".metadata.json")]
    assert len(delivered) >= 12, sorted(p.name for p in delivered)
    plugins = run("privateshare", "plugins", "--json", cwd=home, env=env)
    for name in ("file", "s3", "sql", "memory"):
        assert f'"{name}"' in plugins

    # Then the READMEs' "from a checkout" instructions, as written.
    # contrib/privateshare-webhook/README.md: `pip install -e . ./contrib/privateshare-webhook`
    run(python, "-m", "pip", "uninstall", "--yes", "--quiet", "privateshare", cwd=ROOT, env=env)
    pip = (python, "-m", "pip", "install", "--quiet")
    run(*pip, "-e", ".", "./contrib/privateshare-webhook", cwd=ROOT, env=env)
    listed = run("privateshare", "plugins", "--json", cwd=tmp_path, env=env)
    assert '"webhook"' in listed

    # The scaffold's README: `pip install -e <checkout> -e ".[test]"`.
    run(
        "privateshare",
        "plugin",
        "new",
        "vault",
        "--family",
        "sink",
        "--dir",
        ".",
        cwd=tmp_path,
        env=env,
    )
    project = tmp_path / "privateshare-vault"
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e <checkout> -e ".[test]"' in readme
    run(*pip, "-e", ROOT, "-e", ".[test]", cwd=project, env=env)
    listed = run("privateshare", "plugins", "--json", cwd=tmp_path, env=env)
    assert '"vault"' in listed
