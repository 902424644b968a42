"""A session's file list and files (protocol.md#files), shared by both profiles.

The profiles differ only in the credentials: v1.7 signs with the user's access token
(or the application alone for a one-off read), v1.5 sends the session key alone
(``claims=None``: unsigned).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec

from ..errors import MalformedAnswer, ValidationError
from ..jws import b64url_decode
from ..models import FileEntry, FileList, FileMetadata, LibraryStatus
from .protocol import FileDownload
from .wire import Wire, file_path, redacting, segment

Claims = Mapping[str, Any] | None
#: Takes the rows of a file list, a batch at a time.
Rows = Callable[[list[FileEntry]], None]
V = TypeVar("V", bound=Rows)


class Files:
    """Reads the file list, a file (streamed) and a file's metadata over ``wire``."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def list(self, session_key: str, claims: Claims) -> FileList:
        """``GET permission-access/query/{sessionKey}``, retried on transient faults."""
        rows: list[FileEntry] = []
        status, listed = self.scan(session_key, claims, lambda: rows.extend)
        return FileList(status, rows if listed else None)

    def scan(
        self, session_key: str, claims: Claims, visitor: Callable[[], V]
    ) -> tuple[LibraryStatus, bool]:
        """The file list read as it arrives, its rows handed to a fresh ``visitor()`` per
        attempt in batches (retried on transient faults, as :meth:`list`).

        Returns the status and whether the answer had a list. Only the last attempt's
        visitor saw a whole list: one that fails midway is dropped with its attempt.
        """
        return self.wire.retry.call(
            lambda: self._scan_once(session_key, claims, visitor()), "the file list"
        )

    def _scan_once(
        self, session_key: str, claims: Claims, visit: Rows
    ) -> tuple[LibraryStatus, bool]:
        response = self.wire.send(
            "GET",
            f"permission-access/query/{segment(session_key)}",
            claims,
            stream=True,
            secret=session_key,
        )
        try:
            with redacting(session_key):
                return decode_file_list_in_batches(
                    self.wire.answer_chunks(response, "the file list"), visit
                )
        finally:
            response.close()

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


def decode_file_list(body: bytes | bytearray) -> FileList:
    """A file-list answer: a body that does not parse is malformed (maybe cut short) and
    worth another poll; a parsed one of the wrong shape is not."""
    try:
        return msgspec.json.decode(body, type=FileList)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"the file list does not have the expected shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedAnswer(f"the file list is not valid JSON (cut short?): {exc}") from None


_ROWS = msgspec.json.Decoder(list[FileEntry])
_LIST = msgspec.json.Decoder(FileList)
#: A bracket or the start of a string, outside strings.
_TOKEN = re.compile(rb'[{}\[\]"]')
#: The rest of a string after its opening quote, up to and including its closing one.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SPACE = re.compile(rb"[ \t\r\n]*")
#: Where one row of the list may end and the next begin.
_BETWEEN_ROWS = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")


