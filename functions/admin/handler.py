"""Lambda for operator endpoints: health and OpenAPI (public); tenant governance, lead-scoring
settings and prompt experiments (admin keys only)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from admin.experiments import get_experiment, put_experiment
from admin.governance import GovernanceOut, get_governance, put_governance
from admin.health import check_health, openapi_document
from admin.scoring import get_scoring, put_scoring
from aigateway.api import create_app, entrypoint, json_response, require_principal
from aigateway.experiments import TEMPLATE_NAME, ExperimentIn, ExperimentOut
from aigateway.governance.config import Governance
from aigateway.scoring.models import ScoringSettings, ScoringSettingsIn

TENANT_ID = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Tenant id")
TEMPLATE = Path(pattern=TEMPLATE_NAME, description="Template name, e.g. skill_assessment")

app = create_app()


@app.get("/v1/health", summary="Dependency health", tags=["operations"])
def get_health():  # type: ignore[no-untyped-def]
    report = check_health()
    return json_response(200 if report["status"] == "ok" else 503, report)


@app.get("/v1/openapi.json", summary="This API's OpenAPI document", tags=["operations"])
def get_openapi():  # type: ignore[no-untyped-def]
    document: dict[str, Any] = openapi_document()
    return Response(status_code=200, content_type="application/json", body=json.dumps(document))


@app.get(
    "/v1/admin/tenants/<tenant_id>/governance",
    summary="A tenant's budgets, rate limits and this month's budget counters (admin)",
    tags=["admin"],
)
def get_tenant_governance(tenant_id: Annotated[str, TENANT_ID]) -> GovernanceOut:
    return get_governance(require_principal(app), tenant_id)


@app.put(
    "/v1/admin/tenants/<tenant_id>/governance",
    summary="Replace a tenant's budgets and rate-limit overrides (admin); applies at once",
    tags=["admin"],
)
def put_tenant_governance(
    tenant_id: Annotated[str, TENANT_ID], governance: Annotated[Governance, Body()]
) -> GovernanceOut:
    return put_governance(require_principal(app), tenant_id, governance)


@app.get(
    "/v1/admin/tenants/<tenant_id>/scoring",
    summary="A tenant's lead-scoring criteria, thresholds and field rules (admin)",
    tags=["admin"],
)
def get_tenant_scoring(tenant_id: Annotated[str, TENANT_ID]) -> ScoringSettings:
    return get_scoring(require_principal(app), tenant_id)


@app.put(
    "/v1/admin/tenants/<tenant_id>/scoring",
    summary="Replace a tenant's lead-scoring settings (admin); a new version applies to later scores",
    tags=["admin"],
)
def put_tenant_scoring(
    tenant_id: Annotated[str, TENANT_ID], settings: Annotated[ScoringSettingsIn, Body()]
) -> ScoringSettings:
    return put_scoring(require_principal(app), tenant_id, settings)


@app.get(
    "/v1/admin/tenants/<tenant_id>/experiments/<template>",
    summary="A tenant's prompt experiment on a template: pinned version or weighted variants (admin)",
    tags=["admin"],
)
def get_tenant_experiment(tenant_id: Annotated[str, TENANT_ID], template: Annotated[str, TEMPLATE]) -> ExperimentOut:
    return get_experiment(require_principal(app), tenant_id, template)


@app.put(
    "/v1/admin/tenants/<tenant_id>/experiments/<template>",
    summary="Replace a tenant's prompt experiment on a template (admin): {pinned_version}, {variants}, or {} to end it",
    tags=["admin"],
)
def put_tenant_experiment(
    tenant_id: Annotated[str, TENANT_ID], template: Annotated[str, TEMPLATE], settings: Annotated[ExperimentIn, Body()]
) -> ExperimentOut:
    return put_experiment(require_principal(app), tenant_id, template, settings)


lambda_handler = entrypoint(app, public_routes=frozenset({"GET /v1/health", "GET /v1/openapi.json"}))
