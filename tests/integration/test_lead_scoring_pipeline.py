"""The lead scoring pipeline end to end on the embedded runtime, under the failures it must survive.

POST /v1/leads/score → Jobs queue → scoring dispatcher → Step Functions (moto's interpreter) →
workflow Lambda (LLM scorer, fallback model, rules scorer) → Persist (audit record + job) and the
ledger. Each test drives it through the public API and checks the books afterwards: one score per
job, one execution per job, one ledger row per attempt, and explanations that add up and quote
only the lead.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

import boto3
import pytest

from aigateway import deps
from aigateway.auth import Principal
from aigateway.jobs import JobMessage
from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.leads_support import (
    RULES_MODEL,
    DeliveryLog,
    dead_letter_queue_url,
    duplicate_attempts,
    executions,
    history,
    integrity_problems,
    job_reply,
    jobs_pages,
    lead_reply,
    queue_depth,
    request_scores,
    rows_by_request,
    scoring_rows,
    simple_leads,
    thresholds,
    upsert,
    varied_leads,
    wait_drained,
    wait_executions_closed,
    wait_jobs,
)
from tests.integration.test_provider_scripted import completion

PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4.1-mini"  # lead_scoring's chain (the analytical profile)
DEGRADED_ATTEMPT = 200  # the workflow numbers the Degrade stage's ledger rows from 200


def queue_url() -> str:
    url = deps.get_settings().jobs_queue_url
    assert url
    return url


def job_message(item: dict[str, Any]) -> JobMessage:
    """The message a stored job was queued with (kind, request and principal are kept on the row)."""
    return JobMessage(
        job_id=item["job_id"],
        kind=item["kind"],
        principal=item["principal"],
        request=item["request"],
        run=int(item.get("runs", 1)) - 1,
    )


# ---------------------------------------------------------------------------------------------------
# 1. At-least-once delivery
# ---------------------------------------------------------------------------------------------------


def test_redelivered_score_jobs_run_once_and_are_billed_once(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given 30 stored leads, and a queue that delivers every job message one to three times
    # (seeded: the extra copies carry the very same body, as a producer's retried send or SQS's
    # at-least-once delivery would)
    leads = simple_leads(30, prefix="redeliver")
    upsert(client, leads)
    log = DeliveryLog(stack).install()
    rng = random.Random(20261122)
    # When they are scored through the API
    started = time.monotonic()
    job_of = request_scores(client, [lead["lead_id"] for lead in leads])
    sqs = boto3.client("sqs")
    copies: dict[str, int] = {}
    for job_id in job_of.values():
        copies[job_id] = rng.randint(1, 3)
        body = job_message(deps.repos().jobs.get(job_id) or {}).model_dump_json()
        for _ in range(copies[job_id] - 1):
            sqs.send_message(QueueUrl=queue_url(), MessageBody=body)
    items = wait_jobs(list(job_of.values()), timeout_s=120)
    # (and every fifth message comes once more after its job has ended, as a redelivery after a
    # lost delete would)
    late = list(job_of.values())[::5]
    for job_id in late:
        copies[job_id] += 1
        sqs.send_message(QueueUrl=queue_url(), MessageBody=job_message(items[job_id]).model_dump_json())
    wait_drained(queue_url())
    time.sleep(1.0)  # a copy that started a second execution would show by now
    elapsed = time.monotonic() - started

    # Then every copy was delivered (none had to be redelivered: the dispatcher accepted them all)
    delivered = log.per_job()
    runs = executions(stack)
    rows = scoring_rows()
    by_request = rows_by_request(rows)
    # Each provider answer (HTTP 200) must be charged once: a charge is a success row.
    answered = int(simulator.stats()["by_status"].get("200", 0))
    charged = [r for r in rows if r["outcome"] == "success"]
    failed_rows = Counter(str(r.get("error_code")) for r in rows if r["outcome"] != "success")
    drift = len(charged) - answered
    print(
        f"\nleads: {len(leads)}, messages sent: {sum(copies.values())} "
        f"(jobs by copies {dict(sorted(Counter(copies.values()).items()))}, {len(late)} after the job ended), "
        f"deliveries: {sum(delivered.values())}, "
        f"executions: {len(runs)}, ledger rows: {len(rows)} ({len(charged)} charged, failures {dict(failed_rows)}), "
        f"provider answers: {answered}, drift: {drift}, elapsed: {elapsed:.1f}s"
    )
    assert log.failed == [], log.failed
    assert dict(delivered) == copies
    # And exactly one succeeded job per lead
    assert {i["status"] for i in items.values()} == {"succeeded"}, {j: i["status"] for j, i in items.items()}
    succeeded, _ = jobs_pages(client, "succeeded", limit=200)
    per_lead = Counter(j["lead_id"] for j in succeeded)
    assert per_lead == Counter({lead["lead_id"]: 1 for lead in leads}), per_lead
    assert all(j["runs"] == 1 for j in succeeded)
    # And one workflow execution per job, named by the job id
    names = Counter(e["name"] for e in runs)
    assert names == Counter(job_of.values()), names
    assert {e["status"] for e in runs} == {"SUCCEEDED"}
    # And one audit record per job, the lead's latest score being that job's
    for lead_id, job_id in job_of.items():
        records = history(client, lead_id)
        assert [r["job_id"] for r in records] == [job_id], (lead_id, records)
        latest = lead_reply(client, lead_id)["score"]
        assert latest is not None and latest["job_id"] == job_id and latest["score"] == records[0]["score"]
    # And one ledger row per attempt: no (request id, attempt) twice, rows only for these jobs,
    # exactly one charged row per job, and as many charges as the provider gave answers (a failed
    # attempt, e.g. a timeout on this busy machine, is its own uncharged row and is retried)
    assert duplicate_attempts(rows) == []
    assert set(by_request) == set(job_of.values()), set(by_request) ^ set(job_of.values())
    for job_id, group in by_request.items():
        assert [r["outcome"] for r in group].count("success") == 1, (job_id, group)
    assert drift == 0
    assert len(charged) == len(leads)


# ---------------------------------------------------------------------------------------------------
# 2. A poison message
# ---------------------------------------------------------------------------------------------------


def test_poison_messages_go_to_the_dlq_without_holding_back_their_batch(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given three stored leads with score jobs recorded, and the Jobs queue's DLQ read from its
    # RedrivePolicy
    leads = simple_leads(3, prefix="poison")
    upsert(client, leads)
    dlq_url, max_receives = dead_letter_queue_url(queue_url())
    log = DeliveryLog(stack).install()
    good = score_jobs_without_messages([lead["lead_id"] for lead in leads])
    poisons = [
        "{not json: a truncated message",
        json.dumps({"job_id": "01FOREIGN", "kind": "score_lead", "note": "JSON, but not a job message"}),
    ]
    # When the poison and the good messages arrive in one batch (all become visible together)
    entries = [{"Id": f"poison{i}", "MessageBody": p, "DelaySeconds": 1} for i, p in enumerate(poisons)] + [
        {"Id": f"good{i}", "MessageBody": m.model_dump_json(), "DelaySeconds": 1} for i, m in enumerate(good)
    ]
    sent = boto3.client("sqs").send_message_batch(QueueUrl=queue_url(), Entries=entries)
    assert not sent.get("Failed"), sent
    started = time.monotonic()
    items = wait_jobs([m.job_id for m in good], timeout_s=60)
    # (a poison message comes back after each failed receive, until its receive count moves it)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and queue_depth(dlq_url) < len(poisons):
        time.sleep(0.2)
    dlq_depth = queue_depth(dlq_url)
    elapsed = time.monotonic() - started
    receives = {p: [d.receive_count for d in log.deliveries if d.body == p] for p in poisons}
    first_batch = log.batches[min(d.batch for d in log.deliveries if d.body in poisons)]
    moved = boto3.client("sqs").receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, AttributeNames=["All"])
    bodies = sorted(m["Body"] for m in moved.get("Messages", []))
    print(
        f"\nmaxReceiveCount: {max_receives}, poison receive counts: {list(receives.values())}, "
        f"first batch: {len(first_batch)} messages, DLQ depth: {dlq_depth}, jobs queue depth: "
        f"{queue_depth(queue_url())}, good deliveries: {sorted(log.per_job().values())}, elapsed: {elapsed:.1f}s"
    )
    # Then the good jobs were scored once each, though the poison shared their batch
    assert set(poisons) <= set(first_batch) and len(first_batch) == len(entries), log.batches
    assert {i["status"] for i in items.values()} == {"succeeded"}, items
    good_deliveries = {j: n for j, n in log.per_job().items() if j != "01FOREIGN"}
    assert good_deliveries == {m.job_id: 1 for m in good}  # partial batch failure: not redelivered
    for message in good:
        assert [r["job_id"] for r in history(client, message.request["lead_id"])] == [message.job_id]
    # And each poison message was received exactly maxReceiveCount times, then moved to the DLQ
    assert all(counts == list(range(1, max_receives + 1)) for counts in receives.values()), receives
    assert dlq_depth == len(poisons) and bodies == sorted(poisons)
    assert queue_depth(queue_url()) == 0
    assert sorted(e["name"] for e in executions(stack)) == sorted(m.job_id for m in good)


def score_jobs_without_messages(lead_ids: list[str]) -> list[JobMessage]:
    """Records a score job per lead, as POST /v1/leads/score does, but leaves queuing to the test."""
    principal = Principal(tenant_id="demo", user_id="demo-admin", key_id="poison-test", role="admin")
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    messages = []
    for i, lead_id in enumerate(lead_ids):
        request = {"lead_id": lead_id, "trigger": "api"}
        job_id = f"01POISONGOOD{i:014d}"
        attributes = {"kind": "score_lead", "request": request, "principal": principal.model_dump(mode="json")}
        deps.repos().jobs.create(job_id, tenant_id="demo", created_at=at, attributes=attributes)
        messages.append(JobMessage(job_id=job_id, kind="score_lead", principal=principal, request=request))
    return messages


# ---------------------------------------------------------------------------------------------------
# 3. The provider is down for the whole run
# ---------------------------------------------------------------------------------------------------


def test_with_the_provider_down_every_lead_is_scored_by_the_rules(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given ten stored leads and a provider that fails every call with a server error
    leads = {lead["lead_id"]: lead for lead in simple_leads(10, prefix="outage")}
    upsert(client, list(leads.values()))
    simulator.set_faults({"rate": 1.0, "kinds": ["500"]})
    criteria, hot, warm = thresholds()
    # When they are scored
    started = time.monotonic()
    job_of = request_scores(client, list(leads))
    items = wait_jobs(list(job_of.values()), timeout_s=120)
    elapsed = time.monotonic() - started
    rows = scoring_rows()
    by_request = rows_by_request(rows)
    calls = simulator.stats()["requests"]
    print(f"\nleads: {len(leads)}, provider calls: {calls}, ledger rows: {len(rows)}, elapsed: {elapsed:.1f}s")
    for lead_id, job_id in job_of.items():
        group = by_request.get(job_id, [])
        failures = [r for r in group if r["outcome"] == "failure"]
        took = (items[job_id]["updated_at"], items[job_id]["created_at"])
        print(
            f"  {lead_id}: {items[job_id]['status']}, failed attempts {[int(r['attempt']) for r in failures]}, "
            f"then {[r['model'] for r in group if r['outcome'] != 'failure']}, "
            f"reason {(items[job_id].get('result') or {}).get('degraded_reason')}, "
            f"{_seconds(*took):.1f}s"
        )
    # Then every job succeeded, and every lead has a rules score with its reason and evidence
    assert {i["status"] for i in items.values()} == {"succeeded"}, {j: i.get("error") for j, i in items.items()}
    for lead_id, job_id in job_of.items():
        score = lead_reply(client, lead_id)["score"]
        assert score is not None and score["job_id"] == job_id
        assert (score["scorer"], score["model"], score["served_by"]) == ("rules", RULES_MODEL, "static_answer"), score
        assert score["degraded_reason"], score
        assert score == items[job_id]["result"], (score, items[job_id]["result"])  # the job's result is the score
        assert any(f["evidence"] for f in score["factors"]) and score["score"] > 0, score
        assert integrity_problems(score, leads[lead_id], criteria=criteria, hot=hot, warm=warm) == []
    # And the ledger holds each failed attempt (unbilled) and one free rules-scorer row per job
    assert duplicate_attempts(rows) == [] and set(by_request) == set(job_of.values())
    for group in by_request.values():
        # (a job that reached a model after its circuit opened made no call there, so has no row)
        failures = [r for r in group if r["outcome"] == "failure"]
        assert all(r["model"] in (PRIMARY, FALLBACK) and int(r["cost_micros"]) == 0 for r in failures), failures
        rules = [r for r in group if r["outcome"] != "failure"]
        assert [(r["model"], r["outcome"], int(r["cost_micros"]), int(r["attempt"])) for r in rules] == [
            (RULES_MODEL, "fallback", 0, DEGRADED_ATTEMPT)
        ], rules
    assert calls > 0 and sum(r["outcome"] == "failure" for r in rows) == calls  # one row per provider call


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


# ---------------------------------------------------------------------------------------------------
# 4. Explanation integrity
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["llm", "rules"])
def test_every_explanation_adds_up_and_quotes_only_the_lead(
    client: Client, stack: LocalStack, simulator: Any, path: str
) -> None:
    # Given 40 varied leads (industries, titles, sizes, event types and dates, notes with quotes,
    # odd whitespace, markup and PII, custom fields; some nearly empty), and for the rules path a
    # provider that fails every call
    leads = {lead["lead_id"]: lead for lead in varied_leads(40, seed=7 if path == "llm" else 8, prefix=path)}
    upsert(client, list(leads.values()))
    if path == "rules":
        simulator.set_faults({"rate": 1.0, "kinds": ["503"]})
    criteria, hot, warm = thresholds()
    # When every lead is scored
    started = time.monotonic()
    job_of = request_scores(client, list(leads))
    items = wait_jobs(list(job_of.values()), timeout_s=120)
    elapsed = time.monotonic() - started
    # Then every job succeeded, on the path this run takes
    assert {i["status"] for i in items.values()} == {"succeeded"}, {j: i.get("error") for j, i in items.items()}
    scores = {lead_id: lead_reply(client, lead_id)["score"] for lead_id in leads}
    scorers = Counter(s["scorer"] for s in scores.values())
    tiers = Counter(s["tier"] for s in scores.values())
    factors = sum(len(s["factors"]) for s in scores.values())
    quotes = sum(len(f["evidence"]) for s in scores.values() for f in s["factors"])
    problems = {
        lead_id: found
        for lead_id, score in scores.items()
        if (found := integrity_problems(score, leads[lead_id], criteria=criteria, hot=hot, warm=warm))
    }
    print(
        f"\n{path}: scores checked: {len(scores)}, factors: {factors}, quotes: {quotes}, scorers: {dict(scorers)}, "
        f"tiers: {dict(tiers)}, range: {min(s['score'] for s in scores.values())}–"
        f"{max(s['score'] for s in scores.values())}, problems: {len(problems)}, elapsed: {elapsed:.1f}s"
    )
    for lead_id, found in problems.items():
        print(f"  {lead_id}: {found}")
    assert scorers == Counter({path: len(leads)}), {k: (s["scorer"], s["degraded_reason"]) for k, s in scores.items()}
    # And every explanation adds up to its score, in its tier, quoting only the lead's own text
    assert problems == {}
    assert quotes > 0 and len(tiers) >= 2  # the set really varies
    # And the job's result, the lead's latest score and its audit record are the same score
    for lead_id, job_id in job_of.items():
        assert items[job_id]["result"] == scores[lead_id]
        assert history(client, lead_id) == [scores[lead_id]]


def unbacked_answer(criteria: list[str]) -> str:
    """A judgement that fits the response schema but quotes text the lead does not contain."""
    return json.dumps(
        {
            "factors": [
                {"criterion": c, "rating": 1.0, "evidence": ["Fortune 500 bank with 90,000 staff"]} for c in criteria
            ],
            "rationale": "A perfect prospect.",
            "confidence": 0.99,
        }
    )


def test_an_answer_the_lead_does_not_back_is_refused(client: Client, stack: LocalStack, simulator: Any) -> None:
    criteria, hot, warm = thresholds()
    leads = {lead["lead_id"]: lead for lead in simple_leads(3, prefix="unbacked")}
    upsert(client, list(leads.values()))
    bad = completion(unbacked_answer(criteria), prompt=1200, completion_tokens=150)
    cases = [
        # (lead, what the provider does, expected: scorer, served_by, ledger (attempt, model, outcome))
        (
            "unbacked-000",
            "one schema-valid answer whose quotes are not in the lead",
            ("llm", "primary", [(0, PRIMARY, "failure"), (1, PRIMARY, "success")]),
            lambda: simulator.queue_response(200, bad),
        ),
        (
            "unbacked-001",
            "one schema-invalid answer",
            ("llm", "primary", [(0, PRIMARY, "failure"), (1, PRIMARY, "success")]),
            lambda: simulator.set_faults({"script": ["schema_invalid"]}),
        ),
        (
            "unbacked-002",
            "only unbacked answers, repairs included, from both models",
            (
                "rules",
                "static_answer",
                [
                    (0, PRIMARY, "failure"),
                    (1, PRIMARY, "failure"),
                    (100, FALLBACK, "failure"),
                    (101, FALLBACK, "failure"),
                    (DEGRADED_ATTEMPT, RULES_MODEL, "fallback"),
                ],
            ),
            lambda: [simulator.queue_response(200, bad) for _ in range(4)],
        ),
    ]
    for lead_id, fault, (scorer, served_by, ledger), script in cases:
        # Given a provider that gives this lead's job such answers
        simulator.reset_faults()
        script()
        # When the lead is scored (one job at a time: the scripted answers are the next calls')
        job_id = request_scores(client, [lead_id])[lead_id]
        item = wait_jobs([job_id], timeout_s=60)[job_id]
        score = lead_reply(client, lead_id)["score"]
        rows = rows_by_request(scoring_rows()).get(job_id, [])
        seen = [(int(r["attempt"]), r["model"], r["outcome"]) for r in rows]
        print(
            f"\n{lead_id} ({fault}): {item['status']}, scorer {score and score['scorer']}, "
            f"served_by {score and score['served_by']}, ledger {seen}, "
            f"errors {[r.get('error_code') for r in rows if r['outcome'] != 'success']}"
        )
        # Then the invalid answer was refused: the job succeeded by a repair or by the rules
        assert item["status"] == "succeeded", item
        assert (score["scorer"], score["served_by"]) == (scorer, served_by), score
        assert seen == ledger
        refused = [r for r in rows if r["outcome"] == "failure"]
        assert all(r["error_code"] == "invalid_model_output" and int(r["cost_micros"]) > 0 for r in refused), refused
        # And nothing of the refused answer reached the score: its explanation is intact
        assert "Fortune 500" not in json.dumps(score)
        assert integrity_problems(score, leads[lead_id], criteria=criteria, hot=hot, warm=warm) == []


# ---------------------------------------------------------------------------------------------------
# 5. Cancel and retry
# ---------------------------------------------------------------------------------------------------


def test_cancelled_and_failed_score_jobs_can_be_run_again(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given five leads: one whose scoring call is slow, one that scores normally and three whose
    # first call the provider's content filter refuses (a caller error: the job fails at once)
    leads = simple_leads(5, prefix="ops")
    names = {lead["lead_id"]: lead["company"] for lead in leads}
    slow, quick, *filtered = list(names)
    upsert(client, leads)
    simulator.set_faults(
        {"marked": {names[slow]: ["latency=4000"], **{names[lead_id]: ["content_filter"] for lead_id in filtered}}}
    )
    job_of = request_scores(client, list(names))
    slow_job, quick_job = job_of[slow], job_of[quick]
    failed_jobs = [job_of[lead_id] for lead_id in filtered]

    # When the slow job is cancelled while it runs
    wait_jobs([slow_job], statuses=("processing",), timeout_s=30)
    cancelled = client.post(f"/v1/jobs/{slow_job}/cancel")
    again = client.post(f"/v1/jobs/{slow_job}/cancel")
    # Then it is cancelled at once, and cancelling it again is refused
    assert cancelled.status == 200, cancelled.body
    assert cancelled.body["status"] == "cancelled" and cancelled.body["error"]["type"] == "JobCancelled"
    assert again.status == 409 and again.body["error"]["code"] == "job_finished", again.body
    # And a job that succeeded cannot be cancelled either
    assert wait_jobs([quick_job])[quick_job]["status"] == "succeeded"
    late = client.post(f"/v1/jobs/{quick_job}/cancel")
    assert late.status == 409 and late.body["error"]["code"] == "job_finished", late.body
    # And once the slow call has come back, the cancelled job still wrote no score
    closed = wait_executions_closed(stack, {slow_job})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not rows_by_request(scoring_rows()).get(slow_job):
        time.sleep(0.2)
    time.sleep(1.0)
    slow_rows = rows_by_request(scoring_rows()).get(slow_job, [])
    print(f"\ncancelled job: execution {closed[slow_job]}, ledger {[(r['attempt'], r['outcome']) for r in slow_rows]}")
    assert job_reply(client, slow_job)["status"] == "cancelled"
    assert lead_reply(client, slow)["score"] is None and history(client, slow) == []

    # And the failed jobs failed with the filter's error, and are listed by GET /v1/jobs?status=failed
    ended = wait_jobs(failed_jobs)
    assert {(i["status"], i["error"]["type"]) for i in ended.values()} == {("failed", "ContentFiltered")}, ended
    assert sorted(j["job_id"] for j in jobs_pages(client, "failed", limit=50)[0]) == sorted(failed_jobs)
    assert [j["job_id"] for j in jobs_pages(client, "cancelled", limit=50)[0]] == [slow_job]
    for lead_id in filtered:
        assert lead_reply(client, lead_id)["score"] is None

    # When the cancelled job is retried
    retried = client.post(f"/v1/jobs/{slow_job}/retry")
    # Then it runs again under the same id, as its second run, and succeeds
    assert retried.status == 202, retried.body
    assert (retried.body["job_id"], retried.body["status"], retried.body["runs"]) == (slow_job, "queued", 2)
    rerun = wait_jobs([slow_job], statuses=("succeeded", "failed"), min_runs=2, timeout_s=60)[slow_job]
    assert (rerun["status"], int(rerun["runs"])) == ("succeeded", 2), rerun
    final = job_reply(client, slow_job)
    assert final["runs"] == 2 and final["error"] is None and final["result"]["job_id"] == slow_job
    # And its score is the retry's, its ledger rows carry the run's request id <job>-r1
    records = history(client, slow)
    assert [r["job_id"] for r in records] == [slow_job] and lead_reply(client, slow)["score"] == records[0]
    by_request = rows_by_request(scoring_rows())
    assert by_request.get(f"{slow_job}-r1"), sorted(by_request)
    assert [r["outcome"] for r in by_request[f"{slow_job}-r1"]] in (["success"], ["cache_hit"])
    assert duplicate_attempts(scoring_rows()) == []

    # When every failed job is retried at once
    report = client.post("/v1/jobs/retry-failed", {"kind": "score_lead"})
    # Then all three are queued again, and succeed on their second run
    assert report.status == 202, report.body
    assert sorted(report.body["retried"]) == sorted(failed_jobs) and report.body["skipped"] == 0, report.body
    rerun_all = wait_jobs(failed_jobs, statuses=("succeeded", "failed"), min_runs=2, timeout_s=60)
    print(
        f"retry-failed: retried {len(report.body['retried'])}, now "
        f"{dict(Counter(i['status'] for i in rerun_all.values()))}; executions: "
        f"{dict(Counter('retry' if e['name'].endswith('-r1') else 'first run' for e in executions(stack)))}"
    )
    assert {(i["status"], int(i["runs"])) for i in rerun_all.values()} == {("succeeded", 2)}, rerun_all
    by_request = rows_by_request(scoring_rows())
    for job_id, lead_id in zip(failed_jobs, filtered, strict=True):
        assert [r["outcome"] for r in by_request[job_id]] == ["failure"]  # the filtered first run
        assert [r["outcome"] for r in by_request[f"{job_id}-r1"]] == ["success"]
        assert [r["job_id"] for r in history(client, lead_id)] == [job_id]
    assert jobs_pages(client, "failed", limit=50)[0] == []
    # And one execution per run: the first under the job id, the retry under <job>-r1
    run_names = Counter(e["name"] for e in executions(stack))
    expected = Counter([*job_of.values(), f"{slow_job}-r1", *[f"{j}-r1" for j in failed_jobs]])
    assert run_names == expected, run_names
    # And a succeeded job is not retried again
    assert client.post(f"/v1/jobs/{slow_job}/retry").status == 409
    assert client.post("/v1/jobs/retry-failed", {}).body["retried"] == []


def test_failed_jobs_page_through_the_list_and_retry_in_chunks(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given five score jobs that failed (the provider's content filter refused each first call)
    leads = simple_leads(5, prefix="pages")
    upsert(client, leads)
    simulator.set_faults({"marked": {lead["company"]: ["content_filter"] for lead in leads}})
    job_of = request_scores(client, [lead["lead_id"] for lead in leads])
    failed = wait_jobs(list(job_of.values()))
    assert {i["status"] for i in failed.values()} == {"failed"}, failed
    # When the failed jobs are listed two to a page
    pages: list[tuple[int, list[str]]] = []
    cursor: str | None = None
    while len(pages) < 10:
        reply = client.get("/v1/jobs?status=failed&limit=2" + (f"&cursor={cursor}" if cursor else ""))
        body = reply.body if isinstance(reply.body, dict) else {}
        pages.append((reply.status, [j["job_id"] for j in body.get("items", [])]))
        cursor = body.get("next_cursor")
        if reply.status != 200 or not cursor:
            break
    # And retried two at a time (retry-failed reports a cursor while failed jobs remain)
    chunks: list[tuple[int, Any]] = []
    while len(chunks) < 10:
        reply = client.post("/v1/jobs/retry-failed", {"limit": 2})
        chunks.append((reply.status, reply.body))
        if reply.status != 202 or not reply.body["retried"]:
            break
    after = Counter((deps.repos().jobs.get(j) or {}).get("status") for j in job_of.values())
    print(
        f"\nfailed jobs: {len(job_of)}; list pages (status, ids): {pages}; job statuses after retry-failed: "
        f"{dict(after)}; retry-failed calls (status, retried): "
        f"{[(status, len(body['retried']) if status == 202 else body) for status, body in chunks]}"
    )
    # Then the pages hold every failed job once, newest first, and end with no cursor
    listed = [job_id for _, ids in pages for job_id in ids]
    assert [status for status, _ in pages] == [200, 200, 200], pages
    assert sorted(listed) == sorted(job_of.values()) and listed == sorted(listed, reverse=True), pages
    # And retry-failed re-queued every one of them, in chunks of two, each once
    assert [status for status, _ in chunks] == [202, 202, 202, 202], chunks
    retried = [job_id for _, body in chunks for job_id in body["retried"]]
    assert sorted(retried) == sorted(job_of.values()), chunks
    rerun = wait_jobs(retried, statuses=("succeeded", "failed"), min_runs=2, timeout_s=60)
    assert {(i["status"], int(i["runs"])) for i in rerun.values()} == {("succeeded", 2)}, rerun
