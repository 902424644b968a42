"""The ``pkcs11`` key store and ``keys import-pkcs11`` against a real SoftHSM2 token."""

from __future__ import annotations

import hashlib
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from privateshare.cli import main
from privateshare.errors import ConfigError, KeyStoreError
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.hooks import PluginContext
from privateshare.plugins.keys_pkcs11 import Pkcs11KeyStore
from privateshare.sandbox import Sandbox
from privateshare.secrets import Secret
from privateshare.testing.conformance import KeyStoreConformance
from privateshare.testing.helpers import TestKey
from privateshare.testing.sandboxed import consent, sandbox_config, sha256_tree

if TYPE_CHECKING:
    from privateshare.testing.softhsm import SoftHsm

pytest_plugins = ["privateshare.testing.softhsm"]

PIN_VAR = "PRIVATESHARE_HSM_PIN"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)


@pytest.fixture(scope="module")
def hsm(
    softhsm: SoftHsm, privateshare_test_key: TestKey, tmp_path_factory: pytest.TempPathFactory
) -> SoftHsm:
    """The first token holds the test key as ``contract`` and a second key as ``other``."""
    directory = tmp_path_factory.mktemp("pem")
    output = softhsm.import_key(privateshare_test_key.write(directory / "contract.pem"), "contract")
    assert "non-extractable" in output and "BEGIN" not in output
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "other.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    softhsm.import_key(directory / "other.pem", "other")
    return softhsm


@pytest.fixture
def pin_env(hsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PIN_VAR, hsm.pin)
    return PIN_VAR


def make_store(
    hsm: SoftHsm, name: str = "keys", pin: Secret | None = None, **options: Any
) -> Pkcs11KeyStore:
    options.setdefault("module", hsm.module)
    options.setdefault("token_label", hsm.tokens[0])
    options.setdefault("key_label", "contract")
    return Pkcs11KeyStore(
        Pkcs11KeyStore.Options(pin=pin or Secret(env=PIN_VAR), **options),
        PluginContext(name=name, base_dir=Path(".")),
    )


def error_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


class TestPkcs11KeyStore(KeyStoreConformance):
    @pytest.fixture
    def key_store(
        self, hsm: SoftHsm, pin_env: str, privateshare_test_key: TestKey
    ) -> Iterator[Pkcs11KeyStore]:
        self.hsm, self.test_key = hsm, privateshare_test_key
        store = make_store(hsm)
        yield store
        store.close()

    def secret_strings(self) -> list[str]:
        lines = self.test_key.pem.decode().splitlines()
        return [ln for ln in lines if not ln.startswith("-----")] + [self.hsm.pin]


def test_the_handle_is_the_imported_key(
    hsm: SoftHsm, pin_env: str, privateshare_test_key: TestKey
) -> None:
    store = make_store(hsm)
    handle = store.privateshare_key_handle()
    expected = privateshare_test_key.handle.public_key().public_numbers()
    assert handle.public_key().public_numbers() == expected
    # What the software key signs, the token's key verifies, and the other way round.
    signature = handle.sign_ps512(b"header.payload")
    privateshare_test_key.handle.public_key().verify(
        signature, b"header.payload", PSS, hashes.SHA512()
    )
    file_key = os.urandom(32)
    assert handle.decrypt_oaep_sha1(expected.public_key().encrypt(file_key, OAEP)) == file_key
    assert "token 'privateshare-test', key 'contract'" in repr(handle)
    store.close()


def test_the_private_key_never_leaves_the_token(hsm: SoftHsm) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeSensitive

    from privateshare.plugins.keys_pkcs11 import close_token_session, open_token_session

    lib = pkcs11.lib(hsm.module)
    session = open_token_session(lib, hsm.module, hsm.tokens[0], Secret.literal(hsm.pin), "t")
    try:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="contract")
        assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.PRIVATE] is True and key[Attribute.TOKEN] is True
        for secret_part in (Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.COEFFICIENT):
            with pytest.raises(AttributeSensitive):
                key[secret_part]
        public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label="contract")
        assert public[Attribute.MODULUS] == key[Attribute.MODULUS]
    finally:
        close_token_session(hsm.module, hsm.tokens[0], session)


