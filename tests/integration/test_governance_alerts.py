"""Budget alerts (50/80/100 %): one SNS message per budget, period and crossed threshold.

An SQS queue subscribed to the alerts topic (raw delivery) counts what was published.
Figures printed: messages per (budget, threshold); duplicates must be 0.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from aigateway import deps
from aigateway.governance.alerts import BudgetAlerts
from aigateway.governance.budgets import THRESHOLDS, scopes_for
from aigateway.governance.config import BudgetSettings
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack
from tests.integration.governance_support import (
    burst,
    configure,
    counter,
    now,
    period,
    queue_worst_case_answers,
    skill,
    success_entry,
    worst_case,
)


@pytest.fixture
def alerts_queue(stack: LocalStack) -> str:
    """An SQS queue subscribed to the alerts topic, receiving each message's raw JSON."""
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    url = sqs.create_queue(QueueName="budget-alerts-test")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = deps.get_settings().alerts_topic_arn
    assert topic, "the stack must configure an alerts topic"
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    return str(url)


def drain(url: str) -> list[dict[str, Any]]:
    """Every message waiting on the queue (removed from it)."""
    sqs = boto3.client("sqs")
    found: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return found
        for m in messages:
            found.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def per_threshold(messages: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((m["budget"], int(m["threshold_percent"])) for m in messages)


def spend(tenant_id: str, user_id: str, cost: int, i: int) -> None:
    """Charges `cost` the way a request does: reserve, then settle a ledger row."""
    config = deps.governance_configs().get(tenant_id)
    at = now()
    e = success_entry(f"01ALERTSPEND{i:014d}", tenant_id=tenant_id, user_id=user_id, cost=cost, at=at)
    scopes = scopes_for(config, user_id=user_id, feature="generate")
    reservation = deps.budgets().reserve(e.row_id, tenant_id, scopes, cost, at)
    assert deps.ledger().settle(e, reservation)


def test_concurrent_crossings_send_each_threshold_exactly_once(
    stack: LocalStack, demo: Any, simulator: Any, alerts_queue: str
) -> None:
    # Given a tenant budget of 20 worst-case requests (less 1 µUSD), 47.5 % of it already spent,
    # and a provider that bills every request its full reservation (5 % of the budget each)
    n = 60
    bodies = [skill(i) for i in range(n)]
    wc = worst_case(bodies[0])
    configure("demo", budgets=BudgetSettings(monthly_micros=20 * wc.micros - 1))
    spend("demo", "demo-admin", 19 * wc.micros // 2, 0)
    queue_worst_case_answers(simulator, wc, n)
    # When 60 requests arrive at once: 10 fit, and each of them sees its charge cross 50 %
    replies = burst(LocalApiGateway(stack), [(demo.api_key, b) for b in bodies], workers=16)
    during = per_threshold(drain(alerts_queue))
    # … and the sweeper runs afterwards (it sends what no request claimed), twice
    swept = [stack.run_schedule("reservation-sweeper"), stack.run_schedule("reservation-sweeper")]
    after = per_threshold(drain(alerts_queue))

    # Then every crossed threshold (50 % and 80 %; not 100 %) was announced exactly once
    item = counter("demo")
    assert (
        sum(r.status == 200 for r in replies) == 10
        and int(item["spent_micros"]) == 19 * wc.micros // 2 + 10 * wc.micros
    )
    crossed = [t for t in THRESHOLDS if int(item["spent_micros"]) >= int(item[f"alert_at_{t}"])]
    total = during + after
    duplicates = sum(c - 1 for c in total.values() if c > 1)
    print(
        f"spent {int(item['spent_micros']) / int(item['limit_micros']):.1%} of the budget; alerts sent by requests "
        f"{dict(during)}, by the sweeper {dict(after)}; duplicates {duplicates}"
    )
    assert crossed == [50, 80]
    assert duplicates == 0 and total == Counter({("tenant", 50): 1, ("tenant", 80): 1})
    assert during[("tenant", 50)] == 1  # claimed on the request path, by one of the concurrent claimants
    assert swept[1]["alerts_sent"] == 0 and swept[0]["alerts_sent"] == sum(after.values())
    assert sorted(item.get(f"alerted_{t}") is not None for t in THRESHOLDS) == [False, True, True]


def test_many_checks_of_one_stale_counter_claim_each_threshold_once(stack: LocalStack, alerts_queue: str) -> None:
    # Given a tenant budget at 85 %, and the counter as every request saw it before the charge (0 %)
    configure("demo", budgets=BudgetSettings(monthly_micros=10_000))
    spend("demo", "u1", 1, 0)  # opens the counter
    stale = counter("demo")
    spend("demo", "u1", 8_499, 1)
    # When 32 requests each believe their own charge crossed 50 % and 80 %, all at once
    alerts = deps.budget_alerts()
    with ThreadPoolExecutor(max_workers=16) as pool:
        sent = list(pool.map(lambda _: alerts.send_due(stale, now(), added_micros=9_000), range(32)))
    # Then each threshold the real spend reached went out once; 100 % (not reached) never
    messages = per_threshold(drain(alerts_queue))
    print(f"32 concurrent claimants: messages {dict(messages)}")
    assert messages == Counter({("tenant", 50): 1, ("tenant", 80): 1})
    assert sorted(t for s in sent for t in s) == [50, 80]
    assert counter("demo").get("alerted_100") is None


def test_a_failed_publish_withdraws_the_claim_and_a_later_sweep_sends_it(
    stack: LocalStack, demo: Any, alerts_queue: str
) -> None:
    # Given the demo tenant's budget at 60 %, and an SNS publish that fails
    configure("demo", budgets=BudgetSettings(monthly_micros=10_000))
    spend("demo", "u1", 6_000, 0)

    def failing(subject: str, message: dict[str, Any]) -> None:
        raise RuntimeError("SNS unavailable")

    # When a request claims the 50 % alert and cannot publish it
    sent = BudgetAlerts(deps.repos().budgets, failing).send_due(counter("demo"), now())
    # Then nothing was sent and the claim is withdrawn …
    assert sent == [] and drain(alerts_queue) == []
    assert "alerted_50" not in counter("demo")
    # … so the next sweep sends it, once
    first = stack.run_schedule("reservation-sweeper")
    second = stack.run_schedule("reservation-sweeper")
    messages = drain(alerts_queue)
    print(f"after a failed publish: sweep 1 sent {first['alerts_sent']}, sweep 2 sent {second['alerts_sent']}")
    assert per_threshold(messages) == Counter({("tenant", 50): 1})
    assert (first["alerts_sent"], second["alerts_sent"]) == (1, 0)
    m = messages[0]
    assert m["type"] == "budget_threshold" and m["tenant_id"] == "demo" and m["period"] == period()
    assert m["limit_micros"] == 10_000 and m["threshold_micros"] == 5_000
