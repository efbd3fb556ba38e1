"""Prompt experiments: which version of a template a request gets, feedback on what it got, and a
report that compares the variants.

Which version serves a generate request, in order of precedence:
1. a `version` in the request (variant label `request`);
2. the tenant's pin for the template (`pinned`);
3. the tenant's weighted split (the variant's name): sticky per subject, see `bucket`;
4. the latest version (no variant).
The subject is the request's end-user id (`user`, for apps serving many users behind one key),
else the API key's user. The label goes into every ledger row of the request and the response.

Experiments are stored per tenant and template (store/experiments.py) and read through a 30 s
cache, like every tenant setting. Assignment is a pure function of the stored experiment, so
all execution environments, and every stage of an asynchronous job, agree on it; a change to an
experiment reaches every environment within the cache's TTL.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from aigateway.auth import Principal
from aigateway.errors import (
    ReportTooLarge,
    UnknownRequest,
    UnknownTemplate,
    UnknownTemplateVersion,
    VersionConflict,
)
from aigateway.governance.config import CONFIG_TTL_S, TenantCache
from aigateway.governance.usage import date_range, months_between, usd
from aigateway.ids import id_time_ms
from aigateway.observability import logger
from aigateway.prompts.registry import PromptTemplate, TemplateRegistry
from aigateway.store.dynamo import ConditionFailed, Dynamo, Item
from aigateway.store.experiments import ExperimentsRepo, FeedbackRepo, LedgerReads

MAX_VARIANTS = 10
REQUESTED = "request"  # the caller named the version
PINNED = "pinned"  # the tenant pinned the version
RESERVED_NAMES = frozenset({REQUESTED, PINNED})
VARIANT_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
TEMPLATE_NAME = r"^[a-z][a-z0-9_]{1,63}$"
# A request id as the gateway issues them: a ULID; `<ULID>-r<n>` for a job's nth retry, `<ULID>-<nn>`
# for a batch's item.
REQUEST_ID = r"^[0-9A-HJKMNP-TV-Z]{26}(-r?[0-9]{1,4})?$"
MAX_REPORT_DAYS = 92
DEFAULT_REPORT_DAYS = 30
MAX_REPORT_ROWS = 200_000  # ledger rows one report may read (≈ 10 s of DynamoDB pages)


# --- settings ---------------------------------------------------------------------------------------


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=VARIANT_NAME, description="Unique within the experiment; recorded in the ledger")
    version: int = Field(ge=1, description="The template version this variant serves")
    weight: int = Field(ge=0, le=1_000_000, description="Relative share of subjects (0: none)")


class ExperimentIn(BaseModel):
    """PUT body: a pinned version, or a weighted split, or neither (`{}`: no experiment, latest serves)."""

    model_config = ConfigDict(extra="forbid")

    pinned_version: int | None = Field(default=None, ge=1, description="Serve this version to every request")
    variants: list[VariantIn] = Field(
        default_factory=list,
        max_length=MAX_VARIANTS,
        description="Split subjects by weight. Changing weights moves the fewest subjects when variants keep "
        "their order (add new ones at the end)",
    )
    reshuffle: bool = Field(
        default=False, description="Draw a new assignment salt: every subject is assigned afresh (a new experiment)"
    )

    @field_validator("variants")
    @classmethod
    def _valid_split(cls, variants: list[VariantIn]) -> list[VariantIn]:
        names = [v.name for v in variants]
        reserved = RESERVED_NAMES.intersection(names)
        if reserved:
            raise ValueError(f"variant names {sorted(reserved)} are reserved for the ledger's own labels")
        duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
        if duplicates:
            raise ValueError(f"variant names must be unique; repeated: {duplicates}")
        if variants and sum(v.weight for v in variants) <= 0:
            raise ValueError("the weights must add up to more than 0")
        return variants

    @model_validator(mode="after")
    def _one_kind(self) -> ExperimentIn:
        if self.pinned_version is not None and self.variants:
            raise ValueError("give either pinned_version or variants, not both")
        return self


class Experiment(BaseModel):
    """A tenant's stored experiment on one template; version 0 means none was ever stored."""

    model_config = ConfigDict(frozen=True)

    template: str
    pinned_version: int | None = None
    variants: tuple[VariantIn, ...] = ()
    salt: str = ""
    version: int = 0
    updated_at: str | None = None
    updated_by: str | None = None

    @property
    def total_weight(self) -> int:
        return sum(v.weight for v in self.variants)


