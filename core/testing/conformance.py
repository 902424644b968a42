"""Conformance suites: the behaviour every sink, token store, key store and transport must have.

Subclass a suite in your plugin's test module, name the subclass ``Test...`` so
pytest collects it, and provide the fixture the suite asks for (taskflow's
``tests/unit/persistence/base.py`` pattern)::

    class TestMySink(SinkConformance):
        @pytest.fixture
        def sink(self, tmp_path):
            return MySink(MySink.Options(...), PluginContext(name="sinks.t", base_dir=tmp_path))

        def read_back(self, user, name):
            ...  # the committed bytes, or None

The suites call hook implementations directly on the instance (the way the
framework does through pluggy) and check the instance's hookimpls against the
hook specs. ``docs/testing.md`` has a complete example.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
import pickle
import re
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any, ClassVar

import msgspec
import pluggy
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import ResponseTooLarge, SinkError, TransportError, UnsafeFileNameError
from ..hooks import specs as hookspecs
from ..keys import KeyHandle
from ..models import DataFile, FileMetadata, RunInfo, RunSummary, Token, UserAccessToken
from ..sinks import FileWriter
from ..transport import HttpRequest, HttpResponse, decoded_stream
from .hostile import (
    Answer,
    Exchange,
    HostileServer,
    bomb,
    compress,
    cut_chunked,
    cut_short,
    hang_up,
    redirect,
    respond,
    sequence,
    stall,
    trickle,
)

__all__ = [
    "HOSTILE_FILE_NAMES",
    "HOSTILE_USER_IDS",
    "READ_PATHS",
    "KeyStoreConformance",
    "MiB",
    "Signer",
    "SinkConformance",
    "TokenStoreConformance",
    "TransportConformance",
    "check_hookimpls",
    "read_body",
]

MiB = 1 << 20

#: Names a server could send that must never reach storage as given.
HOSTILE_FILE_NAMES: tuple[str, ...] = (
    "",
    ".",
    "..",
    "../escape.json",
    "../../escape.json",
    "a/../../escape.json",
    "a/./b.json",
    "/etc/passwd",
    "/tmp/escape.json",  # noqa: S108 - a hostile name, never opened
    "a//b.json",
    "trailing/",
    "..\\escape.json",
    "a\\b.json",
    "nul\x00.json",
    "new\nline.json",
    "esc\x1b[31m.json",
    "del\x7f.json",
    "c1\x85.json",
    "x" * 256,
    "é" * 128,  # 256 bytes in UTF-8
    "ok/" + "y" * 256,
)

#: User ids that must not become paths, keys or table names as given.
HOSTILE_USER_IDS: tuple[str, ...] = (
    "",
    ".",
    "..",
    "../escape",
    "a/b",
    "/abs",
    "back\\slash",
    "nul\x00",
    "line\nbreak",
    "u" * 256,
)


def check_hookimpls(instance: object) -> list[str]:
    """Register ``instance`` with a pluggy manager holding every spec; return its hook names.

    Fails the way the framework would if a hook name or parameter name is wrong.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(instance, name="under-test")
    pm.check_pending()
    return sorted(impl.name for impl in pm.get_hookcallers(instance) or [])


def _run(user: str = "alice") -> RunInfo:
    return RunInfo(run_id=f"run-{uuid.uuid4().hex[:8]}", user_id=user, started_at=time.time())


def _file(user: str, name: str, updated: int = 1_700_000_000_000) -> DataFile:
    return DataFile(
        user_id=user,
        name=name,
        updated_date=updated,
        metadata=FileMetadata({"objectType": "test", "serviceGroup": "conformance"}),
        last_modified="2024-01-01T00:00:00Z",
    )


# --- sinks -------------------------------------------------------------------


