"""The ``s3`` sink: each user's files as objects ``prefix/<user>/<name>``, never half-written.

A file smaller than one part is buffered and sent with a single ``PutObject`` on
commit. A larger one becomes a multipart upload: parts of ``part_size`` bytes
are uploaded as they fill (memory stays at about one part per open file), and
the upload is completed only in ``commit``. Until then S3 shows nothing; on
``abort`` (or any failure) the upload is aborted. A process killed mid-upload
leaves an incomplete multipart upload, which is invisible and which a bucket
lifecycle rule (``AbortIncompleteMultipartUpload``) removes: see ``docs/s3.md``.

The digi.me metadata travels as S3 user metadata; when it does not fit in S3's
2 KB metadata limit it goes to a JSON sidecar object ``<key>.metadata.json``.
Names are checked with the file sink's rules before any request is made.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec

from privateshare.errors import SinkError, UnsafeFileNameError
from privateshare.hooks import Plugin, PluginContext, hookimpl
from privateshare.models import DataFile, RunInfo, RunSummary
from privateshare.plugins.awscommon import AwsConnection, AwsSession, aws_error
from privateshare.plugins.sink_file import METADATA_SUFFIX
from privateshare.sinks import check_name

log = logging.getLogger(__name__)

MiB = 1 << 20
#: S3's smallest part (all but the last), its largest, and its part-count limit.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
#: S3 limits user-defined metadata to 2 KB (names and values, UTF-8); keep a margin.
METADATA_LIMIT = 2000
#: S3 object keys are at most 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024

_S3_CODES = {
    "NoSuchUpload": "the multipart upload was aborted meanwhile (a lifecycle rule or another "
    "process); the file is retried on the next run",
    "KMS.NotFoundException": "the KMS key for server-side encryption does not exist; fix "
    "sse_kms_key_id",
    "KMS.DisabledException": "the KMS key for server-side encryption is disabled; enable it",
}


def _prefix_problem(value: str) -> str | None:
    """Why a key prefix is unusable (the file sink's name rules), if it is."""
    prefix = value.strip("/")
    if not prefix:
        return None
    try:
        check_name(prefix, what="prefix")
    except UnsafeFileNameError as exc:
        return str(exc).split(" is unsafe: ", 1)[-1].split("; nothing was written")[0]
    return None


class S3Sink(Plugin):
    """Writes each user's files as S3 objects under ``prefix/<user>/<name>``, all or nothing."""

    description = "Upload files to an S3 bucket (multipart, atomic), one prefix per user."

    class Options(AwsConnection, forbid_unknown_fields=True, kw_only=True):
        #: The bucket the objects go to (it must exist).
        bucket: Annotated[
            str,
            msgspec.Meta(
                pattern=r"^[^/:\s]+$",
                description="a bucket name, without '/' or 's3://'; put key prefixes in prefix",
            ),
        ]
        #: Key prefix before ``<user>/<name>``, e.g. ``digime/raw``; empty for the bucket root.
        prefix: Annotated[
            str, msgspec.Meta(extra={"check": _prefix_problem, "expected": "a key prefix"})
        ] = ""
        #: Bytes per multipart part (at least 5 MiB); also the largest single-PUT file.
        part_size: Annotated[
            int,
            msgspec.Meta(
                ge=MIN_PART_SIZE, le=MAX_PART_SIZE, description="S3 parts are 5 MiB to 5 GiB"
            ),
        ] = 8 * MiB
        #: Keep the digi.me metadata as object metadata (or a sidecar when too large).
        metadata: bool = True
        #: ``AES256`` (S3-managed keys) or ``aws:kms``; default: the bucket's own setting.
        server_side_encryption: Literal["AES256", "aws:kms"] | None = None
        #: KMS key id or ARN for ``aws:kms``; default: the account's ``aws/s3`` key.
        sse_kms_key_id: str | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.sse_kms_key_id and self.server_side_encryption != "aws:kms":
                raise ValueError(
                    'sse_kms_key_id: it needs server_side_encryption = "aws:kms"; add that, '
                    "or remove sse_kms_key_id"
                )

    def __init__(self, options: S3Sink.Options, context: PluginContext) -> None:
        super().__init__(options, context)
        where = context.name
        self.prefix = options.prefix.strip("/")
        self.bucket = options.bucket
        self.aws = AwsSession(options, where, SinkError)
        self._bucket_checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        return f"S3Sink({self.context.name}, {where})"

    # keys -------------------------------------------------------------------------

    def object_key(self, user: str, name: str) -> str:
        """The object key of a user's file (names already checked)."""
        return "/".join(part for part in (self.prefix, user, name) if part)

    def _checked_key(self, user: str, name: str) -> str:
        check_name(user, what="user id", allow_slash=False)
        suffix = METADATA_SUFFIX if self.options.metadata else None
        check_name(name, reserved_suffix=suffix, user_id=user)
        key = self.object_key(user, name)
        longest = len(key.encode()) + (len(METADATA_SUFFIX) if self.options.metadata else 0)
        if longest > MAX_KEY_BYTES:
            raise UnsafeFileNameError(
                f"file name {name[:60]!r} of user {user!r} is unsafe: its object key would be "
                f"{longest} bytes, over S3's {MAX_KEY_BYTES}; nothing was written. Use a "
                "shorter prefix."
            )
        return key

    def client(self) -> Any:
        return self.aws.client("s3")

    def sse_args(self) -> dict[str, str]:
        o = self.options
        args: dict[str, str] = {}
        if o.server_side_encryption:
            args["ServerSideEncryption"] = o.server_side_encryption
        if o.sse_kms_key_id:
            args["SSEKMSKeyId"] = o.sse_kms_key_id
        return args

    def fail(self, exc: BaseException, action: str, permission: str = "") -> SinkError:
        """The privateshare error for a failed S3 call (never botocore's)."""
        missing = (
            f"bucket {self.bucket!r} does not exist; create it or fix bucket in "
            f"[{self.context.name}]"
        )
        error = aws_error(
            exc,
            self.aws,
            action,
            permission=permission,
            not_found=missing,
            codes={**_S3_CODES, "NoSuchBucket": missing},
        )
        assert isinstance(error, SinkError)
        return error

    def check_bucket(self) -> None:
        """Fail early, with the fix, when the bucket is missing or unreachable (once)."""
        with self._lock:
            if self._bucket_checked:
                return
            try:
                # Not HeadBucket: its errors have no body, so bad credentials and a
                # missing permission would look the same.
                self.client().list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except Exception as exc:
                raise self.fail(exc, f"reach bucket {self.bucket!r}", "s3:ListBucket") from None
            self._bucket_checked = True

    # hooks --------------------------------------------------------------------------

    @hookimpl
    def privateshare_sink_open_run(self, run: RunInfo) -> None:
        """Check the user id and that the bucket is there and ours to write."""
        check_name(run.user_id, what="user id", allow_slash=False)
        self.check_bucket()

    @hookimpl
    def privateshare_sink_open_file(self, run: RunInfo, file: DataFile) -> S3Writer:
        """Check the names and return a writer; no request is made until a part is full."""
        user = file.user_id or run.user_id
        key = self._checked_key(user, file.name)
        self.client()  # made now, so a configuration problem shows before any data flows
        return S3Writer(self, key, file)

    @hookimpl
    def privateshare_sink_close_run(self, run: RunInfo, summary: RunSummary) -> None:
        """Nothing to flush: each object was completed at its commit."""


class _ViewReader(io.RawIOBase):
    """A seekable stream over a buffer, so botocore reads it in pieces instead of copying it."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._view) - self._pos)
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = bytes(self._view[self._pos : end])
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _ascii(value: str) -> str:
    """Header-safe text: S3 metadata travels in HTTP headers."""
    return quote(value, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")


class S3Writer:
    """One object on its way to S3: buffered, then a single PUT or a multipart upload.

    Nothing is visible before ``commit``: a small file exists only in this
    writer's buffer, a large one only as an incomplete multipart upload.
    """

    def __init__(self, sink: S3Sink, key: str, file: DataFile) -> None:
        self._sink = sink
        self.key = key
        self._file = file
        self._state: Literal["open", "committed", "aborted"] = "open"
        self._buffer = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._metadata, self._sidecar = self._object_metadata()

    def __repr__(self) -> str:
        return (
            f"S3Writer(s3://{self._sink.bucket}/{self.key}, {self._state}, {self._size} bytes"
            f"{', multipart' if self._upload_id else ''})"
        )

    @property
    def sidecar_key(self) -> str:
        return self.key + METADATA_SUFFIX

    # metadata -----------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        file = self._file
        return {
            "user_id": file.user_id,
            "name": file.name,
            "updated_date": file.updated_date,
            "last_modified": file.last_modified,
            "size": self._size,
            "metadata": file.metadata.metadata,
            "compression": file.metadata.compression,
        }

    def _object_metadata(self) -> tuple[dict[str, str], bool]:
        """User metadata for the object, and whether the full metadata needs a sidecar."""
        if not self._sink.options.metadata:
            return {}, False
        file = self._file
        meta = {
            "user-id": _ascii(file.user_id),
            "updated-date": str(file.updated_date),
        }
        if file.last_modified:
            meta["last-modified"] = _ascii(file.last_modified)
        if file.metadata.compression:
            meta["compression"] = _ascii(file.metadata.compression)
        digime = json.dumps(file.metadata.metadata, ensure_ascii=True, separators=(",", ":"))
        with_digime = {**meta, "digime-metadata": digime}
        size = sum(len("x-amz-meta-" + k) + len(v) for k, v in with_digime.items())
        if size <= METADATA_LIMIT:
            return with_digime, False
        meta["metadata-sidecar"] = _ascii(self.key.rsplit("/", 1)[-1] + METADATA_SUFFIX)
        return meta, True

    # writing ------------------------------------------------------------------------

    def write(self, chunk: bytes | memoryview) -> None:
        """Buffer a chunk; each time a part is full, upload it (a multipart upload starts)."""
        if self._state != "open":
            raise SinkError(f"cannot write to {self.key}: the writer is already {self._state}")
        view = memoryview(chunk).cast("B")
        part_size = self._sink.options.part_size
        pos = 0
        while pos < len(view):
            if len(self._buffer) >= part_size:
                self._upload_part()
            room = part_size - len(self._buffer)
            self._buffer += view[pos : pos + room]
            pos += min(room, len(view) - pos)
        self._size += len(view)

    def _upload_part(self) -> None:
        sink = self._sink
        client = sink.client()
        where = f"s3://{sink.bucket}/{self.key}"
        try:
            if self._upload_id is None:
                response = client.create_multipart_upload(
                    Bucket=sink.bucket,
                    Key=self.key,
                    Metadata=self._metadata,
                    ContentType=self._file.metadata.mimetype,
                    **sink.sse_args(),
                )
                self._upload_id = str(response["UploadId"])
            number = len(self._parts) + 1
            if number > MAX_PARTS:
                raise SinkError(
                    f"[{sink.context.name}]: {where} needs more than {MAX_PARTS} parts; "
                    "raise part_size"
                )
            response = client.upload_part(
                Bucket=sink.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=_ViewReader(memoryview(self._buffer)),
                ContentLength=len(self._buffer),
            )
        except Exception as exc:
            error = sink.fail(exc, f"upload a part of {where}", "s3:PutObject")
            self.abort()
            raise error from None
        part = {"PartNumber": number, "ETag": response["ETag"]}
        part.update({k: v for k, v in response.items() if k.startswith("Checksum")})
        self._parts.append(part)
        del self._buffer[:]

    def commit(self) -> None:
        """Make the object visible at once: PUT it, or complete its multipart upload."""
        if self._state != "open":
            raise SinkError(f"cannot commit {self.key}: the writer is already {self._state}")
        sink = self._sink
        client = sink.client()
        where = f"s3://{sink.bucket}/{self.key}"
        try:
            if self._upload_id is None:
                client.put_object(
                    Bucket=sink.bucket,
                    Key=self.key,
                    Body=_ViewReader(memoryview(self._buffer)),
                    ContentLength=len(self._buffer),
                    Metadata=self._metadata,
                    ContentType=self._file.metadata.mimetype,
                    **sink.sse_args(),
                )
            else:
                if self._buffer or not self._parts:
                    self._upload_part()
                client.complete_multipart_upload(
                    Bucket=sink.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
        except SinkError:
            raise
        except Exception as exc:
            error = sink.fail(exc, f"upload {where}", "s3:PutObject")
            self.abort()
            raise error from None
        self._state = "committed"
        self._buffer = bytearray()
        self._commit_sidecar(client, where)

    def _commit_sidecar(self, client: Any, where: str) -> None:
        """Write the sidecar when needed, else remove one an older version left."""
        sink = self._sink
        if not sink.options.metadata:
            return
        try:
            if self._sidecar:
                body = msgspec.json.format(msgspec.json.encode(self._document()), indent=2)
                client.put_object(
                    Bucket=sink.bucket,
                    Key=self.sidecar_key,
                    Body=body + b"\n",
                    ContentType="application/json",
                    **sink.sse_args(),
                )
            else:
                client.delete_object(Bucket=sink.bucket, Key=self.sidecar_key)
        except Exception as exc:
            # The object is in place; the metadata is not. Fail the file so the run retries it.
            raise sink.fail(
                exc, f"write the metadata sidecar of {where}", "s3:PutObject, s3:DeleteObject"
            ) from None

    def abort(self) -> None:
        """Forget the buffer and abort the multipart upload; a committed object stays."""
        if self._state == "open":
            self._state = "aborted"
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        sink = self._sink
        try:
            sink.client().abort_multipart_upload(
                Bucket=sink.bucket, Key=self.key, UploadId=upload_id
            )
        except Exception as exc:
            # Invisible anyway; the lifecycle rule removes what we could not.
            log.warning(
                "%s",
                sink.fail(exc, f"abort the upload of s3://{sink.bucket}/{self.key}"),
            )
