"""The Python and shell examples of README.md and docs/ run, so "the docs are true" is tested.

Every fenced ```python and ```sh block is collected. A block runs in a work directory that is
set up as the docs assume a reader's is: a running sandbox (auto-consent), its config as
``privateshare.toml``, a saved token for ``alice``, the repository's ``examples/`` beside it, and
the ``privateshare`` command on ``PATH``. Python blocks run as a script there; sh blocks run with
``bash -e``. Two HTML comments, on the line before a block (blank lines allowed), change that:

- ``<!-- not-run: reason -->``: the block cannot run here (real credentials, a cloud account, a
  person at a browser, a long-running server, an install from the package index, a fragment with
  ``...`` placeholders). The reason is required; such blocks are counted and listed.
- ``<!-- run: pytest -->``: the block is a pytest module; it is written to a file and run with
  pytest (in a fresh process, so the ``pytest11`` plugin loads as for a user).

An unmarked block that fails fails its test: mark it, or fix the doc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "sh")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>not-run|run)\s*:\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str
    mark: str | None  # "not-run" or "run"
    value: str  # the reason, or what to run it with

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def collect(path: Path) -> list[Block]:
    """The python and sh blocks of one page, with the mark on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, lang = fence["indent"], fence["lang"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^{indent}```\s*$", lines[end]):
            end += 1
        if lang in LANGUAGES:
            before = i - 1
            while before >= 0 and not lines[before].strip():
                before -= 1
            mark = MARK.match(lines[before]) if before >= 0 else None
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            blocks.append(
                Block(
                    page=str(path.relative_to(ROOT)),
                    line=i + 1,
                    lang=lang,
                    code="\n".join(body) + "\n",
                    mark=mark["kind"] if mark else None,
                    value=mark["value"] if mark else "",
                )
            )
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in collect(page)]


def test_the_examples_are_found_and_every_skipped_one_says_why() -> None:
    assert len(BLOCKS) >= 20, [b.id for b in BLOCKS]
    not_run = [b for b in BLOCKS if b.mark == "not-run"]
    for block in not_run:
        assert block.value, f"{block.id}: <!-- not-run: ... --> needs a reason"
    runs = {b.value for b in BLOCKS if b.mark == "run"}
    assert runs <= {"pytest"}, f"unknown <!-- run: ... --> values: {runs}"
    print(f"{len(BLOCKS) - len(not_run)} examples run, {len(not_run)} marked not-run:")
    for block in not_run:
        print(f"  {block.id}: {block.value}")


@pytest.fixture(scope="module")
def docs_home(
    privateshare_sandbox_keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A reader's directory: a sandbox's config as privateshare.toml and alice's saved token."""
    from privateshare.flow import Flow
    from privateshare.framework import load
    from privateshare.testing.sandboxed import consent, sandbox_starter, write_sandbox_config

    home = tmp_path_factory.mktemp("docs-home")
    starter = sandbox_starter(privateshare_sandbox_keys, home / ".sandbox")
    start = next(starter)
    sandbox = start(files=12)
    config = write_sandbox_config(sandbox, home)
    shutil.copytree(ROOT / "examples", home / "examples")
    framework = load(config)
    try:
        consent(Flow(framework), "alice")  # saves alice's token, as `privateshare authorize`
    finally:
        framework.close()
    yield home
    next(starter, None)


def environment() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run(block: Block, cwd: Path) -> subprocess.CompletedProcess[str]:
    if block.mark == "run":  # a pytest module
        module = f"test_doc_{re.sub(r'[^a-z0-9]+', '_', block.id.lower())}.py"
        (cwd / module).write_text(block.code, encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "no:xdist", "-o", "addopts=", module]
    elif block.lang == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    return subprocess.run(
        command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mark != "not-run"], ids=lambda b: b.id)
def test_example_runs(block: Block, docs_home: Path) -> None:
    result = run(block, docs_home)
    assert result.returncode == 0, (
        f"the example at {block.id} failed (exit {result.returncode}); fix the doc, or mark the "
        f"block <!-- not-run: reason --> if it cannot run here:\n"
        f"{block.code}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n"
        f"{result.stderr[-3000:]}"
    )
