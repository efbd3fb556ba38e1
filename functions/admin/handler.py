"""Lambda for operator endpoints: GET /v1/health (public) and GET /v1/openapi.json (public)."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response

from admin.health import check_health, openapi_document
from aigateway.api import create_app, entrypoint, json_response

app = create_app()


@app.get("/v1/health", summary="Dependency health", tags=["operations"])
def get_health():  # type: ignore[no-untyped-def]
    report = check_health()
    return json_response(200 if report["status"] == "ok" else 503, report)


@app.get("/v1/openapi.json", summary="This API's OpenAPI document", tags=["operations"])
def get_openapi():  # type: ignore[no-untyped-def]
    document: dict[str, Any] = openapi_document()
    return Response(status_code=200, content_type="application/json", body=json.dumps(document))


lambda_handler = entrypoint(app, public_routes=frozenset({"GET /v1/health", "GET /v1/openapi.json"}))
