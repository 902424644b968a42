"""privateshare-webhook against a real HTTP receiver on 127.0.0.1: no mocks."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from privateshare_webhook import (
    InvalidSignature,
    WebhookSink,
    delivery_id,
    sign,
    verify_signature,
)

from privateshare import ConfigError, PluginContext, Secret, SinkError
from privateshare.config import decode_options
from privateshare.testing.conformance import SinkConformance
from privateshare.testing.helpers import deliver, make_file, make_run

SECRET = "whsec-test-" + "9f8e7d6c5b4a"
NAME = "18_4_28_3_1_D201_1.json"


def make_sink(url: str, base: Path, secret: str = SECRET, **options: Any) -> WebhookSink:
    options.setdefault("backoff", 0.01)
    return WebhookSink(
        WebhookSink.Options(url=url, secret=Secret.literal(secret), **options),
        PluginContext(name="sinks.hook", base_dir=base),
    )


def send(sink: WebhookSink, data: bytes, name: str = NAME, **meta: Any) -> None:
    file = make_file("alice", name, metadata=meta or {"objectType": "post"})
    run = make_run("alice")
    sink.privateshare_sink_open_run(run=run)
    writer = sink.privateshare_sink_open_file(run=run, file=file)
    writer.write(memoryview(bytearray(data)))
    writer.commit()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# --- conformance ---------------------------------------------------------------------


class TestWebhookConformance(SinkConformance):
    """Content mode delivers exactly the file's bytes; the receiver is what ``read_back`` reads."""

    large_file_size = 16 << 20

    @pytest.fixture
    def sink(self, receiver: Any, tmp_path: Path) -> WebhookSink:
        self.receiver, self.tmp_path = receiver, tmp_path
        return make_sink(receiver.url, tmp_path)

    def read_back(self, user: str, name: str) -> bytes | None:
        return self.receiver.latest(user, name)

    def snapshot(self) -> set[Any]:
        local = {str(p.relative_to(self.tmp_path)) for p in self.tmp_path.rglob("*")}
        return self.receiver.keys() | local


# --- signatures ------------------------------------------------------------------------


def test_every_delivery_is_signed_verifiably(receiver: Any, tmp_path: Path) -> None:
    send(make_sink(receiver.url, tmp_path), b'[{"id": 1}]')
    (got,) = receiver.deliveries
    timestamp, signature = (
        got.headers["Privateshare-Timestamp"],
        got.headers["Privateshare-Signature"],
    )
    assert abs(int(timestamp) - time.time()) < 60
    verify_signature(SECRET, timestamp, got.body, signature)
    # The recipe in the README, without this package:
    mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + got.body, hashlib.sha256)
    assert hmac.compare_digest("sha256=" + mac.hexdigest(), signature)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(SECRET, timestamp, got.body + b" ", signature)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature("another secret", timestamp, got.body, signature)
    with pytest.raises(InvalidSignature, match="away from now"):
        verify_signature(SECRET, timestamp, got.body, signature, now=int(timestamp) + 3600)
    assert got.headers["Privateshare-Delivery"] == delivery_id("alice", NAME, 1_700_000_000_000)
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Privateshare-Kind"] == "mapped"


def test_sign_matches_the_documented_formula() -> None:
    expected = hmac.new(b"k", b"1700000000.body", hashlib.sha256).hexdigest()
    assert sign("k", 1700000000, b"body") == "sha256=" + expected


# --- retries and the dead letter ----------------------------------------------------------


def test_retries_a_500_then_succeeds(receiver: Any, tmp_path: Path) -> None:
    receiver.script = [500, 503]
    send(make_sink(receiver.url, tmp_path, attempts=3), b"[1]")
    assert [d.status for d in receiver.deliveries] == [500, 503, 200]
    assert {d.headers["Privateshare-Delivery"] for d in receiver.deliveries} == {
        delivery_id("alice", NAME, 1_700_000_000_000)
    }
    for d in receiver.deliveries:  # every attempt is signed afresh, and verifies
        verify_signature(
            SECRET, d.headers["Privateshare-Timestamp"], d.body, d.headers["Privateshare-Signature"]
        )
    assert not (tmp_path / "webhook-dead-letter").exists()


