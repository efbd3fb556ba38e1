"""`python -m cli score` against an in-memory fake of the leads and jobs API, through the CLI's own
HTTP code (the fake stands in for `urllib.request.urlopen`): the results file, bad rows by line,
resuming without upserting or queueing twice, a changed input, the API's own 422, Retry-After.

The fake validates leads with the API's model (`aigateway.scoring.models.LeadIn`), replays a score
request by its Idempotency-Key, and moves each job from queued to processing to succeeded over
polls. Sleep and clock are injected: no test waits.
"""

from __future__ import annotations

import csv
import email.message
import hashlib
import io
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aigateway.scoring.models import LeadIn
from cli import score as score_cli
from cli.__main__ import build_parser

API_KEY = "aig_test_key"
BASE_URL = "http://gateway.test"
POLLS_TO_FINISH = 2  # a job answers processing, then succeeded


class Reply:
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        self.status = status
        self.body = json.dumps(body).encode()
        self.headers = email.message.Message()
        self.headers["Content-Type"] = "application/json"
        for name, value in (headers or {}).items():
            self.headers[name] = value

    def read(self) -> bytes:
        return self.body

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def error(status: int, code: str, message: str, field: str | None = None, **headers: str) -> Reply:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return Reply(status, {"error": body, "request_id": "req-1"}, {k.replace("_", "-"): v for k, v in headers.items()})