class VariantOut(VariantIn):
    share: float = Field(description="weight / sum of weights")


class ExperimentOut(BaseModel):
    tenant_id: str
    template: str
    mode: str = Field(description="split, pinned, or none (the latest version serves)")
    pinned_version: int | None
    variants: list[VariantOut]
    version: int = Field(description="The experiment's own version: each change adds one (0: never set)")
    updated_at: str | None
    updated_by: str | None
    template_versions: list[int] = Field(description="The template's deployed versions")
    latest_version: int


def experiment_out(tenant_id: str, experiment: Experiment, templates: TemplateRegistry) -> ExperimentOut:
    total = experiment.total_weight
    versions = templates.versions(experiment.template)
    return ExperimentOut(
        tenant_id=tenant_id,
        template=experiment.template,
        mode="split" if experiment.variants else "pinned" if experiment.pinned_version else "none",
        pinned_version=experiment.pinned_version,
        variants=[
            VariantOut(**v.model_dump(), share=round(v.weight / total, 6) if total else 0.0)
            for v in experiment.variants
        ],
        version=experiment.version,
        updated_at=experiment.updated_at,
        updated_by=experiment.updated_by,
        template_versions=versions,
        latest_version=max(versions),
    )


class ExperimentConfigs(TenantCache[dict[str, Experiment]]):
    """A tenant's experiments (all templates: one Query), read through the 30 s tenant cache."""

    def __init__(self, repo: ExperimentsRepo, *, ttl_s: float = CONFIG_TTL_S):
        super().__init__(self._read, ttl_s=ttl_s)
        self.repo = repo

    def _read(self, tenant_id: str) -> dict[str, Experiment]:
        return {str(item["template"]): _experiment(item) for item in self.repo.all_for(tenant_id)}

    def for_template(self, tenant_id: str, template: str, *, fresh: bool = False) -> Experiment:
        return self.get(tenant_id, fresh=fresh).get(template) or Experiment(template=template)

    def put(self, tenant_id: str, template: str, settings: ExperimentIn, *, updated_by: str, at: str) -> Experiment:
        """Stores the next version (PUT replaces); VersionConflict if another change landed meanwhile.

        The salt is drawn once and kept across changes, so a changed weight moves only the subjects
        whose range it moved, and clearing then restoring a split gives subjects their old variants.
        """
        item = self.repo.get(tenant_id, template)
        current = _experiment(item) if item else Experiment(template=template)
        salt = secrets.token_hex(8) if settings.reshuffle or not current.salt else current.salt
        config = settings.model_dump(mode="json", exclude={"reshuffle"})
        version = current.version + 1
        try:
            self.repo.put(tenant_id, template, config, salt=salt, version=version, at=at, updated_by=updated_by)
        except ConditionFailed as exc:
            raise VersionConflict("the experiment changed meanwhile; read it and try again") from exc
        self.forget(tenant_id)
        return Experiment(
            template=template,
            pinned_version=settings.pinned_version,
            variants=tuple(settings.variants),
            salt=salt,
            version=version,
            updated_at=at,
            updated_by=updated_by,
        )


def _experiment(item: Item) -> Experiment:
    config = item.get("config") or {}
    return Experiment(
        template=str(item["template"]),
        pinned_version=config.get("pinned_version"),
        variants=tuple(VariantIn.model_validate(v) for v in config.get("variants") or ()),
        salt=str(item.get("salt", "")),
        version=int(item.get("version", 0)),
        updated_at=item.get("updated_at"),
        updated_by=item.get("updated_by"),
    )