def test_persistent_failure_is_dead_lettered_and_raises(receiver: Any, tmp_path: Path) -> None:
    receiver.default = 502
    sink = make_sink(receiver.url + "?token=query-secret", tmp_path, attempts=3)
    payload = b'[{"id": "kept"}]'
    with pytest.raises(SinkError) as caught:
        send(sink, payload)
    assert len(receiver.deliveries) == 3
    message = str(caught.value)
    assert "failed after 3 attempt(s): HTTP 502" in message and NAME in message
    assert "sent again on the next run" in message
    assert SECRET not in message and "query-secret" not in message
    (letter,) = (tmp_path / "webhook-dead-letter").iterdir()
    assert str(letter) in message
    assert (letter / "payload").read_bytes() == payload
    record = json.loads((letter / "delivery.json").read_text())
    assert [a["status"] for a in record["attempts"]] == [502, 502, 502]
    assert record["file"] == NAME and record["user_id"] == "alice"
    assert "query-secret" not in record["url"]
    assert "Privateshare-Signature" not in record["headers"]
    assert not [p for p in (tmp_path / "webhook-dead-letter").iterdir() if p.name.startswith(".")]


def test_on_failure_dead_letter_counts_the_file_as_delivered(receiver: Any, tmp_path: Path) -> None:
    receiver.default = 500
    send(make_sink(receiver.url, tmp_path, attempts=2, on_failure="dead-letter"), b"[2]")
    (letter,) = (tmp_path / "webhook-dead-letter").iterdir()
    assert (letter / "payload").read_bytes() == b"[2]"


def test_a_client_error_is_not_retried(receiver: Any, tmp_path: Path) -> None:
    receiver.default = 400
    with pytest.raises(SinkError, match="failed after 1 attempt"):
        send(make_sink(receiver.url, tmp_path, attempts=5), b"[]")
    assert len(receiver.deliveries) == 1


def test_an_unreachable_endpoint_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    sink = make_sink(closed_port_url(), tmp_path, attempts=2, timeout=2)
    with pytest.raises(SinkError, match="ConnectionError"):
        send(sink, b"[3]")
    (letter,) = (tmp_path / "webhook-dead-letter").iterdir()
    assert len(json.loads((letter / "delivery.json").read_text())["attempts"]) == 2


def test_nothing_is_sent_on_abort(receiver: Any, tmp_path: Path) -> None:
    sink = make_sink(receiver.url, tmp_path)
    writer = sink.privateshare_sink_open_file(run=make_run("alice"), file=make_file("alice"))
    writer.write(b"[1]")
    writer.abort()
    assert receiver.deliveries == []


# --- reference mode ------------------------------------------------------------------------