class FakeApi:
    """The API contract in memory. Knobs: `max_size` (a stricter server rule than the CLI's),
    `fail_polls` (an exception to raise or a Reply to answer on every job poll), `throttle`
    (routes that answer 429 once), `lose_score_replies` (queue, then drop the answer)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.leads: dict[str, dict[str, Any]] = {}
        self.upserted: list[str] = []  # every lead id a successful upsert wrote, in order
        self.jobs: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[str, Reply]] = {}
        self.score_keys: list[str] = []
        self.max_size: int | None = None
        self.fail_polls: BaseException | Reply | None = None
        self.throttle: set[str] = set()
        self.lose_score_replies = 0
        self.auto_score: set[str] = set()  # lead ids an upsert re-scores itself (its item names the job)
        self.cannot_queue: set[str] = set()  # lead ids whose job the score request answers as failed
        self.now = 1000.0
        self.sleeps: list[float] = []

    # the injected clock and sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    # urllib.request.urlopen

    def open(self, request: urllib.request.Request, timeout: float) -> Reply:
        assert request.get_header("Authorization") == f"Bearer {API_KEY}"
        assert request.full_url.startswith(f"{BASE_URL}/v1/")
        method, path = request.get_method(), request.full_url.removeprefix(BASE_URL)
        data = request.data
        body = json.loads(data) if isinstance(data, bytes) else None
        with self.lock:
            route = f"{method} {path}" if not path.startswith("/v1/jobs/") else "GET /v1/jobs/{id}"
            self.calls[route] += 1
            if route in self.throttle:
                self.throttle.discard(route)
                reply = error(429, "rate_limited", "slow down", Retry_After="7")
            elif route == "POST /v1/leads":
                reply = self.upsert(body)
            elif route == "POST /v1/leads/score":
                reply = self.score(body, request.get_header("Idempotency-key"))
            else:
                reply = self.job(path.rsplit("/", 1)[1])
        if reply.status >= 400:
            raise urllib.error.HTTPError(request.full_url, reply.status, "error", reply.headers, io.BytesIO(reply.body))
        return reply

    def upsert(self, body: Any) -> Reply:
        leads = body["leads"]
        assert 1 <= len(leads) <= 500
        for index, lead in enumerate(leads):  # the whole request is checked before anything is written
            try:
                LeadIn.model_validate(lead)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                return error(422, "validation_error", first["msg"], f"leads.{index}.{where}")
            if self.max_size is not None and lead.get("size", 0) > self.max_size:
                return error(422, "validation_error", f"size above {self.max_size}", f"leads.{index}.size")
        items = []
        for lead in leads:
            known = self.leads.get(lead["lead_id"])
            status = "created" if known is None else "unchanged" if known == lead else "updated"
            self.leads[lead["lead_id"]] = lead
            self.upserted.append(lead["lead_id"])
            item = {"lead_id": lead["lead_id"], "status": status, "version": 1, "job_id": None}
            if lead["lead_id"] in self.auto_score and status != "unchanged":
                item["job_id"] = self.new_job(lead["lead_id"])
            items.append(item)
        return Reply(200, {"items": items})

    def score(self, body: Any, key: str | None) -> Reply:
        assert key, "every score request carries an Idempotency-Key"
        self.score_keys.append(key)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if key in self.idempotent:
            seen, reply = self.idempotent[key]
            if seen != digest:
                return error(422, "idempotency_key_reused", "the key was used with another body")
        else:
            unknown = [lead_id for lead_id in body["lead_ids"] if lead_id not in self.leads]
            if unknown:
                reply = error(404, "unknown_leads", f"{len(unknown)} unknown leads; nothing was queued", "lead_ids")
                reply.body = json.dumps({"error": {**json.loads(reply.body)["error"], "unknown_ids": unknown}}).encode()
                return reply
            jobs = []
            for lead_id in body["lead_ids"]:
                failed = lead_id in self.cannot_queue
                job_id = f"lost{lead_id}" if failed else self.new_job(lead_id)
                jobs.append({"lead_id": lead_id, "job_id": job_id, "status": "failed" if failed else "queued"})
            reply = Reply(202, {"jobs": jobs})
            self.idempotent[key] = (digest, reply)
        if self.lose_score_replies:
            self.lose_score_replies -= 1
            raise ConnectionResetError("connection reset after the jobs were queued")
        return reply

    def new_job(self, lead_id: str) -> str:
        job_id = f"job{len(self.jobs) + 1:04d}"
        self.jobs[job_id] = {"lead_id": lead_id, "polls": 0}
        return job_id

    def job(self, job_id: str) -> Reply:
        if isinstance(self.fail_polls, BaseException):
            raise self.fail_polls
        if isinstance(self.fail_polls, Reply):
            return self.fail_polls
        if job_id not in self.jobs:
            return error(404, "not_found", "no such job")
        job = self.jobs[job_id]
        job["polls"] += 1
        lead = self.leads[job["lead_id"]]
        done = job["polls"] >= POLLS_TO_FINISH
        status = "processing" if not done else "failed" if lead.get("industry") == "fail" else "succeeded"
        return Reply(
            200,
            {
                "job_id": job_id,
                "kind": "score_lead",
                "status": status,
                "created_at": "2026-11-02T10:00:00Z",
                "updated_at": "2026-11-02T10:00:05Z",
                "result": score_of(lead, job_id) if status == "succeeded" else None,
                "error": {"type": "ProviderError", "cause": "provider_unavailable"} if status == "failed" else None,
                "links": {"self": f"/v1/jobs/{job_id}"},
            },
        )


def score_of(lead: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A Score: size and events make it; four factors, so the top three must be chosen."""
    size = min(lead.get("size", 0), 5000) / 5000 * 40
    engagement = 15.0 * len(lead.get("events", []))
    factors = [
        {"criterion": "company_size", "weight": 40, "contribution": round(size, 1), "evidence": ["size"]},
        {"criterion": "engagement", "weight": 30, "contribution": engagement, "evidence": []},
        {"criterion": "seniority", "weight": 20, "contribution": 12.5 if "title" in lead else 0.0, "evidence": []},
        {"criterion": "source_quality", "weight": 10, "contribution": -2.0, "evidence": []},
    ]
    total = max(0, min(100, round(sum(f["contribution"] for f in factors))))
    return {
        "lead_id": lead["lead_id"],
        "score": total,
        "tier": "hot" if total >= 70 else "warm" if total >= 40 else "cold",
        "factors": factors,
        "rationale": "fake",
        "confidence": 0.9 if "notes" in lead else 0.5,
        "scorer": "llm" if "notes" in lead else "rules",
        "model": "gpt-fake" if "notes" in lead else "rules-v1",
        "criteria_version": 1,
        "prompt_version": "1",
        "data_hash": "h",
        "scored_at": "2026-11-02T10:00:05Z",
        "trigger": "api",
        "job_id": job_id,
    }


def run(fake: FakeApi, source: Path, *extra: str) -> int:
    argv = ["score", str(source), *extra, "--base-url", BASE_URL, "--api-key", API_KEY, "--no-progress"]
    args = build_parser().parse_args(argv)
    return score_cli.run(args, opener=fake.open, sleep=fake.sleep, clock=fake.clock)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write(path: Path, text: str, *, bom: bool = False) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