def test_a_ciphertext_for_another_key_is_a_value_error(hsm: SoftHsm, pin_env: str) -> None:
    handle = make_store(hsm).privateshare_key_handle()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    for ciphertext in (other.encrypt(os.urandom(32), OAEP), b"short", b"\xff" * 256):
        with pytest.raises(ValueError):
            handle.decrypt_oaep_sha1(ciphertext)
    # The token is still fine afterwards.
    file_key = os.urandom(32)
    assert handle.decrypt_oaep_sha1(handle.public_key().encrypt(file_key, OAEP)) == file_key


def test_concurrent_signing_and_decrypting(hsm: SoftHsm, pin_env: str) -> None:
    handle = make_store(hsm).privateshare_key_handle()
    public = handle.public_key()
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                message = f"{n}-{i}".encode()
                public.verify(handle.sign_ps512(message), message, PSS, hashes.SHA512())
                secret = os.urandom(32)
                assert handle.decrypt_oaep_sha1(public.encrypt(secret, OAEP)) == secret
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []


def test_two_stores_on_one_token_share_the_login(hsm: SoftHsm, pin_env: str) -> None:
    one, two = make_store(hsm), make_store(hsm, key_label="other")
    assert one.privateshare_key_handle().public_key() != two.privateshare_key_handle()
    one.close()
    message = b"still logged in"
    handle = two.privateshare_key_handle()
    handle.public_key().verify(handle.sign_ps512(message), message, PSS, hashes.SHA512())
    two.close()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("logged_in_elsewhere", [False, True])
def test_wrong_pin(hsm: SoftHsm, pin_env: str, logged_in_elsewhere: bool) -> None:
    other = make_store(hsm)
    if logged_in_elsewhere:
        other.privateshare_key_handle()
    store = make_store(hsm, pin=Secret(env="WRONG_PIN"))
    os.environ["WRONG_PIN"] = "999999"
    try:
        with pytest.raises(KeyStoreError) as caught:
            store.privateshare_key_handle()
    finally:
        del os.environ["WRONG_PIN"]
        other.close()
    message = str(caught.value)
    assert "[keys]" in message
    assert "the PIN from environment variable WRONG_PIN is wrong for token 'privateshare-test'" in (
        message
    )
    text = error_text(caught.value)
    assert hsm.pin not in text and "999999" not in text
    assert "pkcs11" not in "".join(traceback.format_exception(caught.value)).replace(
        "keys_pkcs11", ""
    )


def test_missing_token_label_names_the_tokens_there(hsm: SoftHsm, pin_env: str) -> None:
    with pytest.raises(KeyStoreError) as caught:
        make_store(hsm, token_label="no-such-token").privateshare_key_handle()
    message = str(caught.value)
    assert "[keys] no token labelled 'no-such-token'" in message
    assert "'privateshare-test'" in message and "fix token_label" in message


def test_missing_key_label_says_how_to_import(hsm: SoftHsm, pin_env: str) -> None:
    with pytest.raises(KeyStoreError) as caught:
        make_store(hsm, key_label="absent").privateshare_key_handle()
    message = str(caught.value)
    assert "holds no RSA private key labelled 'absent'" in message
    assert "privateshare keys import-pkcs11" in message


def test_bad_module_paths(hsm: SoftHsm, pin_env: str, tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="does not exist; set module"):
        make_store(hsm, module=str(tmp_path / "nope.so")).privateshare_key_handle()
    (tmp_path / "fake.so").write_text("not a library")
    with pytest.raises(KeyStoreError, match="cannot be loaded as a PKCS#11 library"):
        make_store(hsm, module=str(tmp_path / "fake.so")).privateshare_key_handle()


