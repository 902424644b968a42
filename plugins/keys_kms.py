"""The ``kms`` key store: the contract key is kept only as a blob encrypted under a KMS key.

Envelope encryption: ``privateshare keys wrap`` asks KMS for a data key
(``GenerateDataKey``, AES-256), seals the PEM with AES-256-GCM under it, and
writes a JSON blob holding the *encrypted* data key, the nonce, the ciphertext,
the KMS key id and the encryption context. At start the store reads the blob
(a file, an environment variable or an S3 object), has KMS decrypt the data
key (``Decrypt``, with the encryption context), opens the PEM, and keeps the
key in memory only, as a :class:`~privateshare.keys.SoftwareKeyHandle`. The
PEM is never written anywhere. Format and IAM policy: ``docs/kms.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any

import click
import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privateshare.config import PathOption, path_problem
from privateshare.errors import KeyStoreError, PrivateShareError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.keys import KeyHandle, KeyStore, handle_from_pem, public_key_fingerprint
from privateshare.plugins.awscommon import AwsConnection, AwsSession, aws_error

log = logging.getLogger("privateshare.keys")

FORMAT = "privateshare-kms-envelope"
VERSION = 1
#: A blob is a few kilobytes; anything far larger is not one.
MAX_BLOB_BYTES = 1 << 20
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_S3_URI = re.compile(r"^s3://(?P<bucket>[^/]+)/(?P<key>.+)$")
_KEY_UUID = re.compile(r"^(mrk-)?[0-9a-f-]{32,36}$")

_KMS_CODES = {
    "NotFoundException": "the KMS key does not exist (or is in another region or account); "
    "check key_id / the blob's key and the region",
    "DisabledException": "the KMS key is disabled; enable it in KMS",
    "KMSInvalidStateException": "the KMS key is not usable (pending deletion or import); "
    "cancel the deletion or use another key",
    "IncorrectKeyException": "the blob was not wrapped with this KMS key; fix key_id or "
    "wrap the key again with 'privateshare keys wrap'",
    "InvalidCiphertextException": "KMS refused the blob's data key: the encryption context "
    "differs from the one used by 'privateshare keys wrap', or the blob was wrapped under "
    "another key or damaged; check encryption_context and key_id",
    "InvalidKeyUsageException": "the KMS key is not a symmetric ENCRYPT_DECRYPT key; use one",
    "KeyUnavailableException": "the KMS key is temporarily unavailable; retry later",
}


class Envelope(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The JSON blob ``privateshare keys wrap`` writes (base64 for binary fields)."""

    format: str
    version: int
    key_id: str
    encryption_context: dict[str, str] = {}
    algorithm: str = "AES-256-GCM"
    encrypted_data_key: str
    nonce: str
    ciphertext: str
    #: SHA-256 of the public key, to tell keys apart without unwrapping (safe to show).
    public_key_sha256: str = ""


def _aad(envelope_format: str, version: int, context: dict[str, str]) -> bytes:
    """What AES-GCM authenticates besides the PEM: the format and the encryption context."""
    return json.dumps(
        {"format": envelope_format, "version": version, "encryption_context": context},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def wrap_pem(kms: Any, key_id: str, pem: bytes, context: dict[str, str]) -> bytes:
    """Seal ``pem`` under a fresh KMS data key; return the JSON blob (callers map errors)."""
    handle = handle_from_pem(pem, "the key to wrap")
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=context)
    plaintext_key = bytearray(data_key["Plaintext"])
    try:
        nonce = os.urandom(12)
        sealed = AESGCM(bytes(plaintext_key)).encrypt(nonce, pem, _aad(FORMAT, VERSION, context))
    finally:
        plaintext_key[:] = bytes(len(plaintext_key))
    envelope = Envelope(
        format=FORMAT,
        version=VERSION,
        key_id=str(data_key["KeyId"]),
        encryption_context=dict(context),
        encrypted_data_key=base64.b64encode(data_key["CiphertextBlob"]).decode(),
        nonce=base64.b64encode(nonce).decode(),
        ciphertext=base64.b64encode(sealed).decode(),
        public_key_sha256=public_key_fingerprint(handle.public_key()),
    )
    return msgspec.json.format(msgspec.json.encode(envelope), indent=2) + b"\n"