def test_reference_mode_sends_a_signed_description(receiver: Any, tmp_path: Path) -> None:
    sink = make_sink(
        receiver.url, tmp_path, mode="reference", location="s3://archive/{user}/{name}"
    )
    data = b"\xff\xd8 a photo \xff\xd9" * 1000
    send(sink, data, name="photos/photo 1.jpg", mimetype="image/jpeg")
    (got,) = receiver.deliveries
    verify_signature(
        SECRET,
        got.headers["Privateshare-Timestamp"],
        got.body,
        got.headers["Privateshare-Signature"],
    )
    document = json.loads(got.body)
    assert document["file"]["size"] == len(data)
    assert document["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["file"]["kind"] == "raw" and document["file"]["mimetype"] == "image/jpeg"
    assert document["location"] == "s3://archive/alice/photos/photo%201.jpg"
    assert document["delivery_id"] == got.headers["Privateshare-Delivery"]


# --- configuration and secrets ----------------------------------------------------------------


def test_configured_by_type_with_a_secret_reference(
    privateshare_factory: Any, receiver: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    fw = privateshare_factory(
        f"""
        [sinks.hook]
        type = "webhook"
        url = "{receiver.url}"
        secret = {{ env = "HOOK_SECRET" }}
        backoff = 0.01
        attempts = 2
        """
    )
    sink = fw.plugins["sinks.hook"]
    caplog.set_level(logging.DEBUG)
    receiver.script = [500]
    assert deliver(fw, make_file("alice", NAME), [b"[1]"]) == ["sinks.hook"]
    receiver.default = 500
    with pytest.raises(SinkError):
        deliver(fw, make_file("alice", "b.json"), [b"[2]"])
    texts = [repr(sink), str(sink), repr(sink.options), caplog.text]
    assert all(SECRET not in text for text in texts)
    assert "attempt 1 of 2" in caplog.text


def test_a_literal_secret_in_the_config_is_refused(privateshare_factory: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        privateshare_factory(
            '[sinks.hook]\ntype = "webhook"\nurl = "https://example.com/h"\nsecret = "plain"\n'
        )
    assert "env" in str(caught.value) and "plain" not in str(caught.value)


def test_a_missing_secret_fails_the_run_before_any_file(tmp_path: Path, receiver: Any) -> None:
    sink = WebhookSink(
        WebhookSink.Options(url=receiver.url, secret=Secret(env="PRIVATESHARE_NO_SUCH_VAR")),
        PluginContext(name="sinks.hook", base_dir=tmp_path),
    )
    with pytest.raises(SinkError, match="PRIVATESHARE_NO_SUCH_VAR"):
        sink.privateshare_sink_open_run(run=make_run("alice"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://example.com/hook"}, "[sinks.hook] url: plain http to example.com would "
         "send personal data unencrypted; use https (or set allow_http = true"),
        ({"url": "ftp://example.com/hook"}, "[sinks.hook] url: expected an http:// or https:// "
         "URL with a host and no #fragment, found 'ftp://example.com/hook' (its scheme is 'ftp')"),
        ({"headers": {"Privateshare-Signature": "x"}}, "[sinks.hook] headers: "
         "['Privateshare-Signature'] are set by the sink itself; remove them"),
        ({"headers": {"X-Team": "a\r\nX-Evil: 1"}}, "[sinks.hook] headers: the value of "
         "'X-Team' contains a line break or NUL; a header value is one line"),
        ({"headers": {"X Team": "a"}}, "[sinks.hook] headers: 'X Team' is not a valid header"),
        ({"attempts": 0}, "[sinks.hook] attempts: expected an integer >= 1, found 0; change it, "
         "or remove the key for the default 5"),
        ({"timeout": 0}, "[sinks.hook] timeout: expected a number > 0, found 0;"),
        ({"timeout": -30.0}, "[sinks.hook] timeout: expected a number > 0, found -30.0;"),
        ({"backoff": -1}, "[sinks.hook] backoff: expected a number >= 0, found -1;"),
        ({"max_backoff": -1}, "[sinks.hook] max_backoff: expected a number >= 0, found -1;"),
        ({"backoff": 10, "max_backoff": 5}, "[sinks.hook] max_backoff: expected at least "
         "backoff (10), found 5; raise max_backoff or lower backoff"),
        ({"location": "s3://b/{bucket}"}, "[sinks.hook] location: expected a location template, "
         "found 's3://b/{bucket}' (only {user} and {name} may be used (KeyError: 'bucket'))"),
        ({"dead_letter_dir": ""}, "[sinks.hook] dead_letter_dir: expected a non-empty string"),
    ],
)  # fmt: skip
def test_bad_options_are_explained(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    table = {"url": "https://example.com/hook", "secret": {"env": "HOOK_SECRET"}, **options}
    with pytest.raises(ConfigError) as caught:
        decode_options(table, WebhookSink.Options, "[sinks.hook]", tmp_path)
    assert str(caught.value).startswith(message), str(caught.value)


# --- the whole flow -------------------------------------------------------------------------


def test_full_flow_delivers_every_file_and_a_failed_run_loses_nothing(
    privateshare_sandbox: Callable[..., Any],
    receiver: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from privateshare.flow import Flow
    from privateshare.testing.sandboxed import consent, sandbox_framework

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    sandbox = privateshare_sandbox(files=12)
    sinks = {
        "local": {"type": "file", "root": str(tmp_path / "data")},
        "hook": {
            "type": "webhook",
            "url": receiver.url,
            "secret": {"env": "HOOK_SECRET"},
            "attempts": 2,
            "backoff": 0.01,
            "dead_letter_dir": str(tmp_path / "dead"),
        },
    }
    flow = Flow(sandbox_framework(sandbox, tmp_path, sinks=sinks))
    token, session = consent(flow, "alice")

    receiver.default = 503  # the receiver is down for the whole first run
    first = flow.pull("alice", token=token, session=session)
    truth = sandbox.ground_truth()
    assert len(first.files_failed) == len(truth)
    assert len(list((tmp_path / "dead").iterdir())) == len(truth)

    receiver.default = 200  # back up: the next run sends everything, nothing was lost
    second = flow.pull("alice")
    assert not second.files_failed and second.files_delivered == len(truth)
    accepted = receiver.accepted()
    assert {d.key for d in accepted} == {("alice", name) for name in truth}
    for d in accepted:
        assert hashlib.sha256(d.body).hexdigest() == truth[d.key[1]]
        verify_signature(
            SECRET, d.headers["Privateshare-Timestamp"], d.body, d.headers["Privateshare-Signature"]
        )
