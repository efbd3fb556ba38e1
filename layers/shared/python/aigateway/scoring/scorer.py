"""Scoring one lead: what the scorers see, the rules scorer, and the explanation arithmetic.

Both scorers produce the same *judgement*: per criterion a rating from 0 to 1 with evidence quoted
from the lead, a rationale and a confidence. The score is then computed here, not by the model:
each criterion is worth its normalised weight in points, gives `points × rating`, and the
contributions (rounded to tenths by the largest-remainder method) sum exactly to the integer
score. So a score is always explainable, the same judgement always gives the same score, and a
model cannot get the arithmetic wrong. Evidence is checked against the lead text the model was
shown: a quote that does not occur there makes the answer invalid (repair, then the next hop).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from aigateway.errors import InvalidModelOutput
from aigateway.privacy import drop_fields, redact
from aigateway.scoring.models import Criterion, Factor, LeadData, Rule, ScoringSettings

RULES_MODEL = "rules-scorer"  # the ledger's and the explanation's model name for the rules scorer
MAX_EVIDENCE = 3
MAX_QUOTE = 160
MIN_QUOTE = 2


def data_hash(lead: LeadData) -> str:
    """SHA-256 of the lead's canonical JSON: what the audit trail says was scored."""
    canonical = json.dumps(lead.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _clean(text: str) -> str:
    """Provider-safe text: PII redacted, angle brackets neutralised (they delimit data in the prompt)."""
    return re.sub(r"\s+", " ", redact(text)).strip().replace("<", "‹").replace(">", "›")


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


@dataclass(frozen=True)
class LeadView:
    """The lead as a scorer sees it: (field, text) lines, without excluded or PII fields."""

    fields: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, lead: LeadData, settings: ScoringSettings) -> LeadView:
        record = drop_fields(
            lead.model_dump(mode="json", exclude_none=True), [*settings.excluded_fields, *settings.pii_fields]
        )
        lines: list[tuple[str, str]] = []
        for name in ("company", "title", "industry", "size", "source"):
            if record.get(name) not in (None, ""):
                lines.append((name, _clean(str(record[name]))))
        for sub, value in (record.get("contact") or {}).items():
            lines.append((f"contact.{sub}", _clean(str(value))))
        for event in record.get("events") or []:
            text = event["type"] + (f" on {event['at'][:10]}" if event.get("at") else "")
            if event.get("detail"):
                text += f": {event['detail']}"
            lines.append(("event", _clean(text)))
        if record.get("notes"):
            lines.append(("notes", _clean(record["notes"])))
        for key, value in sorted((record.get("custom") or {}).items()):
            lines.append((f"custom.{key}", _clean(str(value))))
        return cls(tuple((name, text) for name, text in lines if text))

    def texts(self, field: str) -> list[str]:
        name = "event" if field == "events" else field
        return [text for f, text in self.fields if f == name]

    def contains(self, quote: str) -> bool:
        needle = _normal(quote.strip().strip("\"'“”‘’").removesuffix("...").removesuffix("…").strip())
        return len(needle) >= MIN_QUOTE and any(needle in _normal(text) for _, text in self.fields)

    def prompt_fields(self) -> list[dict[str, str]]:
        return [{"name": name, "text": text} for name, text in self.fields]


# --- the rules scorer ------------------------------------------------------------------------


def _event_date(text: str) -> date | None:
    match = re.search(r" on (\d{4}-\d{2}-\d{2})", text)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def rate(rule: Rule, view: LeadView, as_of: date) -> tuple[float, list[str]]:
    """One criterion by its rule: (rating 0..1, evidence quoted from the view)."""
    texts = view.texts(rule.field)
    wanted = [v.casefold() for v in rule.values]
    if rule.kind == "events":
        since = as_of - timedelta(days=rule.within_days)
        hits = [
            t
            for t in view.texts("events")
            if t.split(" ", 1)[0].split(":", 1)[0].casefold() in wanted
            and (d := _event_date(t)) is not None
            and since <= d <= as_of
        ]
        return min(1.0, len(hits) / rule.target), [h[:MAX_QUOTE] for h in hits[:MAX_EVIDENCE]]
    for text in texts:
        if rule.kind == "match" and text.casefold() in wanted:
            return 1.0, [text[:MAX_QUOTE]]
        if rule.kind == "keywords":
            for value in rule.values:
                found = re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE)
                if found:
                    return 1.0, [found.group(0)]
        if rule.kind == "present":
            return 1.0, [text[:MAX_QUOTE]]
        if rule.kind == "range":
            number = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
            if number is None:
                continue
            amount = float(number.group(0))
            lo = rule.min if rule.min is not None else -math.inf
            hi = rule.max if rule.max is not None else math.inf
            if lo <= amount <= hi:
                return 1.0, [text[:MAX_QUOTE]]
            near = (lo * 0.5 <= amount < lo) if rule.min is not None else False
            near = near or ((hi < amount <= hi * 1.5) if rule.max is not None else False)
            return (0.5, [text[:MAX_QUOTE]]) if near else (0.0, [])
    return 0.0, []


