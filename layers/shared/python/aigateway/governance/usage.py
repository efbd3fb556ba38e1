"""Finance's read side: usage totals, budget status, ledger exports (API pages and monthly S3 files).

Where each figure comes from:
- **Usage totals** (`GET /v1/usage`) are sums of the rollup counters (`ROLLUP#<tenant>#<month>`),
  which the ledger's settlement transaction updates with every row, so a report never scans rows.
- **Exports** (`GET /v1/usage/export`, the monthly S3 files) are the ledger rows themselves, in
  row-id order (request ids are ULIDs, so that is time order within a tenant-month).
- **Budget status** (`GET /v1/budget`) is the budget counters' limit, spent, reserved, remaining.

The three agree to the micro-USD: sum of a month's export lines' `cost_micros` == the rollups'
`cost_micros` == the tenant budget counter's `spent_micros` (every billed row charges its budget in
the same transaction). Each export page carries the month's rollup totals (`X-Export-Rows`,
`X-Export-Cost-Micros`) so a client can show progress and check its sum; the monthly export
writes that check into `summary.json`.

Export columns, in this fixed order (CSV header and JSONL keys alike):
    created_at, request_id, attempt, tenant_id, user_id, key_id, feature, template, model, provider,
    outcome, error_code, input_tokens, cached_tokens, output_tokens, cost_micros, cost_usd,
    cost_saved_micros, price_effective_from, latency_ms
`cost_usd` is `cost_micros` as an exact decimal string (6 places); micros are the source of truth.
CSV follows RFC 4180 (CRLF line ends; an empty cell is null) and, so a spreadsheet never evaluates
a cell, text cells starting with `= + - @` (or a tab / carriage return) are prefixed with `'`.

Paging: a cursor is urlsafe base64 of JSON naming the scope (a tenant id or `*`), month, format,
the tenant being read and the last row id sent. It is validated against the request: a cursor
issued for another scope, month or format is refused (`invalid_cursor`), and the partition read is
always rebuilt from the validated scope, never taken from the cursor, so editing a cursor cannot
reach another tenant's rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import IO, Any, Protocol

from pydantic import BaseModel, ConfigDict

from aigateway.auth import Principal
from aigateway.errors import (
    Forbidden,
    InvalidCursor,
    InvalidDate,
    InvalidMonth,
    InvalidRange,
    InvalidTenant,
    NotFound,
    UnsupportedFormat,
)
from aigateway.governance.budgets import Budgets, BudgetScope, BudgetStatus, scopes_for
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.ledger import ROLLUP_COUNTERS
from aigateway.observability import logger
from aigateway.store.dynamo import Dynamo, Item
from aigateway.store.repos import LedgerRows, Rollups, Tenants

ALL_TENANTS = "*"
MAX_RANGE_DAYS = 366
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
EXPORT_COLUMNS = (
    "created_at",
    "request_id",
    "attempt",
    "tenant_id",
    "user_id",
    "key_id",
    "feature",
    "template",
    "model",
    "provider",
    "outcome",
    "error_code",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_micros",
    "cost_usd",
    "cost_saved_micros",
    "price_effective_from",
    "latency_ms",
    "variant",  # the prompt experiment's label (empty when none); appended so older readers keep their columns
    "locale",
)
_INT_COLUMNS = frozenset(
    {"attempt", "input_tokens", "cached_tokens", "output_tokens", "cost_micros", "cost_saved_micros", "latency_ms"}
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")
_CURSOR_VERSION = 1
_MAX_CURSOR_CHARS = 2048
SCHEDULED_EXPORT_PREFIX = "usage"


def utc_now() -> datetime:
    return datetime.now(UTC)


def usd(micros: int) -> str:
    """Exact decimal USD for integer micro-USD: 1234567 → "1.234567"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


# --- input parsing (each failure names its field) ----------------------------------------------


