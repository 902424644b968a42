"""The ``file`` and ``env-key`` key stores, with real files and real environment variables."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import textwrap
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import jwt
import msgspec
import pluggy
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from privateshare.errors import KeyStoreError
from privateshare.hooks import PluginContext
from privateshare.hooks import specs as hookspecs
from privateshare.keys import KeyHandle
from privateshare.plugins.keys_file import EnvKeyStore, FileKeyStore
from privateshare.secrets import Secret
from privateshare.testing.conformance import KeyStoreConformance

VAR = "PRIVATESHARE_TEST_KEY"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pems(rsa_key) -> dict[str, bytes]:
    def dump(key, fmt=serialization.PrivateFormat.PKCS8, password=None) -> bytes:
        enc = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return key.private_bytes(serialization.Encoding.PEM, fmt, enc)

    return {
        "pkcs8": dump(rsa_key),
        "pkcs1": dump(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
        "encrypted": dump(rsa_key, password=b"s3cret pass"),
        "ec": dump(ec.generate_private_key(ec.SECP384R1())),
        "rsa1024": dump(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "public": rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }


def fragments(data: bytes) -> list[str]:
    """PEM body lines and base64 windows of the PEM (as an env var would hold it)."""
    lines = [ln.strip() for ln in data.decode().splitlines()]
    frags = [ln for ln in lines if ln and not ln.startswith("-----") and len(ln) >= 16]
    b64 = base64.b64encode(data).decode()
    frags += [b64[i : i + 24] for i in range(24, len(b64) - 24, 24)]
    return frags


def assert_clean(text: str, *datas: bytes) -> None:
    for data in datas:
        for frag in fragments(data):
            assert frag not in text, "key material leaked"


def error_text(exc: BaseException) -> str:
    """Everything a log of this error could show: message, repr, formatted traceback."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def ctx(tmp_path: Path, name: str = "keys") -> PluginContext:
    return PluginContext(name=name, base_dir=tmp_path, contract_id="c1", application_id="a1")


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def file_store(tmp_path: Path, path: str, password: Secret | None = None) -> FileKeyStore:
    return FileKeyStore(FileKeyStore.Options(path=path, password=password), ctx(tmp_path))


def env_store(tmp_path: Path, password: Secret | None = None) -> EnvKeyStore:
    return EnvKeyStore(EnvKeyStore.Options(variable=VAR, password=password), ctx(tmp_path))


# --- file ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pkcs8", "pkcs1"])
def test_file_store_loads_relative_path_against_base_dir(tmp_path, pems, rsa_key, fmt) -> None:
    write_key(tmp_path / "contract.pem", pems[fmt])
    store = file_store(tmp_path, "contract.pem")
    handle = store.privateshare_key_handle()
    assert isinstance(handle, KeyHandle)
    assert handle.public_key().public_numbers() == rsa_key.public_key().public_numbers()
    assert str(tmp_path / "contract.pem") in repr(handle)


def test_file_store_loads_once_and_caches(tmp_path, pems) -> None:
    path = write_key(tmp_path / "contract.pem", pems["pkcs8"])
    store = file_store(tmp_path, str(path))
    first = store.privateshare_key_handle()
    path.unlink()  # a second load would fail: the cached handle must be returned
    assert store.privateshare_key_handle() is first


def test_file_store_failed_load_is_retried(tmp_path, pems) -> None:
    store = file_store(tmp_path, "late.pem")
    with pytest.raises(KeyStoreError, match="does not exist"):
        store.privateshare_key_handle()
    write_key(tmp_path / "late.pem", pems["pkcs8"])
    assert store.privateshare_key_handle().key_size == 2048


def test_encrypted_key_file_with_password_from_env(tmp_path, pems, monkeypatch) -> None:
    write_key(tmp_path / "k.pem", pems["encrypted"])
    monkeypatch.setenv("PS_TEST_KEY_PASSWORD", "s3cret pass")
    store = file_store(tmp_path, "k.pem", Secret(env="PS_TEST_KEY_PASSWORD"))
    assert store.privateshare_key_handle().key_size == 2048
    assert "s3cret" not in repr(store) + repr(store.options)


def test_encrypted_key_file_with_password_from_file(tmp_path, pems) -> None:
    write_key(tmp_path / "k.pem", pems["encrypted"])
    (tmp_path / "pw").write_text("s3cret pass\n")
    store = file_store(tmp_path, "k.pem", Secret(file="pw", base_dir=tmp_path))
    assert store.privateshare_key_handle().key_size == 2048


