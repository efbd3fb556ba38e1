"""Helpers for the lead scoring pipeline suite: varied leads, submitting and waiting for score jobs,
reading the books (ledger, executions, queues), and checking a score's explanation against the
lead it explains — independently of the scorer's own checks."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import boto3

from aigateway import deps
from aigateway.privacy import redact
from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.governance_support import ledger_rows

TENANT = "demo"
ENDED = ("succeeded", "failed", "cancelled")
SCORING_FEATURE = "leads"
RULES_MODEL = "rules-scorer"

# --- leads -----------------------------------------------------------------------------------------

INDUSTRIES = ["Software", "SaaS", "fintech", "Technology", "Retail", "Healthcare", "Manufacturing", "", None]
TITLES = [
    "VP of Engineering",
    "Chief Technology Officer",
    "Head of Data",
    "Software Engineer",
    "Director,   IT Operations",  # inner whitespace: the scorer collapses it, quotes must still match
    "Founder & CEO",
    "Intern",
    "procurement MANAGER",
    None,
]
SIZES = [None, 0, 12, 30, 49, 50, 300, 5000, 7400, 12000, 250000]
SOURCES = ["referral", "partner", "Inbound", "cold outreach", "trade show", "", None]
EVENT_TYPES = [
    "demo_request",
    "pricing_page",
    "trial_signup",
    "webinar",
    "email_reply",
    "newsletter_open",
    "support_ticket",
]
EVENT_AGES = [1, 10, 45, 89, 91, 120, 400]  # days before today: inside and outside the 90-day window
DETAILS = [
    None,
    'Asked: "Does it support SSO?"',
    "Watched the   whole\trecording",
    "Replied — 'send the MSA'",
    "Pricing for 250 seats",
]
NOTES = [
    None,
    "",
    '"We are evaluating 3 vendors," she said. Decision expected in Q3.',
    "Budget approved\n\nfor   Q3 rollout; CFO signed off.",
    "Met at the Zürich meetup — naïve about pricing, very keen on the café integration.",
    "Reach me at jane.doe@example.com or +1 415 555 0100 after 5pm.",
    "Prospect wrote <b>urgent</b> & asked for a demo ASAP",
    "No budget this year. Not a decision maker; forwards everything to IT.",
    "Referral from a partner; 'hot' according to the AE.",
    "   ",
]
CUSTOMS: list[dict[str, Any]] = [
    {},
    {"region": "EMEA"},
    {"budget": "250k", "is_customer": False},
    {"arr_musd": 12.5, "plan": "enterprise"},
    {"seats": 120, "crm_stage": "Qualified  lead"},
]


def varied_leads(count: int, *, seed: int, prefix: str) -> list[dict[str, Any]]:
    """`count` distinct leads (each names its own company, so no two prompts are alike) that vary
    industry, title, size, source, events (types, recency, details with quotes), notes (quotes,
    whitespace, accents, markup, PII) and custom fields; every 7th one is nearly empty."""
    rng = random.Random(seed)
    today = date.today()
    leads = []
    for i in range(count):
        lead: dict[str, Any] = {"lead_id": f"{prefix}-{i:03d}", "company": f"{prefix.title()} Labs {i}"}
        if i % 7 == 6:  # sparse: a company name and nothing else
            leads.append(lead)
            continue
        pick = {
            "industry": rng.choice(INDUSTRIES),
            "title": rng.choice(TITLES),
            "size": rng.choice(SIZES),
            "source": rng.choice(SOURCES),
            "notes": rng.choice(NOTES),
        }
        lead.update({k: v for k, v in pick.items() if v is not None})
        events = []
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            event: dict[str, Any] = {"type": rng.choice(EVENT_TYPES)}
            if rng.random() < 0.85:
                event["at"] = (today - timedelta(days=rng.choice(EVENT_AGES))).isoformat()
            detail = rng.choice(DETAILS)
            if detail:
                event["detail"] = detail
            events.append(event)
        if events:
            lead["events"] = events
        custom = rng.choice(CUSTOMS)
        if custom:
            lead["custom"] = dict(custom)
        if rng.random() < 0.6:
            lead["contact"] = {"name": f"Contact {i}", "email": f"buyer{i}@prospect{i}.io", "phone": "+44 20 7946 0958"}
        leads.append(lead)
    return leads


def simple_leads(count: int, *, prefix: str) -> list[dict[str, Any]]:
    """Distinct, well-filled leads: each company, title and event its own."""
    today = date.today()
    return [
        {
            "lead_id": f"{prefix}-{i:03d}",
            "company": f"{prefix.title()} Systems {i}",
            "title": "VP of Engineering" if i % 2 else "Head of Platform",
            "industry": "Software",
            "size": 100 + i,
            "source": "referral",
            "events": [{"type": "demo_request", "at": (today - timedelta(days=1 + i % 30)).isoformat()}],
            "notes": f"Lead number {i} asked for a pilot.",
        }
        for i in range(count)
    ]


def upsert(client: Client, leads: list[dict[str, Any]]) -> None:
    """Stores the leads without scoring them (POST /v1/leads, score=never)."""
    for i in range(0, len(leads), 500):
        reply = client.post("/v1/leads", {"leads": leads[i : i + 500], "score": "never"})
        assert reply.status == 200, reply.body
        assert all(item["job_id"] is None for item in reply.body["items"]), reply.body


def request_scores(client: Client, lead_ids: list[str]) -> dict[str, str]:
    """POST /v1/leads/score: lead id → job id, every job queued."""
    reply = client.post("/v1/leads/score", {"lead_ids": lead_ids})
    assert reply.status == 202, reply.body
    jobs = reply.body["jobs"]
    assert [j["lead_id"] for j in jobs] == lead_ids and all(j["status"] == "queued" for j in jobs), jobs
    return {j["lead_id"]: j["job_id"] for j in jobs}


def wait_jobs(
    job_ids: list[str], *, timeout_s: float = 90, statuses: tuple[str, ...] = ENDED, min_runs: int = 1
) -> dict[str, dict[str, Any]]:
    """Each job's stored item once it is in one of `statuses` (and has had `min_runs` runs);
    raises naming the stragglers at the timeout. Reads the table, not the API (cheap to poll)."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in [j for j in job_ids if j not in done]:
            item = deps.repos().jobs.get(job_id)
            if item and item["status"] in statuses and int(item.get("runs", 1)) >= min_runs:
                done[job_id] = item
        if len(done) == len(job_ids):
            return done
        if time.monotonic() > deadline:
            stuck = {j: (deps.repos().jobs.get(j) or {}).get("status") for j in job_ids if j not in done}
            raise AssertionError(f"{len(stuck)} jobs not in {statuses} after {timeout_s} s: {stuck}")
        time.sleep(0.3)


