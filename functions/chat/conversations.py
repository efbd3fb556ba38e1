"""Routes of /v1/conversations (included by chat.handler): parse → one ConversationService call → response.

No AWS or OpenAI code here: `aigateway.conversations` does the work.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from pydantic import BaseModel

from aigateway import deps
from aigateway.api import (
    JSON,
    idempotency_key_header,
    idempotent_response,
    ok_response,
    require_principal,
)
from aigateway.completion import request_context
from aigateway.conversations import (
    FEATURE,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    MessageIn,
    MessageOut,
    PinIn,
    TurnOut,
)
from aigateway.idempotency import Reply

router = APIGatewayHttpRouter()


class _Scoped(BaseModel):
    """What an Idempotency-Key is checked against: the body, and whose conversation it is for.

    The record is per tenant and route *template*, so without these the same key reused on
    another conversation (or by another user of the tenant) would replay that one's answer.
    """

    user_id: str
    conversation_id: str | None
    body: dict[str, Any]


# Malformed ids are answered 404 by the service (an id never issued does not exist), not 422.
CONVERSATION_ID = Path(max_length=64, description="The conversation's id (conv_…)")
MESSAGE_ID = Path(max_length=32, description="The message's id (msg_<n>)")
LIMIT = Query(ge=1, le=200, description="Items per page")
CURSOR = Query(description="The previous page's next_cursor")


@router.post(
    "/v1/conversations",
    summary="Start a conversation: system prompt (text or a template's), model profile, token budget",
    tags=["conversations"],
    responses={201: ok_response("The new conversation", ConversationOut, location=True)},
)
def post_conversation(
    request: Annotated[ConversationIn, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    principal = require_principal(router)

    def run() -> Reply:
        out = deps.conversation_service().create(principal, request)
        return Reply(201, out.model_dump(mode="json"), {"Location": f"/v1/conversations/{out.conversation_id}"})

    payload = _Scoped(user_id=principal.user_id, conversation_id=None, body=request.model_dump(mode="json"))
    return idempotent_response(router, key=idempotency_key, payload=payload, run=run, store=deps.idempotency_store)


@router.get("/v1/conversations", summary="The caller's conversations, newest first", tags=["conversations"])
def list_conversations(
    limit: Annotated[int, LIMIT] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> ConversationPage:
    return deps.conversation_service().page(require_principal(router), limit=limit, cursor=cursor)


@router.get(
    "/v1/conversations/<conversation_id>",
    summary="A conversation: settings, messages in order (paged), pins, the current summary, totals",
    tags=["conversations"],
)
def get_conversation(
    conversation_id: Annotated[str, CONVERSATION_ID],
    limit: Annotated[int, LIMIT] = 50,
    cursor: Annotated[str | None, CURSOR] = None,
) -> ConversationOut:
    return deps.conversation_service().get(require_principal(router), conversation_id, limit=limit, cursor=cursor)


@router.delete(
    "/v1/conversations/<conversation_id>",
    summary="Delete a conversation and everything stored with it (messages, summary)",
    tags=["conversations"],
    responses={204: {"description": "Deleted"}},
)
def delete_conversation(conversation_id: Annotated[str, CONVERSATION_ID]) -> Response[Any]:
    deps.conversation_service().delete(require_principal(router), conversation_id)
    return Response(status_code=204, content_type=JSON, body="")


@router.post(
    "/v1/conversations/<conversation_id>/messages",
    summary="Send a message; the reply comes back with the context report (tokens used and saved, summary)",
    tags=["conversations"],
    responses={200: ok_response("The reply, its usage and cost, and the context it was answered from", TurnOut)},
)
def post_message(
    conversation_id: Annotated[str, CONVERSATION_ID],
    request: Annotated[MessageIn, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    ctx = request_context(router, FEATURE)

    def run() -> Reply:
        out, headers = deps.conversation_service().post_message(ctx, conversation_id, request)
        return Reply(200, out.model_dump(mode="json"), headers)

    payload = _Scoped(
        user_id=ctx.principal.user_id, conversation_id=conversation_id, body=request.model_dump(mode="json")
    )
    return idempotent_response(router, key=idempotency_key, payload=payload, run=run, store=deps.idempotency_store)


@router.patch(
    "/v1/conversations/<conversation_id>/messages/<message_id>",
    summary="Pin or unpin a message (pinned messages are sent on every turn)",
    tags=["conversations"],
)
def patch_message(
    conversation_id: Annotated[str, CONVERSATION_ID],
    message_id: Annotated[str, MESSAGE_ID],
    request: Annotated[PinIn, Body()],
) -> MessageOut:
    return deps.conversation_service().pin(
        require_principal(router), conversation_id, message_id, pinned=request.pinned
    )
