"""DynamoDB calls and sequential phases for one miss and one hit, counted by the store itself."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aigateway.store.dynamo import track_request
from bench.latency import PATH, generate_body, marker
from infra.local.apigateway import HttpResponse, LocalApiGateway
from infra.local.runtime import LocalStack


@dataclass(frozen=True)
class RequestCount:
    kind: str
    cached: bool
    calls: int
    phases: int
    operations: list[str]
    handler_ms: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def measure(stack: LocalStack, gateway: LocalApiGateway, api_key: str) -> list[RequestCount]:
    """A fresh request (miss) then the same again (hit), invoked the way API Gateway invokes Lambda."""
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    body = generate_body(marker("db", 0))
    counts = []
    for kind in ("miss", "hit"):
        prepared = gateway.prepare("POST", PATH, headers, body)
        if isinstance(prepared, HttpResponse):
            raise RuntimeError(f"the gateway refused the request: {prepared.status} {prepared.body!r}")
        route, event = prepared
        started = time.perf_counter()
        with track_request() as stats:
            result = stack.invoke(route.function, event)
        elapsed = (time.perf_counter() - started) * 1000
        answer = json.loads(result["body"])
        counts.append(
            RequestCount(kind, bool(answer.get("cached")), stats.calls, stats.phases, list(stats.operations), elapsed)
        )
    return counts
