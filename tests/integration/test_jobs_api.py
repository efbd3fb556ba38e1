"""POST /v1/jobs and GET /v1/jobs/{job_id} on the embedded runtime.

The whole path runs locally: route table → authorizer → jobs handler → SQS → dispatcher →
Step Functions (moto's interpreter) → workflow Lambda → simulated provider.
"""

from __future__ import annotations

import time
from typing import Any

import boto3

from aigateway import deps
from aigateway.governance.config import RateLimitRule
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client, Reply
from tests.integration.governance_support import LOOSE_LIMITS, configure, ledger_rows, skill
from tests.integration.test_generate import SKILL


def submit(client: Client, body: dict[str, Any] = SKILL, key: str | None = None) -> Reply:
    return client.post("/v1/jobs", body, headers={"Idempotency-Key": key} if key else None)


def wait_until_ended(client: Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = client.get(f"/v1/jobs/{job_id}")
        assert reply.status == 200, reply.body
        if reply.body["status"] in ("succeeded", "failed"):
            return dict(reply.body)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout_s} s")


def job_rows(tenant_id: str) -> list[dict[str, Any]]:
    """Every job item of the tenant (the State table's gsi1 lists them by time)."""
    s = deps.get_settings()
    return deps.dynamo().query_all(s.state_table, "gsi1pk = :p", {":p": f"TENANT#{tenant_id}#JOBS"}, index="gsi1")


