"""Tests of a sealed store's checkpoint base (plugins/tokenseal.py, format 3), run by both
built-in stores (test_tokens_file.py, test_tokens_sql.py) over their own storage: a store
given ``store`` and ``store_factory`` fixtures subclasses :class:`SegmentedBaseTests`."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
from typing import Any

import pytest

from privateshare.errors import TokenStoreError
from privateshare.plugins import tokenseal
from privateshare.plugins.tokenseal import BASE_MAGIC, CheckpointRecord, JournalEntry

USER = "alice"


def _base(store: Any, user: str = USER) -> bytes:
    keys = store._open()
    blob, _ = store._read(keys.digest(user), "checkpoint", f"user {user!r}")
    assert blob is not None
    return bytes(blob)


def _put_base(store: Any, blob: bytes, user: str = USER) -> None:
    store._write(store._open().digest(user), "checkpoint", f"user {user!r}", blob)


def base_pieces(blob: bytes) -> tuple[bytes, list[bytes]]:
    """A format-3 base's clear head and its framed pieces, in order."""
    at = len(BASE_MAGIC) + 8 + 16
    head, pieces = blob[:at], []
    while at < len(blob):
        (length,) = struct.unpack_from(">I", blob, at)
        pieces.append(blob[at : at + 4 + length])
        at += 4 + length
    return head, pieces


