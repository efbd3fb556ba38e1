"""Asynchronous jobs: a row in the State table, a message on the Jobs queue, one workflow execution.

The job id is the execution name, so a redelivered message cannot start the same job twice
(Step Functions refuses a second execution with the same name).

`JobService` is what the HTTP routes use: `submit` validates a request now (a bad one is a 4xx,
not an asynchronous failure), applies the caller's rate limits (feature `jobs`; the workflow runs
unlimited) and enqueues; `status` reads a job back for its own tenant only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aigateway.auth import Principal
from aigateway.errors import NotFound
from aigateway.generation import GenerateRequest, model_calls
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.limits import RateLimiter, Subject
from aigateway.governance.pricing import price_for
from aigateway.ids import new_id
from aigateway.llm.catalog import get_profile
from aigateway.prompts.registry import TemplateRegistry
from aigateway.prompts.render import render_messages
from aigateway.settings import ConfigurationError
from aigateway.store.repos import Jobs

FEATURE = "jobs"  # rate limits at enqueue, budgets and ledger rows when the workflow runs
KIND_GENERATE = "generate"
JobState = Literal["queued", "processing", "succeeded", "failed"]


class JobMessage(BaseModel):
    """What travels on the queue and into the workflow: everything needed to run the job."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    kind: str  # "generate" today; lead scoring joins later
    principal: Principal
    request: dict[str, Any]


@lru_cache(maxsize=1)
def _sqs() -> Any:
    import boto3

    return boto3.client("sqs")


@lru_cache(maxsize=1)
def _sfn() -> Any:
    import boto3

    return boto3.client("stepfunctions")


def enqueue(
    jobs: Jobs,
    queue_url: str,
    *,
    principal: Principal,
    kind: str,
    request: dict[str, Any],
    created_at: str | None = None,
) -> str:
    """Records the job, then queues it; returns the job id.

    If queuing fails the row is marked `failed` (nothing stays `queued` that no message will run)
    and the error propagates, so the caller knows to retry.
    """
    job_id = new_id()
    now = created_at or datetime.now(UTC).isoformat()
    jobs.create(job_id, tenant_id=principal.tenant_id, created_at=now, attributes={"kind": kind, "request": request})
    message = JobMessage(job_id=job_id, kind=kind, principal=principal, request=request)
    try:
        _sqs().send_message(QueueUrl=queue_url, MessageBody=message.model_dump_json())
    except Exception as exc:
        with suppress(Exception):  # best effort: the original error is what the caller needs
            jobs.transition(
                job_id,
                to="failed",
                allowed_from=("queued",),
                at=datetime.now(UTC).isoformat(),
                extra={"error": {"type": "EnqueueFailed", "cause": type(exc).__name__}},
            )
        raise
    return job_id


def start_execution(state_machine_arn: str, message: JobMessage) -> bool:
    """Starts the job's workflow; False when it was already started (a redelivered message)."""
    sfn = _sfn()
    try:
        sfn.start_execution(stateMachineArn=state_machine_arn, name=message.job_id, input=message.model_dump_json())
    except sfn.exceptions.ExecutionAlreadyExists:
        return False
    return True


def decode(body: str) -> JobMessage:
    return JobMessage.model_validate(json.loads(body))


# --- the HTTP API's view of jobs ------------------------------------------------------------------


class JobAccepted(BaseModel):
    """POST /v1/jobs: the job is recorded and queued."""

    job_id: str
    status: Literal["queued"]
    kind: str
    created_at: str = Field(description="ISO 8601, UTC")
    links: dict[str, str] = Field(description="self: where to poll the job")


class JobError(BaseModel):
    type: str = Field(description="The error class that ended the job, e.g. ProviderError")
    cause: str


class JobOut(BaseModel):
    """GET /v1/jobs/{job_id}: where the job is, and its result or error once it has ended."""

    job_id: str
    kind: str
    status: JobState
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str = Field(description="ISO 8601, UTC")
    result: dict[str, Any] | None = Field(
        default=None, description="When succeeded: the generate response (as POST /v1/generate answers)"
    )
    error: JobError | None = Field(default=None, description="When failed")
    links: dict[str, str]


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def check_generate_request(request: GenerateRequest, templates: TemplateRegistry, at: datetime) -> None:
    """What would make the job fail for its input, checked now: template, variables, profile, models.

    The same steps `generation.generate` takes before its first provider call.
    """
    template = templates.get(request.template, request.version)  # UnknownTemplate (404)
    render_messages(template, request.variables)  # ValidationFailed (422) for bad variables
    profile = get_profile(request.model_profile or template.model_profile)  # UnknownModel (400)
    max_tokens = request.max_tokens or template.max_tokens
    calls = model_calls(template, profile, max_tokens, caller_chose=request.model_profile is not None)
    price_for(calls[0].model, at)  # an unpriced primary model is refused before anything is spent


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobService:
    jobs: Jobs
    queue_url: str | None
    templates: Callable[[], TemplateRegistry]
    configs: GovernanceConfigs
    limiter: RateLimiter
    clock: Callable[[], datetime] = field(default=_utc_now)

    def submit(
        self, request: GenerateRequest, principal: Principal, *, client_ip: str | None
    ) -> tuple[JobAccepted, dict[str, str]]:
        """Validates, rate-limits and enqueues a generate job; the accepted job and rate-limit headers."""
        now = self.clock()
        check_generate_request(request, self.templates(), now)
        if not self.queue_url:
            raise ConfigurationError("JOBS_QUEUE_URL is not set")
        p = principal
        rules = self.configs.get(p.tenant_id).effective_rate_limits(FEATURE)
        subject = Subject(p.tenant_id, p.key_id, p.user_id, client_ip, FEATURE)
        limits = self.limiter.acquire(subject, rules, now_us=int(now.timestamp() * 1_000_000))  # or RateLimited
        created_at = now.isoformat()
        job_id = enqueue(
            self.jobs,
            self.queue_url,
            principal=p,
            kind=KIND_GENERATE,
            request=request.model_dump(mode="json", exclude_none=True),
            created_at=created_at,
        )
        accepted = JobAccepted(
            job_id=job_id, status="queued", kind=KIND_GENERATE, created_at=created_at, links={"self": job_path(job_id)}
        )
        return accepted, limits.headers()

    def status(self, principal: Principal, job_id: str) -> JobOut:
        """The caller's tenant's job; any other tenant's (admins included) is as absent as a wrong id."""
        item = self.jobs.find(principal.tenant_id, job_id)
        if item is None:
            raise NotFound(f"no job {job_id!r}", field="job_id")
        return job_out(item)


def job_out(item: dict[str, Any]) -> JobOut:
    """Stored job item → API model (explicit: stored attributes like `request` stay inside)."""
    status = item["status"]
    error = item.get("error") if status == "failed" else None
    return JobOut(
        job_id=item["job_id"],
        kind=item.get("kind", KIND_GENERATE),
        status=status,
        created_at=item["created_at"],
        updated_at=item.get("updated_at", item["created_at"]),
        result=item.get("result") if status == "succeeded" else None,
        error=JobError(type=str(error.get("type", "Unknown")), cause=str(error.get("cause", ""))) if error else None,
        links={"self": job_path(item["job_id"])},
    )