LEADS_CSV = (
    "lead_id,company,title,size,contact_name,contact_email,events,notes,Deal Stage,region\n"
    "acme-1,Acme,VP Sales,2500,Ann Lee,ann@acme.test,demo_request@2026-10-01;pricing_page,Asked for a demo,won,\n"
    "beta-2,Beta,,40,,,,,open,EU\n"
    "gamma-3,Gamma,CTO,5000,,,webinar@2026-09-30T12:00:00Z;email_reply;trial_signup,,,\n"
)


def test_happy_path_writes_results_in_input_order_with_tiers_and_top_factors(tmp_path: Path, capsys: Any) -> None:
    # Given a CSV with a BOM, three good leads, contact and event columns and two custom columns
    source = write(tmp_path / "leads.csv", LEADS_CSV, bom=True)
    fake = FakeApi()
    # When it is scored two leads per request
    status = run(fake, source, "--chunk", "2")
    captured = capsys.readouterr()
    # Then every row is scored, in input order, with its line, tier, scorer and top three factors
    assert status == 0, captured.err
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert list(rows[0]) == list(score_cli.RESULT_COLUMNS)
    assert [(r["line"], r["lead_id"], r["status"]) for r in rows] == [
        ("2", "acme-1", "succeeded"),
        ("3", "beta-2", "succeeded"),
        ("4", "gamma-3", "succeeded"),
    ]
    assert [(r["score"], r["tier"], r["scorer"], r["model"]) for r in rows] == [
        ("60", "warm", "llm", "gpt-fake"),
        ("0", "cold", "rules", "rules-v1"),
        ("96", "hot", "rules", "rules-v1"),
    ]
    assert rows[0]["top_factors"] == "engagement (+30.0); company_size (+20.0); seniority (+12.5)"
    assert rows[1]["top_factors"] == "company_size (+0.3); engagement (+0.0); seniority (+0.0)"
    assert rows[0]["confidence"] == "0.9" and rows[0]["error"] == ""
    assert {r["job_id"] for r in rows} == set(fake.jobs)
    # And the leads reached the API mapped to the contract's shape (empty cells left out)
    assert fake.leads["acme-1"] == {
        "lead_id": "acme-1",
        "company": "Acme",
        "title": "VP Sales",
        "size": 2500,
        "contact": {"name": "Ann Lee", "email": "ann@acme.test"},
        "events": [{"type": "demo_request", "at": "2026-10-01"}, {"type": "pricing_page"}],
        "notes": "Asked for a demo",
        "custom": {"Deal_Stage": "won"},
    }
    assert fake.leads["beta-2"] == {
        "lead_id": "beta-2",
        "company": "Beta",
        "size": 40,
        "custom": {"Deal_Stage": "open", "region": "EU"},
    }
    # And two chunks each way, every job polled until it ended, between rounds a sleep (injected)
    assert fake.calls == {"POST /v1/leads": 2, "POST /v1/leads/score": 2, "GET /v1/jobs/{id}": 3 * POLLS_TO_FINISH}
    assert fake.sleeps == [1.0]
    # And the state file is gone, no errors file was written, the summary counts tiers and scorers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leads.csv", "leads.scored.csv"]
    assert "column 'Deal Stage' is sent as custom field 'Deal_Stage'" in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert "succeeded 3" in summary and "cold 1" in summary and "hot 1" in summary and "warm 1" in summary
    assert "rules 2" in summary and "llm 1" in summary and summary.endswith(" s")


def test_bad_rows_are_reported_by_their_line_and_the_others_are_scored(tmp_path: Path, capsys: Any) -> None:
    # Given rows with a bad size, no id, a duplicate id and a bad event, after a quoted two-line note
    source = write(
        tmp_path / "leads.csv",
        "id,company,size,notes,events\n"  # line 1
        'a-1,Acme,10,"two\nlines",\n'  # lines 2-3
        "b-2,Beta,12.5,,\n"  # line 4: size is not a whole number
        ",Nameless,3,,\n"  # line 5: no id
        "\n"  # line 6: blank, skipped
        "a-1,Acme again,4,,\n"  # line 7: duplicate of line 2
        "c 3,Gamma,,,\n"  # line 8: id has a space
        "d-4,Delta,-3,,Demo Request\n"  # line 9: negative size and an event type the API refuses
        "e-5,Epsilon,5,,webinar\n",  # line 10
    )
    fake = FakeApi()
    # When it is scored
    status = run(fake, source)
    out, err = capsys.readouterr()
    # Then each bad row is named by its line in the file with the reason, on stderr and in the errors file
    assert status == 3
    errors = read_csv(tmp_path / "leads.scored.errors.csv")
    assert [(e["line"], e["lead_id"]) for e in errors] == [
        ("4", "b-2"),
        ("5", ""),
        ("7", "a-1"),
        ("8", "c 3"),
        ("9", "d-4"),
    ]
    reasons = {e["line"]: e["error"] for e in errors}
    assert "size must be a whole number" in reasons["4"] and "'12.5'" in reasons["4"]
    assert reasons["5"] == "no lead_id"
    assert reasons["7"] == "duplicate lead_id 'a-1' (first on line 2)"
    assert "lead_id 'c 3'" in reasons["8"]
    assert "'-3'" in reasons["9"] and "'Demo Request'" in reasons["9"]
    for line in ("4", "5", "7", "8", "9"):
        assert f"line {line}: {reasons[line]}" in err
    # And the good rows were scored; only they reached the API
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert [(r["line"], r["status"]) for r in rows] == [
        ("2", "succeeded"),
        ("4", "invalid"),
        ("5", "invalid"),
        ("7", "invalid"),
        ("8", "invalid"),
        ("9", "invalid"),
        ("10", "succeeded"),
    ]
    assert sorted(fake.leads) == ["a-1", "e-5"] and fake.leads["a-1"]["notes"] == "two\nlines"
    assert "invalid 5" in out and "succeeded 2" in out


