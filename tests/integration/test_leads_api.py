"""The leads API on the embedded runtime: upserts and their re-score triggers, validation that
writes nothing, the ranked list and score history, tenant isolation, the admin scoring settings
(and what reaches the provider), the stale re-score schedule and S3 lead-file imports.

Every score runs the real path: leads handler → SQS → dispatcher → Step Functions → workflow
Lambda → simulated provider (whose lead_scoring answer quotes the lead) → persisted score.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pytest

from aigateway import deps
from aigateway.ids import new_id
from aigateway.llm.simulated import SimulatedProvider
from aigateway.observability import logger
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client, Reply, record_provider_bodies
from tests.integration.test_jobs_api import job_rows, queued_messages, wait_until_ended

LEADS = "/v1/leads"
SCORING = "/v1/admin/tenants/{}/scoring"


def days_ago(n: int) -> str:
    return (date.today() - timedelta(days=n)).isoformat()


# Profiles the simulated scorer rates differently (its judgement is word overlap between the
# criteria and the lead): the default criteria make the first three hot, the next two warm and
# the last two cold.
PROFILES: dict[str, dict[str, Any]] = {
    "hot-1": {
        "company": "Northwind Fintech",
        "title": "VP of Sales",
        "industry": "Software",
        "size": 450,
        "source": "referral",
        "events": [{"type": "demo_request", "at": days_ago(3)}, {"type": "pricing_page", "at": days_ago(2)}],
    },
    "hot-2": {
        "company": "Northwind",
        "title": "VP of Sales",
        "industry": "Software",
        "size": 450,
        "source": "referral",
        "events": [{"type": "demo_request", "at": days_ago(3)}, {"type": "pricing_page", "at": days_ago(2)}],
    },
    "hot-3": {
        "company": "Fabrikam",
        "title": "Head of Data",
        "industry": "Software",
        "size": 900,
        "source": "inbound",
        "events": [{"type": "trial_signup", "at": days_ago(5)}],
    },
    "warm-1": {"company": "Contoso", "title": "Head of IT", "industry": "Software", "size": 450, "source": "partner"},
    "warm-2": {"company": "Contoso", "title": "Head of IT", "industry": "Software", "size": 120},
    "cold-1": {"company": "Tiny Shop", "title": "Engineer", "industry": "Retail", "size": 450},
    "cold-2": {"company": "Corner Bakery", "industry": "Retail"},
}


def put_lead(client: Client, lead_id: str, body: dict[str, Any], score: str | None = None) -> Reply:
    query = f"?score={score}" if score else ""
    return client.request("PUT", f"{LEADS}/{lead_id}{query}", body)


def finish(client: Client, job_ids: list[str]) -> list[dict[str, Any]]:
    """Waits for every job; each must succeed."""
    jobs = [wait_until_ended(client, job_id) for job_id in job_ids]
    for job in jobs:
        assert job["status"] == "succeeded", job
    return jobs


def score_now(client: Client, lead_ids: list[str]) -> list[dict[str, Any]]:
    reply = client.post(f"{LEADS}/score", {"lead_ids": lead_ids})
    assert reply.status == 202, reply.body
    assert [j["lead_id"] for j in reply.body["jobs"]] == lead_ids
    assert all(j["status"] == "queued" for j in reply.body["jobs"])
    return finish(client, [j["job_id"] for j in reply.body["jobs"]])


def lead_jobs(tenant_id: str, lead_id: str | None = None, trigger: str | None = None) -> list[dict[str, Any]]:
    """The tenant's score_lead job rows, optionally of one lead and trigger."""
    rows = [r for r in job_rows(tenant_id) if r.get("kind") == "score_lead"]
    if lead_id is not None:
        rows = [r for r in rows if r["request"]["lead_id"] == lead_id]
    if trigger is not None:
        rows = [r for r in rows if r["request"]["trigger"] == trigger]
    return rows


