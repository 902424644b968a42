"""The ``kms`` key store and ``keys wrap`` against moto's KMS and S3 over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import stat
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from privateshare.cli import main
from privateshare.config import decode_options
from privateshare.errors import ConfigError, KeyStoreError
from privateshare.flow import Flow
from privateshare.framework import load
from privateshare.hooks import PluginContext
from privateshare.keys import SoftwareKeyHandle
from privateshare.plugins.keys_kms import KmsKeyStore
from privateshare.sandbox import Sandbox
from privateshare.secrets import Secret
from privateshare.testing.conformance import KeyStoreConformance
from privateshare.testing.helpers import TestKey
from privateshare.testing.sandboxed import consent, sandbox_config, sha256_tree

if TYPE_CHECKING:
    from privateshare.testing.aws import MotoServer

pytest_plugins = ["privateshare.testing.aws"]

CONTEXT = {"app": "privateshare", "contract": "c1"}


def wrap(
    server: MotoServer, key_id: str, pem: Path, out: str, *extra: str, context: dict | None = None
) -> Any:
    pairs = [
        arg
        for k, v in (CONTEXT if context is None else context).items()
        for arg in ("--context", f"{k}={v}")
    ]
    return CliRunner().invoke(
        main,
        [
            "keys",
            "wrap",
            "--kms-key-id",
            key_id,
            "--in",
            str(pem),
            "--out",
            out,
            "--endpoint-url",
            server.endpoint_url,
            *pairs,
            *extra,
        ],
    )


def make_store(server: MotoServer, base: Path, name: str = "keys", **options: Any) -> KmsKeyStore:
    options.setdefault("endpoint_url", server.endpoint_url)
    return KmsKeyStore(KmsKeyStore.Options(**options), PluginContext(name=name, base_dir=base))


def pem_lines(key: TestKey) -> list[str]:
    return [line for line in key.pem.decode().splitlines() if not line.startswith("-----")]


def error_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


@pytest.fixture
def kms_key(aws_env: MotoServer) -> str:
    return aws_env.make_kms_key()


@pytest.fixture
def blob(aws_env: MotoServer, kms_key: str, tmp_path: Path, privateshare_test_key: TestKey) -> Path:
    pem = privateshare_test_key.write(tmp_path / "contract.pem")
    result = wrap(aws_env, kms_key, pem, str(tmp_path / "contract.kms"))
    assert result.exit_code == 0, result.output
    pem.unlink()  # what the command tells the user to do
    return tmp_path / "contract.kms"


class TestKmsKeyStore(KeyStoreConformance):
    @pytest.fixture
    def key_store(
        self, aws_env: MotoServer, blob: Path, privateshare_test_key: TestKey
    ) -> KmsKeyStore:
        self.test_key = privateshare_test_key
        return make_store(aws_env, blob.parent, path=blob.name, encryption_context=CONTEXT)

    def secret_strings(self) -> list[str]:
        return pem_lines(self.test_key)


# --- the envelope --------------------------------------------------------------------------


def test_the_blob_is_an_envelope_without_the_key(
    blob: Path, kms_key: str, privateshare_test_key: TestKey
) -> None:
    text = blob.read_text()
    document = json.loads(text)
    assert document["format"] == "privateshare-kms-envelope" and document["version"] == 1
    assert document["key_id"].endswith(kms_key) and document["encryption_context"] == CONTEXT
    assert document["algorithm"] == "AES-256-GCM"
    assert len(base64.b64decode(document["nonce"])) == 12
    for line in pem_lines(privateshare_test_key):
        assert line not in text
    assert "PRIVATE KEY" not in text
    assert stat.S_IMODE(blob.stat().st_mode) == 0o600


def test_the_unwrapped_key_is_the_wrapped_one_and_stays_in_memory(
    aws_env: MotoServer, blob: Path, privateshare_test_key: TestKey
) -> None:
    before = sorted(p.name for p in blob.parent.iterdir())
    store = make_store(aws_env, blob.parent, path="contract.kms")  # context from the blob
    handle = store.privateshare_key_handle()
    assert isinstance(handle, SoftwareKeyHandle)
    expected = privateshare_test_key.handle.public_key().public_numbers()
    assert handle.public_key().public_numbers() == expected
    assert store.privateshare_key_handle() is handle
    assert sorted(p.name for p in blob.parent.iterdir()) == before  # nothing written
    assert "KMS blob in file" in repr(handle)


def test_blob_from_an_environment_variable(
    aws_env: MotoServer, blob: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for value in (blob.read_text(), base64.b64encode(blob.read_bytes()).decode()):
        monkeypatch.setenv("CONTRACT_KEY_BLOB", value)
        store = make_store(aws_env, tmp_path, variable="CONTRACT_KEY_BLOB")
        assert store.privateshare_key_handle().key_size == 2048
    monkeypatch.delenv("CONTRACT_KEY_BLOB")
    with pytest.raises(KeyStoreError, match="CONTRACT_KEY_BLOB is not set"):
        make_store(aws_env, tmp_path, variable="CONTRACT_KEY_BLOB").privateshare_key_handle()


def test_blob_in_s3(
    aws_env: MotoServer, kms_key: str, tmp_path: Path, privateshare_test_key: TestKey
) -> None:
    bucket = aws_env.make_bucket()
    pem = privateshare_test_key.write(tmp_path / "contract.pem")
    result = wrap(aws_env, kms_key, pem, f"s3://{bucket}/keys/contract.kms")
    assert result.exit_code == 0, result.output
    assert f's3_uri = "s3://{bucket}/keys/contract.kms"' in result.output
    store = make_store(aws_env, tmp_path, s3_uri=f"s3://{bucket}/keys/contract.kms")
    assert store.privateshare_key_handle().key_size == 2048
    missing = make_store(aws_env, tmp_path, s3_uri=f"s3://{bucket}/keys/absent.kms")
    with pytest.raises(KeyStoreError, match=r"absent\.kms does not exist; upload the blob"):
        missing.privateshare_key_handle()


# --- errors ---------------------------------------------------------------------------------


def test_wrong_kms_key_is_named(aws_env: MotoServer, blob: Path, kms_key: str) -> None:
    other = aws_env.make_kms_key("another key")
    store = make_store(aws_env, blob.parent, path=blob.name, key_id=other)
    with pytest.raises(KeyStoreError) as caught:
        store.privateshare_key_handle()
    message = str(caught.value)
    assert f"was wrapped with KMS key arn:aws:kms:eu-west-1:123456789012:key/{kms_key}" in message
    assert f"not {other} as key_id says" in message and "[keys]" in message
    # An alias cannot be compared offline: KMS itself refuses the wrong key.
    aws_env.client("kms").create_alias(AliasName="alias/ps-other", TargetKeyId=other)
    store = make_store(aws_env, blob.parent, path=blob.name, key_id="alias/ps-other")
    with pytest.raises(KeyStoreError) as caught:
        store.privateshare_key_handle()
    message = str(caught.value)
    assert "[keys]: cannot decrypt the data key" in message and "alias/ps-other" in message
    assert "botocore" not in "".join(traceback.format_exception(caught.value))


def test_wrong_encryption_context(aws_env: MotoServer, blob: Path) -> None:
    store = make_store(
        aws_env, blob.parent, path=blob.name, encryption_context={"app": "someone-else"}
    )
    with pytest.raises(KeyStoreError) as caught:
        store.privateshare_key_handle()
    message = str(caught.value)
    assert "InvalidCiphertextException" in message and "encryption context" in message


def test_an_altered_blob_fails_its_integrity_check(aws_env: MotoServer, blob: Path) -> None:
    document = json.loads(blob.read_text())
    sealed = bytearray(base64.b64decode(document["ciphertext"]))
    sealed[10] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    blob.write_text(json.dumps(document))
    with pytest.raises(KeyStoreError, match=r"fails its integrity check \(AES-GCM\)"):
        make_store(aws_env, blob.parent, path=blob.name).privateshare_key_handle()


def test_not_a_blob(aws_env: MotoServer, tmp_path: Path, privateshare_test_key: TestKey) -> None:
    privateshare_test_key.write(tmp_path / "plain.pem")
    with pytest.raises(KeyStoreError, match="holds a plain PEM private key, not a KMS blob"):
        make_store(aws_env, tmp_path, path="plain.pem").privateshare_key_handle()
    (tmp_path / "junk").write_text('{"hello": 1}')
    with pytest.raises(KeyStoreError, match="not a key blob from 'privateshare keys wrap'"):
        make_store(aws_env, tmp_path, path="junk").privateshare_key_handle()
    with pytest.raises(KeyStoreError, match=r"missing\.kms does not exist; make it with"):
        make_store(aws_env, tmp_path, path="missing.kms").privateshare_key_handle()


def test_bad_credentials(
    moto_auth_server: MotoServer,
    tmp_path: Path,
    privateshare_test_key: TestKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = moto_auth_server
    key_id = server.make_kms_key()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    pem = privateshare_test_key.write(tmp_path / "contract.pem")
    assert wrap(server, key_id, pem, str(tmp_path / "k.kms")).exit_code == 0
    monkeypatch.setenv("KMS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("KMS_SECRET", "not-the-secret-0000")
    store = make_store(
        server,
        tmp_path,
        path="k.kms",
        access_key_id=Secret(env="KMS_KEY_ID"),
        secret_access_key=Secret(env="KMS_SECRET"),
    )
    with pytest.raises(KeyStoreError) as caught:
        store.privateshare_key_handle()
    message = str(caught.value)
    assert "[keys]: cannot decrypt the data key" in message
    assert "the secret access key does not match the access key id" in message
    assert "environment variable KMS_KEY_ID" in message
    text = error_text(caught.value) + repr(store) + repr(store.options)
    assert "not-the-secret-0000" not in text and server.secret_access_key not in text


def test_wrap_errors(aws_env: MotoServer, tmp_path: Path, privateshare_test_key: TestKey) -> None:
    pem = privateshare_test_key.write(tmp_path / "contract.pem")
    missing = wrap(aws_env, "alias/does-not-exist", pem, str(tmp_path / "x.kms"))
    assert missing.exit_code == 5 and "the KMS key does not exist" in missing.output
    key_id = aws_env.make_kms_key()
    assert wrap(aws_env, key_id, pem, str(tmp_path / "x.kms")).exit_code == 0
    again = wrap(aws_env, key_id, pem, str(tmp_path / "x.kms"))
    assert again.exit_code == 5 and "pass --force" in again.output
    assert wrap(aws_env, key_id, pem, str(tmp_path / "x.kms"), "--force").exit_code == 0
    (tmp_path / "pub.pem").write_bytes(privateshare_test_key.public_pem)
    public = wrap(aws_env, key_id, tmp_path / "pub.pem", str(tmp_path / "y.kms"))
    assert public.exit_code == 5 and "public key or certificate" in public.output
    assert not (tmp_path / "y.kms").exists()


def test_options_need_exactly_one_blob_source(aws_env: MotoServer, tmp_path: Path) -> None:
    def decode(**options: Any) -> None:
        decode_options(options, KmsKeyStore.Options, "[keys]", tmp_path)

    with pytest.raises(ConfigError, match=r"exactly one of path, variable or s3_uri.*found none"):
        decode()
    with pytest.raises(ConfigError, match="found path and variable"):
        decode(path="a", variable="B")
    with pytest.raises(ConfigError, match=r"s3_uri: expected a string matching \^s3://"):
        decode(s3_uri="bucket/key")
    with pytest.raises(ValueError, match="exactly one of path, variable or s3_uri"):
        make_store(aws_env, tmp_path)  # in code too


# --- the whole flow ---------------------------------------------------------------------------


def test_the_flow_runs_with_a_kms_wrapped_key(
    aws_env: MotoServer,
    kms_key: str,
    privateshare_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    sandbox = privateshare_sandbox(files=20)
    blob = tmp_path / "ongoing.kms"
    result = wrap(aws_env, kms_key, sandbox.key_path("ongoing"), str(blob))
    assert result.exit_code == 0, result.output
    raw = sandbox_config(sandbox, tmp_path, pull={"concurrency": 4, "poll_interval": 0.02})
    raw["keys"] = {  # replaces the sandbox's [keys] type = "file"
        "type": "kms",
        "path": str(blob),
        "key_id": kms_key,
        "encryption_context": CONTEXT,
    }
    fw = load(raw, base_dir=tmp_path)
    assert "from the KMS blob" in repr(fw.key_handle())
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    assert sha256_tree(tmp_path / "data" / "alice") == sandbox.ground_truth()
    fw.close()
    assert os.environ.get("AWS_ENDPOINT_URL") == aws_env.endpoint_url  # the standard chain


def doc_config(page: str) -> str:
    """The TOML block under "## A working config" in ``docs/<page>``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text(encoding="utf-8")
    section = text.split("## A working config", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_documented_config_loads(privateshare_factory: Callable[..., Any]) -> None:
    fw = privateshare_factory(doc_config("kms.md"))
    store = fw.plugins["keys"]
    assert isinstance(store, KmsKeyStore) and store.options.encryption_context == {
        "app": "privateshare",
        "contract": "c1",
    }
