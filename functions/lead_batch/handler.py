"""Lead scoring in batches, without a caller waiting:

- the EventBridge schedule `lead-rescore` re-scores every tenant's leads whose score is older
  than the tenant's freshness window (never-scored leads first), a bounded number per run;
- an EventBridge "Object Created" event from the imports bucket imports that lead file.
"""

from __future__ import annotations

from typing import Any

from aigateway import deps
from aigateway.observability import count, logger
from aigateway.scoring.imports import import_object

RESCORE_PER_TENANT = 1000  # per run; the next run continues with what is still stale


def rescore_stale() -> dict[str, Any]:
    queued: dict[str, int] = {}
    for tenant_id in deps.repos().tenants.ids():
        n = deps.lead_service().rescore_stale(tenant_id, limit=RESCORE_PER_TENANT)
        if n:
            queued[tenant_id] = n
    logger().info("stale leads queued", extra={"queued": queued})
    return {"queued": queued}


def import_file(event: dict[str, Any]) -> dict[str, Any]:
    detail = event["detail"]
    report = import_object(deps.lead_service(), deps.repos().tenants, detail["bucket"]["name"], detail["object"]["key"])
    count("LeadsImported", outcome="error" if "error" in report else "ok")
    logger().info(
        "lead file imported",
        # ("created" is a LogRecord attribute: every count gets a prefix.)
        extra={f"leads_{k}": report.get(k) for k in ("created", "updated", "unchanged", "queued")}
        | {"key": report.get("key"), "error": report.get("error"), "rows_rejected": len(report.get("rejected", []))},
    )
    return report


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("detail-type") == "Object Created":
        return import_file(event)
    if event.get("schedule") == "lead-rescore":
        return rescore_stale()
    raise ValueError(f"unexpected event: {sorted(event)}")
