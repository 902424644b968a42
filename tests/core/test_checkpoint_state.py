"""The delivery state kept without its names (NameDates) answers exactly as the dicts did.

``DictState`` below is the dict-based DeliveryState this replaced, kept as the reference:
random saved states (per-sink, legacy ``"*"``, forgotten and new sinks, several sinks sharing
names) and random runs of ``needs`` / ``record`` / ``take_changes`` / ``unsaved`` must give
the same answers, the same changes to save and the same whole state when it replaces.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest

from privateshare.checkpoint import LEGACY_SINKS, DeliveryState, NameDates, name_key
from privateshare.flow import _Listing, _Rows
from privateshare.models import FileEntry

pytestmark = pytest.mark.unit

BIG = 1 << 70  # past the signed 64-bit range: a date a hostile server may send


class DictState:
    """The reference: DeliveryState as it was with a dict of str -> int per sink."""

    def __init__(self, saved: dict[str, dict[str, int]], sinks: list[str], full: bool) -> None:
        self.sinks = list(sinks)
        self.full = full
        done = {sink: dict(names) for sink, names in saved.items() if sink != LEGACY_SINKS}
        legacy = saved.get(LEGACY_SINKS)
        self.migrated: list[str] = []
        if legacy is not None:
            for sink in self.sinks:
                if sink not in done:
                    done[sink] = dict(legacy)
                    self.migrated.append(sink)
        self.forgotten = sorted(sink for sink in done if sink not in self.sinks)
        for sink in self.forgotten:
            del done[sink]
        self.new = [
            sink for sink in self.sinks if sink not in done and (saved or legacy is not None)
        ]
        for sink in self.sinks:
            done.setdefault(sink, {})
        self.done = done
        self.replace = legacy is not None or bool(self.forgotten)
        self.pending: dict[str, dict[str, int]] = {}

    def needs(self, name: str, updated: int) -> list[str]:
        if self.full or updated <= 0:
            return self.sinks
        return [
            sink
            for sink in self.sinks
            if (seen := self.done[sink].get(name)) is None or seen < updated
        ]

    def record(self, name: str, updated: int, sinks: list[str]) -> bool:
        changed = False
        for sink in sinks:
            names = self.done.get(sink)
            if names is None:
                continue
            seen = names.get(name)
            if seen is None or seen < updated:
                names[name] = updated
                self.pending.setdefault(sink, {})[name] = updated
                changed = True
        return changed

    def take_changes(self) -> tuple[dict[str, dict[str, int]], bool]:
        if self.replace:
            self.replace = False
            self.pending = {}
            return {sink: dict(names) for sink, names in self.done.items()}, True
        changes, self.pending = self.pending, {}
        return changes, False


NAMES = ["a.json", "b", "ü/ß", "x" * 300, "", "\ud800lone", "18_1_3_0_0_D_2025_0000001.json"]


def random_saved(rng: random.Random, names: list[str]) -> dict[str, dict[str, int]]:
    saved: dict[str, dict[str, int]] = {}
    for sink in rng.sample(["s1", "s2", "s3", "old", LEGACY_SINKS], rng.randint(0, 4)):
        saved[sink] = {
            name: rng.choice([rng.randint(-3, 50), BIG, -BIG])
            for name in rng.sample(names, rng.randint(0, len(names)))
        }
    return saved


def as_pieces(rng: random.Random, saved: dict[str, dict[str, int]]):
    """``saved`` as a token store may hand it over: each sink in pieces, sinks interleaved,
    some names first with an older date (the later piece wins)."""
    queues: dict[str, list[dict[str, int]]] = {}
    for sink, names in saved.items():
        items = list(names.items())
        queue = queues[sink] = [] if items else [{}]
        while items:
            size = rng.randint(1, 40)
            cut, items = dict(items[:size]), items[size:]
            if rng.random() < 0.3:
                queue.append({name: -9 for name in cut})
            queue.append(cut)
    while queues:
        sink = rng.choice(sorted(queues))
        yield sink, queues[sink].pop(0)
        if not queues[sink]:
            del queues[sink]


@pytest.mark.parametrize("from_pieces", [False, True], ids=["mapping", "pieces"])
@pytest.mark.parametrize("seed", range(40))
def test_the_compact_state_answers_as_the_dicts_did(seed: int, from_pieces: bool) -> None:
    rng = random.Random(seed)
    names = NAMES + [f"file-{i}.json" for i in range(rng.randint(0, 120))]
    saved = random_saved(rng, names)
    sinks = rng.sample(["s1", "s2", "s3"], rng.randint(1, 3))
    full = rng.random() < 0.1
    other = random.Random(seed + 1000)
    if from_pieces and other.random() < 0.8:  # mostly states the pieces build alone
        saved = {sink: names for sink, names in saved.items() if sink in sinks}
    ref = DictState(saved, sinks, full)
    if from_pieces:
        pieces = as_pieces(other, saved)
        state = DeliveryState.from_pieces(pieces, sinks, full=full, whole=lambda: saved)
    else:
        state = DeliveryState(saved, sinks, full=full)
    assert (state.migrated, state.forgotten, state.new) == (ref.migrated, ref.forgotten, ref.new)
    assert state.replace == ref.replace
    for _ in range(400):
        name = rng.choice(names)
        updated = rng.choice([rng.randint(-3, 60), BIG, BIG + 1, -BIG])
        assert state.needs(name, updated) == ref.needs(name, updated), (name, updated)
        roll = rng.random()
        if roll < 0.5:
            reached = rng.sample([*sinks, "gone"], rng.randint(0, len(sinks)))
            assert state.record(name, updated, reached) == ref.record(name, updated, reached)
        elif roll < 0.6:
            changes, replace = state.take_changes()
            expected, ref_replace = ref.take_changes()
            assert (changes, replace) == (expected, ref_replace)
            if rng.random() < 0.3:  # the save failed: what replaced is saved whole next
                state.unsaved(changes, replace)
                ref.replace = ref.replace or ref_replace
            assert state.replace == ref.replace
    assert state.take_changes() == ref.take_changes()
    for sink in sinks:
        assert len(state.done[sink]) == len(ref.done[sink])


def test_pieces_are_held_one_at_a_time() -> None:
    """50k names in pieces of 4,096: building the state holds the digests and one piece."""
    count, size = 50_000, 4_096

    def pieces():
        for start in range(0, count, size):
            yield (
                "a",
                {
                    f"18_1_3_0_0_D_202501010000_{i:07d}.json": 1_735_689_600_000 + i
                    for i in range(start, min(start + size, count))
                },
            )

    def whole() -> dict[str, dict[str, int]]:
        raise AssertionError("no piece needs the whole state")

    tracemalloc.start()
    try:
        state = DeliveryState.from_pieces(pieces(), ["a", "b"], whole=whole)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / count < 100, f"{peak / count:.0f} bytes per name at the peak"
    assert state.new == ["b"] and not state.replace and not state.migrated
    assert state.needs("18_1_3_0_0_D_202501010000_0000007.json", 1_735_689_600_007) == ["b"]


@pytest.mark.parametrize("first", [LEGACY_SINKS, "gone"])
def test_a_piece_to_save_whole_loads_the_whole_state_and_closes_the_pieces(first: str) -> None:
    closed: list[bool] = []

    def pieces():
        try:
            yield "s", {"a": 1}
            yield first, {"b": 2}
            yield "s", {"c": 3}
        finally:
            closed.append(True)

    saved = {"s": {"a": 1, "c": 3}, first: {"b": 2}}
    calls: list[bool] = []

    def whole() -> dict[str, dict[str, int]]:
        assert closed == [True]  # the pieces are let go before the whole state is loaded
        calls.append(True)
        return saved

    state = DeliveryState.from_pieces(pieces(), ["s", "t"], whole=whole)
    ref = DeliveryState(saved, ["s", "t"])
    assert calls == [True] and state.replace
    assert (state.migrated, state.forgotten, state.new) == (ref.migrated, ref.forgotten, ref.new)
    assert state.take_changes() == ref.take_changes()


def test_a_whole_state_not_saved_keeps_what_was_recorded_since() -> None:
    state = DeliveryState({LEGACY_SINKS: {"a": 1}}, ["s"])
    changes, replace = state.take_changes()
    assert replace and changes == {"s": {"a": 1}}
    state.unsaved(changes, replace)
    assert state.record("b", 2, ["s"])
    assert state.take_changes() == ({"s": {"a": 1, "b": 2}}, True)
    assert state.take_changes() == ({}, False)
    state.unsaved({"s": {"c": 3}}, False)  # changes alone are dropped, not saved whole
    assert not state.replace


def test_name_dates_grow_and_keep_every_name() -> None:
    table = NameDates()
    for i in range(5000):
        table[f"n{i}"] = i - 2500
        if i == 1000:
            table.reserve(4000)  # room made in the middle, and asked again for less
            table.reserve(10)
    assert len(table) == 5000
    assert all(table.get(f"n{i}") == i - 2500 for i in range(5000))
    assert table.get("n5000") is None and "n5000" not in table and "n7" in table
    table["n7"] = BIG
    assert table.get("n7") == BIG and len(table) == 5000
    table["n7"] = 7
    assert table.get("n7") == 7 and len(table) == 5000
    assert NameDates({"a": 1, "b": 2}) == NameDates([("b", 2), ("a", 1)])
    assert NameDates({"a": 1}) != NameDates({"a": 2})


def test_names_whose_slots_collide_are_told_apart_by_the_whole_digest() -> None:
    """Names that land on the same slot of a small table each keep their own date."""
    table = NameDates()  # 8 slots until a sixth name arrives
    first = (name_key("seed") >> 64) % 8
    same = [n for n in (f"c{i}" for i in range(20000)) if (name_key(n) >> 64) % 8 == first]
    for i, name in enumerate(same[:5]):  # five names on one slot
        table[name] = i
    assert [table.get(name) for name in same[:5]] == list(range(5))
    assert table.get(same[5]) is None
    for i, name in enumerate(same[5:40]):  # and through the table's growth
        table[name] = 100 + i
    assert [table.get(name) for name in same[:40]] == [*range(5), *range(100, 135)]


def test_the_state_keeps_no_names() -> None:
    """50k names in a sink: the loaded state costs under 80 bytes a name, not ~160."""
    count = 50_000
    saved = {
        "a": {
            f"18_1_3_0_0_D_202501010000_{i:07d}.json": 1_735_689_600_000 + i for i in range(count)
        }
    }
    tracemalloc.start()
    try:
        state = DeliveryState(saved, ["a"])
        del saved
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / count < 80, f"{held / count:.0f} bytes per name"
    assert state.needs("18_1_3_0_0_D_202501010000_0000007.json", 1_735_689_600_007) == []
    assert state.needs("18_1_3_0_0_D_202501010000_0000007.json", 1_735_689_600_008) == ["a"]


def test_the_listing_keeps_the_rows_a_dict_kept() -> None:
    """_Rows into the compact listing: the same rows, dates and skips as the dict did."""
    rng = random.Random(7)
    for _ in range(50):
        state = DeliveryState({"s": {n: rng.randint(0, 5) for n in NAMES[:4]}}, ["s"])
        taken = NameDates({NAMES[1]: 3})
        rows = _Rows(state, taken)
        reference: dict[str, int] = {}
        skipped = 0
        for _ in range(rng.randint(1, 5)):
            batch = [
                FileEntry(rng.choice(NAMES), rng.choice([rng.randint(-1, 9), BIG]))
                for _ in range(rng.randint(0, 12))
            ]
            rows(batch)
            for row in batch:  # the dict-based _Rows, inline
                name, updated = row.name, row.updated_date
                seen = reference.get(name)
                if updated > 0 and name not in (NAMES[1],) and not state.needs(name, updated):
                    skipped += 1
                    if seen is not None and seen < updated:
                        del reference[name]
                        skipped += 1
                    continue
                if seen is None:
                    reference[name] = updated
                    continue
                skipped += 1
                if updated > seen:
                    reference[name] = updated
        rows.listing.done()  # the list is read: its index goes, its rows stay
        assert [(n, d) for n, _, d in rows.listing.items()] == list(reference.items())
        assert all(k == name_key(n) for n, k, _ in rows.listing.items())
        assert len(rows.listing) == len(reference) and rows.skipped == skipped


def test_the_listing_costs_less_than_a_dict() -> None:
    count = 50_000
    tracemalloc.start()
    try:
        listing = _Listing()
        for i in range(count):
            name = f"18_1_3_0_0_D_202501010000_{i:07d}.json"
            listing.add(name, name_key(name), 1_735_689_600_000 + i)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / count < 120, f"{held / count:.0f} bytes per listed file"
    assert len(listing) == count


def test_a_reader_in_another_thread_always_finds_what_was_written() -> None:
    """The flow reads the delivery state while a worker records (under the run's lock, which
    readers do not take): through every growth of the table, a name written stays found."""
    import sys
    import threading

    table = NameDates()
    keys = [name_key(f"n{i}") for i in range(40_000)]
    written = 0
    problems: list[object] = []
    finished = threading.Event()

    def read() -> None:
        try:
            while not finished.is_set():
                for key in keys[:written:89]:
                    if table.get_key(key) is None:
                        problems.append(key)
                        return
        except Exception as exc:  # an IndexError from a half-swapped table, say
            problems.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index, key in enumerate(keys):
            table.set_key(key, index)
            written = index + 1
    finally:
        finished.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not problems
    assert all(table.get_key(key) == index for index, key in enumerate(keys))
