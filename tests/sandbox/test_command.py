"""``privateshare sandbox``: each option is the settings field of its name."""

from __future__ import annotations

import dataclasses

from privateshare.sandbox.command import sandbox_command, settings_from_options
from privateshare.sandbox.settings import FAULT_ENDPOINTS, SandboxSettings

#: Options of the command that are not settings.
NOT_SETTINGS = {"state_dir", "verbose"}


def options(*args: str) -> dict:
    ctx = sandbox_command.make_context("sandbox", list(args))
    return {k: v for k, v in ctx.params.items() if k not in NOT_SETTINGS}


def test_every_setting_has_its_option_and_no_option_is_extra() -> None:
    fields = {f.name for f in dataclasses.fields(SandboxSettings)}
    params = {p.name for p in sandbox_command.params} - NOT_SETTINGS
    assert params == fields


def test_option_defaults_are_the_settings_defaults() -> None:
    # The CLI's one deliberate difference: a fixed, documented port instead of any.
    assert settings_from_options(options()) == SandboxSettings(port=8000)


def test_fault_and_hostile_options_map_onto_settings() -> None:
    settings = settings_from_options(
        options(
            "--fault-endpoint",
            "all",
            "--error-rate",
            "0.2",
            "--truncate-rate",
            "0.1",
            "--nonpositive-dates",
            "3",
            "--unsafe-names",
            "--access-token-max-uses",
            "3",
            "--code-lifetime",
            "5",
            "--revoke-access-on-refresh",
            "--fault-seed",
            "9",
        )
    )
    assert settings.fault_endpoints == FAULT_ENDPOINTS
    assert (settings.error_rate, settings.truncate_rate) == (0.2, 0.1)
    assert (settings.nonpositive_dates, settings.unsafe_names) == (3, True)
    assert (settings.access_token_max_uses, settings.code_lifetime) == (3, 5)
    assert settings.revoke_access_on_refresh and settings.fault_seed == 9
    only = settings_from_options(options("--fault-endpoint", "jwks", "--fault-endpoint", "token"))
    assert only.fault_endpoints == frozenset({"jwks", "token"})
