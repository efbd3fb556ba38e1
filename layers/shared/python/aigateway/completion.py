"""The request path every model-backed feature shares (DESIGN §5): limit, cache, reserve, call, settle.

Features (generate, jobs, later chat) build a `CompletionSpec` and call `Completions.complete`.
Sequential DynamoDB phases on the critical path:
1. rate-limit buckets ‖ cache read ‖ budget counters snapshot (all in parallel);
2. a hit: settlement (ledger row + rollup, one transaction) — done, 2 phases;
   a miss: the budget reservation (one transaction);
3. a miss, after the provider: settlement (ledger row + reservation release + charge + rollup,
   one transaction) ‖ cache write — 3 phases.
A request whose charge crosses a budget alert threshold adds one conditional write to claim it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aigateway.api import Deadline
from aigateway.auth import Principal
from aigateway.cache import CachedAnswer, ResponseCache, request_digest
from aigateway.errors import GatewayError, InvalidModelOutput
from aigateway.governance.alerts import BudgetAlerts
from aigateway.governance.budgets import Budgets, Reservation, period_of, scopes_for
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.ledger import Ledger, LedgerEntry, Outcome
from aigateway.governance.limits import LimitStatus, RateLimiter, Subject
from aigateway.governance.pricing import Price, cost_micros, price_for, worst_case_micros
from aigateway.llm import tokens
from aigateway.llm.catalog import get_model
from aigateway.llm.client import ProviderConfig, ProviderReply, chat_completion
from aigateway.observability import logger
from aigateway.store.dynamo import Dynamo, Item

if TYPE_CHECKING:
    from openai import OpenAI

Clock = Callable[[], datetime]
# Validates raw model output; returns the parsed value or raises InvalidModelOutput.
OutputValidator = Callable[[str], Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _epoch_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


# The provider counts a few tokens we cannot see (message framing, the schema's rendering for
# structured output): the reservation assumes this much more input than we count.
INPUT_ESTIMATE_MARGIN = 1.10
INPUT_ESTIMATE_SLACK_TOKENS = 64


@dataclass(frozen=True)
class CallContext:
    request_id: str
    principal: Principal
    feature: str
    deadline: Deadline
    template: str | None = None  # name@version
    client_ip: str | None = None
    attempt: int = 0  # numbers the ledger row: <request_id>#<attempt>
    rate_limited: bool = True  # False where limits were applied upstream (asynchronous jobs)


@dataclass(frozen=True)
class CompletionSpec:
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_format: dict[str, Any] | None
    cache_ttl_s: int
    validate: OutputValidator
    timeout_ceiling_s: float = 25.0


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    cached_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class CompletionResult:
    output: Any
    model: str
    provider: str
    cached: bool
    fallback: bool
    usage: Usage
    cost_micros: int
    cost_saved_micros: int
    latency_ms: int
    limits: LimitStatus = field(default_factory=lambda: LimitStatus(()))
    extra: dict[str, Any] = field(default_factory=dict)


def json_output(model_cls: Any | None) -> OutputValidator:
    """Validator for structured output: JSON that the template's pydantic model accepts."""

    def validate(content: str) -> Any:
        if model_cls is None:
            return content
        try:
            return model_cls.model_validate_json(content).model_dump(mode="json")
        except ValueError as exc:  # pydantic.ValidationError subclasses ValueError
            raise InvalidModelOutput("the model's answer does not match the template's output schema") from exc

    return validate