def check_versions(settings: ExperimentIn, template: str, templates: TemplateRegistry) -> None:
    """Every version the experiment names must be deployed (UnknownTemplate if the template is not)."""
    templates.get(template)
    known = templates.versions(template)
    wanted = [("pinned_version", settings.pinned_version)] if settings.pinned_version else []
    wanted += [(f"variants.{i}.version", v.version) for i, v in enumerate(settings.variants)]
    for where, version in wanted:
        if version not in known:
            raise UnknownTemplateVersion(
                f"template {template!r} has no version {version} (versions: {', '.join(map(str, known))})",
                field=where,
            )


# --- assignment (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    version: int | None  # None: the latest version
    variant: str | None  # the ledger's label; None when no experiment decided


def subject_of(user_id: str, end_user: str | None) -> str:
    """Who assignment is sticky for: the app's end user when it names one, else the key's user.
    Prefixed so an end-user id can never collide with a key user's id."""
    return f"end:{end_user}" if end_user else f"key:{user_id}"


def bucket(*, tenant_id: str, template: str, salt: str, subject: str, total: int) -> int:
    """The subject's point in [0, total): the first 64 bits of a SHA-256 scaled by integer arithmetic
    (no float rounding), uniform to within 2⁻⁶⁴·total. The salt makes each experiment's split
    independent of every other's; tenant and template make it independent across them."""
    digest = hashlib.sha256("\x1f".join((tenant_id, template, salt, subject)).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") * total) >> 64


def assign(experiment: Experiment | None, *, tenant_id: str, subject: str, requested_version: int | None) -> Assignment:
    """The version and variant label for one request (precedence in the module docstring).

    Variants own consecutive ranges of [0, total weight) in their listed order, so moving weight
    between neighbours moves only the subjects inside the shifted boundary (50/50 → 60/40: 10 %).
    """
    if requested_version is not None:
        return Assignment(requested_version, REQUESTED)
    if experiment is None:
        return Assignment(None, None)
    if experiment.pinned_version is not None:
        return Assignment(experiment.pinned_version, PINNED)
    total = experiment.total_weight
    if not experiment.variants or total <= 0:
        return Assignment(None, None)
    point = bucket(
        tenant_id=tenant_id, template=experiment.template, salt=experiment.salt, subject=subject, total=total
    )
    upper = 0
    for variant in experiment.variants:
        upper += variant.weight
        if point < upper:
            return Assignment(variant.version, variant.name)
    raise AssertionError("a bucket lies below the total weight")  # pragma: no cover


def choose_template(
    name: str,
    *,
    principal: Principal,
    requested_version: int | None,
    locale: str | None,
    end_user: str | None,
    templates: TemplateRegistry,
    experiments: ExperimentConfigs | None,
) -> tuple[PromptTemplate, str | None]:
    """The template to render (version and locale) and the variant label to record."""
    templates.get(name)  # an unknown template is a 404 before any read
    experiment = None
    if requested_version is None and experiments is not None:
        experiment = experiments.for_template(principal.tenant_id, name)
    subject = subject_of(principal.user_id, end_user)
    chosen = assign(experiment, tenant_id=principal.tenant_id, subject=subject, requested_version=requested_version)
    try:
        return templates.get(name, chosen.version, locale), chosen.variant
    except UnknownTemplate:
        if requested_version is not None:
            raise
        # A deploy removed a version the experiment still names: serve the latest rather than fail
        # the tenant's traffic, unlabelled so the report does not credit the variant with it.
        logger().warning(
            "experiment names a missing version",
            extra={"template": name, "version": chosen.version, "variant": chosen.variant},
        )
        return templates.get(name, None, locale), None


# --- feedback -------------------------------------------------------------------------------------


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(
        pattern=REQUEST_ID,
        description="The request_id a generate response (or job) returned; a chat completion's id "
        "(chatcmpl-<request id>) is accepted too",
    )
    rating: StrictInt = Field(ge=1, le=5, description="1 (bad) to 5 (excellent)")
    comment: str | None = Field(default=None, max_length=2000, description="Stored with the rating; never logged")
    label: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9_.:-]{0,63}$", description="A tag of your choice, e.g. too_long"
    )
    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The end user giving the rating (as in the generate request); default: the key's user. "
        "One rating per request and user: a repeat replaces it",
    )

    @field_validator("request_id", mode="before")
    @classmethod
    def _completion_id(cls, value: object) -> object:
        # OpenAI clients hold the completion's id, which is the request id with OpenAI's prefix.
        return value.removeprefix("chatcmpl-") if isinstance(value, str) else value


