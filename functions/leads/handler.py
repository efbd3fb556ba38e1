"""Lambda for /v1/leads: upsert leads, request scores (202, one job per lead), read a lead with
its latest score, its score history (the audit trail), and the tenant's leads ranked by tier.

No AWS code here: `aigateway.scoring.service.LeadService` does the work.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query

from aigateway import deps
from aigateway.api import (
    create_app,
    entrypoint,
    idempotency_key_header,
    idempotent_response,
    json_response,
    ok_response,
    request_info,
    require_principal,
)
from aigateway.idempotency import Reply
from aigateway.scoring.models import LEAD_ID_PATTERN, LeadData, Tier
from aigateway.scoring.service import (
    BulkUpsertIn,
    BulkUpsertOut,
    LeadOut,
    LeadPage,
    ScoreHistoryPage,
    ScoreJobsOut,
    ScoreMode,
    ScoreRequestIn,
    UpsertOut,
)

LEAD_ID = Path(pattern=LEAD_ID_PATTERN, description="Your id for the lead")
LIMIT = Query(ge=1, le=200, description="Items per page")
CURSOR = Query(description="The previous page's next_cursor")
# 500 leads with long notes exceed the default 256 KiB; Lambda's synchronous payload limit is 6 MB.
BULK_BODY_BYTES = 5 * 1024 * 1024

app = create_app()


@app.put(
    "/v1/leads/<lead_id>",
    summary="Create or replace a lead; queues a re-score when a trigger field changed",
    tags=["leads"],
    responses={200: ok_response("Updated (201: created)", UpsertOut)},
)
def put_lead(
    lead_id: Annotated[str, LEAD_ID],
    lead: Annotated[LeadData, Body()],
    score: Annotated[ScoreMode, Query(description="auto (trigger fields), always or never")] = "auto",
) -> Response[Any]:
    principal, info = require_principal(app), request_info(app)
    out, headers = deps.lead_service().upsert(principal, lead_id, lead, score=score, client_ip=info.client_ip)
    return json_response(201 if out.status == "created" else 200, out.model_dump(mode="json"), headers)


@app.post(
    "/v1/leads",
    summary="Create or update up to 500 leads; all are validated before any is written",
    tags=["leads"],
    responses={200: ok_response("What happened to each lead", BulkUpsertOut)},
)
def post_leads(
    request: Annotated[BulkUpsertIn, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    principal, info = require_principal(app), request_info(app)

    def run() -> Reply:
        out, headers = deps.lead_service().upsert_many(principal, request, client_ip=info.client_ip)
        return Reply(200, out.model_dump(mode="json"), headers)

    return idempotent_response(app, key=idempotency_key, payload=request, run=run, store=deps.idempotency_store)


@app.post(
    "/v1/leads/score",
    summary="Score up to 500 leads asynchronously: one job per lead (poll /v1/jobs/{job_id})",
    tags=["leads"],
    responses={202: ok_response("Queued; one job per lead", ScoreJobsOut)},
)
def post_score(
    request: Annotated[ScoreRequestIn, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    principal, info = require_principal(app), request_info(app)

    def run() -> Reply:
        out, headers = deps.lead_service().request_scores(principal, request, client_ip=info.client_ip)
        return Reply(202, out.model_dump(mode="json"), headers)

    return idempotent_response(app, key=idempotency_key, payload=request, run=run, store=deps.idempotency_store)


@app.get("/v1/leads", summary="The tenant's leads, best first, optionally of one tier", tags=["leads"])
def list_leads(
    tier: Annotated[Tier | None, Query(description="hot, warm or cold")] = None,
    limit: Annotated[int, LIMIT] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> LeadPage:
    return deps.lead_service().ranked(require_principal(app), tier=tier, limit=limit, cursor=cursor)


@app.get("/v1/leads/<lead_id>", summary="A lead with its latest score and explanation", tags=["leads"])
def get_lead(lead_id: Annotated[str, LEAD_ID]) -> LeadOut:
    return deps.lead_service().get(require_principal(app), lead_id)


@app.get("/v1/leads/<lead_id>/scores", summary="Every score of a lead, newest first (the audit trail)", tags=["leads"])
def get_scores(
    lead_id: Annotated[str, LEAD_ID],
    limit: Annotated[int, LIMIT] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> ScoreHistoryPage:
    return deps.lead_service().history(require_principal(app), lead_id, limit=limit, cursor=cursor)


lambda_handler = entrypoint(app, max_body_bytes=BULK_BODY_BYTES)
