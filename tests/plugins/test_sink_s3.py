"""The ``s3`` sink against moto's standalone server over real HTTP (IAM auth enforced)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from privateshare.errors import ConfigError, SinkError
from privateshare.flow import Flow
from privateshare.hooks import PluginContext
from privateshare.plugins.sink_s3 import MiB, S3Sink
from privateshare.sandbox import Sandbox
from privateshare.secrets import Secret
from privateshare.testing.conformance import SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run
from privateshare.testing.sandboxed import consent, sandbox_framework

if TYPE_CHECKING:
    from privateshare.testing.aws import MotoServer

pytest_plugins = ["privateshare.testing.aws"]

PART = 5 * MiB


def make_sink(
    server: MotoServer, bucket: str, name: str = "sinks.archive", **options: Any
) -> S3Sink:
    options.setdefault("endpoint_url", server.endpoint_url)
    options.setdefault("part_size", PART)
    return S3Sink(
        S3Sink.Options(bucket=bucket, **options), PluginContext(name=name, base_dir=Path("."))
    )


def objects(server: MotoServer, bucket: str, prefix: str = "") -> dict[str, bytes]:
    s3 = server.client("s3")
    found: dict[str, bytes] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def uploads(server: MotoServer, bucket: str) -> list[str]:
    listing = server.client("s3").list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]


def error_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


@pytest.fixture
def bucket(aws_env: MotoServer) -> str:
    return aws_env.make_bucket()


# --- the conformance suite ----------------------------------------------------------


class TestS3SinkConformance(SinkConformance):
    # The suite's 50 MiB file in 5 MiB parts: its 8 MiB heap limit holds one part plus
    # botocore's 1 MiB reads for the checksum and the signature.

    @pytest.fixture
    def sink(self, aws_env: MotoServer, bucket: str) -> S3Sink:
        self.server, self.bucket = aws_env, bucket
        return make_sink(aws_env, bucket, prefix="conformance")

    def read_back(self, user: str, name: str) -> bytes | None:
        s3 = self.server.client("s3")
        try:
            key = self.sink.object_key(user, name)
            return bytes(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    def snapshot(self) -> set[Any]:
        keys = set(objects(self.server, self.bucket))
        return keys | {("upload", key) for key in uploads(self.server, self.bucket)}


# --- layout and metadata ---------------------------------------------------------------


def test_objects_go_under_prefix_user_name_with_metadata(aws_env: MotoServer, bucket: str) -> None:
    sink = make_sink(aws_env, bucket, prefix="/digime/raw/")
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    file = make_file(
        "alice",
        "sub/18_4_28_3_1_D201_1.json",
        updated_date=1_700_000_000_123,
        metadata={"objectType": "post", "serviceGroup": "social", "note": "ünï"},
        compression="brotli",
        last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
    )
    writer = sink.privateshare_sink_open_file(run=run, file=file)
    writer.write(b'[{"id": 1}]')
    writer.commit()
    key = "digime/raw/alice/sub/18_4_28_3_1_D201_1.json"
    assert objects(aws_env, bucket) == {key: b'[{"id": 1}]'}
    head = aws_env.client("s3").head_object(Bucket=bucket, Key=key)
    meta = head["Metadata"]
    assert meta["updated-date"] == "1700000000123"
    assert meta["user-id"] == "alice" and meta["compression"] == "brotli"
    assert json.loads(meta["digime-metadata"]) == file.metadata.metadata
    assert head["ContentType"] == "application/json"


def test_metadata_too_large_for_headers_goes_to_a_sidecar_and_is_removed_later(
    aws_env: MotoServer, bucket: str
) -> None:
    sink = make_sink(aws_env, bucket)
    big = {"objectType": "post", "blob": "x" * 3000}
    deliver_to(sink, make_file("alice", "f.json", 1, metadata=big), b"v1")
    found = objects(aws_env, bucket)
    assert set(found) == {"alice/f.json", "alice/f.json.metadata.json"}
    sidecar = json.loads(found["alice/f.json.metadata.json"])
    assert sidecar["metadata"] == big and sidecar["size"] == 2 and sidecar["updated_date"] == 1
    head = aws_env.client("s3").head_object(Bucket=bucket, Key="alice/f.json")
    assert head["Metadata"]["metadata-sidecar"] == "f.json.metadata.json"
    assert "digime-metadata" not in head["Metadata"]
    # An update whose metadata fits again leaves no stale sidecar behind.
    deliver_to(sink, make_file("alice", "f.json", 2, metadata={"objectType": "post"}), b"v2")
    assert objects(aws_env, bucket) == {"alice/f.json": b"v2"}


def test_metadata_false_sends_no_metadata(aws_env: MotoServer, bucket: str) -> None:
    sink = make_sink(aws_env, bucket, metadata=False)
    deliver_to(sink, make_file("alice", "f.metadata.json"), b"{}")
    head = aws_env.client("s3").head_object(Bucket=bucket, Key="alice/f.metadata.json")
    assert head["Metadata"] == {}


def test_raw_files_keep_their_mimetype(aws_env: MotoServer, bucket: str) -> None:
    sink = make_sink(aws_env, bucket)
    deliver_to(sink, make_file("alice", "photo.jpg", metadata={"mimetype": "image/jpeg"}), b"\xff")
    head = aws_env.client("s3").head_object(Bucket=bucket, Key="alice/photo.jpg")
    assert head["ContentType"] == "image/jpeg"


def deliver_to(sink: S3Sink, file: Any, *chunks: bytes) -> None:
    writer = sink.privateshare_sink_open_file(run=make_run(file.user_id), file=file)
    for chunk in chunks:
        writer.write(chunk)
    writer.commit()


# --- multipart: streaming, visibility, abort, kill ----------------------------------------


def test_large_file_is_a_multipart_upload_completed_only_on_commit(
    aws_env: MotoServer, bucket: str
) -> None:
    sink = make_sink(aws_env, bucket)
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "big.bin"))
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for _ in range(12):  # 12 MiB: two full 5 MiB parts and a 2 MiB tail
        writer.write(block)
        digest.update(block)
    assert uploads(aws_env, bucket) == ["alice/big.bin"]  # in flight, invisible
    assert objects(aws_env, bucket) == {}
    writer.commit()
    assert uploads(aws_env, bucket) == []
    s3 = aws_env.client("s3")
    head = s3.head_object(Bucket=bucket, Key="alice/big.bin")
    assert head["ContentLength"] == 12 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    body = s3.get_object(Bucket=bucket, Key="alice/big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == digest.digest()


def test_a_file_of_exactly_one_part_is_a_single_put(aws_env: MotoServer, bucket: str) -> None:
    sink = make_sink(aws_env, bucket)
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "one.bin"))
    writer.write(b"\x01" * PART)
    assert uploads(aws_env, bucket) == []
    writer.commit()
    head = aws_env.client("s3").head_object(Bucket=bucket, Key="alice/one.bin")
    assert head["ContentLength"] == PART and "-" not in head["ETag"]


def test_an_exception_mid_upload_aborts_the_multipart_upload(
    aws_env: MotoServer, bucket: str, privateshare_factory: Callable[..., Any]
) -> None:
    fw = privateshare_factory(
        f"""
        [sinks.archive]
        type = "s3"
        bucket = "{bucket}"
        part_size = {PART}
        """
    )

    def failing() -> Iterator[bytes]:
        for _ in range(8):
            yield b"\x07" * MiB
        raise RuntimeError("the download broke")

    with pytest.raises(RuntimeError, match="the download broke"):
        deliver(fw, make_file("alice", "broken.bin"), failing())
    assert uploads(aws_env, bucket) == []
    assert objects(aws_env, bucket) == {}


def test_an_update_overwrites_and_a_rerun_never_duplicates(
    aws_env: MotoServer, bucket: str
) -> None:
    sink = make_sink(aws_env, bucket, prefix="p")
    deliver_to(sink, make_file("alice", "f.json", 1), b"x" * (6 * MiB))  # multipart
    deliver_to(sink, make_file("alice", "f.json", 2), b"small now")
    deliver_to(sink, make_file("alice", "f.json", 2), b"small now")
    assert objects(aws_env, bucket) == {"p/alice/f.json": b"small now"}


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from privateshare.hooks import PluginContext
    from privateshare.plugins.sink_s3 import S3Sink
    from privateshare.testing.helpers import make_file, make_run

    sink = S3Sink(S3Sink.Options(bucket=sys.argv[1], part_size=5 << 20),
                  PluginContext(name="sinks.archive", base_dir=Path(".")))
    writer = sink.privateshare_sink_open_file(run=make_run(), file=make_file("alice", "big.bin"))
    for i in range(1000):
        writer.write(b"z" * (1 << 20))
        if i == 11:
            print("uploading", flush=True)
    """
)


