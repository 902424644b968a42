"""A privateshare sink that hands each user's data to a dlt pipeline: DuckDB, PostgreSQL,
BigQuery, Snowflake and every other dlt destination that can merge.

Tables (in ``dataset_name``)::

    <service>_<object type>             one row per object of a mapped JSON file
    <service>_<object type>__<list>     dlt's child tables for nested lists
    privateshare_files                  one row per file: metadata, size, SHA-256 (content optional)

Every row carries ``_privateshare_user_id`` and ``_privateshare_file`` (child rows too,
propagated by dlt's normaliser). Object rows are keyed by ``_privateshare_key`` (the
object's ``id``, else ``entityId``, else ``#<index>``) and merged with dlt's
``delete-insert`` strategy, the file being the merge key: a new version of a file
replaces that file's rows, so an updated object is updated and an object the new
version no longer has is deleted.

Delivery: ``commit`` extracts and normalises the file into a load package in the
pipeline's working directory, so a committed file survives a kill; the packages are
loaded into the destination at the end of the run (``close_run``), or by the next run
if this one died (``open_run`` loads what is pending first).

Written only against privateshare's public API, as any third-party plugin would be.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import re
import shutil
import string
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import msgspec
from filelock import FileLock, Timeout

from privateshare import Plugin, PluginContext, Secret, hookimpl
from privateshare.errors import ConfigError, SinkError
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.sinks import SinkWriter, check_name, file_target, shown_name

if TYPE_CHECKING:
    import dlt

__all__ = ["FILES_TABLE", "DltSink", "object_key"]
__version__ = "0.1.0"

log = logging.getLogger(__name__)

#: The table with one row per file.
FILES_TABLE = "privateshare_files"
#: Columns the sink adds to every row.
USER, FILE, KEY = "_privateshare_user_id", "_privateshare_file", "_privateshare_key"
#: Set only on the marker row that deletes a file's rows when its new version has none.
DELETED = "_privateshare_deleted"
#: Placeholders a ``table_name`` template may use: fields of a mapped file's metadata.
TABLE_FIELDS = ("serviceName", "serviceGroup", "objectType")
#: Longest object id used as a key; a longer one falls back to ``#<index>``.
MAX_KEY = 255


def _merge() -> dict[str, str]:
    return {"disposition": "merge", "strategy": "delete-insert"}


def _key_column() -> dict[str, Any]:
    """A fresh dict each time: dlt writes the column's name into the hints it is given."""
    return {"data_type": "text", "nullable": False}


_WHITESPACE = b" \t\r\n\xef\xbb\xbf"
#: Most files one load package takes from concurrent commits.
_MAX_BATCH = 64


def _files_columns(with_content: bool) -> dict[str, dict[str, Any]]:
    """Typed up front, so a column exists even while all its values are NULL."""
    columns: dict[str, dict[str, Any]] = {
        USER: _key_column(),
        FILE: _key_column(),
        "kind": {"data_type": "text"},
        "mimetype": {"data_type": "text"},
        "updated_date": {"data_type": "bigint"},
        "last_modified": {"data_type": "text"},
        "compression": {"data_type": "text"},
        "metadata": {"data_type": "json"},
        "size": {"data_type": "bigint"},
        "sha256": {"data_type": "text"},
        "object_count": {"data_type": "bigint"},
        "table_name": {"data_type": "text"},
        "run_id": {"data_type": "text"},
    }
    if with_content:
        columns["content"] = {"data_type": "binary"}
    return columns


def object_key(item: Any, index: int, used: set[str]) -> str:
    """The key of one object: its ``id`` (else ``entityId``), unique within its file.

    The same rule as privateshare's ``sql`` sink: the id as text when it is a string or
    an integer of at most 255 characters and not used yet in this file, else ``#<index>``.
    So keys are stable across versions of a file whenever the service gives ids.
    """
    key: str | None = None
    if isinstance(item, dict):
        for field in ("id", "entityId"):
            value = item.get(field)
            if isinstance(value, str | int) and not isinstance(value, bool):
                key = str(value)
                break
    if not key or key in used or len(key) > MAX_KEY:
        key = f"#{index}"
    while key in used:
        key += "#"
    used.add(key)
    return key


