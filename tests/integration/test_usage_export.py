"""Finance's read side on moto: usage totals, budget status, paged exports, the monthly S3 export, the CLI.

The figures each test prints are the ones finance checks: export lines vs rollups vs budget spent
(drift must be 0), rows seen once per paging, cross-tenant rows a tenant key can reach (must be 0).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aigateway.governance.budgets import scopes_for
from aigateway.governance.ledger import LedgerEntry, Outcome
from aigateway.ids import new_id
from infra.local.apigateway import HttpResponse, LocalApiGateway
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client
from tests.integration.test_errors import assert_error
from tests.integration.test_generate import SKILL

MEMBER_KEY = "aig_acme_member_key_0123456789"
ANALYST_KEY = "aig_demo_analyst_key_0123456789"
INT_COLUMNS = ("attempt", "input_tokens", "cached_tokens", "output_tokens", "cost_micros", "cost_saved_micros")


def this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def previous_month_start() -> datetime:
    first = datetime.now(UTC).replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=3)


def next_month() -> str:
    first = datetime.now(UTC).replace(day=1)
    return (first + timedelta(days=32)).strftime("%Y-%m")


def variant(answer: str) -> dict[str, Any]:
    return {**SKILL, "variables": {**SKILL["variables"], "answer": answer}}


def raw_get(client: Client, path: str, key: str | None = None, headers: dict[str, str] | None = None) -> HttpResponse:
    """The API's bytes as sent (the test client would try to parse a one-line JSONL page as JSON)."""
    sent = {"authorization": f"Bearer {key or client.api_key}", **(headers or {})}
    return client.gateway.handle("GET", path, sent, b"")


