"""HTTP API Lambda authorizer (simple responses): API key → tenant, user, role.

A wrong key is *authorized* with `authenticated=false` in the context, and the handler's single
error mapper answers 401 with our JSON error body: an HTTP API authorizer that denies can only
produce API Gateway's bare `403 {"message":"Forbidden"}`, which is the wrong status and shape.
A missing header never reaches this function (the identity source makes API Gateway answer 401).
API Gateway caches the result per key for the configured TTL, so this runs once per key per TTL.
"""

from __future__ import annotations

from typing import Any

from aigateway import deps
from aigateway.auth import authorizer_context, bearer_token, resolve_key
from aigateway.observability import logger


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    token = bearer_token(headers.get("authorization"))
    principal = resolve_key(deps.repos().api_keys, token) if token else None
    if principal is None:
        logger().info("api key rejected", extra={"reason": "malformed" if token is None else "unknown"})
    return {"isAuthorized": True, "context": authorizer_context(principal)}
