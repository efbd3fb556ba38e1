"""Leads: upserts, score requests, reads, and the triggers that queue re-scoring (API side);
`LeadScorer` is the workflow side: one lead scored by a stage of the chain, then persisted.

A scoring job is a `score_lead` job (aigateway/jobs.py) whose request names the lead and what
triggered it; the workflow reads the lead when it runs, so it scores the latest data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aigateway.auth import Principal
from aigateway.completion import CallContext, Completions, CompletionSpec, Stage, json_output
from aigateway.errors import InvalidCursor, JobCancelled, NotFound, UnknownLeads, VersionConflict
from aigateway.generation import model_calls, response_format_of
from aigateway.governance.config import CONFIG_TTL_S, GovernanceConfigs, TenantCache
from aigateway.governance.limits import LimitStatus, RateLimiter, Subject
from aigateway.ids import new_id
from aigateway.jobs import KIND_SCORE_LEAD, JobMessage, enqueue_many
from aigateway.llm.catalog import get_profile
from aigateway.observability import count, logger
from aigateway.paging import decode_cursor, encode_cursor
from aigateway.prompts.registry import TemplateRegistry
from aigateway.prompts.render import render_messages
from aigateway.scoring.models import (
    MAX_LEADS_PER_CALL,
    LeadData,
    LeadId,
    LeadIn,
    ScoreOut,
    ScoringSettings,
    ScoringSettingsIn,
    Tier,
    Trigger,
)
from aigateway.scoring.records import Row
from aigateway.scoring.scorer import (
    RULES_MODEL,
    LeadView,
    check_judgement,
    data_hash,
    explain,
    prompt_variables,
    rules_judgement,
)
from aigateway.settings import ConfigurationError
from aigateway.store.dynamo import ConditionFailed, Dynamo, Item, TransactionCancelled
from aigateway.store.repos import TIER_RANK, Jobs, Leads, ScoringSettingsRepo

FEATURE = "leads"  # rate limits on writes; budgets and ledger rows of scoring
TEMPLATE = "lead_scoring"
# An automatic re-score (upsert, schedule, import) is not queued again while one queued within
# this long is pending; after it, a lost job no longer blocks the lead.
PENDING_GUARD = timedelta(hours=1)
ScoreMode = Literal["auto", "always", "never"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- tenant settings ------------------------------------------------------------------------------


class ScoringConfigs(TenantCache[ScoringSettings]):
    """Tenants' scoring settings, read through the cache (30 s per environment)."""

    def __init__(self, repo: ScoringSettingsRepo, *, ttl_s: float = CONFIG_TTL_S):
        super().__init__(self._read, ttl_s=ttl_s)
        self.repo = repo

    def _read(self, tenant_id: str) -> ScoringSettings:
        item = self.repo.get(tenant_id)
        if item is None:
            return ScoringSettings()
        stored = {
            "version": item["version"],
            "updated_at": item.get("updated_at"),
            "updated_by": item.get("updated_by"),
        }
        return ScoringSettings.model_validate({**item["settings"], **stored})

    def put(self, tenant_id: str, settings: ScoringSettingsIn, *, updated_by: str, at: str) -> ScoringSettings:
        """Stores the next version; VersionConflict if another change landed since it was read."""
        current = self.get(tenant_id, fresh=True)
        version = current.version + 1
        try:
            self.repo.put(tenant_id, settings.model_dump(mode="json"), version=version, at=at, updated_by=updated_by)
        except ConditionFailed as exc:
            raise VersionConflict("the scoring settings changed meanwhile; read them and try again") from exc
        self.forget(tenant_id)
        return ScoringSettings.model_validate(
            {**settings.model_dump(), "version": version, "updated_at": at, "updated_by": updated_by}
        )


# --- API models -------------------------------------------------------------------------------------


class BulkUpsertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    leads: list[LeadIn] = Field(min_length=1, max_length=MAX_LEADS_PER_CALL)
    score: ScoreMode = Field(
        default="auto",
        description="auto: re-score leads that are new or whose trigger fields changed; always; never",
    )

    @model_validator(mode="after")
    def _unique(self) -> BulkUpsertIn:
        seen: set[str] = set()
        for i, lead in enumerate(self.leads):
            if lead.lead_id in seen:
                raise ValueError(f"leads.{i}.lead_id: {lead.lead_id!r} appears twice in this request")
            seen.add(lead.lead_id)
        return self


