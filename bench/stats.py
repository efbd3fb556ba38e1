"""Small, dependency-free summary statistics (milliseconds in, milliseconds out)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def summarize(samples_ms: Sequence[float]) -> Summary:
    return Summary(
        n=len(samples_ms),
        mean_ms=statistics.fmean(samples_ms) if samples_ms else math.nan,
        p50_ms=percentile(samples_ms, 50),
        p99_ms=percentile(samples_ms, 99),
        min_ms=min(samples_ms) if samples_ms else math.nan,
        max_ms=max(samples_ms) if samples_ms else math.nan,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def interleave(ops: list[tuple[str, Callable[[int], float]]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """One call of each op per round, the order rotated every round; warm-up rounds not kept."""
    samples: dict[str, list[float]] = {name: [] for name, _ in ops}
    for r in range(warmup + rounds):
        shift = r % len(ops)
        for name, op in ops[shift:] + ops[:shift]:
            elapsed = op(r)
            if r >= warmup:
                samples[name].append(elapsed)
    return samples