class FileListDecoder:
    """Decodes a file-list answer piece by piece, handing its rows on in batches.

    A list of millions of rows is one JSON document; decoded whole it holds the
    answer and every row at once (~400 bytes a row). Here the document up to the
    ``fileList`` array (the status, if sent first) is scanned for that key, then the
    array's rows are decoded a batch at a time as pieces arrive: a batch ends at a
    ``},{`` at which msgspec decodes the rows before it as a complete list. That can only
    succeed at the true end of a row (a cut inside a string or a nested object does not
    parse), so no row is split or misread. The rest (the last rows and anything after
    the list) is decoded with the scanned start as one small :class:`FileList`, which
    checks the document as a whole. Errors are those of :func:`decode_file_list`.
    """

    #: Bytes of rows gathered before a batch is decoded (a re-pull of a large library holds
    #: one batch, its rows and one piece of the answer beside the loaded checkpoint).
    BATCH = 256 << 10
    #: How far back from the end of the data a batch's last row is looked for.
    WINDOW = 64 << 10

    def __init__(self, visit: Rows) -> None:
        self._visit = visit
        self._buf = bytearray()
        #: The document up to the list's ``[`` once found (the buffer then starts with it).
        self._head: bytes | None = None
        self._pos = 0  # how far the head has been scanned, and at which depth
        self._depth = 0
        self._next_try = self.BATCH

    def feed(self, data: bytes | memoryview) -> None:
        self._buf += data
        if self._head is None:
            self._find_list()
        if self._head is not None and len(self._buf) >= self._next_try:
            self._decode_rows()

    def finish(self) -> tuple[LibraryStatus, bool]:
        """The status, and whether the answer had a list; the last rows are handed on."""
        document = self._buf if self._head is None else self._head + self._buf
        self._buf = bytearray()
        files = decode_file_list(document)
        if files.file_list:
            self._visit(files.file_list)
        return files.status, files.file_list is not None

    def _find_list(self) -> None:
        buf, pos, depth = self._buf, self._pos, self._depth
        while (token := _TOKEN.search(buf, pos)) is not None:
            start = token.start()
            if buf[start] != 0x22:  # a bracket
                depth += 1 if buf[start] in b"{[" else -1
                pos = token.end()
                continue
            rest = _STRING_REST.match(buf, start + 1)
            if rest is None:
                break  # the string goes on in the next piece
            colon = _skip_space(buf, rest.end())
            value = _skip_space(buf, colon + 1) if colon < len(buf) else colon
            if value >= len(buf):
                break  # what follows the string is in the next piece
            if (
                depth == 1
                and buf[colon] == 0x3A  # a key of the outer object
                and buf[value] == 0x5B  # whose value is an array
                and _is_file_list_key(bytes(buf[start : rest.end()]))
            ):
                self._head = bytes(buf[:value])
                del buf[:value]
                return
            pos = rest.end()
        self._pos, self._depth = pos, depth

    def _decode_rows(self) -> None:
        """Hand on the complete rows gathered so far, keeping the last (maybe partial) one."""
        buf = self._buf
        for cut in reversed(self._last_cuts()):
            after = buf[cut + 1]
            buf[cut + 1] = 0x5D  # "]" after the "}" closes the rows before it
            try:
                with memoryview(buf) as view, view[: cut + 2] as rows_view:
                    rows = _ROWS.decode(rows_view)
            except msgspec.ValidationError as exc:
                raise ValidationError(
                    f"the file list does not have the expected shape: {exc}"
                ) from None
            except msgspec.DecodeError:
                buf[cut + 1] = after  # inside a string or a row: try an earlier cut
                continue
            buf[cut + 1] = after
            del buf[: buf.index(b",", cut)]  # the comma left in front becomes the "["
            buf[0] = 0x5B
            self._next_try = self.BATCH
            self._visit(rows)
            return
        # No cut parsed (a malformed answer, or rows that hold "},{" in strings or arrays):
        # wait for twice the data before trying again, so such an answer costs linear time.
        self._next_try = 2 * len(buf)

    def _last_cuts(self) -> list[int]:
        """The last three places within ``WINDOW`` of the end where a row may end.

        Looked for in a short tail first, widened to the window when it holds fewer: short
        rows put thousands of candidates in the window, and only the last three are tried.
        The same three either way: a candidate (``},{`` with spaces) holds no other ``}``.
        """
        buf = self._buf
        low = max(0, len(buf) - self.WINDOW)
        tail = 4 << 10
        while True:
            start = max(low, len(buf) - tail)
            cuts = [match.start() for match in _BETWEEN_ROWS.finditer(buf, start)][-3:]
            if len(cuts) == 3 or start == low:
                return cuts
            tail *= 4


def _skip_space(buf: bytearray, pos: int) -> int:
    space = _SPACE.match(buf, pos)
    return pos if space is None else space.end()


def _is_file_list_key(raw: bytes) -> bool:
    if raw == b'"fileList"':
        return True
    return b"\\" in raw and msgspec.json.decode(raw) == "fileList"


def decode_file_list_in_batches(
    pieces: Iterable[bytes | memoryview], visit: Rows
) -> tuple[LibraryStatus, bool]:
    """Decode a file-list answer arriving in ``pieces``; rows go to ``visit`` in batches."""
    decoder = FileListDecoder(visit)
    for piece in pieces:
        decoder.feed(piece)
    return decoder.finish()


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
