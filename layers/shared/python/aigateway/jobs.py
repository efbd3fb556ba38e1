"""Asynchronous jobs: a row in the State table, a message on the Jobs queue, one workflow execution.

The job id is the execution name, so a redelivered message cannot start the same job twice
(Step Functions refuses a second execution with the same name).

`JobService` is what the HTTP routes use: `submit` validates a request now (a bad one is a 4xx,
not an asynchronous failure), applies the caller's rate limits (feature `jobs`; the workflow runs
unlimited) and enqueues; `status` reads a job back for its own tenant only; `page` lists a tenant's
jobs (by status); `cancel` stops one; `retry` and `retry_failed` run failed or cancelled jobs again.

A retry keeps the job id and counts a new run: its execution is named `<job id>-r<run>` (Step
Functions never reuses a name), and its ledger rows carry that name as their request id, so no
two runs' rows collide.
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
from aigateway.errors import InvalidCursor, JobFinished, JobNotRetryable, NotFound, QueueUnavailable
from aigateway.generation import GenerateRequest, model_calls
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.limits import RateLimiter, Subject
from aigateway.governance.pricing import price_for
from aigateway.ids import new_id
from aigateway.llm.catalog import get_profile
from aigateway.observability import logger
from aigateway.paging import decode_cursor, encode_cursor
from aigateway.prompts.registry import TemplateRegistry
from aigateway.prompts.render import render_messages
from aigateway.settings import ConfigurationError
from aigateway.store.dynamo import ConditionFailed, Item
from aigateway.store.repos import Jobs

FEATURE = "jobs"  # rate limits at enqueue, budgets and ledger rows when the workflow runs
KIND_GENERATE = "generate"
KIND_SCORE_LEAD = "score_lead"
JobState = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")
RETRYABLE_STATES = ("failed", "cancelled")
SQS_BATCH = 10  # SendMessageBatch takes at most 10 messages


class JobMessage(BaseModel):
    """What travels on the queue and into the workflow: everything needed to run the job."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    kind: str  # generate | score_lead
    principal: Principal
    request: dict[str, Any]
    run: int = 0  # 0 for the first run; each retry adds one

    @property
    def execution_name(self) -> str:
        """The workflow execution's name, and the request id of the run's ledger rows."""
        return self.job_id if self.run == 0 else f"{self.job_id}-r{self.run}"


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

    If SQS refuses the message the row is left `failed` (`EnqueueFailed`: nothing stays `queued`
    that no message will run) and the caller gets 503 `queue_unavailable`, to retry.
    """
    ((job_id, queued),) = enqueue_many(
        jobs,
        queue_url,
        principal=principal,
        kind=kind,
        requests=[request],
        created_at=created_at or datetime.now(UTC).isoformat(),
    )
    if not queued:
        raise QueueUnavailable(f"job {job_id} could not be queued; it is recorded as failed and can be retried")
    return job_id


def enqueue_many(
    jobs: Jobs,
    queue_url: str,
    *,
    principal: Principal,
    kind: str,
    requests: list[dict[str, Any]],
    created_at: str,
    ids: list[str] | None = None,
) -> list[tuple[str, bool]]:
    """Records and queues one job per request: (job id, queued) in request order.

    Rows go first (25 per BatchWriteItem), then messages (10 per SendMessageBatch). A message SQS
    refuses leaves its job `failed` with `EnqueueFailed` (retryable through the jobs API), never
    `queued` with no message to run it.
    """
    ids = ids or [new_id() for _ in requests]
    jobs.create_many(
        [
            jobs.new_item(
                job_id, tenant_id=principal.tenant_id, created_at=created_at, attributes=_attributes(principal, kind, r)
            )
            for job_id, r in zip(ids, requests, strict=True)
        ]
    )
    messages = [
        JobMessage(job_id=j, kind=kind, principal=principal, request=r) for j, r in zip(ids, requests, strict=True)
    ]
    unsent = send(queue_url, messages)
    if unsent:
        _mark_unsent(jobs, [m for m in messages if m.job_id in unsent], at=datetime.now(UTC).isoformat())
    return [(job_id, job_id not in unsent) for job_id in ids]


def _attributes(principal: Principal, kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """What a job row keeps to be run again: its kind, request and the principal it runs as."""
    return {"kind": kind, "request": request, "principal": principal.model_dump(mode="json")}


def send(queue_url: str, messages: list[JobMessage]) -> set[str]:
    """Queues the messages; returns the job ids SQS did not accept."""
    unsent: set[str] = set()
    for i in range(0, len(messages), SQS_BATCH):
        chunk = messages[i : i + SQS_BATCH]
        entries = [{"Id": str(n), "MessageBody": m.model_dump_json()} for n, m in enumerate(chunk)]
        try:
            response = _sqs().send_message_batch(QueueUrl=queue_url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - the whole chunk is unsent; the caller records it
            logger().error("enqueue failed", extra={"error": type(exc).__name__, "messages": len(chunk)})
            unsent.update(m.job_id for m in chunk)
            continue
        unsent.update(chunk[int(f["Id"])].job_id for f in response.get("Failed", []))
    return unsent


def _mark_unsent(jobs: Jobs, messages: list[JobMessage], *, at: str) -> None:
    for message in messages:
        with suppress(Exception):  # best effort: the caller is told the job was not queued either way
            jobs.transition(
                message.job_id,
                tenant_id=message.principal.tenant_id,
                to="failed",
                allowed_from=("queued",),
                at=at,
                extra={"error": {"type": "EnqueueFailed", "cause": "SQS did not accept the message"}},
            )


def start_execution(state_machine_arn: str, message: JobMessage) -> bool:
    """Starts the job's workflow; False when it was already started (a redelivered message)."""
    sfn = _sfn()
    try:
        sfn.start_execution(
            stateMachineArn=state_machine_arn, name=message.execution_name, input=message.model_dump_json()
        )
    except sfn.exceptions.ExecutionAlreadyExists:
        return False
    return True