def test_missing_password_secret_is_a_key_store_error(tmp_path, pems, monkeypatch) -> None:
    write_key(tmp_path / "k.pem", pems["encrypted"])
    monkeypatch.delenv("PS_TEST_UNSET_PW", raising=False)
    store = file_store(tmp_path, "k.pem", Secret(env="PS_TEST_UNSET_PW"))
    with pytest.raises(KeyStoreError, match="PS_TEST_UNSET_PW is not set; export it"):
        store.privateshare_key_handle()


FILE_CASES = [
    # (name, content key or None, password, expected fragment, fix fragment)
    ("encrypted-no-password", "encrypted", None, "is encrypted", "give its password"),
    ("wrong-password", "encrypted", "wrong", "password is wrong", "check the secret"),
    ("ec", "ec", None, "EC (secp384r1) key, not RSA", "openssl genpkey"),
    ("rsa-1024", "rsa1024", None, "RSA-1024", "at least 2048 bits"),
    ("public", "public", None, "public key", "use the contract's private key"),
    ("garbage", None, None, "not PEM", "BEGIN PRIVATE KEY"),
    ("empty", "", None, "is empty", "put the contract's PEM private key there"),
]


@pytest.mark.parametrize(("name", "content", "password", "expected", "fix"), FILE_CASES)
def test_file_store_bad_keys(tmp_path, pems, name, content, password, expected, fix) -> None:
    if content is None:
        data = b"\x00\x01garbage" + base64.b64encode(pems["pkcs8"])[:200]
    elif content == "":
        data = b""
    else:
        data = pems[content]
    path = write_key(tmp_path / "contract.pem", data)
    store = file_store(tmp_path, str(path), Secret.literal(password) if password else None)
    with pytest.raises(KeyStoreError) as info:
        store.privateshare_key_handle()
    message = str(info.value)
    assert expected in message and fix in message, message
    assert str(path) in message
    assert_clean(error_text(info.value) + repr(store), data, pems["pkcs8"])


def test_missing_file_names_path_and_fix(tmp_path) -> None:
    store = file_store(tmp_path, "nowhere/contract.pem")
    with pytest.raises(KeyStoreError) as info:
        store.privateshare_key_handle()
    assert str(tmp_path / "nowhere" / "contract.pem") in str(info.value)
    assert "does not exist; fix [keys] path" in str(info.value)


def test_directory_instead_of_file(tmp_path) -> None:
    (tmp_path / "keys").mkdir()
    with pytest.raises(KeyStoreError, match="is a directory; point \\[keys\\] path at the PEM"):
        file_store(tmp_path, "keys").privateshare_key_handle()


def test_fifo_is_rejected_without_blocking(tmp_path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "pipe.pem")
    with pytest.raises(KeyStoreError, match="is not a regular file"):
        file_store(tmp_path, "pipe.pem").privateshare_key_handle()


def test_unreachable_path_through_a_file(tmp_path) -> None:
    # "contract.pem" is a file, so "contract.pem/key" cannot exist: ENOTDIR, not a crash.
    write_key(tmp_path / "contract.pem", b"x")
    with pytest.raises(KeyStoreError, match=r"cannot be reached .*check the path"):
        file_store(tmp_path, "contract.pem/key").privateshare_key_handle()