def rules_judgement(view: LeadView, settings: ScoringSettings, as_of: date) -> dict[str, Any]:
    """The rules scorer's judgement, shaped like the LLM scorer's output (it is its static answer)."""
    factors, met, informed = [], [], 0
    for criterion in settings.criteria:
        rating, evidence = rate(criterion.rule, view, as_of)
        factors.append({"criterion": criterion.id, "rating": round(rating, 3), "evidence": evidence})
        if view.texts(criterion.rule.field):
            informed += 1
        if rating > 0:
            met.append(criterion.id if rating >= 1 else f"{criterion.id} (partly)")
    rationale = "Scored by the tenant's rules, without a model. " + (
        f"Criteria met: {', '.join(met)}." if met else "No criterion was met."
    )
    # Confidence: the share of criteria the lead had any data for.
    confidence = round(informed / len(settings.criteria), 2)
    return {"factors": factors, "rationale": rationale, "confidence": confidence}


# --- checking a judgement, and turning it into a score -----------------------------------------


def check_judgement(judgement: dict[str, Any], criteria: list[Criterion], view: LeadView) -> None:
    """Raises InvalidModelOutput naming every problem: unknown, missing or repeated criteria,
    a rating above 0 without evidence, or a quote that does not occur in the lead."""
    problems: list[str] = []
    known = {c.id for c in criteria}
    seen: set[str] = set()
    for i, factor in enumerate(judgement.get("factors", [])):
        cid = factor.get("criterion")
        if cid not in known:
            problems.append(f"factors.{i}.criterion: unknown criterion {cid!r}")
        elif cid in seen:
            problems.append(f"factors.{i}.criterion: {cid!r} is rated twice")
        seen.add(cid)
        quotes = factor.get("evidence") or []
        if float(factor.get("rating", 0)) > 0 and not quotes:
            problems.append(f"factors.{i}.evidence: a rating above 0 needs a quote from the lead")
        for j, quote in enumerate(quotes):
            if not view.contains(str(quote)):
                problems.append(f"factors.{i}.evidence.{j}: {str(quote)[:60]!r} does not occur in the lead")
    missing = known - seen
    if missing:
        problems.append(f"factors: criteria not rated: {', '.join(sorted(missing))}")
    if problems:
        raise InvalidModelOutput(
            "the scoring answer is not backed by the lead",
            content=json.dumps(judgement),
            problems="; ".join(problems[:10]),
        )


def points(criteria: list[Criterion]) -> dict[str, float]:
    """Each criterion's share of 100 points."""
    total = sum(c.weight for c in criteria)
    return {c.id: 100 * c.weight / total for c in criteria}


def explain(judgement: dict[str, Any], criteria: list[Criterion]) -> tuple[int, list[Factor]]:
    """(score, factors) from a checked judgement; the contributions sum exactly to the score."""
    share = points(criteria)
    by_id = {f["criterion"]: f for f in judgement["factors"]}
    rating = {c.id: min(1.0, max(0.0, float(by_id[c.id]["rating"]))) for c in criteria}
    raw = {c.id: share[c.id] * rating[c.id] for c in criteria}
    score = math.floor(sum(raw.values()) + 0.5 + 1e-9)  # half up, whatever float error says
    tenths = _apportion(
        {cid: value * 10 for cid, value in raw.items()}, {cid: value * 10 for cid, value in share.items()}, score * 10
    )
    factors = [
        Factor(
            criterion=c.id,
            weight=round(share[c.id], 2),
            rating=round(rating[c.id], 3),
            contribution=tenths[c.id] / 10,
            evidence=[str(q)[:MAX_QUOTE] for q in by_id[c.id].get("evidence", [])[:MAX_EVIDENCE]],
        )
        for c in criteria
    ]
    factors.sort(key=lambda f: (-f.contribution, f.criterion))
    return score, factors


def _apportion(values: dict[str, float], caps: dict[str, float], total: int) -> dict[str, int]:
    """Integers that sum to `total`, close to `values`, one unit at a time.

    Units go to the value furthest below its integer (taken from the one furthest above), never
    to a value of 0 (a criterion rated 0 gives no points) and, unless nothing else can take them,
    never past its cap or off a value already at its cap (a fully met criterion shows its full
    points). |total - Σ floor(values)| is at most the number of values plus 5, so this is short.
    """
    result = {k: math.floor(v + 1e-9) for k, v in values.items()}
    gap = total - sum(result.values())
    while gap > 0:
        open_ = [k for k in values if values[k] > 0 and result[k] + 1 <= caps[k] + 1e-9]
        key = max(open_ or [k for k in values if values[k] > 0], key=lambda k: (values[k] - result[k], k))
        result[key] += 1
        gap -= 1
    while gap < 0:
        below_cap = [k for k in values if result[k] > 0 and values[k] < caps[k] - 1e-9]
        key = min(below_cap or [k for k in values if result[k] > 0], key=lambda k: (values[k] - result[k], k))
        result[key] -= 1
        gap += 1
    return result


def prompt_variables(view: LeadView, settings: ScoringSettings, as_of: date) -> dict[str, Any]:
    """The `lead_scoring` template's variables: the as-of date, the criteria with their points,
    and the lead's view (never the lead itself)."""
    share = points(settings.criteria)
    return {
        "as_of": as_of.isoformat(),
        "criteria": [
            {"id": c.id, "description": c.description, "points": round(share[c.id], 2)} for c in settings.criteria
        ],
        "fields": view.prompt_fields(),
    }