class ScoreRequestIn(BaseModel):
    """POST /v1/leads/score: existing leads by id, or leads given inline (upserted first)."""

    model_config = ConfigDict(extra="forbid")

    lead_ids: list[LeadId] | None = Field(default=None, min_length=1, max_length=MAX_LEADS_PER_CALL)
    leads: list[LeadIn] | None = Field(default=None, min_length=1, max_length=MAX_LEADS_PER_CALL)

    @model_validator(mode="after")
    def _one_of(self) -> ScoreRequestIn:
        if (self.lead_ids is None) == (self.leads is None):
            raise ValueError("give either lead_ids or leads")
        ids = self.lead_ids if self.lead_ids is not None else [lead.lead_id for lead in self.leads or []]
        if len(set(ids)) != len(ids):
            raise ValueError("a lead appears twice in this request")
        return self


class UpsertOut(BaseModel):
    lead_id: str
    status: Literal["created", "updated", "unchanged"]
    version: int
    job_id: str | None = Field(default=None, description="The re-score this upsert queued, if any")


class BulkUpsertOut(BaseModel):
    items: list[UpsertOut]


class ScoreJobOut(BaseModel):
    lead_id: str
    job_id: str
    status: Literal["queued", "failed"] = Field(description="failed: could not be queued; retry the job")


class ScoreJobsOut(BaseModel):
    jobs: list[ScoreJobOut]


class LeadOut(BaseModel):
    lead_id: str
    version: int
    data_hash: str
    created_at: str
    updated_at: str
    lead: LeadData
    score: ScoreOut | None = Field(description="The latest score and its explanation; null until scored")
    pending_job: str | None = Field(default=None, description="An automatic re-score that is queued")


class LeadSummary(BaseModel):
    lead_id: str
    company: str | None
    title: str | None
    score: int | None
    tier: Tier | None
    scorer: str | None
    scored_at: str | None


class LeadPage(BaseModel):
    items: list[LeadSummary]
    next_cursor: str | None


class ScoreHistoryPage(BaseModel):
    items: list[ScoreOut] = Field(description="Every score of the lead, newest first: the audit trail")
    next_cursor: str | None


# --- the API side -----------------------------------------------------------------------------------


def _value(record: Item, path: str) -> Any:
    top, _, sub = path.partition(".")
    value = record.get(top)
    return value.get(sub) if sub and isinstance(value, dict) else value


def _changed(old: Item | None, new: Item, paths: Iterable[str]) -> bool:
    if old is None:
        return True
    return any(_value(old, p) != _value(new, p) for p in paths)