def _reserved_key(value: Any) -> str | None:
    """A key anywhere in ``value`` that dlt or this sink reserves, or ``None``."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and key.lower().startswith(("_dlt", "_privateshare")):
                    return key
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
    return None


# --- the plugin ----------------------------------------------------------------------


class DltSink(Plugin):
    """Loads mapped objects as tables, and every file as a row, through a dlt pipeline."""

    description = "Load mapped data into DuckDB, PostgreSQL or any dlt destination, as tables."

    class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
        #: A dlt destination: "duckdb", "postgres", "bigquery", "snowflake", "motherduck"...
        destination: str = "duckdb"
        #: DuckDB only: the database file, relative to the config file (default <sink>.duckdb).
        database: str | None = None
        #: Destination credentials as dlt takes them (a connection string, or JSON for
        #: BigQuery), as a secret reference; unset, dlt looks in its env vars / secrets.toml.
        credentials: Secret | None = None
        #: The dataset (schema) the tables go to.
        dataset_name: str = "privateshare"
        #: The dlt pipeline's name (default privateshare_<sink name>).
        pipeline_name: str | None = None
        #: Where pipelines keep their working directories, relative to the config file.
        pipelines_dir: str = "dlt-pipelines"
        #: Table of a mapped file's objects; placeholders from its metadata.
        table_name: str = "{serviceName}_{objectType}"
        #: Keep every file's bytes in privateshare_files.content.
        store_content: bool = False
        #: Largest content kept; a larger file's row has no content (and a warning is logged).
        content_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 16 << 20
        #: Largest mapped file turned into rows (its objects are in memory at commit).
        objects_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=4 << 30)] = 64 << 20

    def __init__(self, options: DltSink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        where = f"[{context.name}]"
        short = re.sub(r"[^A-Za-z0-9_]", "_", context.name.removeprefix("sinks."))
        self.pipeline_name = options.pipeline_name or f"privateshare_{short}"
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", self.pipeline_name):
            raise ConfigError(
                f"{where} pipeline_name {self.pipeline_name!r} is not usable as a dlt pipeline "
                "name; use letters, digits and '_' (at most 64 characters)"
            )
        if not options.dataset_name.strip():
            raise ConfigError(f"{where} dataset_name is empty; name the dataset the tables go to")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(options.table_name) if f}
        except ValueError:
            fields = {"(unbalanced braces)"}
        if fields - set(TABLE_FIELDS) or not options.table_name.strip():
            raise ConfigError(
                f"{where} table_name {options.table_name!r} may use only the placeholders "
                + ", ".join("{" + f + "}" for f in TABLE_FIELDS)
            )
        self.pipelines_dir = context.resolve(options.pipelines_dir)
        _check_destination(options, where)
        self._naming = _naming()
        self.database: Path | None = None
        if options.destination == "duckdb":
            self.database = context.resolve(options.database or f"{short}.duckdb")
        self._pipeline = _PipelineOwner(self)
        self._committer = _GroupCommit(self._write_package)

    def __repr__(self) -> str:
        return (
            f"DltSink({self.context.name}, destination={self.options.destination}, "
            f"dataset={self.options.dataset_name})"
        )

    @property
    def working_dir(self) -> Path:
        """The pipeline's working directory: pending load packages, schemas, state."""
        return self.pipelines_dir / self.pipeline_name

    def close(self) -> None:
        """Let go of the pipeline (called when the framework closes)."""
        self._pipeline.release_all()

    # hooks ------------------------------------------------------------------------

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Take the pipeline for the run and load what an earlier run left pending."""
        check_name(run.user_id, what="user id", allow_slash=False)
        self._pipeline.hold()
        try:
            with self._pipeline.use() as pipeline:
                self._check_destination_config(pipeline)
                try:
                    self._load(pipeline)
                except SinkError as exc:  # the data is safe locally; close_run tries again
                    log.warning("%s. The run goes on; its end tries again.", exc)
        except BaseException:
            self._pipeline.release()
            raise

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> DltWriter:
        """Check the names once; the writer spools the file and extracts it at commit."""
        user = file_target(run, file).user_id
        table = self._table_for(file) if file.kind == "mapped" else None
        return DltWriter(self, run, file, user, table)

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Load the run's packages (and any older ones) into the destination."""
        try:
            with self._pipeline.use() as pipeline:
                self._load(pipeline)
        finally:
            self._pipeline.release()

    # public helpers -----------------------------------------------------------------

    def load_pending(self) -> int:
        """Load every pending package now; return how many were loaded."""
        with self._pipeline.use() as pipeline:
            return self._load(pipeline)

    def pending_packages(self) -> list[str]:
        """Load ids of the packages committed but not loaded yet."""
        with self._pipeline.use() as pipeline:
            return [
                *pipeline.list_extracted_load_packages(),
                *pipeline.list_normalized_load_packages(),
            ]

    # plumbing ------------------------------------------------------------------------

    def _table_for(self, file: DataFile) -> str:
        """The normalised table name of a mapped file's objects; refuse one that clashes."""
        meta = file.metadata.metadata
        values = {f: str(meta.get(f) or "unknown") for f in TABLE_FIELDS}
        raw = self.options.table_name.format_map(values)
        try:
            table = self._naming.normalize_table_identifier(raw)
        except ValueError:
            table = ""
        if not table or table == FILES_TABLE or table.startswith("_dlt"):
            raise SinkError(
                f"sink {self.context.name}: {file.name!r} of user {shown_name(file.user_id)} "
                f"maps to the table {shown_name(raw)}, which is empty or reserved; "
                "change table_name in the sink's options"
            )
        return table

    def _make_pipeline(self) -> dlt.Pipeline:
        import dlt
        from dlt.common.destination import Destination

        credentials: Any = None
        if self.database is not None:
            credentials = str(self.database)
        elif self.options.credentials is not None:
            credentials = self.options.credentials.reveal()
        destination = Destination.from_reference(self.options.destination, credentials=credentials)
        _capabilities_once(destination)
        self.pipelines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pipeline = dlt.pipeline(
            pipeline_name=self.pipeline_name,
            pipelines_dir=str(self.pipelines_dir),
            destination=destination,
            dataset_name=self.options.dataset_name,
        )
        # No trace.pickle: it would be rewritten after every step, and it is not needed.
        pipeline.config.enable_runtime_trace = False
        return pipeline

    def _check_destination_config(self, pipeline: dlt.Pipeline) -> None:
        """Resolve the destination's configuration (credentials) now, not after delivering."""
        from dlt.common.exceptions import DltException

        try:
            pipeline.destination_client()
        except (DltException, ImportError) as exc:
            raise SinkError(
                f"sink {self.context.name}: the {self.options.destination} destination is not "
                f"configured: {self._scrub(str(exc))}\nSet credentials in [{self.context.name}] "
                "or in dlt's environment variables / .dlt/secrets.toml."
            ) from None

    def _write_package(self, files: list[_FileRows]) -> None:
        """One load package with the rows of ``files``, extracted and normalised: durable."""
        import dlt
        from dlt.common.normalizers.json.relational import DataItemNormalizer

        what = files[0].label if len(files) == 1 else f"{len(files)} files"
        tables: dict[str, _TableRows] = {}
        for file in files:
            for part in file.tables:
                merged = tables.setdefault(part.name, _TableRows(part.name, [], {}, part.keys))
                merged.rows.extend(part.rows)
                merged.columns.update(part.columns)
        resources = [
            dlt.resource(
                t.rows,
                name=t.name,
                table_name=t.name,
                write_disposition=_merge(),
                primary_key=list(t.keys),
                merge_key=[USER, FILE] if t.name != FILES_TABLE else None,
                columns=t.columns,
            )
            for t in tables.values()
        ]
        schema = dlt.Schema("privateshare")
        DataItemNormalizer.update_normalizer_config(
            schema, {"propagation": {"root": {USER: USER, FILE: FILE}}}
        )
        with self._pipeline.use() as pipeline:
            try:
                info = pipeline.extract(resources, schema=schema)
            except Exception as exc:
                self._pipeline.remove_unfinished_extracts()
                raise self._error(f"extract {what}", exc) from None
            try:
                pipeline.normalize()
            except Exception as exc:
                for load_id in info.loads_ids:  # nothing of these files may be loaded later
                    with contextlib.suppress(Exception):
                        pipeline.abort_packages(load_id)
                raise self._error(f"normalise {what}", exc) from None

    def _load(self, pipeline: dlt.Pipeline) -> int:
        """Normalise leftovers of a killed commit, load everything, drop loaded packages."""
        try:
            if pipeline.list_extracted_load_packages():
                pipeline.normalize()
            pending = len(pipeline.list_normalized_load_packages())
            if not pending:
                return 0
            info = self._load_packages(pipeline)
        except Exception as exc:
            raise self._error(
                f"load the pending packages into {self.options.destination} (they stay in "
                f"{self.working_dir} and are loaded by the next run; `dlt pipeline "
                f"--pipelines-dir {self.pipelines_dir} {self.pipeline_name} failed-jobs` "
                "shows a job the destination refused)",
                exc,
            ) from None
        for package in info.load_packages:
            if package.state == "loaded" and not package.jobs.get("failed_jobs"):
                shutil.rmtree(package.package_path, ignore_errors=True)
        return pending

    def _load_packages(self, pipeline: dlt.Pipeline) -> Any:
        """``pipeline.load()``; into DuckDB, with a connection of dlt's own held open meanwhile.

        dlt opens the database for each table's job and for each package's start and end.
        DuckDB shares an open database among the connections of a process, but opening a
        closed one costs ~25 ms of CPU (a fifth of a small file's commit and load): held
        open, the database is opened once per load. The connection is dlt's (its settings),
        so the jobs' connections match it.
        """
        if self.database is None:
            return pipeline.load()
        with pipeline.destination_client():
            return pipeline.load()

    def _error(self, action: str, exc: BaseException) -> SinkError:
        from dlt.pipeline.exceptions import PipelineStepFailed

        cause = exc.exception if isinstance(exc, PipelineStepFailed) else exc
        text = self._scrub(f"{type(cause).__name__}: {cause}".strip())
        return SinkError(f"sink {self.context.name}: cannot {action}: {text}")

    def _scrub(self, text: str) -> str:
        """``text`` without the revealed credentials or a password from them."""
        secret = self.options.credentials
        if secret is None:
            return text
        try:
            value = secret.reveal()
        except ConfigError:
            return text
        hidden = [value]
        with contextlib.suppress(ValueError):
            password = urlsplit(value).password
            if password:
                hidden.append(password)
        for item in hidden:
            if item:
                text = text.replace(item, "<redacted>")
        return text


