"""The typed facade the core calls instead of ``pm.hook.*`` (after tox's manager).

Provider hooks must be answered by some plugin, or the call fails with a message
saying which table to add. Sink and observer hooks are called one
implementation at a time so a failure is attributed to the plugin that raised
it; an observer's failure is logged and does not stop the run (unless strict).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO

import pluggy

from . import DOCS_URL
from .errors import ConfigError, PluginError, SinkError

if TYPE_CHECKING:
    from .keys import KeyHandle
    from .models import (
        DataFile,
        FileMetadata,
        LibraryStatus,
        RunInfo,
        RunSummary,
        Session,
        UserAccessToken,
    )
    from .sinks import FileWriter
    from .transport import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

_MISSING_TABLE = {
    "transport": "[transport]",
    "keys": "[keys]",
    "tokens": "[tokens]",
    "decryption": "[decryption]",
}


class Hooks:
    """One method per hook, with types, for the core to call."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        *,
        strict: bool = False,
        broken_sinks: dict[str, str] | None = None,
    ) -> None:
        self.pm = pm
        self.strict = strict
        #: Configured sinks whose plugin failed to load: name -> error.
        self.broken_sinks = dict(broken_sinks or {})

    def _first(self, family: str, hook: str, **kwargs: Any) -> Any:
        result = getattr(self.pm.hook, hook)(**kwargs)
        if result is None:
            raise ConfigError(
                f"no {family} plugin answered {hook}; add a {_MISSING_TABLE[family]} table "
                "to the config (see " + DOCS_URL + "configuration/)"
            )
        return result

    # transport
    def send(self, request: HttpRequest) -> HttpResponse:
        return self._first("transport", "privateshare_transport_send", request=request)

    # key storage
    def key_handle(self) -> KeyHandle:
        return self._first("keys", "privateshare_key_handle")

    # token storage
    def token_load(self, user_id: str) -> UserAccessToken | None:
        return self.pm.hook.privateshare_token_load(user_id=user_id)

    def token_save(self, user_id: str, token: UserAccessToken) -> None:
        self._first("tokens", "privateshare_token_save", user_id=user_id, token=token)

    def token_delete(self, user_id: str) -> bool:
        return bool(self.pm.hook.privateshare_token_delete(user_id=user_id))

    def token_users(self) -> list[str]:
        return list(self.pm.hook.privateshare_token_users() or [])

    def token_lock(self, user_id: str) -> AbstractContextManager[None]:
        return self._first("tokens", "privateshare_token_lock", user_id=user_id)

    def checkpoint_load(self, user_id: str) -> dict[str, int]:
        return dict(self.pm.hook.privateshare_checkpoint_load(user_id=user_id) or {})

    def checkpoint_save(self, user_id: str, checkpoint: dict[str, int]) -> None:
        self._first(
            "tokens", "privateshare_checkpoint_save", user_id=user_id, checkpoint=checkpoint
        )

    # decryption
    def decrypt(
        self, source: BinaryIO, metadata: FileMetadata, key: KeyHandle, file_name: str
    ) -> Iterator[bytes | memoryview]:
        return self._first(
            "decryption",
            "privateshare_decrypt",
            source=source,
            metadata=metadata,
            key=key,
            file_name=file_name,
        )

    # transforms
    def transform(
        self, file: DataFile, chunks: Iterator[bytes | memoryview]
    ) -> Iterator[bytes | memoryview]:
        """The plaintext after every ``privateshare_transform_file``, chained in order."""
        for _name, call in self._each("privateshare_transform_file"):
            wrapped = call(file=file, chunks=chunks)
            if wrapped is not None:
                chunks = wrapped
        return chunks

    # sinks
    def sink_names(self) -> list[str]:
        impls = self.pm.hook.privateshare_sink_open_file.get_hookimpls()
        return [impl.plugin_name for impl in impls] + list(self.broken_sinks)

    def sinks_open_run(self, run: RunInfo) -> None:
        for name, call in self._each("privateshare_sink_open_run"):
            try:
                call(run=run)
            except Exception as exc:
                raise SinkError(f"sink {name} could not open the run: {exc}") from exc

    def sink_writers(self, run: RunInfo, file: DataFile) -> list[tuple[str, FileWriter]]:
        """One writer per sink; if any sink cannot take the file, none is left open."""
        if self.broken_sinks:
            name, error = next(iter(self.broken_sinks.items()))
            raise SinkError(f"sink {name} is broken and cannot take files: {error}")
        writers: list[tuple[str, FileWriter]] = []
        for name, call in self._each("privateshare_sink_open_file"):
            try:
                writer = call(run=run, file=file)
            except Exception as exc:
                abort_all(writers)
                raise SinkError(f"sink {name} could not open {file.name}: {exc}") from exc
            if writer is not None:
                writers.append((name, writer))
        return writers

    def deliver(
        self, run: RunInfo, file: DataFile, chunks: Iterable[bytes | memoryview]
    ) -> tuple[int, list[str]]:
        """Stream one file through the transforms into every sink; commit all or abort all.

        Returns the plaintext bytes written and the sinks that committed. Nothing is
        committed before ``chunks`` is exhausted, because decryption reports some
        failures (padding, hash) only at the end.
        """
        writers = self.sink_writers(run, file)
        size = 0
        try:
            for chunk in self.transform(file, iter(chunks)):
                size += len(chunk)
                for _name, writer in writers:
                    writer.write(chunk)
            for _name, writer in writers:
                writer.commit()
        except BaseException:
            abort_all(writers)
            raise
        return size, [name for name, _writer in writers]

    def sinks_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        for name, call in self._each("privateshare_sink_close_run"):
            try:
                call(run=run, summary=summary)
            except Exception:
                log.exception("sink %s failed to close run %s", name, run.run_id)
                if self.strict:
                    raise

    # observers
    def session_established(self, user_id: str, session: Session) -> None:
        self._notify("privateshare_session_established", user_id=user_id, session=session)

    def status_changed(self, user_id: str, status: LibraryStatus) -> None:
        self._notify("privateshare_status_changed", user_id=user_id, status=status)

    def file_written(self, user_id: str, file: DataFile, size: int, sinks: list[str]) -> None:
        self._notify(
            "privateshare_file_written", user_id=user_id, file=file, size=size, sinks=sinks
        )

    def file_failed(self, user_id: str, file_name: str, error: Exception) -> None:
        self._notify("privateshare_file_failed", user_id=user_id, file_name=file_name, error=error)

    def token_refreshed(self, user_id: str, token: UserAccessToken) -> None:
        self._notify("privateshare_token_refreshed", user_id=user_id, token=token)

    def run_finished(self, summary: RunSummary) -> None:
        self._notify("privateshare_run_finished", summary=summary)

    # plumbing
    def _each(self, hook: str) -> Iterator[tuple[str, Any]]:
        # pluggy calls the last registered first; we keep config order instead.
        # An implementation may accept a subset of the spec's arguments, as in pluggy.
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            yield impl.plugin_name, _caller(impl)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for name, call in self._each(hook):
            try:
                call(**kwargs)
            except Exception as exc:
                if self.strict:
                    raise PluginError(f"hook {hook} of plugin {name} failed: {exc}") from exc
                log.warning(
                    "hook %s of plugin %s failed: %s: %s", hook, name, type(exc).__name__, exc
                )


def _caller(impl: Any) -> Any:
    def call(**kwargs: Any) -> Any:
        return impl.function(*(kwargs[name] for name in impl.argnames))

    return call


def abort_all(writers: list[tuple[str, FileWriter]]) -> None:
    """Abort every writer, logging (not raising) the failures of individual aborts."""
    for name, writer in writers:
        try:
            writer.abort()
        except Exception:
            log.exception("sink %s failed to abort", name)
