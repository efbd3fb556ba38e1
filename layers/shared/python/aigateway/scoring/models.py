"""What a lead is, what a tenant scores it by, and what a score says. Input, stored and output
models are separate and mapped explicitly (DESIGN §10)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

LEAD_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
MAX_LEADS_PER_CALL = 500
MAX_EVENTS = 200
MAX_NOTES = 4000
MAX_CUSTOM_FIELDS = 50

Tier = Literal["hot", "warm", "cold"]
Scorer = Literal["llm", "rules"]
Trigger = Literal["api", "upsert", "stale", "import", "retry"]
LeadId = Annotated[str, StringConstraints(pattern=LEAD_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=300)]
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ShortText | None = None
    email: ShortText | None = None
    phone: ShortText | None = None


class EngagementEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = Field(
        description="What happened, e.g. demo_request, pricing_page, webinar, email_reply"
    )
    at: str | None = Field(default=None, description="When (ISO 8601 date or time)", pattern=r"^\d{4}-\d{2}-\d{2}")
    detail: ShortText | None = None


class LeadData(BaseModel):
    """The lead record itself: every field optional, nothing else accepted."""

    model_config = ConfigDict(extra="forbid")

    company: ShortText | None = None
    contact: Contact | None = None
    title: ShortText | None = None
    industry: ShortText | None = None
    size: int | None = Field(default=None, ge=0, le=10_000_000, description="Employees")
    source: ShortText | None = None
    events: list[EngagementEvent] = Field(default_factory=list, max_length=MAX_EVENTS)
    notes: str | None = Field(default=None, max_length=MAX_NOTES, description="Free text from the sales team")
    custom: dict[FieldName, str | int | float | bool] = Field(
        default_factory=dict, max_length=MAX_CUSTOM_FIELDS, description="Any further fields, by name"
    )


class LeadIn(LeadData):
    """A lead in a bulk upsert or inline scoring request: the record plus its id."""

    lead_id: LeadId


Matcher = Literal["match", "keywords", "range", "events", "present"]


class Rule(BaseModel):
    """How the rules scorer rates one criterion from 0 to 1, and which lead text is its evidence.

    match: the field equals one of `values` (case-insensitive) → 1.
    keywords: the field contains one of `values` as a word → 1.
    range: the numeric field lies within [min, max] → 1; outside by up to half the bound → 0.5.
    events: engagement events of `values` types within `within_days` → count / target, at most 1.
    present: the field is filled in → 1.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Matcher
    field: Annotated[str, StringConstraints(pattern=r"^[a-z_]+(\.[A-Za-z0-9_]+)?$")] = "events"
    values: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )
    min: float | None = None
    max: float | None = None
    target: int = Field(default=3, ge=1, le=100)
    within_days: int = Field(default=90, ge=1, le=3650)

    @model_validator(mode="after")
    def _complete(self) -> Rule:
        if self.kind in ("match", "keywords", "events") and not self.values:
            raise ValueError(f"a {self.kind} rule needs values")
        if self.kind == "range" and self.min is None and self.max is None:
            raise ValueError("a range rule needs min or max")
        return self


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    description: Annotated[str, StringConstraints(min_length=1, max_length=300)] = Field(
        description="What the criterion means; the LLM scorer judges the lead by it"
    )
    weight: float = Field(gt=0, le=100, description="Relative weight; weights are normalised to sum to 100")
    rule: Rule = Field(description="How the rules scorer (no provider) rates it")


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hot: int = Field(default=70, ge=1, le=100, description="A score at or above this is hot")
    warm: int = Field(default=40, ge=0, le=99, description="At or above this (and below hot) is warm")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.warm >= self.hot:
            raise ValueError("warm must be below hot")
        return self

    def tier(self, score: int) -> Tier:
        return "hot" if score >= self.hot else "warm" if score >= self.warm else "cold"


DEFAULT_PII_FIELDS = ("contact.name", "contact.email", "contact.phone")
DEFAULT_TRIGGER_FIELDS = ("company", "title", "industry", "size", "source", "events", "notes", "custom")


