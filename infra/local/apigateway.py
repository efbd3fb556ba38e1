"""API Gateway (HTTP API, payload 2.0) played locally from the route table in infra/routes.py.

Behaves as the deployed API does where a client can tell: a missing Authorization header is
answered 401 `{"message":"Unauthorized"}` without calling the authorizer; authorizer results are
cached per identity for the configured TTL; unknown routes get 404 `{"message":"Not Found"}`;
bodies over 10 MB get 413; an integration slower than 30 s gets 503.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from infra.local.provision import ACCOUNT, REGION
from infra.local.runtime import FunctionError, LocalStack
from infra.routes import API_GATEWAY_TIMEOUT_S, ROUTES, Route

AUTHORIZER_CACHE_TTL_S = 300
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
API_ID = "local"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def _compile(route: Route) -> re.Pattern[str]:
    pattern = re.sub(r"\{(\w+)\+?\}", r"(?P<\1>[^/]+)", route.path)
    return re.compile(f"^{pattern}$")


class LocalApiGateway:
    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.routes = [(route, _compile(route)) for route in ROUTES]
        self._auth_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="integration")

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str = "127.0.0.1"
    ) -> HttpResponse:
        prepared = self.prepare(method, target, headers, body, source_ip)
        if isinstance(prepared, HttpResponse):
            return prepared
        route, event = prepared
        future = self._pool.submit(self.stack.invoke, route.function, event)
        try:
            result = future.result(timeout=API_GATEWAY_TIMEOUT_S)
        except FutureTimeout:
            return _message(503, "Service Unavailable")
        except FunctionError:
            return _message(500, "Internal Server Error")
        return _to_http(result)

    def prepare(
        self, method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str = "127.0.0.1"
    ) -> HttpResponse | tuple[Route, dict[str, Any]]:
        """Everything API Gateway does before the integration: route, size limit, authorizer."""
        url = urlsplit(target)
        headers = {k.lower(): v for k, v in headers.items()}
        match = self._match(method, url.path)
        if match is None:
            return _message(404, "Not Found")
        route, path_params = match
        if len(body) > MAX_PAYLOAD_BYTES:
            return _message(413, "Request Entity Too Large")
        event = self._event(route, method, url.path, url.query, headers, body, path_params, source_ip)
        if not route.public:
            identity = headers.get("authorization")
            if not identity:
                return _message(401, "Unauthorized")
            authorizer = self._authorize(identity, event)
            if not authorizer.get("isAuthorized"):
                return _message(403, "Forbidden")
            event["requestContext"]["authorizer"] = {"lambda": authorizer.get("context", {})}
        return route, event

    def expire_authorizations(self) -> None:
        """Forget every cached authorizer result, as the cache TTL passing would."""
        with self._lock:
            self._auth_cache.clear()

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route, pattern in self.routes:
            found = pattern.match(path)
            if found and route.method == method:
                return route, found.groupdict()
        return None

    def _authorize(self, identity: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            cached = self._auth_cache.get(identity)
            if cached and cached[0] > now:
                return cached[1]
        route = event["routeKey"].replace(" ", "")
        authorizer_event = {
            "version": "2.0",
            "type": "REQUEST",
            "routeArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/$default/{route}",
            "identitySource": [identity],
            "routeKey": event["routeKey"],
            "rawPath": event["rawPath"],
            "rawQueryString": event["rawQueryString"],
            "headers": event["headers"],
            "requestContext": {k: v for k, v in event["requestContext"].items() if k != "authorizer"},
        }
        try:
            result = self.stack.invoke("authorizer", authorizer_event)
        except FunctionError:
            return {"isAuthorized": False}
        with self._lock:
            self._auth_cache[identity] = (now + AUTHORIZER_CACHE_TTL_S, result)
        return dict(result)

    def _event(
        self,
        route: Route,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        path_params: dict[str, str],
        source_ip: str,
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        try:
            text, is_b64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_b64 = base64.b64encode(body).decode("ascii"), True
        query_params = dict(parse_qsl(query, keep_blank_values=True))
        return {
            "version": "2.0",
            "routeKey": f"{route.method} {route.path}",
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "queryStringParameters": query_params or None,
            "pathParameters": path_params or None,
            "requestContext": {
                "accountId": ACCOUNT,
                "apiId": API_ID,
                "domainName": headers.get("host", "127.0.0.1"),
                "domainPrefix": API_ID,
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": source_ip,
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": f"{route.method} {route.path}",
                "stage": "$default",
                "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
            },
            "body": text if body else None,
            "isBase64Encoded": is_b64,
        }


def _message(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps({"message": message}).encode())


def _to_http(result: Any) -> HttpResponse:
    if not isinstance(result, dict) or "statusCode" not in result:  # HTTP API infers a 200 JSON answer
        return HttpResponse(200, {"content-type": "application/json"}, json.dumps(result).encode())
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    for key, values in (result.get("multiValueHeaders") or {}).items():
        headers[key.lower()] = ", ".join(str(v) for v in values)
    return HttpResponse(int(result["statusCode"]), headers, raw)
