"""Lambda for operator endpoints: health and OpenAPI (public); tenants and API keys, tenant
governance, lead-scoring settings and prompt experiments (admin keys; a tenant's own tenant_admin
keys for its keys, experiments and scoring settings)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from admin.experiments import get_experiment, put_experiment
from admin.governance import GovernanceOut, get_governance, put_governance
from admin.health import check_health, openapi_document
from admin.scoring import get_scoring, put_scoring
from admin.tenants import (
    TENANT_ID_PATTERN,
    IssuedKeyOut,
    KeyIn,
    KeyOut,
    KeysOut,
    TenantIn,
    TenantOut,
    TenantsOut,
    create_key,
    create_tenant,
    delete_key,
    list_keys,
    list_tenants,
)
from aigateway.api import JSON, create_app, entrypoint, json_response, require_principal
from aigateway.experiments import TEMPLATE_NAME, ExperimentIn, ExperimentOut
from aigateway.governance.config import Governance
from aigateway.scoring.models import ScoringSettings, ScoringSettingsIn

TENANT_ID = Path(pattern=TENANT_ID_PATTERN, description="Tenant id")
KEY_ID = Path(pattern=r"^[A-Za-z0-9]{1,64}$", description="Key id, as listed (not the key itself)")
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


@app.post(
    "/v1/admin/tenants",
    summary="Create a tenant (admin); then issue its first tenant_admin key",
    tags=["admin"],
    responses={201: {"description": "Created", "content": {JSON: {"model": TenantOut}}}},
)
def post_tenant(tenant: Annotated[TenantIn, Body()]) -> Response[Any]:
    return json_response(201, create_tenant(require_principal(app), tenant).model_dump(mode="json"))


@app.get("/v1/admin/tenants", summary="Every tenant (admin)", tags=["admin"])
def get_tenants() -> TenantsOut:
    return list_tenants(require_principal(app))


@app.post(
    "/v1/admin/tenants/<tenant_id>/keys",
    summary="Issue an API key to a user of the tenant (admin, or the tenant's tenant_admin up to its own role); "
    "the key is in this answer only",
    tags=["admin"],
    responses={201: {"description": "The new key", "content": {JSON: {"model": IssuedKeyOut}}}},
)
def post_tenant_key(tenant_id: Annotated[str, TENANT_ID], request: Annotated[KeyIn, Body()]) -> Response[Any]:
    return json_response(201, create_key(require_principal(app), tenant_id, request).model_dump(mode="json"))


@app.get(
    "/v1/admin/tenants/<tenant_id>/keys",
    summary="The tenant's API keys, active and revoked, without the keys themselves (admin or tenant_admin)",
    tags=["admin"],
)
def get_tenant_keys(tenant_id: Annotated[str, TENANT_ID]) -> KeysOut:
    return list_keys(require_principal(app), tenant_id)


@app.delete(
    "/v1/admin/tenants/<tenant_id>/keys/<key_id>",
    summary="Revoke one of the tenant's API keys (admin or tenant_admin); refused within the authorizer cache TTL",
    tags=["admin"],
)
def delete_tenant_key(tenant_id: Annotated[str, TENANT_ID], key_id: Annotated[str, KEY_ID]) -> KeyOut:
    return delete_key(require_principal(app), tenant_id, key_id)


@app.get(
    "/v1/admin/tenants/<tenant_id>/governance",
    summary="A tenant's budgets, rate limits and this month's budget counters (admin, or its tenant_admin)",
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
    summary="A tenant's lead-scoring criteria, thresholds and field rules (admin or tenant_admin)",
    tags=["admin"],
)
def get_tenant_scoring(tenant_id: Annotated[str, TENANT_ID]) -> ScoringSettings:
    return get_scoring(require_principal(app), tenant_id)


@app.put(
    "/v1/admin/tenants/<tenant_id>/scoring",
    summary="Replace a tenant's lead-scoring settings (admin or tenant_admin); a new version applies to later scores",
    tags=["admin"],
)
def put_tenant_scoring(
    tenant_id: Annotated[str, TENANT_ID], settings: Annotated[ScoringSettingsIn, Body()]
) -> ScoringSettings:
    return put_scoring(require_principal(app), tenant_id, settings)


@app.get(
    "/v1/admin/tenants/<tenant_id>/experiments/<template>",
    summary="A tenant's prompt experiment on a template: pinned version or weighted variants (admin or tenant_admin)",
    tags=["admin"],
)
def get_tenant_experiment(tenant_id: Annotated[str, TENANT_ID], template: Annotated[str, TEMPLATE]) -> ExperimentOut:
    return get_experiment(require_principal(app), tenant_id, template)


@app.put(
    "/v1/admin/tenants/<tenant_id>/experiments/<template>",
    summary="Replace a tenant's prompt experiment on a template (admin or tenant_admin): "
    "{pinned_version}, {variants}, or {} to end it",
    tags=["admin"],
)
def put_tenant_experiment(
    tenant_id: Annotated[str, TENANT_ID], template: Annotated[str, TEMPLATE], settings: Annotated[ExperimentIn, Body()]
) -> ExperimentOut:
    return put_experiment(require_principal(app), tenant_id, template, settings)


lambda_handler = entrypoint(app, public_routes=frozenset({"GET /v1/health", "GET /v1/openapi.json"}))
