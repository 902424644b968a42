"""``privateshare demo``: the whole flow against an in-process sandbox, checked byte for byte.

``--api v1.5`` runs the original Private Share generation (protocol.md, v1.5)
instead of v1.7: the same four steps of the guide, each a separate call there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import read_toml
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models import RunSummary

DEMO_USER = "demo-user"


def _step(text: str) -> None:
    click.echo(text, err=True)


def run_demo(
    directory: Path,
    *,
    files: int = 24,
    seed: int = 1,
    api: str = "v1.7",
    extra_sinks: Mapping[str, Any] | None = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """Run the four steps on the ``api`` profile; return the summary and the check per file.

    Built on the testing kit's sandbox helpers (:mod:`privateshare.testing.sandboxed`),
    with a sandbox that takes a few polls, as the real service does. ``extra_sinks``
    adds ``[sinks.<name>]`` tables beside the demo's file sink; their relative paths
    resolve against ``directory``.
    """
    from ..flow import Flow
    from ..framework import load
    from ..sandbox import Sandbox, SandboxSettings
    from ..testing.sandboxed import consent_as_browser, sha256_tree, standalone_config

    directory = directory.resolve()
    settings = SandboxSettings(
        files=files, seed=seed, auto_consent=True, pending_polls=1, running_polls=2
    )
    with Sandbox(settings, state_dir=directory / "sandbox") as sandbox:
        # Tokens (and checkpoints) per profile: a v1.7 token means nothing to v1.5.
        tokens = "tokens" if api == "v1.7" else f"tokens-{api}"
        sinks = {"local": {"type": "file", "root": str(directory / "data")}, **(extra_sinks or {})}
        raw = standalone_config(
            sandbox,
            directory,
            api=api,
            tokens={"type": "file", "path": str(directory / tokens)},
            sinks=sinks,
            pull={"poll_interval": 0.2},
        )
        with load(raw, base_dir=directory) as fw:
            flow = Flow(fw)
            _step(f"API {api}; 1. credentials: contract {fw.config.digime.contract_id}")
            # 2. establish a session (v1.5: its own call) and 3. consent:
            consent = flow.start_consent(DEMO_USER)
            if consent.app_url:
                _step("2. session established (POST permission-access/session)")
                _step(f"3. consent in the digi.me app: {consent.app_url.split('?')[0]}?…")
            _step(f"   consent URL: {consent.url.split('?')[0]}?… (opened as a browser would)")
            token, session = flow.finish_consent(consent, consent_as_browser(consent.url))
            _step("   consent given; token received (POST oauth/token) and saved")
            # 4. receive the data into every sink:
            _step("4. reading the session's files")
            summary = flow.pull(DEMO_USER, token=token, session=session)
        truth = sandbox.ground_truth()
    folder = directory / "data" / DEMO_USER
    arrived = sha256_tree(folder)
    check = {}
    for name, expected in sorted(truth.items()):
        path = folder / name
        check[name] = {
            "path": str(path),
            "size": path.stat().st_size if path.is_file() else None,
            "matches": arrived.get(name) == expected,
        }
    return summary, check


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default="privateshare-demo",
    show_default=True,
    help="Where to put everything.",
)
@click.option("--files", default=24, show_default=True, help="Files in the synthetic library.")
@click.option("--seed", default=1, show_default=True, help="Seed of the synthetic library.")
@click.option(
    "--api",
    type=click.Choice(["v1.7", "v1.5"]),
    default="v1.7",
    show_default=True,
    help="Protocol profile: v1.7 (current) or v1.5 (the original Private Share).",
)
@click.option(
    "--sinks",
    "sinks_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A TOML file of [sinks.<name>] tables to deliver to as well (paths relative to --dir).",
)
def demo_command(directory: Path, files: int, seed: int, api: str, sinks_file: Path | None) -> None:
    """Run the whole flow against a local sandbox and show what arrived."""
    from rich.console import Console
    from rich.table import Table

    extra: dict[str, Any] = {}
    if sinks_file is not None:
        extra = read_toml(sinks_file).get("sinks", {})
        if not isinstance(extra, dict) or not extra:
            raise ConfigError(
                f"{sinks_file} has no [sinks.<name>] tables; add one, for example "
                '[sinks.lake] type = "parquet" root = "lake"'
            )
    summary, check = run_demo(directory, files=files, seed=seed, api=api, extra_sinks=extra)
    console = Console()
    table = Table(title=f"{directory}/data/{DEMO_USER}")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("matches the sandbox", justify="center")
    for name, row in check.items():
        table.add_row(name, str(row["size"] or "-"), "yes" if row["matches"] else "[red]NO[/red]")
    console.print(table)
    matched = sum(row["matches"] for row in check.values())
    console.print(
        f"{summary.files_delivered} files delivered ({summary.bytes_delivered} bytes), "
        f"{summary.files_skipped} already there; library {summary.final_state} (API {api}); "
        f"{matched}/{len(check)} files match the sandbox's ground truth byte for byte."
    )
    if matched != len(check) or summary.files_failed:
        raise SystemExit(1)
