"""Redelivery: every settlement replayed, in any order and concurrently, bills and counts once.

Figures printed: deliveries, first-time settlements, replays, and the drift between entries,
ledger rows, rollups and budget counters — the drift must be 0.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import boto3

from aigateway import deps, jobs
from aigateway.governance.budgets import Reservation, scopes_for
from aigateway.governance.config import BudgetSettings
from aigateway.governance.ledger import ROLLUP_COUNTERS, LedgerEntry, Outcome
from infra.local.runtime import LocalStack
from tests.integration.governance_support import (
    configure,
    counter,
    ledger_rows,
    now,
    open_reservations,
    rollup_totals,
)
from tests.integration.test_generate import SKILL
from tests.integration.test_jobs_workflow import PRINCIPAL, executions, wait_for

USERS = ("alice", "bob", "carol")


def entry(i: int, rng: random.Random, at: datetime) -> LedgerEntry:
    outcome: Outcome = rng.choice(["success", "success", "success", "failure", "cache_hit"])
    inp, out = rng.randint(100, 3000), rng.randint(0, 900)
    cost = {"success": rng.randint(50, 5000), "failure": rng.choice([0, rng.randint(1, 500)]), "cache_hit": 0}[outcome]
    return LedgerEntry(
        request_id=f"01REDELIVERY{i:014d}",
        attempt=rng.randint(0, 2),
        tenant_id="demo",
        user_id=USERS[i % len(USERS)],
        key_id="k1",
        feature=rng.choice(["generate", "jobs"]),
        template="skill_assessment@1",
        model=rng.choice(["gpt-4o-mini", "gpt-4.1-mini"]),
        provider="simulated",
        outcome=outcome,
        input_tokens=inp,
        cached_tokens=rng.randint(0, inp),
        output_tokens=out,
        cost_micros=cost,
        cost_saved_micros=rng.randint(1, 900) if outcome == "cache_hit" else 0,
        price_effective_from=None if outcome == "cache_hit" else "2024-07-18",
        latency_ms=rng.randint(5, 3000),
        error_code="provider_error" if outcome == "failure" else None,
        created_at=at,
    )


def test_replayed_settlements_leave_ledger_rollups_and_budgets_without_drift(stack: LocalStack) -> None:
    # Given N attempts, each with its open budget reservation (tenant and per-user budgets)
    n = 60
    rng = random.Random(20261122)
    at = now()
    config = configure("demo", budgets=BudgetSettings(monthly_micros=10**9, per_user_micros=10**8))
    budgets, ledger = deps.budgets(), deps.ledger()
    settled: list[tuple[LedgerEntry, Reservation | None]] = []
    for i in range(n):
        e = entry(i, rng, at)
        reservation = None
        if e.outcome != "cache_hit":  # a cache hit reserves nothing
            scopes = scopes_for(config, user_id=e.user_id, feature=e.feature)
            amount = e.cost_micros + rng.randint(0, 2000)  # the worst case covers the real cost
            reservation = budgets.reserve(e.row_id, "demo", scopes, amount, at)
        settled.append((e, reservation))
    # When every settlement is delivered 1–3 times, shuffled, by 16 concurrent workers
    deliveries = [pair for pair in settled for _ in range(rng.randint(1, 3))]
    rng.shuffle(deliveries)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda pair: ledger.settle(*pair), deliveries))

    # Then each attempt was settled exactly once and every replay said so
    firsts, replays = results.count(True), results.count(False)
    expected = dict.fromkeys(ROLLUP_COUNTERS, 0)
    for e, _ in settled:
        for name, value in e.rollup_counters().items():
            expected[name] += value
    rollup = rollup_totals("demo")
    rows = ledger_rows("demo")
    cost = expected["cost_micros"]
    tenant = counter("demo")
    drift = {
        "rows": abs(len(rows) - n),
        "ledger_cost": abs(sum(int(r["cost_micros"]) for r in rows) - cost),
        "rollups": sum(abs(rollup[k] - expected[k]) for k in ROLLUP_COUNTERS),
        "tenant_spent": abs(int(tenant["spent_micros"]) - cost),
        "tenant_reserved": int(tenant["reserved_micros"]),
        "tenant_headroom": abs(int(tenant["headroom_micros"]) - (10**9 - cost)),
    }
    for user in USERS:
        item = counter("demo", f"user:{user}")
        user_cost = sum(e.cost_micros for e, _ in settled if e.user_id == user)
        drift[f"{user}_spent"] = abs(int(item["spent_micros"]) - user_cost)
        drift[f"{user}_reserved"] = int(item["reserved_micros"])
    print(
        f"{n} attempts, {len(deliveries)} deliveries: {firsts} settled, {replays} replays refused; "
        f"drift {sum(drift.values())} ({drift})"
    )
    assert firsts == n and replays == len(deliveries) - n
    assert all(v == 0 for v in drift.values()), drift
    assert sorted(r["sk"] for r in rows) == sorted(e.row_id for e, _ in settled)
    assert open_reservations() == []


def test_a_job_message_delivered_three_times_is_billed_once(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given one job whose queue message is delivered three times (at-least-once delivery)
    message = jobs.JobMessage(job_id="01JOBBILLEDONCE000000000000", kind="generate", principal=PRINCIPAL, request=SKILL)
    deps.repos().jobs.create(
        message.job_id, tenant_id="demo", created_at=now().isoformat(), attributes={"kind": "generate"}
    )
    sqs = boto3.client("sqs")
    queue = deps.get_settings().jobs_queue_url
    for _ in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=message.model_dump_json())
    # When all three are consumed
    job = wait_for(message.job_id, {"succeeded", "failed"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        pending = int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )
        if pending == 0:
            break
        time.sleep(0.2)
    # … and the run task is even invoked a second time for the same attempt (a duplicate invocation)
    duplicate = stack.invoke("workflow", {"action": "run", "job": message.model_dump(mode="json"), "attempt": 0})

    # Then there is one ledger charge, and the budget and rollups agree with it
    assert job["status"] == "succeeded", job
    assert duplicate["cached"] is True and duplicate["cost_micros"] == 0
    rows = [r for r in ledger_rows("demo") if r["request_id"] == message.job_id]
    charges = [r for r in rows if int(r["cost_micros"]) > 0]
    cost = int(charges[0]["cost_micros"]) if charges else 0
    tenant = counter("demo")
    drift = abs(int(tenant["spent_micros"]) - cost) + abs(rollup_totals("demo")["cost_micros"] - cost)
    print(
        f"deliveries 3 (+1 duplicate run): executions {len(executions(stack))}, ledger rows {len(rows)}, "
        f"charges {len(charges)}, provider calls {simulator.stats()['requests']}, drift {drift}"
    )
    assert len(executions(stack)) == 1 and len(rows) == 1 and len(charges) == 1
    assert rows[0]["sk"] == f"{message.job_id}#000" and rows[0]["outcome"] == "success"
    assert rows[0]["feature"] == "jobs"  # billed to the feature that ran it, not the template's route
    assert drift == 0 and int(tenant["reserved_micros"]) == 0
    assert simulator.stats()["requests"] == 1
    assert open_reservations() == []


def test_a_replayed_attempt_that_reserved_again_gives_that_reservation_back(stack: LocalStack) -> None:
    # Given an attempt already settled (row, charge, rollup), then run again under the same id —
    # a duplicate invocation that missed the cache reserves afresh before calling the provider
    configure("demo", budgets=BudgetSettings(monthly_micros=1_000_000, per_user_micros=500_000))
    at = now()
    config = deps.governance_configs().get("demo")
    scopes = scopes_for(config, user_id="alice", feature="generate")
    e = entry(0, random.Random(1), at).model_copy(update={"outcome": "success", "cost_micros": 700})
    first = deps.budgets().reserve(e.row_id, "demo", scopes, 2_000, at)
    assert deps.ledger().settle(e, first)
    again = deps.budgets().reserve(e.row_id, "demo", scopes, 2_500, at)
    # When a stale replay of the first settlement arrives, then the duplicate run's own settlement
    stale = deps.ledger().settle(e, first)
    held_after_stale = int(counter("demo")["reserved_micros"])
    replayed = deps.ledger().settle(e, again)
    # Then both are refused as replays; the stale one releases nothing that is not its own, and the
    # duplicate run's reservation is given back at once (not held until the sweeper's deadline)
    tenant = counter("demo")
    leaked = int(tenant["reserved_micros"])
    print(f"replays of a settled attempt: {stale}, {replayed}; reservation left held {leaked} µUSD")
    assert (stale, replayed) == (False, False) and held_after_stale == 2_500
    assert leaked == 0 and int(tenant["spent_micros"]) == 700 and int(tenant["headroom_micros"]) == 1_000_000 - 700
    user = counter("demo", "user:alice")
    assert (int(user["reserved_micros"]), int(user["spent_micros"])) == (0, 700)
    assert open_reservations() == [] and len(ledger_rows("demo")) == 1
    assert rollup_totals("demo")["cost_micros"] == 700 and rollup_totals("demo")["attempts"] == 1
