"""Per-sink delivery state: what each sink already holds, and what a run adds to it.

A user's state maps sink name -> file name -> the ``updatedDate`` (ms) last
delivered there. A file is downloaded once per run and delivered only to the
sinks that lack that version; each sink's progress is its own, so a sink added
to the config is backfilled by the next pull, and one removed is forgotten.

The token store keeps the state as a base plus a journal of changes
(``privateshare_checkpoint_save`` with only what changed since the last save);
:class:`DeliveryState` decides, per listed file, which sinks need it, and
collects the changes to save.

During a run each sink's state is a :class:`NameDates`: the loaded names are not kept,
only a 128-bit digest of each (keyed per process) and its date, ~40 bytes a file instead
of the ~160 of a ``dict`` of ``str`` to ``int``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import secrets
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

__all__ = ["LEGACY_SINKS", "DeliveryState", "NameDates", "name_key", "parse_since"]

#: Sink name of a checkpoint saved before state was per sink: "delivered to every sink".
LEGACY_SINKS = "*"


#: The digests' key: new in every process, so a server cannot choose names that collide.
_NAME_KEY = secrets.token_bytes(32)
_LOW = (1 << 64) - 1
_DATE_MIN, _DATE_MAX = -(1 << 63), (1 << 63) - 1


def name_key(name: str) -> int:
    """A file name's 128-bit BLAKE2b digest, keyed per process, as an int.

    Two names with the same key would count as one file. For n names the chance of any
    such pair is about n² / 2¹²⁹ (1e-25 at ten million names), and with the key unknown
    outside this process nobody can pick names that collide.
    """
    digest = hashlib.blake2b(
        name.encode("utf-8", "surrogatepass"), digest_size=16, key=_NAME_KEY
    ).digest()
    return int.from_bytes(digest, "little")


class NameDates:
    """A map of file name -> ``updatedDate`` (ms) that does not keep the names.

    An open-addressed table of each name's :func:`name_key` (two 64-bit halves) and its
    date, at most two thirds full: 24 bytes a slot, 36-54 a name, against ~160 for a
    ``dict`` of ``str`` to ``int`` (the name's string ~80, its int 32, the slot ~50).
    Names cannot be listed back, nor removed. A date past the signed 64-bit range (only a
    hostile server sends one) is kept exactly, beside the table. Lookups take a name or
    its :func:`name_key` (``*_key``: computed once per row and shared by every sink's map).
    """

    __slots__ = ("_big", "_len", "_table")

    def __init__(self, items: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        #: Dates past the signed 64-bit range, by (hi << 64 | lo); the table holds _DATE_MAX.
        self._big: dict[int, int] = {}
        self._len = 0
        #: (his, los, dates, size): replaced whole when it grows, so that a reader in another
        #: thread (the flow reads the delivery state while a worker records under its lock)
        #: never sees the arrays of one table with the size of another.
        self._table = _table(len(items) if isinstance(items, Mapping) else 0)
        for name, updated in pairs:
            self.set_key(name_key(name), updated)

    def get_key(self, key: int) -> int | None:
        """The date kept for the name whose :func:`name_key` is ``key``, or None."""
        if not self._len:
            return None
        hi, lo = (key >> 64) or 1, key & _LOW
        his, los, dates, size = self._table
        i = hi % size
        while True:
            h = his[i]
            if h == 0:
                return None
            if h == hi and los[i] == lo:
                updated = dates[i]
                if updated == _DATE_MAX and self._big:
                    return self._big.get((hi << 64) | lo, updated)
                return updated
            i += 1
            if i == size:
                i = 0

    def set_key(self, key: int, updated: int) -> None:
        """Keep ``updated`` for the name whose :func:`name_key` is ``key``.

        One writer at a time (the caller's lock); readers need none: a slot's date is
        written before its digest marks it taken.
        """
        hi, lo = (key >> 64) or 1, key & _LOW
        if _DATE_MIN <= updated < _DATE_MAX:
            stored = updated
        else:
            stored = _DATE_MAX
            self._big[(hi << 64) | lo] = updated
        his, los, dates, size = self._table
        i = _slot(his, los, size, hi, lo)
        if his[i]:
            dates[i] = stored
        else:
            if (self._len + 1) * 3 > size * 2:
                self._grow(self._len + 1)
                his, los, dates, size = self._table
                i = _slot(his, los, size, hi, lo)
            los[i], dates[i] = lo, stored
            his[i] = hi
            self._len += 1
        if stored != _DATE_MAX and self._big:
            self._big.pop((hi << 64) | lo, None)

    def reserve(self, total: int) -> None:
        """Make room for ``total`` names in all at once (fewer rehashes as it fills)."""
        if total * 3 > self._table[3] * 2:
            self._grow(total)

    def _grow(self, count: int) -> None:
        his, los, dates, _ = self._table
        table = _table(max(count, self._len * 3 // 2 + 8))  # at least half as large again
        new_his, new_los, new_dates, size = table
        for i, hi in enumerate(his):
            if hi:
                j = hi % size
                while new_his[j]:
                    j += 1
                    if j == size:
                        j = 0
                new_los[j], new_dates[j] = los[i], dates[i]
                new_his[j] = hi
        self._table = table

    def get(self, name: str) -> int | None:
        return self.get_key(name_key(name))

    def __setitem__(self, name: str, updated: int) -> None:
        self.set_key(name_key(name), updated)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return self._len

    def _entries(self) -> Iterator[tuple[int, int, int]]:
        his, los, dates, _ = self._table
        for i, hi in enumerate(his):
            if hi:
                updated = dates[i]
                if updated == _DATE_MAX:
                    updated = self._big.get((hi << 64) | los[i], updated)
                yield hi, los[i], updated

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameDates):
            return NotImplemented
        return len(self) == len(other) and sorted(self._entries()) == sorted(other._entries())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NameDates({self._len} names)"


def _table(count: int) -> tuple[array[int], array[int], array[int], int]:
    """Empty arrays for ``count`` names, at most two thirds full."""
    size = max(8, count * 3 // 2 + 1)
    return array("Q", [0]) * size, array("Q", [0]) * size, array("q", [0]) * size, size


def _slot(his: array[int], los: array[int], size: int, hi: int, lo: int) -> int:
    """Where ``(hi, lo)`` is in the table, or the empty slot where it goes."""
    i = hi % size
    while True:
        h = his[i]
        if h == 0 or (h == hi and los[i] == lo):
            return i
        i += 1
        if i == size:
            i = 0


class DeliveryState:
    """One user's delivery state during a run, reconciled with the sinks configured now.

    On load: a ``"*"`` record (from before per-sink state) counts as delivered to every
    sink configured now (the migration); sinks no longer configured are forgotten;
    configured sinks with no state are :attr:`new` and get every file (a backfill).
    :attr:`replace` says the reconciled state must be saved whole once; only then are
    the names kept (in plain ``dict`` s) until that save. Each sink's state is a
    :class:`NameDates` in :attr:`done`.
    """

    def __init__(
        self,
        saved: Mapping[str, Mapping[str, int]],
        sinks: list[str],
        *,
        full: bool = False,
        since_ms: int | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.full = full
        self.since_ms = since_ms
        kept = {sink: names for sink, names in saved.items() if sink != LEGACY_SINKS}
        legacy = saved.get(LEGACY_SINKS)
        #: Sinks that took over a checkpoint saved before per-sink state.
        self.migrated: list[str] = []
        if legacy is not None:
            self.migrated = [sink for sink in self.sinks if sink not in kept]
        #: Sinks in the saved state that the config no longer has (their state is dropped).
        self.forgotten = sorted(sink for sink in kept if sink not in self.sinks)
        #: Configured sinks with no state: new, or renamed (a rename is a new sink).
        self.new = [
            sink
            for sink in self.sinks
            if sink not in kept and sink not in self.migrated and (saved or legacy is not None)
        ]
        sources: dict[str, Mapping[str, int]] = {
            sink: kept.get(sink, legacy if sink in self.migrated and legacy else {})
            for sink in self.sinks
        }
        #: sink -> what it holds: name -> the latest updatedDate delivered there.
        self.done: dict[str, NameDates] = {
            sink: NameDates(names) for sink, names in sources.items()
        }
        #: The whole reconciled state with its names, while it must be saved whole.
        self._whole: dict[str, dict[str, int]] | None = None
        if legacy is not None or self.forgotten:
            self._whole = {sink: dict(names) for sink, names in sources.items()}
            _share_names(self._whole)
        #: sink -> name -> date delivered since the last save.
        self.pending: dict[str, dict[str, int]] = {}

    @classmethod
    def from_pieces(
        cls,
        pieces: Iterable[tuple[str, Mapping[str, int]]],
        sinks: list[str],
        *,
        whole: Callable[[], Mapping[str, Mapping[str, int]]],
        full: bool = False,
        since_ms: int | None = None,
    ) -> DeliveryState:
        """The state from the token store's pieces (``privateshare_checkpoint_pieces``),
        never holding more of its names than one piece: each goes into the sinks' digests.

        A ``"*"`` piece or one of a sink no longer configured means the state is saved
        whole, names and all, once: the pieces are then dropped and ``whole()`` loads it
        (rare: a migration, or a change of the configured sinks).
        """
        done = {sink: NameDates() for sink in sinks}
        seen: set[str] = set()
        saved_whole = False
        iterator = iter(pieces)
        try:
            for sink, names in iterator:
                into = done.get(sink)
                if into is None:  # LEGACY_SINKS, or forgotten: to be saved whole
                    saved_whole = True
                    break
                seen.add(sink)
                for name, updated in names.items():
                    into.set_key(name_key(name), updated)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        if saved_whole:
            del done
            return cls(whole(), sinks, full=full, since_ms=since_ms)
        state = cls({}, sinks, full=full, since_ms=since_ms)
        state.done = done
        if seen:
            state.new = [sink for sink in state.sinks if sink not in seen]
        return state

    @property
    def replace(self) -> bool:
        """True while the reconciled state differs from the saved one: saved whole next."""
        return self._whole is not None

    def needs(self, name: str, updated: int) -> list[str]:
        """The sinks that lack this version of the file (all of them with ``full``).

        An ``updatedDate`` of 0 or less tells no versions apart: every sink needs it.
        """
        if self.full or updated <= 0:
            return self.sinks
        return self.needs_key(name_key(name), updated)

    def needs_key(self, key: int, updated: int) -> list[str]:
        """:meth:`needs` for a name given by its :func:`name_key`."""
        if self.full or updated <= 0:
            return self.sinks
        done = self.done
        return [
            sink
            for sink in self.sinks
            if (seen := done[sink].get_key(key)) is None or seen < updated
        ]

    def reserve(self, total: int) -> None:
        """Make room in every sink's state for ``total`` names in all."""
        for names in self.done.values():
            names.reserve(total)

    def too_old(self, updated: int) -> bool:
        """Left out by ``--since``: updated before that date (undated files too)."""
        return self.since_ms is not None and updated < self.since_ms

    def record(self, name: str, updated: int, sinks: list[str]) -> bool:
        """``name`` at ``updated`` reached ``sinks``; True if that changed the state."""
        changed = False
        key = name_key(name)
        for sink in sinks:
            names = self.done.get(sink)
            if names is None:
                continue
            seen = names.get_key(key)
            if seen is None or seen < updated:
                names.set_key(key, updated)
                self.pending.setdefault(sink, {})[name] = updated
                if self._whole is not None:
                    self._whole[sink][name] = updated
                changed = True
        return changed

    def take_changes(self) -> tuple[dict[str, dict[str, int]], bool]:
        """What to save now (the changes, or the whole state once) and whether it replaces."""
        whole, self._whole = self._whole, None
        if whole is not None:
            self.pending = {}
            return whole, True
        changes, self.pending = self.pending, {}
        return changes, False

    def unsaved(self, changes: dict[str, dict[str, int]], replace: bool) -> None:
        """What :meth:`take_changes` gave was not saved: a whole state is saved whole next.

        Changes alone are dropped (their files are delivered again by the next run).
        """
        if replace and self._whole is None:
            self._whole = changes
            for sink, names in self.pending.items():
                changes.setdefault(sink, {}).update(names)
            self.pending = {}

    def messages(self) -> list[str]:
        """What changed about the sinks since the last run, in an operator's words."""
        notes: list[str] = []
        if self.migrated:
            notes.append(
                "the checkpoint saved before delivery state was kept per sink now counts as "
                f"delivered to {', '.join(self.migrated)}"
            )
        if self.new:
            notes.append(
                f"sink(s) {', '.join(self.new)} have no delivery state (added to the config, or "
                "renamed: a renamed sink is a new one): they are backfilled with every file "
                "of the library; each file is downloaded once and delivered only to the sinks "
                "that lack it"
            )
        if self.forgotten:
            notes.append(
                f"sink(s) {', '.join(self.forgotten)} are no longer configured: their delivery "
                "state is forgotten (configured again, they are backfilled)"
            )
        return notes


def _share_names(done: dict[str, dict[str, int]]) -> None:
    """Make the sinks' maps share one string per name and one int per equal date.

    Decoded, each sink's map holds its own copy of every name (~90 bytes) and date
    (~32 bytes); with several sinks holding the same files, the copies of the first
    sink's keys and values are kept and the others dropped.
    """
    if sum(1 for names in done.values() if names) < 2:
        return
    first = max(done.values(), key=len)
    canonical = {name: name for name in first}
    for sink, names in done.items():
        if names is first:
            continue
        shared: dict[str, int] = {}
        for name, updated in names.items():
            seen = first.get(name)
            shared[canonical.get(name, name)] = seen if seen == updated else updated
        done[sink] = shared


def parse_since(value: str) -> int:
    """``--since``: an ISO date or date-time (UTC unless it says), or ms since the epoch."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {value!r} is not a date: give an ISO date (2024-05-01), a date and "
            "time (2024-05-01T12:00:00Z), or milliseconds since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return int(when.timestamp() * 1000)
