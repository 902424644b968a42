"""Seeded, reproducible fault injection.

Each decision is drawn from an RNG seeded by (fault seed, endpoint kind,
resource, attempt number for that resource), so the same settings fail the
same files on the same attempts whatever the thread interleaving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .settings import SandboxSettings


@dataclass(frozen=True)
class Faults:
    """What to do wrong with one response."""

    error_status: int | None = None  # answer this 5xx instead
    reset: bool = False  # close the connection without answering
    truncate_at: float | None = None  # fraction of the body to send before closing
    corrupt_at: float | None = None  # fraction into the ciphertext where one byte flips
    bad_metadata: str | None = None  # "missing" or "malformed"
    latency: float = 0.0

    @property
    def any(self) -> bool:
        """Whether anything at all goes wrong (latency aside)."""
        return bool(
            self.error_status
            or self.reset
            or self.truncate_at is not None
            or self.corrupt_at is not None
            or self.bad_metadata
        )


NO_FAULTS = Faults()


class FaultPlan:
    """Decides the faults for each request from the settings' rates."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings

    def decide(self, kind: str, resource: str, attempt: int) -> Faults:
        """The faults for attempt ``attempt`` (0-based) at ``resource`` of ``kind``."""
        s = self.settings
        latency = s.latency
        if not s.has_faults or kind not in s.fault_endpoints:
            if s.latency_jitter:
                seed = f"{s.effective_fault_seed}:{kind}:{resource}:{attempt}:lat"
                rng = random.Random(seed)  # noqa: S311 - reproducible faults, not secrets
                latency += rng.uniform(0, s.latency_jitter)
            return Faults(latency=latency) if latency else NO_FAULTS
        rng = random.Random(f"{s.effective_fault_seed}:{kind}:{resource}:{attempt}")  # noqa: S311
        if s.latency_jitter:
            latency += rng.uniform(0, s.latency_jitter)
        # One draw per fault type, always in the same order, so changing one rate
        # does not reshuffle the others.
        draws = [rng.random() for _ in range(5)]
        extra = rng.random()
        if draws[0] < s.error_rate:
            return Faults(error_status=(500, 502, 503)[int(extra * 3) % 3], latency=latency)
        if draws[1] < s.reset_rate:
            return Faults(reset=True, latency=latency)
        truncate_at = 0.05 + 0.9 * extra if draws[2] < s.truncate_rate else None
        corrupt_at = extra if kind == "file" and draws[3] < s.corrupt_rate else None
        bad_metadata = None
        if kind == "file" and draws[4] < s.bad_metadata_rate:
            bad_metadata = "missing" if extra < 0.5 else "malformed"
        return Faults(
            truncate_at=truncate_at,
            corrupt_at=corrupt_at,
            bad_metadata=bad_metadata,
            latency=latency,
        )
