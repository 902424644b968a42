"""Every hook privateshare calls, in one place.

Each docstring follows one template: what the hook does, its parameters, what
it returns, whether the first non-``None`` result wins (``firstresult``) or all
results are collected, and when the core calls it. ``docs/hooks.md`` is the
reference; ``tests/test_hooks_documented.py`` fails when a hook is missing
there or has no test.

Provider families (transport, key storage, token storage, decryption) have
exactly one configured plugin and use ``firstresult``. Sinks and observers are
called for every implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO

import pluggy

if TYPE_CHECKING:
    import click

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

PROJECT = "privateshare"
#: The version of the hook specifications. The minor part grows when hooks or optional
#: arguments are added; the major part when a hook changes or goes. A plugin states the
#: range it needs with ``requires_spec`` (e.g. ``">=1.0,<2"``); see docs/hooks.md.
SPEC_VERSION = "1.1"  # 1.1: privateshare_checkpoint_pieces
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- transport ---------------------------------------------------------------


@hookspec(firstresult=True)
def privateshare_transport_send(request: HttpRequest) -> HttpResponse | None:
    """Send one HTTP request to the digi.me API and return its response.

    Every transport keeps this contract (``TransportConformance`` in
    :mod:`privateshare.testing.conformance` checks it):

    - ``request.authorize()`` is called once per attempt and once per redirect hop;
      each value is sent with that one request only.
    - Redirects are followed only within the origin of ``request.url`` (scheme, host,
      port; host case and default ports normalised). A redirect anywhere else raises
      ``TransportError`` naming the foreign origin (not its URL), and nothing is sent
      there: no connection, no ``authorize()`` call. No answer from elsewhere is returned.
    - Only ``request.retryable`` requests are retried.
    - ``request.deadline`` bounds everything: no attempt starts and no retry wait runs
      past it, and neither waiting for the answer nor any read of the body blocks past it
      (``TransportError``).
    - ``read(limit)`` decodes Content-Encoding in steps, counts ``limit`` on the decoded
      bytes and raises ``ResponseTooLarge`` holding about ``limit`` bytes at most.
    - A body shorter than its Content-Length, or a chunked body cut before its last
      chunk, raises ``TransportError`` from every read path.
    - Signed ``Authorization`` values and session keys in paths stay out of errors and logs.

    :param request: method, URL, headers, JSON body, an ``authorize`` callback to
        call once per attempt, whether to stream the body, whether it may be retried,
        and the deadline of the whole exchange.
    :returns: the response; its body is read by the caller and closed by it.
    :result: firstresult — the configured transport answers.
    :called: for every API call, including JWKS fetches and file downloads.
    """


# --- key storage -------------------------------------------------------------


@hookspec(firstresult=True)
def privateshare_key_handle() -> KeyHandle | None:
    """Return the contract's private key as a handle with operations.

    :returns: a :class:`privateshare.keys.KeyHandle` — PS512 signing, RSA-OAEP-SHA1
        decryption, the public key. Never PEM bytes.
    :result: firstresult — the configured key store answers.
    :called: whenever the core needs the key (to sign, to unwrap a file key). The key
        store loads the key once and returns that handle every time; the ``KeyStore``
        base (:mod:`privateshare.keys`) does this, retrying a load that failed.
    """


# --- token storage -----------------------------------------------------------


@hookspec(firstresult=True)
def privateshare_token_load(user_id: str) -> UserAccessToken | None:
    """Load a user's saved access token.

    :param user_id: the application's own identifier for the user.
    :returns: the token with every field as saved (``staged`` too), or ``None``.
    :result: firstresult.
    :called: before a pull with a saved token, and after taking the refresh lock.
    """


@hookspec(firstresult=True)
def privateshare_token_save(user_id: str, token: UserAccessToken) -> bool | None:
    """Save a user's token atomically, replacing the previous one.

    :param user_id: the user.
    :param token: the token to keep, every field of it: ``staged`` holds a token
        server answer not verified yet, and losing it loses the user's refresh token.
    :returns: ``True`` once saved, durably.
    :result: firstresult.
    :called: when the token server answers (the answer staged), and again once the
        answer is verified (the new token, ``staged`` empty).
    """


@hookspec(firstresult=True)
def privateshare_token_delete(user_id: str) -> bool | None:
    """Forget a user: token, checkpoint (base and journal) and last run record.

    :param user_id: the user.
    :returns: ``True`` if something was deleted, ``False`` if there was nothing.
    :result: firstresult.
    :called: by ``delete-user`` and when a consent is withdrawn.
    """


@hookspec(firstresult=True)
def privateshare_token_users() -> list[str] | None:
    """List the users that have a saved token.

    :returns: user ids, sorted; unreadable records are left out with a warning.
    :result: firstresult.
    :called: by ``pull --all-users`` and ``privateshare users``.
    """


@hookspec(firstresult=True)
def privateshare_token_lock(user_id: str) -> AbstractContextManager[None] | None:
    """Return a lock that serialises token refresh for one user across processes.

    :param user_id: the user.
    :returns: a context manager; while held, no other process refreshes this user.
    :result: firstresult.
    :called: around every refresh; the token is re-loaded inside the lock so that
        a refresh done meanwhile by another worker is reused, not repeated.
    """


@hookspec(firstresult=True)
def privateshare_checkpoint_load(user_id: str) -> dict[str, dict[str, int]] | None:
    """Load a user's delivery state: sink name -> file name -> last delivered ``updatedDate``.

    :param user_id: the user.
    :returns: the mapping (the saved base with every saved change applied in order),
        empty when nothing was delivered yet. A checkpoint saved before state was kept
        per sink is returned under the sink name ``"*"`` (``privateshare.checkpoint.
        LEGACY_SINKS``): the flow reads it as "delivered to every sink configured now"
        and replaces it.
    :result: firstresult.
    :called: at the start of each pull, to deliver to each sink only what it lacks.
    """


@hookspec(firstresult=True)
def privateshare_checkpoint_pieces(user_id: str) -> Iterable[tuple[str, Mapping[str, int]]] | None:
    """Hand over a user's delivery state in pieces, so that a large one is never held whole.

    Added in spec 1.1; optional: a store without it is read through
    ``privateshare_checkpoint_load``.

    :param user_id: the user.
    :returns: an iterable of ``(sink, names)`` pieces, ``names`` mapping file names to the
        last delivered ``updatedDate``, applied in order (a later piece's date for a name
        wins): the state ``privateshare_checkpoint_load`` returns, in as many pieces per sink
        as the store likes. A piece with no names still says that the sink has a state.
        Read lazily, once, and maybe not to its end (``close()`` is called if it has one).
        ``None``: not implemented.
    :result: firstresult.
    :called: at the start of each pull, before ``privateshare_checkpoint_load``, which is
        called instead when this returns ``None``, and after it when the state must be held
        whole (a ``"*"`` record or a sink no longer configured: the state is saved whole).
    """


@hookspec(firstresult=True)
def privateshare_checkpoint_save(
    user_id: str, changes: dict[str, dict[str, int]], replace: bool
) -> bool | None:
    """Save what changed in a user's delivery state, durably, at a cost of O(``changes``).

    :param user_id: the user.
    :param changes: sink name -> file name -> ``updatedDate`` now delivered there; merged
        over the saved state (a later save of the same sink and name wins). Sinks and
        names not in ``changes`` keep their saved values.
    :param replace: ``True``: ``changes`` is the whole state; sinks not in it are forgotten
        (used when sinks are removed from the config and to migrate a ``"*"`` record).
    :returns: ``True`` once saved. A crash during a save may lose that save (those files
        are delivered again), never an earlier one, and never leaves a state that fails
        to load.
    :result: firstresult.
    :called: about once a second during a pull with the files delivered since the last
        save, once more at its end; with ``replace`` when the configured sinks changed.
    """


@hookspec(firstresult=True)
def privateshare_run_record_load(user_id: str) -> dict[str, Any] | None:
    """Load the record of a user's last run (what ``privateshare status`` shows).

    :param user_id: the user.
    :returns: the JSON-able mapping last saved by ``privateshare_run_record_save``, or ``None``.
    :result: firstresult.
    :called: by ``privateshare status`` and ``PrivateShare.status()``.
    """


@hookspec(firstresult=True)
def privateshare_run_record_save(user_id: str, record: dict[str, Any]) -> bool | None:
    """Replace the record of a user's last run.

    :param user_id: the user.
    :param record: a JSON-able mapping: when the run started and ended, its final state,
        files delivered and failed (also per sink), accounts needing reauthorization.
    :returns: ``True`` once saved.
    :result: firstresult.
    :called: once at the end of every pull of the user.
    """


# --- decryption --------------------------------------------------------------


@hookspec(firstresult=True)
def privateshare_decrypt(
    source: BinaryIO, metadata: FileMetadata, key: KeyHandle, file_name: str
) -> Iterator[bytes | memoryview] | None:
    """Turn an encrypted file stream into a plaintext stream.

    :param source: a readable binary stream of the encrypted body.
    :param metadata: the decoded ``x-metadata`` (its ``compression`` says how to
        decompress after decrypting).
    :param key: the contract key handle, to unwrap the file key.
    :param file_name: for error messages.
    :returns: an iterator of plaintext chunks; a chunk may be a view into a reused
        buffer, valid until the next chunk is requested. Raises
        :class:`privateshare.FileDecryptionError` naming the failed check.
    :result: firstresult — the configured decryptor answers.
    :called: once per downloaded file.
    """


# --- transforms ----------------------------------------------------------------


@hookspec
def privateshare_transform_file(
    file: DataFile, chunks: Iterator[bytes | memoryview]
) -> Iterator[bytes | memoryview] | None:
    """Wrap a file's plaintext on its way to the sinks (redact, convert, filter).

    :param file: the file: user, name, ``updated_date``, metadata (``file.kind`` is
        ``"mapped"`` for service JSON, ``"raw"`` for pushed files).
    :param chunks: the plaintext so far — decrypted, or already wrapped by another
        implementation. A chunk may be a view into a reused buffer.
    :returns: a new iterator of chunks, or ``None`` to leave the stream as it is.
        Keep memory bounded: mapped files are small JSON arrays, raw files can be GiBs.
    :result: called for every implementation, each wrapping the previous one's result,
        in registration order.
    :called: once per file, after ``privateshare_decrypt`` and before any sink sees a byte;
        an exception fails the file (reported, retried on the next run).
    """


# --- sinks -------------------------------------------------------------------


@hookspec
def privateshare_sink_open_run(run: RunInfo) -> None:
    """Prepare for a run (connect, create tables, make directories).

    :param run: the run id, the user and when it started.
    :returns: nothing.
    :result: called for every sink.
    :called: once per user per run, before the first file.
    """


@hookspec
def privateshare_sink_open_file(run: RunInfo, file: DataFile) -> FileWriter | None:
    """Start writing one file; return a writer that commits all or nothing.

    :param run: the current run.
    :param file: the file's user, name, ``updated_date`` and metadata.
    :returns: a :class:`privateshare.sinks.FileWriter`, or ``None`` to ignore the file.
    :result: called for every sink; each returns its own writer.
    :called: once per file to deliver; the flow then streams the plaintext to
        every writer and commits them all, or aborts them all.
    """


@hookspec
def privateshare_sink_sync(run: RunInfo) -> None:
    """Make every file this sink committed so far in the run durable.

    A sink whose ``commit`` is durable when it returns (one database transaction, an
    S3 multipart completion) need not implement it. A sink that defers part of its
    durability (the ``file`` sink syncs each directory once per batch) must finish it
    here before returning: the flow checkpoints a file only after this returned.

    :param run: the current run.
    :returns: nothing; raise if the files cannot be made durable (they are then not
        checkpointed and are delivered again on the next run).
    :result: called for every sink.
    :called: before each checkpoint save (about once a second) and at the end of the run,
        with only files whose ``commit`` returned before the call to be covered by it.
    """


@hookspec
def privateshare_sink_close_run(run: RunInfo, summary: RunSummary) -> None:
    """Finish a run (flush, close connections).

    :param run: the run.
    :param summary: what the run delivered and what failed.
    :returns: nothing.
    :result: called for every sink.
    :called: once per user per run, after the last file, also after a failure.
    """


# --- observers ---------------------------------------------------------------


@hookspec
def privateshare_session_established(user_id: str, session: Session) -> None:
    """A data session exists for a user (after authorize or trigger).

    :param user_id: the user.
    :param session: the session; its key is redacted in its repr.
    :result: called for every implementation; results ignored.
    :called: once per pull, before the first poll.
    """


@hookspec
def privateshare_status_changed(user_id: str, status: LibraryStatus) -> None:
    """The library state of a user's session changed.

    :param user_id: the user.
    :param status: the new state and per-account details.
    :result: called for every implementation; results ignored.
    :called: when a poll returns a state other than the previous one.
    """


@hookspec
def privateshare_file_written(user_id: str, file: DataFile, size: int, sinks: list[str]) -> None:
    """A file reached every sink.

    :param user_id: the user.
    :param file: the file.
    :param size: plaintext bytes written.
    :param sinks: the names of the sinks that committed it.
    :result: called for every implementation; results ignored.
    :called: after all sink writers committed, before the checkpoint advances.
    """


@hookspec
def privateshare_file_failed(user_id: str, file_name: str, error: Exception) -> None:
    """A file could not be delivered; it will be retried on the next run.

    :param user_id: the user.
    :param file_name: the file's name in the library.
    :param error: what went wrong (a privateshare error where we know).
    :result: called for every implementation; results ignored.
    :called: once per failed file; the run carries on.
    """


@hookspec
def privateshare_token_refreshed(user_id: str, token: UserAccessToken) -> None:
    """A user's token was refreshed and saved.

    :param user_id: the user.
    :param token: the new token (values redacted in its repr; do not log them).
    :result: called for every implementation; results ignored.
    :called: after the new token is saved, before it is used.
    """


@hookspec
def privateshare_run_finished(summary: RunSummary) -> None:
    """A user's run finished.

    :param summary: files and bytes delivered, skipped, failed, accounts, state.
    :result: called for every implementation; results ignored.
    :called: once per user per run, after the sinks closed.
    """


# --- command line ------------------------------------------------------------


@hookspec
def privateshare_register_commands(cli: click.Group) -> None:
    """Add commands to the ``privateshare`` command line (as llm and datasette plugins do).

    Only hook plugins of the entry-point group ``privateshare`` are asked, since the
    command line exists before any config is read. Keep the module cheap to import
    (import heavy dependencies inside the command), because ``privateshare --help``
    loads it. To add a sub-command to an existing group, look it up in
    ``cli.commands`` (``keys`` is always there).

    :param cli: the root ``click.Group`` of the ``privateshare`` command.
    :returns: nothing; call ``cli.add_command(...)`` or add to one of its groups.
    :result: called for every implementation; one that raises is reported by
        ``privateshare plugins`` and skipped, so it cannot take the others down.
    :called: once per process, the first time the command line lists or resolves a command.
    """