@dataclass
class LeadService:
    leads: Leads
    jobs: Jobs
    configs: ScoringConfigs
    governance: GovernanceConfigs
    limiter: RateLimiter
    queue_url: str | None
    clock: Callable[[], datetime] = field(default=_utc_now)

    def _limit(self, principal: Principal, client_ip: str | None, now: datetime) -> LimitStatus:
        p = principal
        rules = self.governance.get(p.tenant_id).effective_rate_limits(FEATURE)
        subject = Subject(p.tenant_id, p.key_id, p.user_id, client_ip, FEATURE)
        return self.limiter.acquire(subject, rules, now_us=int(now.timestamp() * 1_000_000))

    def upsert(
        self, principal: Principal, lead_id: str, data: LeadData, *, score: ScoreMode, client_ip: str | None
    ) -> tuple[UpsertOut, dict[str, str]]:
        lead = LeadIn.model_validate({**data.model_dump(), "lead_id": lead_id})
        out, limits = self.upsert_many(principal, BulkUpsertIn(leads=[lead], score=score), client_ip=client_ip)
        return out.items[0], limits

    def upsert_many(
        self, principal: Principal, request: BulkUpsertIn, *, client_ip: str | None, trigger: Trigger = "upsert"
    ) -> tuple[BulkUpsertOut, dict[str, str]]:
        """Writes each lead (unchanged ones are not rewritten), then queues the re-scores due."""
        now = self.clock()
        limits = self._limit(principal, client_ip, now) if trigger == "upsert" else LimitStatus(())
        tenant = principal.tenant_id
        settings = self.configs.get(tenant)
        existing = self.leads.get_many(tenant, [lead.lead_id for lead in request.leads])
        at = now.isoformat()
        results: list[UpsertOut] = []
        to_score: list[str] = []
        for lead in request.leads:
            data = LeadData.model_validate(lead.model_dump(exclude={"lead_id"}))
            stored = data.model_dump(mode="json", exclude_none=True)
            digest = data_hash(data)
            old = existing.get(lead.lead_id)
            if old is not None and old.get("data_hash") == digest:
                status, version = "unchanged", int(old["version"])
            else:
                try:
                    written = self.leads.upsert(
                        tenant,
                        lead.lead_id,
                        data=stored,
                        data_hash=digest,
                        at=at,
                        version=int(old["version"]) if old is not None else None,
                    )
                except ConditionFailed as exc:
                    raise VersionConflict(
                        f"lead {lead.lead_id!r} changed while this request ran; nothing after it was written",
                        field="lead_id",
                    ) from exc
                status, version = ("created" if old is None else "updated"), int(written["version"])
            due = {
                "always": True,
                "never": False,
                "auto": status != "unchanged"
                and _changed(old.get("data") if old else None, stored, settings.trigger_fields),
            }[request.score]
            if trigger == "import" and status == "unchanged" and old is not None and "latest" not in old:
                due = True  # an import scores every lead it names that has no score yet
            if due:
                to_score.append(lead.lead_id)
            results.append(UpsertOut(lead_id=lead.lead_id, status=status, version=version))
        queued = dict(self._queue(principal, to_score, trigger=trigger, at=at, automatic=request.score == "auto"))
        items = [r.model_copy(update={"job_id": queued.get(r.lead_id)}) for r in results]
        return BulkUpsertOut(items=items), limits.headers()

    def request_scores(
        self, principal: Principal, request: ScoreRequestIn, *, client_ip: str | None
    ) -> tuple[ScoreJobsOut, dict[str, str]]:
        """Queues one scoring job per lead; unknown ids are refused before anything is queued."""
        now = self.clock()
        limits = self._limit(principal, client_ip, now)
        if request.leads is not None:
            self.upsert_many(principal, BulkUpsertIn(leads=request.leads, score="never"), client_ip=None, trigger="api")
            ids = [lead.lead_id for lead in request.leads]
        else:
            ids = list(request.lead_ids or [])
            found = self.leads.get_many(principal.tenant_id, ids)
            unknown = [i for i in ids if i not in found]
            if unknown:
                raise UnknownLeads(
                    f"{len(unknown)} of the lead ids are not leads of this tenant; nothing was queued",
                    field="lead_ids",
                    details={"unknown_ids": unknown[:50]},
                )
        queued = self._jobs(principal, ids, trigger="api", at=now.isoformat())
        jobs = [
            ScoreJobOut(lead_id=lead_id, job_id=job_id, status="queued" if ok else "failed")
            for lead_id, (job_id, ok) in zip(ids, queued, strict=True)
        ]
        return ScoreJobsOut(jobs=jobs), limits.headers()

    def _jobs(
        self,
        principal: Principal,
        lead_ids: list[str],
        *,
        trigger: Trigger,
        at: str,
        ids: list[str] | None = None,
        claimed: bool = False,
    ) -> list[tuple[str, bool]]:
        """Queues the jobs; `claimed`: each lead was marked with its job (an automatic re-score),
        so the workflow clears the mark when the job ends."""
        if not lead_ids:
            return []
        if not self.queue_url:
            raise ConfigurationError("JOBS_QUEUE_URL is not set")
        requests = [
            {"lead_id": lead_id, "trigger": trigger, **({"claimed": True} if claimed else {})} for lead_id in lead_ids
        ]
        result = enqueue_many(
            self.jobs,
            self.queue_url,
            principal=principal,
            kind=KIND_SCORE_LEAD,
            requests=requests,
            created_at=at,
            ids=ids,
        )
        count("ScoringJobsQueued", trigger=trigger)
        return result

    def _queue(
        self, principal: Principal, lead_ids: list[str], *, trigger: Trigger, at: str, automatic: bool
    ) -> list[tuple[str, str]]:
        """(lead id, job id) of the re-scores queued. Automatic ones skip a lead with one pending:
        each is claimed on the lead first (a conditional write), so concurrent triggers queue one."""
        ids = [new_id() for _ in lead_ids]
        if automatic:
            guard = (datetime.fromisoformat(at) - PENDING_GUARD).isoformat()
            pairs = [
                (lead_id, job_id)
                for lead_id, job_id in zip(lead_ids, ids, strict=True)
                if self.leads.claim_rescore(principal.tenant_id, lead_id, job_id=job_id, at=at, unless_since=guard)
            ]
            lead_ids, ids = [p[0] for p in pairs], [p[1] for p in pairs]
        self._jobs(principal, lead_ids, trigger=trigger, at=at, ids=ids, claimed=automatic)
        return list(zip(lead_ids, ids, strict=True))

    # --- reads ---------------------------------------------------------------------------------------

    def get(self, principal: Principal, lead_id: str) -> LeadOut:
        item = self.leads.get(principal.tenant_id, lead_id)
        if item is None:
            raise NotFound(f"no lead {lead_id!r}", field="lead_id")
        latest = item.get("latest")
        return LeadOut(
            lead_id=lead_id,
            version=int(item["version"]),
            data_hash=str(item["data_hash"]),
            created_at=str(item["created_at"]),
            updated_at=str(item["updated_at"]),
            lead=LeadData.model_validate(item["data"]),
            score=ScoreOut.model_validate(latest) if latest else None,
            pending_job=item.get("pending_job"),
        )

    def history(self, principal: Principal, lead_id: str, *, limit: int, cursor: str | None) -> ScoreHistoryPage:
        if self.leads.get(principal.tenant_id, lead_id) is None:
            raise NotFound(f"no lead {lead_id!r}", field="lead_id")
        after = decode_cursor(cursor, keys=("after",))
        items, last = self.leads.history(
            principal.tenant_id, lead_id, limit=limit, after=after["after"] if after else None
        )
        return ScoreHistoryPage(
            items=[ScoreOut.model_validate(_score_fields(i)) for i in items],
            next_cursor=encode_cursor({"after": last} if last else None),
        )

    def ranked(self, principal: Principal, *, tier: Tier | None, limit: int, cursor: str | None) -> LeadPage:
        after = decode_cursor(cursor, keys=("after",))
        if after is not None and tier is not None and not after["after"].startswith(TIER_RANK[tier] + "#"):
            # DynamoDB refuses a start key outside the query's key condition (a 500, not a 400).
            raise InvalidCursor("the cursor belongs to another tier's list", field="cursor")
        items, last = self.leads.ranked(
            principal.tenant_id, tier=tier, limit=limit, after=after["after"] if after else None
        )
        summaries = []
        for item in items:
            latest, data = item.get("latest") or {}, item.get("data") or {}
            summaries.append(
                LeadSummary(
                    lead_id=str(item["lead_id"]),
                    company=data.get("company"),
                    title=data.get("title"),
                    score=int(latest["score"]) if latest else None,
                    tier=latest.get("tier") if latest else None,
                    scorer=latest.get("scorer") if latest else None,
                    scored_at=latest.get("scored_at") if latest else None,
                )
            )
        return LeadPage(items=summaries, next_cursor=encode_cursor({"after": last} if last else None))

    # --- triggers ------------------------------------------------------------------------------------

    def rescore_stale(self, tenant_id: str, *, limit: int) -> int:
        """Queues re-scores of the tenant's leads scored longer ago than its freshness window
        (never-scored leads first); returns how many were queued."""
        now = self.clock()
        settings = self.configs.get(tenant_id)
        before = (now - timedelta(days=settings.freshness_days)).isoformat()
        stale = self.leads.scored_before(tenant_id, before, limit=limit)
        principal = system_principal(tenant_id, "schedule")
        lead_ids = [str(i["lead_id"]) for i in stale]
        queued = self._queue(principal, lead_ids, trigger="stale", at=now.isoformat(), automatic=True)
        return len(queued)

    def import_rows(self, tenant_id: str, rows: Iterable[Row], *, chunk: int = MAX_LEADS_PER_CALL) -> ImportReport:
        """Upserts the good rows (scoring every new, changed or never-scored lead); reports bad ones."""
        principal = system_principal(tenant_id, "import")
        report = ImportReport()
        batch: list[LeadIn] = []

        def flush() -> None:
            if not batch:
                return
            out, _ = self.upsert_many(principal, BulkUpsertIn(leads=batch), client_ip=None, trigger="import")
            for item in out.items:
                report.count(item.status)
                report.queued += item.job_id is not None
            batch.clear()

        for row in rows:
            if row.lead is None:
                report.rejected.append({"line": row.line, "lead_id": row.lead_id, "error": row.error})
                continue
            batch.append(row.lead)
            if len(batch) >= chunk:
                flush()
        flush()
        return report


