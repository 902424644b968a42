"""Key storage from a PEM file (``file``) or an environment variable (``env-key``).

Both load the contract's RSA private key once, keep it as a
:class:`~privateshare.keys.SoftwareKeyHandle` and hand out that handle. Errors
name where the key was looked for and how to fix it; they never repeat the key.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from typing import Annotated

import msgspec

from privateshare.config import PathOption, path_problem
from privateshare.errors import ConfigError, KeyStoreError
from privateshare.hooks import Plugin, PluginContext
from privateshare.keys import KeyHandle, KeyStore, handle_from_pem
from privateshare.secrets import Secret

log = logging.getLogger("privateshare.keys")

#: A PEM key is a few kilobytes; anything far larger is not a key file.
MAX_KEY_BYTES = 1 << 20
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=_\-\s]+$")


def _password_bytes(password: Secret | None, source: str) -> bytes | None:
    """Reveal the key's password, turning a missing secret into a key store error."""
    if password is None:
        return None
    try:
        return password.reveal().encode("utf-8")
    except ConfigError as exc:
        raise KeyStoreError(
            f"cannot read the password for the private key from {source}: {exc}"
        ) from None


class FileKeyStore(KeyStore, Plugin):
    """The contract private key in a PEM file (PKCS#1 or PKCS#8, optionally encrypted)."""

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        #: Path of the PEM file; relative paths are resolved against the config's directory.
        path: PathOption
        #: Password of an encrypted PEM, as a secret reference.
        password: Secret | None = None

    description = "contract private key from a PEM file (PKCS#1 or PKCS#8, optionally encrypted)"

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        raw = options.path
        if path_problem(raw):
            # Never echo the value: it may be the key itself pasted into the wrong option.
            raise KeyStoreError(
                f"[{context.name}] path must be the path of the PEM file, not the key itself; "
                "save the key to a file with mode 0600 and give its path"
            )
        self.path = context.resolve(raw)
        self.source = f"file {self.path}"

    def _load(self) -> KeyHandle:
        path, source = self.path, self.source
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise KeyStoreError(
                f"the private key file {path} does not exist; fix [{self.context.name}] path "
                "or put the contract's PEM private key there"
            ) from None
        except OSError as exc:
            raise KeyStoreError(
                f"the private key file {path} cannot be reached ({exc.strerror}); "
                "check the path and the permissions of its directories"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(
                f"the private key path {path} is a directory; point [{self.context.name}] path "
                "at the PEM file inside it"
            )
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(
                f"the private key path {path} is not a regular file; point "
                f"[{self.context.name}] path at the PEM file"
            )
        if st.st_size > MAX_KEY_BYTES:
            raise KeyStoreError(
                f"the private key file {path} is {st.st_size} bytes, far too large for a PEM key; "
                "check that the path names the contract's private key"
            )
        if os.name == "posix" and st.st_mode & 0o077:
            log.warning(
                "the private key file %s is readable by group or others (mode %04o); "
                "restrict it with 'chmod 600 %s'",
                path,
                stat.S_IMODE(st.st_mode),
                path,
            )
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_KEY_BYTES + 1)
        except PermissionError:
            raise KeyStoreError(
                f"the private key file {path} cannot be read (permission denied); make it "
                "readable by the user running privateshare, e.g. 'chown' it and 'chmod 600' it"
            ) from None
        except OSError as exc:
            raise KeyStoreError(
                f"the private key file {path} cannot be read ({exc.strerror}); "
                "check that it is a readable PEM file"
            ) from None
        password = _password_bytes(self.options.password, source)
        return handle_from_pem(data, source, password)

    def __repr__(self) -> str:
        return f"FileKeyStore({self.context.name}, path={self.path})"


def decode_key_text(value: str, source: str) -> bytes:
    """PEM bytes from an environment value: raw PEM, PEM with ``\\n`` escapes, or base64 of PEM.

    Environment variables often cannot hold newlines (CI secrets, ``.env``
    files), hence the base64 and escaped forms; the form is auto-detected.
    """
    text = value.strip()
    if not text:
        raise KeyStoreError(
            f"{source} is empty; set it to the contract's PEM private key or to its base64 "
            "('base64 -w0 contract.pem')"
        )
    if "-----BEGIN" in text:
        if "\\n" in text and "\n" not in text:
            text = text.replace("\\r\\n", "\n").replace("\\n", "\n")
        return text.encode("utf-8", "replace") + b"\n"
    raw = text.encode("ascii", "replace")
    if not _BASE64_TEXT.match(raw):
        raise KeyStoreError(
            f"{source} is neither a PEM block nor base64; set it to the PEM text of the "
            "contract's private key or to 'base64 -w0 contract.pem'"
        )
    # One strict decoder for standard and URL-safe alphabets, padded or not.
    compact = re.sub(rb"\s+", b"", raw).translate(bytes.maketrans(b"-_", b"+/")).rstrip(b"=")
    try:
        decoded = base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyStoreError(
            f"{source} looks like base64 but does not decode (truncated or mangled); set it "
            "again from 'base64 -w0 contract.pem'"
        ) from None
    if b"-----BEGIN" not in decoded:
        raise KeyStoreError(
            f"{source} decodes from base64 but not to a PEM block; encode the whole PEM file, "
            "header lines included: 'base64 -w0 contract.pem'"
        )
    return decoded


class EnvKeyStore(KeyStore, Plugin):
    """The contract private key in an environment variable: PEM text or base64 of it."""

    class Options(msgspec.Struct, forbid_unknown_fields=True):
        #: The NAME of the environment variable that holds the key (not the key).
        variable: Annotated[
            str,
            msgspec.Meta(
                pattern=_ENV_NAME.pattern,
                description="the NAME of an environment variable, not the key",
            ),
        ] = "PRIVATESHARE_PRIVATE_KEY"
        #: Password of an encrypted PEM, as a secret reference.
        password: Secret | None = None

    description = "contract private key from an environment variable (PEM or base64 of PEM)"

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        if not _ENV_NAME.match(options.variable):
            # Never echo the value: it may be the key itself pasted into the wrong option.
            raise KeyStoreError(
                f"[{context.name}] variable must be the NAME of an environment variable "
                "(letters, digits and _), not the key; export the key in that variable"
            )
        self.source = f"environment variable {options.variable}"

    def _load(self) -> KeyHandle:
        variable = self.options.variable
        value = os.environ.get(variable)
        if value is None:
            raise KeyStoreError(
                f"the environment variable {variable} is not set; export it with the contract's "
                "PEM private key, or its base64 ('base64 -w0 contract.pem'), or set "
                f"[{self.context.name}] variable to the variable that holds it"
            )
        data = decode_key_text(value, self.source)
        password = _password_bytes(self.options.password, self.source)
        return handle_from_pem(data, self.source, password)

    def __repr__(self) -> str:
        return f"EnvKeyStore({self.context.name}, variable={self.options.variable})"
