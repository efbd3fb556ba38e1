"""Rate limits (GCRA on conditional writes): exact admission counts, under concurrency and over time.

Figures printed: admitted and refused per burst; admissions over the limit must be 0.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aigateway import deps
from aigateway.errors import RateLimited
from aigateway.governance.config import RateLimitRule
from aigateway.governance.limits import US, Decision, RateLimiter, Subject
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack
from tests.integration.governance_support import LOOSE_LIMITS, burst, configure, post, skill

REQUESTS = 200
T0 = 1_790_000_000 * US  # a fixed "now" (epoch µs) for the limiter-level tests


def with_override(rule: RateLimitRule) -> tuple[RateLimitRule, ...]:
    """The loose limits, with `rule` replacing the one of its scope."""
    return (*(r for r in LOOSE_LIMITS if r.scope != rule.scope), rule)


def limiter() -> RateLimiter:
    """A limiter of its own, as a separate Lambda execution environment would have."""
    r = deps.repos()
    return RateLimiter(r.buckets, deps.dynamo())


def take(lim: RateLimiter, subject: Subject, rules: list[RateLimitRule], now_us: int) -> list[Decision]:
    """The raw decisions of one request, without concluding (nothing is given back)."""
    return [call() for call in lim.takers(subject, rules, now_us=now_us)]


def admitted(lim: RateLimiter, subject: Subject, rules: list[RateLimitRule], now_us: int) -> bool:
    try:
        lim.acquire(subject, rules, now_us=now_us)
    except RateLimited:
        return False
    return True


SUBJECT = Subject(tenant_id="demo", key_id="key-1", user_id="u1", ip="10.0.0.1", feature="generate")


def test_parallel_requests_admit_exactly_the_key_limit(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given a per-key limit of R per hour (no refill during the test) and loose limits elsewhere
    r = 12
    configure("demo", rate_limits=with_override(RateLimitRule(scope="key", limit=r, period_s=3600)))
    # When 200 distinct requests arrive at once
    replies = burst(LocalApiGateway(stack), [(demo.api_key, skill(i)) for i in range(REQUESTS)])
    # Then exactly R are served, and every other one is a 429 that names the limit and when to retry
    ok = [x for x in replies if x.status == 200]
    refused = [x for x in replies if x.status != 200]
    over = max(0, len(ok) - r)
    print(f"key limit {r}/h: {len(ok)} admitted, {len(refused)} refused, admissions over the limit {over}")
    assert over == 0 and len(ok) == r
    interval_s = 3600 / r
    for reply in refused:
        assert reply.status == 429, reply.body
        assert reply.body["error"]["code"] == "rate_limited" and reply.body["error"]["limit"] == "key:*"
        # one emission interval, give or take how far apart the requests read the clock
        assert 1 <= int(reply.headers["retry-after"]) <= math.ceil(interval_s) + 1
        assert reply.headers["x-ratelimit-limit"] == str(r) and reply.headers["x-ratelimit-remaining"] == "0"
        assert reply.headers["x-ratelimit-policy"] == f'{r};w=3600;name="key:*"'
    # … and the served ones counted the limit down (a request whose clock was read a moment
    # before the first one's may see one fewer left than the exact count)
    remaining = sorted(int(x.headers["x-ratelimit-remaining"]) for x in ok)
    assert remaining[0] == 0 and remaining[-1] == r - 1
    assert all(abs(left - i) <= 1 for i, left in enumerate(remaining)), remaining
    assert all(x.headers["x-ratelimit-limit"] == str(r) for x in ok)
    assert simulator.stats()["requests"] == r


def test_two_limiters_sharing_the_table_admit_exactly_the_limit_between_them(stack: LocalStack) -> None:
    # Given two execution environments, each with its own limiter (and its own guesses), one table
    r = 25
    rules = [RateLimitRule(scope="key", limit=r, period_s=3600)]
    a, b = limiter(), limiter()

    # When 200 requests at the same instant are spread over both, in parallel
    def one(i: int) -> bool:
        return admitted(a if i % 2 else b, SUBJECT, rules, T0)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    # Then they admit exactly R between them
    over = max(0, sum(results) - r)
    print(f"two limiters, limit {r}: {sum(results)} admitted, {results.count(False)} refused, over the limit {over}")
    assert over == 0 and sum(results) == r
    # … and a full period later each admits again, with no stale guess letting more through
    later = T0 + 3600 * US
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda i: admitted(a if i % 3 else b, SUBJECT, rules, later), range(60)))
    print(f"one period later: {sum(results)} admitted")
    assert sum(results) == r


def test_gcra_burst_then_one_per_emission_interval(stack: LocalStack) -> None:
    # Given a limit of 5 per 10 s: a burst of 5, then one every emission interval of 2 s
    rule = RateLimitRule(scope="key", limit=5, period_s=10)
    interval = 2 * US
    lim = limiter()
    # When 5 arrive at once, then a sixth
    burst_decisions = [take(lim, SUBJECT, [rule], T0)[0] for _ in range(5)]
    sixth = take(lim, SUBJECT, [rule], T0)[0]
    # Then the 5 are admitted counting down, the sixth refused until one interval has passed
    assert [d.admitted for d in burst_decisions] == [True] * 5
    assert [d.remaining for d in burst_decisions] == [4, 3, 2, 1, 0]
    assert not sixth.admitted and sixth.retry_after_s == pytest.approx(2.0) and sixth.reset_s == pytest.approx(10.0)
    with pytest.raises(RateLimited) as refused:
        lim.acquire(SUBJECT, [rule], now_us=T0)
    assert refused.value.headers["Retry-After"] == "2" and refused.value.details == {"limit": "key:*"}
    # When time moves on by just under one interval: still refused, 1 µs to go
    almost = take(lim, SUBJECT, [rule], T0 + interval - 1)[0]
    assert not almost.admitted and almost.retry_after_s == pytest.approx(1e-6)
    # When exactly one interval has passed: exactly one more is admitted
    after = [take(lim, SUBJECT, [rule], T0 + interval)[0].admitted for _ in range(3)]
    assert after == [True, False, False]
    # When the bucket has drained for a whole period: a full burst again
    drained = [take(lim, SUBJECT, [rule], T0 + interval + 10 * US)[0].admitted for _ in range(6)]
    assert drained == [True] * 5 + [False]


def test_a_refusal_gives_back_what_other_limits_took(stack: LocalStack) -> None:
    # Given a tight per-IP limit (2/h) and a looser per-key limit (3/h)
    rules = [
        RateLimitRule(scope="ip", limit=2, period_s=3600),
        RateLimitRule(scope="key", limit=3, period_s=3600),
    ]
    lim = limiter()
    # When one IP sends 6 requests: the IP limit admits 2 and refuses 4
    from_first_ip = [admitted(lim, SUBJECT, rules, T0) for _ in range(6)]
    assert from_first_ip == [True, True, False, False, False, False]
    # Then the 4 refused took nothing from the key: from another IP the key admits its third
    other_ip = Subject(**{**SUBJECT.__dict__, "ip": "10.0.0.2"})
    assert admitted(lim, other_ip, rules, T0)
    with pytest.raises(RateLimited) as refused:
        lim.acquire(other_ip, rules, now_us=T0)
    assert refused.value.details == {"limit": "key:*"}
    buckets = deps.repos().buckets
    key_bucket = buckets.db.get(deps.get_settings().state_table, buckets.key("demo#key:key-1#*"))
    assert key_bucket is not None
    used = (int(key_bucket["tat_us"]) - T0) // (3600 * US // 3)
    consumed_by_refused = used - 3
    print(f"ip-refused requests: 4; key tokens they consumed: {consumed_by_refused}")
    assert consumed_by_refused == 0


def test_ip_refusals_over_http_leave_the_key_limit_untouched(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given 3 requests per IP and 5 per key, per hour
    configure(
        "demo",
        rate_limits=(
            *(r for r in LOOSE_LIMITS if r.scope not in ("ip", "key")),
            RateLimitRule(scope="ip", limit=3, period_s=3600),
            RateLimitRule(scope="key", limit=5, period_s=3600),
        ),
    )
    gateway = LocalApiGateway(stack)
    # When one client IP sends 6 requests, then another IP with the same key sends 4
    first = [post(gateway, demo.api_key, skill(i), source_ip="198.51.100.7") for i in range(6)]
    second = [post(gateway, demo.api_key, skill(100 + i), source_ip="203.0.113.9") for i in range(4)]
    # Then the first IP is stopped by its own limit, and the key still had its 2 remaining for the second
    assert [x.status for x in first] == [200] * 3 + [429] * 3
    assert {x.body["error"]["limit"] for x in first[3:]} == {"ip:*"}
    assert [x.status for x in second] == [200] * 2 + [429] * 2
    assert {x.body["error"]["limit"] for x in second[2:]} == {"key:*"}
    assert second[2].headers["x-ratelimit-limit"] == "5"