def queued_messages() -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=deps.get_settings().jobs_queue_url, AttributeNames=["All"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def executions(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.resources is not None
    arn = stack.resources.state_machines["jobs"]
    return list(boto3.client("stepfunctions").list_executions(stateMachineArn=arn)["executions"])


def test_a_submitted_job_is_accepted_then_runs_and_its_result_can_be_read(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a template request
    # When it is submitted as a job
    reply = submit(client)
    # Then it is accepted at once: 202, queued, with where to poll it and the rate-limit status
    assert reply.status == 202, reply.body
    job_id = reply.body["job_id"]
    assert reply.body["status"] == "queued" and reply.body["kind"] == "generate"
    assert reply.body["links"] == {"self": f"/v1/jobs/{job_id}"}
    assert reply.headers["location"] == f"/v1/jobs/{job_id}"
    assert int(reply.headers["x-ratelimit-remaining"]) >= 0
    # And the local runtime runs it to success, with the template's output as its result
    job = wait_until_ended(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["job_id"] == job_id and job["kind"] == "generate" and job["error"] is None
    assert job["created_at"] == reply.body["created_at"] and job["updated_at"] >= job["created_at"]
    result = job["result"]
    assert result["template"] == "skill_assessment" and 0 <= result["output"]["score"] <= 100
    assert result["provider"] == "simulated" and result["request_id"] == job_id
    # And the run was billed once, to the jobs feature
    assert simulator.stats()["requests"] == 1
    assert [(r["feature"], r["outcome"]) for r in ledger_rows("demo")] == [("jobs", "success")]
    # And the stored request stays inside: the API shows no stored-only attributes
    assert "request" not in job and "tenant_id" not in job


def test_bad_input_is_refused_now_with_no_job_row_and_no_message(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    variables = dict(skill(0)["variables"])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**SKILL, "template": "no_such_template"}, 404, "unknown_template"),
        ({**SKILL, "variables": {"skill": "SQL"}}, 422, "validation_error"),
        ({**SKILL, "variables": {**variables, "extra": "x"}}, 422, "validation_error"),
        ({**SKILL, "model_profile": "psychic"}, 400, "unknown_model"),
        ({**SKILL, "version": 999}, 404, "unknown_template"),
        ({"template": "skill_assessment", "surprise": 1}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        # Given a request that could never run / When submitted
        reply = submit(client, body)
        # Then it is refused synchronously with a machine-readable code
        assert reply.status == status, (body, reply.body)
        assert reply.body["error"]["code"] == code, (body, reply.body)
    # And nothing was recorded, queued or run
    time.sleep(0.5)  # give the poller a chance to pick up anything that was (wrongly) queued
    assert job_rows("demo") == [] and queued_messages() == 0
    assert executions(stack) == [] and simulator.stats()["requests"] == 0


def test_another_tenants_job_is_not_found_admins_included(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given a job of tenant demo (whose key is an admin key) and a job of tenant acme
    acme = Client(
        client.gateway,
        seed_demo_tenant("aig_acme_member_key_jobs_0001", tenant_id="acme", user_id="acme-user", role="member").api_key,
    )
    demo_job = submit(client).body["job_id"]
    acme_job = submit(acme).body["job_id"]
    # When each tenant asks for the other's job
    acme_asks = acme.get(f"/v1/jobs/{demo_job}")
    demo_asks = client.get(f"/v1/jobs/{acme_job}")
    nobody = client.get("/v1/jobs/01NOSUCHJOB000000000000000")
    # Then both get 404 not_found — exactly what an id that does not exist gets (never 403)
    for reply in (acme_asks, demo_asks, nobody):
        assert reply.status == 404, reply.body
        assert reply.body["error"]["code"] == "not_found" and reply.body["error"]["field"] == "job_id"
    # And each still sees its own
    assert wait_until_ended(client, demo_job)["status"] == "succeeded"
    assert wait_until_ended(acme, acme_job)["status"] == "succeeded"


def test_a_malformed_job_id_is_a_validation_error(client: Client, stack: LocalStack) -> None:
    reply = client.get("/v1/jobs/not-a-job!")
    assert reply.status == 422 and reply.body["error"]["code"] == "validation_error"


def test_an_idempotent_submit_returns_the_same_job_and_enqueues_once(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a job submitted with an Idempotency-Key
    first = submit(client, key="nightly-2026-11-22")
    # When the client retries with the same key
    second = submit(client, key="nightly-2026-11-22")
    # Then it gets the same job id (a replay), and there is one job, one execution, one provider call
    assert first.status == second.status == 202
    assert second.body == first.body and second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    job = wait_until_ended(client, first.body["job_id"])
    assert job["status"] == "succeeded"
    rows, runs = job_rows("demo"), executions(stack)
    print(
        f"submits: 2, job rows: {len(rows)}, executions: {len(runs)}, provider calls: {simulator.stats()['requests']}"
    )
    assert [r["job_id"] for r in rows] == [first.body["job_id"]]
    assert [e["name"] for e in runs] == [first.body["job_id"]]
    assert simulator.stats()["requests"] == 1
    # And the same key with a different request is refused
    other = submit(client, {**SKILL, "model_profile": "creative"}, key="nightly-2026-11-22")
    assert other.status == 422 and other.body["error"]["code"] == "idempotency_key_reused"


def test_the_callers_rate_limits_apply_at_submit_under_the_jobs_feature(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a per-key limit of 2 jobs an hour (the generate feature is not limited by it)
    jobs_limit = RateLimitRule(scope="key", feature="jobs", limit=2, period_s=3600)
    configure("demo", rate_limits=(*LOOSE_LIMITS, jobs_limit))
    # When three jobs are submitted
    replies = [submit(client, skill(i)) for i in range(3)]
    # Then two are accepted and the third is refused with 429 naming the jobs limit, before any row
    assert [r.status for r in replies] == [202, 202, 429], [r.body for r in replies]
    assert replies[2].body["error"]["code"] == "rate_limited" and replies[2].body["error"]["limit"] == "key:jobs"
    assert int(replies[2].headers["retry-after"]) >= 1
    assert [r.headers["x-ratelimit-remaining"] for r in replies[:2]] == ["1", "0"]
    assert len(job_rows("demo")) == 2
    # And generate, a different feature, is still served
    assert client.post("/v1/generate", SKILL).status == 200
    for reply in replies[:2]:
        assert wait_until_ended(client, reply.body["job_id"])["status"] == "succeeded"


def test_a_job_sqs_refuses_is_recorded_failed_and_the_caller_gets_503(
    client: Client, stack: LocalStack, monkeypatch: Any
) -> None:
    # Given SQS refusing every message
    from aigateway import jobs

    class Refusing:
        def send_message_batch(self, **_: Any) -> Any:
            raise RuntimeError("SQS is unavailable")

    monkeypatch.setattr(jobs, "_sqs", lambda: Refusing())
    # When a job is submitted
    reply = submit(client)
    # Then the caller is told to retry, and the job is not left queued with no message to run it
    assert reply.status == 503 and reply.body["error"]["code"] == "queue_unavailable", reply.body
    (row,) = job_rows("demo")
    assert row["status"] == "failed" and row["error"]["type"] == "EnqueueFailed"
    assert queued_messages() == 0
