"""One exit-code table: each error class maps to its code, and docs/cli.md shows the same."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import privateshare
from privateshare.callback import CallbackTimeout
from privateshare.cli import ExitCode, exit_code_for, main
from privateshare.cli.exitcodes import EXIT_CODES
from privateshare.errors import OutputExists, SecretUnavailable
from privateshare.flow import ConsentDenied
from privateshare.sandbox import Sandbox
from privateshare.sandbox.messages import Request, Response
from privateshare.testing.sandboxed import write_sandbox_config

from ..helpers import cli, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (privateshare.ConfigError("x"), ExitCode.CONFIG),
        (SecretUnavailable("x"), ExitCode.SECRET),
        (privateshare.KeyStoreError("x"), ExitCode.SECRET),
        (privateshare.AuthorizationRequired("x"), ExitCode.AUTHORIZATION),
        (ConsentDenied("USER_CANCEL"), ExitCode.AUTHORIZATION),
        (CallbackTimeout("x"), ExitCode.TIMEOUT),
        (privateshare.ServerError("x"), ExitCode.SERVER),
        (privateshare.TransportError("x"), ExitCode.SERVER),
        (privateshare.PluginError("x"), ExitCode.PLUGIN),
        (privateshare.SinkError("x"), ExitCode.PLUGIN),
        (privateshare.TokenStoreError("x"), ExitCode.PLUGIN),
        (OutputExists("x"), ExitCode.CANT_CREATE),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (ZeroDivisionError(), ExitCode.INTERNAL),
    ],
)
def test_each_error_class_has_its_code(exc: BaseException, code: ExitCode) -> None:
    assert exit_code_for(exc) == code


def test_docs_show_the_table() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \|$", section, re.M)
    documented = {int(code): (meaning, todo) for code, meaning, todo in rows if code.isdigit()}
    table = {int(code): row for code, row in EXIT_CODES.items()}
    assert {c: documented[c] for c in table if c in documented} == table
    assert set(table) <= set(documented)
    assert set(ExitCode) == set(EXIT_CODES)


def test_an_internal_error_exits_70_and_says_it_is_a_bug() -> None:
    @click.command("explode")
    def explode() -> None:
        raise ZeroDivisionError("boom")

    main.add_command(explode)
    try:
        result = CliRunner().invoke(main, ["explode"])
    finally:
        main.commands.pop("explode")
    assert result.exit_code == ExitCode.INTERNAL
    assert "internal error: ZeroDivisionError: boom; this is a bug" in result.stderr


def test_a_missing_secret_variable_and_a_missing_key_file(
    tmp_path: Path, privateshare_sandbox: Callable[..., Sandbox], privateshare_test_key
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"  # no clash with parallel runs
    sandbox = privateshare_sandbox(redirect_uris=(redirect,))
    key = privateshare_test_key.write(tmp_path / "contract.pem")
    config = write_sandbox_config(
        sandbox,
        tmp_path,
        keys={"type": "file", "path": str(key), "password": {"env": "PS_TEST_UNSET_PASSWORD"}},
        digime={"redirect_uri": redirect},
    )
    env = {k: v for k, v in os.environ.items() if k != "PS_TEST_UNSET_PASSWORD"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "privateshare",
            "authorize",
            "-c",
            str(config),
            "--user",
            "u",
            "--no-browser",
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == ExitCode.SECRET, result.stderr
    assert "PS_TEST_UNSET_PASSWORD" in result.stderr and "is not set" in result.stderr
    key.unlink()
    config = write_sandbox_config(
        sandbox,
        tmp_path,
        keys={"type": "file", "path": str(key)},
        digime={"redirect_uri": redirect},
    )
    result = cli(
        "authorize", "-c", str(config), "--user", "u", "--no-browser", "--timeout", "5", timeout=120
    )
    assert result.returncode == ExitCode.SECRET, result.stderr
    assert str(key) in result.stderr


def test_an_authorize_timeout_exits_7(
    tmp_path: Path, privateshare_sandbox: Callable[..., Sandbox]
) -> None:
    redirect = f"http://127.0.0.1:{free_port()}/callback"  # no clash with parallel runs
    sandbox = privateshare_sandbox(redirect_uris=(redirect,))
    config = write_sandbox_config(sandbox, tmp_path, digime={"redirect_uri": redirect})
    result = cli(
        "authorize", "-c", str(config), "--user", "u", "--no-browser", "--timeout", "1", timeout=120
    )
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert "no consent callback arrived within 1s" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_pull_exits_130_with_nothing_half_written(
    tmp_path: Path, privateshare_sandbox: Callable[..., Sandbox], signum: int
) -> None:
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent, sandbox_framework, sha256_tree

    sandbox = privateshare_sandbox(files=80, latency=0.05)
    with sandbox_framework(sandbox, tmp_path) as fw:
        consent(Flow(fw), "ann")
    config = write_sandbox_config(sandbox, tmp_path)
    # Work remains when the signal arrives, by construction: after the first file's answer,
    # the sandbox holds every other file's answer until the signal has been sent, so the
    # pull cannot finish first, however slow a loaded machine is to send the signal. (The
    # answers are then released: an interrupted pull finishes the files in flight.)
    handle, answered, signalled = sandbox.app.handle, threading.Lock(), threading.Event()
    first_sent = False

    def gated(request: Request) -> Response:
        nonlocal first_sent
        response = handle(request)
        if response.status == 200 and sandbox.app.route(request)[0].kind == "file":
            with answered:
                wait, first_sent = first_sent, True
            if wait:
                signalled.wait(120)
        return response

    sandbox.app.handle = gated  # type: ignore[method-assign]
    # A shell without job control starts background commands with SIGINT ignored, and an
    # ignored signal stays ignored across exec: the pull would never see the Ctrl-C. A
    # handled one is reset to the default in the child, which Python then handles.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "privateshare", "pull", "-c", str(config), "--user", "ann"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert proc.stderr is not None
    seen = []
    try:
        for line in proc.stderr:  # wait for the first delivered file, then interrupt
            seen.append(line)
            if "delivered" in line:
                break
        proc.send_signal(signum)
    finally:
        signalled.set()
    _out, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "user ann: delivered" in err
    assert "interrupted: nothing was half-written" in err
    assert "Traceback" not in err
    folder = tmp_path / "data" / "ann"
    arrived = sha256_tree(folder)
    truth = sandbox.ground_truth()
    assert arrived and len(arrived) < len(truth)
    assert all(truth[name] == digest for name, digest in arrived.items())
    assert not [p for p in folder.rglob("*") if "privateshare-tmp" in p.name]