class SinkConformance:
    """What every sink must do; subclass it as ``Test<YourSink>``.

    Provide:

    * fixture ``sink`` — a plugin instance with the sink hookimpls;
    * method ``read_back(self, user, name)`` — the committed bytes of a file,
      or ``None`` when the sink holds no such file (``self.sink`` is set).

    Optionally override ``snapshot(self)`` — a set describing *everything* the
    backend holds, and for local backends everything around it (e.g. every path
    under ``tmp_path``), so the suite can check that an update left one copy
    and that hostile names wrote nothing anywhere. Class attributes tune the
    large-file test.
    """

    #: Size of the streamed large file.
    large_file_size: ClassVar[int] = 50 * MiB
    #: Peak Python heap (tracemalloc) allowed while streaming it; ``None`` for a
    #: sink that keeps files in memory by design (the memory sink).
    max_peak_memory: ClassVar[int | None] = 8 * MiB

    sink: Any

    @pytest.fixture(autouse=True)
    def _bind_sink(self, sink: Any) -> None:
        self.sink = sink

    def read_back(self, user: str, name: str) -> bytes | None:
        """Return what the sink holds for ``(user, name)``, or ``None``; override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define read_back(self, user, name) returning the "
            "committed bytes of a file, or None when the sink has no such file"
        )

    def snapshot(self) -> set[Any] | None:
        """Everything observable in and around the backend; ``None`` when not observable."""
        return None

    # helpers --------------------------------------------------------------------

    def open_run(self, run: RunInfo) -> None:
        hook = getattr(self.sink, "privateshare_sink_open_run", None)
        if hook is not None:
            hook(run=run)

    def close_run(self, run: RunInfo, **summary: Any) -> None:
        hook = getattr(self.sink, "privateshare_sink_close_run", None)
        if hook is not None:
            hook(run=run, summary=RunSummary(run_id=run.run_id, user_id=run.user_id, **summary))

    def open_file(self, user: str, name: str, run: RunInfo | None = None) -> FileWriter:
        run = run or _run(user)
        writer: FileWriter | None = self.sink.privateshare_sink_open_file(
            run=run, file=_file(user, name)
        )
        assert writer is not None, "the sink returned no writer for an ordinary file"
        return writer

    def put(self, user: str, name: str, *chunks: bytes) -> None:
        run = _run(user)
        self.open_run(run)
        writer = self.open_file(user, name, run)
        for chunk in chunks:
            writer.write(chunk)
        writer.commit()
        self.close_run(run, files_delivered=1)

    # tests ----------------------------------------------------------------------

    def test_hookimpls_match_the_specs(self) -> None:
        names = check_hookimpls(self.sink)
        assert "privateshare_sink_open_file" in names

    def test_writer_is_a_file_writer(self) -> None:
        writer = self.open_file("alice", "protocol.json")
        try:
            assert isinstance(writer, FileWriter)
        finally:
            writer.abort()

    def test_open_and_close_run(self) -> None:
        run = _run("alice")
        self.open_run(run)
        writer = self.open_file("alice", "in-run.json", run)
        writer.write(b"{}")
        writer.commit()
        self.close_run(run, files_delivered=1, bytes_delivered=2, final_state="completed")
        assert self.read_back("alice", "in-run.json") == b"{}"
        # A failed run is closed too, and must not undo what was committed.
        failed = _run("alice")
        self.open_run(failed)
        self.close_run(failed, final_state="partial")
        assert self.read_back("alice", "in-run.json") == b"{}"

    def test_commit_makes_exactly_the_written_bytes_visible(self) -> None:
        data = bytes(range(256)) * 64 + b"\x00\r\n\xff tail"
        self.put("alice", "exact.bin", data[:1000], data[1000:])
        assert self.read_back("alice", "exact.bin") == data

    def test_empty_file(self) -> None:
        self.put("alice", "empty.json")
        assert self.read_back("alice", "empty.json") == b""

    def test_nothing_visible_before_commit(self) -> None:
        writer = self.open_file("alice", "pending.json")
        writer.write(b'{"partial": ')
        assert self.read_back("alice", "pending.json") is None
        writer.write(b"true}")
        assert self.read_back("alice", "pending.json") is None
        writer.commit()
        assert self.read_back("alice", "pending.json") == b'{"partial": true}'

    def test_abort_leaves_nothing(self) -> None:
        self.put("alice", "existing.json", b"{}")  # directories, tables, buckets exist
        before = self.snapshot()
        writer = self.open_file("alice", "aborted.json")
        writer.write(b"half a file")
        writer.abort()
        assert self.read_back("alice", "aborted.json") is None
        writer.abort()  # twice is safe
        if before is not None:
            assert _new_entries(before, self.snapshot()) == set(), "abort left something behind"

    def test_abort_of_an_update_keeps_the_old_version(self) -> None:
        self.put("alice", "kept.json", b"version 1")
        writer = self.open_file("alice", "kept.json")
        writer.write(b"version 2, never committed")
        writer.abort()
        assert self.read_back("alice", "kept.json") == b"version 1"

    def test_abort_after_commit_keeps_the_file(self) -> None:
        # The flow aborts every writer when a later sink fails, including committed ones.
        writer = self.open_file("alice", "committed.json")
        writer.write(b"done")
        writer.commit()
        writer.abort()
        assert self.read_back("alice", "committed.json") == b"done"

    def test_update_replaces_the_old_file(self) -> None:
        self.put("alice", "updated.json", b"old content, longer than the new one")
        after_first = self.snapshot()
        self.put("alice", "updated.json", b"new")
        assert self.read_back("alice", "updated.json") == b"new"
        if after_first is not None:
            assert self.snapshot() == after_first, "an update must replace, not add a copy"

    def test_many_chunks_from_a_reused_buffer(self) -> None:
        buffer = bytearray(4096)
        expected = hashlib.sha256()
        writer = self.open_file("alice", "views.bin")
        for i in range(300):
            n = 1 + (i * 37) % 4096
            buffer[:n] = bytes([i % 251]) * n
            view = memoryview(buffer)[:n]
            expected.update(view)
            writer.write(view)
            buffer[:n] = b"\xee" * n  # the producer reuses its buffer at once
        writer.write(b"")
        writer.commit()
        got = self.read_back("alice", "views.bin")
        assert got is not None
        assert hashlib.sha256(got).hexdigest() == expected.hexdigest()

    def test_interleaved_writers(self) -> None:
        one = self.open_file("alice", "one.json")
        two = self.open_file("alice", "two.json")
        for i in range(50):
            one.write(b"1%d," % i)
            two.write(b"2%d," % i)
        two.commit()
        one.commit()
        assert self.read_back("alice", "one.json") == b"".join(b"1%d," % i for i in range(50))
        assert self.read_back("alice", "two.json") == b"".join(b"2%d," % i for i in range(50))

    def test_large_file_is_streamed_in_bounded_memory(self) -> None:
        chunk = bytearray(MiB)
        expected = hashlib.sha256()
        writer = self.open_file("alice", "large.bin")
        tracemalloc.start()
        try:
            for i in range(self.large_file_size // MiB):
                chunk[:8] = i.to_bytes(8, "big")
                chunk[-8:] = (~i & 0xFFFF).to_bytes(8, "big")
                expected.update(chunk)
                writer.write(memoryview(chunk))
            writer.commit()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        if self.max_peak_memory is not None:
            assert peak <= self.max_peak_memory, (
                f"writing a {self.large_file_size // MiB} MiB file peaked at {peak / MiB:.1f} MiB "
                f"of Python memory (limit {self.max_peak_memory / MiB:.0f} MiB): stream each "
                "chunk out instead of keeping it"
            )
        got = self.read_back("alice", "large.bin")
        assert got is not None and len(got) == self.large_file_size
        assert hashlib.sha256(got).digest() == expected.digest()

    @pytest.mark.parametrize("name", HOSTILE_FILE_NAMES, ids=repr)
    def test_hostile_file_names_are_refused(self, name: str) -> None:
        self.put("alice", "existing.json", b"{}")
        before = self.snapshot()
        with pytest.raises(SinkError) as caught:
            writer = self.open_file("alice", name)
            try:
                writer.write(b"escaped")
                writer.commit()
            finally:
                writer.abort()
        message = str(caught.value)
        assert message, "the error must say what was refused and why"
        if isinstance(caught.value, UnsafeFileNameError) and name:
            assert repr(name)[1:20] in message or name[:20] in message, (
                f"the error should name the file: {message}"
            )
        if before is not None:
            assert _new_entries(before, self.snapshot()) == set(), f"{name!r} wrote something"

    @pytest.mark.parametrize("user", HOSTILE_USER_IDS, ids=repr)
    def test_hostile_user_ids_are_refused(self, user: str) -> None:
        self.put("alice", "existing.json", b"{}")
        before = self.snapshot()
        with pytest.raises(SinkError):
            run = _run(user)
            self.open_run(run)
            writer = self.open_file(user, "file.json", run)
            try:
                writer.write(b"escaped")
                writer.commit()
            finally:
                writer.abort()
        if before is not None:
            assert _new_entries(before, self.snapshot()) == set(), f"{user!r} wrote something"

    def test_unusual_but_safe_names_are_kept(self) -> None:
        for name in ("18_4_28_3_1_D201_1.json", "spaces and ünïcødé ✓.json", "...dots", "-x"):
            self.put("alice", name, name.encode())
            assert self.read_back("alice", name) == name.encode()

    def test_users_are_kept_apart(self) -> None:
        self.put("alice", "same.json", b"alice's")
        self.put("bob", "same.json", b"bob's")
        assert self.read_back("alice", "same.json") == b"alice's"
        assert self.read_back("bob", "same.json") == b"bob's"

    def test_repr_holds_no_data(self) -> None:
        marker = b"PAYLOAD-" + uuid.uuid4().hex.encode()
        writer = self.open_file("alice", "secret.json")
        writer.write(marker)
        texts = [repr(self.sink), str(self.sink), repr(writer)]
        writer.commit()
        texts += [repr(self.sink), repr(writer)]
        for text in texts:
            assert marker.decode() not in text
            assert len(text) < 1000, f"a repr should be short: {text[:200]}..."


def _new_entries(before: set[Any], after: set[Any] | None) -> set[Any]:
    return set(after or ()) - before


# --- token stores --------------------------------------------------------------


def _token(tag: str, expiry: int = 2_000_000_000) -> UserAccessToken:
    return UserAccessToken(
        access_token=Token(f"access-{tag}-{uuid.uuid4().hex}", expiry),
        refresh_token=Token(f"refresh-{tag}-{uuid.uuid4().hex}", expiry + 86_400),
        user_id=f"digime-{tag}",
        consent_id=f"consent-{tag}",
    )


class TokenStoreConformance:
    """What every token store must do; subclass it as ``Test<YourStore>``.

    Provide fixture ``store`` — a plugin instance with the token hookimpls.
    Optionally provide fixture ``store_factory`` — a zero-argument callable
    building another instance over the *same* storage; with it the suite also
    checks that the lock serialises separate processes (forked), not only
    threads. Without it that test is skipped with a reason saying so.
    """

    #: Seconds a holder keeps the lock in the serialisation tests.
    hold_seconds: ClassVar[float] = 0.3

    store: Any

    @pytest.fixture(autouse=True)
    def _bind_store(self, store: Any) -> None:
        self.store = store

    def test_hookimpls_match_the_specs(self) -> None:
        names = check_hookimpls(self.store)
        for hook in (
            "privateshare_token_load",
            "privateshare_token_save",
            "privateshare_token_delete",
            "privateshare_token_users",
            "privateshare_token_lock",
            "privateshare_checkpoint_load",
            "privateshare_checkpoint_save",
        ):
            assert hook in names, f"a token store must implement {hook}"

    def test_unknown_user_has_no_token(self) -> None:
        assert self.store.privateshare_token_load(user_id="nobody") is None

    def test_save_then_load_round_trips(self) -> None:
        token = _token("a")
        assert self.store.privateshare_token_save(user_id="alice", token=token) is True
        loaded = self.store.privateshare_token_load(user_id="alice")
        assert loaded == token
        assert loaded.access_token.expiry == token.access_token.expiry
        assert loaded.consent_id == token.consent_id

    def test_every_field_round_trips(self) -> None:
        # ``staged`` holds a token server answer awaiting verification: losing it loses
        # the user's refresh token (docs/hooks.md, "Token storage").
        staged = msgspec.structs.replace(_token("staged"), staged=f"eyJ.{uuid.uuid4().hex}.sig")
        self.store.privateshare_token_save(user_id="alice", token=staged)
        loaded = self.store.privateshare_token_load(user_id="alice")
        assert loaded == staged and loaded.staged == staged.staged
        answer_only = UserAccessToken(Token(""), Token(""), staged="eyJ.answer.sig")
        self.store.privateshare_token_save(user_id="bob", token=answer_only)
        assert self.store.privateshare_token_load(user_id="bob") == answer_only
        assert self.store.privateshare_token_users() == ["alice", "bob"]
        promoted = msgspec.structs.replace(staged, staged=None)
        self.store.privateshare_token_save(user_id="alice", token=promoted)
        assert self.store.privateshare_token_load(user_id="alice") == promoted

    def test_save_replaces_the_previous_token(self) -> None:
        self.store.privateshare_token_save(user_id="alice", token=_token("old"))
        new = _token("new")
        self.store.privateshare_token_save(user_id="alice", token=new)
        assert self.store.privateshare_token_load(user_id="alice") == new
        assert self.store.privateshare_token_users() == ["alice"]

    def test_users_are_listed_sorted_and_kept_apart(self) -> None:
        tokens = {user: _token(user) for user in ("carol", "alice", "bob")}
        for user, token in tokens.items():
            self.store.privateshare_token_save(user_id=user, token=token)
        assert self.store.privateshare_token_users() == ["alice", "bob", "carol"]
        for user, token in tokens.items():
            assert self.store.privateshare_token_load(user_id=user) == token

    def test_unusual_user_ids_round_trip_or_are_refused(self) -> None:
        from ..errors import TokenStoreError

        for user in ("user@example.com", "ünïcødé user", "../escape", "a/b", "x" * 300):
            token = _token("odd")
            try:
                self.store.privateshare_token_save(user_id=user, token=token)
            except TokenStoreError:
                assert self.store.privateshare_token_load(user_id=user) is None
                continue
            assert self.store.privateshare_token_load(user_id=user) == token
            assert user in self.store.privateshare_token_users()

    def test_delete_forgets_token_and_checkpoint(self) -> None:
        self.store.privateshare_token_save(user_id="alice", token=_token("a"))
        self.store.privateshare_checkpoint_save(
            user_id="alice", changes={"files": {"f.json": 5}}, replace=False
        )
        self.store.privateshare_token_save(user_id="bob", token=_token("b"))
        assert self.store.privateshare_token_delete(user_id="alice") is True
        assert self.store.privateshare_token_load(user_id="alice") is None
        assert not self.store.privateshare_checkpoint_load(user_id="alice")
        assert self.store.privateshare_token_users() == ["bob"]
        assert self.store.privateshare_token_delete(user_id="alice") is False

    def test_checkpoint_of_unknown_user_is_empty(self) -> None:
        result = self.store.privateshare_checkpoint_load(user_id="nobody")
        assert result is None or result == {}

    def test_checkpoint_changes_merge_and_replace_replaces(self) -> None:
        save = self.store.privateshare_checkpoint_save
        load = self.store.privateshare_checkpoint_load
        first = {"files": {"a.json": 1_700_000_000_000, "b.json": 1_700_000_000_001}}
        assert save(user_id="alice", changes=first, replace=False) is True
        assert load(user_id="alice") == first
        # Changes merge per sink and name: what they do not name keeps its saved value.
        save(
            user_id="alice",
            changes={"files": {"a.json": 1_800_000_000_000}, "db": {"a.json": 7}},
            replace=False,
        )
        assert load(user_id="alice") == {
            "files": {"a.json": 1_800_000_000_000, "b.json": 1_700_000_000_001},
            "db": {"a.json": 7},
        }
        # Many small saves (a journal, in the built-in stores) all land, in order.
        for i in range(200):
            save(user_id="alice", changes={"db": {f"n{i % 50}.json": i}}, replace=False)
        loaded = load(user_id="alice")
        assert loaded["db"] == {"a.json": 7, **{f"n{i}.json": 150 + i for i in range(50)}}
        # replace: the mapping is the whole state; sinks not in it are forgotten.
        save(user_id="alice", changes={"db": {"z.json": 9}}, replace=True)
        assert load(user_id="alice") == {"db": {"z.json": 9}}
        save(user_id="alice", changes={"db": {"y.json": 3}}, replace=False)
        assert load(user_id="alice") == {"db": {"z.json": 9, "y.json": 3}}
        assert not load(user_id="bob")

    def test_checkpoint_pieces_add_up_to_the_loaded_state(self) -> None:
        pieces = getattr(self.store, "privateshare_checkpoint_pieces", None)
        if pieces is None:
            pytest.skip("the store hands over no pieces: the core loads the state whole")

        def assembled(user: str) -> dict[str, dict[str, int]]:
            state: dict[str, dict[str, int]] = {}
            for sink, names in pieces(user_id=user) or ():
                state.setdefault(sink, {}).update(names)
            return state

        save = self.store.privateshare_checkpoint_save
        load = self.store.privateshare_checkpoint_load
        assert assembled("nobody") == {}
        big = {f"library/{i:06d}.json": 1_700_000_000_000 + i for i in range(20_000)}
        save(user_id="alice", changes={"a": big, "b": {"x": 1}, "empty": {}}, replace=True)
        for i in range(30):
            save(user_id="alice", changes={"a": {f"library/{i:06d}.json": i}}, replace=False)
            save(user_id="alice", changes={"c": {f"new-{i}": i}}, replace=False)
        expected = {
            "a": {**big, **{f"library/{i:06d}.json": i for i in range(30)}},
            "b": {"x": 1},
            "empty": {},
            "c": {f"new-{i}": i for i in range(30)},
        }
        assert load(user_id="alice") == expected
        assert assembled("alice") == expected
        # Read in part and let go (the flow stops at a piece it must load whole).
        iterator = iter(pieces(user_id="alice"))
        next(iterator)
        getattr(iterator, "close", lambda: None)()
        assert assembled("alice") == expected

    def test_run_record_round_trips(self) -> None:
        load = getattr(self.store, "privateshare_run_record_load", None)
        if load is None:
            pytest.skip("the store keeps no run record (privateshare status shows no last run)")
        assert load(user_id="alice") is None
        record = {"run_id": "r1", "final_state": "completed", "sinks": {"files": 3}, "ok": True}
        assert self.store.privateshare_run_record_save(user_id="alice", record=record) is True
        assert load(user_id="alice") == record
        assert load(user_id="bob") is None

    def test_lock_is_a_context_manager_that_serialises_threads(self) -> None:
        spans: list[tuple[float, float]] = []
        errors: list[BaseException] = []

        def hold() -> None:
            try:
                with self.store.privateshare_token_lock(user_id="alice"):
                    start = time.monotonic()
                    time.sleep(self.hold_seconds)
                    spans.append((start, time.monotonic()))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert len(spans) == 3
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, "two threads held the same user's lock at once"

    def test_lock_is_per_user(self) -> None:
        acquired = threading.Event()

        def other_user() -> None:
            with self.store.privateshare_token_lock(user_id="bob"):
                acquired.set()

        with self.store.privateshare_token_lock(user_id="alice"):
            thread = threading.Thread(target=other_user)
            thread.start()
            assert acquired.wait(5), "holding alice's lock blocked bob's"
        thread.join(5)

    def test_lock_serialises_processes(self, request: pytest.FixtureRequest) -> None:
        try:
            factory = request.getfixturevalue("store_factory")
        except pytest.FixtureLookupError:
            pytest.skip(
                "cross-process locking not checked: define a store_factory fixture returning a "
                "callable that builds another instance over the same storage"
            )
        if "fork" not in multiprocessing.get_all_start_methods():
            pytest.skip("cross-process locking is checked with fork, unavailable here")
        ctx = multiprocessing.get_context("fork")
        held, release = ctx.Event(), ctx.Event()
        child = ctx.Process(target=_hold_lock_in_child, args=(factory, held, release))
        child.start()
        try:
            deadline = time.monotonic() + 30
            while not held.wait(0.1):
                assert child.is_alive(), f"the child process failed (exit code {child.exitcode})"
                assert time.monotonic() < deadline, "the child process never acquired the lock"
            got: list[float] = []

            def take() -> None:
                with self.store.privateshare_token_lock(user_id="alice"):
                    got.append(time.monotonic())

            waiter = threading.Thread(target=take)
            waiter.start()
            time.sleep(self.hold_seconds)
            assert not got, "the lock was acquired while another process held it"
            release.set()
            waiter.join(30)
            assert got, "the lock was not acquired after the other process released it"
        finally:
            release.set()
            child.join(30)
        assert child.exitcode == 0

    def test_secrets_stay_out_of_repr_str_and_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        token = msgspec.structs.replace(_token("secret"), staged=f"staged-{uuid.uuid4().hex}")
        texts: list[str] = []
        with caplog.at_level(logging.DEBUG):
            self.store.privateshare_token_save(user_id="alice", token=token)
            loaded = self.store.privateshare_token_load(user_id="alice")
            texts += [repr(self.store), str(self.store), repr(loaded), str(loaded)]
            with self.store.privateshare_token_lock(user_id="alice") as held:
                texts.append(repr(held))
            self.store.privateshare_token_users()
            self.store.privateshare_token_delete(user_id="alice")
        texts += [repr(self.store), caplog.text]
        texts += [record.getMessage() for record in caplog.records]
        for secret in (token.access_token.value, token.refresh_token.value, token.staged):
            assert secret is not None
            for text in texts:
                assert secret not in text, "a token value leaked into a repr or a log"
        try:
            pickled = pickle.dumps(self.store)
        except Exception:  # refusing to be pickled is fine
            return
        assert token.access_token.value.encode() not in pickled, "pickling the store leaks tokens"


def _hold_lock_in_child(factory: Any, held: Any, release: Any) -> None:
    store = factory()
    with store.privateshare_token_lock(user_id="alice"):
        held.set()
        release.wait(30)


# --- key stores -----------------------------------------------------------------


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{64,}")
_HEX = re.compile(r"[0-9a-fA-F]+")  # fingerprints are fine to show


class KeyStoreConformance:
    """What every key store must do; subclass it as ``Test<YourKeyStore>``.

    Provide fixture ``key_store`` — a plugin instance with the
    ``privateshare_key_handle`` hookimpl. Override ``secret_strings`` to
    return strings of the key material the store was given (PEM body lines,
    passwords) that must never show in a repr or a log.
    """

    key_store: Any

    @pytest.fixture(autouse=True)
    def _bind_key_store(self, key_store: Any) -> None:
        self.key_store = key_store

    def secret_strings(self) -> list[str]:
        """Strings that must not appear in any repr or log; override to add yours."""
        return []

    @pytest.fixture
    def handle(self) -> KeyHandle:
        handle: KeyHandle | None = self.key_store.privateshare_key_handle()
        assert handle is not None, "the key store returned no key handle"
        return handle

    def test_hookimpls_match_the_specs(self) -> None:
        assert "privateshare_key_handle" in check_hookimpls(self.key_store)

    def test_handle_is_a_key_handle(self, handle: KeyHandle) -> None:
        assert isinstance(handle, KeyHandle)
        assert isinstance(handle.public_key(), rsa.RSAPublicKey)

    def test_key_size_is_at_least_2048(self, handle: KeyHandle) -> None:
        assert handle.key_size >= 2048
        assert handle.key_size == handle.public_key().key_size

    def test_signs_ps512(self, handle: KeyHandle) -> None:
        message = b"header.payload-" + uuid.uuid4().hex.encode()
        signature = handle.sign_ps512(message)
        assert len(signature) == handle.key_size // 8
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        handle.public_key().verify(signature, message, pss, hashes.SHA512())
        # PSS is randomised: two signatures of one message differ, both verify.
        again = handle.sign_ps512(message)
        assert again != signature
        handle.public_key().verify(again, message, pss, hashes.SHA512())

    def test_signature_does_not_verify_another_message(self, handle: KeyHandle) -> None:
        from cryptography.exceptions import InvalidSignature

        signature = handle.sign_ps512(b"one message")
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        with pytest.raises(InvalidSignature):
            handle.public_key().verify(signature, b"another message", pss, hashes.SHA512())

    def test_decrypts_oaep_sha1(self, handle: KeyHandle) -> None:
        file_key = os.urandom(32)
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA1()),  # noqa: S303 - digi.me's file-key format
            algorithm=hashes.SHA1(),  # noqa: S303
            label=None,
        )
        ciphertext = handle.public_key().encrypt(file_key, oaep)
        assert handle.decrypt_oaep_sha1(ciphertext) == file_key

    def test_same_key_every_time(self, handle: KeyHandle) -> None:
        again = self.key_store.privateshare_key_handle()
        assert again.public_key().public_numbers() == handle.public_key().public_numbers()

    def test_repr_holds_no_key_material(
        self, handle: KeyHandle, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG):
            self.key_store.privateshare_key_handle()
            handle.sign_ps512(b"m")
        numbers = handle.public_key().public_numbers()
        texts = {
            "repr(store)": repr(self.key_store),
            "str(store)": str(self.key_store),
            "repr(handle)": repr(handle),
            "str(handle)": str(handle),
            "logs": caplog.text,
        }
        for where, text in texts.items():
            assert "PRIVATE KEY" not in text, f"{where} shows a PEM block"
            runs = [run for run in _BASE64_RUN.findall(text) if not _HEX.fullmatch(run)]
            assert not runs, f"{where} shows what looks like key material"
            assert str(numbers.n) not in text and f"{numbers.n:x}" not in text, (
                f"{where} shows the modulus"
            )
            for secret in self.secret_strings():
                assert secret not in text, f"{where} shows key material"


# --- transports -----------------------------------------------------------------


class Signer:
    """An ``authorize`` callback handing out a distinct value per call, remembered in order."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self._lock = threading.Lock()

    def __call__(self) -> str:
        value = f"Bearer conformance.{uuid.uuid4().hex}"
        with self._lock:
            self.issued.append(value)
        return value


