"""Per-sink delivery state: what each sink already holds, and what a run adds to it.

A user's state maps sink name -> file name -> the ``updatedDate`` (ms) last
delivered there. A file is downloaded once per run and delivered only to the
sinks that lack that version; each sink's progress is its own, so a sink added
to the config is backfilled by the next pull, and one removed is forgotten.

The token store keeps the state as a base plus a journal of changes
(``privateshare_checkpoint_save`` with only what changed since the last save);
:class:`DeliveryState` decides, per listed file, which sinks need it, and
collects the changes to save.
"""

from __future__ import annotations

import datetime as _dt
import logging

log = logging.getLogger(__name__)

__all__ = ["LEGACY_SINKS", "DeliveryState", "parse_since"]

#: Sink name of a checkpoint saved before state was per sink: "delivered to every sink".
LEGACY_SINKS = "*"


class DeliveryState:
    """One user's delivery state during a run, reconciled with the sinks configured now.

    On load: a ``"*"`` record (from before per-sink state) counts as delivered to every
    sink configured now (the migration); sinks no longer configured are forgotten;
    configured sinks with no state are :attr:`new` and get every file (a backfill).
    :attr:`replace` says the reconciled state must be saved whole once.
    """

    def __init__(
        self,
        saved: dict[str, dict[str, int]],
        sinks: list[str],
        *,
        full: bool = False,
        since_ms: int | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.full = full
        self.since_ms = since_ms
        done = {sink: names for sink, names in saved.items() if sink != LEGACY_SINKS}
        legacy = saved.get(LEGACY_SINKS)
        #: Sinks that took over a checkpoint saved before per-sink state.
        self.migrated: list[str] = []
        if legacy is not None:
            for sink in self.sinks:
                if sink not in done:
                    done[sink] = dict(legacy)
                    self.migrated.append(sink)
        #: Sinks in the saved state that the config no longer has (their state is dropped).
        self.forgotten = sorted(sink for sink in done if sink not in self.sinks)
        for sink in self.forgotten:
            del done[sink]
        #: Configured sinks with no state: new, or renamed (a rename is a new sink).
        self.new = [
            sink for sink in self.sinks if sink not in done and (saved or legacy is not None)
        ]
        for sink in self.sinks:
            done.setdefault(sink, {})
        _share_names(done)
        self.done = done
        #: True when the reconciled state differs in shape from the saved one.
        self.replace = legacy is not None or bool(self.forgotten)
        #: sink -> name -> date delivered since the last save.
        self.pending: dict[str, dict[str, int]] = {}

    def needs(self, name: str, updated: int) -> list[str]:
        """The sinks that lack this version of the file (all of them with ``full``).

        An ``updatedDate`` of 0 or less tells no versions apart: every sink needs it.
        """
        if self.full or updated <= 0:
            return self.sinks
        return [
            sink
            for sink in self.sinks
            if (seen := self.done[sink].get(name)) is None or seen < updated
        ]

    def too_old(self, updated: int) -> bool:
        """Left out by ``--since``: updated before that date (undated files too)."""
        return self.since_ms is not None and updated < self.since_ms

    def record(self, name: str, updated: int, sinks: list[str]) -> bool:
        """``name`` at ``updated`` reached ``sinks``; True if that changed the state."""
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
        """What to save now (the changes, or the whole state once) and whether it replaces."""
        if self.replace:
            self.replace = False
            self.pending = {}
            return {sink: dict(names) for sink, names in self.done.items()}, True
        changes, self.pending = self.pending, {}
        return changes, False

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
