"""Lead files: CSV and JSONL rows → lead records, each bad row reported by its line number.

Shared by the imports bucket (server side) and the operator CLI, so a file is read the same way
wherever it is scored. CSV columns: `lead_id` (or `id`), company, title, industry, size, source,
notes, contact_name, contact_email, contact_phone, events (`type` or `type@YYYY-MM-DD`, separated
by `;`); any other non-empty column becomes a custom field.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from aigateway.scoring.models import LeadIn

_PLAIN = ("company", "title", "industry", "size", "source", "notes")
_CONTACT = {"contact_name": "name", "contact_email": "email", "contact_phone": "phone"}


@dataclass(frozen=True)
class Row:
    line: int
    lead: LeadIn | None
    error: str | None = None
    lead_id: str | None = None


def custom_name(column: str, index: int) -> str:
    """A column's name as a custom field name (`^[A-Za-z][A-Za-z0-9_]{0,63}$`): `Deal Stage` →
    `Deal_Stage` (the operator CLI and the imports bucket name custom fields the same way)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", column).strip("_")
    if not name:
        return f"column_{index + 1}"
    return (name if name[0].isalpha() else f"f_{name}")[:64]


def csv_record(row: dict[str, str]) -> dict[str, Any]:
    """One CSV row as a lead record (not yet validated); empty cells are left out."""
    record: dict[str, Any] = {}
    contact: dict[str, str] = {}
    custom: dict[str, str] = {}
    for index, (column, raw) in enumerate(row.items()):
        if column is None or raw is None:
            continue
        name, value = column.strip().lower(), raw.strip()
        if not value:
            continue
        if name in ("lead_id", "id"):
            record["lead_id"] = value
        elif name in _PLAIN:
            record[name] = value
        elif name in _CONTACT:
            contact[_CONTACT[name]] = value
        elif name == "events":
            events = []
            for part in value.split(";"):
                kind, _, at = part.strip().partition("@")
                if kind:
                    events.append({"type": kind.strip(), **({"at": at.strip()} if at.strip() else {})})
            record["events"] = events
        else:
            custom[custom_name(column.strip(), index)] = value
    if contact:
        record["contact"] = contact
    if custom:
        record["custom"] = custom
    return record


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "(row)"
    return f"{where}: {first.get('msg')}"


def _checked(line: int, record: object, seen: set[str]) -> Row:
    lead_id = record.get("lead_id") if isinstance(record, dict) else None
    try:
        lead = LeadIn.model_validate(record)
    except ValidationError as exc:
        return Row(line, None, _problem(exc), lead_id if isinstance(lead_id, str) else None)
    if lead.lead_id in seen:
        return Row(line, None, f"lead_id: {lead.lead_id!r} appears earlier in the file", lead.lead_id)
    seen.add(lead.lead_id)
    return Row(line, lead, None, lead.lead_id)


def read_csv(text: str) -> Iterator[Row]:
    """Rows of a CSV file with a header; `line` is the row's first line in the file (blank lines
    are skipped but still counted)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = next(reader, None)
    if not header or not ({"lead_id", "id"} & {h.strip().lower() for h in header}):
        yield Row(1, None, "the header has no lead_id (or id) column")
        return
    seen: set[str] = set()
    end = reader.line_num
    for cells in reader:
        line, end = end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            yield Row(line, None, f"{len(cells)} fields, the header has {len(header)}")
            continue
        yield _checked(line, csv_record(dict(zip(header, cells, strict=False))), seen)


def read_jsonl(text: str) -> Iterator[Row]:
    """One JSON object per line; blank lines are skipped."""
    seen: set[str] = set()
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield Row(number, None, f"not JSON: {exc.msg}")
            continue
        yield _checked(number, record, seen)


def read_file(name: str, text: str) -> Iterator[Row]:
    if name.lower().endswith((".jsonl", ".ndjson")):
        return read_jsonl(text)
    return read_csv(text)
