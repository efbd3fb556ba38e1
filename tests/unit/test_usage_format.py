"""Pure parts of the finance read side: money formatting, export lines, cursors, date parsing."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from aigateway.errors import InvalidCursor, InvalidDate, InvalidMonth, InvalidRange, UnsupportedFormat
from aigateway.governance.usage import (
    EXPORT_COLUMNS,
    MAX_RANGE_DAYS,
    ExportCursor,
    date_range,
    export_record,
    format_records,
    months_between,
    parse_format,
    parse_month,
    previous_month,
    usd,
)

ITEM: dict[str, Any] = {
    "pk": "TENANT#demo#2026-11",
    "sk": "01M80MP2ZFD6AMEE4PEDJ6SFCT#00",
    "request_id": "01M80MP2ZFD6AMEE4PEDJ6SFCT",
    "attempt": 0,
    "tenant_id": "demo",
    "user_id": "u1",
    "key_id": "k1",
    "feature": "generate",
    "template": "skill_assessment@1",
    "model": "gpt-4o-mini",
    "provider": "simulated",
    "outcome": "success",
    "input_tokens": 627,
    "cached_tokens": 0,
    "output_tokens": 107,
    "cost_micros": 1_234_567,
    "cost_saved_micros": 0,
    "price_effective_from": "2024-07-18",
    "latency_ms": 12,
    "error_code": None,
    "created_at": "2026-11-22T03:27:05.257289Z",
}


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.000000"), (1, "0.000001"), (159, "0.000159"), (1_234_567, "1.234567"), (-5, "-0.000005")],
)
def test_usd_is_exact_decimal_text(micros: int, text: str) -> None:
    assert usd(micros) == text


def test_export_record_has_the_documented_columns_in_order() -> None:
    # Given a stored ledger item (with its table keys); When it becomes an export record
    record = export_record(ITEM)
    # Then it has exactly the documented columns, keys dropped, money exact
    assert tuple(record) == EXPORT_COLUMNS
    assert record["cost_micros"] == 1_234_567 and record["cost_usd"] == "1.234567"
    assert record["error_code"] is None and "pk" not in record
    # The experiment's columns come last: a row from before experiments (no attribute) exports them empty
    assert EXPORT_COLUMNS[-2:] == ("variant", "locale")
    assert record["variant"] is None and record["locale"] is None
    labelled = export_record({**ITEM, "variant": "concise", "locale": "fr"})
    assert (labelled["variant"], labelled["locale"]) == ("concise", "fr")


def test_csv_has_a_header_only_when_asked_and_nulls_are_empty_cells() -> None:
    records = [export_record(ITEM)]
    first = format_records(records, "csv", header=True)
    later = format_records(records, "csv", header=False)
    assert first.startswith(",".join(EXPORT_COLUMNS) + "\r\n")
    assert first.endswith(later) and not later.startswith("created_at")
    row = next(csv.DictReader(io.StringIO(first, newline="")))
    assert row["error_code"] == "" and row["cost_micros"] == "1234567"


def test_csv_cells_cannot_become_spreadsheet_formulas() -> None:
    # Given a user id a spreadsheet would evaluate
    record = export_record({**ITEM, "user_id": '=HYPERLINK("http://x")', "feature": "@sum"})
    # When it is written as CSV; Then the cell is text, and numbers are untouched
    row = next(csv.DictReader(io.StringIO(format_records([record], "csv", header=True), newline="")))
    assert row["user_id"].startswith("'=") and row["feature"] == "'@sum" and row["cost_micros"] == "1234567"


def test_jsonl_is_one_object_per_line_with_nulls() -> None:
    text = format_records([export_record(ITEM), export_record({**ITEM, "attempt": 1})], "jsonl", header=True)
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    assert [json.loads(line)["attempt"] for line in lines] == [0, 1]
    assert json.loads(lines[0])["error_code"] is None


def cursor(**changes: Any) -> str:
    data = {"v": 1, "s": "demo", "m": "2026-11", "f": "csv", "t": "demo", "a": "01ABC#00", **changes}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_cursor_round_trips_for_the_request_that_issued_it() -> None:
    issued = ExportCursor("*", "2026-11", "jsonl", "acme", "01ABC#00")
    again = ExportCursor.decode(issued.encode(), scope="*", month="2026-11", fmt="jsonl", tenants=["acme", "demo"])
    assert again == issued


@pytest.mark.parametrize(
    "token",
    [
        cursor(s="acme"),  # issued for another tenant's export
        cursor(t="acme"),  # names another tenant's partition
        cursor(m="2026-10"),  # another month
        cursor(f="jsonl"),  # another format
        cursor(v=2),  # not a version we issue
        cursor(a=7),  # position of the wrong type
        cursor(a="x" * 300),  # position too long
        base64.urlsafe_b64encode(b"[1, 2]").decode(),  # JSON, but not an object
        "%%%",  # not base64
        "",  # empty
        "A" * 5000,  # too long
    ],
)
def test_cursor_from_another_export_or_tampered_is_refused(token: str) -> None:
    with pytest.raises(InvalidCursor) as refused:
        ExportCursor.decode(token, scope="demo", month="2026-11", fmt="csv", tenants=["demo"])
    assert refused.value.field == "cursor" and refused.value.status == 400


def test_all_tenants_cursor_must_name_a_known_tenant() -> None:
    with pytest.raises(InvalidCursor):
        ExportCursor.decode(cursor(s="*", t="ghost"), scope="*", month="2026-11", fmt="csv", tenants=["demo"])


TODAY = date(2026, 11, 22)


def test_date_range_defaults_to_this_month_so_far() -> None:
    assert date_range(None, None, today=TODAY) == (date(2026, 11, 1), TODAY)
    assert date_range(None, "2026-02-10", today=TODAY) == (date(2026, 2, 1), date(2026, 2, 10))


def test_date_range_allows_at_most_366_days() -> None:
    assert date_range("2024-01-01", "2024-12-31", today=TODAY)[1] == date(2024, 12, 31)  # leap year: 366 days
    with pytest.raises(InvalidRange) as too_long:
        date_range("2024-01-01", "2025-01-01", today=TODAY)
    assert too_long.value.field == "to" and str(MAX_RANGE_DAYS) in too_long.value.message
    with pytest.raises(InvalidRange) as reversed_:
        date_range("2026-03-02", "2026-03-01", today=TODAY)
    assert reversed_.value.field == "from"


@pytest.mark.parametrize("value", ["2026-1-01", "20261101", "2026-11-01T00:00", "2026-02-29", "", "today"])
def test_malformed_or_impossible_dates_are_refused(value: str) -> None:
    with pytest.raises(InvalidDate):
        date_range(value, None, today=TODAY)


def test_months_between_crosses_a_year() -> None:
    assert months_between(date(2025, 11, 30), date(2026, 2, 1)) == ["2025-11", "2025-12", "2026-01", "2026-02"]


def test_months_parse_up_to_the_current_one() -> None:
    assert parse_month("2026-11", today=TODAY) == "2026-11"
    for bad in ("2026-12", "2027-01", "2026-00", "2026-13", "26-11", "2026-11-01"):
        with pytest.raises(InvalidMonth):
            parse_month(bad, today=TODAY)


def test_previous_month_wraps_the_year() -> None:
    assert previous_month(datetime(2027, 1, 1, 3, tzinfo=UTC)) == "2026-12"
    assert previous_month(datetime(2026, 3, 31, tzinfo=UTC)) == "2026-02"


def test_unknown_format_is_refused() -> None:
    assert parse_format("jsonl") == "jsonl"
    with pytest.raises(UnsupportedFormat) as refused:
        parse_format("CSV")
    assert refused.value.field == "format"
