"""Scheduled (03:00 UTC on the 1st): last month's ledger of every tenant to the exports bucket.

The EventBridge rule `monthly-usage-export` sends `{"schedule": "monthly-usage-export"}`; add
`"month": "YYYY-MM"` to re-run a month (the same object keys are overwritten). Its own function,
not the usage API's, because a whole month takes longer than an HTTP function's 29 s.
"""

from __future__ import annotations

from typing import Any

from aigateway import deps
from aigateway.governance.usage import S3Writer
from aigateway.observability import logger
from aigateway.settings import ConfigurationError, get_settings

MONTHLY_EXPORT = "monthly-usage-export"


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("schedule") != MONTHLY_EXPORT:
        raise ValueError(f"unknown schedule {event.get('schedule')!r}")
    bucket = get_settings().exports_bucket
    if not bucket:
        raise ConfigurationError("EXPORTS_BUCKET is not set")
    summary = deps.usage_service().monthly_export(S3Writer(bucket), month=event.get("month"))
    logger().info(
        "monthly usage export written",
        extra={"month": summary.month, "tenants": len(summary.tenants), "reconciled": summary.reconciled},
    )
    return summary.model_dump(mode="json")
