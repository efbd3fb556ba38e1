"""HTTP plumbing shared by every API function: one place that maps errors to responses.

Handlers build their resolver with `create_app()` and export `lambda_handler = entrypoint(app)`.
Before routing, the entrypoint assigns the request id, enforces the body-size limit and
authenticates (so an unauthenticated caller learns nothing about validation); afterwards every
response carries `x-request-id`. Domain errors map to `{error: {code, message, field?}, request_id}`;
anything unexpected is logged with its trace and answered as a bare 500 without one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Header
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader

from aigateway import idempotency
from aigateway.auth import Principal, principal_from_event
from aigateway.errors import GatewayError, InvalidJson, NotFound, PayloadTooLarge, ValidationFailed
from aigateway.ids import new_id
from aigateway.observability import logger
from aigateway.settings import get_settings
from aigateway.store.dynamo import request_stats, track_request

JSON = "application/json"
# Leave this much of the Lambda's remaining time for writing the ledger and answering.
DEADLINE_RESERVE_S = 1.5


@dataclass(frozen=True)
class Deadline:
    """When the caller stops waiting, on the monotonic clock."""

    at: float

    @classmethod
    def from_context(cls, context: Any, *, cap_s: float = 29.0) -> Deadline:
        remaining_ms = getattr(context, "get_remaining_time_in_millis", lambda: cap_s * 1000)()
        return cls(time.monotonic() + min(cap_s, remaining_ms / 1000))

    def remaining_s(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def budget_for_call(self, ceiling_s: float) -> float:
        """A timeout for one outbound call: never past the deadline, minus a reserve to finish up."""
        return max(0.05, min(ceiling_s, self.remaining_s() - DEADLINE_RESERVE_S))


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    principal: Principal | None
    deadline: Deadline
    client_ip: str | None = None


def idempotency_key_header() -> Any:
    """The `Idempotency-Key` request header of a POST route (validated by `aigateway.idempotency`)."""
    return Header(
        alias="Idempotency-Key",
        description="Makes a retry safe: the same key (per tenant and route, for 24 h) answers with the "
        "first request's response, marked `Idempotent-Replayed: true`, without running or billing it again. "
        "1-255 visible ASCII characters.",
    )


def ok_response(description: str, model: Any, *, location: bool = False) -> OpenAPIResponse:
    """The documented success response of a POST route that honours `Idempotency-Key`.

    Such a route returns `Response[Any]`: its body may be a stored (replayed) JSON document, so it
    is documented here rather than re-validated against the model on the way out.
    """
    headers: dict[str, OpenAPIResponseHeader] = {
        "Idempotent-Replayed": {
            "description": "`true` when this is the stored response to an earlier request with the same key",
            "schema": {"type": "string"},
        },
        "X-RateLimit-Limit": {"description": "The tightest applicable limit", "schema": {"type": "integer"}},
        "X-RateLimit-Remaining": {"description": "Requests left under it", "schema": {"type": "integer"}},
    }
    if location:
        headers["Location"] = {"description": "The created resource", "schema": {"type": "string"}}
    return {"description": description, "content": {JSON: {"model": model}}, "headers": headers}


def idempotent_response(
    app: BaseRouter,
    *,
    key: str | None,
    payload: Any,
    run: Callable[[], idempotency.Reply],
    store: Callable[[], Any],
) -> Response:
    """A POST route's answer, run at most once per (tenant, route, Idempotency-Key).

    `payload` is the validated request model (hashed to catch a key reused with another body);
    `store` the persistence factory (`deps.idempotency_store`), built only when a key is sent.
    """
    reply = idempotency.once(
        store,
        tenant_id=require_principal(app).tenant_id,
        route=str(app.current_event.raw_event.get("routeKey")),
        key=key,
        payload=payload.model_dump(mode="json"),
        run=run,
        lambda_context=app.lambda_context,
    )
    return Response(reply.status, JSON, reply.body, reply.headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=JSON, body=json.dumps(body), headers=headers or {})


def error_response(error: GatewayError, request_id: str) -> Response:
    return json_response(error.status, error.body(request_id), error.headers)


def create_app() -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)

    @app.exception_handler(GatewayError)
    def _domain(exc: GatewayError) -> Response:
        level = logger().error if exc.status >= 500 else logger().info
        level("request failed", extra={"error_code": exc.code, "status": exc.status})
        return error_response(exc, request_info(app).request_id)

    @app.exception_handler(RequestValidationError)
    def _invalid(exc: RequestValidationError) -> Response:
        return error_response(_validation_error(exc), request_info(app).request_id)

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug, not a request fault: full trace to the log, none to the client.
        logger().exception("unhandled error")
        return error_response(
            GatewayError("internal error; quote the request_id to support"), request_info(app).request_id
        )

    @app.not_found
    def _not_found(_: Exception) -> Response:
        return error_response(NotFound("no such route"), request_info(app).request_id)

    return app


def _validation_error(exc: RequestValidationError) -> GatewayError:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return InvalidJson("request body is not valid JSON", field="body")
    # Powertools locates an error as (<where>, <field path>…), where is body, path, query or header;
    # a route's single body model is not embedded, so the path after "body" is the client's own.
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
        loc = loc[1:]
    return validation_failed(first, loc)


def validation_failed(error: Mapping[str, Any], loc: Sequence[str]) -> ValidationFailed:
    """A pydantic error (the first of a failed validation) as our 422, the field named by `loc`."""
    field = ".".join(loc) or "body"
    if error.get("type") == "missing":
        message = f"field {field!r} is required"
    elif error.get("type") == "extra_forbidden":
        message = f"field {field!r} is not allowed"
    else:
        message = f"field {field!r}: {error.get('msg', 'invalid value')}"
    return ValidationFailed(message, field=field)


def request_info(app: BaseRouter) -> RequestInfo:
    info = app.context.get("request")
    if not isinstance(info, RequestInfo):  # only before routing, e.g. a 404 with no context yet
        return RequestInfo(request_id=new_id(), principal=None, deadline=Deadline(time.monotonic() + 29))
    return info


def require_principal(app: BaseRouter) -> Principal:
    principal = request_info(app).principal
    if principal is None:  # pragma: no cover - entrypoint authenticates non-public routes first
        raise GatewayError("route reached without authentication")
    return principal


def entrypoint(
    app: APIGatewayHttpResolver, *, public_routes: frozenset[str] = frozenset(), max_body_bytes: int | None = None
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The Lambda handler for an HTTP API function; `max_body_bytes` overrides MAX_BODY_BYTES for
    a function whose requests are legitimately larger (bulk upserts)."""

    @logger().inject_lambda_context(clear_state=True)
    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        request_id = new_id()
        logger().append_keys(request_id=request_id, route=event.get("routeKey"))
        try:
            principal = None
            if event.get("routeKey") not in public_routes:
                principal = principal_from_event(event)
                logger().append_keys(tenant_id=principal.tenant_id, key_id=principal.key_id)
            body = event.get("body") or ""
            limit = max_body_bytes or get_settings().max_body_bytes
            if len(body.encode("utf-8") if isinstance(body, str) else body) > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes", field="body")
        except GatewayError as exc:
            return {
                "statusCode": exc.status,
                "headers": {"content-type": JSON, "x-request-id": request_id, **exc.headers},
                "body": json.dumps(exc.body(request_id)),
                "isBase64Encoded": False,
            }
        client_ip = ((event.get("requestContext") or {}).get("http") or {}).get("sourceIp")
        app.append_context(request=RequestInfo(request_id, principal, Deadline.from_context(context), client_ip))
        started = time.perf_counter()
        outer = request_stats()
        with nullcontext(outer) if outer is not None else track_request() as stats:
            result = app.resolve(event, context)
        result.setdefault("headers", {})["x-request-id"] = request_id
        logger().info(
            "request completed",
            extra={
                "status": result.get("statusCode"),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "ddb_calls": stats.calls,
                "ddb_phases": stats.phases,
            },
        )
        return result

    return lambda_handler