def default_criteria() -> list[Criterion]:
    return [
        Criterion(
            id="industry_fit",
            description="The company is in an industry we sell to (software, SaaS, fintech, technology)",
            weight=20,
            rule=Rule(kind="match", field="industry", values=["software", "saas", "fintech", "technology"]),
        ),
        Criterion(
            id="company_size",
            description="The company has between 50 and 5,000 employees",
            weight=20,
            rule=Rule(kind="range", field="size", min=50, max=5000),
        ),
        Criterion(
            id="seniority",
            description="The contact is a decision maker (founder, C-level, VP, head or director)",
            weight=20,
            rule=Rule(
                kind="keywords",
                field="title",
                values=["founder", "chief", "ceo", "cto", "cfo", "coo", "vp", "vice president", "head", "director"],
            ),
        ),
        Criterion(
            id="engagement",
            description="Recent buying signals: demo requests, pricing page visits, trials, webinars, replies",
            weight=30,
            rule=Rule(
                kind="events",
                values=["demo_request", "pricing_page", "trial_signup", "webinar", "email_reply"],
                target=3,
                within_days=90,
            ),
        ),
        Criterion(
            id="source_quality",
            description="The lead came from a referral, a partner or inbound interest",
            weight=10,
            rule=Rule(kind="match", field="source", values=["referral", "partner", "inbound"]),
        ),
    ]


class ScoringSettingsIn(BaseModel):
    """PUT /v1/admin/tenants/{tenant_id}/scoring: how this tenant's leads are scored."""

    model_config = ConfigDict(extra="forbid")

    criteria: list[Criterion] = Field(default_factory=default_criteria, min_length=1, max_length=20)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    excluded_fields: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="Fields never sent to a provider nor logged, e.g. notes or custom.budget",
    )
    pii_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PII_FIELDS),
        max_length=50,
        description="Personal fields: never sent to a provider nor logged (emails and phone numbers "
        "in free text are redacted as well)",
    )
    trigger_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TRIGGER_FIELDS),
        max_length=50,
        description="An upsert that changes one of these queues a re-score",
    )
    freshness_days: int = Field(default=30, ge=1, le=365, description="Scores older than this are re-scored")
    model_profile: Literal["creative", "analytical", "reasoning"] | None = Field(
        default=None, description="The LLM scorer's profile; the template's when omitted"
    )

    @model_validator(mode="after")
    def _unique(self) -> ScoringSettingsIn:
        ids = [c.id for c in self.criteria]
        if len(set(ids)) != len(ids):
            raise ValueError("criterion ids must be unique")
        for name in (*self.excluded_fields, *self.pii_fields, *self.trigger_fields):
            if not _known_field(name):
                raise ValueError(f"unknown lead field {name!r}")
        return self


class ScoringSettings(ScoringSettingsIn):
    """As stored: the settings plus their version (the audit trail names it)."""

    version: int = Field(default=0, ge=0, description="Incremented by every change; 0 is the defaults")
    updated_at: str | None = None
    updated_by: str | None = None


_TOP_FIELDS = {"company", "contact", "title", "industry", "size", "source", "events", "notes", "custom"}


def _known_field(name: str) -> bool:
    top, _, sub = name.partition(".")
    if top not in _TOP_FIELDS:
        return False
    if top == "contact":
        return sub in ("", "name", "email", "phone")
    if top == "custom":
        return True
    return sub == ""


class Factor(BaseModel):
    criterion: str
    weight: float = Field(description="Share of the score this criterion can give, in points (weights sum to 100)")
    rating: float = Field(description="How well the lead meets the criterion, 0 to 1")
    contribution: float = Field(description="Points given: weight × rating, rounded so they sum to the score")
    evidence: list[str] = Field(description="Quotes from the lead that support the rating")


class ScoreOut(BaseModel):
    """A lead's score with its explanation and audit data (GET /v1/leads/{id}, the job's result)."""

    lead_id: str
    score: int = Field(ge=0, le=100)
    tier: Tier
    factors: list[Factor]
    rationale: str
    confidence: float = Field(ge=0, le=1)
    scorer: Scorer = Field(description="llm: a model judged the criteria; rules: the tenant's deterministic rules")
    model: str = Field(description="The model that judged, or rules-scorer")
    served_by: str = Field(description="Which hop of the fallback chain answered")
    degraded_reason: str | None = None
    attempts: int = Field(description="Provider attempts of the stage that answered")
    criteria_version: int
    prompt_version: str
    data_hash: str = Field(description="SHA-256 of the lead data that was scored")
    as_of: str = Field(description="The date event recency was judged at")
    scored_at: str
    trigger: str
    job_id: str