def job_reply(client: Client, job_id: str) -> dict[str, Any]:
    reply = client.get(f"/v1/jobs/{job_id}")
    assert reply.status == 200, reply.body
    return dict(reply.body)


def lead_reply(client: Client, lead_id: str) -> dict[str, Any]:
    reply = client.get(f"/v1/leads/{lead_id}")
    assert reply.status == 200, reply.body
    return dict(reply.body)


def history(client: Client, lead_id: str) -> list[dict[str, Any]]:
    """Every audit record of the lead (all pages of GET /v1/leads/{id}/scores)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        path = f"/v1/leads/{lead_id}/scores?limit=50" + (f"&cursor={cursor}" if cursor else "")
        reply = client.get(path)
        assert reply.status == 200, reply.body
        items += reply.body["items"]
        cursor = reply.body["next_cursor"]
        if not cursor:
            return items


def jobs_pages(client: Client, status: str, *, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every job of a status through GET /v1/jobs, following cursors; (items, pages)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        path = f"/v1/jobs?status={status}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        reply = client.get(path)
        assert reply.status == 200, reply.body
        pages += 1
        assert len(reply.body["items"]) <= limit
        items += reply.body["items"]
        cursor = reply.body["next_cursor"]
        if not cursor or pages > 100:
            return items, pages


# --- the books ---------------------------------------------------------------------------------------


def scoring_rows() -> list[dict[str, Any]]:
    """The tenant's ledger rows of lead scoring (feature `leads`)."""
    return [r for r in ledger_rows(TENANT) if r["feature"] == SCORING_FEATURE]


