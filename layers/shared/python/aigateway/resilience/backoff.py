"""Exponential backoff with full jitter, bounded by the caller's deadline.

Full jitter (a uniform draw from [0, min(cap, base·2ⁿ)]) spreads retries from many clients
instead of synchronising them (AWS Architecture Blog, "Exponential Backoff and Jitter").
A provider's Retry-After is a floor: the gateway never comes back sooner than it was told.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from aigateway.api import DEADLINE_RESERVE_S, Deadline

# Below this, an attempt cannot produce an answer (connection set-up plus a short completion).
MIN_ATTEMPT_S = 1.0


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.2
    cap_s: float = 2.0
    # A Retry-After longer than this is not waited for in-process: the next hop is tried instead.
    max_wait_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, retry: int, *, retry_after_s: float | None = None) -> float:
        """How long to wait before retry number `retry` (0 = the first retry)."""
        jitter = self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**retry))
        return max(jitter, retry_after_s or 0.0)

    def fits(self, delay_s: float, deadline: Deadline) -> bool:
        """Whether waiting `delay_s` still leaves time for a useful attempt before the deadline."""
        return delay_s <= self.max_wait_s and deadline.remaining_s() - DEADLINE_RESERVE_S - delay_s >= MIN_ATTEMPT_S


def attempt_timeout(deadline: Deadline, ceiling_s: float, *, hops_left: int) -> float:
    """One attempt's timeout: never past the deadline; while other hops remain, at most 60 % of
    what is left, so a hanging model cannot use up the time its fallback needs."""
    available = deadline.remaining_s() - DEADLINE_RESERVE_S
    share = available if hops_left <= 0 else available * 0.6
    return max(0.05, min(ceiling_s, share))