def test_unset_pin_variable(hsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_PIN_VAR", raising=False)
    store = make_store(hsm, pin=Secret(env="UNSET_PIN_VAR"))
    with pytest.raises(KeyStoreError, match="UNSET_PIN_VAR is not set"):
        store.privateshare_key_handle()


def test_config_requires_a_pin_reference(privateshare_factory: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="secret must not be written in the config"):
        privateshare_factory('[keys]\ntype = "pkcs11"\ntoken_label = "t"\npin = "1234"\n')
    with pytest.raises(ConfigError, match="pin"):
        privateshare_factory('[keys]\ntype = "pkcs11"\ntoken_label = "t"\n')


# --- the import command ---------------------------------------------------------------------


def test_import_command_refuses_a_taken_label_and_bad_input(
    hsm: SoftHsm, tmp_path: Path, privateshare_test_key: TestKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THE_PIN", hsm.pin)
    pem = privateshare_test_key.write(tmp_path / "k.pem")
    runner = CliRunner()
    args = ["import-pkcs11", "--module", hsm.module, "--token-label", hsm.tokens[1]]
    first = runner.invoke(
        main, ["keys", *args, "--key-label", "migrated", "--in", str(pem), "--pin-env", "THE_PIN"]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        main, ["keys", *args, "--key-label", "migrated", "--in", str(pem), "--pin-env", "THE_PIN"]
    )
    assert again.exit_code == 5
    assert "already holds 2 object(s) labelled 'migrated'" in again.output
    (tmp_path / "pub.pem").write_bytes(privateshare_test_key.public_pem)
    public = runner.invoke(
        main, ["keys", *args, "--in", str(tmp_path / "pub.pem"), "--pin-env", "THE_PIN"]
    )
    assert public.exit_code == 5 and "public key or certificate" in public.output
    store = make_store(
        hsm, token_label=hsm.tokens[1], key_label="migrated", pin=Secret(env="THE_PIN")
    )
    handle = store.privateshare_key_handle()
    expected = privateshare_test_key.handle.public_key().public_numbers()
    assert handle.public_key().public_numbers() == expected
    store.close()


def test_import_command_prompts_for_the_pin_and_shows_no_key(hsm: SoftHsm, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pem pass"),
    )
    (tmp_path / "enc.pem").write_bytes(pem)
    (tmp_path / "pw").write_text("pem pass\n")
    result = CliRunner().invoke(
        main,
        [
            "keys",
            "import-pkcs11",
            "--module",
            hsm.module,
            "--token-label",
            hsm.tokens[1],
            "--key-label",
            "prompted",
            "--in",
            str(tmp_path / "enc.pem"),
            "--password-file",
            str(tmp_path / "pw"),
        ],
        input=hsm.pin + "\n",
    )
    assert result.exit_code == 0, result.output
    assert hsm.pin not in result.output and "PRIVATE KEY" not in result.output
    fingerprint = hashlib.sha256(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).hexdigest()
    assert fingerprint[:16] in result.output
    bad = CliRunner().invoke(
        main,
        [
            "keys",
            "import-pkcs11",
            "--module",
            hsm.module,
            "--token-label",
            hsm.tokens[1],
            "--key-label",
            "x",
            "--in",
            str(tmp_path / "enc.pem"),
            "--password-file",
            str(tmp_path / "pw"),
        ],
        input="000000\n",
    )
    assert bad.exit_code == 5 and "PIN" in bad.output and "wrong" in bad.output


# --- the whole flow ---------------------------------------------------------------------------


def test_the_flow_runs_with_the_contract_key_in_the_hsm(
    hsm: SoftHsm, pin_env: str, privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = privateshare_sandbox(files=20)
    # The sandbox's contract key goes into the token the way a user migrates: the command.
    hsm.import_key(sandbox.key_path("ongoing"), f"sandbox-{sandbox.contract().contract_id}")
    raw = sandbox_config(sandbox, tmp_path, pull={"concurrency": 4, "poll_interval": 0.02})
    raw["keys"] = {  # replaces the sandbox's [keys] type = "file"
        "type": "pkcs11",
        "module": hsm.module,
        "token_label": hsm.tokens[0],
        "key_label": f"sandbox-{sandbox.contract().contract_id}",
        "pin": {"env": PIN_VAR},
    }
    fw = load(raw, base_dir=tmp_path)
    handle = fw.key_handle()
    assert type(handle).__name__ == "Pkcs11KeyHandle"
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    assert sha256_tree(tmp_path / "data" / "alice") == sandbox.ground_truth()
    fw.close()


def doc_config(page: str) -> str:
    """The TOML block under "## A working config" in ``docs/<page>``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text(encoding="utf-8")
    section = text.split("## A working config", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_documented_config_loads(privateshare_factory: Callable[..., Any]) -> None:
    fw = privateshare_factory(doc_config("pkcs11.md"))
    store = fw.plugins["keys"]
    assert isinstance(store, Pkcs11KeyStore) and store.options.token_label == "privateshare"
    assert "PRIVATESHARE_HSM_PIN" in repr(store.options.pin)
