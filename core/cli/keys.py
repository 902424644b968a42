"""``privateshare keys``: protect the contract private key.

The group is the core's; its commands come from the key-store plugins through the
``privateshare_register_commands`` hook (``keys wrap`` from ``kms``, ``keys import-pkcs11``
from ``pkcs11``). The helpers here are what such commands share: secrets from
environment variables or files (or a prompt), never the command line; a PEM read with
clear errors; ``NAME=VALUE`` pairs; the config snippet to print.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..secrets import Secret


@click.group("keys")
def keys_group() -> None:
    """Protect the contract private key: wrap it with KMS or import it into an HSM."""


def secret_from_options(
    env: str | None, file: str | None, what: str, prompt: bool
) -> Secret | None:
    """A secret named by ``--WHAT-env`` or ``--WHAT-file``, else prompted for (or None)."""
    from ..secrets import Secret

    if env and file:
        raise click.UsageError(f"give the {what} with either --{what}-env or --{what}-file")
    if env:
        return Secret(env=env)
    if file:
        return Secret(file=file, base_dir=Path.cwd())
    if prompt:
        return Secret.literal(click.prompt(f"{what.upper()}", hide_input=True))
    return None


def read_pem(path: Path, password: Secret | None) -> bytes:
    """The PEM at ``path`` as unencrypted PKCS#8 bytes, with the key store's clear errors."""
    from cryptography.hazmat.primitives import serialization

    from ..errors import KeyStoreError
    from ..keys import handle_from_pem

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}; check the --in path") from None
    secret = password.reveal().encode() if password is not None else None
    handle_from_pem(raw, f"file {path}", secret)  # every bad input gets its clear error
    key = serialization.load_pem_private_key(raw, password=secret)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_context(pairs: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` option values as a dict; a bad pair is a usage error."""
    context: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--context")
        context[name] = value
    return context


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the public key of a PEM private key (safe to print)."""
    from ..keys import handle_from_pem, public_key_fingerprint

    return public_key_fingerprint(handle_from_pem(pem, "the key").public_key())


def toml_table(values: dict[str, str]) -> str:
    """An inline TOML table, for the config snippet a command prints."""
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + " }"


__all__ = [
    "fingerprint",
    "keys_group",
    "parse_context",
    "read_pem",
    "secret_from_options",
    "toml_table",
]