def test_a_failed_job_is_reported_and_the_exit_status_says_so(tmp_path: Path, capsys: Any) -> None:
    # Given two leads, one whose scoring job will fail
    source = write(tmp_path / "leads.csv", "lead_id,industry\nok-1,software\nko-2,fail\n")
    fake = FakeApi()
    # When it is scored
    status = run(fake, source)
    out = capsys.readouterr().out
    # Then the run finishes with 3, the failed row carries the job's error, and the summary counts both
    assert status == 3
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert [(r["lead_id"], r["status"], r["error"]) for r in rows] == [
        ("ok-1", "succeeded", ""),
        ("ko-2", "failed", "ProviderError: provider_unavailable"),
    ]
    assert "failed 1" in out and "succeeded 1" in out
    assert not (tmp_path / "leads.scored.errors.csv").exists()


@pytest.mark.parametrize(
    ("failure", "exit_status"),
    [
        (KeyboardInterrupt(), 130),
        (error(500, "internal_error", "internal error; quote the request_id to support"), 1),
    ],
    ids=["interrupted", "server-error"],
)
def test_a_rerun_after_the_queue_step_neither_upserts_nor_queues_again(
    tmp_path: Path, capsys: Any, failure: Any, exit_status: int
) -> None:
    # Given five leads, and an API whose job polls fail (or a ^C) once the jobs are queued
    source = write(tmp_path / "leads.csv", "lead_id,size\n" + "".join(f"l-{i},{i * 100}\n" for i in range(5)))
    fake = FakeApi()
    fake.fail_polls = failure
    # When the run stops there
    first = run(fake, source, "--chunk", "2")
    err = capsys.readouterr().err
    state_file = tmp_path / "leads.scored.csv.state.json"
    # Then it says how to resume, keeps its state, and writes no results
    assert first == exit_status
    assert "rerun the same command to resume" in err and str(state_file) in err
    state = json.loads(state_file.read_text())
    assert state["upserted"] == [0, 1, 2] and state["queued"] == [0, 1, 2] and len(state["jobs"]) == 5
    assert not (tmp_path / "leads.scored.csv").exists()
    upserts, queues = fake.calls["POST /v1/leads"], fake.calls["POST /v1/leads/score"]
    assert (upserts, queues, len(fake.jobs)) == (3, 3, 5)
    # When the API recovers and the same command runs again
    fake.fail_polls = None
    second = run(fake, source, "--chunk", "2")
    # Then it only polls: no lead is upserted again, no second job is queued, and every lead is scored
    assert second == 0, capsys.readouterr().err
    assert fake.calls["POST /v1/leads"] == upserts and fake.calls["POST /v1/leads/score"] == queues
    assert len(fake.jobs) == 5 and len(fake.upserted) == 5
    assert [r["status"] for r in read_csv(tmp_path / "leads.scored.csv")] == ["succeeded"] * 5
    assert not state_file.exists()