def test_a_process_killed_mid_upload_leaves_no_object(aws_env: MotoServer, bucket: str) -> None:
    env = {**os.environ}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, bucket], stdout=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"uploading"
        deadline = time.monotonic() + 30
        while not uploads(aws_env, bucket) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uploads(aws_env, bucket) == ["alice/big.bin"]  # parts were on their way
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert objects(aws_env, bucket) == {}
    # The incomplete upload stays invisible; the documented lifecycle rule (or this) clears it.
    s3 = aws_env.client("s3")
    for upload in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    assert objects(aws_env, bucket) == {}


# --- options and errors -------------------------------------------------------------------


def test_server_side_encryption_is_requested(aws_env: MotoServer, bucket: str) -> None:
    s3 = aws_env.client("s3")
    deliver_to(
        make_sink(aws_env, bucket, server_side_encryption="AES256"), make_file("a", "f"), b"x"
    )
    assert s3.head_object(Bucket=bucket, Key="a/f")["ServerSideEncryption"] == "AES256"
    key_id = aws_env.make_kms_key("sse")
    sink = make_sink(
        aws_env, bucket, server_side_encryption="aws:kms", sse_kms_key_id=key_id, metadata=False
    )
    deliver_to(sink, make_file("a", "big"), b"y" * (6 * MiB))
    head = s3.head_object(Bucket=bucket, Key="a/big")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]