def rows_by_request(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row["request_id"]), []).append(row)
    for group in grouped.values():
        group.sort(key=lambda r: int(r["attempt"]))
    return grouped


def duplicate_attempts(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    seen = Counter((str(r["request_id"]), int(r["attempt"])) for r in rows)
    return sorted(k for k, n in seen.items() if n > 1)


def executions(stack: LocalStack) -> list[dict[str, Any]]:
    """Every execution of the jobs workflow (all pages)."""
    assert stack.resources is not None
    sfn = boto3.client("stepfunctions")
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"stateMachineArn": stack.resources.state_machines["jobs"], "maxResults": 100}
    while True:
        page = sfn.list_executions(**kwargs)
        found += page["executions"]
        if not page.get("nextToken"):
            return found
        kwargs["nextToken"] = page["nextToken"]


def wait_executions_closed(stack: LocalStack, names: set[str], timeout_s: float = 30) -> dict[str, str]:
    """Waits until every named execution has left RUNNING; name → status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = {e["name"]: e["status"] for e in executions(stack) if e["name"] in names}
        if len(status) == len(names) and all(s != "RUNNING" for s in status.values()):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"executions still running or missing after {timeout_s} s: {status}")
        time.sleep(0.3)


def queue_depth(queue_url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def wait_drained(queue_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while queue_depth(queue_url) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"queue still holds {queue_depth(queue_url)} messages after {timeout_s} s")
        time.sleep(0.2)


def dead_letter_queue_url(queue_url: str) -> tuple[str, int]:
    """(DLQ url, maxReceiveCount) from the queue's RedrivePolicy attribute."""
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    policy = json.loads(attributes["RedrivePolicy"])
    name = policy["deadLetterTargetArn"].rsplit(":", 1)[1]
    return sqs.get_queue_url(QueueName=name)["QueueUrl"], int(policy["maxReceiveCount"])


@dataclass
class Delivery:
    """One message handed to the dispatcher: its body and the receive count SQS reported."""

    body: str
    receive_count: int
    batch: int


@dataclass
class DeliveryLog:
    """Records every message the local runtime delivers to the scoring dispatcher (wraps
    `LocalStack.deliver`, which the SQS poller calls per batch), then delivers it as before."""

    stack: LocalStack
    function: str = "scoring_dispatch"
    deliveries: list[Delivery] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> DeliveryLog:
        original = self.stack.deliver

        def deliver(sqs: Any, source: Any, messages: list[dict[str, Any]]) -> list[str]:
            if source.function == self.function:
                with self._lock:
                    batch = len(self.batches)
                    self.batches.append([m["Body"] for m in messages])
                    for m in messages:
                        count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0))
                        self.deliveries.append(Delivery(m["Body"], count, batch))
            failed = original(sqs, source, messages)
            if source.function == self.function:
                bodies = {m["MessageId"]: m["Body"] for m in messages}
                with self._lock:
                    self.failed += [bodies[f] for f in failed if f in bodies]
            return failed

        self.stack.deliver = deliver  # type: ignore[method-assign]
        return self

    def per_job(self) -> Counter[str]:
        """Deliveries per job id (readable job messages only)."""
        counts: Counter[str] = Counter()
        for d in self.deliveries:
            try:
                counts[json.loads(d.body)["job_id"]] += 1
            except (ValueError, KeyError, TypeError):
                continue
        return counts


# --- explanation integrity ----------------------------------------------------------------------------