class Completions:
    def __init__(
        self,
        *,
        db: Dynamo,
        cache: ResponseCache,
        ledger: Ledger,
        configs: GovernanceConfigs,
        limiter: RateLimiter,
        budgets: Budgets,
        alerts: BudgetAlerts,
        llm: Callable[[], tuple[ProviderConfig, OpenAI]],
        clock: Clock = utc_now,
    ):
        self.db = db
        self.cache = cache
        self.ledger = ledger
        self.configs = configs
        self.limiter = limiter
        self.budgets = budgets
        self.alerts = alerts
        self.llm = llm
        self.clock = clock

    def complete(self, ctx: CallContext, spec: CompletionSpec) -> CompletionResult:
        started = time.perf_counter()
        digest = request_digest(
            {
                "model": spec.model,
                "messages": spec.messages,
                "params": spec.params,
                "response_format": spec.response_format,
                "template": ctx.template,
            }
        )
        now = self.clock()
        price = price_for(spec.model, now)  # an unpriced model is refused before anything is spent
        p = ctx.principal
        config = self.configs.get(p.tenant_id)
        scopes = scopes_for(config, user_id=p.user_id, feature=ctx.feature)
        period = period_of(now)

        # Phase 1: rate limits, cache and the budget counters, side by side.
        takers = []
        if ctx.rate_limited:
            subject = Subject(p.tenant_id, p.key_id, p.user_id, ctx.client_ip, ctx.feature)
            takers = self.limiter.takers(subject, config.effective_rate_limits(ctx.feature), now_us=_epoch_us(now))
        results: list[Any] = self.db.parallel(
            lambda: self.cache.get(p.tenant_id, digest, now_epoch=int(now.timestamp())),
            lambda: self.budgets.snapshot(p.tenant_id, scopes, period),
            *takers,
        )
        hit: CachedAnswer | None = results[0]
        snapshot: dict[str, Item] = results[1]
        limits = self.limiter.conclude(results[2:])  # raises RateLimited (after giving tokens back)
        if hit is not None:
            return self._serve_hit(ctx, hit, spec, now, started, limits)

        # Phase 2: reserve the worst case in every applicable budget.
        reservation = self.budgets.reserve(
            f"{ctx.request_id}#{ctx.attempt:02d}", p.tenant_id, scopes, self._worst_case(spec, price), now
        )
        provider_cfg, client = self.llm()
        timeout = ctx.deadline.budget_for_call(spec.timeout_ceiling_s)
        try:
            reply = chat_completion(
                client,
                model=spec.model,
                messages=spec.messages,
                params=spec.params,
                response_format=spec.response_format,
                timeout_s=timeout,
            )
        except GatewayError as exc:
            # One ledger row per attempt, failures included; a failed call is not billed.
            failed = self._entry(
                ctx, spec.model, provider_cfg.name, "failure", Usage(0, 0, 0), 0, None, started, now, error=exc.code
            )
            self._settle(ctx, failed, reservation, snapshot)
            raise
        usage = Usage(reply.input_tokens, reply.cached_tokens, reply.output_tokens)
        cost = cost_micros(
            price, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens, output_tokens=usage.output_tokens
        )
        provider = "simulated" if reply.simulated else provider_cfg.name
        price_from = price.effective_from.isoformat()
        try:
            output = spec.validate(reply.content)
        except InvalidModelOutput as exc:
            # The provider answered (and charged us); the answer is unusable and is not cached.
            failed = self._entry(
                ctx, spec.model, provider, "failure", usage, cost, price_from, started, now, error=exc.code
            )
            self._settle(ctx, failed, reservation, snapshot)
            raise
        answer = CachedAnswer(
            content=reply.content,
            model=spec.model,
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            cost_micros=cost,
            provider=provider,
            created_at=now.isoformat(),
        )
        entry = self._entry(ctx, spec.model, provider, "success", usage, cost, price_from, started, now)
        # Phase 3: settlement ‖ cache write.
        self.db.parallel(
            lambda: self.ledger.settle(entry, reservation),
            lambda: self.cache.put(
                p.tenant_id, digest, answer, now_epoch=int(now.timestamp()), ttl_seconds=spec.cache_ttl_s
            ),
        )
        self._after_charge(entry, snapshot, now)
        self._log(ctx, entry, reply)
        return CompletionResult(
            output=output,
            model=spec.model,
            provider=provider,
            cached=False,
            fallback=False,
            usage=usage,
            cost_micros=cost,
            cost_saved_micros=0,
            latency_ms=entry.latency_ms,
            limits=limits,
            extra={"finish_reason": reply.finish_reason},
        )

    @staticmethod
    def _worst_case(spec: CompletionSpec, price: Price) -> int:
        """The most this call can cost: every input token uncached, every allowed output token used."""
        model = get_model(spec.model)
        counted = tokens.count_messages(spec.messages, spec.model)
        if spec.response_format is not None:
            counted += tokens.count_text(json.dumps(spec.response_format), spec.model)
        input_tokens = int(counted * INPUT_ESTIMATE_MARGIN) + INPUT_ESTIMATE_SLACK_TOKENS
        max_output = int(
            spec.params.get("max_tokens") or spec.params.get("max_completion_tokens") or model.max_output_tokens
        )
        return worst_case_micros(price, input_tokens=input_tokens, max_output_tokens=max_output)

    def _serve_hit(
        self,
        ctx: CallContext,
        hit: CachedAnswer,
        spec: CompletionSpec,
        now: datetime,
        started: float,
        limits: LimitStatus,
    ) -> CompletionResult:
        output = spec.validate(hit.content)
        usage = Usage(hit.input_tokens, hit.cached_tokens, hit.output_tokens)
        entry = self._entry(
            ctx, spec.model, hit.provider, "cache_hit", usage, 0, None, started, now, saved=hit.cost_micros
        )
        self._settle(ctx, entry, None, {})
        return CompletionResult(
            output=output,
            model=hit.model,
            provider=hit.provider,
            cached=True,
            fallback=False,
            usage=usage,
            cost_micros=0,
            cost_saved_micros=hit.cost_micros,
            latency_ms=entry.latency_ms,
            limits=limits,
        )

    def _settle(
        self, ctx: CallContext, entry: LedgerEntry, reservation: Reservation | None, snapshot: dict[str, Item]
    ) -> None:
        self.ledger.settle(entry, reservation)
        self._after_charge(entry, snapshot, entry.created_at)
        self._log(ctx, entry, None)

    def _after_charge(self, entry: LedgerEntry, snapshot: dict[str, Item], now: datetime) -> None:
        """Claims budget alerts this charge may have crossed (the sweeper catches any it misses)."""
        if not entry.cost_micros:
            return
        for item in snapshot.values():
            if self.alerts.due(item, added_micros=entry.cost_micros):
                self.alerts.send_due(item, now, added_micros=entry.cost_micros)

    def _entry(
        self,
        ctx: CallContext,
        model: str,
        provider: str,
        outcome: Outcome,
        usage: Usage,
        cost: int,
        price_from: str | None,
        started: float,
        now: datetime,
        *,
        saved: int = 0,
        error: str | None = None,
    ) -> LedgerEntry:
        return LedgerEntry(
            request_id=ctx.request_id,
            attempt=ctx.attempt,
            tenant_id=ctx.principal.tenant_id,
            user_id=ctx.principal.user_id,
            key_id=ctx.principal.key_id,
            feature=ctx.feature,
            template=ctx.template,
            model=model,
            provider=provider,
            outcome=outcome,
            input_tokens=usage.input_tokens,
            cached_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            cost_micros=cost,
            cost_saved_micros=saved,
            price_effective_from=price_from,
            latency_ms=int((time.perf_counter() - started) * 1000),
            error_code=error,
            created_at=now,
        )

    def _log(self, ctx: CallContext, entry: LedgerEntry, reply: ProviderReply | None) -> None:
        # Prompts never reach the log: only their hash (DESIGN §6).
        logger().info(
            "completion",
            extra={
                "feature": ctx.feature,
                "template": ctx.template,
                "model": entry.model,
                "provider": entry.provider,
                "outcome": entry.outcome,
                "input_tokens": entry.input_tokens,
                "output_tokens": entry.output_tokens,
                "cost_micros": entry.cost_micros,
                "latency_ms": entry.latency_ms,
                "provider_latency_ms": reply.latency_ms if reply else None,
            },
        )