def parse_day(value: str, *, field: str) -> date:
    if not _DAY_RE.match(value):
        raise InvalidDate(f"{field!r} must be a date as YYYY-MM-DD, got {value!r}", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidDate(f"{field!r} is not a calendar date: {value!r}", field=field) from None


def parse_month(value: str, *, today: date, field: str = "month") -> str:
    """A month `YYYY-MM` that has begun (the current month is allowed: its export is partial)."""
    found = _MONTH_RE.match(value)
    if not found or not 1 <= int(found.group(2)) <= 12:
        raise InvalidMonth(f"{field!r} must be a month as YYYY-MM, got {value!r}", field=field)
    if value > today.strftime("%Y-%m"):
        raise InvalidMonth(f"{field!r} {value} is in the future (it is {today:%Y-%m} in UTC)", field=field)
    return value


def parse_format(value: str) -> str:
    if value not in CONTENT_TYPES:
        raise UnsupportedFormat(
            f"format must be one of {', '.join(sorted(CONTENT_TYPES))}, got {value!r}", field="format"
        )
    return value


def date_range(
    first: str | None,
    last: str | None,
    *,
    today: date,
    names: tuple[str, str] = ("from", "to"),
    max_days: int = MAX_RANGE_DAYS,
    default_days: int | None = None,
) -> tuple[date, date]:
    """[first, last] inclusive UTC days, named `names` in errors; defaults: `last` today, `first`
    `default_days` before it counting both ends (None: the first day of `last`'s month)."""
    first_name, last_name = names
    end = parse_day(last, field=last_name) if last is not None else today
    if first is not None:
        start = parse_day(first, field=first_name)
    else:
        start = end - timedelta(days=default_days - 1) if default_days is not None else end.replace(day=1)
    if start > end:
        raise InvalidRange(f"'{first_name}' ({start}) is after '{last_name}' ({end})", field=first_name)
    if (end - start).days + 1 > max_days:
        raise InvalidRange(
            f"the range {start}..{end} spans {(end - start).days + 1} days; at most {max_days} are allowed",
            field=last_name,
        )
    return start, end


def months_between(start: date, end: date) -> list[str]:
    months: list[str] = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def previous_month(now: datetime) -> str:
    return (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


# --- output models ----------------------------------------------------------------------------


class UsageTotals(BaseModel):
    """Counters over a set of ledger rows (money in integer micro-USD, USD as exact decimal strings)."""

    attempts: int = 0
    successes: int = 0
    cache_hits: int = 0
    failures: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    cost_usd: str = "0.000000"
    cost_saved_micros: int = 0
    cost_saved_usd: str = "0.000000"
    avg_latency_ms: int = 0


class DayUsage(UsageTotals):
    day: str


class FeatureUsage(UsageTotals):
    feature: str


class ModelUsage(UsageTotals):
    model: str


class UserUsage(UsageTotals):
    user_id: str


class TenantUsage(UsageTotals):
    tenant_id: str


class UsageReport(BaseModel):
    tenant: str  # a tenant id, or "*" for an admin's cross-tenant report
    first_day: str
    last_day: str
    totals: UsageTotals
    by_day: list[DayUsage]
    by_feature: list[FeatureUsage]
    by_model: list[ModelUsage]
    by_user: list[UserUsage]
    by_tenant: list[TenantUsage]


class BudgetLine(BaseModel):
    scope: str  # "tenant", "user:<id>", "feature:<name>"
    period: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    limit_usd: str
    spent_usd: str
    reserved_usd: str
    remaining_usd: str
    alerts_sent: list[int]


class BudgetReport(BaseModel):
    tenant_id: str
    period: str
    budgets: list[BudgetLine]


def budget_line(status: BudgetStatus) -> BudgetLine:
    return BudgetLine(
        scope=status.scope,
        period=status.period,
        limit_micros=status.limit_micros,
        spent_micros=status.spent_micros,
        reserved_micros=status.reserved_micros,
        remaining_micros=status.remaining_micros,
        limit_usd=usd(status.limit_micros),
        spent_usd=usd(status.spent_micros),
        reserved_usd=usd(status.reserved_micros),
        remaining_usd=usd(status.remaining_micros),
        alerts_sent=list(status.alerts_sent),
    )


class _Sums:
    """Adds rollup items' counters, overall and per dimension."""

    def __init__(self) -> None:
        self.total = dict.fromkeys(ROLLUP_COUNTERS, 0)
        self.by: dict[str, dict[str, dict[str, int]]] = {d: {} for d in ("day", "feature", "model", "user", "tenant")}

    def add(self, item: Item) -> None:
        keys = {
            "day": item["day"],
            "feature": item["feature"],
            "model": item["model"],
            "user": item["user_id"],
            "tenant": item["tenant_id"],
        }
        for counter in ROLLUP_COUNTERS:
            value = int(item.get(counter, 0))
            self.total[counter] += value
            for dimension, key in keys.items():
                group = self.by[dimension].setdefault(key, dict.fromkeys(ROLLUP_COUNTERS, 0))
                group[counter] += value

    @staticmethod
    def totals(c: dict[str, int]) -> dict[str, Any]:
        return {
            **{k: c[k] for k in ROLLUP_COUNTERS if k != "latency_ms_sum"},
            "cost_usd": usd(c["cost_micros"]),
            "cost_saved_usd": usd(c["cost_saved_micros"]),
            "avg_latency_ms": c["latency_ms_sum"] // c["attempts"] if c["attempts"] else 0,
        }

    def grouped(self, dimension: str) -> list[tuple[str, dict[str, Any]]]:
        return [(key, self.totals(c)) for key, c in sorted(self.by[dimension].items())]


# --- export formatting (pure) -------------------------------------------------------------------


def export_record(item: Item) -> dict[str, Any]:
    """A ledger item as an export record: exactly EXPORT_COLUMNS, in order."""
    record: dict[str, Any] = {}
    for column in EXPORT_COLUMNS:
        if column == "cost_usd":
            record[column] = usd(int(item.get("cost_micros", 0)))
        elif column in _INT_COLUMNS:
            record[column] = int(item.get(column, 0))
        else:
            value = item.get(column)
            record[column] = None if value is None else str(value)
    return record


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return str(value)


def format_records(records: Iterable[dict[str, Any]], fmt: str, *, header: bool) -> str:
    """CSV (header row when `header`) or JSONL text for export records."""
    out = io.StringIO()
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            out.write("\n")
        return out.getvalue()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(EXPORT_COLUMNS)
    for record in records:
        writer.writerow([_csv_cell(record[c]) for c in EXPORT_COLUMNS])
    return out.getvalue()


@dataclass(frozen=True)
class ExportCursor:
    """Where the next page starts: tenant being read, and the last row id sent (None: its start)."""

    scope: str
    month: str
    fmt: str
    tenant: str
    after: str | None

    def encode(self) -> str:
        raw = json.dumps(
            {"v": _CURSOR_VERSION, "s": self.scope, "m": self.month, "f": self.fmt, "t": self.tenant, "a": self.after},
            separators=(",", ":"),
        ).encode("utf-8")
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, token: str, *, scope: str, month: str, fmt: str, tenants: list[str]) -> ExportCursor:
        """The cursor, if this request (scope, month, format) could have been given it; else invalid_cursor."""
        if not token or len(token) > _MAX_CURSOR_CHARS:
            raise InvalidCursor("cursor is empty or too long", field="cursor")
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidCursor("cursor is not one this API issued", field="cursor") from None
        if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
            raise InvalidCursor("cursor is not one this API issued", field="cursor")
        if (data.get("s"), data.get("m"), data.get("f")) != (scope, month, fmt):
            raise InvalidCursor(
                "cursor belongs to another export (tenant scope, month or format differ); "
                "repeat the request that returned it",
                field="cursor",
            )
        tenant, after = data.get("t"), data.get("a")
        in_scope = tenant in tenants if scope == ALL_TENANTS else tenant == scope
        if not isinstance(tenant, str) or not in_scope:
            raise InvalidCursor("cursor names a tenant outside this export", field="cursor")
        if after is not None and (not isinstance(after, str) or not 0 < len(after) <= 256):
            raise InvalidCursor("cursor position is malformed", field="cursor")
        return cls(scope, month, fmt, tenant, after)


@dataclass(frozen=True)
class ExportPage:
    body: str
    content_type: str
    rows: int
    next_cursor: str | None
    total_rows: int  # the month's rows in this scope, from the rollups
    total_cost_micros: int  # the month's cost in this scope, from the rollups
    scope: str
    month: str
    fmt: str


# --- monthly export to S3 ---------------------------------------------------------------------


class ObjectWriter(Protocol):
    def put(self, key: str, body: IO[bytes] | bytes, content_type: str) -> None: ...


@lru_cache(maxsize=1)
def _s3() -> Any:
    import boto3

    return boto3.client("s3")


@dataclass(frozen=True)
class S3Writer:
    """Writes export objects to the exports bucket (one PutObject each; re-runs overwrite)."""

    bucket: str

    def put(self, key: str, body: IO[bytes] | bytes, content_type: str) -> None:
        _s3().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)


class TenantExportSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant_id: str
    object_key: str
    rows: int
    rollup_rows: int
    cost_micros_lines: int
    cost_micros_rollups: int
    budget_spent_micros: int
    cost_usd: str
    reconciled: bool


class MonthlyExportSummary(BaseModel):
    month: str
    generated_at: str
    bucket_prefix: str
    tenants: list[TenantExportSummary]
    rows: int
    cost_micros: int
    cost_usd: str
    reconciled: bool


# --- the service ------------------------------------------------------------------------------


class UsageService:
    def __init__(
        self,
        *,
        rollups: Rollups,
        ledger: LedgerRows,
        tenants: Tenants,
        budgets: Budgets,
        configs: GovernanceConfigs,
        db: Dynamo,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.rollups = rollups
        self.ledger = ledger
        self.tenants = tenants
        self.budgets = budgets
        self.configs = configs
        self.db = db
        self.clock = clock

    # scope ------------------------------------------------------------------------------------
    def scope_of(self, principal: Principal, tenant: str | None, *, allow_all: bool) -> str:
        """The tenant a request reads: the caller's own, unless an admin names another (or `*`)."""
        if tenant is None or tenant == principal.tenant_id:
            return principal.tenant_id
        if principal.role != "admin":
            raise Forbidden("a tenant key can only read its own tenant's usage", field="tenant")
        if tenant == ALL_TENANTS:
            if not allow_all:
                raise InvalidTenant("tenant '*' is not allowed here; name one tenant", field="tenant")
            return ALL_TENANTS
        if self.tenants.get(tenant) is None:
            raise NotFound(f"no tenant {tenant!r}", field="tenant")
        return tenant

    def _tenants_in(self, scope: str) -> list[str]:
        return self.tenants.ids() if scope == ALL_TENANTS else [scope]

    # GET /v1/usage ----------------------------------------------------------------------------
    def report(self, principal: Principal, *, first: str | None, last: str | None, tenant: str | None) -> UsageReport:
        start, end = date_range(first, last, today=self.clock().date())
        scope = self.scope_of(principal, tenant, allow_all=True)
        calls = [
            (lambda t=t, m=m: self.rollups.days(t, m, first_day=start.isoformat(), last_day=end.isoformat()))
            for t in self._tenants_in(scope)
            for m in months_between(start, end)
        ]
        sums = _Sums()
        for items in self.db.parallel(*calls):
            for item in items:
                sums.add(item)
        return UsageReport(
            tenant=scope,
            first_day=start.isoformat(),
            last_day=end.isoformat(),
            totals=UsageTotals(**sums.totals(sums.total)),
            by_day=[DayUsage(day=k, **v) for k, v in sums.grouped("day")],
            by_feature=[FeatureUsage(feature=k, **v) for k, v in sums.grouped("feature")],
            by_model=[ModelUsage(model=k, **v) for k, v in sums.grouped("model")],
            by_user=[UserUsage(user_id=k, **v) for k, v in sums.grouped("user")],
            by_tenant=[TenantUsage(tenant_id=k, **v) for k, v in sums.grouped("tenant")],
        )

    # GET /v1/budget ---------------------------------------------------------------------------
    def budget(self, principal: Principal, *, month: str | None, tenant: str | None) -> BudgetReport:
        """The tenant budget, the caller's user budget (own tenant only), and every feature budget."""
        now = self.clock()
        period = parse_month(month, today=now.date()) if month is not None else now.strftime("%Y-%m")
        tenant_id = self.scope_of(principal, tenant, allow_all=False)
        config = self.configs.get(tenant_id)
        if tenant_id == principal.tenant_id:
            scopes = scopes_for(config, user_id=principal.user_id, feature="")
        else:
            scopes = [BudgetScope("tenant", config.budgets.monthly_micros)]
        scopes += [BudgetScope(f"feature:{name}", limit) for name, limit in sorted(config.budgets.features.items())]
        statuses = self.budgets.statuses(tenant_id, scopes, period)
        return BudgetReport(tenant_id=tenant_id, period=period, budgets=[budget_line(s) for s in statuses])

    # GET /v1/usage/export ---------------------------------------------------------------------
    def month_totals(self, tenants: list[str], month: str) -> dict[str, tuple[int, int]]:
        """Per tenant: (rows, cost_micros) of the month, from the rollups."""
        results = self.db.parallel(*[(lambda t=t: self.rollups.days(t, month)) for t in tenants])
        totals: dict[str, tuple[int, int]] = {}
        for tenant, items in zip(tenants, results, strict=True):
            totals[tenant] = (
                sum(int(i.get("attempts", 0)) for i in items),
                sum(int(i.get("cost_micros", 0)) for i in items),
            )
        return totals

    def export_page(
        self,
        principal: Principal,
        *,
        month: str,
        fmt: str,
        cursor: str | None,
        page_size: int,
        tenant: str | None,
    ) -> ExportPage:
        fmt = parse_format(fmt)
        month = parse_month(month, today=self.clock().date())
        scope = self.scope_of(principal, tenant, allow_all=True)
        tenants = self._tenants_in(scope)
        if cursor is not None:
            position: ExportCursor | None = ExportCursor.decode(
                cursor, scope=scope, month=month, fmt=fmt, tenants=tenants
            )
        else:
            position = ExportCursor(scope, month, fmt, tenants[0], None) if tenants else None
        totals = self.month_totals(tenants, month)
        rows: list[Item] = []
        following: ExportCursor | None = None
        if position is not None:
            rows, following = self._read(tenants, position, page_size)
        return ExportPage(
            body=format_records((export_record(r) for r in rows), fmt, header=cursor is None),
            content_type=CONTENT_TYPES[fmt],
            rows=len(rows),
            next_cursor=following.encode() if following is not None else None,
            total_rows=sum(r for r, _ in totals.values()),
            total_cost_micros=sum(c for _, c in totals.values()),
            scope=scope,
            month=month,
            fmt=fmt,
        )

    def _read(
        self, tenants: list[str], position: ExportCursor, page_size: int
    ) -> tuple[list[Item], ExportCursor | None]:
        """Up to `page_size` rows from `position` on, across the scope's tenants in order."""
        rows: list[Item] = []
        index, after = tenants.index(position.tenant), position.after

        def at(i: int, a: str | None) -> ExportCursor:
            return ExportCursor(position.scope, position.month, position.fmt, tenants[i], a)

        while index < len(tenants):
            if len(rows) >= page_size:
                return rows, at(index, after)
            want = page_size - len(rows)
            # One more than wanted: if it comes back, more remain and no empty last page is needed.
            items, stopped_after = self.ledger.page(tenants[index], position.month, after=after, limit=want + 1)
            if len(items) > want:
                rows += items[:want]
                return rows, at(index, str(items[want - 1]["sk"]))
            rows += items
            if stopped_after is not None:  # DynamoDB's 1 MB page ended first: continue after it
                after = str(items[-1]["sk"]) if items else stopped_after
                continue
            index, after = index + 1, None
        return rows, None

    def iter_month(self, tenant_id: str, month: str, *, batch: int = MAX_PAGE_SIZE) -> Iterator[Item]:
        """Every ledger row of a tenant-month, in row-id order."""
        after: str | None = None
        while True:
            items, after = self.ledger.page(tenant_id, month, after=after, limit=batch)
            yield from items
            if after is None:
                return

    # monthly export (schedule) ---------------------------------------------------------------
    def monthly_export(self, writer: ObjectWriter, *, month: str | None = None) -> MonthlyExportSummary:
        """Every tenant's month as `usage/<month>/<tenant>.csv`, plus `usage/<month>/summary.json`.

        Idempotent: a re-run writes the same keys again. `month` defaults to the previous UTC month.
        """
        now = self.clock()
        month = parse_month(month, today=now.date()) if month is not None else previous_month(now)
        prefix = f"{SCHEDULED_EXPORT_PREFIX}/{month}"
        tenants = self.tenants.ids()
        rollups = self.month_totals(tenants, month)
        summaries: list[TenantExportSummary] = []
        for tenant_id in tenants:
            key = f"{prefix}/{tenant_id}.csv"
            with tempfile.TemporaryFile("w+b") as spool:
                rows, cost = self._write_csv(spool, tenant_id, month)
                spool.seek(0)
                writer.put(key, spool, CONTENT_TYPES["csv"])
            limit = self.configs.get(tenant_id).budgets.monthly_micros
            spent = self.budgets.statuses(tenant_id, [BudgetScope("tenant", limit)], month)[0].spent_micros
            rollup_rows, rollup_cost = rollups[tenant_id]
            summary = TenantExportSummary(
                tenant_id=tenant_id,
                object_key=key,
                rows=rows,
                rollup_rows=rollup_rows,
                cost_micros_lines=cost,
                cost_micros_rollups=rollup_cost,
                budget_spent_micros=spent,
                cost_usd=usd(cost),
                reconciled=rows == rollup_rows and cost == rollup_cost == spent,
            )
            if not summary.reconciled:
                logger().warning("usage export does not reconcile", extra=summary.model_dump())
            summaries.append(summary)
        total_cost = sum(s.cost_micros_lines for s in summaries)
        result = MonthlyExportSummary(
            month=month,
            generated_at=now.isoformat(),
            bucket_prefix=f"{prefix}/",
            tenants=summaries,
            rows=sum(s.rows for s in summaries),
            cost_micros=total_cost,
            cost_usd=usd(total_cost),
            reconciled=all(s.reconciled for s in summaries),
        )
        writer.put(f"{prefix}/summary.json", result.model_dump_json(indent=2).encode("utf-8"), "application/json")
        return result

    def _write_csv(self, spool: IO[bytes], tenant_id: str, month: str) -> tuple[int, int]:
        """A tenant-month as CSV into `spool` (a temp file, so a large month never sits in memory)."""
        text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
        text.write(format_records((), "csv", header=True))
        rows = cost = 0
        batch: list[dict[str, Any]] = []
        for item in self.iter_month(tenant_id, month):
            record = export_record(item)
            rows += 1
            cost += record["cost_micros"]
            batch.append(record)
            if len(batch) >= MAX_PAGE_SIZE:
                text.write(format_records(batch, "csv", header=False))
                batch.clear()
        text.write(format_records(batch, "csv", header=False))
        text.flush()
        text.detach()  # leave the temp file open for the upload
        return rows, cost