def stop_execution(state_machine_arn: str, execution_name: str) -> bool:
    """Stops a running execution; False when there is none (not started yet, or already ended)."""
    sfn = _sfn()
    arn = state_machine_arn.replace(":stateMachine:", ":execution:") + f":{execution_name}"
    try:
        sfn.stop_execution(executionArn=arn, error="JobCancelled", cause="cancelled through the jobs API")
    except (sfn.exceptions.ExecutionDoesNotExist, sfn.exceptions.InvalidArn):
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
    """A job: where it is, and its result or error once it has ended."""

    job_id: str
    kind: str = Field(description="generate | score_lead")
    status: JobState
    lead_id: str | None = Field(default=None, description="For score_lead: the lead being scored")
    runs: int = Field(default=1, description="How many times the job has been run (retries add one)")
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str = Field(description="ISO 8601, UTC")
    result: dict[str, Any] | None = Field(
        default=None,
        description="When succeeded: the generate response (as POST /v1/generate answers), or the lead's score",
    )
    error: JobError | None = Field(default=None, description="When failed or cancelled")
    links: dict[str, str]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")


class RetryFailedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str = Field(default="0", description="Jobs created at or after this ISO 8601 time")
    until: str = Field(default="~", description="Jobs created at or before this ISO 8601 time")
    kind: str | None = Field(default=None, description="Only jobs of this kind")
    limit: int = Field(default=100, ge=1, le=500, description="At most this many jobs per call")
    cursor: str | None = Field(default=None, description="The previous call's next_cursor")


