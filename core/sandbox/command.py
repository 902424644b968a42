"""The ``privateshare sandbox`` command (attached to the main CLI as ``sandbox_command``).

Also runnable alone: ``python -m privateshare.sandbox``.
"""

from __future__ import annotations

import errno
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .settings import ALL_ENDPOINTS, DEFAULT_REDIRECT_URIS, FAULT_ENDPOINTS, SandboxSettings

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class ByteSize(click.ParamType):
    """``1048576``, ``512K``, ``256M`` or ``2G``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if match is None:
            self.fail(f"{value!r} is not a size like 1048576, 512K, 256M or 2G", param, ctx)
        return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _rate(name: str, help_text: str) -> Any:
    return click.option(
        name, type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, help=help_text
    )


def settings_from_options(options: dict[str, Any]) -> SandboxSettings:
    """The settings the command's options name: each option is the field of its name."""
    # Repeatable options: none given means the field's default, not an empty set.
    given = {k: v for k, v in options.items() if v or k not in ("redirect_uris", "fault_endpoints")}
    return SandboxSettings(**given)


@click.command("sandbox")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port on 127.0.0.1; 0 picks any free port.",
)
@click.option(
    "--host",
    type=click.Choice(["127.0.0.1"]),
    default="127.0.0.1",
    show_default=True,
    help="Listen address (loopback only).",
)
@click.option(
    "--dir",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("privateshare-sandbox"),
    show_default=True,
    help="State directory: keys, ids and the generated privateshare.toml files.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the synthetic library and of fault decisions.",
)
@click.option(
    "--files",
    type=click.IntRange(0),
    default=24,
    show_default=True,
    help="Number of ordinary files in the library.",
)
@click.option(
    "--large-files",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Number of large (streamed) files.",
)
@click.option(
    "--large-file-size",
    type=ByteSize(),
    default="256M",
    show_default=True,
    help="Size of each large file.",
)
@click.option(
    "--size-distribution",
    default="realistic",
    show_default=True,
    help="'realistic' or 'fixed:<bytes>'.",
)
@click.option(
    "--updated-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Share of files that get a second, later version.",
)
@click.option(
    "--partial/--no-partial",
    default=False,
    show_default=True,
    help="One account ends 'partial' with ServiceAuthorizationError (511, reauth).",
)
@click.option(
    "--nonpositive-dates",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Hostile library: this many files are listed with updatedDate 0 or negative.",
)
@click.option(
    "--unsafe-names/--no-unsafe-names",
    default=False,
    show_default=True,
    help="Hostile library: add entries named '', '..', 'a/../../x', '/tmp/x', a backslash, "
    "a control character, a 4 KiB path.",
)
@click.option(
    "--auto-consent/--no-auto-consent",
    default=True,
    show_default=True,
    help="Skip the consent page: the authorize link redirects with success at once.",
)
@click.option(
    "--pending-polls",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="File-list polls answered 'pending' after consent.",
)
@click.option(
    "--running-polls",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="File-list polls answered 'running' before the final list.",
)
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Allowed redirect URI (repeatable). Default: " + ", ".join(DEFAULT_REDIRECT_URIS),
)
@click.option(
    "--access-token-lifetime",
    type=click.IntRange(1),
    default=3600,
    show_default=True,
    help="Seconds.",
)
@click.option(
    "--refresh-token-lifetime",
    type=click.IntRange(1),
    default=30 * 24 * 3600,
    show_default=True,
    help="Seconds.",
)
@click.option(
    "--access-token-max-uses",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="An access token expires after this many uses (0 = no limit).",
)
@click.option(
    "--revoke-access-on-refresh/--no-revoke-access-on-refresh",
    default=False,
    show_default=True,
    help="Refreshing also kills the old access token.",
)
@click.option(
    "--session-lifetime",
    type=click.IntRange(1),
    default=900,
    show_default=True,
    help="Seconds a read session lives.",
)
@click.option(
    "--code-lifetime",
    type=click.IntRange(1),
    default=600,
    show_default=True,
    help="Seconds a pre-authorization, reference or authorization code lives.",
)
@click.option(
    "--timestamp-window",
    type=click.FloatRange(0.0),
    default=300.0,
    show_default=True,
    help="Allowed request JWT timestamp skew, seconds.",
)
@click.option(
    "--hold-jwks",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Leave the Nth jwks/oauth request unanswered until its client goes away (0 = never).",
)
@click.option(
    "--sdk-status",
    default="",
    help="API v1.5: send x-digi-sdk-status with this value (e.g. deprecated); "
    "'unsupported' also refuses v1.5 sessions with SDKVersionInvalid.",
)
@click.option("--sdk-status-message", default="", help="API v1.5: the x-digi-sdk-status-message.")
@_rate("--error-rate", "Share of requests answered 500/502/503.")
@_rate("--reset-rate", "Share of requests whose connection is closed before answering.")
@_rate("--truncate-rate", "Share of responses cut short after the headers.")
@_rate("--corrupt-rate", "Share of file downloads with one ciphertext byte flipped.")
@_rate("--bad-metadata-rate", "Share of file downloads with missing or malformed x-metadata.")
@click.option(
    "--latency",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    help="Seconds added before every answer.",
)
@click.option(
    "--latency-jitter",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    help="Plus up to this many seconds, seeded.",
)
@click.option(
    "--fault-endpoint",
    "fault_endpoints",
    multiple=True,
    type=click.Choice([*sorted(FAULT_ENDPOINTS), ALL_ENDPOINTS]),
    help="Endpoint kinds faults apply to (repeatable; 'all' for every one). "
    "Default: list, file, accounts.",
)
@click.option("--fault-seed", type=int, default=None, help="Seed for faults (default: --seed).")
@click.option("--verbose", "-v", is_flag=True, help="Log every request to stderr.")
def sandbox_command(state_dir: Path, verbose: bool, **options: Any) -> None:
    """Run a local emulator of the digi.me Public API (v1.7 and v1.5) on 127.0.0.1."""
    from .server import Sandbox

    try:
        settings = settings_from_options(options)
        sandbox = Sandbox(settings, state_dir=state_dir, verbose=verbose).start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            port = options.get("port")
            raise click.ClickException(
                f"port {port} on 127.0.0.1 is already in use (another sandbox?); stop what "
                "listens there, choose another --port, or pass --port 0 for any free port"
            ) from exc
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Before anything is printed: a supervisor may stop us as soon as it reads the URLs.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        click.echo(f"digi.me sandbox listening on {sandbox.origin}")
        click.echo(f"  base URL:       {sandbox.base_url}")
        click.echo(f"  onboard URL:    {sandbox.onboard_url}")
        click.echo(f"  v1.5 base URL:  {sandbox.base_url_v15}")
        click.echo(f"  application id: {sandbox.application_id}")
        for name in ("ongoing", "oneoff"):
            contract = sandbox.contract(name)
            click.echo(f"  {name:<8} contract {contract.contract_id}")
            click.echo(f"           config   {sandbox.config_path(name).resolve()}")
            click.echo(f"           v1.5     {sandbox.config_path(name, 'v1.5').resolve()}")
            click.echo(f"           key      {sandbox.key_path(name).resolve()}")
        click.echo(f"  ground truth:   {sandbox.origin}/_sandbox/ground-truth")
        click.echo(f"  stats:          {sandbox.origin}/_sandbox/stats")
        click.echo(f"  fault log:      {sandbox.origin}/_sandbox/fault-log")
        click.echo("Press Ctrl+C to stop.")
        sys.stdout.flush()
        sandbox.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        click.echo("sandbox stopped")


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``python -m privateshare.sandbox``."""
    sandbox_command.main(args=argv, prog_name="privateshare sandbox")
