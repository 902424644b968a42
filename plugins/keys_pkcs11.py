"""The ``pkcs11`` key store: the contract key lives in an HSM token and never leaves it.

The store logs in to the token named in the config, finds the RSA private key
by label, and hands out a handle whose operations run inside the token:
PS512 as ``CKM_SHA512_RSA_PKCS_PSS`` (SHA-512, MGF1-SHA-512, salt 64) and the
file-key unwrap as ``CKM_RSA_PKCS_OAEP`` (SHA-1, MGF1-SHA-1). Only the public
modulus and exponent are read out, to build the public key.

Thread safety: python-pkcs11 initialises the module with ``C_Initialize(NULL)``,
which by the PKCS#11 spec promises the module no concurrent calls, so every call
into one module goes through one lock (an HSM operation takes about a
millisecond; the flow's concurrency is in the downloads, not here).
``privateshare keys import-pkcs11`` puts an existing PEM key into a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa

from privateshare.config import PathOption
from privateshare.errors import ConfigError, KeyStoreError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.keys import (
    MIN_KEY_BITS,
    KeyStore,
    handle_from_pem,
    public_key_fingerprint,
)
from privateshare.secrets import Secret

log = logging.getLogger("privateshare.keys")

#: Where Debian and Ubuntu put SoftHSM2's module (the usual software token for testing).
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

_T = TypeVar("_T")


@dataclass
class _Login:
    """This process's login to one token: a digest of the PIN that worked, open sessions."""

    pin_digest: bytes = field(repr=False)
    sessions: int


_logins: dict[tuple[str, str], _Login] = {}
_module_locks: dict[str, threading.RLock] = {}
_module_locks_guard = threading.Lock()


def module_lock(path: str) -> threading.RLock:
    """The one lock for all calls into the PKCS#11 module at ``path`` (see the module doc)."""
    with _module_locks_guard:
        return _module_locks.setdefault(path, threading.RLock())


def load_module(path: str, where: str) -> Any:
    """Load (once per process) the PKCS#11 module; a clear error when it cannot be."""
    try:
        import pkcs11
    except ImportError:
        raise KeyStoreError(
            f"[{where}] needs python-pkcs11: pip install 'privateshare[hsm]'"
        ) from None
    if not Path(path).is_file():
        raise KeyStoreError(
            f"[{where}] module {path} does not exist; set module to your HSM vendor's PKCS#11 "
            f"library (for SoftHSM2: {SOFTHSM_MODULE}, from the softhsm2 package)"
        )
    try:
        with module_lock(path):
            return pkcs11.lib(path)
    except pkcs11.PKCS11Error as exc:
        raise KeyStoreError(
            f"[{where}] module {path} cannot be loaded as a PKCS#11 library "
            f"({type(exc).__name__}: {str(exc)[:160]}); check that it is the vendor's "
            "PKCS#11 .so for this machine's architecture"
        ) from None


def token_labels(lib: Any) -> list[str]:
    """Labels of the initialised tokens the module shows (for error messages)."""
    labels = []
    try:
        for slot in lib.get_slots(token_present=True):
            try:
                label = slot.get_token().label
            except Exception:  # noqa: S112 - an unreadable slot is just not listed
                continue
            if label:
                labels.append(label)
    except Exception:
        return []
    return sorted(labels)


