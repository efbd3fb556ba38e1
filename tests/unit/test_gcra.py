"""GCRA arithmetic of `RateLimiter`, against an in-memory bucket store with DynamoDB's conditions.

The conditional writes themselves are exercised on moto in tests/integration/test_governance_limits.py;
here many limits and long request streams run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from aigateway.errors import RateLimited
from aigateway.governance.config import RateLimitRule
from aigateway.governance.limits import US, RateLimiter, Subject
from aigateway.store.dynamo import ConditionFailed, Dynamo, Item
from aigateway.store.repos import RateLimitBuckets

T0 = 1_790_000_000 * US
SUBJECT = Subject(tenant_id="t", key_id="k", user_id="u", ip="10.0.0.1", feature="generate")


class MemoryBuckets:
    """`RateLimitBuckets` in memory: the same update expressions and conditions, ALL_OLD on failure."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def take_from_idle(self, bucket: str, *, now_us: int, interval_us: int, expires_at: int) -> Item:
        item = self.items.get(bucket)
        if item is not None and not item["tat_us"] <= now_us:  # attribute_not_exists(tat_us) OR tat_us <= :now
            raise ConditionFailed("idle", dict(item))
        self.items[bucket] = {"tat_us": now_us + interval_us, "expires_at": expires_at}
        return dict(self.items[bucket])

    def take_from_busy(self, bucket: str, *, now_us: int, interval_us: int, max_tat_us: int, expires_at: int) -> Item:
        item = self.items.get(bucket)
        if item is None or not now_us < item["tat_us"] <= max_tat_us:  # tat_us > :now AND tat_us <= :max
            raise ConditionFailed("busy", dict(item) if item else None)
        item.update(tat_us=item["tat_us"] + interval_us, expires_at=expires_at)
        return dict(item)

    def give_back(self, bucket: str, *, interval_us: int) -> None:
        if bucket in self.items:
            self.items[bucket]["tat_us"] -= interval_us


class Sequential:
    def parallel(self, *calls: Callable[[], Any]) -> list[Any]:
        return [call() for call in calls]


def limiter() -> RateLimiter:
    return RateLimiter(cast(RateLimitBuckets, MemoryBuckets()), cast(Dynamo, Sequential()))


def admitted(lim: RateLimiter, rule: RateLimitRule, now_us: int) -> bool:
    try:
        lim.acquire(SUBJECT, [rule], now_us=now_us)
    except RateLimited:
        return False
    return True


# (limit, period): even divisions, and limits whose emission interval is not a whole µs — where
# rounding the interval down let a burst exceed the limit (1,500 per second admitted 1,501).
LIMITS = [(5, 10), (12, 3600), (120, 60), (7, 60), (1500, 1), (3000, 1), (4001, 3), (9_999, 3)]


@pytest.mark.parametrize(("limit", "period_s"), LIMITS)
def test_a_burst_admits_exactly_the_limit(limit: int, period_s: int) -> None:
    # Given a fresh bucket
    rule = RateLimitRule(scope="key", limit=limit, period_s=period_s)
    lim = limiter()
    # When limit + 5 requests arrive at the same instant
    results = [admitted(lim, rule, T0) for _ in range(limit + 5)]
    # Then exactly `limit` are admitted: the first `limit` of them
    over = sum(results) - limit
    assert over == 0, f"{limit}/{period_s}s admitted {sum(results)} in a burst"
    assert results == [True] * limit + [False] * 5


@pytest.mark.parametrize(("limit", "period_s"), [(5, 10), (7, 60), (1500, 1), (3000, 1)])
def test_a_steady_stream_gets_no_more_than_the_limit_per_period(limit: int, period_s: int) -> None:
    # Given requests arriving far faster than the limit, for three periods
    rule = RateLimitRule(scope="key", limit=limit, period_s=period_s)
    lim = limiter()
    period = period_s * US
    step = max(1, period // (limit * 4))
    ok = sum(admitted(lim, rule, t) for t in range(T0, T0 + 3 * period, step))
    # Then they get the initial burst plus the refill, and not one more (nearly all of it: the
    # interval is rounded up to a whole µs, which costs at most limit / 1e6 per µs of period)
    assert 4 * limit - 1 - limit // 100 <= ok <= 4 * limit


def test_refusal_says_exactly_when_the_next_request_fits() -> None:
    # Given a limit of 1,500 per second, drained by a burst
    rule = RateLimitRule(scope="key", limit=1500, period_s=1)
    lim = limiter()
    while admitted(lim, rule, T0):
        pass
    takers = lim.takers(SUBJECT, [rule], now_us=T0)
    decision = takers[0]()
    # Then the refusal's retry-after is the wait until one more is admitted, to the µs
    assert not decision.admitted
    wait = round(decision.retry_after_s * US)
    assert not admitted(lim, rule, T0 + wait - 1)
    assert admitted(lim, rule, T0 + wait) and not admitted(lim, rule, T0 + wait)
