"""Shared helpers for the governance suites: configure a tenant, fire bursts, read back the books."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from aigateway import deps
from aigateway.api import Deadline
from aigateway.auth import Principal
from aigateway.completion import INPUT_ESTIMATE_MARGIN, INPUT_ESTIMATE_SLACK_TOKENS, CallContext, Completions
from aigateway.completion import CompletionSpec as Spec
from aigateway.generation import GenerateRequest, generate
from aigateway.governance.budgets import period_of
from aigateway.governance.config import BudgetSettings, Governance, RateLimitRule
from aigateway.governance.ledger import ROLLUP_COUNTERS, LedgerEntry
from aigateway.governance.pricing import cost_micros, price_for
from aigateway.llm import tokens
from aigateway.llm.catalog import get_model
from infra.local.apigateway import LocalApiGateway
from tests.conftest import Reply
from tests.integration.test_generate import SKILL
from tests.integration.test_provider_scripted import VALID_OUTPUT, completion

# Generous limits for the scopes a test is not about, so only the one under test can refuse.
LOOSE_LIMITS = (
    RateLimitRule(scope="key", limit=100_000, period_s=60),
    RateLimitRule(scope="ip", limit=100_000, period_s=60),
    RateLimitRule(scope="user", limit=100_000, period_s=60),
    RateLimitRule(scope="tenant", limit=100_000, period_s=60),
)


def now() -> datetime:
    return datetime.now(UTC)


def success_entry(
    request_id: str, *, tenant_id: str, cost: int, user_id: str = "u1", attempt: int = 0, at: datetime | None = None
) -> LedgerEntry:
    """A billed gpt-4o-mini success row, as a request would settle it."""
    return LedgerEntry(
        request_id=request_id,
        attempt=attempt,
        tenant_id=tenant_id,
        user_id=user_id,
        key_id="k1",
        feature="generate",
        template=None,
        model="gpt-4o-mini",
        provider="simulated",
        outcome="success",
        input_tokens=1000,
        cached_tokens=0,
        output_tokens=100,
        cost_micros=cost,
        price_effective_from="2024-07-18",
        latency_ms=10,
        created_at=at or now(),
    )


def period() -> str:
    return period_of(now())


def configure(
    tenant_id: str,
    *,
    budgets: BudgetSettings | None = None,
    rate_limits: Sequence[RateLimitRule] = LOOSE_LIMITS,
) -> Governance:
    """Stores the tenant's governance settings (what the admin endpoint does) and returns them."""
    config = Governance(budgets=budgets or BudgetSettings(), rate_limits=tuple(rate_limits))
    deps.governance_configs().put(tenant_id, config, updated_by="test", at=now().isoformat())
    return config


def skill(i: int) -> dict[str, Any]:
    """A distinct generate request (no cache hits) whose token count does not depend on `i`."""
    base = cast(dict[str, str], SKILL["variables"])
    variables = {**base, "answer": f"{base['answer']} Attempt {i % 1000:03d}."}
    return {**SKILL, "variables": variables}


@dataclass(frozen=True)
class WorstCase:
    """What `Completions._worst_case` reserves for a request, and the usage that costs exactly that."""

    micros: int
    input_tokens: int
    output_tokens: int


class _Captured(Exception):
    def __init__(self, spec: Spec):
        super().__init__("captured")
        self.spec = spec


class _CaptureSpec:
    def complete(self, ctx: CallContext, spec: Spec, **_: Any) -> Any:
        raise _Captured(spec)


def worst_case(body: dict[str, Any]) -> WorstCase:
    """The reservation one generate request makes, computed from the spec the handler builds."""
    principal = Principal(tenant_id="t", user_id="u", key_id="k", role="member")
    ctx = CallContext("req", principal, "generate", Deadline.from_context(None))
    try:
        generate(
            GenerateRequest.model_validate(body),
            ctx,
            templates=deps.templates(),
            completions=cast(Completions, _CaptureSpec()),
        )
    except _Captured as captured:
        spec = captured.spec
    else:  # pragma: no cover - generate always calls complete
        raise AssertionError("generate() did not build a completion spec")
    call = spec.primary
    price = price_for(call.model, now())
    reserved = Completions._worst_case(call, spec, price)
    counted = tokens.count_messages(spec.messages, call.model)
    if spec.response_format is not None:
        counted += tokens.count_text(json.dumps(spec.response_format), call.model)
    input_tokens = int(counted * INPUT_ESTIMATE_MARGIN) + INPUT_ESTIMATE_SLACK_TOKENS
    output_tokens = int(call.params.get("max_tokens") or get_model(call.model).max_output_tokens)
    billed = cost_micros(price, input_tokens=input_tokens, cached_tokens=0, output_tokens=output_tokens)
    assert billed == reserved, "the helper must mirror Completions._worst_case"
    return WorstCase(reserved, input_tokens, output_tokens)


def queue_worst_case_answers(simulator: Any, wc: WorstCase, count: int) -> None:
    """Scripts `count` valid answers that bill every token the reservation allowed for."""
    body = completion(json.dumps(VALID_OUTPUT), prompt=wc.input_tokens, completion_tokens=wc.output_tokens)
    for _ in range(count):
        simulator.queue_response(200, body)


def post(gateway: LocalApiGateway, api_key: str, body: dict[str, Any], *, source_ip: str = "127.0.0.1") -> Reply:
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    response = gateway.handle("POST", "/v1/generate", headers, json.dumps(body).encode(), source_ip)
    parsed = json.loads(response.body) if response.body else None
    return Reply(response.status, response.headers, parsed)


def burst(
    gateway: LocalApiGateway,
    calls: Iterable[tuple[str, dict[str, Any]]],
    *,
    workers: int = 32,
    source_ip: str = "127.0.0.1",
) -> list[Reply]:
    """Fires (api_key, body) requests side by side, as many clients would."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="client") as pool:
        futures = [pool.submit(post, gateway, key, body, source_ip=source_ip) for key, body in calls]
        return [f.result() for f in futures]


def counter(tenant_id: str, scope: str = "tenant") -> dict[str, Any]:
    items = deps.repos().budgets.get_many(tenant_id, [scope], period())
    assert items, f"no {scope} budget counter for {tenant_id} in {period()}"
    return items[0]


def ledger_rows(tenant_id: str) -> list[dict[str, Any]]:
    """Every ledger row of the tenant this month (paginated)."""
    rows: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    while True:
        page, start = deps.repos().ledger.month(tenant_id, period(), start_key=start)
        rows.extend(page)
        if start is None:
            return rows


def rollup_totals(tenant_id: str, *, user_id: str | None = None) -> dict[str, int]:
    """This month's rollup counters, summed over days, features, models (and users unless given)."""
    totals = dict.fromkeys(ROLLUP_COUNTERS, 0)
    for item in deps.repos().rollups.days(tenant_id, period()):
        if user_id is not None and item["user_id"] != user_id:
            continue
        for name in ROLLUP_COUNTERS:
            totals[name] += int(item.get(name, 0))
    return totals


def open_reservations() -> list[dict[str, Any]]:
    """Every reservation record still open (any release time)."""
    return deps.repos().reservations.expired(10**11)