def open_token_session(
    lib: Any, module: str, token_label: str, pin: Secret, where: str, *, rw: bool = False
) -> Any:
    """Log in to the token labelled ``token_label``; every failure named, the PIN never shown."""
    import pkcs11
    from pkcs11 import exceptions as px

    with module_lock(module):
        try:
            token = lib.get_token(token_label=token_label)
        except px.NoSuchToken:
            labels = token_labels(lib)
            shown = ", ".join(repr(label) for label in labels) or "none"
            raise KeyStoreError(
                f"[{where}] no token labelled {token_label!r} in {module} (tokens there: "
                f"{shown}); fix token_label, or create the token (softhsm2-util --init-token "
                "--free --label ... for SoftHSM2, the vendor's tool otherwise)"
            ) from None
        except px.MultipleTokensReturned:
            raise KeyStoreError(
                f"[{where}] several tokens are labelled {token_label!r} in {module}; give "
                "each a distinct label"
            ) from None
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(
                f"[{where}] cannot list the tokens of {module} ({type(exc).__name__}); check "
                "that the HSM is connected and its module configured"
            ) from None
        try:
            value = pin.reveal()
        except ConfigError as exc:
            raise KeyStoreError(f"[{where}] cannot read the PIN: {exc}") from None
        digest = hashlib.sha256(value.encode("utf-8")).digest()
        login = _logins.get((module, token_label))
        if login is not None and login.sessions > 0:
            # The process is logged in to this token already (PKCS#11 logins are per
            # application): C_Login would fail, so check the PIN against the one that worked.
            if not hmac.compare_digest(digest, login.pin_digest):
                raise KeyStoreError(
                    f"[{where}] the PIN from {pin.describe()} is wrong for token "
                    f"{token_label!r}; fix the secret the pin option refers to"
                )
            session = token.open(rw=rw)
            login.sessions += 1
            return session
        try:
            session = token.open(user_pin=value, rw=rw)
        except px.UserAlreadyLoggedIn:
            # Logged in by code outside this module; the session is usable as it is.
            session = token.open(rw=rw)
        except px.PinIncorrect:
            raise KeyStoreError(
                f"[{where}] the PIN from {pin.describe()} is wrong for token {token_label!r}; "
                "fix the secret the pin option refers to (repeated failures may lock the token)"
            ) from None
        except px.PinLocked:
            raise KeyStoreError(
                f"[{where}] the user PIN of token {token_label!r} is locked after too many "
                "wrong attempts; the security officer must unlock it (softhsm2-util or the "
                "vendor's tool)"
            ) from None
        except (px.PinInvalid, px.PinLenRange):
            raise KeyStoreError(
                f"[{where}] the PIN from {pin.describe()} is not a valid PIN for token "
                f"{token_label!r} (bad length or characters); fix the secret"
            ) from None
        except px.UserPinNotInitialized:
            raise KeyStoreError(
                f"[{where}] token {token_label!r} has no user PIN yet; initialise it "
                "(softhsm2-util --init-token ... --pin ...)"
            ) from None
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(
                f"[{where}] cannot log in to token {token_label!r} ({type(exc).__name__}); "
                "check the token and the HSM"
            ) from None
        _logins[(module, token_label)] = _Login(digest, 1)
        return session


def close_token_session(module: str, token_label: str, session: Any) -> None:
    """Close a session from :func:`open_token_session` (the last one closed logs out)."""
    with module_lock(module):
        login = _logins.get((module, token_label))
        if login is not None:
            login.sessions = max(0, login.sessions - 1)
        try:
            session.close()
        except Exception as exc:
            log.debug("closing a PKCS#11 session failed: %s", type(exc).__name__)


