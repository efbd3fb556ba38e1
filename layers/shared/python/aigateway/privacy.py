"""Field exclusion and PII redaction: applied before anything leaves for a provider or a log.

Excluded and PII fields are dropped by path (`notes`, `contact.email`, `custom.budget`); what
remains is free text, in which e-mail addresses and phone numbers are redacted as well, because
sales notes quote them all the time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits with the usual separators; it is a phone number when it has 9 or more digits
# (so dates, sizes and prices in notes survive).
PHONE_CANDIDATE = re.compile(r"(?<![\w@])\+?\d[\d ().-]{6,}\d(?!\w)")
PHONE_MIN_DIGITS = 9
# Dates and times are set aside first, so a date next to a time or another date is not one long
# "number" (and a phone number next to a date is still found).
DATE_OR_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?|\b\d{1,2}:\d{2}(?::\d{2})?\b")
EMAIL_MARK = "[email]"
PHONE_MARK = "[phone]"


def redact(text: str) -> str:
    """`text` with e-mail addresses and phone numbers replaced by markers."""
    text = EMAIL.sub(EMAIL_MARK, text)
    kept: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    def phone(match: re.Match[str]) -> str:
        digits = sum(ch.isdigit() for ch in match.group(0))
        return PHONE_MARK if digits >= PHONE_MIN_DIGITS else match.group(0)

    masked = PHONE_CANDIDATE.sub(phone, DATE_OR_TIME.sub(set_aside, text.replace("\x00", "")))
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], masked)


def drop_fields(record: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """A copy of `record` without the named fields (`top` or `top.sub`); the input is untouched."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in record.items()}
    for path in paths:
        top, _, sub = path.partition(".")
        if not sub:
            out.pop(top, None)
        elif isinstance(out.get(top), dict):
            out[top].pop(sub, None)
    return out
