"""The typed facade calls every hook, attributes failures, and isolates observers."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import pluggy
import pytest

from privateshare import hookimpl
from privateshare.delivery import deliver, sink_writers
from privateshare.errors import ConfigError, PluginError, SinkError
from privateshare.hooks import specs as hookspecs
from privateshare.hooks.calls import Hooks
from privateshare.models import (
    DataFile,
    FileMetadata,
    LibraryStatus,
    RunInfo,
    RunSummary,
    Session,
    Token,
    UserAccessToken,
)
from privateshare.transport import HttpRequest

RUN = RunInfo("run-1", "alice", 0.0)
FILE = DataFile("alice", "posts.json", 5)
TOKEN = UserAccessToken(Token("access-secret", 10), Token("refresh-secret", 20), "u1")


class Recorder:
    """Implements every hook and records the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.tokens: dict[str, UserAccessToken] = {}
        self.checkpoints: dict[str, dict[str, dict[str, int]]] = {}

    @hookimpl
    def privateshare_transport_send(self, request: HttpRequest) -> str:
        self.calls.append(("send", request.url))
        return "response"

    @hookimpl
    def privateshare_key_handle(self) -> str:
        return "handle"

    @hookimpl
    def privateshare_token_load(self, user_id: str) -> UserAccessToken | None:
        return self.tokens.get(user_id)

    @hookimpl
    def privateshare_token_save(self, user_id: str, token: UserAccessToken) -> bool:
        self.tokens[user_id] = token
        return True

    @hookimpl
    def privateshare_token_delete(self, user_id: str) -> bool:
        return self.tokens.pop(user_id, None) is not None

    @hookimpl
    def privateshare_token_users(self) -> list[str]:
        return sorted(self.tokens)

    @hookimpl
    def privateshare_token_lock(self, user_id: str) -> Any:
        self.calls.append(("lock", user_id))
        return contextlib.nullcontext()

    @hookimpl
    def privateshare_checkpoint_load(self, user_id: str) -> dict[str, dict[str, int]]:
        return self.checkpoints.get(user_id, {})

    @hookimpl
    def privateshare_checkpoint_save(
        self, user_id: str, changes: dict[str, dict[str, int]], replace: bool
    ) -> bool:
        self.checkpoints[user_id] = dict(changes)
        return True

    @hookimpl
    def privateshare_decrypt(
        self, source: Any, metadata: FileMetadata, key: Any, file_name: str
    ) -> Any:
        return iter([source.read()])

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        self.calls.append(("open_run", run.run_id))

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Any:
        self.calls.append(("open_file", file.name))
        return None

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        self.calls.append(("close_run", summary.user_id))

    @hookimpl
    def privateshare_session_established(self, user_id: str, session: Session) -> None:
        self.calls.append(("session", session.expiry))

    @hookimpl
    def privateshare_status_changed(self, user_id: str, status: LibraryStatus) -> None:
        self.calls.append(("status", status.state))

    @hookimpl
    def privateshare_file_written(
        self, user_id: str, file: DataFile, size: int, sinks: list[str]
    ) -> None:
        self.calls.append(("written", (file.name, size, tuple(sinks))))

    @hookimpl
    def privateshare_file_failed(self, user_id: str, file_name: str, error: Exception) -> None:
        self.calls.append(("failed", (file_name, str(error))))

    @hookimpl
    def privateshare_token_refreshed(self, user_id: str, token: UserAccessToken) -> None:
        self.calls.append(("refreshed", user_id))

    @hookimpl
    def privateshare_run_finished(self, summary: RunSummary) -> None:
        self.calls.append(("finished", summary.run_id))


def make_hooks(*plugins: tuple[str, object], strict: bool = False) -> Hooks:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    return Hooks(pm, strict=strict)


def test_every_hook_through_the_facade(tmp_path: Path) -> None:
    import io

    rec = Recorder()
    hooks = make_hooks(("rec", rec))
    assert hooks.send(HttpRequest("GET", "https://x/y")) == "response"
    assert hooks.key_handle() == "handle"
    assert hooks.token_load("alice") is None
    hooks.token_save("alice", TOKEN)
    assert hooks.token_load("alice") == TOKEN
    assert hooks.token_users() == ["alice"]
    with hooks.token_lock("alice"):
        pass
    hooks.checkpoint_save("alice", {"s": {"a": 1}}, replace=True)
    assert hooks.checkpoint_load("alice") == {"s": {"a": 1}}
    # No privateshare_checkpoint_pieces: the load hook's mapping, in one piece per sink.
    assert list(hooks.checkpoint_pieces("alice")) == [("s", {"a": 1})]
    assert list(hooks.decrypt(io.BytesIO(b"x"), FileMetadata(), "key", "f")) == [b"x"]
    hooks.sinks_open_run(RUN)
    assert sink_writers(hooks, RUN, FILE) == []
    hooks.session_established("alice", Session("k", 99))
    hooks.status_changed("alice", LibraryStatus("running"))
    hooks.file_written("alice", FILE, 3, ["sinks.a"])
    hooks.file_failed("alice", "bad.json", RuntimeError("boom"))
    hooks.token_refreshed("alice", TOKEN)
    hooks.sinks_close_run(RUN, RunSummary(run_id="run-1", user_id="alice"))
    hooks.run_finished(RunSummary(run_id="run-1", user_id="alice"))
    assert hooks.token_delete("alice") is True
    assert hooks.token_delete("alice") is False
    assert rec.calls == [
        ("send", "https://x/y"),
        ("lock", "alice"),
        ("open_run", "run-1"),
        ("open_file", "posts.json"),
        ("session", 99),
        ("status", "running"),
        ("written", ("posts.json", 3, ("sinks.a",))),
        ("failed", ("bad.json", "boom")),
        ("refreshed", "alice"),
        ("close_run", "alice"),
        ("finished", "run-1"),
    ]


