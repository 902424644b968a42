"""The conformance suites fail on plugins that break the rules (a suite that always passes
would prove nothing). Each test runs one suite test against a deliberately broken plugin."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from privateshare.errors import ResponseTooLarge
from privateshare.hooks import PluginContext, hookimpl
from privateshare.keys import SoftwareKeyHandle
from privateshare.models import DataFile, RunInfo, UserAccessToken
from privateshare.plugins.transport_requests import RequestsOptions, RequestsTransport
from privateshare.testing.conformance import (
    KeyStoreConformance,
    SinkConformance,
    TokenStoreConformance,
    TransportConformance,
)
from privateshare.testing.helpers import TestKey
from privateshare.testing.memory import MemorySink
from privateshare.transport import HttpRequest

SUITE_FAILED = (AssertionError, pytest.fail.Exception)


# --- sinks ---------------------------------------------------------------------------


class DictSink:
    """A sink with one configurable flaw at a time."""

    def __init__(self, flaw: str = "") -> None:
        self.flaw = flaw
        self.files: dict[tuple[str, str], bytes] = {}

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Any:
        return DictWriter(self, (file.user_id, file.name))


class DictWriter:
    def __init__(self, sink: DictSink, key: tuple[str, str]) -> None:
        self.sink, self.key, self.parts, self.done = sink, key, [], False

    def write(self, chunk: bytes | memoryview) -> None:
        self.parts.append(chunk if self.sink.flaw == "keeps-views" else bytes(chunk))
        if self.sink.flaw == "publishes-early":
            self.sink.files[self.key] = b"".join(bytes(p) for p in self.parts)

    def commit(self) -> None:
        key = self.key
        if self.sink.flaw == "duplicates":
            n = sum(1 for k in self.sink.files if k[1].startswith(key[1]))
            key = (key[0], f"{key[1]}.{n}" if n else key[1])
        self.sink.files[key] = b"".join(bytes(p) for p in self.parts)
        self.done = True

    def abort(self) -> None:
        if self.sink.flaw == "abort-deletes" or not self.done:
            self.sink.files.pop(self.key, None)


class DictSuite(SinkConformance):
    def read_back(self, user: str, name: str) -> bytes | None:
        return self.sink.files.get((user, name))

    def snapshot(self) -> set[Any]:
        return set(self.sink.files)


def run_sink_test(sink: Any, test: str, **kwargs: Any) -> None:
    suite = DictSuite()
    suite.sink = sink
    getattr(suite, test)(**kwargs)


def test_a_sound_dict_sink_passes_the_checks_used_below() -> None:
    for test in (
        "test_nothing_visible_before_commit",
        "test_many_chunks_from_a_reused_buffer",
        "test_abort_after_commit_keeps_the_file",
        "test_update_replaces_the_old_file",
    ):
        run_sink_test(DictSink(), test)


@pytest.mark.parametrize(
    ("flaw", "test"),
    [
        ("publishes-early", "test_nothing_visible_before_commit"),
        ("keeps-views", "test_many_chunks_from_a_reused_buffer"),
        ("abort-deletes", "test_abort_after_commit_keeps_the_file"),
        ("duplicates", "test_update_replaces_the_old_file"),
    ],
)
def test_sink_suite_catches(flaw: str, test: str) -> None:
    with pytest.raises(SUITE_FAILED):
        run_sink_test(DictSink(flaw), test)


def test_sink_suite_catches_unchecked_names() -> None:
    with pytest.raises(SUITE_FAILED):
        run_sink_test(DictSink(), "test_hostile_file_names_are_refused", name="../escape.json")
    with pytest.raises(SUITE_FAILED):
        run_sink_test(DictSink(), "test_hostile_user_ids_are_refused", user="a/b")


def test_sink_suite_catches_a_sink_that_holds_whole_files() -> None:
    class Small(SinkConformance):
        large_file_size = 8 << 20
        max_peak_memory = 4 << 20

        def read_back(self, user: str, name: str) -> bytes | None:
            return self.sink.read(user, name)

    suite = Small()
    suite.sink = MemorySink.create("sinks.hoarder")
    with pytest.raises(AssertionError, match=r"peaked at .* MiB"):
        suite.test_large_file_is_streamed_in_bounded_memory()


def test_sink_suite_without_read_back_says_what_to_define() -> None:
    suite = SinkConformance()
    suite.sink = DictSink()
    with pytest.raises(NotImplementedError, match=r"must define read_back\(self, user, name\)"):
        suite.test_commit_makes_exactly_the_written_bytes_visible()


def test_sink_suite_catches_a_misspelt_hook() -> None:
    class Misspelt:
        @hookimpl
        def privateshare_sink_open_fille(self, run: RunInfo, file: DataFile) -> None:
            return None

    suite = DictSuite()
    suite.sink = Misspelt()
    with pytest.raises(Exception, match="privateshare_sink_open_fille"):
        suite.test_hookimpls_match_the_specs()


# --- token stores ---------------------------------------------------------------------


class DictTokenStore:
    def __init__(self, flaw: str = "") -> None:
        self.flaw = flaw
        self.tokens: dict[str, UserAccessToken] = {}
        self.checkpoints: dict[str, dict[str, int]] = {}
        self._lock = __import__("threading").Lock()

    def __repr__(self) -> str:
        if self.flaw == "repr-leaks":
            return f"DictTokenStore({ {u: t.access_token.value for u, t in self.tokens.items()} })"
        return "DictTokenStore"

    @hookimpl
    def privateshare_token_load(self, user_id: str) -> UserAccessToken | None:
        return self.tokens.get(user_id)

    @hookimpl
    def privateshare_token_save(self, user_id: str, token: UserAccessToken) -> bool:
        if self.flaw == "logs-tokens":
            __import__("logging").getLogger("dict").debug("saving %s", token.access_token.value)
        if self.flaw == "picks-fields":  # keeps the fields it knows, drops ``staged``
            token = UserAccessToken(
                token.access_token, token.refresh_token, token.user_id, token.consent_id
            )
        self.tokens[user_id] = token
        return True

    @hookimpl
    def privateshare_token_delete(self, user_id: str) -> bool:
        self.checkpoints.pop(user_id, None)
        return self.tokens.pop(user_id, None) is not None

    @hookimpl
    def privateshare_token_users(self) -> list[str]:
        return sorted(self.tokens)

    @hookimpl
    def privateshare_token_lock(self, user_id: str) -> Any:
        return contextlib.nullcontext() if self.flaw == "no-lock" else self._lock

    @hookimpl
    def privateshare_checkpoint_load(self, user_id: str) -> dict[str, int]:
        return dict(self.checkpoints.get(user_id, {}))

    @hookimpl
    def privateshare_checkpoint_save(self, user_id: str, checkpoint: dict[str, int]) -> bool:
        if self.flaw == "merges-checkpoints":
            self.checkpoints.setdefault(user_id, {}).update(checkpoint)
        else:
            self.checkpoints[user_id] = dict(checkpoint)
        return True


def run_token_test(store: Any, test: str, **kwargs: Any) -> None:
    suite = TokenStoreConformance()
    suite.store = store
    suite.hold_seconds = 0.05
    getattr(suite, test)(**kwargs)


def test_a_sound_dict_token_store_passes(caplog: pytest.LogCaptureFixture) -> None:
    store = DictTokenStore()
    for test in (
        "test_lock_is_a_context_manager_that_serialises_threads",
        "test_checkpoint_round_trips_and_replaces",
        "test_delete_forgets_token_and_checkpoint",
        "test_every_field_round_trips",
    ):
        run_token_test(store, test)
        store.tokens.clear()
        store.checkpoints.clear()
    run_token_test(store, "test_secrets_stay_out_of_repr_str_and_logs", caplog=caplog)


@pytest.mark.parametrize(
    ("flaw", "test"),
    [
        ("no-lock", "test_lock_is_a_context_manager_that_serialises_threads"),
        ("merges-checkpoints", "test_checkpoint_round_trips_and_replaces"),
        ("picks-fields", "test_every_field_round_trips"),
    ],
)
def test_token_suite_catches(flaw: str, test: str) -> None:
    with pytest.raises(SUITE_FAILED):
        run_token_test(DictTokenStore(flaw), test)


@pytest.mark.parametrize("flaw", ["repr-leaks", "logs-tokens"])
def test_token_suite_catches_leaks(flaw: str, caplog: pytest.LogCaptureFixture) -> None:
    store = DictTokenStore(flaw)
    with pytest.raises(AssertionError, match="leaked"):
        run_token_test(store, "test_secrets_stay_out_of_repr_str_and_logs", caplog=caplog)


# --- key stores -----------------------------------------------------------------------


class BadHandle(SoftwareKeyHandle):
    __slots__ = ("flaw",)

    def sign_ps512(self, message: bytes) -> bytes:
        if self.flaw == "pkcs1v15":
            return self._key.sign(message, padding.PKCS1v15(), hashes.SHA512())
        if self.flaw == "max-salt":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=padding.PSS.MAX_LENGTH)
            return self._key.sign(message, pss, hashes.SHA512())
        return super().sign_ps512(message)

    def decrypt_oaep_sha1(self, ciphertext: bytes) -> bytes:
        if self.flaw == "oaep-sha256":
            oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
            return self._key.decrypt(ciphertext, oaep)
        return super().decrypt_oaep_sha1(ciphertext)

    def __repr__(self) -> str:
        if self.flaw == "repr-pem":
            from cryptography.hazmat.primitives import serialization

            return self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        return "BadHandle"


class OneKeyStore:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @hookimpl
    def privateshare_key_handle(self) -> Any:
        return self.handle


@pytest.fixture
def bad_handle(privateshare_test_key: TestKey) -> Iterator[Any]:
    def make(flaw: str) -> BadHandle:
        handle = BadHandle(privateshare_test_key.handle._key, "test")
        handle.flaw = flaw
        return handle

    yield make


@pytest.mark.parametrize(
    ("flaw", "test"),
    [
        ("pkcs1v15", "test_signs_ps512"),
        ("max-salt", "test_signs_ps512"),
        ("oaep-sha256", "test_decrypts_oaep_sha1"),
    ],
)
def test_key_suite_catches(bad_handle: Any, flaw: str, test: str) -> None:
    handle = bad_handle(flaw)
    suite = KeyStoreConformance()
    suite.key_store = OneKeyStore(handle)
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature, ValueError, ...
        getattr(suite, test)(handle=handle)
    good = bad_handle("")
    getattr(suite, test)(handle=good)  # the same test passes with a sound handle


def test_key_suite_catches_key_material_in_a_repr(
    bad_handle: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handle = bad_handle("repr-pem")
    suite = KeyStoreConformance()
    suite.key_store = OneKeyStore(handle)
    with pytest.raises(AssertionError, match="repr\\(handle\\) shows a PEM block"):
        suite.test_repr_holds_no_key_material(handle=handle, caplog=caplog)


# --- transports -------------------------------------------------------------------------


class FlawedTransport(RequestsTransport):
    """The built-in transport with one rule of the transport contract broken at a time."""

    def __init__(self, flaw: str, base_dir: Path) -> None:
        super().__init__(
            RequestsOptions(backoff=0.01, read_timeout=10.0, max_retry_after=5.0),
            PluginContext(name="transport", base_dir=base_dir),
        )
        self.flaw = flaw
        self.session = requests.Session()

    @hookimpl
    def privateshare_transport_send(self, request: HttpRequest) -> Any:
        if self.flaw == "ignores-deadline":
            request = replace(request, deadline=None)
        if self.flaw == "retries-everything":
            request = replace(request, retry=True)
        if self.flaw == "reuses-signature" and request.authorize is not None:
            request = replace(request, authorize=functools.cache(request.authorize))
        response = super().privateshare_transport_send(request)
        raw = response._raw
        if self.flaw == "trusts-short-bodies":
            raw.enforce_content_length = False
        if self.flaw == "reads-whole":
            response.read = lambda limit=None: response._response.content  # type: ignore[method-assign]
        if self.flaw == "limits-after-reading":

            def read(limit: int | None = None) -> bytes:
                data = response._response.content
                if limit is not None and len(data) > limit:
                    raise ResponseTooLarge("too large")
                return data

            response.read = read  # type: ignore[method-assign]
        if self.flaw == "no-decoding":
            response.read = lambda limit=None: raw.read(decode_content=False)  # type: ignore[method-assign]
        return response

    def _attempt(self, request: HttpRequest, what: str, attempt: int) -> requests.Response:
        if self.flaw != "follows-anywhere":
            return super()._attempt(request, what, attempt)
        headers = dict(request.headers)
        if request.authorize is not None:
            headers["Authorization"] = request.authorize()
        return self.session.request(  # requests follows redirects to any host
            request.method, request.url, headers=headers, json=request.json, stream=True
        )


class QuickTransportSuite(TransportConformance):
    slow_seconds = 2.0
    bomb_size = 64 << 20


def run_transport_test(transport: Any, test: str, **kwargs: Any) -> None:
    suite = QuickTransportSuite()
    suite.transport = transport
    suite._servers = []
    try:
        getattr(suite, test)(**kwargs)
    finally:
        for server in suite._servers:
            server.close()
        transport.close()


TRANSPORT_FLAWS = [
    (
        "follows-anywhere",
        "test_a_redirect_off_the_origin_is_refused_and_nothing_is_sent",
        {"where": "port", "status": 302},
    ),
    (
        "follows-anywhere",
        "test_a_redirect_off_the_origin_is_refused_and_nothing_is_sent",
        {"where": "host", "status": 307},
    ),
    (
        "ignores-deadline",
        "test_the_deadline_ends_a_trickling_body",
        {"how": "stream", "closing": True},
    ),
    ("ignores-deadline", "test_the_deadline_ends_a_wait_for_the_answer", {}),
    ("ignores-deadline", "test_no_attempt_starts_after_the_deadline", {}),
    ("ignores-deadline", "test_no_retry_waits_past_the_deadline", {}),
    (
        "retries-everything",
        "test_only_retryable_requests_are_retried_each_signed_afresh",
        {"fault": "hang-up", "method": "POST", "retry": None, "retried": False},
    ),
    ("reuses-signature", "test_redirects_within_the_origin_are_followed_and_signed_afresh", {}),
    (
        "reuses-signature",
        "test_only_retryable_requests_are_retried_each_signed_afresh",
        {"fault": "503", "method": "GET", "retry": None, "retried": True},
    ),
    ("reads-whole", "test_read_limit_is_exact", {}),
    ("reads-whole", "test_an_encoding_bomb_is_refused_at_flat_memory", {}),
    ("limits-after-reading", "test_an_encoding_bomb_is_refused_at_flat_memory", {}),
    (
        "no-decoding",
        "test_content_encoding_is_decoded_and_the_cap_counts_decoded_bytes",
        {"how": "read"},
    ),
    ("trusts-short-bodies", "test_a_body_cut_short_is_an_error", {"how": "stream", "sent": 4096}),
    ("trusts-short-bodies", "test_a_body_cut_short_is_an_error", {"how": "read", "sent": 16}),
]


#: Each check above once: the sound transport passes them, so the flaw is what fails.
SOUND_CHECKS = list({(t, repr(k)): (t, k) for _, t, k in TRANSPORT_FLAWS}.values())


@pytest.mark.parametrize(("test", "kwargs"), SOUND_CHECKS)
def test_a_sound_transport_passes_the_checks_used_below(
    tmp_path: Path, test: str, kwargs: dict[str, Any]
) -> None:
    run_transport_test(FlawedTransport("", tmp_path), test, **kwargs)


@pytest.mark.parametrize(("flaw", "test", "kwargs"), TRANSPORT_FLAWS)
def test_transport_suite_catches(
    tmp_path: Path, flaw: str, test: str, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(SUITE_FAILED):
        run_transport_test(FlawedTransport(flaw, tmp_path), test, **kwargs)
