"""core/client/files.py: the x-metadata header, the file list's errors, and the Files calls.

How the file list is read in batches (the same rows and errors as whole, at a bounded
memory) is in ``test_filelist_memory.py``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from typing import BinaryIO

import pytest

from privateshare.client.files import Files, decode_file_list, decode_x_metadata
from privateshare.client.wire import Wire
from privateshare.errors import MalformedAnswer, ServerError, ValidationError
from privateshare.models import FileEntry
from privateshare.retry import Retry
from privateshare.transport import HttpRequest


def xmeta(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_x_metadata_decoding() -> None:
    meta = decode_x_metadata(
        xmeta({"metadata": {"objectCount": 2, "objectType": "post"}, "compression": "brotli"}),
        "f.json",
    )
    assert meta.compression == "brotli" and meta.kind == "mapped"
    raw = decode_x_metadata(xmeta({"metadata": {"mimetype": "image/jpeg"}}), "p.jpg")
    assert raw.kind == "raw" and raw.mimetype == "image/jpeg" and raw.compression is None
    for bad, message in [
        (None, "missing"),
        ("%%%", "not base64url JSON"),
        (xmeta([1]), "no metadata object"),
    ]:
        with pytest.raises(ValidationError, match=message):
            decode_x_metadata(bad, "f.json")


def test_x_metadata_edge_cases() -> None:
    spaced = decode_x_metadata(f"  {xmeta({'metadata': {'a': 1}})}\r\n", "f.json")
    assert spaced.metadata == {"a": 1}  # a header's surrounding space is not data
    bare = decode_x_metadata(xmeta({"compression": 3}), "f.json")
    assert bare.metadata == {} and bare.compression is None  # odd compression: none
    for bad, message in [
        ("", "f.json: the x-metadata header is missing"),
        (xmeta({"metadata": "x"}), "f.json: the x-metadata header has no metadata object"),
        (base64.urlsafe_b64encode(b"\xff\xfe").decode(), "not base64url JSON"),
    ]:
        with pytest.raises(MalformedAnswer, match=message):
            decode_x_metadata(bad, "f.json")


def test_a_cut_file_list_is_malformed_and_a_wrong_shape_is_not() -> None:
    whole = b'{"status":{"state":"completed"},"fileList":[{"name":"a","updatedDate":1}]}'
    assert decode_file_list(whole).file_list == [FileEntry("a", 1)]
    with pytest.raises(MalformedAnswer, match="not valid JSON"):  # worth another poll
        decode_file_list(whole[:-9])
    with pytest.raises(ValidationError, match="expected shape") as info:
        decode_file_list(b'{"status":{"state":"completed"},"fileList":[{"name":1}]}')
    assert not isinstance(info.value, MalformedAnswer)  # another poll would not help


class Answer:
    """An in-memory HTTP answer (the transport's side of the ``send`` callable)."""

    def __init__(self, status: int, body: bytes = b"", headers: Mapping[str, str] = {}) -> None:
        self.status_code, self.reason, self.headers = status, "OK", dict(headers)
        self.body = body
        self.closed = False

    def read(self, limit: int | None = None) -> bytes:
        return self.body

    def stream(self) -> BinaryIO:
        return io.BytesIO(self.body)

    def close(self) -> None:
        self.closed = True


def files_over(*answers: Answer) -> tuple[Files, list[HttpRequest]]:
    sent: list[HttpRequest] = []
    queue = list(answers)

    def send(request: HttpRequest) -> Answer:
        sent.append(request)
        return queue.pop(0)

    wire = Wire(
        "https://api.digi.test/v1.7/",
        send,
        lambda claims: lambda: "Bearer x",
        max_answer_bytes=1 << 20,
        retry=Retry(attempts=2, backoff=0),
    )
    return Files(wire), sent


def test_the_list_is_read_under_the_quoted_session_key() -> None:
    body = b'{"status":{"state":"pending"},"fileList":[{"name":"f.json","updatedDate":5}]}'
    answer = Answer(200, body)
    files, sent = files_over(answer)
    listing = files.list("k y/1", None)
    assert listing.status.state == "pending" and listing.file_list == [FileEntry("f.json", 5)]
    assert sent[0].url == "https://api.digi.test/v1.7/permission-access/query/k%20y/1"
    assert sent[0].authorize is None and sent[0].stream and answer.closed
    no_list, _ = files_over(Answer(200, b'{"status":{"state":"pending"}}'))
    assert no_list.list("k", {"access_token": "t"}).file_list is None


def test_a_file_list_cut_short_is_read_again() -> None:
    whole = b'{"status":{"state":"completed"},"fileList":[{"name":"a","updatedDate":1}]}'
    files, sent = files_over(Answer(200, whole[:30]), Answer(200, whole))
    assert files.list("k", None).file_list == [FileEntry("a", 1)]
    assert len(sent) == 2


def test_a_file_with_bad_metadata_is_closed_and_refused() -> None:
    good = Answer(200, b"ciphertext", {"x-metadata": xmeta({"metadata": {}}), "last-modified": "d"})
    files, sent = files_over(good, Answer(200, b"x", {}))
    download = files.open("key", "f.json", {"access_token": "t"})
    assert download.metadata.metadata == {} and not good.closed  # left to stream
    assert sent[0].url.endswith("permission-access/query/key/f.json")
    assert sent[0].headers["accept"] == "application/octet-stream"
    with pytest.raises(MalformedAnswer, match=r"f\.json: the x-metadata header is missing"):
        files.open("key", "f.json", None)


def test_metadata_is_a_head_and_an_error_does_not_echo_the_session_key() -> None:
    meta = Answer(200, b"", {"x-metadata": xmeta({"metadata": {"mimetype": "image/png"}})})
    files, sent = files_over(meta)
    assert files.metadata("key", "p.png", None).mimetype == "image/png"
    assert sent[0].method == "HEAD" and meta.closed
    echo = b'{"error":{"code":"NotFound","message":"no file at query/s3cr3t/p.png"}}'
    files, _ = files_over(Answer(404, echo))
    with pytest.raises(ServerError) as info:
        files.metadata("s3cr3t", "p.png", None)
    assert "s3cr3t" not in str(info.value) and "<redacted>" in str(info.value)