def test_missing_provider_says_which_table_to_add() -> None:
    hooks = make_hooks()
    with pytest.raises(ConfigError) as info:
        hooks.key_handle()
    assert "[keys]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        hooks.send(HttpRequest("GET", "https://x"))
    assert "[transport]" in str(info.value)


class Writer:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def write(self, chunk: bytes) -> None:
        self.log.append(f"{self.name}:write")

    def commit(self) -> None:
        self.log.append(f"{self.name}:commit")

    def abort(self) -> None:
        self.log.append(f"{self.name}:abort")


class GoodSink:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Writer:
        return Writer(self.log, self.name)


class FailingSink:
    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Writer:
        raise OSError("disk full")


def test_sink_writers_in_config_order_and_all_or_nothing() -> None:
    log: list[str] = []
    hooks = make_hooks(("sinks.a", GoodSink(log, "a")), ("sinks.b", GoodSink(log, "b")))
    assert [name for name, _ in sink_writers(hooks, RUN, FILE)] == ["sinks.a", "sinks.b"]

    hooks = make_hooks(("sinks.a", GoodSink(log, "a")), ("sinks.bad", FailingSink()))
    with pytest.raises(SinkError) as info:
        sink_writers(hooks, RUN, FILE)
    assert "sink sinks.bad could not open posts.json: disk full" in str(info.value)
    assert log[-1] == "a:abort"


class Upper:
    @hookimpl
    def privateshare_transform_file(self, file: DataFile, chunks: Any) -> Any:
        return (bytes(c).upper() for c in chunks)


class Exclaim:
    @hookimpl
    def privateshare_transform_file(self, file: DataFile, chunks: Any) -> Any:
        if file.name.endswith(".jpg"):
            return None  # leaves the stream as it is
        return iter([*chunks, b"!"])


def test_transforms_chain_in_registration_order() -> None:
    hooks = make_hooks(("upper", Upper()), ("exclaim", Exclaim()))
    assert b"".join(hooks.transform(FILE, iter([b"ab", memoryview(b"cd")]))) == b"ABCD!"
    photo = DataFile("alice", "p.jpg", 1)
    assert b"".join(hooks.transform(photo, iter([b"xy"]))) == b"XY"
    assert list(make_hooks().transform(FILE, iter([b"same"]))) == [b"same"]


class FailingObserver:
    @hookimpl
    def privateshare_status_changed(self, user_id: str, status: LibraryStatus) -> None:
        raise ValueError("observer bug")


def test_observer_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    hooks = make_hooks(("rec", rec), ("buggy", FailingObserver()))
    with caplog.at_level(logging.WARNING):
        hooks.status_changed("alice", LibraryStatus("completed"))
    assert ("status", "completed") in rec.calls
    assert "buggy" in caplog.text and "observer bug" in caplog.text
    strict = make_hooks(("buggy", FailingObserver()), strict=True)
    with pytest.raises(PluginError):
        strict.status_changed("alice", LibraryStatus("completed"))


def test_tokens_and_sessions_never_show_secrets() -> None:
    text = repr(TOKEN) + str(TOKEN) + repr(Session("session-key-secret", 1))
    for secret in ("access-secret", "refresh-secret", "session-key-secret"):
        assert secret not in text


class FailingWriterSink:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> Writer:
        writer = Writer(self.log, "bad")
        writer.commit = lambda: (_ for _ in ()).throw(OSError("disk full"))  # type: ignore[method-assign]
        return writer


def test_deliver_streams_through_transforms_and_is_all_or_nothing() -> None:
    log: list[str] = []
    hooks = make_hooks(
        ("upper", Upper()), ("sinks.a", GoodSink(log, "a")), ("sinks.b", GoodSink(log, "b"))
    )
    size, sinks = deliver(hooks, RUN, FILE, [b"abc", b"de"])
    assert (size, sinks) == (5, ["sinks.a", "sinks.b"])
    assert log[-2:] == ["a:commit", "b:commit"]

    log.clear()
    hooks = make_hooks(("sinks.a", GoodSink(log, "a")), ("sinks.bad", FailingWriterSink(log)))
    with pytest.raises(OSError, match="disk full"):
        deliver(hooks, RUN, FILE, [b"x"])
    assert "a:abort" in log and "bad:abort" in log

    def broken_stream():
        yield b"partial"
        raise ValueError("padding")

    log.clear()
    hooks = make_hooks(("sinks.a", GoodSink(log, "a")))
    with pytest.raises(ValueError, match="padding"):
        deliver(hooks, RUN, FILE, broken_stream())
    assert "a:commit" not in log and log[-1] == "a:abort"
