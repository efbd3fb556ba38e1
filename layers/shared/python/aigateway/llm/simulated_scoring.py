"""The simulated provider's answer to the `lead_scoring` template: a plausible, deterministic
judgement whose evidence is copied from the lead, as a careful model's would be.

It rates a criterion by the words its description shares with the lead's field texts (and by a
number falling inside a range the description names), quoting the fields that matched. It is a
stand-in for a model, good enough to exercise the whole pipeline offline; it is not a scorer.
"""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from typing import Any

SCHEMA_NAME = "lead_scoring"
_CRITERION = re.compile(r'<criterion id="([^"]+)" points="[^"]*">(.*?)</criterion>', re.DOTALL)
_FIELD = re.compile(r'<field name="([^"]+)">(.*?)</field>', re.DOTALL)
_WORD = re.compile(r"[a-z][a-z0-9]+")
_NUMBER = re.compile(r"\d[\d,]*")
_AS_OF = re.compile(r"As of (\d{4}-\d{2}-\d{2})")
_EVENT_DATE = re.compile(r" on (\d{4}-\d{2}-\d{2})")
RECENT = timedelta(days=180)  # older engagement is not a buying signal any more
_STOP = frozenset(
    (
        "the",
        "and",
        "for",
        "from",
        "with",
        "that",
        "this",
        "has",
        "have",
        "are",
        "was",
        "our",
        "its",
        "their",
        "who",
        "what",
        "when",
        "lead",
        "company",
        "contact",
        "between",
        "into",
        "than",
        "more",
        "less",
        "any",
        "all",
        "one",
        "two",
        "per",
    )
)


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in _WORD.findall(text.casefold().replace("_", " ")) if w not in _STOP}


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(text) if n.replace(",", "")]


def _stale(name: str, text: str, as_of: date | None) -> bool:
    """An engagement event older than RECENT before the prompt's as-of date."""
    found = _EVENT_DATE.search(text) if name == "event" else None
    if found is None or as_of is None:
        return False
    try:
        return date.fromisoformat(found.group(1)) < as_of - RECENT
    except ValueError:
        return False


def judge(prompt: str) -> dict[str, Any]:
    criteria = [(cid, html.unescape(desc)) for cid, desc in _CRITERION.findall(prompt)]
    stated = _AS_OF.search(prompt)
    as_of = date.fromisoformat(stated.group(1)) if stated else None
    fields = [(n, html.unescape(t)) for n, t in _FIELD.findall(prompt) if not _stale(n, html.unescape(t), as_of)]
    factors = []
    for cid, description in criteria:
        wanted = _words(description) | _words(cid.replace("_", " "))
        bounds = _numbers(description)
        hits: list[str] = []
        for name, text in fields:
            by_word = bool(wanted & _words(text)) or name.split(".")[-1] in wanted
            values = _numbers(text) if name == "size" else []
            by_range = len(bounds) >= 2 and any(min(bounds) <= v <= max(bounds) for v in values)
            if (by_word and name != "size") or by_range:
                hits.append(text[:80])
        rating = 0.0 if not hits else min(1.0, 0.5 + 0.25 * len(hits))
        factors.append({"criterion": cid, "rating": rating, "evidence": hits[:2]})
    met = [f["criterion"] for f in factors if f["rating"] > 0]
    rationale = "[simulated] A stand-in judgement by word overlap between the criteria and the lead. " + (
        f"Supported criteria: {', '.join(met)}." if met else "No criterion is supported by the lead."
    )
    confidence = round(0.4 + 0.5 * len(met) / max(1, len(criteria)), 2)
    return {"factors": factors, "rationale": rationale, "confidence": confidence}
