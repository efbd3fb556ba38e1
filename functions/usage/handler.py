"""Lambda for finance: GET /v1/budget, GET /v1/usage, GET /v1/usage/export; and for prompt
experiments: POST /v1/feedback, GET /v1/experiments/{template}/report (aigateway.experiments).

The logic is in `aigateway.governance.usage`; the monthly S3 export runs in `functions/exporter`
(a whole month needs more than the 29 s an HTTP function may take).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader

from aigateway import deps
from aigateway.api import JSON, create_app, entrypoint, require_principal
from aigateway.experiments import TEMPLATE_NAME, ExperimentReport, FeedbackIn, FeedbackOut
from aigateway.governance.usage import (
    CONTENT_TYPES,
    DEFAULT_PAGE_SIZE,
    EXPORT_COLUMNS,
    MAX_PAGE_SIZE,
    BudgetReport,
    ExportPage,
    UsageReport,
)

MONTHLY_EXPORT = "monthly-usage-export"
TENANT_HELP = "Another tenant's id, or * for all tenants (admin keys only); default: the caller's tenant"

app = create_app()


@app.get("/v1/budget", summary="Budget status: limit, spent, reserved, remaining", tags=["finance"])
def get_budget(
    month: Annotated[str | None, Query(description="YYYY-MM; default: the current month (UTC)")] = None,
    tenant: Annotated[str | None, Query(description="Another tenant's id (admin keys only)")] = None,
) -> Response[BudgetReport]:
    report = deps.usage_service().budget(require_principal(app), month=month, tenant=tenant)
    return Response(200, JSON, report)


@app.get("/v1/usage", summary="Usage totals by day, feature, model and user", tags=["finance"])
def get_usage(
    first: Annotated[
        str | None, Query(alias="from", description="First day, YYYY-MM-DD; default: first of the month of 'to'")
    ] = None,
    last: Annotated[str | None, Query(alias="to", description="Last day, YYYY-MM-DD; default: today (UTC)")] = None,
    tenant: Annotated[str | None, Query(description=TENANT_HELP)] = None,
) -> Response[UsageReport]:
    report = deps.usage_service().report(require_principal(app), first=first, last=last, tenant=tenant)
    return Response(200, JSON, report)


def _header(description: str, type_: str = "string") -> OpenAPIResponseHeader:
    return {"description": description, "schema": {"type": type_}}


EXPORT_RESPONSE: dict[int, OpenAPIResponse] = {
    200: {
        "description": (
            "One page of the month's ledger rows, columns in this order: "
            + ", ".join(EXPORT_COLUMNS)
            + ". The CSV header row is on the first page only."
        ),
        "headers": {
            "X-Next-Cursor": _header("Pass as `cursor` for the next page; absent on the last page"),
            "Link": _header('The next page\'s URL, rel="next"; absent on the last page'),
            "X-Export-Rows": _header("Rows in the whole export (month, tenant scope), from the rollups", "integer"),
            "X-Export-Cost-Micros": _header("Cost of the whole export in micro-USD, from the rollups", "integer"),
            "X-Export-Page-Rows": _header("Rows on this page", "integer"),
        },
        "content": {
            CONTENT_TYPES["csv"]: {"schema": {"type": "string"}},
            CONTENT_TYPES["jsonl"]: {"schema": {"type": "string"}},
        },
    }
}


@app.get(
    "/v1/usage/export",
    summary="The month's ledger rows as CSV or JSONL, in pages",
    tags=["finance"],
    responses=EXPORT_RESPONSE,
    compress=True,
)
def get_usage_export(
    month: Annotated[str, Query(description="YYYY-MM (UTC), not in the future")],
    fmt: Annotated[str, Query(alias="format", description="csv or jsonl")] = "csv",
    cursor: Annotated[str | None, Query(description="X-Next-Cursor of the previous page")] = None,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Rows per page")] = DEFAULT_PAGE_SIZE,
    tenant: Annotated[str | None, Query(description=TENANT_HELP)] = None,
) -> Response[str]:
    page = deps.usage_service().export_page(
        require_principal(app), month=month, fmt=fmt, cursor=cursor, page_size=page_size, tenant=tenant
    )
    return Response(200, page.content_type, page.body, export_headers(page, page_size))


def export_headers(page: ExportPage, page_size: int) -> dict[str, str]:
    headers = {
        "x-export-rows": str(page.total_rows),
        "x-export-cost-micros": str(page.total_cost_micros),
        "x-export-page-rows": str(page.rows),
        "cache-control": "no-store",
    }
    if page.next_cursor is not None:
        query = {"month": page.month, "format": page.fmt, "page_size": page_size, "cursor": page.next_cursor}
        if page.scope != require_principal(app).tenant_id:
            query["tenant"] = page.scope
        headers["x-next-cursor"] = page.next_cursor
        headers["link"] = f'</v1/usage/export?{urlencode(query)}>; rel="next"'
    return headers


@app.post(
    "/v1/feedback",
    summary="Rate a request's answer (1-5); one rating per request and user, a repeat replaces it",
    tags=["experiments"],
    responses={
        201: {"description": "The rating, stored", "content": {JSON: {"model": FeedbackOut}}},
        200: {
            "description": "The rating, replacing this user's earlier one",
            "content": {JSON: {"model": FeedbackOut}},
        },
    },
)
def post_feedback(feedback: Annotated[FeedbackIn, Body()]) -> Response[FeedbackOut]:
    stored = deps.experiment_service().give_feedback(require_principal(app), feedback)
    return Response(200 if stored.replaced else 201, JSON, stored)


@app.get(
    "/v1/experiments/<template>/report",
    summary="Compare a template's variants: requests, schema validity, fallbacks, latency, cost and feedback",
    tags=["experiments"],
)
def get_experiment_report(
    template: Annotated[str, Path(pattern=TEMPLATE_NAME, description="Template name")],
    since: Annotated[
        str | None, Query(description="First day, YYYY-MM-DD (UTC); default: 29 days before 'until'")
    ] = None,
    until: Annotated[str | None, Query(description="Last day, YYYY-MM-DD (UTC); default: today")] = None,
    tenant: Annotated[str | None, Query(description="Another tenant's id (admin keys only)")] = None,
) -> Response[ExperimentReport]:
    scope = deps.usage_service().scope_of(require_principal(app), tenant, allow_all=False)
    report = deps.experiment_service().report(scope, template, since=since, until=until)
    return Response(200, JSON, report)


lambda_handler = entrypoint(app)
