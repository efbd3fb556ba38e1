"""DynamoDB calls and sequential phases per request, counted by the store itself, and timed per phase.

Requests go to a tenant of their own (seeded here), invoked the way API Gateway invokes Lambda, in
this order:
1. first of period: the tenant's first request this month, a miss. Its budget reservation finds no
   counter, opens one and tries again (2 phases more than a steady miss);
2. steady state, REPEATS times: a miss (distinct variables, so never cached) then a hit (the same
   request again);
3. after the governance config cache expires (every CONFIG_TTL_S per execution environment): one
   miss and one hit that each read the config first (1 sequential phase more).
The governance config is read into this environment's cache before 1, so only 3 pays for it.

Phase times come from a bench-side wrapper around `Dynamo._call` / `Dynamo.parallel` (and the
provider call), active only while a request is measured. On moto these times are the emulator's
CPU, not network round trips: useful to see where the local milliseconds go, not AWS latency.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aigateway import completion, deps
from aigateway.governance.config import CONFIG_TTL_S
from aigateway.store.dynamo import Dynamo, request_stats, track_request
from bench import tenant
from bench.latency import PATH, generate_body, marker
from bench.stats import median
from infra.local.apigateway import HttpResponse, LocalApiGateway
from infra.local.runtime import LocalStack

TENANT = "bench-ddb"
API_KEY = "aig_bench_ddb_0123456789abcdef"
REPEATS = 5
# Issue target, sequential DynamoDB round-trip phases in steady state.
TARGET_PHASES = {"hit": 2, "miss": 3}
PROVIDER = "provider"


@dataclass
class Phase:
    """One step on the request's critical path: a DynamoDB phase (its calls) or the provider call."""

    operations: list[str]
    ms: float

    @property
    def label(self) -> str:
        if self.operations == [PROVIDER]:
            return "provider call"
        counts = Counter(self.operations)
        return " ‖ ".join(f"{n}×{op}" if n > 1 else op for op, n in sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {"operations": self.label, "ms": round(self.ms, 3)}


@dataclass
class RequestCount:
    key: str
    kind: str
    cached: bool
    calls: int
    phases: int
    operations: list[str]
    handler_ms: float  # median over repeats
    timeline: list[Phase]  # per-phase median over repeats
    repeats: int = 1
    stable: bool = True  # every repeat made the same calls in the same number of phases
    notes: list[str] = field(default_factory=list)

    @property
    def dynamo_ms(self) -> float:
        return sum(p.ms for p in self.timeline if p.operations != [PROVIDER])

    @property
    def provider_ms(self) -> float:
        return sum(p.ms for p in self.timeline if p.operations == [PROVIDER])

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "cached": self.cached,
            "calls": self.calls,
            "phases": self.phases,
            "operations": self.operations,
            "handler_ms": round(self.handler_ms, 3),
            "dynamodb_ms": round(self.dynamo_ms, 3),
            "provider_ms": round(self.provider_ms, 3),
            "timeline": [p.to_json() for p in self.timeline],
            "repeats": self.repeats,
            "stable": self.stable,
        }


@dataclass
class _Sample:
    cached: bool
    calls: int
    phases: int
    operations: list[str]
    handler_ms: float
    timeline: list[Phase]


