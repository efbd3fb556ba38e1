"""Scheduled (every minute): release orphaned budget reservations, send budget alerts still due.

A reservation is orphaned when its request died between reserving and settling (a crash, a
timeout): its money is given back once `release_after` passes. Alerts are normally claimed by the
request whose charge crosses a threshold; this pass catches the ones no request claimed (for
instance when many concurrent requests crossed together and each saw a stale snapshot).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aigateway import deps
from aigateway.governance.budgets import period_of
from aigateway.observability import logger


def sweep(now: datetime) -> dict[str, int]:
    released = deps.budgets().release_expired(int(now.timestamp()))
    alerts = 0
    period = period_of(now)
    repos = deps.repos()
    for tenant_id in repos.tenants.ids():
        for counter in repos.budgets.for_period(tenant_id, period):
            alerts += len(deps.budget_alerts().send_due(counter, now))
    return {"reservations_released": released, "alerts_sent": alerts}


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    result = sweep(datetime.now(UTC))
    logger().info("sweep finished", extra=result)
    return result