def _capabilities_once(destination: Any) -> None:
    """Make ``destination.capabilities()`` (without a config) work its answer out once.

    dlt resolves the destination's whole configuration (environment variables, TOML files)
    again on each such call, ~4-14 ms of CPU, and a pipeline asks at every step: many times
    per commit. The sink makes a new destination each time it takes the pipeline, and its
    configuration does not change while the pipeline is held, so one answer is the answer.
    A naming convention changes it only through whether it is case sensitive (dlt's
    ``adjust_capabilities``), and dlt makes a new naming object for most calls: the answers
    are kept by that, not by the object. Callers get a copy: dlt adjusts the one it is given.
    """
    compute = destination.capabilities
    memo: dict[tuple[type, bool] | None, Any] = {}

    def capabilities(config: Any = None, naming: Any = None) -> Any:
        if config is not None:
            return compute(config, naming)
        key = (type(naming), bool(naming.is_case_sensitive)) if naming else None
        held = memo.get(key)
        if held is None:
            held = memo[key] = compute(None, naming)
        return copy.copy(held)

    destination.capabilities = capabilities


def _naming() -> Any:
    """dlt's default naming convention (snake_case), which the tables' names follow."""
    import dlt

    return dlt.Schema("privateshare").naming


def _check_destination(options: DltSink.Options, where: str) -> None:
    """A ConfigError unless dlt knows the destination, it can merge, and the options fit it."""
    from dlt.common.destination import Destination
    from dlt.common.exceptions import DltException

    try:
        capabilities = Destination.from_reference(options.destination).capabilities()
    except (DltException, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{where} destination {options.destination!r} is not a dlt destination dlt can "
            f"use here ({first}); use a name such as duckdb, postgres, bigquery, snowflake, "
            "and install its extra: pip install 'dlt[<destination>]'"
        ) from None
    if "delete-insert" not in (capabilities.supported_merge_strategies or []):
        raise ConfigError(
            f"{where} destination {options.destination!r} cannot merge with dlt's delete-insert "
            "strategy, so an updated file would add rows instead of replacing them; use a SQL "
            "destination (duckdb, postgres, bigquery, snowflake, ...)"
        )
    if options.database is not None and options.destination != "duckdb":
        raise ConfigError(
            f"{where} database applies to the duckdb destination only; for "
            f"{options.destination!r} set credentials instead"
        )
    if options.credentials is not None and options.destination == "duckdb":
        raise ConfigError(
            f"{where} the duckdb destination takes a database file, not credentials; "
            "set database instead"
        )