def import_private_key(
    session: Any, module: str, pem: bytes, key_label: str, token_label: str
) -> str:
    """Create the private key (sensitive, never extractable) and its public key in the token.

    Refuses a label that is already taken. Returns the public key's SHA-256 fingerprint.
    """
    from cryptography.hazmat.primitives import serialization
    from pkcs11 import Attribute, KeyType, ObjectClass

    where = "keys import-pkcs11"
    handle = handle_from_pem(pem, "the key to import")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    public = numbers.public_numbers
    fingerprint = public_key_fingerprint(handle.public_key())
    object_id = bytes.fromhex(fingerprint[:16])

    def big(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    with module_lock(module):
        taken = list(session.get_objects({Attribute.LABEL: key_label}))
        if taken:
            raise KeyStoreError(
                f"[{where}] token {token_label!r} already holds {len(taken)} object(s) labelled "
                f"{key_label!r}; choose another --key-label or delete them first "
                "(pkcs11-tool --delete-object)"
            )
        common = {
            Attribute.TOKEN: True,
            Attribute.LABEL: key_label,
            Attribute.ID: object_id,
            Attribute.KEY_TYPE: KeyType.RSA,
        }
        session.create_object(
            {
                **common,
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: True,
                Attribute.UNWRAP: False,
                Attribute.MODULUS: big(public.n),
                Attribute.PUBLIC_EXPONENT: big(public.e),
                Attribute.PRIVATE_EXPONENT: big(numbers.d),
                Attribute.PRIME_1: big(numbers.p),
                Attribute.PRIME_2: big(numbers.q),
                Attribute.EXPONENT_1: big(numbers.dmp1),
                Attribute.EXPONENT_2: big(numbers.dmq1),
                Attribute.COEFFICIENT: big(numbers.iqmp),
            }
        )
        session.create_object(
            {
                **common,
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.PRIVATE: False,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: True,
                Attribute.MODULUS: big(public.n),
                Attribute.PUBLIC_EXPONENT: big(public.e),
            }
        )
    return fingerprint


class Pkcs11KeyHandle:
    """A contract key inside a PKCS#11 token: operations run in the token, under the lock."""

    __slots__ = ("_key", "_lock", "_public", "_reopen", "source")

    def __init__(
        self,
        key: Any,
        public: rsa.RSAPublicKey,
        lock: threading.RLock,
        source: str,
        reopen: Callable[[], Any],
    ) -> None:
        self._key = key
        self._public = public
        self._lock = lock
        self._reopen = reopen
        self.source = source

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def _call(self, operation: Callable[[Any], _T], what: str) -> _T:
        """Run ``operation(key)``; re-log in once if the session was lost (HSM restart)."""
        from pkcs11 import exceptions as px

        with self._lock:
            try:
                return operation(self._key)
            except (
                px.SessionHandleInvalid,
                px.SessionClosed,
                px.UserNotLoggedIn,
                px.KeyHandleInvalid,
                px.ObjectHandleInvalid,
                px.DeviceRemoved,
            ):
                self._key = self._reopen()
                return operation(self._key)

    def sign_ps512(self, message: bytes) -> bytes:
        import pkcs11
        from pkcs11 import MGF, Mechanism

        param = (Mechanism.SHA512, MGF.SHA512, 64)
        try:
            return self._call(
                lambda key: bytes(
                    key.sign(
                        message, mechanism=Mechanism.SHA512_RSA_PKCS_PSS, mechanism_param=param
                    )
                ),
                "sign",
            )
        except pkcs11.PKCS11Error as exc:
            self._fail("sign with", exc)

    def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
        import pkcs11
        from pkcs11 import MGF, Mechanism
        from pkcs11 import exceptions as px

        size = self.key_size // 8
        if (
            len(ciphertext) != size
            or int.from_bytes(ciphertext, "big") >= self._public.public_numbers().n
        ):
            raise ValueError(
                f"the ciphertext is not an RSA-{self.key_size} OAEP block for this key"
            )
        param = (Mechanism.SHA_1, MGF.SHA1, None)
        try:
            return self._call(
                lambda key: bytes(
                    key.decrypt(
                        ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param
                    )
                ),
                "decrypt",
            )
        except (
            px.EncryptedDataInvalid,
            px.EncryptedDataLenRange,
            px.DataInvalid,
            px.DataLenRange,
            px.GeneralError,
        ):
            # SoftHSM2 reports a failed OAEP padding check as CKR_GENERAL_ERROR.
            raise ValueError("the HSM could not decrypt it: it was not made for this key") from None
        except pkcs11.PKCS11Error as exc:
            self._fail("decrypt with", exc)

    def _fail(self, action: str, exc: Exception) -> NoReturn:
        raise KeyStoreError(
            f"cannot {action} the contract key in {self.source} ({type(exc).__name__}); "
            "check that the HSM is reachable and the key allows this operation"
        ) from None

    def __repr__(self) -> str:
        return f"Pkcs11KeyHandle(RSA-{self.key_size}, in {self.source})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a key handle cannot be pickled; pass the key store's options instead")