def _same_key(configured: str, wrapped: str) -> bool | None:
    """Whether two KMS key references name one key; ``None`` when that cannot be told offline."""
    if configured == wrapped:
        return True
    if configured.startswith("alias/") or ":alias/" in configured:
        return None
    mine = configured.rsplit("key/", 1)[-1]
    theirs = wrapped.rsplit("key/", 1)[-1]
    if _KEY_UUID.match(mine) and _KEY_UUID.match(theirs):
        if configured.startswith("arn:") and wrapped.startswith("arn:"):
            return configured == wrapped
        return mine == theirs
    return None


class KmsKeyStore(KeyStore, Plugin):
    """The contract private key as a KMS-encrypted envelope, unwrapped into memory at start."""

    description = "contract private key encrypted under an AWS KMS key (envelope, memory only)"

    class Options(AwsConnection, forbid_unknown_fields=True, kw_only=True):
        #: A file holding the blob made by ``privateshare keys wrap``.
        path: PathOption | None = None
        #: The NAME of an environment variable holding the blob (JSON, or base64 of it).
        variable: (
            Annotated[
                str,
                msgspec.Meta(
                    pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                    description="the NAME of an environment variable, not its value",
                ),
            ]
            | None
        ) = None
        #: An S3 object holding the blob: ``s3://bucket/key``.
        s3_uri: (
            Annotated[str, msgspec.Meta(pattern=_S3_URI.pattern, description="s3://bucket/key")]
            | None
        ) = None
        #: The KMS key the blob must be wrapped under (id, ARN or alias); default: the blob's.
        key_id: str | None = None
        #: Encryption context given to KMS; default: the one recorded in the blob.
        encryption_context: dict[str, str] | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            given = [n for n in ("path", "variable", "s3_uri") if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError(
                    "needs exactly one of path, variable or s3_uri (where the blob from "
                    f"'privateshare keys wrap' is kept); found {' and '.join(given) or 'none'}"
                )

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        where = context.name
        if options.path is not None:
            if path_problem(options.path):
                raise KeyStoreError(
                    f"[{where}] path must be the path of the blob file, not its content"
                )
            self.path: Path | None = context.resolve(options.path)
            self.source = f"file {self.path}"
        else:
            self.path = None
        if options.variable is not None:
            self.source = f"environment variable {options.variable}"
        if options.s3_uri is not None:
            self.source = options.s3_uri
        self.aws = AwsSession(options, where, KeyStoreError, pool_size=4)

    def __repr__(self) -> str:
        return f"KmsKeyStore({self.context.name}, blob from {self.source})"

    # reading the blob ---------------------------------------------------------------

    def _read_blob(self) -> bytes:
        o, where = self.options, self.context.name
        if self.path is not None:
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read(MAX_BLOB_BYTES + 1)
            except FileNotFoundError:
                raise KeyStoreError(
                    f"[{where}] the key blob {self.path} does not exist; make it with "
                    "'privateshare keys wrap --kms-key-id ... --in contract.pem --out "
                    f"{self.path}' or fix path"
                ) from None
            except OSError as exc:
                raise KeyStoreError(
                    f"[{where}] the key blob {self.path} cannot be read ({exc.strerror}); "
                    "check the path and its permissions"
                ) from None
        elif o.variable is not None:
            value = os.environ.get(o.variable)
            if value is None:
                raise KeyStoreError(
                    f"[{where}] the environment variable {o.variable} is not set; export the "
                    "blob from 'privateshare keys wrap' in it (JSON or base64 of it)"
                )
            data = value.strip().encode("utf-8", "replace")
            if data and not data.startswith(b"{"):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    raise KeyStoreError(
                        f"[{where}] {self.source} is neither the JSON blob nor base64 of it; "
                        "set it from 'base64 -w0 key.kms'"
                    ) from None
        else:
            match = _S3_URI.match(o.s3_uri or "")
            if match is None:
                raise KeyStoreError(f"[{where}] s3_uri must look like s3://bucket/key")
            bucket, key = match["bucket"], match["key"]
            try:
                body = self.aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
                data = body.read(MAX_BLOB_BYTES + 1)
            except Exception as exc:
                raise aws_error(
                    exc,
                    self.aws,
                    f"read the key blob {o.s3_uri}",
                    permission="s3:GetObject",
                    not_found=f"{o.s3_uri} does not exist; upload the blob from "
                    "'privateshare keys wrap' there or fix s3_uri",
                    codes={
                        "NoSuchBucket": f"the bucket of {o.s3_uri} does not exist; fix s3_uri",
                        "NoSuchKey": f"{o.s3_uri} does not exist; upload the blob there "
                        "or fix s3_uri",
                    },
                ) from None
        if len(data) > MAX_BLOB_BYTES:
            raise KeyStoreError(
                f"[{where}] {self.source} is over {MAX_BLOB_BYTES} bytes, far too large for a "
                "key blob; check that it names the blob from 'privateshare keys wrap'"
            )
        return data

    def _parse(self, data: bytes) -> Envelope:
        where = self.context.name
        if b"PRIVATE KEY-----" in data:
            raise KeyStoreError(
                f"[{where}] {self.source} holds a plain PEM private key, not a KMS blob; wrap it "
                "with 'privateshare keys wrap' and delete the plain copy (use [keys] type = "
                '"file" for plain keys)'
            )
        try:
            envelope = msgspec.json.decode(data, type=Envelope)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise KeyStoreError(
                f"[{where}] {self.source} is not a key blob from 'privateshare keys wrap' "
                "(not the expected JSON); make it again with that command"
            ) from None
        if envelope.format != FORMAT or envelope.version != VERSION:
            raise KeyStoreError(
                f"[{where}] {self.source} is a {envelope.format!r} version {envelope.version} "
                f"blob; this privateshare reads {FORMAT!r} version {VERSION}"
            )
        return envelope

    # unwrapping ---------------------------------------------------------------------

    def _load(self) -> KeyHandle:
        o, where = self.options, self.context.name
        envelope = self._parse(self._read_blob())
        if o.key_id and _same_key(o.key_id, envelope.key_id) is False:
            raise KeyStoreError(
                f"[{where}] the blob in {self.source} was wrapped with KMS key "
                f"{envelope.key_id}, not {o.key_id} as key_id says; fix key_id or wrap the "
                "contract key again under that key"
            )
        context = (
            envelope.encryption_context if o.encryption_context is None else o.encryption_context
        )
        try:
            encrypted_key = base64.b64decode(envelope.encrypted_data_key, validate=True)
            nonce = base64.b64decode(envelope.nonce, validate=True)
            sealed = base64.b64decode(envelope.ciphertext, validate=True)
        except (binascii.Error, ValueError):
            raise KeyStoreError(
                f"[{where}] the blob in {self.source} is damaged (bad base64); make it again "
                "with 'privateshare keys wrap'"
            ) from None
        key_id = o.key_id or envelope.key_id
        try:
            answer = self.aws.client("kms").decrypt(
                CiphertextBlob=encrypted_key, EncryptionContext=context, KeyId=key_id
            )
        except Exception as exc:
            raise aws_error(
                exc,
                self.aws,
                f"decrypt the data key of {self.source} with KMS key {key_id}",
                permission="kms:Decrypt",
                codes=_KMS_CODES,
            ) from None
        data_key = bytearray(answer["Plaintext"])
        try:
            pem = AESGCM(bytes(data_key)).decrypt(
                nonce, sealed, _aad(envelope.format, envelope.version, context)
            )
        except (InvalidTag, ValueError):
            raise KeyStoreError(
                f"[{where}] the blob in {self.source} fails its integrity check (AES-GCM): it "
                "was altered, or its encryption context edited; make it again with "
                "'privateshare keys wrap'"
            ) from None
        finally:
            data_key[:] = bytes(len(data_key))
        handle = handle_from_pem(pem, f"the KMS blob in {self.source}")
        del pem
        if envelope.public_key_sha256 and (
            public_key_fingerprint(handle.public_key()) != envelope.public_key_sha256
        ):
            raise KeyStoreError(
                f"[{where}] the key in {self.source} does not match the fingerprint recorded "
                "in the blob; make the blob again with 'privateshare keys wrap'"
            )
        return handle


# --- privateshare keys wrap ---------------------------------------------------------


@click.command("wrap")
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
    from privateshare.cli.keys import (
        fingerprint,
        parse_context,
        read_pem,
        secret_from_options,
        toml_table,
    )

    context = parse_context(pairs)
    password = secret_from_options(password_env, password_file, "password", prompt=False)
    pem = read_pem(in_path, password)
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
    public = fingerprint(pem)
    click.echo(f"wrote the KMS-wrapped key to {out} (public key sha256 {public[:16]})")
    click.echo(
        f"now delete the plain key ({in_path}) and configure:\n"
        f'  [keys]\n  type = "kms"\n  '
        + (f'path = "{out}"' if target is None else f's3_uri = "{out}"')
        + (f"\n  encryption_context = {toml_table(context)}" if context else "")
    )


@hookimpl
def privateshare_register_commands(cli: click.Group) -> None:
    """``privateshare keys wrap``, beside the key store that reads what it writes."""
    keys = cli.commands.get("keys")
    if isinstance(keys, click.Group):
        keys.add_command(wrap_command)