def normal(text: str) -> str:
    """Whitespace collapsed and case folded: the comparison LeadView.contains makes."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def visible_texts(lead: dict[str, Any], hidden: tuple[str, ...] = ("contact",)) -> list[str]:
    """The lead's text as a scorer may see it, built here from the record as upserted: its plain
    fields, each event as `type on YYYY-MM-DD: detail`, the notes and the custom values; without
    the contact (PII), with e-mail addresses and phone numbers in free text redacted and angle
    brackets shown as ‹ › (what the prompt carries)."""
    texts: list[str] = []
    for name in ("company", "title", "industry", "size", "source"):
        if name not in hidden and lead.get(name) not in (None, ""):
            texts.append(str(lead[name]))
    if "events" not in hidden:
        for event in lead.get("events") or []:
            text = event["type"] + (f" on {event['at'][:10]}" if event.get("at") else "")
            if event.get("detail"):
                text += f": {event['detail']}"
            texts.append(text)
    if "notes" not in hidden and lead.get("notes"):
        texts.append(str(lead["notes"]))
    if "custom" not in hidden:
        texts += [str(v) for _, v in sorted((lead.get("custom") or {}).items())]
    return [normal(redact(t)).replace("<", "‹").replace(">", "›") for t in texts if normal(t)]


def quote_needle(quote: str) -> str:
    return normal(quote.strip().strip("\"'“”‘’").removesuffix("...").removesuffix("…").strip())


def tier_for(score: int, hot: int, warm: int) -> str:
    return "hot" if score >= hot else "warm" if score >= warm else "cold"


def integrity_problems(
    score: dict[str, Any], lead: dict[str, Any], *, criteria: list[str], hot: int, warm: int
) -> list[str]:
    """What is wrong with a score's explanation: the arithmetic (contributions sum exactly to the
    score, none negative, each close to weight × rating, weights sum to 100), the tier, the
    criteria (each rated once) and the evidence (every quote occurs in the lead's visible text,
    a rating above 0 has one, and no contact detail is ever quoted)."""
    problems: list[str] = []
    factors = score["factors"]
    total = sum(f["contribution"] for f in factors)
    if abs(total - score["score"]) > 1e-9:
        problems.append(f"contributions sum to {total!r}, score is {score['score']}")
    if any(f["contribution"] < 0 for f in factors):
        problems.append(f"negative contribution: {[f['contribution'] for f in factors]}")
    weights = sum(f["weight"] for f in factors)
    if abs(weights - 100) > 0.01 * len(factors):
        problems.append(f"weights sum to {weights}")
    for f in factors:
        if not 0 <= f["rating"] <= 1:
            problems.append(f"{f['criterion']}: rating {f['rating']}")
        if abs(f["contribution"] - f["weight"] * f["rating"]) > 0.5 + 1e-6:
            problems.append(f"{f['criterion']}: contribution {f['contribution']} for {f['weight']} × {f['rating']}")
    raw = sum(f["weight"] * f["rating"] for f in factors)
    if abs(raw - score["score"]) > 0.5 + 0.01:
        problems.append(f"score {score['score']} is not Σ weight × rating = {raw:.3f} rounded")
    if sorted(f["criterion"] for f in factors) != sorted(criteria):
        problems.append(f"criteria rated: {[f['criterion'] for f in factors]}")
    if score["tier"] != tier_for(score["score"], hot, warm):
        problems.append(f"tier {score['tier']} for score {score['score']} (hot ≥ {hot}, warm ≥ {warm})")
    texts = visible_texts(lead)
    contact = lead.get("contact") or {}
    secrets = [normal(str(contact[k])) for k in ("email", "phone") if contact.get(k)]
    for f in factors:
        if f["rating"] > 0 and not f["evidence"]:
            problems.append(f"{f['criterion']}: rated {f['rating']} without evidence")
        for quote in f["evidence"]:
            needle = quote_needle(quote)
            if len(needle) < 2 or not any(needle in t for t in texts):
                problems.append(f"{f['criterion']}: quote {quote!r} is not in the lead")
            if any(s in normal(quote) for s in secrets):
                problems.append(f"{f['criterion']}: quote {quote!r} carries a contact detail")
    return problems


def thresholds() -> tuple[list[str], int, int]:
    """(criterion ids, hot, warm) of the tenant's scoring settings, as stored."""
    settings = deps.scoring_configs().get(TENANT, fresh=True)
    return [c.id for c in settings.criteria], settings.thresholds.hot, settings.thresholds.warm