class FeedbackOut(BaseModel):
    request_id: str
    rating: int
    comment: str | None
    label: str | None
    template: str | None = Field(description="The template the rated request used (null: none)")
    version: int | None
    variant: str | None
    locale: str | None
    model: str | None = Field(description="The model whose answer was rated (the request's last row)")
    created_at: str
    updated_at: str
    replaced: bool = Field(description="True when this replaced an earlier rating by the same user")


def rater_of(subject: str) -> str:
    """The stored identity of a rater: a hash, so end-user ids are never written in clear."""
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()[:32]


def _template_parts(ref: str | None) -> tuple[str | None, int | None]:
    if not ref or "@" not in ref:
        return None, None
    name, _, version = ref.partition("@")
    return name, int(version) if version.isdigit() else None


def _month_of_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


# --- the report -------------------------------------------------------------------------------------


class RatingStats(BaseModel):
    count: int
    mean: float | None = Field(description="Mean rating, 3 decimals; null without feedback")
    distribution: dict[str, int] = Field(description="Ratings 1..5 → how many")


class VariantDelta(BaseModel):
    """This group minus the first group (null where either side has no data), with two-sided
    p-values for the differences that have one. A p-value is not corrected for looking at the
    report many times or for comparing many variants: read p < 0.05 as worth a look, not a verdict."""

    schema_valid_rate: float | None
    schema_valid_rate_p: float | None = Field(description="Two-proportion z-test (pooled), two-sided")
    fallback_rate: float | None
    fallback_rate_p: float | None = Field(description="Two-proportion z-test (pooled), two-sided")
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    cost_per_request_micros: int | None
    mean_rating: float | None
    mean_rating_p: float | None = Field(description="Welch's t-test, two-sided; null below 2 ratings on a side")


class VariantReport(BaseModel):
    variant: str | None = Field(description="Variant name, `pinned`, `request`, or null (no experiment: latest)")
    version: int
    locale: str | None
    requests: int = Field(description="Distinct request ids whose rows fall in the range")
    provider_answers: int = Field(description="Model answers received: schema-valid ones + invalid_model_output")
    schema_valid_answers: int
    schema_valid_rate: float | None = Field(description="schema_valid_answers / provider_answers")
    fallback_requests: int = Field(description="Requests answered from the stale cache or the static answer")
    fallback_rate: float | None = Field(description="fallback_requests / requests")
    failed_requests: int = Field(description="Requests that got no answer at all (an error)")
    cache_hits: int
    latency_p50_ms: int | None = Field(description="Nearest-rank p50 of model-answered requests' latency")
    latency_p95_ms: int | None
    cost_micros: int
    cost_usd: str
    cost_per_request_micros: int | None = Field(description="cost_micros / requests, rounded half up")
    cost_per_request_usd: str | None
    feedback: RatingStats
    vs_first: VariantDelta | None = Field(description="Differences from the first group (null for the first)")


class ExperimentReport(BaseModel):
    tenant_id: str
    template: str
    since: str
    until: str
    experiment: ExperimentOut = Field(description="The experiment as configured now")
    variants: list[VariantReport] = Field(
        description="The configured variants first, in order (the first is the baseline), then other labels"
    )


GroupKey = tuple[str | None, int, str | None]  # variant, version, locale


@dataclass
class _Group:
    requests: int = 0
    provider_answers: int = 0
    valid: int = 0
    fallbacks: int = 0
    failed: int = 0
    cache_hits: int = 0
    cost: int = 0
    latencies: list[int] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _key_of(row: Item) -> GroupKey | None:
    _, version = _template_parts(row.get("template"))
    return None if version is None else (row.get("variant"), version, row.get("locale"))


