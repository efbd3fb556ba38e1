"""Rate limits: GCRA (the generic cell rate algorithm) on DynamoDB conditional writes.

A limit of `limit` per `period_s` has an emission interval T = period / limit (whole µs, rounded
up) and admits a burst of `limit`. Each bucket stores one number, its theoretical arrival time
(TAT). With W = limit × T (the period, when the limit divides it), a request at `now` is admitted
when max(TAT, now) + T <= now + W, and then TAT becomes max(TAT, now) + T.

DynamoDB has no max(), so the update is one of two conditional writes:
- idle bucket (TAT <= now or absent): `SET tat = now + T` if `tat <= now`;
- busy bucket: `SET tat = tat + T` if `now < tat <= now + W - T`.
Whichever is tried first (guessed from this environment's last sight of the bucket), a failed
condition returns the item as it was (ALL_OLD), which says exactly which branch applies or that
the request must be refused — so it is never read-then-write, and concurrent Lambdas cannot admit
more than the limit between them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from aigateway.errors import RateLimited
from aigateway.governance.config import RateLimitRule
from aigateway.store.dynamo import ConditionFailed, Dynamo
from aigateway.store.repos import RateLimitBuckets

MAX_ATTEMPTS = 4  # guess, correct, and two races; then the request is refused rather than looping
US = 1_000_000


@dataclass(frozen=True)
class Subject:
    """Who is asking: the values each scope is keyed by."""

    tenant_id: str
    key_id: str
    user_id: str
    ip: str | None
    feature: str

    def who(self, rule: RateLimitRule) -> str | None:
        return {"key": self.key_id, "user": self.user_id, "ip": self.ip, "tenant": self.tenant_id}[rule.scope]


@dataclass(frozen=True)
class Decision:
    rule: RateLimitRule
    bucket: str
    admitted: bool
    remaining: int
    reset_s: float  # until the bucket is full again
    retry_after_s: float  # until one more request would be admitted (0 when admitted)
    interval_us: int


@dataclass(frozen=True)
class LimitStatus:
    """The tightest admitted limit, for `X-RateLimit-*` headers."""

    decisions: tuple[Decision, ...]

    def headers(self) -> dict[str, str]:
        if not self.decisions:
            return {}
        tightest = min(self.decisions, key=lambda d: (d.remaining, -d.reset_s))
        return _headers(tightest)


def _headers(d: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(d.rule.limit),
        "X-RateLimit-Remaining": str(d.remaining),
        "X-RateLimit-Reset": str(math.ceil(d.reset_s)),
        "X-RateLimit-Policy": f'{d.rule.limit};w={d.rule.period_s};name="{d.rule.name}"',
    }


class RateLimiter:
    def __init__(self, buckets: RateLimitBuckets, db: Dynamo):
        self.buckets = buckets
        self.db = db
        # Last TAT seen per bucket in this environment: picks the likely branch first.
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def takers(self, subject: Subject, rules: list[RateLimitRule], *, now_us: int) -> list[Callable[[], Decision]]:
        """One call per applicable bucket, each taking one token; run them in parallel, then `conclude`."""
        calls: list[Callable[[], Decision]] = []
        for rule in rules:
            who = subject.who(rule)
            if who is None:
                continue  # e.g. no client IP on this path
            bucket = f"{subject.tenant_id}#{rule.scope}:{who}#{rule.feature or '*'}"
            calls.append(partial(self._take, rule, bucket, now_us))
        return calls

    def conclude(self, decisions: list[Decision]) -> LimitStatus:
        """All admitted: the status for headers. Any refused: give the others back, raise RateLimited."""
        refused = [d for d in decisions if not d.admitted]
        if not refused:
            return LimitStatus(tuple(decisions))
        admitted = [d for d in decisions if d.admitted]
        if admitted:
            self.db.parallel(*[partial(self.buckets.give_back, d.bucket, interval_us=d.interval_us) for d in admitted])
        worst = max(refused, key=lambda d: d.retry_after_s)
        retry_after = max(1, math.ceil(worst.retry_after_s))
        raise RateLimited(
            f"rate limit {worst.rule.name} exceeded: {worst.rule.limit} requests per {worst.rule.period_s} s",
            limit=worst.rule.name,
            headers={"Retry-After": str(retry_after), **_headers(worst)},
        )

    def acquire(self, subject: Subject, rules: list[RateLimitRule], *, now_us: int) -> LimitStatus:
        return self.conclude(self.db.parallel(*self.takers(subject, rules, now_us=now_us)))

    def _take(self, rule: RateLimitRule, bucket: str, now: int) -> Decision:
        # The interval is rounded *up* to whole µs and the burst window derived from it: with the
        # interval rounded down, period // interval exceeded the limit whenever limit² > period in
        # µs (1,500 per second admitted 1,501 at once, and 1,501.5 per second sustained).
        interval = -(-rule.period_s * US // rule.limit)
        window = interval * rule.limit  # >= the period; equal to it when the limit divides it
        max_tat = now + window - interval  # the latest TAT that still admits one more
        expires_at = (now + window) // US + 60
        with self._lock:
            seen = self._seen.get(bucket)
        idle_first = seen is None or seen <= now
        for _ in range(MAX_ATTEMPTS):
            try:
                if idle_first:
                    item = self.buckets.take_from_idle(bucket, now_us=now, interval_us=interval, expires_at=expires_at)
                else:
                    item = self.buckets.take_from_busy(
                        bucket, now_us=now, interval_us=interval, max_tat_us=max_tat, expires_at=expires_at
                    )
            except ConditionFailed as failed:
                tat = int(failed.item["tat_us"]) if failed.item and "tat_us" in failed.item else None
                if tat is None or tat <= now:
                    idle_first = True
                elif tat <= max_tat:
                    idle_first = False
                else:  # full: refused, and nothing was written
                    self._remember(bucket, tat)
                    return Decision(rule, bucket, False, 0, (tat - now) / US, (tat - max_tat) / US, interval)
                continue
            tat = int(item["tat_us"])
            self._remember(bucket, tat)
            remaining = max(0, (now + window - tat) // interval)
            return Decision(rule, bucket, True, int(remaining), (tat - now) / US, 0.0, interval)
        # Lost the race MAX_ATTEMPTS times: the bucket is contended right at its edge; refuse.
        return Decision(rule, bucket, False, 0, rule.period_s, interval / US, interval)

    def _remember(self, bucket: str, tat: int) -> None:
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[bucket] = tat
