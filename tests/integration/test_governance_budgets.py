"""Budgets under concurrency: parallel requests can never commit more than a budget holds.

The provider is scripted to bill every token each reservation allowed for (the worst case), so a
reservation and its settlement move a counter by the same amount and the number of requests a
budget admits is exact, however the requests interleave. Figures printed: admitted, refused,
overshoot (spend above the limit) and drift (budget spent vs ledger rows vs rollups) — the last
two must be 0.
"""

from __future__ import annotations

from typing import Any

from aigateway.governance.config import BudgetSettings
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Reply
from tests.integration.governance_support import (
    burst,
    configure,
    counter,
    ledger_rows,
    open_reservations,
    period,
    queue_worst_case_answers,
    rollup_totals,
    skill,
    worst_case,
)

REQUESTS = 200


def books(tenant_id: str, scope: str = "tenant") -> dict[str, int]:
    """The counter of one budget, and what the ledger and the rollups say was spent."""
    item = counter(tenant_id, scope)
    rows = ledger_rows(tenant_id)
    user = scope.removeprefix("user:") if scope.startswith("user:") else None
    return {
        "limit": int(item["limit_micros"]),
        "spent": int(item["spent_micros"]),
        "reserved": int(item["reserved_micros"]),
        "headroom": int(item["headroom_micros"]),
        "ledger": sum(int(r["cost_micros"]) for r in rows if user is None or r["user_id"] == user),
        "rows": sum(1 for r in rows if user is None or r["user_id"] == user),
        "rollup": rollup_totals(tenant_id, user_id=user)["cost_micros"],
    }


def assert_budget_refusal(reply: Reply, budget: str) -> None:
    assert reply.status == 402, reply.body
    error = reply.body["error"]
    assert error["code"] == "budget_exhausted" and error["budget"] == budget and error["period"] == period(), error
    assert error["remaining_micros"] < error["limit_micros"]


def test_parallel_requests_admit_exactly_what_the_tenant_budget_holds(
    stack: LocalStack, demo: Any, simulator: Any
) -> None:
    # Given a monthly budget that holds exactly K worst-case reservations (one µUSD short of K + 1)
    k = 7
    bodies = [skill(i) for i in range(REQUESTS)]
    wc = worst_case(bodies[0])
    assert {worst_case(b).micros for b in bodies[:: REQUESTS // 10]} == {wc.micros}
    limit = (k + 1) * wc.micros - 1
    configure("demo", budgets=BudgetSettings(monthly_micros=limit))
    # … and a provider that bills each admitted request its full reservation
    queue_worst_case_answers(simulator, wc, REQUESTS)

    # When 200 distinct requests arrive at once
    replies = burst(LocalApiGateway(stack), [(demo.api_key, b) for b in bodies])

    # Then exactly K are served and every other one is refused naming the tenant budget and period
    admitted = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    for reply in refused:
        assert_budget_refusal(reply, "tenant")
    b = books("demo")
    overshoot = max(0, b["spent"] - b["limit"])
    drift = abs(b["spent"] - b["ledger"]) + abs(b["spent"] - b["rollup"])
    print(
        f"tenant budget {limit} µUSD, worst case {wc.micros} µUSD/request: {len(admitted)} admitted "
        f"(expected {k}), {len(refused)} refused; overshoot {overshoot} µUSD, drift {drift} µUSD, "
        f"reserved after {b['reserved']} µUSD"
    )
    assert len(admitted) == k and len(refused) == REQUESTS - k
    assert overshoot == 0 and drift == 0 and b["reserved"] == 0
    assert b["spent"] == k * wc.micros == sum(r.body["cost_micros"] for r in admitted)
    assert b["headroom"] == b["limit"] - b["spent"] and b["rows"] == k
    assert simulator.stats()["requests"] == k  # a refused request never reaches the provider
    assert open_reservations() == []


def test_parallel_requests_of_two_users_each_stop_at_their_own_budget(
    stack: LocalStack, demo: Any, simulator: Any
) -> None:
    # Given alice limited to 3 worst-case requests a month (the per-user default) and bob to 5
    alice = seed_demo_tenant("aig_alice_budget_key_00000001", tenant_id="demo", user_id="alice", role="member")
    bob = seed_demo_tenant("aig_bob_budget_key_0000000001", tenant_id="demo", user_id="bob", role="member")
    bodies = [skill(i) for i in range(REQUESTS)]
    wc = worst_case(bodies[0])
    expected = {"alice": 3, "bob": 5}
    configure(
        "demo",
        budgets=BudgetSettings(
            monthly_micros=100 * wc.micros,
            per_user_micros=(expected["alice"] + 1) * wc.micros - 1,
            users={"bob": (expected["bob"] + 1) * wc.micros - 1},
        ),
    )
    queue_worst_case_answers(simulator, wc, REQUESTS)

    # When both send 100 distinct requests at once, interleaved
    keys = {"alice": alice.api_key, "bob": bob.api_key}
    order = ["alice", "bob"] * (REQUESTS // 2)
    replies = burst(LocalApiGateway(stack), [(keys[u], b) for u, b in zip(order, bodies, strict=True)])

    # Then each user gets exactly what their own budget holds; the refusals name their budget
    admitted = dict.fromkeys(expected, 0)
    for user, reply in zip(order, replies, strict=True):
        if reply.status == 200:
            admitted[user] += 1
        else:
            assert_budget_refusal(reply, f"user:{user}")
    figures = {}
    for user in expected:
        b = books("demo", f"user:{user}")
        figures[user] = {
            "admitted": admitted[user],
            "overshoot": max(0, b["spent"] - b["limit"]),
            "drift": abs(b["spent"] - b["ledger"]) + abs(b["spent"] - b["rollup"]),
            "reserved": b["reserved"],
        }
        assert b["spent"] == expected[user] * wc.micros
    tenant = books("demo")
    figures["tenant"] = {
        "drift": abs(tenant["spent"] - tenant["ledger"]) + abs(tenant["spent"] - tenant["rollup"]),
        "reserved": tenant["reserved"],
    }
    print(f"per-user budgets, worst case {wc.micros} µUSD/request: {figures}")
    assert admitted == expected
    assert all(f.get("overshoot", 0) == 0 and f["drift"] == 0 and f["reserved"] == 0 for f in figures.values())
    assert tenant["spent"] == sum(expected.values()) * wc.micros
