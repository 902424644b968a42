"""Your own transform: redact personal fields from service data before any sink sees them.

Enable it from the config, with this directory on ``PYTHONPATH``::

    [plugins]
    modules = ["redact_hooks"]

    $ PYTHONPATH=examples privateshare pull --config privateshare.toml --user alice

``privateshare_transform_file`` wraps each file's plaintext on its way to the sinks. Mapped
files (service data) are JSON arrays of objects, small enough to parse whole; raw files
(photos, PDFs, possibly GiBs) are passed through untouched, streamed. The fields to remove
come from ``$PRIVATESHARE_REDACT_FIELDS`` (comma-separated; a module has no options table),
matched at any depth. The file's ``objectCount`` stays true: objects are kept, fields go.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from privateshare import hookimpl
from privateshare.models import DataFile

DEFAULT_FIELDS = "personusername,location,owner"
#: A mapped file bigger than this is refused rather than parsed in memory.
MAX_MAPPED_BYTES = 64 << 20


def redacted_fields() -> frozenset[str]:
    raw = os.environ.get("PRIVATESHARE_REDACT_FIELDS", DEFAULT_FIELDS)
    return frozenset(field.strip() for field in raw.split(",") if field.strip())


def redact(value: Any, fields: frozenset[str]) -> Any:
    """``value`` with every key in ``fields`` removed, at any depth."""
    if isinstance(value, dict):
        return {k: redact(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


@hookimpl
def privateshare_transform_file(
    file: DataFile, chunks: Iterator[bytes | memoryview]
) -> Iterator[bytes] | None:
    if file.kind != "mapped":
        return None  # raw files stream through unchanged
    body = bytearray()
    for chunk in chunks:
        body += chunk  # copy now: chunks may be views into a reused buffer
        if len(body) > MAX_MAPPED_BYTES:
            raise ValueError(f"{file.name} is over {MAX_MAPPED_BYTES} bytes; not redacting it")
    objects = redact(json.loads(body), redacted_fields())
    return iter([json.dumps(objects, ensure_ascii=False).encode("utf-8")])
