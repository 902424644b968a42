"""Assemble the configured plugins into one object: the library's entry point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, load_config, parse_toml
from .hooks.calls import Hooks
from .hooks.loading import BrokenPlugin, PluginSet
from .models import (
    Account,
    Category,
    ContractDetails,
    Country,
    Platform,
    RevokeUrl,
    Source,
    SourceQuery,
    SourcesPage,
)

if TYPE_CHECKING:
    from .flow import Flow
    from .keys import KeyHandle
    from .status import UserStatus


class PrivateShare:
    """The framework, assembled from a config: plugins loaded, hooks ready.

    Build it with :func:`privateshare.load`. ``hooks`` is the typed facade the
    flow calls; ``key_handle()`` asks the key store for the contract key.
    """

    def __init__(
        self,
        config: Config,
        *,
        strict: bool | None = None,
        extra_plugins: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        plugin_set = PluginSet(config, strict=strict, key_handle=self.key_handle)
        plugin_set.load(dict(extra_plugins or {}))
        self.pm = plugin_set.pm
        self.plugins = plugin_set.instances
        self.broken: list[BrokenPlugin] = plugin_set.broken
        broken_sinks = {b.name: b.error for b in self.broken if b.family == "sinks"}
        self.hooks = Hooks(self.pm, strict=plugin_set.strict, broken_sinks=broken_sinks)
        self._flow: Flow | None = None

    def key_handle(self) -> KeyHandle:
        """The contract key, from the key store (which loads it once: one cache, its own)."""
        return self.hooks.key_handle()

    @property
    def flow(self) -> Flow:
        """The Private Share flow over this framework (one client, built on first use)."""
        if self._flow is None:
            from .flow import Flow  # the flow builds on this module

            self._flow = Flow(self)
        return self._flow

    # --- discovery: what a user can onboard (application-level, no user) ------------

    def sources(
        self,
        *,
        search: str | None = None,
        country: Sequence[int] = (),
        category: Sequence[int] = (),
        platform: Sequence[int] = (),
        ids: Sequence[int] = (),
        names: Sequence[str] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> SourcesPage:
        """One page of the sources a user can onboard; ``.total`` counts all matches.

        ``search`` is free text; ``country``/``category``/``platform`` take ids from
        :meth:`countries`, :meth:`categories`, :meth:`platforms`. A source's ``id`` is
        what ``authorize`` takes as the service to onboard.
        """
        return self.flow.sources(
            _query(search, country, category, platform, ids, names, limit, offset)
        )

    def all_sources(
        self,
        *,
        search: str | None = None,
        country: Sequence[int] = (),
        category: Sequence[int] = (),
        platform: Sequence[int] = (),
        ids: Sequence[int] = (),
        names: Sequence[str] = (),
    ) -> list[Source]:
        """Every source that matches, all pages (see :meth:`sources`)."""
        query = _query(search, country, category, platform, ids, names, None, 0)
        return self.flow.all_sources(query)

    def countries(self) -> list[Country]:
        return self.flow.countries()

    def platforms(self) -> list[Platform]:
        return self.flow.platforms()

    def categories(self) -> list[Category]:
        return self.flow.categories()

    # --- one user's accounts, and the contract ---------------------------------------

    def accounts(self, user_id: str) -> list[Account]:
        """The accounts the user shared (their ids are what the calls below take)."""
        return self.flow.accounts(user_id)

    def delete_account(self, user_id: str, account_id: str) -> None:
        """Delete one of the user's accounts at digi.me; its files leave later sessions."""
        self.flow.delete_account(user_id, account_id)

    def revoke_url(
        self, user_id: str, account_id: str, *, redirect_uri: str | None = None
    ) -> RevokeUrl:
        """Where the user withdraws one account's permission (then returns to
        ``redirect_uri``, default ``[digime] redirect_uri``, with ``result=success|failed``)."""
        return self.flow.revoke_url(user_id, account_id, redirect_uri=redirect_uri)

    def contract(self) -> ContractDetails:
        """What the configured contract allows: its type, time range and data request."""
        return self.flow.contract()

    def status(self, user_ids: list[str] | None = None) -> list[UserStatus]:
        """Per user (every user with a token, or ``user_ids``): token state and expiry, the
        last run and the accounts needing reauthorization; read locally, nothing is sent."""
        from .status import user_statuses

        return user_statuses(self, user_ids)

    def close(self) -> None:
        for name in list(self.plugins):
            close = getattr(self.plugins[name], "close", None)
            if callable(close):
                close()

    def __enter__(self) -> PrivateShare:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(f"{n}={type(p).__name__}" for n, p in self.plugins.items())
        return f"PrivateShare({self.config.source}: {names})"


def _query(
    search: str | None,
    country: Sequence[int],
    category: Sequence[int],
    platform: Sequence[int],
    ids: Sequence[int],
    names: Sequence[str],
    limit: int | None,
    offset: int,
) -> SourceQuery:
    return SourceQuery(
        search=search or None,
        country=tuple(country),
        category=tuple(category),
        platform=tuple(platform),
        ids=tuple(ids),
        names=tuple(names),
        limit=limit,
        offset=offset,
    )


def load(
    source: str | Path | Mapping[str, Any] = "privateshare.toml",
    *,
    base_dir: str | Path | None = None,
    strict: bool | None = None,
    extra_plugins: Mapping[str, Any] | None = None,
) -> PrivateShare:
    """Build the framework from a TOML file path or an already-parsed dict.

    ``base_dir`` resolves relative paths (default: the file's directory, or the
    current directory for a dict). ``extra_plugins`` registers objects with
    hook implementations, by name, as if listed in ``[plugins] modules``.
    """
    config = load_config(source, Path(base_dir) if base_dir else None)
    return PrivateShare(config, strict=strict, extra_plugins=extra_plugins)


def loads(
    text: str,
    *,
    base_dir: str | Path | None = None,
    strict: bool | None = None,
    extra_plugins: Mapping[str, Any] | None = None,
) -> PrivateShare:
    """Build the framework from TOML text."""
    return load(
        parse_toml(text),
        base_dir=base_dir or Path.cwd(),
        strict=strict,
        extra_plugins=extra_plugins,
    )
