"""Lambda for /v1/generate: parse → generate() → response. No AWS or OpenAI code here."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body

from aigateway import deps
from aigateway.api import JSON, create_app, entrypoint, request_info, require_principal
from aigateway.completion import CallContext
from aigateway.generation import FEATURE, GenerateRequest, GenerateResponse, generate

app = create_app()


@app.post("/v1/generate", summary="Generate from a prompt template", tags=["generate"])
def post_generate(request: Annotated[GenerateRequest, Body()]) -> Response[GenerateResponse]:
    info = request_info(app)
    ctx = CallContext(info.request_id, require_principal(app), FEATURE, info.deadline, client_ip=info.client_ip)
    response, headers = generate(request, ctx, templates=deps.templates(), completions=deps.completions())
    return Response(200, JSON, response, headers)


lambda_handler = entrypoint(app)