class ImportReport(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    queued: int = 0
    rejected: list[dict[str, Any]] = Field(default_factory=list, description="Bad rows: line, lead_id, error")

    def count(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


def system_principal(tenant_id: str, source: str) -> Principal:
    """Who automatic work runs as: the tenant, with the trigger as user and key (ledger attribution)."""
    return Principal(tenant_id=tenant_id, user_id=f"system:{source}", key_id=source, role="member")


def _score_fields(item: Item) -> Item:
    return {k: v for k, v in item.items() if k in ScoreOut.model_fields}


# --- the workflow side ------------------------------------------------------------------------------


@dataclass
class LeadScorer:
    db: Dynamo
    leads: Leads
    jobs: Jobs
    configs: ScoringConfigs
    templates: Callable[[], TemplateRegistry]
    completions: Completions
    clock: Callable[[], datetime] = field(default=_utc_now)

    def score(self, job: JobMessage, ctx: CallContext, *, stage: Stage, degraded_reason: str | None) -> dict[str, Any]:
        """One stage of the chain for one lead: the LLM scorer (primary, fallback) or the rules
        scorer (degraded). Returns the score with its explanation (ScoreOut as JSON)."""
        tenant, lead_id = job.principal.tenant_id, str(job.request["lead_id"])
        item = self.leads.get(tenant, lead_id)
        if item is None:
            raise NotFound(f"no lead {lead_id!r}", field="lead_id")
        lead = LeadData.model_validate(item["data"])
        settings = self.configs.get(tenant)
        view = LeadView.of(lead, settings)
        now = self.clock()
        as_of = now.date()
        template = self.templates().get(TEMPLATE, None)
        messages = render_messages(template, prompt_variables(view, settings, as_of))
        profile = get_profile(settings.model_profile or template.model_profile)
        calls = model_calls(template, profile, template.max_tokens, caller_chose=settings.model_profile is not None)
        schema = json_output(template.output_model)

        def validate(content: str) -> Any:
            judgement = schema(content)
            check_judgement(judgement, settings.criteria, view)
            return judgement

        spec = CompletionSpec(
            calls=calls,
            messages=messages,
            response_format=response_format_of(template),
            cache_ttl_s=template.cache_ttl_seconds,
            validate=validate,
            static_answer=json.dumps(rules_judgement(view, settings, as_of)),
            static_model=RULES_MODEL,
            stale_if_error_s=0,
        )
        result = self.completions.complete(
            replace(ctx, template=template.ref), spec, stage=stage, degraded_reason=degraded_reason
        )
        rules = result.served_by == "static_answer"
        score, factors = explain(result.output, settings.criteria)
        out = ScoreOut(
            lead_id=lead_id,
            score=score,
            tier=settings.thresholds.tier(score),
            factors=factors,
            rationale=str(result.output.get("rationale", "")),
            confidence=float(result.output.get("confidence", 0)),
            scorer="rules" if rules else "llm",
            model=RULES_MODEL if rules else str(result.model),
            served_by=result.served_by,
            degraded_reason=result.degraded_reason,
            attempts=result.attempts,
            criteria_version=settings.version,
            prompt_version=template.ref,
            data_hash=str(item["data_hash"]),
            as_of=as_of.isoformat(),
            scored_at=now.isoformat(),
            trigger=str(job.request.get("trigger", "api")),
            job_id=job.job_id,
        )
        if rules:
            count("LeadsScoredByRules", reason=result.degraded_reason or "unknown")
        return out.model_dump(mode="json")

    def persist(self, job: JobMessage, result: dict[str, Any]) -> None:
        """The audit record and the job's success in one transaction (once per run), then the
        lead's latest score (unless a later score is already there)."""
        score = ScoreOut.model_validate(result)
        tenant, at = job.principal.tenant_id, self.clock().isoformat()
        record = {**score.model_dump(mode="json"), "run": job.run, "execution": job.execution_name, "tenant_id": tenant}
        try:
            self.db.transact(
                [
                    self.leads.score_record_tx(tenant, score.lead_id, job.execution_name, record),
                    self.jobs.succeed_tx(job.job_id, tenant_id=tenant, at=at, result=result),
                ]
            )
        except TransactionCancelled as exc:
            if exc.failed(1) and not exc.failed(0):
                raise JobCancelled(f"job {job.job_id} is no longer processing; its score is not written") from exc
            if not exc.failed(0):
                raise
            # The record exists: an earlier Persist of this run committed. Finish what it began.
        summary = {k: v for k, v in record.items() if k in ScoreOut.model_fields}
        self.leads.set_latest(
            tenant, score.lead_id, summary=summary, tier=score.tier, score=score.score, scored_at=score.scored_at
        )
        self.release(job)
        logger().info(
            "lead scored",
            extra={"lead_id": score.lead_id, "score": score.score, "tier": score.tier, "scorer": score.scorer},
        )

    def release(self, job: JobMessage) -> None:
        """An ended automatic re-score no longer blocks the next one (jobs that claimed nothing,
        like those of POST /v1/leads/score, have nothing to clear: no write)."""
        if job.request.get("claimed"):
            self.leads.release_rescore(job.principal.tenant_id, str(job.request["lead_id"]), job_id=job.job_id)