def admin_put_scoring(client: Client, tenant_id: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.request("PUT", SCORING.format(tenant_id), body)
    assert reply.status == 200, reply.body
    return dict(reply.body)


def member_of(client: Client, tenant_id: str) -> Client:
    key = f"aig_{tenant_id}_member_key_leads_000001"
    return Client(
        client.gateway, seed_demo_tenant(key, tenant_id=tenant_id, user_id=f"{tenant_id}-user", role="member").api_key
    )


def all_pages(client: Client, path: str, sep: str = "?") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        reply = client.get(path + (f"{sep}cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.body
        items += reply.body["items"]
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination does not end")


def imports_bucket(stack: LocalStack) -> str:
    assert stack.resources is not None
    return str(stack.resources.schedules["lead-imports"].pattern["detail"]["bucket"]["name"][0])


# --- 1. upsert semantics ---------------------------------------------------------------------------


def test_upsert_creates_updates_and_queues_a_rescore_only_when_a_trigger_field_changes(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    lead = {**PROFILES["warm-1"], "notes": "Met at the booth."}
    # Given a new lead
    # When it is PUT
    created = put_lead(client, "L-1", lead)
    # Then it is created at version 1 and a score is queued, which runs and is readable
    assert created.status == 201, created.body
    assert created.body["status"] == "created" and created.body["version"] == 1 and created.body["job_id"]
    first_job = finish(client, [created.body["job_id"]])[0]
    assert first_job["kind"] == "score_lead" and first_job["lead_id"] == "L-1"
    scored = client.get(f"{LEADS}/L-1").body
    assert scored["score"]["job_id"] == created.body["job_id"] and scored["score"]["trigger"] == "upsert"
    assert scored["lead"]["notes"] == "Met at the booth." and scored["pending_job"] is None

    # When the identical lead is PUT again (keys in another order, an explicit null)
    same = put_lead(client, "L-1", {"contact": None, **dict(reversed(list(lead.items())))})
    # Then nothing changes: unchanged, same version, nothing queued
    assert same.status == 200, same.body
    assert (same.body["status"], same.body["version"], same.body["job_id"]) == ("unchanged", 1, None)

    # Given the tenant re-scores only when the title changes
    settings = admin_put_scoring(client, "demo", {"trigger_fields": ["title"]})
    assert settings["trigger_fields"] == ["title"] and settings["version"] == 1
    # When a non-trigger field changes
    notes = put_lead(client, "L-1", {**lead, "notes": "Called back, wants a quote."})
    # Then the lead is updated, but no re-score is queued
    assert notes.status == 200, notes.body
    assert (notes.body["status"], notes.body["version"], notes.body["job_id"]) == ("updated", 2, None)
    # When the title (a trigger field) changes
    title = put_lead(client, "L-1", {**lead, "notes": "Called back, wants a quote.", "title": "CTO"})
    # Then it is updated and a re-score is queued
    assert (title.body["status"], title.body["version"]) == ("updated", 3) and title.body["job_id"], title.body
    finish(client, [title.body["job_id"]])
    # When the title changes again with score=never
    never = put_lead(client, "L-1", {**lead, "title": "CEO"}, score="never")
    assert (never.body["status"], never.body["version"], never.body["job_id"]) == ("updated", 4, None), never.body
    # When an unchanged lead is PUT with score=always
    always = put_lead(client, "L-1", {**lead, "title": "CEO"}, score="always")
    assert (always.body["status"], always.body["version"]) == ("unchanged", 4) and always.body["job_id"], always.body
    finish(client, [always.body["job_id"]])
    # And score=bogus is a validation error
    bogus = put_lead(client, "L-1", lead, score="sometimes")
    assert bogus.status == 422 and bogus.body["error"]["code"] == "validation_error", bogus.body

    # Then exactly the three jobs the replies named were created for the lead, no hidden ones
    expected = {created.body["job_id"], title.body["job_id"], always.body["job_id"]}
    rows = lead_jobs("demo", "L-1")
    print(f"jobs for L-1: {len(rows)} (expected {len(expected)}); triggers {[r['request']['trigger'] for r in rows]}")
    assert {r["job_id"] for r in rows} == expected
    # And the lead reads back at version 4 with the latest data and the latest score
    final = client.get(f"{LEADS}/L-1").body
    assert final["version"] == 4 and final["lead"]["title"] == "CEO"
    assert final["score"]["job_id"] == always.body["job_id"] and final["created_at"] <= final["updated_at"]
    history = client.get(f"{LEADS}/L-1/scores").body["items"]
    assert [h["job_id"] for h in history] == [always.body["job_id"], title.body["job_id"], created.body["job_id"]]


def test_bulk_upsert_reports_each_lead_and_queues_only_the_new_and_changed(client: Client, stack: LocalStack) -> None:
    # Given two existing leads, one of them scored
    first = client.post(
        LEADS, {"leads": [{"lead_id": "B-1", **PROFILES["cold-1"]}, {"lead_id": "B-2", "company": "x"}]}
    )
    assert first.status == 200, first.body
    assert [(i["status"], i["version"]) for i in first.body["items"]] == [("created", 1), ("created", 1)]
    finish(client, [i["job_id"] for i in first.body["items"]])
    # When a bulk upsert repeats B-1, changes B-2 and adds B-3
    body = {
        "leads": [
            {"lead_id": "B-1", **PROFILES["cold-1"]},
            {"lead_id": "B-2", "company": "y"},
            {"lead_id": "B-3", **PROFILES["warm-2"]},
        ]
    }
    second = client.post(LEADS, body)
    # Then each lead's outcome is reported in order, with a job for the changed and the new one
    assert second.status == 200, second.body
    items = second.body["items"]
    print([(i["lead_id"], i["status"], i["version"], bool(i["job_id"])) for i in items])
    assert [(i["lead_id"], i["status"], i["version"]) for i in items] == [
        ("B-1", "unchanged", 1),
        ("B-2", "updated", 2),
        ("B-3", "created", 1),
    ]
    assert items[0]["job_id"] is None and items[1]["job_id"] and items[2]["job_id"]
    finish(client, [items[1]["job_id"], items[2]["job_id"]])
    assert len(lead_jobs("demo")) == 4


def test_a_bulk_upsert_of_500_leads_is_accepted_and_repeating_it_changes_nothing(
    client: Client, stack: LocalStack
) -> None:
    # Given the largest bulk upsert allowed, not scored (more than one 100-key read of existing
    # leads), with 1 KB of notes each: ~0.6 MB, over the 256 KiB other routes accept
    leads = [{"lead_id": f"N-{i:03d}", "company": f"Company {i}", "size": i, "notes": "n" * 1000} for i in range(500)]
    assert len(json.dumps({"leads": leads})) > 256 * 1024
    started = time.monotonic()
    first = client.post(LEADS, {"leads": leads, "score": "never"})
    # When it is sent again unchanged
    second = client.post(LEADS, {"leads": leads, "score": "never"})
    print(f"500-lead bulk upsert twice: {time.monotonic() - started:.1f} s")
    # Then all were created, then all unchanged, and nothing was queued
    assert first.status == 200 and second.status == 200, (first.body, second.body)
    assert {(i["status"], i["version"]) for i in first.body["items"]} == {("created", 1)}
    assert [i["lead_id"] for i in second.body["items"]] == [lead["lead_id"] for lead in leads]
    assert {(i["status"], i["version"], i["job_id"]) for i in second.body["items"]} == {("unchanged", 1, None)}
    assert job_rows("demo") == []
    assert len(all_pages(client, f"{LEADS}?limit=200", sep="&")) == 500


def test_a_bulk_body_over_5_mib_is_413_and_writes_nothing(client: Client, stack: LocalStack) -> None:
    # Given 500 leads with 3,000-character notes of accented text (JSON-escaped as \u00e9: ~9 MB)
    leads = [{"lead_id": f"B-{i:03d}", "notes": "é" * 3000} for i in range(500)]
    # When they are upserted in one request
    reply = client.post(LEADS, {"leads": leads, "score": "never"})
    # Then the body is refused before anything is parsed or written
    assert reply.status == 413 and reply.body["error"]["code"] == "payload_too_large", reply.body
    assert client.get(f"{LEADS}/B-000").status == 404


# --- 2. bad input writes nothing ---------------------------------------------------------------------


def test_a_bulk_upsert_with_one_bad_lead_writes_none_of_them(client: Client, stack: LocalStack) -> None:
    # Given five leads, the fourth with a size that is not a number
    leads: list[dict[str, Any]] = [{"lead_id": f"V-{i}", **PROFILES["warm-1"]} for i in range(5)]
    leads[3] = {**leads[3], "size": "abc"}
    # When they are upserted in one call
    reply = client.post(LEADS, {"leads": leads})
    # Then it is refused with 422 naming the field
    assert reply.status == 422, reply.body
    assert reply.body["error"]["code"] == "validation_error" and reply.body["error"]["field"] == "leads.3.size"
    assert reply.body["request_id"]
    # And none of the other leads exists, nothing was queued
    found = [i for i in range(5) if client.get(f"{LEADS}/V-{i}").status != 404]
    print(f"leads written by the refused bulk upsert: {found}")
    assert found == [] and job_rows("demo") == [] and queued_messages() == 0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"leads": [{"lead_id": f"M-{i}"} for i in range(501)]}, "leads", "at most 500"),
        ({"leads": []}, "leads", "at least 1"),
        ({"leads": [{"lead_id": "D-1"}, {"lead_id": "D-2"}, {"lead_id": "D-1"}]}, None, "appears twice"),
        ({"leads": [{"lead_id": "bad id"}]}, "leads.0.lead_id", ""),
        ({"leads": [{"lead_id": "E-1", "colour": "red"}]}, "leads.0.colour", "not allowed"),
        ({"leads": [{"lead_id": "E-1", "events": [{"type": "demo", "at": "yesterday"}]}]}, "leads.0.events.0.at", ""),
        ({"leads": [{"lead_id": "E-1"}], "score": "maybe"}, "score", ""),
    ],
    ids=["501-leads", "no-leads", "duplicate-ids", "bad-id", "unknown-field", "bad-event-date", "bad-score-mode"],
)
def test_invalid_bulk_upserts_are_422_and_write_nothing(
    client: Client, stack: LocalStack, body: dict[str, Any], field: str | None, message: str
) -> None:
    reply = client.post(LEADS, body)
    assert reply.status == 422, reply.body
    error = reply.body["error"]
    assert error["code"] == "validation_error" and message in error["message"], error
    if field is not None:
        assert error["field"] == field, error
    assert all_pages(client, LEADS) == [] and job_rows("demo") == []