@contextlib.contextmanager
def _phase_clock() -> Iterator[list[Phase]]:
    """Times each top-level DynamoDB phase and the provider call of the tracked request."""
    timeline: list[Phase] = []
    original_call, original_parallel = Dynamo._call, Dynamo.parallel
    original_chat = completion.chat_completion

    def _call(self: Dynamo, operation: str, **kwargs: Any) -> dict[str, Any]:
        if request_stats() is None or self._in_parallel.get():
            return original_call(self, operation, **kwargs)
        started = time.perf_counter()
        try:
            return original_call(self, operation, **kwargs)
        finally:
            timeline.append(Phase([operation], (time.perf_counter() - started) * 1000))

    def parallel(self: Dynamo, *calls: Callable[[], Any]) -> list[Any]:
        stats = request_stats()
        if stats is None or len(calls) < 2:
            return original_parallel(self, *calls)
        first = len(stats.operations)
        started = time.perf_counter()
        try:
            return original_parallel(self, *calls)
        finally:
            timeline.append(Phase(stats.operations[first:], (time.perf_counter() - started) * 1000))

    def chat(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_chat(*args, **kwargs)
        finally:
            timeline.append(Phase([PROVIDER], (time.perf_counter() - started) * 1000))

    Dynamo._call = _call  # type: ignore[method-assign]
    Dynamo.parallel = parallel  # type: ignore[method-assign]
    completion.chat_completion = chat
    try:
        yield timeline
    finally:
        Dynamo._call = original_call  # type: ignore[method-assign]
        Dynamo.parallel = original_parallel  # type: ignore[method-assign]
        completion.chat_completion = original_chat


class _Caller:
    def __init__(self, stack: LocalStack, gateway: LocalApiGateway, api_key: str):
        self.stack = stack
        self.gateway = gateway
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}

    def once(self, body: bytes) -> _Sample:
        prepared = self.gateway.prepare("POST", PATH, self.headers, body)  # the authorizer runs here, untracked
        if isinstance(prepared, HttpResponse):
            raise RuntimeError(f"the gateway refused the request: {prepared.status} {prepared.body!r}")
        route, event = prepared
        with _phase_clock() as timeline, track_request() as stats:
            started = time.perf_counter()
            result = self.stack.invoke(route.function, event)
            elapsed = (time.perf_counter() - started) * 1000
        if result.get("statusCode") != 200:
            raise RuntimeError(f"the generate handler answered {result.get('statusCode')}: {result.get('body')!r}")
        answer = json.loads(result["body"])
        return _Sample(
            bool(answer.get("cached")), stats.calls, stats.phases, list(stats.operations), elapsed, list(timeline)
        )


def _signature(sample: _Sample) -> tuple[int, int, tuple[str, ...]]:
    return sample.calls, sample.phases, tuple(p.label for p in sample.timeline)


def _summarize(key: str, kind: str, samples: list[_Sample]) -> RequestCount:
    last = samples[-1]
    stable = len({_signature(s) for s in samples}) == 1 and len({s.cached for s in samples}) == 1
    timeline = last.timeline
    if stable:
        timeline = [
            Phase(phase.operations, median([s.timeline[i].ms for s in samples])) for i, phase in enumerate(timeline)
        ]
    return RequestCount(
        key=key,
        kind=kind,
        cached=last.cached,
        calls=last.calls,
        phases=last.phases,
        operations=sorted(last.operations),
        handler_ms=median([s.handler_ms for s in samples]),
        timeline=timeline,
        repeats=len(samples),
        stable=stable,
    )


def measure(stack: LocalStack, gateway: LocalApiGateway) -> list[RequestCount]:
    tenant.seed(API_KEY, TENANT)
    configs = deps.governance_configs()
    configs.get(TENANT)  # this environment has read the config: steady-state requests do not
    call = _Caller(stack, gateway, API_KEY)

    first = [call.once(generate_body(marker("fp", 0)))]
    misses, hits = [], []
    for i in range(REPEATS):
        body = generate_body(marker("db", i))
        misses.append(call.once(body))
        hits.append(call.once(body))
    tenant.configure(TENANT)  # drops the cached config, as its TTL running out does
    config_miss = [call.once(generate_body(marker("cf", 0)))]
    tenant.configure(TENANT)
    config_hit = [call.once(generate_body(marker("cf", 0)))]

    counts = [
        _summarize("first_of_period", "first of period (miss)", first),
        _summarize("miss", "miss (steady state)", misses),
        _summarize("hit", "hit (steady state)", hits),
        _summarize("config_miss", f"miss, config re-read (every {CONFIG_TTL_S:.0f} s)", config_miss),
        _summarize("config_hit", f"hit, config re-read (every {CONFIG_TTL_S:.0f} s)", config_hit),
    ]
    expected = {"first_of_period": False, "miss": False, "hit": True, "config_miss": False, "config_hit": True}
    for count in counts:
        if count.cached is not expected[count.key]:
            count.notes.append(f"expected cached={expected[count.key]}, got {count.cached}")
    return counts


def targets(counts: list[RequestCount]) -> dict[str, Any]:
    """Steady-state phases against the issue's targets (hit ≤ 2, miss ≤ 3)."""
    by_key = {c.key: c for c in counts}
    out: dict[str, Any] = {}
    for key, limit in TARGET_PHASES.items():
        count = by_key.get(key)
        out[key] = {
            "phases": count.phases if count else None,
            "target_max": limit,
            "met": bool(count and count.phases <= limit),
        }
    return out