def aggregate(rows: Iterable[Item], feedback: Iterable[Item]) -> dict[GroupKey, _Group]:
    """Ledger rows (any order) and feedback items → per (variant, version, locale) figures.

    A request belongs to the group of its first attempt's row (a job's later stages could, in
    principle, see a changed experiment). Per request: one answer of the provider per `success`
    row and per `failure` row with `invalid_model_output`; served by a degraded answer when it
    has a `fallback` row; failed when it has no success, cache hit or fallback row.
    """
    by_request: dict[str, list[Item]] = {}
    for row in rows:
        by_request.setdefault(str(row["request_id"]), []).append(row)
    groups: dict[GroupKey, _Group] = {}
    for request_rows in by_request.values():
        request_rows.sort(key=lambda r: int(r.get("attempt", 0)))
        key = _key_of(request_rows[0])
        if key is None:
            continue
        g = groups.setdefault(key, _Group())
        outcomes = [r.get("outcome") for r in request_rows]
        g.requests += 1
        g.cost += sum(int(r.get("cost_micros", 0)) for r in request_rows)
        g.valid += outcomes.count("success")
        g.provider_answers += outcomes.count("success") + sum(
            1 for r in request_rows if r.get("outcome") == "failure" and r.get("error_code") == "invalid_model_output"
        )
        if "cache_hit" in outcomes:
            g.cache_hits += 1
        if "fallback" in outcomes:
            g.fallbacks += 1
        if not {"success", "cache_hit", "fallback"}.intersection(outcomes):
            g.failed += 1
        if "success" in outcomes:
            # latency_ms is measured from the request's start, so its last row's is the whole request.
            g.latencies.append(max(int(r.get("latency_ms", 0)) for r in request_rows))
    for item in feedback:
        version = item.get("version")
        if version is None:
            continue
        key = (item.get("variant"), int(version), item.get("locale"))
        groups.setdefault(key, _Group()).ratings.append(int(item["rating"]))
    return groups


def order_groups(keys: Iterable[GroupKey], experiment: Experiment) -> list[GroupKey]:
    """The configured variants first, in their order (each even without data, its default locale
    first); then pinned, request and unlabelled groups."""
    present = set(keys)
    ordered: list[GroupKey] = []
    for v in experiment.variants:
        mine = sorted((k for k in present if k[0] == v.name and k[1] == v.version), key=lambda k: k[2] or "")
        ordered += mine or [(v.name, v.version, None)]
    if experiment.pinned_version is not None:
        pinned = [k for k in present if k[0] == PINNED and k[1] == experiment.pinned_version]
        ordered += sorted(pinned, key=lambda k: k[2] or "") or [(PINNED, experiment.pinned_version, None)]
    label_rank = {PINNED: 1, REQUESTED: 2, None: 3}
    rest = sorted(
        (k for k in present if k not in ordered),
        key=lambda k: (label_rank.get(k[0], 0), k[0] or "", k[1], k[2] or ""),
    )
    return ordered + rest


def _variant_report(key: GroupKey, g: _Group) -> VariantReport:
    per_request = (2 * g.cost + g.requests) // (2 * g.requests) if g.requests else None  # half up
    counts = Counter(g.ratings)
    return VariantReport(
        variant=key[0],
        version=key[1],
        locale=key[2],
        requests=g.requests,
        provider_answers=g.provider_answers,
        schema_valid_answers=g.valid,
        schema_valid_rate=_rate(g.valid, g.provider_answers),
        fallback_requests=g.fallbacks,
        fallback_rate=_rate(g.fallbacks, g.requests),
        failed_requests=g.failed,
        cache_hits=g.cache_hits,
        latency_p50_ms=_percentile(g.latencies, 0.50),
        latency_p95_ms=_percentile(g.latencies, 0.95),
        cost_micros=g.cost,
        cost_usd=usd(g.cost),
        cost_per_request_micros=per_request,
        cost_per_request_usd=usd(per_request) if per_request is not None else None,
        feedback=RatingStats(
            count=len(g.ratings),
            mean=round(sum(g.ratings) / len(g.ratings), 3) if g.ratings else None,
            distribution={str(r): counts.get(r, 0) for r in range(1, 6)},
        ),
        vs_first=None,
    )