class RetryReport(BaseModel):
    retried: list[str] = Field(description="Job ids queued again")
    skipped: int = Field(description="Failed jobs in the range left alone (another kind, or already retried)")
    next_cursor: str | None = Field(description="More failed jobs may remain: call again with this cursor")


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
    workflow_arn: str | None = None
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
        return job_out(self._find(principal, job_id))

    def _find(self, principal: Principal, job_id: str) -> Item:
        item = self.jobs.find(principal.tenant_id, job_id)
        if item is None:
            raise NotFound(f"no job {job_id!r}", field="job_id")
        return item

    def page(
        self,
        principal: Principal,
        *,
        status: JobState | None,
        since: str | None,
        until: str | None,
        limit: int,
        cursor: str | None,
    ) -> JobPage:
        """The tenant's jobs, newest first, optionally of one status and creation-time range."""
        after = _within(decode_cursor(cursor, keys=("sk", "job_id")), since or "0", (until or "") + "~")
        items, last = self.jobs.page(
            principal.tenant_id,
            status=status,
            since=since or "0",
            until=(until or "") + "~",
            limit=limit,
            after=after,
        )
        return JobPage(items=[job_out(i) for i in items], next_cursor=encode_cursor(_position(last, status)))

    def cancel(self, principal: Principal, job_id: str) -> JobOut:
        """Cancels a queued or running job (its execution is stopped; nothing more is written)."""
        item = self._find(principal, job_id)
        if item["status"] in FINISHED:
            raise JobFinished(f"job {job_id!r} has already ended ({item['status']})", field="job_id")
        try:
            updated = self.jobs.transition(
                job_id,
                tenant_id=principal.tenant_id,
                to="cancelled",
                allowed_from=("queued", "processing"),
                at=self.clock().isoformat(),
                extra={"error": {"type": "JobCancelled", "cause": f"cancelled by key {principal.key_id}"}},
            )
        except ConditionFailed as exc:  # it ended between the read and the write
            current = self.jobs.get(job_id) or item
            raise JobFinished(f"job {job_id!r} has already ended ({current['status']})", field="job_id") from exc
        if self.workflow_arn:
            name = JobMessage(
                job_id=job_id, kind=item["kind"], principal=principal, request={}, run=_run(item)
            ).execution_name
            stopped = stop_execution(self.workflow_arn, name)
            logger().info("job cancelled", extra={"job_id": job_id, "execution_stopped": stopped})
        return job_out(updated)

    def retry(self, principal: Principal, job_id: str) -> JobOut:
        """Runs a failed or cancelled job again, under the same id (202)."""
        item = self._find(principal, job_id)
        if item["status"] not in RETRYABLE_STATES:
            raise JobNotRetryable(
                f"job {job_id!r} is {item['status']}: only failed or cancelled jobs can be retried", field="job_id"
            )
        return job_out(self._requeue(principal, item))

    def retry_failed(self, principal: Principal, request: RetryFailedIn) -> RetryReport:
        """Re-queues the tenant's failed jobs created in a range, up to `limit` per call."""
        items, last = self.jobs.page(
            principal.tenant_id,
            status="failed",
            since=request.since,
            until=request.until + "~",
            limit=request.limit,
            after=_within(decode_cursor(request.cursor, keys=("sk", "job_id")), request.since, request.until + "~"),
        )
        retried, skipped = [], 0
        for item in items:
            if request.kind is not None and item.get("kind") != request.kind:
                skipped += 1
                continue
            try:
                self._requeue(principal, item)
            except JobNotRetryable:
                skipped += 1
                continue
            retried.append(str(item["job_id"]))
        return RetryReport(retried=retried, skipped=skipped, next_cursor=encode_cursor(_position(last, "failed")))

    def _requeue(self, principal: Principal, item: Item) -> Item:
        """failed/cancelled → queued with one more run, then the run's message; one caller wins a race."""
        if not self.queue_url:
            raise ConfigurationError("JOBS_QUEUE_URL is not set")
        job_id = str(item["job_id"])
        try:
            updated = self.jobs.transition(
                job_id,
                tenant_id=principal.tenant_id,
                to="queued",
                allowed_from=RETRYABLE_STATES,
                at=self.clock().isoformat(),
                remove=("error", "result"),
                add_run=True,
            )
        except ConditionFailed as exc:
            raise JobNotRetryable(f"job {job_id!r} is no longer failed or cancelled", field="job_id") from exc
        owner = Principal.model_validate(item["principal"]) if item.get("principal") else principal
        message = JobMessage(
            job_id=job_id, kind=item["kind"], principal=owner, request=item["request"], run=_run(updated)
        )
        if send(self.queue_url, [message]):
            _mark_unsent(self.jobs, [message], at=self.clock().isoformat())
            raise JobNotRetryable(f"job {job_id!r} could not be queued; try again", field="job_id")
        return updated


def _within(after: dict[str, str] | None, low: str, high: str) -> dict[str, str] | None:
    """A cursor for this range only: DynamoDB refuses a start key outside the key condition."""
    if after is not None and not low <= after["sk"] <= high:
        raise InvalidCursor("the cursor belongs to another time range", field="cursor")
    return after


def _position(last_key: Item | None, status: str | None) -> dict[str, str] | None:
    """Where a page of `Jobs.page` stopped, from DynamoDB's LastEvaluatedKey (which holds the
    table and index keys only: the job id comes from `pk`)."""
    if last_key is None:
        return None
    sort_key = last_key["gsi2sk" if status else "gsi1sk"]
    return {"sk": str(sort_key), "job_id": str(last_key["pk"]).removeprefix("JOB#")}


def _run(item: Item) -> int:
    """The job's latest run number (0-based): `runs` counts the runs, and a new job has had one."""
    return int(item.get("runs", 1)) - 1


def job_out(item: dict[str, Any]) -> JobOut:
    """Stored job item → API model (explicit: stored attributes like `request` stay inside)."""
    status = item["status"]
    error = item.get("error") if status in ("failed", "cancelled") else None
    request = item.get("request") or {}
    return JobOut(
        job_id=item["job_id"],
        kind=item.get("kind", KIND_GENERATE),
        status=status,
        lead_id=request.get("lead_id") if item.get("kind") == KIND_SCORE_LEAD else None,
        runs=int(item.get("runs", 1)),
        created_at=item["created_at"],
        updated_at=item.get("updated_at", item["created_at"]),
        result=item.get("result") if status == "succeeded" else None,
        error=JobError(type=str(error.get("type", "Unknown")), cause=str(error.get("cause", ""))) if error else None,
        links={"self": job_path(item["job_id"])},
    )
