"""Asynchronous jobs: a row in the State table, a message on the Jobs queue, one workflow execution.

The job id is the execution name, so a redelivered message cannot start the same job twice
(Step Functions refuses a second execution with the same name).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict

from aigateway.auth import Principal
from aigateway.ids import new_id
from aigateway.store.repos import Jobs


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


def enqueue(jobs: Jobs, queue_url: str, *, principal: Principal, kind: str, request: dict[str, Any]) -> str:
    """Records the job, then queues it. If queuing fails the row stays `queued` for a sweeper to retry."""
    job_id = new_id()
    now = datetime.now(UTC).isoformat()
    jobs.create(job_id, tenant_id=principal.tenant_id, created_at=now, attributes={"kind": kind, "request": request})
    message = JobMessage(job_id=job_id, kind=kind, principal=principal, request=request)
    _sqs().send_message(QueueUrl=queue_url, MessageBody=message.model_dump_json())
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