class SegmentedBaseTests:
    def base_bytes_held(self, store: Any) -> float:
        """Bytes a compaction may hold besides a segment and the journal, per byte of the base
        (the sql store gathers the new base's sealed bytes and holds the old one's)."""
        return 0.0

    @pytest.fixture
    def small(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(tokenseal, "SEGMENT_NAMES", 50)
        monkeypatch.setattr(tokenseal, "COMPACT_AT", 4_000)

    @pytest.mark.usefixtures("small")
    def test_a_large_state_round_trips_through_saves_and_compactions(
        self, store: Any, store_factory: Any
    ) -> None:
        rng = random.Random(7)
        state = {sink: {f"{sink}/{i:05d}.json": i for i in range(300)} for sink in "ab"}
        state["none"] = {}
        store.privateshare_checkpoint_save(user_id=USER, changes=state, replace=True)
        head, pieces = base_pieces(_base(store))
        assert head.startswith(BASE_MAGIC) and len(pieces) == 1 + 6 + 6 + 1 + 1
        generations = set()
        for round_ in range(80):
            changes: dict[str, dict[str, int]] = {}
            for sink in rng.sample(["a", "b", "c"], 2):
                for _ in range(rng.randrange(1, 30)):
                    name = f"{sink}/{rng.randrange(400):05d}.json"
                    changes.setdefault(sink, {})[name] = 10_000 + round_
            store.privateshare_checkpoint_save(user_id=USER, changes=changes, replace=False)
            for sink, names in changes.items():
                state.setdefault(sink, {}).update(names)
            generations.add(base_pieces(_base(store))[0])
        assert len(generations) > 2  # compacted more than once
        assert store_factory().privateshare_checkpoint_load(user_id=USER) == state

    @pytest.mark.usefixtures("small")
    @pytest.mark.parametrize(
        "damage",
        ["dropped", "reordered", "duplicated", "of another user", "cut short", "flipped"],
    )
    def test_a_damaged_base_is_a_clear_error(
        self, store: Any, store_factory: Any, damage: str
    ) -> None:
        state = {"files": {f"{i:04d}.json": i for i in range(200)}}
        for user in (USER, "bob"):
            store.privateshare_checkpoint_save(user_id=user, changes=state, replace=True)
        head, pieces = base_pieces(_base(store))
        _, bobs = base_pieces(_base(store, "bob"))
        flipped = bytearray(pieces[2])
        flipped[len(flipped) // 2] ^= 1
        body = {
            "dropped": pieces[:2] + pieces[3:],
            "reordered": [pieces[0], pieces[2], pieces[1], *pieces[3:]],
            "duplicated": [*pieces[:3], pieces[2], *pieces[3:]],
            "of another user": [*pieces[:2], bobs[2], *pieces[3:]],
            "cut short": pieces[:-1],
            "flipped": [*pieces[:2], bytes(flipped), *pieces[3:]],
        }[damage]
        _put_base(store, head + b"".join(body))
        for operation in ("load", "compact"):
            fresh = store_factory()
            with pytest.raises(TokenStoreError) as info:
                if operation == "load":
                    fresh.privateshare_checkpoint_load(user_id=USER)
                else:
                    fresh.privateshare_checkpoint_save(
                        user_id=USER, changes={"files": {"x": 1}}, replace=False
                    )
                    keys = fresh._open()
                    fresh._checkpoint_compact(keys, USER, keys.digest(USER))
            message = str(info.value)
            assert f"user {USER!r}" in message and fresh.record_fix in message, message
            if damage == "cut short":
                assert "not a privateshare record (truncated" in message
            else:
                assert "cannot be decrypted (piece " in message
                assert "dropped, reordered or mixed with another's" in message
        assert store_factory().privateshare_checkpoint_load(user_id="bob") == state

    def test_a_base_of_format_2_loads_and_is_rewritten_in_format_3(
        self, store: Any, store_factory: Any
    ) -> None:
        keys = store._open()
        digest = keys.digest(USER)
        contract = store.context.contract_id
        old = CheckpointRecord(USER, {}, time.time(), {"files": {"a": 1, "b": 2}}, "00aa" * 4)
        _put_base(store, keys.seal(contract, "checkpoint", digest, old))
        entry = keys.seal(
            contract,
            "journal",
            f"{digest}.{old.journal}",
            JournalEntry({"files": {"b": 3}, "db": {"a": 4}}),
        )
        store._journal_append(digest, old.journal, f"user {USER!r}", entry)
        expected = {"files": {"a": 1, "b": 3}, "db": {"a": 4}}
        assert store_factory().privateshare_checkpoint_load(user_id=USER) == expected
        assert _base(store).startswith(b"PSTOK\x02")
        fresh = store_factory()
        fresh._checkpoint_compact(fresh._open(), USER, digest)
        assert _base(store).startswith(BASE_MAGIC)
        assert store_factory().privateshare_checkpoint_load(user_id=USER) == expected
        # A base from before journals (no generation) is rewritten by the first save.
        legacy = CheckpointRecord(USER, {"old.json": 5}, time.time())
        _put_base(store, keys.seal(contract, "checkpoint", digest, legacy))
        fresh = store_factory()
        assert fresh.privateshare_checkpoint_load(user_id=USER) == {"*": {"old.json": 5}}
        fresh.privateshare_checkpoint_save(user_id=USER, changes={"*": {"n": 6}}, replace=False)
        assert _base(store).startswith(BASE_MAGIC)
        assert store_factory().privateshare_checkpoint_load(user_id=USER) == {
            "*": {"old.json": 5, "n": 6}
        }

    def test_a_compaction_holds_a_segment_and_the_journal_not_the_state(
        self, store: Any, store_factory: Any
    ) -> None:
        names = 40_000
        state = {"files": {f"library/{i:07d}.json": 1_700_000_000_000 + i for i in range(names)}}
        store.privateshare_checkpoint_save(user_id=USER, changes=state, replace=True)
        del state
        for i in range(20):
            store.privateshare_checkpoint_save(
                user_id=USER, changes={"files": {f"library/{i:07d}.json": 1}}, replace=False
            )
        base = len(_base(store))
        fresh = store_factory()
        keys = fresh._open()
        tracemalloc.start()
        try:
            fresh._checkpoint_compact(keys, USER, keys.digest(USER))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The state decoded would be ~150 bytes a name (6 MB); a segment is 4,096 names.
        allowed = 2_000_000 + self.base_bytes_held(fresh) * base
        assert peak < allowed, (peak, allowed)
        loaded = store_factory().privateshare_checkpoint_load(user_id=USER)
        assert len(loaded["files"]) == names and loaded["files"]["library/0000007.json"] == 1
