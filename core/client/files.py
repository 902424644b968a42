"""A session's file list and files (protocol.md#files), shared by both profiles.

The profiles differ only in the credentials: v1.7 signs with the user's access token
(or the application alone for a one-off read), v1.5 sends the session key alone
(``claims=None``: unsigned).
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import msgspec

from ..errors import MalformedAnswer, ValidationError
from ..jws import b64url_decode
from ..models import FileList, FileMetadata
from .protocol import FileDownload
from .wire import Wire, file_path, redacting, segment

Claims = Mapping[str, Any] | None


class Files:
    """Reads the file list, a file (streamed) and a file's metadata over ``wire``."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def list(self, session_key: str, claims: Claims) -> FileList:
        """``GET permission-access/query/{sessionKey}``, retried on transient faults."""
        return self.wire.retry.call(lambda: self._list_once(session_key, claims), "the file list")

    def _list_once(self, session_key: str, claims: Claims) -> FileList:
        response = self.wire.send(
            "GET", f"permission-access/query/{segment(session_key)}", claims, secret=session_key
        )
        try:
            with redacting(session_key):
                body = self.wire.answer(response, "the file list")
        finally:
            response.close()
        return decode_file_list(body)

    def open(self, session_key: str, name: str, claims: Claims) -> FileDownload:
        """``GET .../{fileName}``: headers checked, body left to stream.

        Not retried here: the flow retries a file's whole delivery, body included.
        """
        response = self.wire.send(
            "GET",
            file_path(session_key, name),
            claims,
            headers={"accept": "application/octet-stream"},
            stream=True,
            secret=session_key,
        )
        try:
            metadata = decode_x_metadata(response.headers.get("x-metadata"), name)
        except ValidationError:
            response.close()
            raise
        return FileDownload(name, metadata, response.headers.get("last-modified"), response)

    def metadata(self, session_key: str, name: str, claims: Claims) -> FileMetadata:
        """``HEAD .../{fileName}``: the metadata only, retried on transient faults."""

        def head() -> FileMetadata:
            response = self.wire.send(
                "HEAD", file_path(session_key, name), claims, secret=session_key
            )
            response.close()
            return decode_x_metadata(response.headers.get("x-metadata"), name)

        return self.wire.retry.call(head, f"the metadata of {name!r}")


def decode_file_list(body: bytes) -> FileList:
    """A file-list answer: a body that does not parse is malformed (maybe cut short) and
    worth another poll; a parsed one of the wrong shape is not."""
    try:
        return msgspec.json.decode(body, type=FileList)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"the file list does not have the expected shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedAnswer(f"the file list is not valid JSON (cut short?): {exc}") from None


def decode_x_metadata(header: str | None, name: str) -> FileMetadata:
    """The base64url JSON ``x-metadata`` header (protocol.md#file-format)."""
    if not header:
        raise MalformedAnswer(f"{name}: the x-metadata header is missing")
    try:
        data = msgspec.json.decode(b64url_decode(header.strip()))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise MalformedAnswer(f"{name}: the x-metadata header is not base64url JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
        raise MalformedAnswer(f"{name}: the x-metadata header has no metadata object")
    compression = data.get("compression")
    return FileMetadata(
        metadata=data.get("metadata", {}),
        compression=compression if isinstance(compression, str) else None,
    )
