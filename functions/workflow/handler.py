"""Task states of the jobs workflow (infra/workflow.py). Each call names its `action`.

Errors propagate with their class names (ProviderRateLimited, ProviderTimeout, ProviderError …):
those are what the state machine's Retry and Catch match on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aigateway import deps
from aigateway.api import Deadline
from aigateway.completion import CallContext
from aigateway.generation import GenerateRequest, generate
from aigateway.jobs import JobMessage
from aigateway.observability import logger


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _job(event: dict[str, Any]) -> JobMessage:
    job = dict(event["job"])
    for key in ("marked", "result", "error"):  # state outputs added along the way
        job.pop(key, None)
    return JobMessage.model_validate(job)


def mark_processing(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    deps.repos().jobs.transition(job.job_id, to="processing", allowed_from=("queued", "processing"), at=_now())
    return {"status": "processing"}


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    request = GenerateRequest.model_validate(job.request)
    # Jobs are rate-limited when enqueued, not here; Step Functions' retry count numbers the attempt.
    ctx = CallContext(
        job.job_id,
        job.principal,
        "jobs",
        Deadline.from_context(context, cap_s=55),
        attempt=int(event.get("attempt", 0)),
        rate_limited=False,
    )
    response, _ = generate(request, ctx, templates=deps.templates(), completions=deps.completions())
    return response.model_dump(mode="json")


def persist(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    deps.repos().jobs.transition(
        job.job_id, to="succeeded", allowed_from=("processing",), at=_now(), extra={"result": event["job"]["result"]}
    )
    return {"status": "succeeded"}


def record_failure(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    error = event["job"].get("error") or {}
    deps.repos().jobs.transition(
        job.job_id,
        to="failed",
        allowed_from=("queued", "processing"),
        at=_now(),
        extra={"error": {"type": error.get("Error", "Unknown"), "cause": str(error.get("Cause", ""))[:1000]}},
    )
    return {"status": "failed"}


ACTIONS = {"mark_processing": mark_processing, "run": run, "persist": persist, "record_failure": record_failure}


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = ACTIONS[event["action"]]
    logger().append_keys(action=event["action"], job_id=(event.get("job") or {}).get("job_id"))
    return action(event, context)
