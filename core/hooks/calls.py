"""The typed hook calls: the facade the core calls instead of ``pm.hook.*`` (after tox).

One method per hook, marked with the hook it calls (``tests/core/test_hooks_calls.py``
checks the methods against the specs).

Provider hooks must be answered by some plugin, or the call fails with a message
saying which table to add. Sink and observer hooks are called one
implementation at a time so a failure is attributed to the plugin that raised
it; an observer's failure is logged and does not stop the run (unless strict).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import pluggy

from .. import DOCS_URL
from ..errors import ConfigError, PluginError, SinkError
from .families import FAMILIES

if TYPE_CHECKING:
    from ..keys import KeyHandle
    from ..models import (
        DataFile,
        FileMetadata,
        LibraryStatus,
        RunInfo,
        RunSummary,
        Session,
        UserAccessToken,
    )
    from ..sinks import FileWriter
    from ..transport import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def calls(hook: str) -> Callable[[F], F]:
    """Mark a facade method as the typed call of ``hook`` (checked against the specs in tests)."""

    def mark(method: F) -> F:
        method.__hook__ = hook  # type: ignore[attr-defined]
        return method

    return mark


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
                f"no {family} plugin answered {hook}; add a {FAMILIES[family].table} table "
                "to the config (see " + DOCS_URL + "configuration/)"
            )
        return result

    # transport
    @calls("privateshare_transport_send")
    def send(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self._first(
            "transport", "privateshare_transport_send", request=request
        )
        return response

    # key storage
    @calls("privateshare_key_handle")
    def key_handle(self) -> KeyHandle:
        handle: KeyHandle = self._first("keys", "privateshare_key_handle")
        return handle

    # token storage
    @calls("privateshare_token_load")
    def token_load(self, user_id: str) -> UserAccessToken | None:
        token: UserAccessToken | None = self.pm.hook.privateshare_token_load(user_id=user_id)
        return token

    @calls("privateshare_token_save")
    def token_save(self, user_id: str, token: UserAccessToken) -> None:
        self._first("tokens", "privateshare_token_save", user_id=user_id, token=token)

    @calls("privateshare_token_delete")
    def token_delete(self, user_id: str) -> bool:
        return bool(self.pm.hook.privateshare_token_delete(user_id=user_id))

    @calls("privateshare_token_users")
    def token_users(self) -> list[str]:
        return list(self.pm.hook.privateshare_token_users() or [])

    @calls("privateshare_token_lock")
    def token_lock(self, user_id: str) -> AbstractContextManager[None]:
        lock: AbstractContextManager[None] = self._first(
            "tokens", "privateshare_token_lock", user_id=user_id
        )
        return lock

    @calls("privateshare_checkpoint_load")
    def checkpoint_load(self, user_id: str) -> dict[str, dict[str, int]]:
        return dict(self.pm.hook.privateshare_checkpoint_load(user_id=user_id) or {})

    @calls("privateshare_checkpoint_pieces")
    def checkpoint_pieces(self, user_id: str) -> Iterable[tuple[str, Mapping[str, int]]]:
        """The state in pieces; the whole mapping from ``checkpoint_load`` when the store
        hands over no pieces."""
        pieces = self.pm.hook.privateshare_checkpoint_pieces(user_id=user_id)
        if pieces is None:
            return self.checkpoint_load(user_id).items()
        return pieces  # type: ignore[no-any-return]

    @calls("privateshare_checkpoint_save")
    def checkpoint_save(
        self, user_id: str, changes: dict[str, dict[str, int]], *, replace: bool = False
    ) -> None:
        self._first(
            "tokens",
            "privateshare_checkpoint_save",
            user_id=user_id,
            changes=changes,
            replace=replace,
        )

    @calls("privateshare_run_record_load")
    def run_record_load(self, user_id: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.pm.hook.privateshare_run_record_load(user_id=user_id)
        return record

    @calls("privateshare_run_record_save")
    def run_record_save(self, user_id: str, record: dict[str, Any]) -> None:
        self.pm.hook.privateshare_run_record_save(user_id=user_id, record=record)

    # decryption
    @calls("privateshare_decrypt")
    def decrypt(
        self, source: BinaryIO, metadata: FileMetadata, key: KeyHandle, file_name: str
    ) -> Iterator[bytes | memoryview]:
        chunks: Iterator[bytes | memoryview] = self._first(
            "decryption",
            "privateshare_decrypt",
            source=source,
            metadata=metadata,
            key=key,
            file_name=file_name,
        )
        return chunks

    # transforms
    @calls("privateshare_transform_file")
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

    @calls("privateshare_sink_open_run")
    def sinks_open_run(self, run: RunInfo) -> None:
        for name, call in self._each("privateshare_sink_open_run"):
            try:
                call(run=run)
            except Exception as exc:
                raise SinkError(f"sink {name} could not open the run: {exc}") from exc

    @calls("privateshare_sink_open_file")
    def sink_open_file(
        self, run: RunInfo, file: DataFile, *, only: Collection[str] | None = None
    ) -> Iterator[tuple[str, FileWriter | None]]:
        """Each sink's writer for ``file`` (of ``only``, if given), in config order; a
        failure names the sink.

        :mod:`privateshare.delivery` consumes this and aborts the writers already
        opened when a later sink cannot take the file.
        """
        for name, call in self._each("privateshare_sink_open_file"):
            if only is not None and name not in only:
                continue
            try:
                writer = call(run=run, file=file)
            except Exception as exc:
                raise SinkError(f"sink {name} could not open {file.name}: {exc}") from exc
            yield name, writer

    def sink_writers(
        self, run: RunInfo, file: DataFile, only: Collection[str] | None = None
    ) -> list[tuple[str, FileWriter]]:
        """Deprecated: use :func:`privateshare.delivery.sink_writers`."""
        _moved("sink_writers", "privateshare.delivery.sink_writers(hooks, run, file)")
        from ..delivery import sink_writers

        return sink_writers(self, run, file, only)

    def deliver(
        self,
        run: RunInfo,
        file: DataFile,
        chunks: Iterable[bytes | memoryview],
        only: Collection[str] | None = None,
    ) -> tuple[int, list[str]]:
        """Deprecated: use :func:`privateshare.delivery.deliver`."""
        _moved("deliver", "privateshare.delivery.deliver(hooks, run, file, chunks)")
        from ..delivery import deliver

        return deliver(self, run, file, chunks, only)

    @calls("privateshare_sink_sync")
    def sinks_sync(self, run: RunInfo) -> None:
        """Every sink's committed files made durable; a failure names the sink."""
        for name, call in self._each("privateshare_sink_sync"):
            try:
                call(run=run)
            except Exception as exc:
                raise SinkError(f"sink {name} could not make its files durable: {exc}") from exc

    @calls("privateshare_sink_close_run")
    def sinks_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        for name, call in self._each("privateshare_sink_close_run"):
            try:
                call(run=run, summary=summary)
            except Exception:
                log.exception("sink %s failed to close run %s", name, run.run_id)
                if self.strict:
                    raise

    # observers
    @calls("privateshare_session_established")
    def session_established(self, user_id: str, session: Session) -> None:
        self._notify("privateshare_session_established", user_id=user_id, session=session)

    @calls("privateshare_status_changed")
    def status_changed(self, user_id: str, status: LibraryStatus) -> None:
        self._notify("privateshare_status_changed", user_id=user_id, status=status)

    @calls("privateshare_file_written")
    def file_written(self, user_id: str, file: DataFile, size: int, sinks: list[str]) -> None:
        self._notify(
            "privateshare_file_written", user_id=user_id, file=file, size=size, sinks=sinks
        )

    @calls("privateshare_file_failed")
    def file_failed(self, user_id: str, file_name: str, error: Exception) -> None:
        self._notify("privateshare_file_failed", user_id=user_id, file_name=file_name, error=error)

    @calls("privateshare_token_refreshed")
    def token_refreshed(self, user_id: str, token: UserAccessToken) -> None:
        self._notify("privateshare_token_refreshed", user_id=user_id, token=token)

    @calls("privateshare_run_finished")
    def run_finished(self, summary: RunSummary) -> None:
        self._notify("privateshare_run_finished", summary=summary)

    # plumbing
    def listens(self, hook: str) -> bool:
        """Whether any plugin implements ``hook`` (to skip building calls nobody receives)."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

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


def _moved(old: str, new: str) -> None:
    warnings.warn(
        f"privateshare.hooks.Hooks.{old} is deprecated; use {new}",
        DeprecationWarning,
        stacklevel=3,
    )