def _load_as_other_user(store: FileKeyStore) -> str:
    """Load the key in a forked child that dropped to ``nobody``; return its error message.

    Root reads any file whatever its mode, so as root the permission check needs a
    real unprivileged process; the fork keeps the already imported modules.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                store.privateshare_key_handle()
                message = "loaded"
            except KeyStoreError as exc:
                message = str(exc)
            os.write(write_fd, message.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return message


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permission_denied(pems) -> None:
    # Not tmp_path: its parents are mode 0700, so "nobody" could not even reach the file.
    base = Path(tempfile.mkdtemp(prefix="ps-keys-"))
    try:
        os.chmod(base, 0o755)
        path = write_key(base / "contract.pem", pems["pkcs8"], mode=0o600)
        store = file_store(base, str(path))
        if os.geteuid() == 0:
            message = _load_as_other_user(store)
        else:
            os.chmod(path, 0o000)
            with pytest.raises(KeyStoreError) as info:
                store.privateshare_key_handle()
            message = str(info.value)
        assert f"the private key file {path} cannot be read (permission denied)" in message
        assert "chmod 600" in message
        assert_clean(message, pems["pkcs8"])
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="needs root to drop to nobody")
def test_unreachable_directory(pems) -> None:
    base = Path(tempfile.mkdtemp(prefix="ps-keys-"))  # mode 0700: nobody cannot enter it
    try:
        path = write_key(base / "contract.pem", pems["pkcs8"])
        message = _load_as_other_user(file_store(base, str(path)))
        assert f"the private key file {path} cannot be reached (Permission denied)" in message
        assert "permissions of its directories" in message
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_warns_when_key_file_is_readable_by_others(tmp_path, pems, caplog, mode) -> None:
    path = write_key(tmp_path / "contract.pem", pems["pkcs8"], mode=mode)
    with caplog.at_level(logging.WARNING, logger="privateshare.keys"):
        file_store(tmp_path, str(path)).privateshare_key_handle()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert f"chmod 600 {path}" in warnings[0].getMessage()
    assert f"{mode:04o}" in warnings[0].getMessage()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_no_warning_for_private_key_file(tmp_path, pems, caplog) -> None:
    path = write_key(tmp_path / "contract.pem", pems["pkcs8"], mode=0o600)
    with caplog.at_level(logging.DEBUG, logger="privateshare"):
        file_store(tmp_path, str(path)).privateshare_key_handle()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The info line names the source and a public fingerprint, never the key.
    assert "RSA-2048" in caplog.text
    assert_clean(caplog.text, pems["pkcs8"])


def test_key_pasted_into_path_is_not_echoed(tmp_path, pems) -> None:
    with pytest.raises(KeyStoreError) as info:
        file_store(tmp_path, pems["pkcs8"].decode())
    assert "not the key itself" in str(info.value)
    assert_clean(error_text(info.value), pems["pkcs8"])


# --- env-key ---------------------------------------------------------------------


def b64_wrapped(data: bytes) -> str:
    return "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76))


ENV_FORMS = {
    "raw-pem": lambda d: d.decode(),
    "raw-pem-escaped-newlines": lambda d: d.decode().replace("\n", "\\n"),
    "base64": lambda d: base64.b64encode(d).decode(),
    "base64-wrapped": b64_wrapped,
    "base64-urlsafe-unpadded": lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="),
}


@pytest.mark.parametrize("form", sorted(ENV_FORMS))
@pytest.mark.parametrize("fmt", ["pkcs8", "pkcs1"])
def test_env_store_accepts_pem_and_base64(tmp_path, pems, rsa_key, monkeypatch, form, fmt) -> None:
    monkeypatch.setenv(VAR, ENV_FORMS[form](pems[fmt]))
    handle = env_store(tmp_path).privateshare_key_handle()
    assert handle.public_key().public_numbers() == rsa_key.public_key().public_numbers()
    assert f"environment variable {VAR}" in repr(handle)


def test_env_store_default_variable_name(tmp_path, pems, monkeypatch) -> None:
    assert EnvKeyStore.Options().variable == "PRIVATESHARE_PRIVATE_KEY"
    monkeypatch.setenv("PRIVATESHARE_PRIVATE_KEY", base64.b64encode(pems["pkcs1"]).decode())
    store = EnvKeyStore(EnvKeyStore.Options(), ctx(tmp_path))
    assert store.privateshare_key_handle().key_size == 2048


def test_env_store_encrypted_with_password(tmp_path, pems, monkeypatch) -> None:
    monkeypatch.setenv(VAR, base64.b64encode(pems["encrypted"]).decode())
    store = env_store(tmp_path, Secret.literal("s3cret pass"))
    assert store.privateshare_key_handle().key_size == 2048


def test_env_store_loads_once(tmp_path, pems, monkeypatch) -> None:
    monkeypatch.setenv(VAR, pems["pkcs8"].decode())
    store = env_store(tmp_path)
    first = store.privateshare_key_handle()
    monkeypatch.delenv(VAR)
    assert store.privateshare_key_handle() is first


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ENV_CASES = [
    # (name, value builder, password, expected, fix)
    ("unset", None, None, "is not set", "export it"),
    ("empty", lambda p: "", None, "is empty", "base64 -w0"),
    ("blank", lambda p: "  \n\t", None, "is empty", "base64 -w0"),
    ("bad-base64", lambda p: _b64(p["pkcs8"])[:40] + "=" + _b64(p["pkcs8"])[40:], None,
     "does not decode", "base64 -w0"),
    ("bad-base64-length", lambda p: base64.b64encode(p["pkcs8"]).decode()[:-4] + "Q", None,
     "does not decode", "base64 -w0"),
    ("not-base64", lambda p: "key: " + base64.b64encode(p["pkcs8"]).decode()[:80], None,
     "neither a PEM block nor base64", "base64 -w0"),
    ("base64-of-der", lambda p: base64.b64encode(b"\x30\x82" + p["pkcs8"][40:200]).decode(),
     None, "not to a PEM block", "header lines included"),
    ("encrypted-no-password", lambda p: p["encrypted"].decode(), None, "is encrypted",
     "give its password"),
    ("wrong-password", lambda p: base64.b64encode(p["encrypted"]).decode(), "nope",
     "password is wrong", "check the secret"),
    ("ec", lambda p: p["ec"].decode(), None, "not RSA", "openssl genpkey"),
    ("rsa-1024", lambda p: base64.b64encode(p["rsa1024"]).decode(), None, "RSA-1024",
     "at least 2048"),
    ("public", lambda p: p["public"].decode(), None, "public key", "private key"),
    ("garbage-pem", lambda p: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
     None, "not a valid PEM private key", "export it again"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "build", "password", "expected", "fix"), ENV_CASES)
def test_env_store_bad_values(tmp_path, pems, monkeypatch, name, build, password, expected, fix):
    value = "" if build is None else build(pems)
    if build is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    store = env_store(tmp_path, Secret.literal(password) if password else None)
    with pytest.raises(KeyStoreError) as info:
        store.privateshare_key_handle()
    message = str(info.value)
    assert expected in message and fix in message, message
    assert f"environment variable {VAR}" in message
    text = error_text(info.value) + repr(store) + repr(store.options)
    assert_clean(text, pems["pkcs8"], pems["encrypted"], pems["rsa1024"], pems["ec"])
    if value:
        for chunk in (value[i : i + 24] for i in range(0, len(value) - 24, 24)):
            assert chunk not in text


def _armoured(label: str, body: str, headers: str = "") -> str:
    return f"-----BEGIN {label}-----\n{headers}{body}\n-----END {label}-----\n"


def _hostile_env_values(pems: dict[str, bytes]) -> dict[str, bytes]:
    """Values an operator could put in the variable by mistake, each failing differently."""
    body = "".join(pems["pkcs8"].decode().splitlines()[1:-1])
    junk = base64.b64encode(os.urandom(1500)).decode()
    return {
        "junk-der": _armoured("PRIVATE KEY", junk).encode(),
        "cut-in-half": _armoured("PRIVATE KEY", body[: len(body) // 2]).encode(),
        "one-char-changed": _armoured("PRIVATE KEY", body[:300] + "!" + body[301:]).encode(),
        "unknown-cipher": _armoured(
            "RSA PRIVATE KEY",
            junk,
            "Proc-Type: 4,ENCRYPTED\nDEK-Info: FOO-128-CBC,00112233445566778899AABBCCDDEEFF\n\n",
        ).encode(),
        "escaped-newlines-damaged": _armoured("PRIVATE KEY", body[:-40] + "Zm9v")
        .replace("\n", "\\n")
        .encode(),
        "base64-of-junk-pem": base64.b64encode(_armoured("PRIVATE KEY", junk).encode()),
        "secret-words-in-armour": _armoured(
            "PRIVATE KEY", "TOPSECRETVALUE-hunter2-hunter2"
        ).encode(),
        "not-utf8": b"\xff\xfe" + _armoured("PRIVATE KEY", junk).encode(),
        "huge": _armoured("PRIVATE KEY", junk * 800).encode(),
        "certificate-only": _armoured("CERTIFICATE", junk).encode(),
    }


def _windows(value: bytes) -> list[str]:
    """12-character windows of the value's content lines (not the generic armour)."""
    text = value.decode("utf-8", "replace").replace("\\n", "\n")
    lines = [ln for ln in text.splitlines() if ln and "-----" not in ln]
    joined = "".join(lines)
    return [joined[i : i + 12] for i in range(0, max(len(joined) - 12, 1), 5)][:2000]