def test_a_lost_score_reply_is_retried_with_the_same_idempotency_key(tmp_path: Path, capsys: Any) -> None:
    # Given an API that queues the first score request but whose answer is lost on the way back
    source = write(tmp_path / "leads.csv", "lead_id\nx-1\nx-2\nx-3\n")
    fake = FakeApi()
    fake.lose_score_replies = 1
    # When it is scored
    status = run(fake, source)
    # Then the request is sent again with the same key, and the API's replay means one job per lead
    assert status == 0, capsys.readouterr().err
    assert len(fake.score_keys) == 2 and fake.score_keys[0] == fake.score_keys[1]
    assert len(fake.jobs) == 3
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert fake.score_keys[0].startswith(f"cli-score-{sha[:32]}-0-")


def test_a_changed_input_is_refused_unless_restart(tmp_path: Path, capsys: Any) -> None:
    # Given a run interrupted after queueing, which left its state file
    source = write(tmp_path / "leads.csv", "lead_id\nx-1\nx-2\n")
    fake = FakeApi()
    fake.fail_polls = KeyboardInterrupt()
    assert run(fake, source) == 130
    capsys.readouterr()
    calls = sum(fake.calls.values())
    # When the input changes and the same command runs again
    write(source, "lead_id\nx-1\nx-2\nx-3\n")
    refused = run(fake, source)
    err = capsys.readouterr().err
    # Then it refuses, says why and what to do, and calls nothing
    assert refused == 2
    assert "belongs to another input" in err and "--restart" in err
    assert sum(fake.calls.values()) == calls
    # When it runs with --restart
    fake.fail_polls = None
    assert run(fake, source, "--restart") == 0, capsys.readouterr().err
    # Then the new input is scored from scratch
    assert [r["lead_id"] for r in read_csv(tmp_path / "leads.scored.csv")] == ["x-1", "x-2", "x-3"]
    assert fake.upserted == ["x-1", "x-2", "x-1", "x-2", "x-3"]


def test_a_row_the_api_rejects_is_dropped_and_the_rest_of_its_chunk_resent(tmp_path: Path, capsys: Any) -> None:
    # Given an API stricter than the CLI about size: it refuses 500,000 employees
    source = write(tmp_path / "leads.csv", "lead_id,size\nr-0,10\nr-1,500000\nr-2,30\n")
    fake = FakeApi()
    fake.max_size = 100_000
    # When it is scored in one chunk
    status = run(fake, source)
    err = capsys.readouterr().err
    # Then the 422 naming leads.1.size drops that row (line 3), and only the other two are written and scored
    assert status == 3
    assert fake.calls["POST /v1/leads"] == 2 and fake.upserted == ["r-0", "r-2"]
    assert "line 3: rejected by the API: size above 100000 (leads.1.size)" in err
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert [(r["line"], r["lead_id"], r["status"]) for r in rows] == [
        ("2", "r-0", "succeeded"),
        ("3", "r-1", "invalid"),
        ("4", "r-2", "succeeded"),
    ]
    errors = read_csv(tmp_path / "leads.scored.errors.csv")
    assert errors == [{"line": "3", "lead_id": "r-1", "error": "rejected by the API: size above 100000 (leads.1.size)"}]
    assert len(fake.jobs) == 2


def test_429_retry_after_is_honoured_on_upsert_and_on_polls(tmp_path: Path, capsys: Any) -> None:
    # Given an API that answers 429 with Retry-After: 7 to the first upsert and the first poll
    source = write(tmp_path / "leads.csv", "lead_id\nq-1\nq-2\nq-3\nq-4\nq-5\n")
    fake = FakeApi()
    fake.throttle = {"POST /v1/leads", "GET /v1/jobs/{id}"}
    # When it is scored
    status = run(fake, source, "--poll-interval", "0.5")
    # Then it waited the 7 s each time before asking again, and still scored everything
    assert status == 0, capsys.readouterr().err
    assert fake.sleeps.count(7.0) == 2
    assert fake.calls["POST /v1/leads"] == 2
    assert fake.calls["GET /v1/jobs/{id}"] >= 5 * POLLS_TO_FINISH + 1