#: Working directories held by a sink of this process, and by which sink.
_HELD: dict[Path, str] = {}
_HELD_LOCK = threading.Lock()


class _PipelineOwner:
    """The sink's dlt pipeline: one call at a time, and one process at a time.

    A thread lock serialises every call into dlt (a pipeline object is not thread-safe,
    and commits come from the flow's download pool). A file lock beside the working
    directory keeps other processes out while this one uses the pipeline: taken when
    the first run opens (or for one call outside a run) and released when the last run
    closes. Each time it is taken the pipeline is attached afresh, so what another
    process changed meanwhile is read from disk.
    """

    def __init__(self, sink: DltSink) -> None:
        self._sink = sink
        self._lock = threading.RLock()
        self._file_lock = FileLock(
            str(sink.pipelines_dir / f".{sink.pipeline_name}.lock"), thread_local=False
        )
        self._holders = 0
        self._pipeline: dlt.Pipeline | None = None

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._take()
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            if self._holders == 0:  # close_run without open_run
                return
            self._holders -= 1
            if self._holders == 0:
                self._pipeline = None
                self._file_lock.release()
                with _HELD_LOCK:
                    _HELD.pop(self._sink.working_dir, None)

    def release_all(self) -> None:
        with self._lock:
            if self._holders:
                self._holders = 1
                self.release()

    @contextlib.contextmanager
    def use(self) -> Iterator[dlt.Pipeline]:
        with self._lock:
            self.hold()
            try:
                assert self._pipeline is not None
                yield self._pipeline
            finally:
                self.release()

    def remove_unfinished_extracts(self) -> None:
        """Remove what a kill (or a failure) left half-done, so the next step can run.

        dlt extracts into a temp folder it never reuses: a dead extract's folder is
        garbage. And a kill between normalise's rename of a package and its removal of the
        extracted copy leaves the package twice, which dlt then fails to normalise again:
        the normalised copy is complete, so the extracted one goes.
        """
        from dlt.common.storages import NormalizeStorage

        normalize = self._sink.working_dir / "normalize"
        extracted = normalize / NormalizeStorage.EXTRACTED_FOLDER
        if normalize.is_dir():
            for path in normalize.iterdir():
                if path.is_dir() and path != extracted:
                    shutil.rmtree(path, ignore_errors=True)
        if self._pipeline is not None:
            done = set(self._pipeline.list_normalized_load_packages())
            for load_id in self._pipeline.list_extracted_load_packages():
                if load_id in done:
                    shutil.rmtree(extracted / load_id, ignore_errors=True)

    def _take(self) -> None:
        sink = self._sink
        with _HELD_LOCK:  # waiting for a sink of this very process could wait forever
            other = _HELD.get(sink.working_dir)
            if other is not None:
                raise SinkError(
                    f"sink {sink.context.name}: the dlt pipeline {sink.working_dir} is in use by "
                    f"sink {other} of this process; give each sink its own pipeline_name"
                )
            _HELD[sink.working_dir] = sink.context.name
        try:
            self._lock_and_attach()
        except BaseException:
            with _HELD_LOCK:
                _HELD.pop(sink.working_dir, None)
            raise

    def _lock_and_attach(self) -> None:
        sink = self._sink
        sink.pipelines_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._file_lock.acquire(timeout=0)
        except Timeout:
            log.info(
                "sink %s waits for another process to finish with its dlt pipeline %s",
                sink.context.name,
                sink.working_dir,
            )
            self._file_lock.acquire()
        try:
            self._pipeline = sink._make_pipeline()
            self.remove_unfinished_extracts()
        except BaseException as exc:
            self._file_lock.release()
            if isinstance(exc, ConfigError | SinkError):
                raise
            raise sink._error(f"open the dlt pipeline in {sink.working_dir}", exc) from None