def test_credentials_from_secret_references(
    aws_env: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("MY_S3_KEY_ID", aws_env.access_key_id)
    (tmp_path / "s3-secret").write_text(aws_env.secret_access_key + "\n")
    sink = make_sink(
        aws_env,
        bucket,
        access_key_id=Secret(env="MY_S3_KEY_ID"),
        secret_access_key=Secret(file="s3-secret", base_dir=tmp_path),
    )
    deliver_to(sink, make_file("alice", "f.json"), b"via secrets")
    assert objects(aws_env, bucket) == {"alice/f.json": b"via secrets"}


@pytest.mark.parametrize(
    ("key_id", "secret", "expected"),
    [
        ("AKIAUNKNOWNKEY000000", None, "the access key id is not known to AWS"),
        (None, "wrong-secret-value-1234", "secret access key does not match"),
    ],
)
def test_bad_credentials_are_a_clear_sink_error(
    moto_auth_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    key_id: str | None,
    secret: str | None,
    expected: str,
) -> None:
    server = moto_auth_server  # checks signatures against its IAM users, as AWS does
    bucket = server.make_bucket()
    monkeypatch.setenv("BAD_KEY_ID", key_id or server.access_key_id)
    monkeypatch.setenv("BAD_SECRET", secret or server.secret_access_key)
    sink = make_sink(
        server,
        bucket,
        access_key_id=Secret(env="BAD_KEY_ID"),
        secret_access_key=Secret(env="BAD_SECRET"),
    )
    with pytest.raises(SinkError) as caught:
        sink.privateshare_sink_open_run(run=make_run())
    message = str(caught.value)
    assert "[sinks.archive]" in message and expected in message
    assert "environment variable BAD_KEY_ID" in message  # where the credentials came from
    text = error_text(caught.value) + repr(sink) + repr(sink.options)
    for value in (server.secret_access_key, "wrong-secret-value-1234"):
        assert value not in text
    assert "botocore" not in "".join(traceback.format_exception(caught.value))
    # The same error when a file is written without open_run.
    with pytest.raises(SinkError, match=expected):
        deliver_to(sink, make_file("alice", "f.json"), b"x")
    assert objects(server, bucket) == {}


def test_good_credentials_pass_the_checking_server(moto_auth_server: MotoServer) -> None:
    server = moto_auth_server
    bucket = server.make_bucket()
    sink = make_sink(
        server,
        bucket,
        access_key_id=Secret.literal(server.access_key_id),
        secret_access_key=Secret.literal(server.secret_access_key),
    )
    sink.privateshare_sink_open_run(run=make_run())
    deliver_to(sink, make_file("alice", "f.json"), b"signed")
    assert objects(server, bucket) == {"alice/f.json": b"signed"}


def test_missing_bucket_is_a_clear_error(aws_env: MotoServer) -> None:
    sink = make_sink(aws_env, "no-such-bucket-here")
    with pytest.raises(SinkError) as caught:
        sink.privateshare_sink_open_run(run=make_run())
    message = str(caught.value)
    assert "[sinks.archive]" in message
    assert "'no-such-bucket-here' does not exist; create it or fix bucket" in message
    with pytest.raises(SinkError, match="'no-such-bucket-here' does not exist"):
        deliver_to(sink, make_file("alice", "f.json"), b"x")


def test_unreachable_endpoint_is_a_clear_error(aws_env: MotoServer, bucket: str) -> None:
    sink = make_sink(aws_env, bucket, endpoint_url="http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(SinkError, match=r"127\.0\.0\.1:9 cannot be reached"):
        sink.privateshare_sink_open_run(run=make_run())


def test_bad_options_are_config_errors(aws_env: MotoServer, privateshare_factory: Any) -> None:
    def load(options: str) -> None:
        privateshare_factory(f'[sinks.archive]\ntype = "s3"\n{options}\n')

    with pytest.raises(ConfigError, match=r"part_size: expected an integer >= 5242880"):
        load('bucket = "b"\npart_size = 1048576')
    with pytest.raises(ConfigError, match="a bucket name, without '/' or 's3://'"):
        load('bucket = "s3://b/prefix"')
    with pytest.raises(ConfigError, match="access_key_id and secret_access_key: only one"):
        load('bucket = "b"\naccess_key_id = { env = "X" }')
    with pytest.raises(ValueError, match="access_key_id and secret_access_key: only one"):
        make_sink(aws_env, "b", access_key_id=Secret(env="X"))  # in code too
    with pytest.raises(ConfigError, match="sse_kms_key_id: it needs server_side_encryption"):
        load('bucket = "b"\nsse_kms_key_id = "k"')
    with pytest.raises(ConfigError, match=r"prefix: expected a key prefix, found 'a/\.\./b'"):
        load('bucket = "b"\nprefix = "a/../b"')
    with pytest.raises(ConfigError, match=r"unknown key 'buckett'"):
        privateshare_factory('[sinks.archive]\ntype = "s3"\nbuckett = "b"\n')
    with pytest.raises(ConfigError, match="secret must not be written in the config"):
        privateshare_factory(
            '[sinks.archive]\ntype = "s3"\nbucket = "b"\nsecret_access_key = "literal"\n'
        )


# --- the whole flow -------------------------------------------------------------------------


def test_the_flow_delivers_every_file_to_s3(
    aws_env: MotoServer, bucket: str, privateshare_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = privateshare_sandbox(files=25, pending_polls=1, running_polls=2, updated_fraction=0.4)
    fw = sandbox_framework(
        sandbox,
        tmp_path,
        sinks={"archive": {"type": "s3", "bucket": bucket, "prefix": "digime"}},
        pull={"concurrency": 4, "poll_interval": 0.02},
    )
    flow = Flow(fw)
    token, session = consent(flow, "alice")
    summary = flow.pull("alice", token=token, session=session)
    assert not summary.files_failed, summary.files_failed
    truth = sandbox.ground_truth()
    updated = sum(len(f.versions) > 1 for f in sandbox.library.files)
    assert updated > 0 and summary.files_delivered == len(truth) + updated

    def delivered() -> dict[str, str]:
        found = objects(aws_env, bucket, "digime/alice/")
        return {
            key.removeprefix("digime/alice/"): hashlib.sha256(body).hexdigest()
            for key, body in found.items()
            if not key.endswith(".metadata.json")
        }

    assert delivered() == truth  # updates overwrote: one object per file
    assert uploads(aws_env, bucket) == []
    again = flow.pull("alice")
    assert again.files_delivered == 0 and again.files_skipped == len(truth)
    assert delivered() == truth
    fw.close()


def doc_config(page: str) -> str:
    """The TOML block under "## A working config" in ``docs/<page>``."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text(encoding="utf-8")
    section = text.split("## A working config", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_documented_config_loads(privateshare_factory: Callable[..., Any]) -> None:
    fw = privateshare_factory(doc_config("s3.md"))
    sink = fw.plugins["sinks.archive"]
    assert isinstance(sink, S3Sink) and sink.prefix == "digime/raw"
    assert sink.sse_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/digime-data",
    }
    assert "DIGIME_S3_ACCESS_KEY_ID" in repr(sink.options.access_key_id)