def test_jobs_still_running_after_the_timeout_stop_the_run_resumably(tmp_path: Path, capsys: Any) -> None:
    # Given jobs that never end
    source = write(tmp_path / "leads.csv", "lead_id\nt-1\n")
    fake = FakeApi()
    fake.fail_polls = Reply(200, {"job_id": "job0001", "status": "processing", "result": None, "error": None})
    # When the timeout is 10 s
    status = run(fake, source, "--timeout", "10")
    err = capsys.readouterr().err
    # Then it stops with 1, says so, backs off meanwhile, and keeps the state to resume
    assert status == 1
    assert "1 job still running after 10 s" in err and "rerun the same command to resume" in err
    assert fake.sleeps[:3] == [1.0, 1.5, 2.25]
    assert (tmp_path / "leads.scored.csv.state.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("company,size\nAcme,3\n", "no lead_id (or id) column"),
        ("lead_id\n", "has a header but no rows"),
    ],
    ids=["missing-file", "no-id-column", "no-rows"],
)
def test_unusable_input_is_a_usage_error(tmp_path: Path, capsys: Any, text: str | None, message: str) -> None:
    source = tmp_path / "leads.csv"
    if text is not None:
        write(source, text)
    fake = FakeApi()
    assert run(fake, source) == 2
    assert message in capsys.readouterr().err
    assert not fake.calls


def test_the_leads_it_builds_are_the_ones_the_api_accepts(tmp_path: Path) -> None:
    # Given rows the CLI accepts and rows it refuses for what the API's model checks
    source = write(
        tmp_path / "leads.csv",
        "lead_id,size,title,notes,events\n"
        f"ok.1:a_b-c,0,{'t' * 300},{'n' * 4000},demo_request@2026-01-02T03:04:05+01:00; webinar\n"
        f"{'i' * 65},,,,\n"
        f"big,,{'t' * 301},,\n"
        f"long,,,{'n' * 4001},\n"
        "evt,,,,Demo\n"
        "when,,,,webinar@yesterday\n"
        "huge,10000001,,,\n",
    )
    rows = score_cli.read_input(source).rows
    # Then the API's own model agrees with the CLI on each of them
    for row in rows:
        try:
            LeadIn.model_validate(row.lead)
            api_accepts = True
        except ValidationError:
            api_accepts = False
        assert api_accepts == (row.error is None), (row.line, row.error)
    assert [row.error is None for row in rows] == [True] + [False] * 6


def test_a_rescore_the_upsert_queued_itself_is_polled_not_queued_again(tmp_path: Path, capsys: Any) -> None:
    # Given an API that re-scores new leads on upsert (naming the job in the upsert's item) for two of three
    source = write(tmp_path / "leads.csv", "lead_id\nu-1\nu-2\nu-3\n")
    fake = FakeApi()
    fake.auto_score = {"u-1", "u-3"}
    # When it is scored
    status = run(fake, source)
    # Then only the third is queued explicitly, each lead has exactly one job, and all are scored with it
    assert status == 0, capsys.readouterr().err
    assert fake.calls["POST /v1/leads/score"] == 1 and len(fake.jobs) == 3
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert {r["lead_id"]: fake.jobs[r["job_id"]]["lead_id"] for r in rows} == {"u-1": "u-1", "u-2": "u-2", "u-3": "u-3"}
    assert [r["status"] for r in rows] == ["succeeded"] * 3


def test_a_job_the_api_could_not_queue_is_a_failed_row(tmp_path: Path, capsys: Any) -> None:
    # Given an API that answers one lead's job as failed to queue
    source = write(tmp_path / "leads.csv", "lead_id\nv-1\nv-2\n")
    fake = FakeApi()
    fake.cannot_queue = {"v-2"}
    # When it is scored
    status = run(fake, source)
    # Then that row is failed with the reason (its job is never polled), the other one scored
    assert status == 3, capsys.readouterr().err
    rows = read_csv(tmp_path / "leads.scored.csv")
    assert [(r["lead_id"], r["status"], r["error"]) for r in rows] == [
        ("v-1", "succeeded", ""),
        ("v-2", "failed", "the API could not queue a job for it"),
    ]
    assert fake.calls["GET /v1/jobs/{id}"] == POLLS_TO_FINISH


def test_unknown_leads_stop_the_run_naming_them(tmp_path: Path, capsys: Any) -> None:
    # Given a run whose upserts were recorded, against an API that has since lost one of the leads
    source = write(tmp_path / "leads.csv", "lead_id\nw-1\nw-2\n")
    fake = FakeApi()
    original = fake.upsert

    def upsert_then_forget(body: Any) -> Reply:
        reply = original(body)
        fake.leads.pop("w-2", None)
        return reply

    fake.upsert = upsert_then_forget  # type: ignore[method-assign]
    # When it is scored
    status = run(fake, source)
    err = capsys.readouterr().err
    # Then it stops with 1, printing the API's error and the unknown ids, resumable, with nothing queued
    assert status == 1
    assert "HTTP 404 unknown_leads" in err and "unknown lead ids: w-2" in err
    assert "rerun the same command to resume" in err and not fake.jobs
