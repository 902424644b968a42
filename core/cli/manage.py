"""``accounts``, ``services``, ``contract``: what a user shared, can onboard, and what we may read.

Thin commands over :class:`privateshare.PrivateShare`'s discovery and account calls; API v1.5
has none of the calls beyond listing accounts, and says so (exit 2) with what to do instead.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec

from .options import config_option, json_option, open_flow


def _dump(value: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


@click.group("accounts", invoke_without_command=True)
@click.option("--user", "user_id", help="The user whose accounts to list.")
@config_option
@json_option
@click.pass_context
def accounts_group(
    ctx: click.Context, user_id: str | None, config_path: Path, as_json: bool
) -> None:
    """List the source accounts a user shared; delete one or get its revoke URL."""
    if ctx.invoked_subcommand is not None:
        return
    if not user_id:
        raise click.UsageError("give --user ID (or a subcommand: delete, revoke-url)")
    fw, flow = open_flow(config_path)
    with fw:
        accounts = flow.accounts(user_id)
    if as_json:
        _dump(accounts)
        return
    if not accounts:
        click.echo(f"user {user_id} has shared no accounts", err=True)
    for account in accounts:
        click.echo(
            f"{account.id}  {account.service_group_name}/{account.service_type_name}  "
            f"{account.type}  {account.username or ''}".rstrip()
        )


@accounts_group.command("delete")
@click.option("--user", "user_id", required=True)
@click.option("--account", "account_id", required=True, help="An id from `accounts --user`.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
def delete_account_command(user_id: str, account_id: str, yes: bool, config_path: Path) -> None:
    """Delete one of a user's accounts at digi.me; its files leave later sessions."""
    if not yes:
        click.confirm(f"Delete account {account_id} of user {user_id} at digi.me?", abort=True)
    fw, _flow = open_flow(config_path)
    with fw:
        fw.delete_account(user_id, account_id)
    click.echo(f"account {account_id} of user {user_id} deleted")


@accounts_group.command("revoke-url")
@click.option("--user", "user_id", required=True)
@click.option("--account", "account_id", required=True, help="An id from `accounts --user`.")
@click.option("--redirect-uri", help="Where the user returns (default: [digime] redirect_uri).")
@config_option
@json_option
def revoke_url_command(
    user_id: str, account_id: str, redirect_uri: str | None, config_path: Path, as_json: bool
) -> None:
    """Print the URL where the user withdraws one account's permission (a one-time URL)."""
    fw, _flow = open_flow(config_path)
    with fw:
        url = fw.revoke_url(user_id, account_id, redirect_uri=redirect_uri)
    if as_json:
        click.echo(json.dumps({"user": user_id, "account": account_id, "url": url.location}))
    else:
        click.echo(url.location)


def _ids(values: Sequence[str], known: Sequence[Any], what: str) -> tuple[int, ...]:
    """Ids from ids, names or codes (any case): ``--country GB`` and ``--country 3`` both work."""
    ids = []
    for value in values:
        if value.strip().isdigit():
            ids.append(int(value))
            continue
        wanted = value.strip().casefold()
        match = [
            k.id
            for k in known
            if wanted in (k.name.casefold(), getattr(k, "code", "").casefold())
            or wanted == getattr(k, "reference", "").casefold()
        ]
        if not match:
            names = ", ".join(sorted(k.name for k in known)[:20])
            raise click.BadParameter(
                f"no {what} is called {value!r}; give an id or one of: {names}",
                param_hint=f"--{what}",
            )
        ids.extend(match)
    return tuple(ids)


@click.command("services")
@click.option("--search", help="Free text; every word must match.")
@click.option("--country", multiple=True, help="Country id, name or code (repeatable).")
@click.option("--category", multiple=True, help="Category id or name (repeatable).")
@click.option("--platform", multiple=True, help="Platform id or name (repeatable).")
@config_option
@json_option
def services_command(
    search: str | None,
    country: tuple[str, ...],
    category: tuple[str, ...],
    platform: tuple[str, ...],
    config_path: Path,
    as_json: bool,
) -> None:
    """List the services a user can onboard (digi.me's discovery catalogue)."""
    fw, _flow = open_flow(config_path)
    with fw:
        countries = _ids(country, fw.countries(), "country") if country else ()
        categories = _ids(category, fw.categories(), "category") if category else ()
        platforms = _ids(platform, fw.platforms(), "platform") if platform else ()
        sources = fw.all_sources(
            search=search, country=countries, category=categories, platform=platforms
        )
    if as_json:
        _dump(sources)
        return
    if not sources:
        click.echo("no service matches", err=True)
    for source in sources:
        where = ", ".join(c.code or c.name for c in source.countries) or "all countries"
        kinds = ", ".join(c.name for c in source.categories)
        click.echo(f"{source.id}  {source.name}  [{kinds}]  ({where})")


@click.command("contract")
@config_option
@json_option
def contract_command(config_path: Path, as_json: bool) -> None:
    """Show what the configured contract allows: type, time range, data asked for."""
    fw, _flow = open_flow(config_path)
    with fw:
        details = fw.contract()
    if as_json:
        _dump(details)
        return
    click.echo(f"contract {details.id} of {details.application.name or details.application.id}")
    click.echo(f"  access: {'read' if details.access_type == 'r' else details.access_type}")
    if details.expiration_date:
        expires = _dt.datetime.fromtimestamp(details.expiration_date / 1000, _dt.UTC)
        click.echo(f"  expires: {expires:%Y-%m-%d %H:%M} UTC")
    terms = details.terms
    if terms is not None:
        click.echo(f"  type: {terms.share_type or '-'}")
        if terms.purpose:
            click.echo(f"  purpose: {terms.purpose}")
        ranges = "; ".join(json.dumps(r, sort_keys=True) for r in terms.time_ranges) or "all"
        click.echo(f"  time range: {ranges}")
        groups = ", ".join(str(g.get("name") or g.get("id")) for g in terms.service_groups)
        click.echo(f"  data asked for: {groups or '-'}")
