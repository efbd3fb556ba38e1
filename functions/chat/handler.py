"""Lambda for the OpenAI-compatible surface (/v1/chat/completions, /v1/models) and conversations.

No AWS or OpenAI code here: the contract is in chat/openai_api.py, the model path in
aigateway.completion, conversations in chat/conversations.py.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header, Path

from aigateway import deps
from aigateway.api import (
    create_app,
    entrypoint,
    idempotency_key_header,
    idempotent_response,
    json_response,
)
from aigateway.completion import request_context
from aigateway.idempotency import Reply
from chat import conversations, openai_api

app = create_app()
app.include_router(conversations.router)

CACHE_CONTROL = Header(
    alias="Cache-Control",
    description="`no-cache` asks for a fresh answer rather than a cached one (the answer is still cached)",
)


@app.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion (set the SDK's base_url to this API)",
    tags=["openai"],
    responses={
        200: {
            "description": "A chat.completion object, or with stream=true a text/event-stream of "
            "chat.completion.chunk events ending in [DONE]",
        }
    },
)
def post_chat_completions(
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
    cache_control: Annotated[str | None, CACHE_CONTROL] = None,
) -> Response[Any]:
    # Parsed here rather than by the resolver: OpenAI clients expect a 400 naming the parameter.
    request = openai_api.parse_request(app.current_event.body)
    ctx = request_context(app, openai_api.FEATURE)
    fresh = "no-cache" in (cache_control or "").lower()

    def run() -> Reply:
        completion, headers = openai_api.complete(request, ctx, deps.completions(), fresh=fresh)
        return Reply(200, completion, headers)

    response = idempotent_response(app, key=idempotency_key, payload=request, run=run, store=deps.idempotency_store)
    if not request.stream or response.status_code != 200:
        return response
    # A stream is rendered from the stored completion, so a replayed key streams the same answer.
    include_usage = request.stream_options is not None and request.stream_options.include_usage
    completion = response.body if isinstance(response.body, dict) else json.loads(str(response.body))
    body = openai_api.sse_stream(completion, include_usage=include_usage)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    headers["cache-control"] = "no-cache"
    return Response(200, "text/event-stream; charset=utf-8", body, headers)


@app.get("/v1/models", summary="The models this gateway serves (OpenAI's list shape)", tags=["openai"])
def get_models() -> Response[Any]:
    return json_response(
        200, {"object": "list", "data": [openai_api.model_object(m) for m in openai_api.priced_models()]}
    )


@app.get("/v1/models/<model>", summary="One model (OpenAI's shape)", tags=["openai"])
def get_model(model: Annotated[str, Path(max_length=128)]) -> Response[Any]:
    return json_response(200, openai_api.model_object(openai_api.resolve_model(model)))


# An OpenAI client may send a whole 128k-token context (~0.5 MB of JSON, more for non-Latin text);
# the default 256 KiB would refuse it. API Gateway and Lambda allow 6 MB.
MAX_BODY_BYTES = 2 * 1024 * 1024

lambda_handler = entrypoint(app, max_body_bytes=MAX_BODY_BYTES)