class Pkcs11KeyStore(KeyStore, Plugin):
    """The contract private key in a PKCS#11 token (an HSM, a smart card, SoftHSM2)."""

    description = "contract private key inside a PKCS#11 HSM token (never leaves it)"

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: Path of the vendor's PKCS#11 module (.so).
        module: PathOption = SOFTHSM_MODULE
        #: Label of the token that holds the key.
        token_label: Annotated[str, msgspec.Meta(min_length=1)]
        #: Label (CKA_LABEL) of the RSA private key object.
        key_label: Annotated[str, msgspec.Meta(min_length=1)] = "privateshare-contract"
        #: The token's user PIN, as a secret reference.
        pin: Secret

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self.module = str(context.resolve(options.module))
        self.source = f"PKCS#11 token {options.token_label!r}, key {options.key_label!r}"
        self._session: Any = None

    def __repr__(self) -> str:
        o = self.options
        return f"Pkcs11KeyStore({self.context.name}, token={o.token_label!r}, key={o.key_label!r})"

    def _open_key(self) -> Any:
        """Log in (again) and find the private key; returns the key object."""
        from pkcs11 import Attribute, KeyType, ObjectClass
        from pkcs11 import exceptions as px

        o, where = self.options, self.context.name
        lib = load_module(self.module, where)
        self._close_session()
        session = open_token_session(lib, self.module, o.token_label, o.pin, where)
        self._session = session
        with module_lock(self.module):
            try:
                key = session.get_key(
                    object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label=o.key_label
                )
            except px.NoSuchKey:
                self._close_session()
                raise KeyStoreError(
                    f"[{where}] token {o.token_label!r} holds no RSA private key labelled "
                    f"{o.key_label!r}; fix key_label, or import the contract key with "
                    f"'privateshare keys import-pkcs11 --token-label {o.token_label} "
                    f"--key-label {o.key_label} --in contract.pem'"
                ) from None
            except px.MultipleObjectsReturned:
                self._close_session()
                raise KeyStoreError(
                    f"[{where}] token {o.token_label!r} holds several RSA private keys labelled "
                    f"{o.key_label!r}; delete the extra ones or relabel them"
                ) from None
            if not key[Attribute.SIGN] or not key[Attribute.DECRYPT]:
                self._close_session()
                raise KeyStoreError(
                    f"[{where}] the key {o.key_label!r} on token {o.token_label!r} may not both "
                    "sign and decrypt (CKA_SIGN, CKA_DECRYPT); re-import it with "
                    "'privateshare keys import-pkcs11'"
                )
        self._session = session
        return key

    def _load(self) -> Pkcs11KeyHandle:
        from pkcs11 import Attribute

        key = self._open_key()
        with module_lock(self.module):
            modulus = int.from_bytes(key[Attribute.MODULUS], "big")
            exponent = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
        public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        if public.key_size < MIN_KEY_BITS:
            raise KeyStoreError(
                f"[{self.context.name}] the key in {self.source} is RSA-{public.key_size}; "
                f"digi.me requires at least {MIN_KEY_BITS} bits"
            )
        return Pkcs11KeyHandle(
            key, public, module_lock(self.module), self.source, reopen=self._open_key
        )

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            close_token_session(self.module, self.options.token_label, session)

    def close(self) -> None:
        """Log out: close the session (the framework calls this when it closes)."""
        with self._lock:
            self._handle = None
            self._close_session()


# --- privateshare keys import-pkcs11 ---------------------------------------------------


@click.command("import-pkcs11")
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
    from privateshare.cli.keys import read_pem, secret_from_options

    module = module or SOFTHSM_MODULE
    pin = secret_from_options(pin_env, pin_file, "pin", prompt=True)
    assert pin is not None
    password = secret_from_options(password_env, password_file, "password", prompt=False)
    pem = read_pem(in_path, password)
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


@hookimpl
def privateshare_register_commands(cli: click.Group) -> None:
    """``privateshare keys import-pkcs11``, beside the key store that uses the key."""
    keys = cli.commands.get("keys")
    if isinstance(keys, click.Group):
        keys.add_command(import_pkcs11_command)
