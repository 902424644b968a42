"""The file list read in batches: the same rows and errors as decoding it whole, at a memory
per listed file that does not grow back (issue 11, item 3).

The memory bound is counted by tracemalloc (bytes Python allocates), not by RSS or time, so
it does not depend on the machine or its load.
"""

from __future__ import annotations

import json
import random
import re
import tracemalloc
from typing import Any

import pytest

from privateshare.checkpoint import DeliveryState, NameDates
from privateshare.client.files import (
    FileListDecoder,
    decode_file_list,
    decode_file_list_in_batches,
)
from privateshare.errors import MalformedAnswer, ValidationError
from privateshare.flow import _Rows
from privateshare.models import FileEntry

pytestmark = pytest.mark.unit

UPDATED = 1_735_689_600_000
# Names that hold what a batch is cut at, quotes and escapes: a cut there must not parse.
AWKWARD = ['we},{"ird', "x}, { y", "ü/a", 'q\\"},{"name":"forged","updatedDate":1}']


def document(rng: random.Random, count: int) -> dict[str, Any]:
    rows = [
        {
            "name": f"{rng.choice(['', *AWKWARD])}{index}.json",
            "updatedDate": rng.randint(-5, 10**13),
            "schema": {"id": "p", "nested": [{"a": 1}, {"b": "},{"}]},
            "objectCount": 1,
        }
        for index in range(count)
    ]
    status = {"state": "running", "details": {"fileList": {"state": "running"}}}
    parts = [("status", status), ("fileList", rows)]
    if rng.random() < 0.5:
        parts.reverse()  # the status may come after the list
    return dict(parts)


def pieces(raw: bytes, rng: random.Random) -> list[bytes]:
    out, start = [], 0
    while start < len(raw):
        step = rng.randint(1, 90)
        out.append(raw[start : start + step])
        start += step
    return out


def outcome(call: Any) -> Any:
    try:
        return call()
    except (ValidationError, MalformedAnswer) as exc:
        return type(exc)


@pytest.mark.parametrize("seed", range(2))
def test_a_batch_tries_the_same_last_cuts_as_a_scan_of_the_whole_window(seed: int) -> None:
    # The places a batch may end are looked for in a short tail first (short rows put
    # thousands in the window): the last three must be those of the whole window.
    rng = random.Random(seed)
    between = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")
    for _ in range(40):
        doc = document(rng, rng.randint(0, 3000))
        for row in doc["fileList"][:: rng.randint(1, 50)]:  # long rows: fewer cuts in a tail
            row["name"] += "n" * rng.choice([0, 2000, 9000])
        raw = json.dumps(
            doc, indent=rng.choice([None, 1, 8]), separators=(",", rng.choice([":", ": "]))
        )
        buf = raw.encode()[: rng.randint(0, len(raw))]
        decoder = FileListDecoder(lambda rows: None)
        decoder._buf = bytearray(buf)
        window = max(0, len(buf) - FileListDecoder.WINDOW)
        expected = [m.start() for m in between.finditer(buf, window)][-3:]
        assert decoder._last_cuts() == expected


@pytest.mark.parametrize("seed", range(4))
def test_rows_decoded_in_batches_are_those_of_the_whole_answer(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny batches, so every answer here is cut into many.
    monkeypatch.setattr(FileListDecoder, "BATCH", 40)
    monkeypatch.setattr(FileListDecoder, "WINDOW", 300)
    rng = random.Random(seed)
    batched = 0
    for _ in range(150):
        doc = document(rng, rng.randint(0, 30))
        if rng.random() < 0.1:
            del doc["fileList"]
        raw = json.dumps(
            doc,
            separators=rng.choice([(",", ":"), (", ", ": ")]),
            indent=rng.choice([None, 2]),
            ensure_ascii=rng.random() < 0.5,
        ).encode()
        if rng.random() < 0.2:
            raw = raw[: rng.randint(0, len(raw))]  # cut short
        elif rng.random() < 0.1:
            raw = raw.replace(b'"updatedDate"', b'"updatedDate":"x","_"', 1)  # wrong shape
        whole = outcome(lambda: decode_file_list(raw))  # noqa: B023
        batches: list[list[FileEntry]] = []
        streamed = outcome(lambda: decode_file_list_in_batches(pieces(raw, rng), batches.append))  # noqa: B023
        if isinstance(whole, type):
            assert streamed is whole, raw
            continue
        status, listed = streamed
        assert status == whole.status
        assert listed == (whole.file_list is not None)
        assert [row for batch in batches for row in batch] == (whole.file_list or [])
        batched += len(batches) > 1
    assert batched > 20  # the cases above were really cut into batches


def test_a_key_named_fileList_inside_the_status_is_not_the_list() -> None:
    raw = (
        b'{"status":{"state":"completed","details":{"x":{"state":"completed",'
        b'"fileList":[{"name":"no","updatedDate":1}]}}},'
        b'"fileList":[{"name":"yes","updatedDate":2}]}'
    )
    rows: list[FileEntry] = []
    decode_file_list_in_batches([raw[i : i + 7] for i in range(0, len(raw), 7)], rows.extend)
    assert rows == [FileEntry("yes", 2)]


def list_body(count: int) -> bytes:
    rows = b",".join(
        b'{"name":"18_1_3_0_0_D_202501010000_%07d.json","updatedDate":%d,'
        b'"serviceGroup":"social","serviceName":"facebook","objectType":"post",'
        b'"objectCount":12,"schema":{"id":"post","standard":"digime","version":"1.0.0"}}'
        % (index, UPDATED)
        for index in range(count)
    )
    return b'{"status":{"state":"completed"},"fileList":[' + rows + b"]}"


def test_a_checkpointed_list_costs_its_checkpoint_not_the_list() -> None:
    """50k listed files every sink holds: reading and planning the list adds a few bytes
    per file over the loaded checkpoint (it was ~380 decoded whole: the answer and its rows).
    """
    count = 50_000
    body = list_body(count)
    names = {f"18_1_3_0_0_D_202501010000_{index:07d}.json": UPDATED for index in range(count)}
    state = DeliveryState({"a": names, "b": dict(names)}, ["a", "b"])
    del names
    chunks = [body[start : start + (1 << 20)] for start in range(0, len(body), 1 << 20)]
    del body
    tracemalloc.start()
    try:
        rows = _Rows(state, NameDates())
        decode_file_list_in_batches(iter(chunks), rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows.skipped == count and not rows.listing
    assert peak / count < 100, f"{peak / count:.0f} bytes per listed file"


def test_sinks_share_their_names_and_dates() -> None:
    """Two sinks holding the same 50k files cost about one map's strings, not two."""
    count = 50_000
    tracemalloc.start()
    try:
        one = {
            f"18_1_3_0_0_D_202501010000_{index:07d}.json": UPDATED + index for index in range(count)
        }
        two = {name: updated for name, updated in json.loads(json.dumps(one)).items()}
        before, _ = tracemalloc.get_traced_memory()
        state = DeliveryState({"a": one, "b": two}, ["a", "b"])
        del one, two
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert state.done["a"] == state.done["b"]
    assert (before - after) / count > 80, "the second sink's names and dates were kept"
    assert not state.needs("18_1_3_0_0_D_202501010000_0000007.json", UPDATED + 7)