#: The two ways a body is read: whole, or as a stream.
READ_PATHS = ("read", "stream")


def read_body(response: HttpResponse, how: str) -> bytes:
    """The whole body of ``response``, read the ``how`` way (one of :data:`READ_PATHS`)."""
    if how == "read":
        return response.read()
    stream = response.stream()
    parts = []
    while part := stream.read(4096):
        parts.append(part)
    return b"".join(parts)


def _pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


class TransportConformance:
    """What every transport must do; subclass it as ``Test<YourTransport>``.

    Provide fixture ``transport`` — a plugin instance with the
    ``privateshare_transport_send`` hookimpl, configured with at least one retry, a
    backoff of at most 0.1 s and a read timeout of at least 10 s. The suite talks to
    :class:`~privateshare.testing.hostile.HostileServer` instances over real HTTP on
    127.0.0.1 and checks the contract in docs/hooks.md.
    """

    #: What the Content-Encoding bomb inflates to (about a thousandth of it on the wire).
    bomb_size: ClassVar[int] = 10 << 30
    #: Peak Python heap allowed while refusing it with ``read(limit=1 MiB)``.
    max_peak_memory: ClassVar[int] = 8 * MiB
    #: Content-Encodings ``read`` must decode (``privateshare.testing.hostile.ENCODINGS``).
    encodings: ClassVar[tuple[str, ...]] = ("gzip", "deflate", "br")
    #: How long the hostile server trickles or stalls: a transport that ignores the
    #: deadline fails after this long instead of hanging.
    slow_seconds: ClassVar[float] = 30.0
    #: The deadline given to requests that must be cut off by it.
    deadline_seconds: ClassVar[float] = 0.5

    transport: Any
    _servers: list[HostileServer]

    @pytest.fixture(autouse=True)
    def _bind_transport(self, transport: Any) -> Iterator[None]:
        self.transport = transport
        self._servers = []
        yield
        for server in self._servers:
            server.close()

    # helpers --------------------------------------------------------------------

    def serve(self, routes: dict[str, Answer] | None = None) -> HostileServer:
        """A hostile server, closed after the test (and by itself after a while)."""
        server = HostileServer(routes, lifetime=self.slow_seconds * 4)
        if not hasattr(self, "_servers"):
            self._servers = []
        self._servers.append(server)
        return server

    def send(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse | None = self.transport.privateshare_transport_send(request=request)
        assert response is not None, "the transport returned no response"
        return response

    def fetch(self, request: HttpRequest, how: str = "read") -> bytes:
        response = self.send(request)
        try:
            return read_body(response, how)
        finally:
            response.close()

    def deadline(self) -> float:
        return time.monotonic() + self.deadline_seconds

    # tests ----------------------------------------------------------------------

    def test_hookimpls_match_the_specs(self) -> None:
        assert "privateshare_transport_send" in check_hookimpls(self.transport)

    @pytest.mark.parametrize("how", READ_PATHS)
    def test_sends_the_request_signed_once_and_reads_the_answer(self, how: str) -> None:
        body = _pattern(100_000)
        server = self.serve({"/v1/answer": respond(body, headers={"X-Answer": "yes"})})
        signer = Signer()
        request = HttpRequest(
            "POST",
            server.url + "/v1/answer",
            headers={"accept": "application/json"},
            json={"question": 42},
            authorize=signer,
            stream=how == "stream",
        )
        response = self.send(request)
        try:
            assert response.status_code == 200
            assert response.headers["x-answer"] == "yes", "headers must be case-insensitive"
            assert read_body(response, how) == body
        finally:
            response.close()
        (sent,) = server.requests
        assert sent.method == "POST" and sent.path == "/v1/answer"
        assert sent.headers["accept"] == "application/json"
        assert sent.headers["authorization"] == signer.issued[0]
        assert len(signer.issued) == 1, "authorize() must be called once per attempt"
        assert b"42" in sent.body

    @pytest.mark.parametrize("status", sorted({301, 302, 303, 307, 308}))
    @pytest.mark.parametrize("where", ["port", "host", "scheme", "user-info"])
    def test_a_redirect_off_the_origin_is_refused_and_nothing_is_sent(
        self, where: str, status: int
    ) -> None:
        foreign = self.serve()
        home = self.serve()
        secret = "CODE-IN-THE-LOCATION"  # noqa: S105 - a marker, not a password
        target, named = {
            "port": (f"{foreign.url}/steal?code={secret}", foreign.url),
            "host": (f"http://localhost:{home.port}/steal?code={secret}", "localhost"),
            "scheme": (f"https://127.0.0.1:{home.port}/steal?code={secret}", "https://127.0.0.1"),
            "user-info": (f"http://{secret}:pw@127.0.0.1:{foreign.port}/steal", foreign.url),
        }[where]
        home.route("/v1/oauth/token", redirect(target, status))
        signer = Signer()
        method = "POST" if status in (307, 308) else "GET"
        request = HttpRequest(
            method, home.url + "/v1/oauth/token", json={"a": 1}, authorize=signer, retry=True
        )
        with pytest.raises(TransportError) as caught:
            self.fetch(request)
        message = str(caught.value)
        assert named in message, f"the error must name the foreign origin: {message}"
        assert secret not in message, "the error must name the origin only, not the URL"
        for value in signer.issued:
            assert value not in message
        assert foreign.connections == 0, "a connection was opened to the foreign origin"
        assert not foreign.requests
        assert [r.path for r in home.requests] == ["/v1/oauth/token"] * len(home.requests)
        assert home.connections == len(home.requests), "something else reached the server"
        assert len(signer.issued) == len(home.requests), "a JWT was signed for the foreign hop"

    def test_redirects_within_the_origin_are_followed_and_signed_afresh(self) -> None:
        server = self.serve()
        server.route("/v1/a", redirect("/v1/b", 302))  # relative
        server.route("/v1/b", redirect(f"HTTP://127.0.0.1:{server.port}/v1/c", 307))
        server.route("/v1/c", redirect(f"//127.0.0.1:{server.port}/v1/d", 308))
        server.route("/v1/d", respond(b"landed"))
        signer = Signer()
        assert self.fetch(HttpRequest("GET", server.url + "/v1/a", authorize=signer)) == b"landed"
        assert [r.path for r in server.requests] == ["/v1/a", "/v1/b", "/v1/c", "/v1/d"]
        assert [r.headers["authorization"] for r in server.requests] == signer.issued
        assert len(set(signer.issued)) == 4, "each hop must be signed afresh"

    def test_a_redirect_loop_ends(self) -> None:
        server = self.serve()
        server.route("/v1/loop", redirect("/v1/loop"))
        with pytest.raises(TransportError):
            self.fetch(HttpRequest("GET", server.url + "/v1/loop", authorize=Signer()))
        assert 1 < len(server.requests) <= 50

    @pytest.mark.parametrize("closing", [False, True], ids=["keep-alive", "connection-close"])
    @pytest.mark.parametrize("how", READ_PATHS)
    def test_the_deadline_ends_a_trickling_body(self, how: str, closing: bool) -> None:
        # ``Connection: close`` answers end the connection with the response (as HTTP/1.0
        # ones do): a transport must pace those bodies too.
        rate = 20  # bytes per second, for slow_seconds
        headers = {"Connection": "close"} if closing else None
        body = trickle(int(self.slow_seconds * rate), every=1 / rate, headers=headers)
        server = self.serve({"/v1/slow": body})
        request = HttpRequest(
            "GET", server.url + "/v1/slow", deadline=self.deadline(), stream=how == "stream"
        )
        with pytest.raises(TransportError):
            self.fetch(request, how)

    def test_the_deadline_ends_a_wait_for_the_answer(self) -> None:
        server = self.serve({"/v1/late": stall(self.slow_seconds, respond(b"late"))})
        with pytest.raises(TransportError):
            self.fetch(HttpRequest("GET", server.url + "/v1/late", deadline=self.deadline()))

    def test_no_attempt_starts_after_the_deadline(self) -> None:
        server = self.serve({"/v1/x": respond(b"x")})
        signer = Signer()
        passed = time.monotonic() - 1
        with pytest.raises(TransportError):
            self.fetch(HttpRequest("GET", server.url + "/v1/x", authorize=signer, deadline=passed))
        assert server.connections == 0 and not signer.issued

    def test_no_retry_waits_past_the_deadline(self) -> None:
        wait = {"Retry-After": str(int(self.slow_seconds))}
        server = self.serve({"/v1/busy": respond(b"busy", 503, wait)})
        deadline = self.deadline()
        request = HttpRequest("GET", server.url + "/v1/busy", authorize=Signer(), deadline=deadline)
        try:
            response = self.send(request)
        except TransportError:
            pass
        else:
            assert response.status_code == 503
            response.close()
        # Retry-After (slow_seconds) ends past the deadline: the one attempt is all there is.
        # Counted, not timed: on a loaded machine the first attempt, sent in time, may reach
        # the server after the deadline.
        assert server.requests, "the request was never sent"
        assert len(server.requests) == 1, (
            f"{len(server.requests) - 1} retry(ies) started although the server's Retry-After "
            "ends past the request's deadline"
        )

    def test_read_limit_is_exact(self) -> None:
        body = _pattern(10_000)
        server = self.serve({"/v1/answer": respond(body), "/v1/chunked": _chunked(body)})
        for path in ("/v1/answer", "/v1/chunked"):
            with closing(self.send(HttpRequest("GET", server.url + path))) as response:
                assert response.read(limit=len(body)) == body
            with (
                closing(self.send(HttpRequest("GET", server.url + path))) as response,
                pytest.raises(ResponseTooLarge),
            ):
                response.read(limit=len(body) - 1)

    @pytest.mark.parametrize("how", ["read"])
    def test_content_encoding_is_decoded_and_the_cap_counts_decoded_bytes(self, how: str) -> None:
        data = b'{"answer": "' + b"forty-two " * 5000 + b'"}'
        server = self.serve()
        for encoding in self.encodings:
            headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
            server.route(f"/v1/{encoding}", respond(compress(data, encoding), headers=headers))
            url = f"{server.url}/v1/{encoding}"
            assert self.fetch(HttpRequest("GET", url), how) == data, f"{encoding} not decoded"
            with closing(self.send(HttpRequest("GET", url))) as response:
                assert response.read(limit=len(data)) == data
            with (
                closing(self.send(HttpRequest("GET", url))) as response,
                pytest.raises(ResponseTooLarge),
            ):
                response.read(limit=len(data) - 1)  # more than the compressed size

    def test_identity_or_an_empty_content_encoding_is_a_plain_body(self) -> None:
        # Nothing to decode: read exactly, and a body past the cap is named plainly (no
        # "once decoded", which would send the operator looking for a compression).
        body = _pattern(10_000)
        server = self.serve()
        for value in ("identity", "", " Identity "):
            headers = {"Content-Encoding": value, "Content-Type": "application/json"}
            url = server.route(f"/v1/plain-{len(value)}", respond(body, headers=headers))
            with closing(self.send(HttpRequest("GET", url))) as response:
                assert response.read(limit=len(body)) == body, f"Content-Encoding {value!r}"
            with (
                closing(self.send(HttpRequest("GET", url))) as response,
                pytest.raises(ResponseTooLarge) as refused,
            ):
                response.read(limit=len(body) - 1)
            assert "decoded" not in str(refused.value), (
                f"Content-Encoding {value!r} is no encoding, yet the error says: {refused.value}"
            )

    def test_an_encoding_bomb_is_refused_at_flat_memory(self) -> None:
        server = self.serve()
        for encoding in self.encodings:
            url = server.route(f"/v1/bomb-{encoding}", bomb(encoding, self.bomb_size))
            tracemalloc.start()
            try:
                with (
                    closing(self.send(HttpRequest("GET", url))) as response,
                    pytest.raises(ResponseTooLarge),
                ):
                    response.read(limit=MiB)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak <= self.max_peak_memory, (
                f"refusing a {encoding} bomb with read(limit=1 MiB) peaked at "
                f"{peak / MiB:.1f} MiB of Python memory (limit "
                f"{self.max_peak_memory / MiB:.0f} MiB): decode in steps, count decoded bytes"
            )

    def test_an_encoded_body_streams_as_sent_and_decodes_in_capped_steps(self) -> None:
        # stream() gives the body as sent, so the core's one capped decoder
        # (privateshare.transport.decoded_stream) reads long encoded answers, the file
        # list, at flat memory over any transport.
        data = b'{"fileList": [' + b'{"name": "f.json", "updatedDate": 1}, ' * 20_000 + b"1]}"
        server = self.serve()
        for encoding in self.encodings:
            body = compress(data, encoding)
            headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
            url = server.route(f"/v1/list-{encoding}", respond(body, headers=headers))
            sent = self.fetch(HttpRequest("GET", url, stream=True), "stream")
            assert sent == body, f"stream() decoded the {encoding} body: it must give it as sent"
            with closing(self.send(HttpRequest("GET", url, stream=True))) as response:
                assert decoded_stream(response, len(data)).read() == data
            with (
                closing(self.send(HttpRequest("GET", url, stream=True))) as response,
                pytest.raises(ResponseTooLarge, match="once decoded"),
            ):
                decoded_stream(response, len(data) - 1).read()
            url = server.route(f"/v1/bomb-stream-{encoding}", bomb(encoding, self.bomb_size))
            tracemalloc.start()
            try:
                with (
                    closing(self.send(HttpRequest("GET", url, stream=True))) as response,
                    pytest.raises(ResponseTooLarge),
                ):
                    stream = decoded_stream(response, 64 * MiB)
                    while stream.read(MiB):
                        pass
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak <= self.max_peak_memory, (
                f"decoding a {encoding} bomb from stream() under a 64 MiB cap peaked at "
                f"{peak / MiB:.1f} MiB of Python memory: stream() must not read ahead unbounded"
            )

    @pytest.mark.parametrize("sent", [0, 16, 1000, 4096, 8176])
    @pytest.mark.parametrize("how", READ_PATHS)
    def test_a_body_cut_short_is_an_error(self, how: str, sent: int) -> None:
        # Cuts on 16-byte boundaries look like whole AES blocks to a decryptor:
        # only the transport can tell the body is incomplete.
        body = _pattern(8192)
        server = self.serve({"/v1/file": cut_short(body[:sent], declared=len(body))})
        request = HttpRequest("GET", server.url + "/v1/file", stream=how == "stream")
        with pytest.raises(TransportError):
            self.fetch(request, how)

    @pytest.mark.parametrize("how", READ_PATHS)
    def test_a_chunked_body_cut_short_is_an_error(self, how: str) -> None:
        server = self.serve({"/v1/file": cut_chunked(_pattern(4096))})
        request = HttpRequest("GET", server.url + "/v1/file", stream=how == "stream")
        with pytest.raises(TransportError):
            self.fetch(request, how)

    @pytest.mark.parametrize(
        ("method", "retry", "retried"),
        [
            ("GET", None, True),
            ("DELETE", None, True),
            ("POST", None, False),
            ("POST", True, True),
            ("GET", False, False),
        ],
    )
    @pytest.mark.parametrize("fault", ["503", "hang-up"])
    def test_only_retryable_requests_are_retried_each_signed_afresh(
        self, fault: str, method: str, retry: bool | None, retried: bool
    ) -> None:
        first = respond(b"busy", 503) if fault == "503" else hang_up()
        server = self.serve({"/v1/call": sequence(first, respond(b"second"))})
        signer = Signer()
        request = HttpRequest(method, server.url + "/v1/call", authorize=signer, retry=retry)
        if retried:
            assert self.fetch(request) == b"second"
            assert len(server.requests) == 2
        elif fault == "503":
            with closing(self.send(request)) as response:
                assert response.status_code == 503
            assert len(server.requests) == 1
        else:
            with pytest.raises(TransportError):
                self.fetch(request)
            assert len(server.requests) == 1
        assert [r.headers["authorization"] for r in server.requests] == signer.issued
        assert len(set(signer.issued)) == len(signer.issued)

    def test_credentials_stay_out_of_errors_and_logs(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        foreign = self.serve()
        server = self.serve(
            {
                "/v1/retry": sequence(respond(b"", 503), respond(b"ok")),
                "/v1/cut": cut_short(b"x" * 100, 1000),
                "/v1/away": redirect(foreign.url + "/steal"),
            }
        )
        signer = Signer()
        messages = []
        with caplog.at_level(logging.DEBUG):
            self.fetch(HttpRequest("GET", server.url + "/v1/retry", authorize=signer))
            for path in ("/v1/cut", "/v1/away"):
                with pytest.raises(TransportError) as caught:
                    self.fetch(HttpRequest("GET", server.url + path, authorize=signer))
                messages.append(str(caught.value))
        assert len(signer.issued) >= 3
        for value in signer.issued:
            token = value.removeprefix("Bearer ")
            assert token not in caplog.text, "a signed JWT leaked into the logs"
            for message in messages:
                assert token not in message, "a signed JWT leaked into an error"


def _chunked(body: bytes) -> Answer:
    """``body`` in ``Transfer-Encoding: chunked`` chunks of 1000 bytes (no Content-Length)."""

    def answer(exchange: Exchange) -> None:
        exchange.head(200, {"Transfer-Encoding": "chunked"})
        for start in range(0, len(body), 1000):
            part = body[start : start + 1000]
            exchange.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        exchange.write(b"0\r\n\r\n")

    return answer
