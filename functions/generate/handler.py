"""Lambda for /v1/generate and /v1/batch: parse → generate() (at most once per Idempotency-Key) → response.

No AWS or OpenAI code here.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body

from aigateway import deps
from aigateway.api import (
    create_app,
    entrypoint,
    idempotency_key_header,
    idempotent_response,
    ok_response,
)
from aigateway.completion import request_context
from aigateway.generation import FEATURE, GenerateRequest, GenerateResponse, generate
from aigateway.idempotency import Reply
from generate.batch import BatchRequest, BatchResponse, run_batch

app = create_app()


@app.post(
    "/v1/generate",
    summary="Generate from a prompt template",
    tags=["generate"],
    responses={200: ok_response("The template's output, usage and cost", GenerateResponse)},
)
def post_generate(
    request: Annotated[GenerateRequest, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    ctx = request_context(app, FEATURE)

    def run() -> Reply:
        response, headers = generate(
            request,
            ctx,
            templates=deps.templates(),
            completions=deps.completions(),
            experiments=deps.experiment_configs(),
        )
        return Reply(200, response.model_dump(mode="json"), headers)

    return idempotent_response(app, key=idempotency_key, payload=request, run=run, store=deps.idempotency_store)


@app.post(
    "/v1/batch",
    summary="Up to 10 generate requests at once, run concurrently within one deadline",
    tags=["generate"],
    responses={200: ok_response("Each item's status and its result or error", BatchResponse)},
)
def post_batch(
    batch: Annotated[BatchRequest, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    ctx = request_context(app, FEATURE)

    def run() -> Reply:
        response = run_batch(
            batch,
            ctx,
            templates=deps.templates(),
            completions=deps.completions(),
            experiments=deps.experiment_configs(),
        )
        return Reply(200, response.model_dump(mode="json"), {})

    return idempotent_response(app, key=idempotency_key, payload=batch, run=run, store=deps.idempotency_store)


lambda_handler = entrypoint(app)
