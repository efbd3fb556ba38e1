"""The circuit breaker is shared through the State table: what one execution environment learns,
every other one acts on. Two `CircuitBreaker` instances stand in for two Lambda environments."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from aigateway import deps
from aigateway.errors import CircuitOpen
from aigateway.resilience.breaker import BreakerSettings, CircuitBreaker
from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.governance_support import ledger_rows, skill

CIRCUIT = "simulated#gpt-4o-mini"
T0 = 1_795_000_000_000  # epoch ms; the breaker is driven with explicit times, no sleeping
SETTINGS = BreakerSettings(
    min_failures=3, failure_ratio=0.5, window_s=30, cooldown_s=20, probe_lease_s=10, cache_ttl_s=0
)


def environments(n: int = 2) -> list[CircuitBreaker]:
    return [CircuitBreaker(deps.repos().circuits, SETTINGS) for _ in range(n)]


def admit(breaker: CircuitBreaker, now_ms: int) -> str:
    breaker.refresh(force=True)
    try:
        admission, _ = breaker.admit(CIRCUIT, now_ms)
    except CircuitOpen:
        return "refused"
    return admission


def test_failures_counted_by_two_environments_open_the_circuit_for_both(stack: LocalStack) -> None:
    # Given two execution environments sharing the State table
    a, b = environments()
    # When they see failures alternately, one short of the threshold
    a.failed(CIRCUIT, "closed", None, T0)
    b.failed(CIRCUIT, "closed", None, T0 + 1_000)
    # Then the circuit is still closed for both
    assert admit(a, T0 + 2_000) == admit(b, T0 + 2_000) == "closed"
    # When the threshold-th failure arrives in the other environment
    a.failed(CIRCUIT, "closed", None, T0 + 3_000)
    # Then both refuse calls to the model until the cooldown ends
    states = [admit(x, T0 + 4_000) for x in (a, b)]
    print(f"after 3 failures across 2 environments: {states}")
    assert states == ["refused", "refused"]
    assert admit(b, T0 + 3_000 + 19_000) == "refused"


def test_a_flaky_model_stays_in_service_while_most_of_its_calls_succeed(stack: LocalStack) -> None:
    # Given two environments whose calls mostly succeed (successes are tallied, then flushed)
    a, b = environments()
    now = int(__import__("time").time() * 1000)
    for _ in range(8):
        a.succeeded(CIRCUIT, "closed", None, now)
    a.refresh(force=True)
    # When failures arrive — 4 of 12 calls, past the minimum of 3 but under half
    for i in range(4):
        b.failed(CIRCUIT, "closed", None, now + i)
    # Then the circuit stays closed; once failures are half the calls, it opens
    assert admit(a, now + 10) == "closed"
    for i in range(4):
        b.failed(CIRCUIT, "closed", None, now + 20 + i)
    print("8 successes + 4 failures: closed; + 4 more failures (8 of 16): open")
    assert admit(a, now + 30) == "refused"


def test_failures_spread_wider_than_the_window_do_not_open_it(stack: LocalStack) -> None:
    (a,) = environments(1)
    for i in range(6):  # one failure every 20 s: never 3 within 30 s
        a.failed(CIRCUIT, "closed", None, T0 + i * 20_000)
    assert admit(a, T0 + 121_000) == "closed"


def open_circuit(breaker: CircuitBreaker) -> int:
    for i in range(SETTINGS.min_failures):
        breaker.failed(CIRCUIT, "closed", None, T0 + i)
    return T0 + SETTINGS.min_failures + int(SETTINGS.cooldown_s * 1000)  # when it turns half-open


def test_half_open_lets_exactly_one_probe_through(stack: LocalStack) -> None:
    # Given an open circuit whose cooldown has just ended
    envs = environments(2)
    half_open = open_circuit(envs[0])
    # When 16 callers in two environments try the model at once
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda i: admit(envs[i % 2], half_open + 5), range(16)))
    # Then exactly one is let through as the probe; the others keep skipping the model
    print(f"half-open, 16 concurrent callers: {outcomes.count('probe')} probe, {outcomes.count('refused')} refused")
    assert outcomes.count("probe") == 1 and outcomes.count("refused") == 15


def probe(breaker: CircuitBreaker, now_ms: int) -> str:
    breaker.refresh(force=True)
    admission, probe_id = breaker.admit(CIRCUIT, now_ms)
    assert admission == "probe" and probe_id is not None
    return probe_id


def test_a_successful_probe_closes_the_circuit_everywhere(stack: LocalStack) -> None:
    a, b = environments()
    half_open = open_circuit(a)
    probe_id = probe(a, half_open)
    a.succeeded(CIRCUIT, "probe", probe_id, half_open + 100)
    assert admit(b, half_open + 200) == "closed"
    # and its failure count starts again from zero
    b.failed(CIRCUIT, "closed", None, half_open + 300)
    assert admit(a, half_open + 400) == "closed"


def test_a_failed_probe_reopens_the_circuit_for_another_cooldown(stack: LocalStack) -> None:
    a, b = environments()
    half_open = open_circuit(a)
    probe_id = probe(b, half_open)
    b.failed(CIRCUIT, "probe", probe_id, half_open + 100)
    assert admit(a, half_open + 200) == "refused"
    assert admit(a, half_open + 100 + int(SETTINGS.cooldown_s * 1000) - 1) == "refused"
    assert admit(a, half_open + 100 + int(SETTINGS.cooldown_s * 1000) + 1) == "probe"


def test_a_probe_that_never_reports_frees_the_claim_after_its_lease(stack: LocalStack) -> None:
    a, b = environments()
    half_open = open_circuit(a)
    probe(a, half_open)  # this environment dies mid-probe
    assert admit(b, half_open + 1_000) == "refused"
    assert admit(b, half_open + int(SETTINGS.probe_lease_s * 1000) + 1) == "probe"


def test_requests_skip_a_failing_model_once_its_circuit_opens_and_health_shows_it(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a provider failing every call
    simulator.set_faults({"script": ["500"] * 100})
    # When requests keep coming (each tries gpt-4o-mini twice, then gpt-4.1-mini twice)
    replies = [client.post("/v1/generate", skill(i)) for i in range(4)]
    # Then each is answered with the labelled static fallback
    assert [r.status for r in replies] == [200] * 4
    assert all(r.body["served_by"] == "static_answer" and r.body["fallback"] for r in replies)
    # And once both circuits opened (5 failures each), the models are no longer called at all
    calls = [
        sum(
            1
            for row in ledger_rows("demo")
            if row["request_id"] == r.body["request_id"] and row["outcome"] == "failure"
        )
        for r in replies
    ]
    reason = replies[-1].body["degraded_reason"]
    print(f"provider attempts per request as the circuits open: {calls}; last reason {reason}")
    assert calls[:2] == [4, 4] and calls[-1] == 0
    assert replies[-1].body["degraded_reason"] == "provider_unavailable"
    health = client.get("/v1/health", key=None)
    circuits = {c["circuit"]: c["state"] for c in health.body["circuits"]["items"]}
    assert circuits == {"simulated#gpt-4o-mini": "open", "simulated#gpt-4.1-mini": "open"}
    assert health.body["circuits"]["open"] == 2 and health.status == 200  # fallbacks keep the gateway up


@pytest.fixture(autouse=True)
def _fresh_breaker(stack: LocalStack) -> None:
    deps.breaker.cache_clear()
