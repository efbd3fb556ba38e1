"""Routes of /v1/conversations (included by chat.handler). Filled in by the conversations work."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

router = APIGatewayHttpRouter()
