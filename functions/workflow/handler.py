"""Task states of the jobs workflow (infra/workflow.py). Each call names its `action`.

`run` runs one stage of the fallback chain: `primary` (the template's model), `fallback` (its
fallback models) or `degraded` (a stale cache entry or the static answer; for a `score_lead` job,
the rules scorer). `persist` writes the outcome (for a lead: the audit record and the job's
success in one transaction, then the lead's latest score). Errors propagate
with their class names (ProviderRateLimited, ProviderTimeout, ContentFiltered …): those are what
the state machine's Retry and Catch match on (aigateway/resilience/policy.py decides which).

Ledger attempt numbers must never repeat within a job: each stage numbers from its own base, each
Step Functions retry (`$$.State.RetryCount`) from a further multiple of MAX_ATTEMPTS, and the
attempts one invocation makes in-process (a repair, the next fallback model) count on from there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aigateway import deps
from aigateway.api import Deadline
from aigateway.completion import MAX_ATTEMPTS, CallContext, Stage
from aigateway.errors import JobCancelled, code_of
from aigateway.generation import GenerateRequest, generate
from aigateway.jobs import KIND_SCORE_LEAD, JobMessage
from aigateway.observability import logger
from aigateway.store.dynamo import ConditionFailed

STAGE_BASE: dict[Stage, int] = {"primary": 0, "fallback": 100, "degraded": 200}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _job(event: dict[str, Any]) -> JobMessage:
    job = dict(event["job"])
    for key in ("marked", "result", "error"):  # state outputs added along the way
        job.pop(key, None)
    return JobMessage.model_validate(job)


def mark_processing(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    jobs = deps.repos().jobs
    try:
        jobs.transition(
            job.job_id,
            tenant_id=job.principal.tenant_id,
            to="processing",
            allowed_from=("queued", "processing"),
            at=_now(),
        )
    except ConditionFailed as exc:
        current = jobs.get(job.job_id) or {}
        raise JobCancelled(f"job {job.job_id} is {current.get('status', 'missing')}, not queued") from exc
    return {"status": "processing"}


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    stage: Stage = event.get("stage", "primary")
    retry = int(event.get("attempt", 0))
    # Jobs are rate-limited when enqueued, not here.
    ctx = CallContext(
        job.execution_name,  # each run's ledger rows are its own
        job.principal,
        "leads" if job.kind == KIND_SCORE_LEAD else "jobs",
        Deadline.from_context(context, cap_s=55),
        attempt=STAGE_BASE[stage] + retry * MAX_ATTEMPTS,
        rate_limited=False,
    )
    failed = (event["job"].get("error") or {}).get("Error")  # what sent the job to this stage
    reason = (code_of(failed) or failed) if failed else None
    if job.kind == KIND_SCORE_LEAD:
        return deps.lead_scorer().score(job, ctx, stage=stage, degraded_reason=reason)
    request = GenerateRequest.model_validate(job.request)
    response, _ = generate(
        request,
        ctx,
        templates=deps.templates(),
        completions=deps.completions(),
        stage=stage,
        degraded_reason=reason,
        # Assignment is a pure function of the stored experiment: every stage picks the same variant.
        experiments=deps.experiment_configs(),
    )
    return response.model_dump(mode="json")


def persist(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job = _job(event)
    result = event["job"]["result"]
    if job.kind == KIND_SCORE_LEAD:
        deps.lead_scorer().persist(job, result)
        return {"status": "succeeded"}
    deps.repos().jobs.transition(
        job.job_id,
        tenant_id=job.principal.tenant_id,
        to="succeeded",
        allowed_from=("processing",),
        at=_now(),
        extra={"result": result},
    )
    return {"status": "succeeded"}


def record_failure(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The job failed; a cancelled job stays cancelled (its workflow may end here after a stop)."""
    job = _job(event)
    error = event["job"].get("error") or {}
    if job.kind == KIND_SCORE_LEAD:
        deps.lead_scorer().release(job)
    try:
        deps.repos().jobs.transition(
            job.job_id,
            tenant_id=job.principal.tenant_id,
            to="failed",
            allowed_from=("queued", "processing"),
            at=_now(),
            extra={"error": {"type": error.get("Error", "Unknown"), "cause": str(error.get("Cause", ""))[:1000]}},
        )
    except ConditionFailed:
        current = deps.repos().jobs.get(job.job_id) or {}
        if current.get("status") != "cancelled":
            raise
        return {"status": "cancelled"}
    return {"status": "failed"}


ACTIONS = {"mark_processing": mark_processing, "run": run, "persist": persist, "record_failure": record_failure}


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = ACTIONS[event["action"]]
    logger().append_keys(action=event["action"], job_id=(event.get("job") or {}).get("job_id"))
    return action(event, context)