def parse(body: bytes, fmt: str, *, header: bool) -> list[dict[str, Any]]:
    text = body.decode("utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    if not header:
        text = EXPORT_HEADER + text
    records: list[dict[str, Any]] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        record: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
        for column in INT_COLUMNS:
            record[column] = int(row[column])
        records.append(record)
    return records


EXPORT_HEADER = (
    "created_at,request_id,attempt,tenant_id,user_id,key_id,feature,template,model,provider,outcome,error_code,"
    "input_tokens,cached_tokens,output_tokens,cost_micros,cost_usd,cost_saved_micros,price_effective_from,"
    "latency_ms\r\n"
)


def export_all(
    client: Client,
    month: str,
    fmt: str,
    *,
    page_size: int | None = None,
    tenant: str | None = None,
    key: str | None = None,
) -> tuple[list[dict[str, Any]], list[HttpResponse]]:
    """Follows X-Next-Cursor to the end; returns every record and every page."""
    records: list[dict[str, Any]] = []
    pages: list[HttpResponse] = []
    query = f"month={month}&format={fmt}" + (f"&page_size={page_size}" if page_size else "")
    query += f"&tenant={tenant}" if tenant else ""
    cursor: str | None = None
    while True:
        page = raw_get(client, f"/v1/usage/export?{query}" + (f"&cursor={cursor}" if cursor else ""), key)
        assert page.status == 200, page.body
        pages.append(page)
        records += parse(page.body, fmt, header=cursor is None)
        cursor = page.headers.get("x-next-cursor")
        if cursor is None:
            return records, pages
        assert len(pages) < 100, "paging does not end"


def settle_row(
    *,
    outcome: Outcome,
    cost: int,
    at: datetime | None = None,
    tenant: str = "demo",
    user: str = "demo-admin",
    model: str = "gpt-4o",
) -> LedgerEntry:
    """A ledger row through the real settlement (reserve → settle), as the fallback chain will write it."""
    from aigateway import deps

    now = at or datetime.now(UTC)
    request_id = new_id(int(now.timestamp() * 1000))
    reservation = None
    if cost:
        scopes = scopes_for(deps.governance_configs().get(tenant), user_id=user, feature="generate")
        reservation = deps.budgets().reserve(f"{request_id}#00", tenant, scopes, cost * 2, now)
    entry = LedgerEntry(
        request_id=request_id,
        attempt=0,
        tenant_id=tenant,
        user_id=user,
        key_id="key-fallback",
        feature="generate",
        template="skill_assessment@1",
        model=model,
        provider="simulated",
        outcome=outcome,
        input_tokens=640,
        cached_tokens=0,
        output_tokens=90,
        cost_micros=cost,
        price_effective_from="2024-08-06" if cost else None,
        latency_ms=35,
        error_code="provider_error" if outcome == "failure" else None,
        created_at=now,
    )
    assert deps.ledger().settle(entry, reservation)
    return entry


MONTH_ROWS = 12  # what a_month_with_every_outcome writes to the ledger


def a_month_with_every_outcome(client: Client, simulator: Any) -> None:
    """Rows as the fallback chain writes them: a success; a cache hit; a provider 500 (unbilled
    failure) retried to a success; a schema-invalid answer (billed failure) repaired to a success;
    another user's success; and four failed attempts answered by the template's static fallback."""
    assert client.post("/v1/generate", SKILL).status == 200
    assert client.post("/v1/generate", SKILL).body["cached"] is True
    simulator.set_faults({"script": ["500"]})
    assert client.post("/v1/generate", variant("Only matching rows.")).body["attempts"] == 2
    simulator.set_faults({"script": ["schema_invalid"]})
    assert client.post("/v1/generate", variant("Rows of both tables.")).body["attempts"] == 2
    simulator.reset_faults()
    analyst = seed_demo_tenant(ANALYST_KEY, tenant_id="demo", user_id="analyst", role="member")
    assert Client(client.gateway, analyst.api_key).post("/v1/generate", variant("Left rows, NULLs.")).status == 200
    simulator.set_faults({"script": ["503"] * 4})
    assert client.post("/v1/generate", variant("Nothing at all.")).body["served_by"] == "static_answer"
    simulator.reset_faults()


def test_export_lines_reconcile_with_rollups_and_budget_spent(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a month with successes, a cache hit, failures (one unbilled, one billed) and a fallback
    a_month_with_every_outcome(client, simulator)
    month = this_month()
    # When finance exports it as CSV and as JSONL, and reads the usage totals and the budget
    csv_rows, csv_pages = export_all(client, month, "csv")
    jsonl_rows, jsonl_pages = export_all(client, month, "jsonl")
    usage = client.get(f"/v1/usage?from={month}-01")
    budget = client.get("/v1/budget")
    assert usage.status == 200 and budget.status == 200, (usage.body, budget.body)
    # Then every figure agrees to the micro-USD
    csv_cost = sum(r["cost_micros"] for r in csv_rows)
    jsonl_cost = sum(r["cost_micros"] for r in jsonl_rows)
    totals = usage.body["totals"]
    tenant_budget = next(b for b in budget.body["budgets"] if b["scope"] == "tenant")
    header_cost = int(csv_pages[0].headers["x-export-cost-micros"])
    header_rows = int(csv_pages[0].headers["x-export-rows"])
    print(
        f"rows: csv {len(csv_rows)}, jsonl {len(jsonl_rows)}, rollup attempts {totals['attempts']}, "
        f"X-Export-Rows {header_rows}; cost µUSD: csv {csv_cost}, jsonl {jsonl_cost}, rollups "
        f"{totals['cost_micros']}, X-Export-Cost-Micros {header_cost}, budget spent {tenant_budget['spent_micros']}; "
        f"drift {abs(csv_cost - tenant_budget['spent_micros'])}"
    )
    assert sorted({r["outcome"] for r in csv_rows}) == ["cache_hit", "failure", "fallback", "success"]
    assert len(csv_rows) == len(jsonl_rows) == totals["attempts"] == header_rows == MONTH_ROWS
    assert csv_cost == jsonl_cost == totals["cost_micros"] == header_cost == tenant_budget["spent_micros"]
    assert csv_cost > 0  # four successes and a billed failure
    assert tenant_budget["reserved_micros"] == 0 and tenant_budget["spent_usd"] == f"0.{csv_cost:06d}"
    assert (totals["successes"], totals["cache_hits"], totals["failures"], totals["fallbacks"]) == (4, 1, 6, 1)
    assert totals["cost_saved_micros"] == sum(r["cost_saved_micros"] for r in csv_rows) > 0
    # CSV and JSONL carry the same rows, and each row's USD is its micros
    key = lambda r: (r["request_id"], r["attempt"], r["cost_micros"], r["outcome"], r["user_id"])  # noqa: E731
    assert sorted(map(key, csv_rows)) == sorted(map(key, jsonl_rows))
    assert all(r["cost_usd"] == f"{r['cost_micros'] // 10**6}.{r['cost_micros'] % 10**6:06d}" for r in jsonl_rows)
    assert csv_pages[0].headers["content-type"] == "text/csv; charset=utf-8"
    assert jsonl_pages[0].headers["content-type"] == "application/x-ndjson"
    # … and the breakdowns add up to the totals
    for dimension in ("by_day", "by_feature", "by_model", "by_user", "by_tenant"):
        assert sum(g["cost_micros"] for g in usage.body[dimension]) == totals["cost_micros"], dimension
    by_user = {g["user_id"]: g["attempts"] for g in usage.body["by_user"]}
    assert by_user == {"demo-admin": MONTH_ROWS - 1, "analyst": 1}
    assert {g["model"] for g in usage.body["by_model"]} == {"gpt-4o-mini", "gpt-4.1-mini", "static-answer"}


def test_paging_yields_every_row_exactly_once(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given twelve ledger rows this month
    a_month_with_every_outcome(client, simulator)
    everything, _ = export_all(client, this_month(), "csv")
    # When they are exported two at a time, and five at a time
    for page_size in (2, 5):
        paged, pages = export_all(client, this_month(), "csv", page_size=page_size)
        ids = [f"{r['request_id']}#{r['attempt']:03d}" for r in paged]
        print(f"page_size {page_size}: {len(pages)} pages, {len(ids)} rows, {len(ids) - len(set(ids))} duplicates")
        # Then each row comes exactly once, in the order of the full export, with no empty last page
        assert ids == [f"{r['request_id']}#{r['attempt']:03d}" for r in everything]
        assert len(pages) == -(-len(everything) // page_size)
        assert pages[0].body.startswith(b"created_at,") and not pages[1].body.startswith(b"created_at,")
        assert all("x-next-cursor" in p.headers and 'rel="next"' in p.headers["link"] for p in pages[:-1])
        assert "x-next-cursor" not in pages[-1].headers
        assert {p.headers["x-export-rows"] for p in pages} == {str(len(everything))}
    # And a client that accepts gzip gets the same bytes compressed (a page stays far below Lambda's 6 MB)
    plain = raw_get(client, f"/v1/usage/export?month={this_month()}")
    packed = raw_get(client, f"/v1/usage/export?month={this_month()}", headers={"accept-encoding": "gzip"})
    print(f"page bytes: {len(plain.body)} plain, {len(packed.body)} gzip")
    assert packed.headers.get("content-encoding") == "gzip" and gzip.decompress(packed.body) == plain.body


def test_tenants_are_isolated_and_only_an_admin_exports_across_them(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given tenant demo (an admin key) with two rows and tenant acme (a member key) with one
    client.post("/v1/generate", SKILL)
    client.post("/v1/generate", variant("Matched rows and NULLs."))
    acme = seed_demo_tenant(MEMBER_KEY, tenant_id="acme", user_id="acme-user", role="member")
    member = Client(client.gateway, acme.api_key)
    assert member.post("/v1/generate", SKILL).status == 200
    month = this_month()
    # When the member asks for demo's rows, or for every tenant's
    for tenant in ("demo", "*"):
        assert_error(member.get(f"/v1/usage/export?month={month}&tenant={tenant}"), 403, "forbidden", "tenant")
        assert_error(member.get(f"/v1/usage?tenant={tenant}"), 403, "forbidden", "tenant")
    assert_error(member.get("/v1/budget?tenant=demo"), 403, "forbidden", "tenant")
    # … or replays demo's cursor, or a cursor edited to point at demo's partition, or garbage
    demo_page = raw_get(client, f"/v1/usage/export?month={month}&page_size=1")
    demo_cursor = demo_page.headers["x-next-cursor"]
    forged = dict(json.loads(_b64decode(demo_cursor)), s="acme")  # claims acme's scope, reads demo
    cursors = {
        "demo's cursor": demo_cursor,
        "scope edited": _b64encode(forged),
        "format edited": _b64encode(dict(json.loads(_b64decode(demo_cursor)), s="acme", t="acme", f="jsonl")),
        "garbage": "not-a-cursor!",
    }
    leaked = 0
    for name, cursor in cursors.items():
        reply = member.get(f"/v1/usage/export?month={month}&cursor={cursor}")
        leaked += reply.status == 200
        assert_error(reply, 400, "invalid_cursor", "cursor")
        print(f"{name}: {reply.status} {reply.body['error']['code']}")
    # Then the member sees only acme's row, and no demo row leaked
    own, _ = export_all(client, month, "jsonl", key=acme.api_key)
    print(f"cross-tenant rows reachable with a tenant key: {leaked + sum(r['tenant_id'] != 'acme' for r in own)}")
    assert leaked == 0 and [r["tenant_id"] for r in own] == ["acme"]
    # And an admin exports across tenants, paging over the tenant boundary
    everyone, pages = export_all(client, month, "jsonl", page_size=1, tenant="*")
    assert sorted(r["tenant_id"] for r in everyone) == ["acme", "demo", "demo"]
    assert len({(r["request_id"], r["attempt"]) for r in everyone}) == 3 == int(pages[0].headers["x-export-rows"])
    assert "tenant=%2A" in pages[0].headers["link"]
    assert client.get("/v1/usage?tenant=acme").body["totals"]["attempts"] == 1
    assert client.get("/v1/usage?tenant=*").body["totals"]["attempts"] == 3
    # … but an admin's `*` cursor is not valid for one tenant's export
    star_cursor = pages[0].headers["x-next-cursor"]
    assert_error(client.get(f"/v1/usage/export?month={month}&format=jsonl&cursor={star_cursor}"), 400, "invalid_cursor")
    assert_error(client.get(f"/v1/usage/export?month={month}&tenant=nobody"), 404, "not_found", "tenant")


def _b64decode(token: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64encode(data: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def bad_input_cases() -> list[tuple[str, str, int, str, str | None]]:
    month, future = this_month(), next_month()
    return [
        ("malformed from", "/v1/usage?from=2026-1-5", 400, "invalid_date", "from"),
        ("not a calendar day", "/v1/usage?from=2026-02-30", 400, "invalid_date", "from"),
        ("malformed to", "/v1/usage?to=yesterday", 400, "invalid_date", "to"),
        ("basic ISO date", "/v1/usage?to=20261101", 400, "invalid_date", "to"),
        ("from after to", "/v1/usage?from=2026-03-10&to=2026-03-01", 400, "invalid_range", "from"),
        ("range over 366 days", "/v1/usage?from=2024-01-01&to=2025-01-01", 400, "invalid_range", "to"),
        ("unknown format", f"/v1/usage/export?month={month}&format=xlsx", 400, "unsupported_format", "format"),
        ("malformed month", "/v1/usage/export?month=2026-1", 400, "invalid_month", "month"),
        ("month 13", "/v1/usage/export?month=2026-13", 400, "invalid_month", "month"),
        ("a date for a month", "/v1/usage/export?month=2026-01-01", 400, "invalid_month", "month"),
        ("month in the future", f"/v1/usage/export?month={future}", 400, "invalid_month", "month"),
        ("budget month in the future", f"/v1/budget?month={future}", 400, "invalid_month", "month"),
        ("month missing", "/v1/usage/export?format=csv", 422, "validation_error", "month"),
        ("page_size 0", f"/v1/usage/export?month={month}&page_size=0", 422, "validation_error", "page_size"),
        ("page_size too big", f"/v1/usage/export?month={month}&page_size=5001", 422, "validation_error", "page_size"),
        ("garbage cursor", f"/v1/usage/export?month={month}&cursor=%%%", 400, "invalid_cursor", "cursor"),
        ("budget for every tenant", "/v1/budget?tenant=*", 400, "invalid_tenant", "tenant"),
    ]


def test_bad_input_is_a_clear_4xx(client: Client) -> None:
    # Given a valid key (one stack for every case: each is a single read-only request)
    for case, path, status, code, field in bad_input_cases():
        # When the request carries a bad parameter
        reply = client.get(path)
        print(f"{case}: {reply.status} {reply.body['error']['code']} ({reply.body['error']['message']})")
        # Then a 4xx names the machine-readable code and the field
        try:
            assert_error(reply, status, code, field)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from exc


def s3_objects(prefix: str) -> dict[str, bytes]:
    import boto3

    from aigateway.settings import get_settings

    s3 = boto3.client("s3")
    bucket = get_settings().exports_bucket
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_monthly_export_writes_csv_and_a_reconciled_summary_to_s3(client: Client, stack: LocalStack) -> None:
    # Given last month's rows for demo (billed and not) and acme, and a tenant whose ledger has a row
    # that bypassed settlement (no rollup, no budget charge): the summary must notice it
    at = previous_month_start()
    month = at.strftime("%Y-%m")
    billed = [settle_row(outcome="success", cost=700, at=at), settle_row(outcome="fallback", cost=55, at=at)]
    settle_row(outcome="failure", cost=0, at=at + timedelta(hours=1))
    settle_row(outcome="success", cost=321, at=at, tenant="acme", user="acme-user")
    seed_demo_tenant(MEMBER_KEY, tenant_id="acme", user_id="acme-user", role="member")
    seed_demo_tenant("aig_drift_key_0123456789abc", tenant_id="drift", user_id="d", role="member")
    from aigateway import deps

    stray = LedgerEntry(
        **{**billed[0].model_dump(), "request_id": new_id(), "tenant_id": "drift", "user_id": "d", "cost_micros": 99}
    )
    deps.repos().ledger.put_once("drift", month, stray.row_id, stray.model_dump(mode="json"))
    # When the schedule fires (default: the previous month), twice
    first = stack.run_schedule("monthly-usage-export")
    second = stack.run_schedule("monthly-usage-export")
    # Then each tenant has a CSV and the month a summary; a re-run overwrote the same keys
    objects = s3_objects(f"usage/{month}/")
    assert sorted(objects) == [f"usage/{month}/{t}.csv" for t in ("acme", "demo", "drift")] + [
        f"usage/{month}/summary.json"
    ]
    summary = json.loads(objects[f"usage/{month}/summary.json"])
    by_tenant = {t["tenant_id"]: t for t in summary["tenants"]}
    for tenant in ("demo", "acme", "drift"):
        t = by_tenant[tenant]
        lines = parse(objects[f"usage/{month}/{tenant}.csv"], "csv", header=True)
        print(
            f"{tenant}: {t['rows']} rows, lines {t['cost_micros_lines']} µUSD, rollups {t['cost_micros_rollups']}, "
            f"budget spent {t['budget_spent_micros']}, reconciled {t['reconciled']}"
        )
        assert len(lines) == t["rows"] and sum(r["cost_micros"] for r in lines) == t["cost_micros_lines"]
    assert summary["month"] == month and first["month"] == month
    assert by_tenant["demo"]["rows"] == 3 and by_tenant["demo"]["cost_micros_lines"] == sum(
        e.cost_micros for e in billed
    )
    for tenant in ("demo", "acme"):
        t = by_tenant[tenant]
        assert t["reconciled"] is True
        assert t["cost_micros_lines"] == t["cost_micros_rollups"] == t["budget_spent_micros"]
    assert by_tenant["drift"]["reconciled"] is False and summary["reconciled"] is False
    assert {k: v for k, v in first.items() if k != "generated_at"} == {
        k: v for k, v in second.items() if k != "generated_at"
    }
    # And a re-run for an explicit month (this one) works the same way
    client.post("/v1/generate", SKILL)
    rerun = stack.invoke("exporter", {"schedule": "monthly-usage-export", "month": this_month()})
    assert rerun["month"] == this_month() and {t["tenant_id"]: t["rows"] for t in rerun["tenants"]}["demo"] == 1
    assert next(t for t in rerun["tenants"] if t["tenant_id"] == "demo")["reconciled"] is True


def test_cli_writes_a_months_export_and_checks_its_sum(
    client: Client, stack: LocalStack, simulator: Any, tmp_path: Path, capsys: Any
) -> None:
    from cli.__main__ import main
    from infra.local.server import LocalHttpServer

    # Given a month with every outcome, served over loopback HTTP like `make run`
    a_month_with_every_outcome(client, simulator)
    server = LocalHttpServer(LocalApiGateway(stack), port=0)
    url = server.start()
    try:
        # When the CLI exports it, two rows per request, as CSV and as JSONL
        results = {}
        for fmt in ("csv", "jsonl"):
            out = tmp_path / "exports" / f"usage.{fmt}"
            argv = ["export", "--month", this_month(), "--format", fmt, "--out", str(out)]
            argv += ["--base-url", url, "--api-key", client.api_key, "--page-size", "2", "--no-progress"]
            results[fmt] = (main(argv), parse(out.read_bytes(), fmt, header=True))
        printed = capsys.readouterr().out
        # … and asks for a month that has not begun
        failed = main(["export", "--month", next_month(), "--base-url", url, "--api-key", client.api_key])
        error = capsys.readouterr().err
    finally:
        server.stop()
    # Then both files hold every row, their sums match the API's totals, and nothing else is left behind
    expected = client.get("/v1/usage").body["totals"]
    for fmt, (status, rows) in results.items():
        cost = sum(r["cost_micros"] for r in rows)
        print(f"cli {fmt}: exit {status}, {len(rows)} rows, {cost} µUSD (rollups {expected['cost_micros']} µUSD)")
        assert status == 0 and len(rows) == expected["attempts"] == MONTH_ROWS and cost == expected["cost_micros"]
    assert printed.count("reconciled: yes") == 2
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["usage.csv", "usage.jsonl"]
    umask = os.umask(0)
    os.umask(umask)
    assert ((tmp_path / "exports" / "usage.csv").stat().st_mode & 0o777) == 0o666 & ~umask  # not the temp file's 0600
    # And an API error is printed with its code, with a non-zero exit and no file
    print(error)
    assert failed == 1 and "invalid_month" in error and "HTTP 400" in error
    assert not list(Path.cwd().glob(f"usage-{next_month()}*"))