def _minus(a: Any, b: Any, digits: int | None = None) -> Any:
    if a is None or b is None:
        return None
    return round(a - b, digits) if digits is not None else a - b


# --- significance (pure Python: a p-value does not justify SciPy's size in a Lambda layer) ---


def _p_value(p: float) -> float:
    return round(min(1.0, max(0.0, p)), 4)


def proportions_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None without data on a side."""
    if not n_a or not n_b:
        return None
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:  # both sides all hits or all misses: no difference to test
        return 1.0
    z = (hits_b / n_b - hits_a / n_a) / se
    return _p_value(math.erfc(abs(z) / math.sqrt(2)))


def welch_p(a: list[int], b: list[int]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances); None below 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a = sum((x - mean_a) ** 2 for x in a) / (len(a) - 1) / len(a)
    var_b = sum((x - mean_b) ** 2 for x in b) / (len(b) - 1) / len(b)
    se2 = var_a + var_b
    if se2 == 0:
        return 1.0 if mean_a == mean_b else 0.0
    t = (mean_b - mean_a) / math.sqrt(se2)
    df = se2**2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    return _p_value(student_t_two_sided(t, df))


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / nonzero(1.0 + even * d)
        c = nonzero(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / nonzero(1.0 + odd * d)
        c = nonzero(1.0 + odd / c)
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-14:
            break
    return h


def compare(reports: list[VariantReport], groups: dict[GroupKey, _Group]) -> list[VariantReport]:
    """Each report with its difference from the first, and the p-values of those differences
    (`groups` holds the raw counts and ratings behind each report)."""
    if not reports:
        return reports
    first = reports[0]
    base = groups.get(_group_key(first), _Group())
    out = [first]
    for r in reports[1:]:
        mine = groups.get(_group_key(r), _Group())
        delta = VariantDelta(
            schema_valid_rate=_minus(r.schema_valid_rate, first.schema_valid_rate, 4),
            schema_valid_rate_p=proportions_p(base.valid, base.provider_answers, mine.valid, mine.provider_answers),
            fallback_rate=_minus(r.fallback_rate, first.fallback_rate, 4),
            fallback_rate_p=proportions_p(base.fallbacks, base.requests, mine.fallbacks, mine.requests),
            latency_p50_ms=_minus(r.latency_p50_ms, first.latency_p50_ms),
            latency_p95_ms=_minus(r.latency_p95_ms, first.latency_p95_ms),
            cost_per_request_micros=_minus(r.cost_per_request_micros, first.cost_per_request_micros),
            mean_rating=_minus(r.feedback.mean, first.feedback.mean, 3),
            mean_rating_p=welch_p(base.ratings, mine.ratings),
        )
        out.append(r.model_copy(update={"vs_first": delta}))
    return out


def _group_key(report: VariantReport) -> GroupKey:
    return (report.variant, report.version, report.locale)


def report_range(since: str | None, until: str | None, *, today: date) -> tuple[date, date]:
    """[since, until] inclusive (UTC days); defaults: until today, since 29 days before it."""
    return date_range(
        since,
        until,
        today=today,
        names=("since", "until"),
        max_days=MAX_REPORT_DAYS,
        default_days=DEFAULT_REPORT_DAYS,
    )


# --- the service ----------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ExperimentService:
    """POST /v1/feedback and GET /v1/experiments/{template}/report, for the caller's tenant."""

    db: Dynamo
    ledger: LedgerReads
    feedback_repo: FeedbackRepo
    configs: ExperimentConfigs
    templates: Callable[[], TemplateRegistry]
    clock: Callable[[], datetime] = field(default=_utc_now)
    max_rows: int = MAX_REPORT_ROWS

    def _request_rows(self, tenant_id: str, request_id: str) -> list[Item]:
        """The request's ledger rows in the caller's tenant: looked up in the month its id was
        minted, then the next (a request settles when it runs: a job may run after a month ends)."""
        minted = id_time_ms(request_id[:26])
        now_ms = int(self.clock().timestamp() * 1000)
        if minted > now_ms + 300_000:  # ids from the future were never issued
            return []
        month = _month_of_ms(minted)
        rows = self.ledger.request_rows(tenant_id, month, request_id)
        following = (datetime.fromtimestamp(minted / 1000, UTC).replace(day=28) + timedelta(days=4)).strftime("%Y-%m")
        if not rows and following <= self.clock().strftime("%Y-%m"):
            rows = self.ledger.request_rows(tenant_id, following, request_id)
        return rows

    def give_feedback(self, principal: Principal, body: FeedbackIn) -> FeedbackOut:
        rows = self._request_rows(principal.tenant_id, body.request_id)
        if not rows:
            # Another tenant's request is reported exactly like an id that does not exist.
            raise UnknownRequest(f"no request {body.request_id!r} in this tenant", field="request_id")
        served = rows[-1]  # the answering row (the last attempt, the cache hit or the degraded answer)
        name, version = _template_parts(rows[0].get("template"))
        at = self.clock().isoformat()
        attributes = {
            "tenant_id": principal.tenant_id,
            "request_id": body.request_id,
            "rating": body.rating,
            "comment": body.comment,
            "label": body.label,
            "key_id": principal.key_id,
            "user_id": principal.user_id,
            "template": name,
            "version": version,
            "variant": rows[0].get("variant"),
            "locale": rows[0].get("locale"),
            "model": served.get("model"),
            "served_at": served.get("created_at"),
            "created_at": at,
            "updated_at": at,
        }
        month = str(served.get("created_at", ""))[:7] or _month_of_ms(id_time_ms(body.request_id[:26]))
        rater = rater_of(subject_of(principal.user_id, body.user))
        previous = self.feedback_repo.put(principal.tenant_id, name, month, body.request_id, rater, attributes)
        created_at = str(previous.get("created_at", at)) if previous is not None else at
        logger().info(  # the comment is stored, never logged
            "feedback recorded",
            extra={"request_id": body.request_id, "rating": body.rating, "variant": attributes["variant"]},
        )
        return FeedbackOut(
            request_id=body.request_id,
            rating=body.rating,
            comment=body.comment,
            label=body.label,
            template=name,
            version=version,
            variant=attributes["variant"],
            locale=attributes["locale"],
            model=attributes["model"],
            created_at=created_at,
            updated_at=at,
            replaced=previous is not None,
        )

    def report(self, tenant_id: str, template: str, *, since: str | None, until: str | None) -> ExperimentReport:
        """Compares the template's variants over [since, until] (the tenant is already scoped)."""
        templates = self.templates()
        templates.get(template)  # 404 unknown_template
        start, end = report_range(since, until, today=self.clock().date())
        first_at, end_at = start.isoformat(), (end + timedelta(days=1)).isoformat()
        months = months_between(start, end)
        rows_of = partial(self.ledger.template_rows, first_at=first_at, end_at=end_at, max_rows=self.max_rows)
        calls: list[Callable[[], Any]] = [partial(rows_of, tenant_id, m, template) for m in months]
        calls += [partial(self.feedback_repo.month, tenant_id, template, m) for m in months]
        results = self.db.parallel(*calls)
        rows: list[Item] = []
        for found, complete in results[: len(months)]:
            rows += found
            if not complete or len(rows) > self.max_rows:
                raise ReportTooLarge(
                    f"more than {self.max_rows} ledger rows of {template!r} in {start}..{end}; narrow the range",
                    field="since",
                )
        feedback = [
            f for items in results[len(months) :] for f in items if first_at <= str(f.get("served_at", "")) < end_at
        ]
        experiment = self.configs.for_template(tenant_id, template, fresh=True)
        groups = aggregate(rows, feedback)
        keys = order_groups(groups, experiment)
        reports = [_variant_report(k, groups.get(k) or _Group()) for k in keys]
        return ExperimentReport(
            tenant_id=tenant_id,
            template=template,
            since=start.isoformat(),
            until=end.isoformat(),
            experiment=experiment_out(tenant_id, experiment, templates),
            variants=compare(reports, groups),
        )
