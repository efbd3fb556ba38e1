"""Budget alerts at 50 %, 80 % and 100 %: one SNS message per threshold, period and budget.

Exactly once comes from the counter item: a threshold is claimed with a conditional write
(`spent >= alert_at_<t>` and not yet claimed), and only the request whose write succeeds publishes.
If publishing fails the claim is withdrawn, so the next check (a later request or the sweeper)
sends it. A crash between claim and publish loses that one message; the sweeper's log of claims
without a message id is how an operator would spot it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aigateway.governance.budgets import THRESHOLDS
from aigateway.observability import logger
from aigateway.store.dynamo import Item
from aigateway.store.repos import BudgetCounters

Publish = Callable[[str, dict[str, Any]], None]


def sns_publisher(topic_arn: str | None) -> Publish:
    """Publishes to the alerts topic (or only logs, when no topic is configured)."""

    def publish(subject: str, message: dict[str, Any]) -> None:
        if topic_arn is None:
            logger().warning("budget alert (no topic configured)", extra={"alert": message})
            return
        import boto3

        boto3.client("sns").publish(TopicArn=topic_arn, Subject=subject[:100], Message=json.dumps(message))

    return publish


class BudgetAlerts:
    def __init__(self, counters: BudgetCounters, publish: Publish):
        self.counters = counters
        self.publish = publish

    def due(self, item: Item, *, added_micros: int = 0) -> list[int]:
        """Thresholds this counter has (or, with `added_micros` more spend, would have) crossed unsent."""
        spent = int(item.get("spent_micros", 0)) + added_micros
        return [
            t for t in THRESHOLDS if f"alerted_{t}" not in item and spent >= int(item.get(f"alert_at_{t}", 1 << 62))
        ]

    def send_due(self, item: Item, at: datetime, *, added_micros: int = 0) -> list[int]:
        """Claims and publishes every due threshold of one counter; returns those this call sent."""
        sent = []
        tenant, scope, period = item["tenant_id"], item["scope"], item["period"]
        for threshold in self.due(item, added_micros=added_micros):
            stamp = at.isoformat()
            if not self.counters.claim_alert(tenant, scope, period, threshold, at=stamp):
                continue  # not reached yet, or another request claimed it first
            message = {
                "type": "budget_threshold",
                "tenant_id": tenant,
                "budget": scope,
                "period": period,
                "threshold_percent": threshold,
                "limit_micros": int(item["limit_micros"]),
                "threshold_micros": int(item[f"alert_at_{threshold}"]),
                "at": stamp,
            }
            try:
                self.publish(f"AI Gateway budget {threshold}% reached: {tenant} {scope} {period}", message)
            except Exception:  # noqa: BLE001 - any publish failure: withdraw the claim, retry later
                logger().exception("budget alert not published; claim withdrawn", extra={"alert": message})
                self.counters.unclaim_alert(tenant, scope, period, threshold, at=stamp)
                continue
            logger().info("budget alert sent", extra={"alert": message})
            sent.append(threshold)
        return sent