@pytest.mark.parametrize(
    "case",
    [
        "junk-der",
        "cut-in-half",
        "one-char-changed",
        "unknown-cipher",
        "escaped-newlines-damaged",
        "base64-of-junk-pem",
        "secret-words-in-armour",
        "not-utf8",
        "huge",
        "certificate-only",
    ],
)
@pytest.mark.parametrize("password", [None, "pw"])
def test_env_key_errors_never_echo_the_variable(
    tmp_path, pems, monkeypatch, caplog, case, password
) -> None:
    value = _hostile_env_values(pems)[case]
    monkeypatch.setitem(os.environb, os.fsencode(VAR), value)
    caplog.set_level(logging.DEBUG)
    store = env_store(tmp_path, Secret.literal(password) if password else None)
    with pytest.raises(KeyStoreError) as info:
        store.privateshare_key_handle()
    message = str(info.value)
    assert f"environment variable {VAR}" in message
    # Everything a log or a debugger could show, suppressed contexts included.
    seen = [error_text(info.value), repr(store), caplog.text]
    exc: BaseException | None = info.value
    while exc is not None:
        seen += [str(exc), repr(exc), repr(exc.args)]
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(seen)
    leaked = [w for w in _windows(value) if w in text]
    assert not leaked, (case, leaked[:3], message)