def test_score_requests_for_unknown_leads_queue_nothing(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    # Given one existing lead (scored)
    created = put_lead(client, "K-1", PROFILES["cold-2"])
    finish(client, [created.body["job_id"]])
    rows_before, requests_before = len(job_rows("demo")), simulator.stats()["requests"]
    # When a score request names it together with two ids the tenant has no lead for
    reply = client.post(f"{LEADS}/score", {"lead_ids": ["K-1", "nope-1", "nope-2"]})
    # Then it is refused with 404 unknown_leads listing exactly the unknown ids
    assert reply.status == 404, reply.body
    assert reply.body["error"]["code"] == "unknown_leads" and reply.body["error"]["unknown_ids"] == ["nope-1", "nope-2"]
    # And nothing was recorded, queued or run, not even for the known lead
    time.sleep(0.5)  # a wrongly queued job would be picked up by now
    rows_after = len(job_rows("demo"))
    print(f"job rows before {rows_before}, after {rows_after}; queue depth {queued_messages()}")
    assert rows_after == rows_before and queued_messages() == 0
    assert simulator.stats()["requests"] == requests_before


@pytest.mark.parametrize(
    "body",
    [
        {"lead_ids": ["K-1"], "leads": [{"lead_id": "K-2"}]},
        {},
        {"lead_ids": []},
        {"lead_ids": ["K-1", "K-1"]},
        {"lead_ids": [f"K-{i}" for i in range(501)]},
        {"lead_ids": ["bad id!"]},
        {"leads": [{"lead_id": "K-1"}, {"lead_id": "K-2", "size": -1}]},
    ],
    ids=["both", "neither", "empty", "duplicate", "501", "bad-id", "bad-inline-lead"],
)
def test_malformed_score_requests_are_422(client: Client, stack: LocalStack, body: dict[str, Any]) -> None:
    reply = client.post(f"{LEADS}/score", body)
    assert reply.status == 422, reply.body
    assert reply.body["error"]["code"] == "validation_error", reply.body
    assert job_rows("demo") == [] and all_pages(client, LEADS) == []


def test_bad_paths_jobs_and_cursors_are_clear_4xx(client: Client, stack: LocalStack) -> None:
    # A lead id that breaks the id pattern, in every lead route
    too_long = "x" * 65
    for reply in (
        client.get(f"{LEADS}/bad!id"),
        client.request("PUT", f"{LEADS}/{too_long}", {"company": "x"}),
        client.get(f"{LEADS}/{too_long}/scores"),
    ):
        assert reply.status == 422 and reply.body["error"]["code"] == "validation_error", reply.body
    assert all_pages(client, LEADS) == []
    # An unknown lead, and an unknown lead's history
    for path in (f"{LEADS}/nobody", f"{LEADS}/nobody/scores"):
        missing = client.get(path)
        assert missing.status == 404 and missing.body["error"]["code"] == "not_found", missing.body
    # Cancelling a job that already ended is 409 job_finished; an unknown job is 404
    job_id = put_lead(client, "C-1", PROFILES["cold-1"]).body["job_id"]
    finish(client, [job_id])
    cancel = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status == 409 and cancel.body["error"]["code"] == "job_finished", cancel.body
    assert client.get(f"/v1/jobs/{job_id}").body["status"] == "succeeded"
    for reply in (client.get(f"/v1/jobs/{new_id()}"), client.post(f"/v1/jobs/{new_id()}/cancel")):
        assert reply.status == 404 and reply.body["error"]["code"] == "not_found", reply.body
    # A cursor this API did not issue is 400 invalid_cursor; an unknown tier is 422
    for path in (f"{LEADS}?cursor=garbage", f"{LEADS}/C-1/scores?cursor=eyJ4IjoxfQ", f"{LEADS}?tier=hot&cursor=%7B%7D"):
        bad = client.get(path)
        assert bad.status == 400 and bad.body["error"]["code"] == "invalid_cursor", (path, bad.body)
    tier = client.get(f"{LEADS}?tier=lukewarm")
    assert tier.status == 422 and tier.body["error"]["field"] == "tier", tier.body


# --- 3. ranked list and history ----------------------------------------------------------------------


def test_the_ranked_list_orders_leads_by_tier_then_score_and_paginates_without_duplicates(
    client: Client, stack: LocalStack
) -> None:
    # Given leads of different profiles, scored, and one lead that is never scored
    body = {"leads": [{"lead_id": lead_id, **data} for lead_id, data in PROFILES.items()], "score": "never"}
    assert client.post(LEADS, body).status == 200
    score_now(client, list(PROFILES))
    assert put_lead(client, "unscored", {"company": "Later Inc"}, score="never").status == 201
    latest = {lead_id: client.get(f"{LEADS}/{lead_id}").body["score"] for lead_id in PROFILES}
    for lead_id, score in latest.items():
        print(f"{lead_id}: {score['score']} {score['tier']} ({score['scorer']})")
    tiers = {
        t: sorted((s["score"] for s in latest.values() if s["tier"] == t), reverse=True)
        for t in ("hot", "warm", "cold")
    }
    # (the profiles were chosen to span the tiers; otherwise this test would prove little)
    assert all(len(scores) >= 2 for scores in tiers.values()), tiers
    assert all(s["scorer"] == "llm" for s in latest.values())

    # When the whole list is read
    full = client.get(f"{LEADS}?limit=200").body
    # Then it is hot, warm, cold, then unscored; by score (descending) within a tier
    order = [(i["tier"], i["score"]) for i in full["items"]]
    print("ranked:", [(i["lead_id"], i["tier"], i["score"]) for i in full["items"]])
    expected = [(t, s) for t in ("hot", "warm", "cold") for s in tiers[t]] + [(None, None)]
    assert order == expected and full["next_cursor"] is None
    assert full["items"][-1]["lead_id"] == "unscored" and full["items"][-1]["company"] == "Later Inc"
    for item in full["items"][:-1]:
        assert (
            item["score"] == latest[item["lead_id"]]["score"]
            and item["scored_at"] == latest[item["lead_id"]]["scored_at"]
        )

    # When one tier is read
    hot = client.get(f"{LEADS}?tier=hot").body["items"]
    # Then only that tier comes back, best first
    assert [i["tier"] for i in hot] == ["hot"] * len(tiers["hot"]) and [i["score"] for i in hot] == tiers["hot"]
    cold = client.get(f"{LEADS}?tier=cold").body["items"]
    assert [i["score"] for i in cold] == tiers["cold"] and all(i["tier"] == "cold" for i in cold)

    # When the list is paged one item at a time (all tiers, and one tier)
    paged = all_pages(client, f"{LEADS}?limit=1", sep="&")
    paged_hot = all_pages(client, f"{LEADS}?tier=hot&limit=1", sep="&")
    ids = [i["lead_id"] for i in paged]
    print(f"pages: {len(paged)} items over all tiers, {len(paged_hot)} hot")
    # Then every lead comes exactly once, in the same order as the full list
    assert ids == [i["lead_id"] for i in full["items"]] and len(set(ids)) == len(PROFILES) + 1
    assert [i["lead_id"] for i in paged_hot] == [i["lead_id"] for i in hot]


def test_score_history_lists_every_score_newest_first(client: Client, stack: LocalStack) -> None:
    # Given a lead scored on creation, then re-scored after its data changed, then re-scored again
    created = put_lead(client, "H-1", PROFILES["cold-1"])
    finish(client, [created.body["job_id"]])
    changed = put_lead(client, "H-1", PROFILES["hot-1"])
    finish(client, [changed.body["job_id"]])
    again = score_now(client, ["H-1"])[0]
    # When its history is read
    history = client.get(f"{LEADS}/H-1/scores").body
    items = history["items"]
    print([(h["trigger"], h["score"], h["tier"], h["scored_at"]) for h in items])
    # Then it has the three scores, newest first, each naming its job, trigger and the data scored
    assert [h["job_id"] for h in items] == [again["job_id"], changed.body["job_id"], created.body["job_id"]]
    assert [h["trigger"] for h in items] == ["api", "upsert", "upsert"]
    assert [h["scored_at"] for h in items] == sorted((h["scored_at"] for h in items), reverse=True)
    assert items[0]["data_hash"] == items[1]["data_hash"] != items[2]["data_hash"]
    assert items[1]["score"] > items[2]["score"]  # the new profile is the better lead
    # And the latest score is the lead's current one, and the job's result
    lead = client.get(f"{LEADS}/H-1").body
    assert lead["score"] == items[0] and lead["data_hash"] == items[0]["data_hash"]
    assert again["result"]["score"] == items[0]["score"] and again["result"]["job_id"] == again["job_id"]
    # And each score explains itself: contributions sum to the score
    for h in items:
        assert abs(sum(f["contribution"] for f in h["factors"]) - h["score"]) < 1e-6, h
    # And the history pages one at a time without duplicates
    paged = all_pages(client, f"{LEADS}/H-1/scores?limit=1", sep="&")
    assert [h["job_id"] for h in paged] == [h["job_id"] for h in items]


# --- 4. tenant isolation ----------------------------------------------------------------------------------


def test_another_tenant_cannot_read_list_score_or_see_jobs_of_a_tenants_leads(
    client: Client, stack: LocalStack
) -> None:
    # Given demo's scored leads (and its ranked-list and history cursors)
    body = {"leads": [{"lead_id": i, **PROFILES[i]} for i in ("hot-1", "warm-1", "cold-1")]}
    demo_jobs = [i["job_id"] for i in client.post(LEADS, body).body["items"]]
    finish(client, demo_jobs)
    demo_cursor = client.get(f"{LEADS}?limit=1").body["next_cursor"]
    demo_history_cursor = client.get(f"{LEADS}/hot-1/scores?limit=1").body["next_cursor"]
    demo_hot_1 = client.get(f"{LEADS}/hot-1").body
    acme = member_of(client, "acme")
    hits: list[str] = []

    def expect(name: str, reply: Reply, status: int) -> None:
        if reply.status != status:
            hits.append(f"{name}: {reply.status} {reply.body}")

    # When acme asks for demo's leads, their history, scores and jobs by id
    for lead_id in ("hot-1", "warm-1", "cold-1"):
        expect(f"get {lead_id}", acme.get(f"{LEADS}/{lead_id}"), 404)
        expect(f"history {lead_id}", acme.get(f"{LEADS}/{lead_id}/scores"), 404)
    score = acme.post(f"{LEADS}/score", {"lead_ids": ["hot-1", "warm-1"]})
    expect("score", score, 404)
    assert score.body["error"]["code"] == "unknown_leads" and score.body["error"]["unknown_ids"] == ["hot-1", "warm-1"]
    for job_id in demo_jobs:
        expect(f"job {job_id}", acme.get(f"/v1/jobs/{job_id}"), 404)
        expect(f"cancel {job_id}", acme.post(f"/v1/jobs/{job_id}/cancel"), 404)
    # And lists its own leads and jobs, also with demo's cursors
    listed = acme.get(LEADS).body["items"] + acme.get(f"{LEADS}?cursor={demo_cursor}").body["items"]
    hits += [f"listed {i['lead_id']}" for i in listed]
    jobs_listed = acme.get("/v1/jobs").body["items"]
    hits += [f"job listed {j['job_id']}" for j in jobs_listed]
    # Then it gets nothing: 404s and empty lists
    print(f"cross-tenant hits: {len(hits)} {hits}")
    assert hits == []
    assert lead_jobs("acme") == []

    # When acme creates a lead with the same id, and scores it inline under that id too
    own = put_lead(acme, "hot-1", {"company": "Acme's own", "industry": "Retail"})
    # Then it is a new record of acme's (created, version 1), scored separately
    assert own.status == 201 and own.body["version"] == 1, own.body
    finish(acme, [own.body["job_id"]])
    inline = acme.post(f"{LEADS}/score", {"leads": [{"lead_id": "warm-1", "company": "Acme two"}]})
    assert inline.status == 202, inline.body
    finish(acme, [j["job_id"] for j in inline.body["jobs"]])
    acme_view = acme.get(f"{LEADS}/hot-1").body
    assert acme_view["lead"]["company"] == "Acme's own" and acme_view["score"]["job_id"] == own.body["job_id"]
    assert sorted(i["lead_id"] for i in acme.get(LEADS).body["items"]) == ["hot-1", "warm-1"]
    assert len(acme.get(f"{LEADS}/hot-1/scores").body["items"]) == 1
    bad_cursor = acme.get(f"{LEADS}/hot-1/scores?cursor={demo_history_cursor}")
    assert bad_cursor.status == 200 and all(h["job_id"] not in demo_jobs for h in bad_cursor.body["items"])
    # And demo's records are untouched
    after = client.get(f"{LEADS}/hot-1").body
    assert after == demo_hot_1
    assert client.get(f"{LEADS}/warm-1").body["lead"]["company"] == PROFILES["warm-1"]["company"]
    assert len(client.get(f"{LEADS}/hot-1/scores").body["items"]) == 1
    assert sorted(i["lead_id"] for i in client.get(LEADS).body["items"]) == ["cold-1", "hot-1", "warm-1"]


# --- 5. admin scoring settings and privacy ----------------------------------------------------------------


NEW_SETTINGS: dict[str, Any] = {
    "criteria": [
        {
            "id": "industry_fit",
            "description": "The company sells software",
            "weight": 3,
            "rule": {"kind": "match", "field": "industry", "values": ["software"]},
        },
        {
            "id": "decision_maker",
            "description": "The title names a head or chief",
            "weight": 1,
            "rule": {"kind": "keywords", "field": "title", "values": ["head", "chief"]},
        },
    ],
    "thresholds": {"hot": 95, "warm": 85},
    "excluded_fields": ["custom.budget"],
    "freshness_days": 7,
}

SECRETS = {
    "contact name": "Rosalind Quimby",
    "contact email": "rosalind.quimby@contoso.example",
    "contact phone": "+1 212 555 0199",
    "email in notes": "r.quimby@private.example",
    "phone in notes": "+44 20 7946 0321",
    "excluded budget": "budget-secret-7731",
}

PRIVATE_LEAD: dict[str, Any] = {
    "company": "Contoso",
    "contact": {"name": SECRETS["contact name"], "email": SECRETS["contact email"], "phone": SECRETS["contact phone"]},
    "title": "Head of IT",
    "industry": "Software",
    "size": 450,
    "notes": f"Prefers {SECRETS['email in notes']} or {SECRETS['phone in notes']} after 6pm.",
    "custom": {"budget": SECRETS["excluded budget"], "region": "EMEA"},
}


def test_admin_scoring_settings_are_versioned_admin_only_and_apply_to_later_scores(
    client: Client, stack: LocalStack
) -> None:
    acme = member_of(client, "acme")
    # Given the defaults
    defaults = client.get(SCORING.format("demo"))
    assert defaults.status == 200, defaults.body
    assert defaults.body["version"] == 0 and defaults.body["thresholds"] == {"hot": 70, "warm": 40}
    assert [c["id"] for c in defaults.body["criteria"]][:2] == ["industry_fit", "company_size"]
    assert defaults.body["pii_fields"] == ["contact.name", "contact.email", "contact.phone"]
    # And a lead scored by them
    job = put_lead(client, "S-1", PRIVATE_LEAD).body["job_id"]
    before = finish(client, [job])[0]["result"]
    assert before["criteria_version"] == 0 and len(before["factors"]) == 5

    # When a member key reads or writes the settings (its own tenant's too)
    for reply in (
        acme.get(SCORING.format("acme")),
        acme.request("PUT", SCORING.format("acme"), NEW_SETTINGS),
        acme.request("PUT", SCORING.format("demo"), NEW_SETTINGS),
    ):
        # Then it is refused
        assert reply.status == 403 and reply.body["error"]["code"] == "forbidden", reply.body
    # And bad settings or an unknown tenant are refused with the field named
    for tenant, body, status, field in (
        ("demo", {"thresholds": {"hot": 30, "warm": 30}}, 422, "thresholds"),
        ("demo", {"excluded_fields": ["budget"]}, 422, "body"),
        (
            "demo",
            {"criteria": [{"id": "x", "description": "d", "weight": 1, "rule": {"kind": "nope"}}]},
            422,
            "criteria.0.rule.kind",
        ),
        ("ghost", NEW_SETTINGS, 404, "tenant_id"),
    ):
        bad = client.request("PUT", SCORING.format(tenant), body)
        assert bad.status == status and bad.body["error"]["field"].startswith(field), (body, bad.body)
    assert client.get(SCORING.format("demo")).body["version"] == 0

    # When the admin stores new criteria and thresholds
    stored = admin_put_scoring(client, "demo", NEW_SETTINGS)
    # Then they are version 1, read back as stored, by whom
    assert stored["version"] == 1 and stored["updated_by"] and stored["thresholds"] == {"hot": 95, "warm": 85}
    read = client.get(SCORING.format("demo")).body
    assert read == stored
    # And a score computed afterwards names version 1, rates the new criteria, uses the new thresholds
    after = score_now(client, ["S-1"])[0]["result"]
    print(
        f"before: {before['score']} {before['tier']} v{before['criteria_version']}; "
        f"after: {after['score']} {after['tier']} v{after['criteria_version']}"
    )
    assert after["criteria_version"] == 1
    assert sorted(f["criterion"] for f in after["factors"]) == ["decision_maker", "industry_fit"]
    assert {f["criterion"]: f["weight"] for f in after["factors"]} == {"industry_fit": 75.0, "decision_maker": 25.0}
    new_tier = "hot" if after["score"] >= 95 else "warm" if after["score"] >= 85 else "cold"
    default_tier = "hot" if after["score"] >= 70 else "warm" if after["score"] >= 40 else "cold"
    # (the lead's score is in a different tier by the default thresholds, so this tells them apart)
    assert after["tier"] == new_tier != default_tier, after
    # And the earlier score keeps the version it was computed with
    history = client.get(f"{LEADS}/S-1/scores").body["items"]
    assert [h["criteria_version"] for h in history] == [1, 0]


def test_pii_and_excluded_fields_never_reach_the_provider_nor_the_logs(
    client: Client,
    stack: LocalStack,
    simulator: SimulatedProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given every request body the provider receives is recorded
    bodies = record_provider_bodies(simulator, monkeypatch)
    # And the tenant excludes custom.budget (contact fields are PII by default)
    admin_put_scoring(client, "demo", NEW_SETTINGS)
    # When leads with contact details, PII in the notes and a budget are upserted and scored,
    # by the API, the bulk endpoint and an inline score request
    jobs = [put_lead(client, "P-1", PRIVATE_LEAD).body["job_id"]]
    # (each lead differs, so no score is a cache hit of another's prompt and all three reach the provider)
    p2 = {"lead_id": "P-2", **PRIVATE_LEAD, "title": "Head of Procurement"}
    jobs += [i["job_id"] for i in client.post(LEADS, {"leads": [p2]}).body["items"]]
    inline = client.post(f"{LEADS}/score", {"leads": [{"lead_id": "P-3", **PRIVATE_LEAD, "title": "Chief of Staff"}]})
    jobs += [j["job_id"] for j in inline.body["jobs"]]
    results = [j["result"] for j in finish(client, jobs)]
    # Then the provider was called with the lead, but none of the secrets
    prompts = [b for b in bodies if "lead_scoring" in b or "<lead>" in b]
    assert len(prompts) >= 3 and all("Contoso" in p for p in prompts)
    leaked = [(name, i) for name, secret in SECRETS.items() for i, p in enumerate(bodies) if secret in p]
    assert leaked == [], leaked
    assert all("[email]" in p and "[phone]" in p for p in prompts)  # the notes went, redacted
    # And the scores quote none of them either
    assert all(s not in json.dumps(results) for s in SECRETS.values())
    # And no log line names them (formatted as the Lambda would log, with every extra key)
    # (only the gateway's logger: botocore's DEBUG records, never emitted on Lambda, echo DynamoDB items)
    records = [r for r in caplog.records if r.name == logger().name]
    formatter = logger().registered_formatter
    logged = "\n".join(formatter.format(r) for r in records)
    out, err = capfd.readouterr()
    logged += "\n" + out + "\n" + err
    print(
        f"provider requests: {len(bodies)}, scoring prompts: {len(prompts)}; log records checked: "
        f"{len(records)}, captured output: {len(out) + len(err)} characters"
    )
    assert "lead scored" in logged  # the logs were captured at all
    leaked_logs = [name for name, secret in SECRETS.items() if secret in logged]
    assert leaked_logs == [], leaked_logs
    # But the lead itself still holds them for its owner
    stored = client.get(f"{LEADS}/P-1").body["lead"]
    assert stored["contact"]["email"] == SECRETS["contact email"]
    assert stored["custom"]["budget"] == SECRETS["excluded budget"]


# --- 6. scheduled re-score --------------------------------------------------------------------------


def age_scores(tenant_id: str, lead_ids: list[str], days: int) -> None:
    """Moves the leads' latest score `days` back in time, as if scored then.

    Freezing the clock would have to reach into every handler's clock and the Step Functions
    interpreter; rewriting the two attributes the schedule reads (gsi2sk, its age index) and the
    one the persist step compares (latest.scored_at) is what `days` of waiting would have done.
    """
    leads = deps.repos().leads
    for lead_id in lead_ids:
        item = leads.get(tenant_id, lead_id)
        assert item is not None and item.get("latest"), lead_id
        old = (datetime.fromisoformat(item["latest"]["scored_at"]) - timedelta(days=days)).isoformat()
        deps.dynamo().update(
            leads.table,
            leads.key(tenant_id, lead_id),
            "SET latest.scored_at = :at, gsi2sk = :g2",
            values={":at": old, ":g2": f"{old}#{lead_id}"},
        )


def test_the_rescore_schedule_queues_each_stale_lead_once(client: Client, stack: LocalStack) -> None:
    # Given a tenant whose scores are fresh for one day, four scored leads and one never scored
    admin_put_scoring(client, "demo", {"freshness_days": 1})
    ids = ["R-1", "R-2", "R-3", "R-4"]
    items = client.post(LEADS, {"leads": [{"lead_id": i, **PROFILES["warm-2"], "company": i} for i in ids]}).body[
        "items"
    ]
    finish(client, [i["job_id"] for i in items])
    assert put_lead(client, "R-new", {"company": "Never scored"}, score="never").status == 201
    # And three of the scores are two days old (R-4 was scored just now)
    age_scores("demo", ["R-1", "R-2", "R-3"], days=2)
    # And another tenant's lead is fresh
    acme = member_of(client, "acme")
    finish(acme, [put_lead(acme, "R-1", {"company": "acme"}).body["job_id"]])

    # When the schedule fires, and at once again
    first = stack.run_schedule("lead-rescore")
    second = stack.run_schedule("lead-rescore")
    print(f"first run queued {first['queued']}, second run queued {second['queued']}")
    # Then the first run queued the three stale leads and the never-scored one, once each
    assert first["queued"] == {"demo": 4}
    stale = lead_jobs("demo", trigger="stale")
    assert sorted(r["request"]["lead_id"] for r in stale) == ["R-1", "R-2", "R-3", "R-new"]
    # And the second run queued nothing (each is pending, or already re-scored)
    assert second["queued"] == {}
    # And the jobs score them, with trigger stale
    jobs = finish(client, [r["job_id"] for r in stale])
    assert all(j["result"]["trigger"] == "stale" for j in jobs)
    for lead_id in ("R-1", "R-2", "R-3", "R-new"):
        lead = client.get(f"{LEADS}/{lead_id}").body
        assert lead["score"]["trigger"] == "stale" and lead["pending_job"] is None, lead
        assert datetime.fromisoformat(lead["score"]["scored_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    # And once all are fresh a third run queues nothing either
    third = stack.run_schedule("lead-rescore")
    print(f"third run queued {third['queued']}; stale jobs in all: {len(lead_jobs('demo', trigger='stale'))}")
    assert third["queued"] == {} and len(lead_jobs("demo", trigger="stale")) == 4
    assert lead_jobs("acme", trigger="stale") == []


def test_a_lost_rescore_no_longer_blocks_the_lead_after_the_pending_guard(client: Client, stack: LocalStack) -> None:
    # Given a stale lead with a re-score marked pending two hours ago whose job never ran
    admin_put_scoring(client, "demo", {"freshness_days": 1})
    finish(client, [put_lead(client, "G-1", PROFILES["cold-1"]).body["job_id"]])
    age_scores("demo", ["G-1"], days=2)
    leads = deps.repos().leads
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    assert leads.claim_rescore("demo", "G-1", job_id="LOSTJOB", at=long_ago, unless_since=long_ago)
    # When the schedule fires
    run = stack.run_schedule("lead-rescore")
    # Then the lead is queued again, and scored
    print(f"queued {run['queued']}")
    assert run["queued"] == {"demo": 1}
    finish(client, [r["job_id"] for r in lead_jobs("demo", "G-1", trigger="stale")])
    # But a re-score pending for less than the guard blocks it
    age_scores("demo", ["G-1"], days=2)
    recent = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert leads.claim_rescore("demo", "G-1", job_id="RECENTJOB", at=recent, unless_since=recent)
    assert stack.run_schedule("lead-rescore")["queued"] == {}


# --- 7. S3 imports --------------------------------------------------------------------------------------------


CSV_FILE = (
    "lead_id,company,title,industry,size,source,events,contact_email,notes,budget\n"  # line 1
    f"imp-1,Northwind,VP of Sales,Software,450,referral,demo_request@{days_ago(2)};pricing_page,"  # 2-3
    'a@b.io,"two\nlines",5000\n'
    "imp-2,Bad Size Co,CTO,Software,abc,,,,,\n"  # 4
    ",No Id Inc,CEO,Software,10,,,,,\n"  # 5
    "imp-1,Duplicate,CEO,Software,10,,,,,\n"  # 6
    "imp-3,Contoso,Head of IT,Software,120,partner,,,,\n"  # 7
)


def read_report(stack: LocalStack, tenant_id: str, name: str) -> dict[str, Any]:
    s3 = boto3.client("s3")
    body = s3.get_object(Bucket=imports_bucket(stack), Key=f"reports/{tenant_id}/{name}.json")["Body"].read()
    return dict(json.loads(body))


def test_an_imported_csv_scores_its_good_rows_reports_bad_ones_and_redelivery_changes_nothing(
    client: Client, stack: LocalStack
) -> None:
    # When a CSV with good and malformed rows is dropped in the imports bucket
    report = stack.drop_import("demo", "leads.csv", CSV_FILE.encode())
    # Then the report counts the good rows and names each bad one by its line
    print(f"first drop: {json.dumps({k: v for k, v in report.items() if k != 'rejected'})}")
    for bad in report["rejected"]:
        print(f"  rejected line {bad['line']}: {bad['lead_id']} {bad['error']}")
    assert (report["created"], report["updated"], report["unchanged"], report["queued"]) == (2, 0, 0, 2)
    assert [(r["line"], r["lead_id"]) for r in report["rejected"]] == [(4, "imp-2"), (5, None), (6, "imp-1")]
    assert report["rejected"][0]["error"].startswith("size:") and "appears earlier" in report["rejected"][2]["error"]
    assert "error" not in report and report["tenant_id"] == "demo"
    # And the same report is stored beside the file
    assert read_report(stack, "demo", "leads.csv") == report
    # And only the good rows are leads, with the file's data
    assert client.get(f"{LEADS}/imp-2").status == 404
    lead = client.get(f"{LEADS}/imp-1").body["lead"]
    assert lead["company"] == "Northwind" and lead["notes"] == "two\nlines" and lead["custom"] == {"budget": "5000"}
    assert [e["type"] for e in lead["events"]] == ["demo_request", "pricing_page"]

    # When the same file is delivered again at once (its jobs still pending, or just done)
    again = stack.drop_import("demo", "leads.csv", CSV_FILE.encode())
    print(f"second drop: created {again['created']} unchanged {again['unchanged']} queued {again['queued']}")
    # Then nothing is rewritten or queued
    assert (again["created"], again["updated"], again["unchanged"], again["queued"]) == (0, 0, 2, 0)
    # And the import jobs score both leads, with trigger import
    rows = lead_jobs("demo", trigger="import")
    assert sorted(r["request"]["lead_id"] for r in rows) == ["imp-1", "imp-3"]
    finish(client, [r["job_id"] for r in rows])
    for lead_id in ("imp-1", "imp-3"):
        score = client.get(f"{LEADS}/{lead_id}").body["score"]
        assert score is not None and score["trigger"] == "import", lead_id
    # When it is delivered a third time, after the scores
    third = stack.drop_import("demo", "leads.csv", CSV_FILE.encode())
    print(f"third drop: unchanged {third['unchanged']} queued {third['queued']}; import jobs {len(lead_jobs('demo'))}")
    # Then still nothing is queued: the leads are unchanged and scored
    assert (third["created"], third["updated"], third["unchanged"], third["queued"]) == (0, 0, 2, 0)
    assert len(lead_jobs("demo")) == 2

    # When a changed file arrives (imp-3's title changed, a new row)
    changed = (
        CSV_FILE.replace("imp-3,Contoso,Head of IT", "imp-3,Contoso,CTO") + "imp-4,Fabrikam,CEO,Software,90,,,,,\n"
    )
    fourth = stack.drop_import("demo", "leads.csv", changed.encode())
    # Then the changed lead is updated and re-scored and the new one created and scored
    print(f"changed file: created {fourth['created']} updated {fourth['updated']} queued {fourth['queued']}")
    assert (fourth["created"], fourth["updated"], fourth["unchanged"], fourth["queued"]) == (1, 1, 1, 2)
    finish(client, [r["job_id"] for r in lead_jobs("demo", trigger="import") if r["request"]["lead_id"] != "imp-1"])


def test_an_imported_jsonl_file_works_too_and_a_never_scored_lead_is_scored(client: Client, stack: LocalStack) -> None:
    # Given a lead that exists but was never scored
    assert put_lead(client, "j-2", {"company": "Beta"}, score="never").status == 201
    # When a JSONL file names it unchanged, adds a new lead and has a bad and a blank line
    text = "\n".join(
        [
            json.dumps({"lead_id": "j-1", **PROFILES["hot-2"]}),  # 1
            json.dumps({"lead_id": "j-2", "company": "Beta"}),  # 2
            "",  # 3
            json.dumps({"lead_id": "j-3", "size": -5}),  # 4
            "{not json",  # 5
        ]
    )
    report = stack.drop_import("demo", "more.jsonl", text.encode())
    print(f"jsonl: {report}")
    # Then the new lead is created, the unchanged never-scored one queued too, bad lines reported
    assert (report["created"], report["unchanged"], report["queued"]) == (1, 1, 2)
    assert [(r["line"], r["lead_id"]) for r in report["rejected"]] == [(4, "j-3"), (5, None)]
    assert read_report(stack, "demo", "more.jsonl") == report
    jobs = finish(client, [r["job_id"] for r in lead_jobs("demo", trigger="import")])
    assert sorted(j["lead_id"] for j in jobs) == ["j-1", "j-2"]
    assert client.get(f"{LEADS}/j-1").body["score"]["tier"] == "hot"


def test_a_file_for_an_unknown_tenant_is_reported_and_writes_no_leads(client: Client, stack: LocalStack) -> None:
    # When a file is dropped under a tenant that does not exist
    report = stack.drop_import("ghost", "leads.csv", CSV_FILE.encode())
    print(f"unknown tenant: {report}")
    # Then the report says so, is stored, and no lead of any tenant was written or queued
    assert "no tenant 'ghost'" in report["error"] and "created" not in report
    assert read_report(stack, "ghost", "leads.csv") == report
    leads = deps.repos().leads
    assert leads.get_many("ghost", ["imp-1", "imp-3"]) == {} and leads.get_many("demo", ["imp-1", "imp-3"]) == {}
    assert lead_jobs("ghost") == [] and job_rows("demo") == [] and queued_messages() == 0
