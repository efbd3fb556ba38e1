"""The request path every model-backed feature shares (DESIGN §5): cache, price, call, validate, bill.

Features (generate, jobs, later chat) build a `CompletionSpec` and call `Completions.complete`.
DynamoDB phases on the critical path: a hit is cache read + ledger write (2); a miss is cache
read + (ledger write ‖ cache write) (2) — budgets and rate limits add their own phase later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aigateway.api import Deadline
from aigateway.auth import Principal
from aigateway.cache import CachedAnswer, ResponseCache, request_digest
from aigateway.errors import GatewayError, InvalidModelOutput
from aigateway.governance.ledger import Ledger, LedgerEntry, Outcome
from aigateway.governance.pricing import cost_micros, price_for
from aigateway.llm.client import ProviderConfig, ProviderReply, chat_completion
from aigateway.observability import logger
from aigateway.store.dynamo import Dynamo

if TYPE_CHECKING:
    from openai import OpenAI

Clock = Callable[[], datetime]
# Validates raw model output; returns the parsed value or raises InvalidModelOutput.
OutputValidator = Callable[[str], Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CallContext:
    request_id: str
    principal: Principal
    feature: str
    deadline: Deadline
    template: str | None = None  # name@version


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
        llm: Callable[[], tuple[ProviderConfig, OpenAI]],
        clock: Clock = utc_now,
    ):
        self.db = db
        self.cache = cache
        self.ledger = ledger
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
        hit = self.cache.get(ctx.principal.tenant_id, digest, now_epoch=int(now.timestamp()))
        if hit is not None:
            return self._serve_hit(ctx, hit, spec, now, started)

        price = price_for(spec.model, now)  # before the call: an unpriced model costs nothing to refuse
        config, client = self.llm()
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
                ctx, spec.model, config.name, "failure", Usage(0, 0, 0), 0, None, started, now, error=exc.code
            )
            self._record(ctx, failed)
            raise
        usage = Usage(reply.input_tokens, reply.cached_tokens, reply.output_tokens)
        cost = cost_micros(
            price, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens, output_tokens=usage.output_tokens
        )
        provider = "simulated" if reply.simulated else config.name
        try:
            output = spec.validate(reply.content)
        except InvalidModelOutput as exc:
            # The provider answered (and charged us); the answer is unusable and is not cached.
            price_from = price.effective_from.isoformat()
            failed = self._entry(
                ctx, spec.model, provider, "failure", usage, cost, price_from, started, now, error=exc.code
            )
            self._record(ctx, failed)
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
        entry = self._entry(
            ctx, spec.model, provider, "success", usage, cost, price.effective_from.isoformat(), started, now
        )
        self.db.parallel(
            lambda: self.ledger.record(entry),
            lambda: self.cache.put(
                ctx.principal.tenant_id, digest, answer, now_epoch=int(now.timestamp()), ttl_seconds=spec.cache_ttl_s
            ),
        )
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
            extra={"finish_reason": reply.finish_reason},
        )

    def _serve_hit(
        self, ctx: CallContext, hit: CachedAnswer, spec: CompletionSpec, now: datetime, started: float
    ) -> CompletionResult:
        output = spec.validate(hit.content)
        usage = Usage(hit.input_tokens, hit.cached_tokens, hit.output_tokens)
        entry = self._entry(
            ctx, spec.model, hit.provider, "cache_hit", usage, 0, None, started, now, saved=hit.cost_micros
        )
        self._record(ctx, entry)
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
        )

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
        attempt: int = 0,
    ) -> LedgerEntry:
        return LedgerEntry(
            request_id=ctx.request_id,
            attempt=attempt,
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

    def _record(self, ctx: CallContext, entry: LedgerEntry) -> None:
        self.ledger.record(entry)
        self._log(ctx, entry, None)

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