@dataclass
class _TableRows:
    """Rows for one table, with its column hints and primary key."""

    name: str
    rows: list[dict[str, Any]]
    columns: dict[str, dict[str, Any]]
    keys: tuple[str, ...]


@dataclass
class _FileRows:
    """Everything one committed file adds: its objects' rows and its files-table row."""

    key: tuple[str, str]  # (user, file name)
    label: str
    tables: list[_TableRows]
    done: bool = False
    error: BaseException | None = None


class _GroupCommit:
    """Commits that arrive while a package is being written go together into the next one.

    A commit still returns only once the package holding its file is extracted and
    normalised, but concurrent commits (the flow's download pool) share one package, and
    so one load at the end of the run. If a shared package fails, its files are retried
    one by one, so a file that cannot be written fails alone.
    """

    def __init__(self, write: Callable[[list[_FileRows]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._queue: list[_FileRows] = []
        self._busy = False

    def commit(self, file: _FileRows) -> None:
        with self._cond:
            self._queue.append(file)
            while not file.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch = self._next_batch()
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if file.error is not None:
            raise file.error

    def _next_batch(self) -> list[_FileRows]:
        """The queued files, oldest first; a second version of one file waits its turn."""
        batch: list[_FileRows] = []
        seen: set[tuple[str, str]] = set()
        for file in list(self._queue):
            if file.key not in seen and len(batch) < _MAX_BATCH:
                seen.add(file.key)
                batch.append(file)
                self._queue.remove(file)
        return batch

    def _run(self, batch: list[_FileRows]) -> None:
        try:
            try:
                self._write(batch)
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].error = exc
                else:
                    for file in batch:
                        try:
                            self._write([file])
                        except Exception as alone:
                            file.error = alone
        except BaseException:
            for file in batch:
                if not file.done and file.error is None:
                    file.error = SinkError(f"the commit of {file.label} was interrupted")
            raise
        finally:
            for file in batch:
                file.done = True


# --- the writer --------------------------------------------------------------------------


class DltWriter(SinkWriter):
    """One file: hashed (and spooled to disk where its bytes are needed) while written,
    extracted into a load package at commit (the state machine is ``SinkWriter``'s)."""

    def __init__(
        self, sink: DltSink, run: RunInfo, file: DataFile, user: str, table: str | None
    ) -> None:
        self._label = f"{file.name!r} of user {shown_name(user)}"
        super().__init__(file, where=self._label)
        self._sink, self._run, self._file, self._user, self._table = sink, run, file, user, table
        self._sha = hashlib.sha256()
        self._lead: bytes | None = None  # first non-blank byte: is it worth parsing?
        keep = table is not None or sink.options.store_content
        # Anonymous, on disk: a killed process leaves nothing, and large files cost no memory.
        self._spool: IO[bytes] | None = tempfile.TemporaryFile() if keep else None  # noqa: SIM115

    def __repr__(self) -> str:
        return (
            f"DltWriter({self._sink.context.name}, {self._label}, {self.state}, {self.size} bytes)"
        )

    def _write(self, chunk: bytes | memoryview) -> None:
        if self._spool is not None:
            try:
                self._spool.write(chunk)  # copied at once: a reused buffer is safe
            except OSError as exc:
                raise SinkError(
                    f"sink {self._sink.context.name}: cannot spool {self._label} to a temp "
                    f"file ({exc.strerror}); check free space in the temp directory (TMPDIR)"
                ) from None
        self._sha.update(chunk)
        if self._lead is None and len(chunk):
            stripped = bytes(chunk[:4096]).lstrip(_WHITESPACE)
            if stripped:
                self._lead = stripped[:1]

    def _commit(self) -> None:
        try:
            self._extract()
        finally:
            self._discard()  # the spool is read: let it go

    def _extract(self) -> None:
        objects = self._objects()
        user, name = self._user, self._file.name
        tables = []
        if self._table is not None:
            keys = (USER, FILE, KEY)
            columns = {USER: _key_column(), FILE: _key_column(), KEY: _key_column()}
            if objects:
                used: set[str] = set()
                rows = [
                    {**item, USER: user, FILE: name, KEY: object_key(item, i, used)}
                    for i, item in enumerate(objects)
                ]
            else:  # no rows in this version: a marker that deletes the previous version's
                rows = [{USER: user, FILE: name, KEY: "", DELETED: True}]
                columns[DELETED] = {"data_type": "bool", "hard_delete": True}
            tables.append(_TableRows(self._table, rows, columns, keys))
        file_row = self._file_row(None if objects is None else len(objects))
        columns = _files_columns(self._sink.options.store_content)
        tables.append(_TableRows(FILES_TABLE, [file_row], columns, (USER, FILE)))
        self._sink._committer.commit(_FileRows((user, name), self._label, tables))

    def _discard(self) -> None:
        """Release the spool (after the commit read it, or on abort)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.close()

    def _file_row(self, object_count: int | None) -> dict[str, Any]:
        """The file's document: what it is, where its rows are, and its bytes if kept."""
        file = self._file
        row: dict[str, Any] = {
            USER: self._user,
            FILE: file.name,
            "kind": file.kind,
            "mimetype": file.metadata.mimetype,
            "updated_date": file.updated_date,
            "last_modified": file.last_modified,
            "compression": file.metadata.compression,
            "metadata": file.metadata.metadata,
            "size": self.size,
            "sha256": self._sha.hexdigest(),
            "object_count": object_count,
            "table_name": self._table,
            "run_id": self._run.run_id,
        }
        if self._sink.options.store_content:
            row["content"] = self._content()
        return row

    def _content(self) -> bytes | None:
        limit = self._sink.options.content_max_bytes
        if self.size > limit:
            log.warning(
                "sink %s: %s is %d bytes, over content_max_bytes (%d): its row has no content",
                self._sink.context.name,
                self._label,
                self.size,
                limit,
            )
            return None
        assert self._spool is not None
        self._spool.seek(0)
        return self._spool.read()

    def _objects(self) -> list[dict[str, Any]] | None:
        """The objects of a mapped JSON file, or ``None`` when it has none to give."""
        if self._table is None:
            return None
        reason = None
        limit = self._sink.options.objects_max_bytes
        if self._lead not in (b"[", b"{"):
            reason = "is not a JSON array of objects"
        elif self.size > limit:
            reason = f"is {self.size} bytes, over objects_max_bytes ({limit})"
        else:
            assert self._spool is not None
            self._spool.seek(0)
            try:
                document = msgspec.json.decode(self._spool.read())
            except msgspec.DecodeError as exc:
                document, reason = None, f"is not valid JSON ({exc})"
            items = document if isinstance(document, list) else [document]
            if reason is None and not all(isinstance(item, dict) for item in items):
                reason = "is not a JSON array of objects"
            elif reason is None and (key := _reserved_key(items)):
                reason = f"has the key {shown_name(key)}, which dlt or this sink reserves"
            if reason is None:
                return items
        log.warning(
            "sink %s: %s %s: it is recorded in %s without object rows in %s",
            self._sink.context.name,
            self._label,
            reason,
            FILES_TABLE,
            self._table,
        )
        return None