def test_key_pasted_into_variable_option_is_not_echoed(tmp_path, pems) -> None:
    with pytest.raises(KeyStoreError) as info:
        EnvKeyStore(EnvKeyStore.Options(variable=pems["pkcs8"].decode()), ctx(tmp_path))
    assert "NAME of an environment variable" in str(info.value)
    assert_clean(error_text(info.value), pems["pkcs8"])


# --- operations through the handle ---------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("kind", ["file", "env"])
def test_handles_sign_ps512_and_decrypt_oaep_sha1(tmp_path, pems, rsa_key, monkeypatch, kind):
    if kind == "file":
        write_key(tmp_path / "k.pem", pems["pkcs1"])
        handle = file_store(tmp_path, "k.pem").privateshare_key_handle()
    else:
        monkeypatch.setenv(VAR, base64.b64encode(pems["pkcs8"]).decode())
        handle = env_store(tmp_path).privateshare_key_handle()

    header, payload = b64url(b'{"alg":"PS512","typ":"JWT"}'), b64url(b'{"sub":"u1"}')
    signing_input = f"{header}.{payload}"
    signature = handle.sign_ps512(signing_input.encode())
    rsa_key.public_key().verify(
        signature,
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64),
        hashes.SHA512(),
    )
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = f"{signing_input}.{b64url(signature)}"
    assert jwt.decode(token, public_pem, algorithms=["PS512"]) == {"sub": "u1"}

    secret = os.urandom(32)
    wrapped = rsa_key.public_key().encrypt(
        secret, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )
    assert handle.decrypt_oaep_sha1(wrapped) == secret


# --- plugin plumbing -------------------------------------------------------------


def test_entry_points_resolve_to_these_classes() -> None:
    eps = {ep.name: ep for ep in entry_points(group="privateshare.key_stores")}
    assert eps["file"].load() is FileKeyStore
    assert eps["env-key"].load() is EnvKeyStore
    assert FileKeyStore.description and EnvKeyStore.description


def test_hook_implementation_matches_hookspec(tmp_path, pems, monkeypatch) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    monkeypatch.setenv(VAR, pems["pkcs8"].decode())
    pm.register(env_store(tmp_path), name="keys")
    pm.check_pending()
    assert pm.hook.privateshare_key_handle().key_size == 2048


def _dec_hook(type_, obj):
    if type_ is Secret:
        return Secret.from_reference(obj)
    raise NotImplementedError


def test_options_decode_and_reject_unknown_keys() -> None:
    opts = msgspec.convert(
        {"path": "k.pem", "password": {"env": "PW"}}, FileKeyStore.Options, dec_hook=_dec_hook
    )
    assert opts.password == Secret(env="PW")
    with pytest.raises(msgspec.ValidationError, match="pasword"):
        msgspec.convert({"path": "k.pem", "pasword": {"env": "PW"}}, FileKeyStore.Options)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"variable": "-----BEGIN PRIVATE KEY-----"}, EnvKeyStore.Options)
    with pytest.raises(msgspec.ValidationError, match="password"):
        msgspec.convert(
            {"path": "k.pem", "password": "literal"}, FileKeyStore.Options, dec_hook=_dec_hook
        )


# --- the shared conformance suite -------------------------------------------------------


class TestFileKeyStoreConformance(KeyStoreConformance):
    @pytest.fixture
    def key_store(self, tmp_path, pems):
        self._pems = pems
        write_key(tmp_path / "contract.pem", pems["encrypted"])
        return file_store(tmp_path, "contract.pem", Secret.literal("s3cret pass"))

    def secret_strings(self) -> list[str]:
        return [*fragments(self._pems["encrypted"]), *fragments(self._pems["pkcs8"]), "s3cret"]


class TestEnvKeyStoreConformance(KeyStoreConformance):
    @pytest.fixture
    def key_store(self, tmp_path, pems, monkeypatch):
        self._pems = pems
        monkeypatch.setenv(VAR, base64.b64encode(pems["pkcs1"]).decode())
        return env_store(tmp_path)

    def secret_strings(self) -> list[str]:
        return [*fragments(self._pems["pkcs1"]), *fragments(self._pems["pkcs8"])]
