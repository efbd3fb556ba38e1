"""The asynchronous path on the embedded runtime: SQS → dispatcher → Step Functions → workflow Lambda.

The state machine is the synthesized one, run by moto's ASL interpreter with its Lambda tasks
answered by the handlers in-process.
"""

from __future__ import annotations

import json
import time
from typing import Any

import boto3

from aigateway import deps, jobs
from aigateway.auth import Principal
from aigateway.completion import MAX_ATTEMPTS
from infra.local.runtime import LocalStack
from tests.integration.test_generate import SKILL, ledger_rows
from workflow.handler import STAGE_BASE

PRINCIPAL = Principal(tenant_id="demo", user_id="demo-admin", key_id="k1", role="admin")


def wait_for(job_id: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = deps.repos().jobs.get(job_id)
        if item and item["status"] in statuses:
            return item
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {deps.repos().jobs.get(job_id)}")


def executions(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.resources is not None
    arn = stack.resources.state_machines["jobs"]
    return boto3.client("stepfunctions").list_executions(stateMachineArn=arn)["executions"]


def run_task_max_attempts(stack: LocalStack, error: str, state: str = "Run") -> int:
    """MaxAttempts of `state`'s retrier for `error`, read from the deployed definition."""
    assert stack.resources is not None
    definition = json.loads(
        boto3.client("stepfunctions").describe_state_machine(stateMachineArn=stack.resources.state_machines["jobs"])[
            "definition"
        ]
    )
    for retrier in definition["States"][state]["Retry"]:
        if error in retrier["ErrorEquals"]:
            return int(retrier.get("MaxAttempts", 3))
    raise AssertionError(f"{state} has no retrier for {error}")


def states_entered(stack: LocalStack, job_id: str) -> list[str]:
    """The states the job's execution entered, in order (its execution is named by the job id)."""
    execution = next(e for e in executions(stack) if e["name"] == job_id)
    events = boto3.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


def job_ledger(stack: LocalStack, job_id: str) -> list[tuple[int, str, str, int]]:
    """The job's ledger rows as (attempt, model, outcome, cost), in attempt order."""
    rows = sorted((r for r in ledger_rows(stack) if r["request_id"] == job_id), key=lambda r: int(r["attempt"]))
    return [(int(r["attempt"]), r["model"], r["outcome"], int(r["cost_micros"])) for r in rows]


def test_a_queued_job_runs_through_the_workflow_and_persists_its_result(
    stack: LocalStack, demo: Any, simulator: Any
) -> None:
    # Given a generate job on the Jobs queue
    job_id = jobs.enqueue(
        deps.repos().jobs, deps.get_settings().jobs_queue_url or "", principal=PRINCIPAL, kind="generate", request=SKILL
    )
    # When the poller delivers it and the state machine runs
    item = wait_for(job_id, {"succeeded", "failed"})
    # Then the job succeeded with the template's output, under an execution named by the job id
    assert item["status"] == "succeeded", item
    assert 0 <= item["result"]["output"]["score"] <= 100 and item["result"]["provider"] == "simulated"
    assert [e["name"] for e in executions(stack)] == [job_id]
    assert simulator.stats()["requests"] == 1


def test_redelivered_message_does_not_start_the_job_twice(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given one job message delivered three times (at-least-once delivery)
    message = jobs.JobMessage(job_id="01JOBREDELIVERY000000000000", kind="generate", principal=PRINCIPAL, request=SKILL)
    deps.repos().jobs.create(
        message.job_id, tenant_id="demo", created_at="2026-11-22T00:00:00+00:00", attributes={"kind": "generate"}
    )
    queue = deps.get_settings().jobs_queue_url
    sqs = boto3.client("sqs")
    for _ in range(3):
        sqs.send_message(QueueUrl=queue, MessageBody=message.model_dump_json())
    # When all three are consumed
    wait_for(message.job_id, {"succeeded", "failed"})
    deadline = time.monotonic() + 10
    while (
        time.monotonic() < deadline
        and int(
            sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"][
                "ApproximateNumberOfMessages"
            ]
        )
        > 0
    ):
        time.sleep(0.2)
    time.sleep(1)
    # Then exactly one execution ran and the provider was called once
    started = executions(stack)
    print(f"deliveries: 3, executions started: {len(started)}, provider calls: {simulator.stats()['requests']}")
    assert len(started) == 1 and simulator.stats()["requests"] == 1


def test_rate_limited_task_is_retried_by_the_state_machine_then_succeeds(
    stack: LocalStack, demo: Any, simulator: Any
) -> None:
    # Given a provider that rate-limits the first call
    simulator.set_faults({"script": ["429"]})
    # When a job runs
    job_id = jobs.enqueue(
        deps.repos().jobs, deps.get_settings().jobs_queue_url or "", principal=PRINCIPAL, kind="generate", request=SKILL
    )
    item = wait_for(job_id, {"succeeded", "failed"})
    # Then the Retry on ProviderRateLimited ran the task again and the job succeeded
    print(f"provider calls: {simulator.stats()['requests']} (1 rate-limited, 1 ok)")
    assert item["status"] == "succeeded" and simulator.stats()["requests"] == 2


def test_exhausted_retries_fall_back_then_degrade_to_the_static_answer(
    stack: LocalStack, demo: Any, simulator: Any
) -> None:
    # Given a provider that fails every call with a server error
    simulator.set_faults({"script": ["500"] * 10})
    # When a job runs
    job_id = jobs.enqueue(
        deps.repos().jobs, deps.get_settings().jobs_queue_url or "", principal=PRINCIPAL, kind="generate", request=SKILL
    )
    item = wait_for(job_id, {"succeeded", "failed"}, timeout_s=90)
    # Then Run called the primary once plus MaxAttempts retries (Step Functions counts retries, not
    # tries), RunFallback the fallback model as often, and Degrade served the template's static answer
    retries = run_task_max_attempts(stack, "ProviderError")
    assert run_task_max_attempts(stack, "ProviderError", "RunFallback") == retries
    calls = simulator.stats()["requests"]
    print(f"provider calls: {calls} (Run 1 + {retries} retries, RunFallback 1 + {retries} retries), then Degrade")
    assert calls == 2 * (1 + retries)
    assert item["status"] == "succeeded", item
    result = item["result"]
    assert (result["served_by"], result["degraded_reason"], result["fallback"]) == (
        "static_answer",
        "provider_error",
        True,
    )
    assert result["model"] is None and result["cost_micros"] == 0
    deps.templates().get("skill_assessment").output_model.model_validate(result["output"])  # or raises
    assert states_entered(stack, job_id) == [
        "MarkProcessing",
        "Run",
        "RunFallback",
        "Degrade",
        "Persist",
        "Done",
    ]
    # And every attempt is a zero-cost ledger row numbered by stage and retry, then the degraded answer's row
    stage = [r * MAX_ATTEMPTS for r in range(1 + retries)]
    assert job_ledger(stack, job_id) == [
        *[(STAGE_BASE["primary"] + n, "gpt-4o-mini", "failure", 0) for n in stage],
        *[(STAGE_BASE["fallback"] + n, "gpt-4.1-mini", "failure", 0) for n in stage],
        (STAGE_BASE["degraded"], "static-answer", "fallback", 0),
    ]
    assert [a for a, *_ in job_ledger(stack, job_id)] == [0, 10, 20, 100, 110, 120, 200]


def test_a_caller_error_goes_straight_to_record_failure(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given a provider whose content filter refuses the input
    simulator.set_faults({"script": ["content_filter"] * 5})
    # When a job runs
    job_id = jobs.enqueue(
        deps.repos().jobs, deps.get_settings().jobs_queue_url or "", principal=PRINCIPAL, kind="generate", request=SKILL
    )
    item = wait_for(job_id, {"succeeded", "failed"})
    # Then the job failed with the domain error's class, after one provider call: no retry, no
    # fallback model and no static answer can fix the content
    assert item["status"] == "failed", item
    assert item["error"]["type"] == "ContentFiltered" and item["error"]["cause"]
    assert simulator.stats()["requests"] == 1
    assert states_entered(stack, job_id) == ["MarkProcessing", "Run", "RecordFailure", "Failed"]
    # And its one attempt is a zero-cost failure row
    assert job_ledger(stack, job_id) == [(0, "gpt-4o-mini", "failure", 0)]


def test_poison_message_is_reported_alone_and_reaches_the_dlq(stack: LocalStack, demo: Any) -> None:
    from infra.local.runtime import _sqs_record

    # Given a batch with one unreadable message and one good one
    queue = deps.get_settings().jobs_queue_url
    good = jobs.JobMessage(job_id="01JOBGOOD0000000000000000000", kind="generate", principal=PRINCIPAL, request=SKILL)
    deps.repos().jobs.create(
        good.job_id, tenant_id="demo", created_at="2026-11-22T00:00:00+00:00", attributes={"kind": "generate"}
    )
    records = [
        _sqs_record(
            {"MessageId": "bad", "ReceiptHandle": "r1", "Body": "{not json"}, "arn:aws:sqs:us-east-1:123456789012:q"
        ),
        _sqs_record(
            {"MessageId": "good", "ReceiptHandle": "r2", "Body": good.model_dump_json()},
            "arn:aws:sqs:us-east-1:123456789012:q",
        ),
    ]
    # When the dispatcher gets the batch
    response = stack.invoke("scoring_dispatch", {"Records": records})
    # Then only the poison message is reported failed, and the good job still runs
    assert response == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert wait_for(good.job_id, {"succeeded", "failed"})["status"] == "succeeded"
    # And a poison message sent to the queue ends in the DLQ after the receive count
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=queue, MessageBody="{not json")
    dlq_url = next(u for u in sqs.list_queues()["QueueUrls"] if "Dead" in u or "DLQ" in u.upper())
    deadline = time.monotonic() + 30
    moved = 0
    while time.monotonic() < deadline and not moved:
        moved = len(sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10).get("Messages", []))
        time.sleep(0.5)
    print(f"poison message moved to DLQ: {bool(moved)}")
    assert moved == 1
