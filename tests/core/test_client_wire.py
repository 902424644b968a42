"""core/client/wire.py: error answers mapped, secrets redacted, names made safe, answers capped."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import pytest

from privateshare.client.wire import (
    Wire,
    expect_object,
    file_path,
    needs_refresh,
    redact,
    redacting,
    segment,
    server_error,
)
from privateshare.errors import (
    MalformedAnswer,
    ResponseTooLarge,
    SDKInvalidError,
    ServerError,
    TransportError,
    UnsafeFileNameError,
    ValidationError,
)
from privateshare.retry import Retry
from privateshare.transport import HttpRequest


def test_error_mapping_standard_body_and_headers() -> None:
    body = json.dumps(
        {
            "error": {
                "code": "InvalidRedirectUri",
                "message": "The redirect_uri (x) is invalid",
                "reference": "3Wb9",
            }
        }
    ).encode()
    error = server_error(404, "Not Found", {}, body)
    assert isinstance(error, ServerError) and not isinstance(error, SDKInvalidError)
    assert (error.code, error.reference, error.status_code, error.status_message) == (
        "InvalidRedirectUri",
        "3Wb9",
        404,
        "Not Found",
    )
    assert "The redirect_uri (x) is invalid" in str(error)
    sdk = server_error(400, "Bad Request", {}, b'{"error":{"code":"SDKInvalid","message":"m"}}')
    assert isinstance(sdk, SDKInvalidError)
    from_headers = server_error(
        406,
        "Not Acceptable",
        {"x-error-code": "InvalidRequest", "x-error-message": "nonce used"},
        b"",
    )
    assert (from_headers.code, str(from_headers).startswith("nonce used")) == (
        "InvalidRequest",
        True,
    )
    empty = server_error(404, "Not Found", {}, b"")
    assert (empty.code, empty.reference) == ("DigiMeServerError", "Unknown reference")


def test_error_mapping_of_odd_bodies() -> None:
    flat = server_error(400, "Bad Request", {}, b'{"error":"invalid_grant","message":"expired"}')
    assert (flat.code, str(flat).split(" (")[0]) == ("invalid_grant", "expired")
    version = server_error(400, "", {}, b'{"error":{"code":"SDKVersionInvalid"}}')
    assert isinstance(version, SDKInvalidError)
    garbled = server_error(502, "Bad Gateway", {"x-error-reference": "r1"}, b"<html>oops")
    assert str(garbled).startswith("HTTP 502 Bad Gateway (code DigiMeServerError")
    assert garbled.reference == "r1"


def test_the_server_echoing_a_secret_is_redacted_everywhere() -> None:
    body = json.dumps(
        {"error": {"code": "c-K/1", "message": "no endpoint at query/K%2F1/f", "reference": "K/1"}}
    ).encode()
    error = server_error(404, "K/1 not found", {}, body, secrets=(None, "K/1"))
    assert (error.code, error.reference, error.status_message) == (
        "c-<redacted>",
        "<redacted>",
        "<redacted> not found",
    )
    assert str(error).startswith("no endpoint at query/<redacted>/f (code c-<redacted>,")


def test_redact_takes_raw_and_percent_encoded_forms() -> None:
    assert redact("a k y b k%20y c", ["k y"]) == "a <redacted> b <redacted> c"
    assert redact("p/q p%2Fq", ["p/q"]) == "<redacted> <redacted>"
    assert redact("nothing", [None, ""]) == "nothing"


def test_a_transport_error_quoting_the_secret_is_raised_again_without_it() -> None:
    with pytest.raises(TransportError) as info, redacting("s3cr3t"):
        raise TransportError("timed out on GET /query/s3cr3t/f.json")
    assert str(info.value) == "timed out on GET /query/<redacted>/f.json"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    original = TransportError("connection refused")
    with pytest.raises(TransportError) as kept, redacting("s3cr3t"):
        raise original
    assert kept.value is original  # nothing to hide: the very same error
    with pytest.raises(ValueError, match="s3cr3t"), redacting("s3cr3t"):
        raise ValueError("s3cr3t")  # only transport errors quote the path


def test_which_401s_refresh() -> None:
    invalid = ServerError("x", code="InvalidToken", status_code=401)
    other = ServerError("x", code="InvalidClient", status_code=401)
    bare = ServerError("x", status_code=401)
    assert needs_refresh(invalid) and needs_refresh(bare) and not needs_refresh(other)
    assert not needs_refresh(ServerError("x", code="InvalidToken", status_code=403))
    assert not needs_refresh(ValueError("401"))


def test_server_names_become_safe_path_segments() -> None:
    assert segment("file1.json") == "file1.json"
    assert segment("19_5_19_403_202412_12.json") == "19_5_19_403_202412_12.json"
    assert segment("a/b.json") == "a/b.json"
    assert segment("x?y#z %.json") == "x%3Fy%23z%20%25.json"
    assert segment("Aa0-_.~") == "Aa0-_.~"


def test_a_file_path_refuses_names_that_would_name_another_resource() -> None:
    assert file_path("k?1", "a/b c.json") == "permission-access/query/k%3F1/a/b%20c.json"
    for name in ["../x.json", "a/../../x", "a//b", "./a", "", "a\nb", "/etc/passwd"]:
        with pytest.raises(UnsafeFileNameError):
            file_path("k", name)


def test_expect_object_names_the_call() -> None:
    assert expect_object({"a": 1}, "GET x") == {"a": 1}
    with pytest.raises(ValidationError, match="GET x: the server's answer is not a JSON object"):
        expect_object([1], "GET x")


class Answer:
    """An in-memory HTTP answer (the transport's side of the ``send`` callable)."""

    def __init__(self, status: int, body: bytes = b"", headers: Mapping[str, str] = {}) -> None:
        self.status_code, self.reason, self.headers = status, "Reason", dict(headers)
        self.body = body
        self.closed = False

    def read(self, limit: int | None = None) -> bytes:
        if limit is not None and len(self.body) > limit:
            raise ResponseTooLarge("too large")
        return self.body

    def stream(self) -> BinaryIO:
        return io.BytesIO(self.body)

    def close(self) -> None:
        self.closed = True


def wire_over(answer: Answer, sent: list[HttpRequest], cap: int = 100) -> Wire:
    def send(request: HttpRequest) -> Answer:
        sent.append(request)
        return answer

    authorized: list[dict[str, Any]] = []

    def authorizer(claims: Mapping[str, Any]) -> Callable[[], str]:
        authorized.append(dict(claims))
        return lambda: f"Bearer {len(authorized)}"

    return Wire(
        "https://api.test/v1.7/",
        send,
        authorizer,
        max_answer_bytes=cap,
        retry=Retry(attempts=1),
    )


def test_json_signs_when_given_claims_and_decodes_the_answer() -> None:
    sent: list[HttpRequest] = []
    answer = Answer(200, b'{"ok":true}')
    assert wire_over(answer, sent).json("POST", "oauth/token", {"x": 1}, json={"a": 2}) == {
        "ok": True
    }
    (request,) = sent
    assert (request.method, request.url, request.json) == (
        "POST",
        "https://api.test/v1.7/oauth/token",
        {"a": 2},
    )
    assert request.authorize is not None and request.authorize() == "Bearer 1"
    assert answer.closed
    assert wire_over(Answer(204), []).json("DELETE", "user", None) is None
    with pytest.raises(MalformedAnswer, match="GET permission-access: the server's answer is not"):
        wire_over(Answer(200, b"{cut"), []).json("GET", "permission-access/query/k", None)


def test_an_error_answer_is_a_server_error_and_is_closed() -> None:
    answer = Answer(401, b'{"error":{"code":"InvalidToken","message":"expired"}}')
    with pytest.raises(ServerError) as info:
        wire_over(answer, []).send("GET", "x", None)
    assert needs_refresh(info.value) and answer.closed


def test_answers_beyond_the_cap_say_which_setting_to_raise() -> None:
    with pytest.raises(ResponseTooLarge, match=r"GET x: the answer is larger than 4 bytes"):
        wire_over(Answer(200, b'{"a":1}'), [], cap=4).json("GET", "x", None)
    declared = Answer(200, b"[]", {"Content-Length": "5000"})
    with pytest.raises(ResponseTooLarge, match=r"raise \[digime\] max_answer_bytes"):
        list(wire_over(declared, [], cap=100).answer_chunks(declared, "the file list"))
    assert declared.closed  # refused on the declared length, before reading
    undeclared = Answer(200, b"x" * 150)
    chunks = wire_over(undeclared, [], cap=100).answer_chunks(undeclared, "the file list")
    with pytest.raises(ResponseTooLarge):
        list(chunks)
    small = Answer(200, b"x" * 99)
    assert b"".join(wire_over(small, [], cap=100).answer_chunks(small, "it")) == b"x" * 99
