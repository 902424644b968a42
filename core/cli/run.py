"""The commands that run the flow: authorize, pull, accounts, users, delete-user."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path

import click

from .options import config_option, exit_for, json_option, open_flow, with_config
from .report import Reporter


@click.command("authorize")
@click.option("--user", "user_id", required=True, help="Your own identifier for the user.")
@click.option("--once", is_flag=True, help="One-off consent: read the data now, keep no token.")
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for consent.")
@click.option(
    "--service",
    "service_id",
    type=int,
    default=None,
    help="Open the consent on this service (an id from `privateshare services`).",
)
@click.option(
    "--enqueue/--no-enqueue",
    default=None,
    help="Send the first pull to the workers ([scale] enqueue_on_authorize by default).",
)
@config_option
@json_option
def authorize_command(
    user_id: str,
    once: bool,
    no_browser: bool,
    timeout: float,
    service_id: int | None,
    enqueue: bool | None,
    config_path: Path,
    as_json: bool,
) -> None:
    """Get a user's consent; keep the token (ongoing) or read the data now (--once)."""
    fw, flow = open_flow(config_path)
    with fw:
        redirect_uri = fw.config.digime.redirect_uri
        from ..callback import CallbackServer

        with CallbackServer(redirect_uri) as server:
            consent = flow.start_consent(user_id, once=once, service_id=service_id)
            in_browser = consent.url.startswith(("http://", "https://"))
            if in_browser:
                click.echo("Open this URL to give consent:", err=True)
            else:  # API v1.5 ongoing consent against the real service
                click.echo(
                    "Open this link on a device with the digi.me app to give consent "
                    "(API v1.5 ongoing consent happens in the app):",
                    err=True,
                )
            click.echo(consent.url)
            if consent.app_url and consent.app_url != consent.url:
                click.echo(f"(or, in the digi.me app: {consent.app_url})", err=True)
            if in_browser and not no_browser:
                webbrowser.open(consent.url)
            click.echo(f"Waiting for the callback on {redirect_uri} ...", err=True)
            params = server.wait(timeout)
        token, session = flow.finish_consent(consent, params)
        from ..scale.hooks import after_consent

        if not once and after_consent(fw, user_id, enqueue):
            click.echo(f"The first pull of user {user_id} is queued for the workers.", err=True)
            return
        if not once:
            click.echo(
                f"Consent saved for user {user_id}. Pull the data with: "
                f"{with_config('pull', config_path)} --user {user_id}",
                err=True,
            )
            return
        reporter = Reporter(as_json=as_json)
        with reporter.live(f"reading {user_id}"):
            summary = flow.pull(
                user_id, token=token, session=session, save_token=False, progress=reporter
            )
        reporter.summaries([summary])
        exit_for([summary])


@click.command("reauthorize")
@click.option("--user", "user_id", required=True, help="The user, as given to authorize.")
@click.option(
    "--account",
    "account_id",
    default=None,
    help="Reconnect this account (pull lists the ones that need it); without it, the user "
    "consents again and a new token is saved.",
)
@click.option(
    "--service",
    "service_id",
    type=int,
    default=None,
    help="Instead: let the user add this service (an id from `privateshare services`) to "
    "their consent.",
)
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for consent.")
@config_option
def reauthorize_command(
    user_id: str,
    account_id: str | None,
    service_id: int | None,
    no_browser: bool,
    timeout: float,
    config_path: Path,
) -> None:
    """Reconnect a user's account that needs reauthorizing, or renew the user's consent."""
    from ..callback import CallbackServer

    if account_id and service_id is not None:
        raise click.UsageError("give --account (reconnect an account) or --service (add one)")
    fw, flow = open_flow(config_path)
    with fw:
        redirect_uri = fw.config.digime.redirect_uri
        with CallbackServer(redirect_uri) as server:
            if service_id is not None:
                consent = flow.start_onboarding(
                    user_id, service_id=service_id, redirect_uri=redirect_uri
                )
                what = f"add service {service_id}"
                done = f"Service {service_id} added for user {user_id}"
            else:
                consent = flow.start_reauthorize(
                    user_id, account_id=account_id, redirect_uri=redirect_uri
                )
                what = f"reconnect account {account_id}" if account_id else "consent again"
                done = f"Account {account_id} of user {user_id} reconnected"
            click.echo(f"Open this URL to {what}:", err=True)
            click.echo(consent.url)
            if not no_browser:
                webbrowser.open(consent.url)
            click.echo(f"Waiting for the callback on {redirect_uri} ...", err=True)
            params = server.wait(timeout)
        token, _session = flow.finish_consent(consent, params)
    pull = f"{with_config('pull', config_path)} --user {user_id}"
    if token is None:
        click.echo(f"{done}; the next pull reads it: {pull}", err=True)
    else:
        click.echo(f"Consent renewed for user {user_id}. Pull the data with: {pull}", err=True)


@click.command("pull")
@click.option("--user", "user_id", help="Pull this user.")
@click.option("--all-users", is_flag=True, help="Pull every user with a saved token.")
@click.option("--full", is_flag=True, help="Deliver every file to every sink again.")
@click.option("--since", help="Only files updated at or after DATE (ISO date/time, or epoch ms).")
@config_option
@json_option
def pull_command(
    user_id: str | None,
    all_users: bool,
    config_path: Path,
    as_json: bool,
    full: bool = False,
    since: str | None = None,
) -> None:
    """Receive new and updated files of a user (or all users) into every sink."""
    from ..checkpoint import parse_since

    if bool(user_id) == all_users:
        raise click.UsageError("give exactly one of --user ID or --all-users")
    try:
        since_ms = None if since is None else parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    fw, flow = open_flow(config_path)
    reporter = Reporter(as_json=as_json)
    with fw, reporter.live("pulling"):
        if all_users:
            summaries = flow.pull_all(progress=reporter, full=full, since=since_ms)
        else:
            assert user_id is not None
            summaries = [flow.pull(user_id, progress=reporter, full=full, since=since_ms)]
    reporter.summaries(summaries, config_path=config_path)
    exit_for(summaries)


@click.command("users")
@config_option
@json_option
def users_command(config_path: Path, as_json: bool) -> None:
    """List the users that have a saved token."""
    from ..framework import load

    fw = load(config_path)
    with fw:
        users = fw.hooks.token_users()
    if as_json:
        click.echo(json.dumps(users))
    elif users:
        click.echo("\n".join(users))
    else:
        click.echo(
            f"no users have a saved token yet; add one with: "
            f"{with_config('authorize', config_path)} --user ID",
            err=True,
        )


@click.command("delete-user")
@click.option("--user", "user_id", required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
def delete_user_command(user_id: str, yes: bool, config_path: Path) -> None:
    """Delete a user at digi.me and forget their token and checkpoint here."""
    if not yes:
        click.confirm(f"Delete user {user_id} at digi.me and locally?", abort=True)
    fw, flow = open_flow(config_path)
    with fw:
        deleted = flow.delete_user(user_id)
    click.echo(f"user {user_id} deleted" if deleted else f"user {user_id} has no saved token")


COMMANDS = [
    authorize_command,
    reauthorize_command,
    pull_command,
    users_command,
    delete_user_command,
]
