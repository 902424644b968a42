"""``privateshare keys``: move a contract key out of a plain file, into KMS or an HSM.

* ``keys wrap`` encrypts a PEM under a KMS key (envelope) for the ``kms`` key store.
* ``keys import-pkcs11`` puts a PEM into a PKCS#11 token, non-extractable and
  sensitive, for the ``pkcs11`` key store.

Neither prints key material; secrets (PIN, PEM password) are read from
environment variables or files, or prompted for, never taken on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .errors import ConfigError, KeyStoreError, PrivateShareError
from .keys import handle_from_pem, public_key_fingerprint
from .secrets import Secret


class _KeysGroup(click.Group):
    """Our errors become one clear line and exit status 2 (bad input) or 5 (backend)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrivateShareError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2 if isinstance(exc, ConfigError) else 5)


@click.group("keys", cls=_KeysGroup)
def keys_group() -> None:
    """Protect the contract private key: wrap it with KMS or import it into an HSM."""


def _secret(env: str | None, file: str | None, what: str, prompt: bool) -> Secret | None:
    if env and file:
        raise click.UsageError(f"give the {what} with either --{what}-env or --{what}-file")
    if env:
        return Secret(env=env)
    if file:
        return Secret(file=file, base_dir=Path.cwd())
    if prompt:
        return Secret.literal(click.prompt(f"{what.upper()}", hide_input=True))
    return None


def _read_pem(path: Path, password: Secret | None) -> bytes:
    """The PEM at ``path`` as unencrypted PKCS#8 bytes, with the key store's clear errors."""
    from cryptography.hazmat.primitives import serialization

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


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--context")
        context[name] = value
    return context


# --- wrap -------------------------------------------------------------------------------


@keys_group.command("wrap")
@click.option("--kms-key-id", required=True, help="KMS key id, ARN or alias/NAME.")
@click.option(
    "--in", "in_path", required=True, type=click.Path(path_type=Path), help="The PEM key."
)
@click.option(
    "--out", "out", required=True, help="Where the blob goes: a file path or s3://bucket/key."
)
@click.option(
    "--context",
    "pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Encryption context entry (repeatable); give the same in [keys].",
)
@click.option("--region", default=None, help="AWS region (default: the standard chain).")
@click.option("--endpoint-url", default=None, help="A non-AWS endpoint (LocalStack, moto).")
@click.option("--profile", default=None, help="A profile from ~/.aws/config.")
@click.option("--password-env", default=None, help="Variable holding the PEM's password.")
@click.option("--password-file", default=None, help="File holding the PEM's password.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def wrap_command(
    kms_key_id: str,
    in_path: Path,
    out: str,
    pairs: tuple[str, ...],
    region: str | None,
    endpoint_url: str | None,
    profile: str | None,
    password_env: str | None,
    password_file: str | None,
    force: bool,
) -> None:
    """Encrypt a contract key under a KMS key (envelope) for [keys] type = "kms"."""
    from privateshare.plugins.awscommon import AwsConnection, AwsSession, aws_error
    from privateshare.plugins.keys_kms import _S3_URI, wrap_pem

    context = _context(pairs)
    password = _secret(password_env, password_file, "password", prompt=False)
    pem = _read_pem(in_path, password)
    options = AwsConnection(region=region, endpoint_url=endpoint_url, profile=profile)
    aws = AwsSession(options, "keys wrap", KeyStoreError, pool_size=2)
    target = _S3_URI.match(out)
    if target is None and Path(out).exists() and not force:
        raise KeyStoreError(f"{out} exists; pass --force to overwrite it")
    try:
        blob = wrap_pem(aws.client("kms"), kms_key_id, pem, context)
    except PrivateShareError:
        raise
    except Exception as exc:
        raise aws_error(
            exc,
            aws,
            f"make a data key under KMS key {kms_key_id}",
            permission="kms:GenerateDataKey",
            codes={
                "NotFoundException": "the KMS key does not exist in this region and account; "
                "check --kms-key-id and --region",
                "DisabledException": "the KMS key is disabled; enable it",
            },
        ) from None
    if target is not None:
        try:
            aws.client("s3").put_object(
                Bucket=target["bucket"],
                Key=target["key"],
                Body=blob,
                ContentType="application/json",
            )
        except Exception as exc:
            raise aws_error(
                exc,
                aws,
                f"upload the blob to {out}",
                permission="s3:PutObject",
                codes={"NoSuchBucket": "the bucket does not exist"},
            ) from None
    else:
        path = Path(out)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
    fingerprint = _fingerprint(pem)
    click.echo(f"wrote the KMS-wrapped key to {out} (public key sha256 {fingerprint[:16]})")
    click.echo(
        f"now delete the plain key ({in_path}) and configure:\n"
        f'  [keys]\n  type = "kms"\n  '
        + (f'path = "{out}"' if target is None else f's3_uri = "{out}"')
        + (f"\n  encryption_context = {_toml_table(context)}" if context else "")
    )


def _fingerprint(pem: bytes) -> str:
    return public_key_fingerprint(handle_from_pem(pem, "the key").public_key())


def _toml_table(values: dict[str, str]) -> str:
    import json

    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()) + " }"


# --- import-pkcs11 ---------------------------------------------------------------------------


@keys_group.command("import-pkcs11")
@click.option("--module", default=None, help="The PKCS#11 module (default: SoftHSM2's).")
@click.option("--token-label", required=True, help="Label of the token to import into.")
@click.option(
    "--key-label",
    default="privateshare-contract",
    show_default=True,
    help="Label (CKA_LABEL) for the key objects.",
)
@click.option(
    "--in", "in_path", required=True, type=click.Path(path_type=Path), help="The PEM key."
)
@click.option("--pin-env", default=None, help="Variable holding the user PIN.")
@click.option("--pin-file", default=None, help="File holding the user PIN (else: prompted).")
@click.option("--password-env", default=None, help="Variable holding the PEM's password.")
@click.option("--password-file", default=None, help="File holding the PEM's password.")
def import_pkcs11_command(
    module: str | None,
    token_label: str,
    key_label: str,
    in_path: Path,
    pin_env: str | None,
    pin_file: str | None,
    password_env: str | None,
    password_file: str | None,
) -> None:
    """Import a contract key into an HSM token (non-extractable) for [keys] type = "pkcs11"."""
    from privateshare.plugins.keys_pkcs11 import (
        SOFTHSM_MODULE,
        close_token_session,
        import_private_key,
        load_module,
        open_token_session,
    )

    module = module or SOFTHSM_MODULE
    pin = _secret(pin_env, pin_file, "pin", prompt=True)
    assert pin is not None
    password = _secret(password_env, password_file, "password", prompt=False)
    pem = _read_pem(in_path, password)
    lib = load_module(module, "keys import-pkcs11")
    session = open_token_session(lib, module, token_label, pin, "keys import-pkcs11", rw=True)
    try:
        fingerprint = import_private_key(session, module, pem, key_label, token_label)
    finally:
        close_token_session(module, token_label, session)
    click.echo(
        f"imported the RSA key into token {token_label!r} as {key_label!r} "
        f"(non-extractable, sensitive; public key sha256 {fingerprint[:16]})"
    )
    click.echo(
        f"now delete the plain key ({in_path}) and configure:\n"
        f'  [keys]\n  type = "pkcs11"\n  module = "{module}"\n'
        f'  token_label = "{token_label}"\n  key_label = "{key_label}"\n'
        '  pin = { env = "PRIVATESHARE_HSM_PIN" }'
    )


__all__ = ["import_pkcs11_command", "keys_group", "wrap_command"]
