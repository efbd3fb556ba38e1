"""The request path every model-backed feature shares (DESIGN §5): limit, cache, reserve, call, settle.

Features (generate, jobs, later chat) build a `CompletionSpec` and call `Completions.complete`.
Sequential DynamoDB phases on the critical path:
1. rate-limit buckets ‖ cache read ‖ budget counters snapshot ‖ circuit breakers (when the
   in-memory copy is older than 2 s), all in parallel;
2. a hit: settlement (ledger row + rollup, one transaction) — done, 2 phases;
   a miss: the budget reservation (one transaction);
3. a miss, after the provider: settlement (ledger row + reservation release + charge + rollup,
   one transaction) ‖ cache write — 3 phases.
A request whose charge crosses a budget alert threshold adds one conditional write to claim it.

When the model fails, the fallback chain runs (aigateway/resilience): each failure is classified
(policy.py) and either retried on the same model after a jittered backoff that fits the deadline,
repaired once (schema-invalid output), or the next model in `spec.calls` is tried; a model whose
circuit is open is skipped without a call. When no model answers, a stale cache entry
(stale-if-error) and then the template's static answer serve, labelled. Every attempt is its own
ledger row `<request_id>#<attempt>` with its own reservation, so failures and fallbacks are
billed exactly as they happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aigateway.api import DEADLINE_RESERVE_S, Deadline, request_info, require_principal
from aigateway.auth import Principal
from aigateway.cache import CachedAnswer, ResponseCache, request_digest
from aigateway.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    GatewayError,
    InvalidModelOutput,
    NoFallbackModel,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
)
from aigateway.governance.alerts import BudgetAlerts
from aigateway.governance.budgets import Budgets, BudgetScope, Reservation, period_of, scopes_for
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.ledger import Ledger, LedgerEntry, Outcome, attempt_id
from aigateway.governance.limits import LimitStatus, RateLimiter, Subject
from aigateway.governance.pricing import Price, cost_micros, price_for, worst_case_micros
from aigateway.llm import tokens
from aigateway.llm.catalog import get_model
from aigateway.llm.client import DEFAULT_PROVIDER, ProviderConfig, ProviderReply, chat_completion
from aigateway.observability import count, logger
from aigateway.resilience.backoff import MIN_ATTEMPT_S, Backoff, attempt_timeout
from aigateway.resilience.breaker import Admission, CircuitBreaker, circuit_id
from aigateway.resilience.policy import policy_for
from aigateway.store.dynamo import Dynamo, Item

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
    from openai import OpenAI

Clock = Callable[[], datetime]
# Validates raw model output; returns the parsed value or raises InvalidModelOutput.
OutputValidator = Callable[[str], Any]
# Which part of the chain one call runs: all of it (a synchronous request), or one stage of the
# jobs workflow, where Step Functions does the retrying and moves from stage to stage.
Stage = Literal["all", "primary", "fallback", "degraded"]
ServedBy = Literal["primary", "fallback_model", "cache", "stale_cache", "static_answer"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _epoch_us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


# The provider counts a few tokens we cannot see (message framing, the schema's rendering for
# structured output): the reservation assumes this much more input than we count.
INPUT_ESTIMATE_MARGIN = 1.10
INPUT_ESTIMATE_SLACK_TOKENS = 64
# Provider attempts one call may make; ledger attempt numbers of one invocation stay below it.
MAX_ATTEMPTS = 10
# In-process tries of one model for a transient failure before the chain moves on.
TRIES_PER_MODEL = 2
STATIC_MODEL = "static-answer"  # the ledger's model name for a template's static answer
REPAIR_INSTRUCTION = (
    "Your previous reply did not match the required JSON schema. Problems: {problems}\n"
    "Reply again with only the corrected JSON object, matching the schema exactly."
)


@dataclass(frozen=True)
class CallContext:
    request_id: str
    principal: Principal
    feature: str
    deadline: Deadline
    template: str | None = None  # name@version
    client_ip: str | None = None
    attempt: int = 0  # the first ledger attempt number of this call: rows are <request_id>#<attempt>
    rate_limited: bool = True  # False where limits were applied upstream (asynchronous jobs)
    # The prompt experiment's label for this request (aigateway/experiments.py) and the locale of
    # the template text served; both go into every ledger row of the request.
    variant: str | None = None
    locale: str | None = None


def request_context(app: BaseRouter, feature: str) -> CallContext:
    """The call context of the HTTP request `app` is serving, for `feature`'s rate limits and ledger rows."""
    info = request_info(app)
    return CallContext(info.request_id, require_principal(app), feature, info.deadline, client_ip=info.client_ip)


@dataclass(frozen=True)
class ModelCall:
    """One hop of the chain: a model, the parameters it accepts, and which provider serves it."""

    model: str
    params: dict[str, Any]
    provider: str = DEFAULT_PROVIDER  # a FALLBACK_PROVIDERS name, or the gateway's own provider


@dataclass(frozen=True)
class CompletionSpec:
    calls: tuple[ModelCall, ...]  # the primary model first, then its fallbacks in order
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None
    cache_ttl_s: int
    validate: OutputValidator
    static_answer: str | None = None  # the template's labelled last resort, as model output text
    static_model: str = STATIC_MODEL  # the ledger's model name for it (lead scoring: the rules scorer)
    stale_if_error_s: int = 0  # how long past its TTL a cache entry may still serve, labelled
    read_cache: bool = True  # False: the caller asked for a fresh answer (it is still cached for others)

    @property
    def primary(self) -> ModelCall:
        return self.calls[0]


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
    model: str | None  # None: the template's static answer, which no model produced
    provider: str
    cached: bool
    fallback: bool
    usage: Usage
    cost_micros: int
    cost_saved_micros: int
    latency_ms: int
    served_by: ServedBy = "primary"
    degraded_reason: str | None = None  # the error code that moved the request off its primary path
    attempts: int = 1  # provider attempts made (0 for a cache hit or a degraded answer with no call)
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
            raise InvalidModelOutput(
                "the model's answer does not match the template's output schema",
                content=content,
                problems=_problems(exc),
            ) from exc

    return validate


def _problems(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)[:500]
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or '(root)'}: {e.get('msg')}" for e in errors()[:8]]
    return "; ".join(parts)


@dataclass
class _Run:
    """One `complete` call's state as it moves along the chain."""

    ctx: CallContext
    spec: CompletionSpec
    scopes: list[BudgetScope]
    snapshot: dict[str, Item]
    started: float
    now: datetime
    limits: LimitStatus
    next_attempt: int
    upstream_reason: str | None = None  # why an earlier jobs stage gave up (stages after the first)
    attempts: int = 0
    first_failure: GatewayError | None = None
    last_failure: GatewayError | None = None

    def take_attempt(self) -> int:
        number = self.next_attempt
        self.next_attempt += 1
        self.attempts += 1
        return number

    def failed(self, error: GatewayError) -> None:
        self.first_failure = self.first_failure or error
        self.last_failure = error

    def row(
        self,
        attempt: int,
        model: str,
        provider: str,
        outcome: Outcome,
        usage: Usage,
        cost: int,
        price_from: str | None,
        *,
        error: str | None = None,
    ) -> LedgerEntry:
        return ledger_entry(
            self.ctx, attempt, self.started, self.now, model, provider, outcome, usage, cost, price_from, error=error
        )


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
        breaker: CircuitBreaker,
        llm: Callable[[str], tuple[ProviderConfig, OpenAI]],
        clock: Clock = utc_now,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempt_timeout_s: float = 20.0,
    ):
        self.db = db
        self.cache = cache
        self.ledger = ledger
        self.configs = configs
        self.limiter = limiter
        self.budgets = budgets
        self.alerts = alerts
        self.breaker = breaker
        self.llm = llm
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.attempt_timeout_s = attempt_timeout_s  # one provider call's ceiling (OPENAI_TIMEOUT_S)

    def complete(
        self, ctx: CallContext, spec: CompletionSpec, *, stage: Stage = "all", degraded_reason: str | None = None
    ) -> CompletionResult:
        """The answer, from the cache or the chain; raises the error that ended the chain.

        `degraded_reason` (jobs stages after the first) is why the earlier stages failed.
        """
        started = time.perf_counter()
        digest = request_digest(
            {
                "model": spec.primary.model,
                "messages": spec.messages,
                "params": spec.primary.params,
                "response_format": spec.response_format,
                "template": ctx.template,
            }
        )
        now = self.clock()
        price_for(spec.primary.model, now)  # an unpriced model is refused before anything is spent
        p = ctx.principal
        config = self.configs.get(p.tenant_id)
        scopes = scopes_for(config, user_id=p.user_id, feature=ctx.feature)
        period = period_of(now)

        # Phase 1: rate limits, cache, budget counters and (when stale) the circuit breakers.
        takers = []
        if ctx.rate_limited:
            subject = Subject(p.tenant_id, p.key_id, p.user_id, ctx.client_ip, ctx.feature)
            takers = self.limiter.takers(subject, config.effective_rate_limits(ctx.feature), now_us=_epoch_us(now))
        results: list[Any] = self.db.parallel(
            lambda: self.cache.get(p.tenant_id, digest, now_epoch=int(now.timestamp())) if spec.read_cache else None,
            lambda: self.budgets.snapshot(p.tenant_id, scopes, period),
            self.breaker.refresh,
            *takers,
        )
        found: CachedAnswer | None = results[0]
        snapshot: dict[str, Item] = results[1]
        limits = self.limiter.conclude(results[3:])  # raises RateLimited (after giving tokens back)
        if found is not None and found.fresh:
            return self._serve_hit(ctx, found, spec, now, started, limits)

        run = _Run(ctx, spec, scopes, snapshot, started, now, limits, ctx.attempt, degraded_reason)
        calls = {"all": spec.calls, "primary": spec.calls[:1], "fallback": spec.calls[1:], "degraded": ()}[stage]
        result = self._through_models(
            run, calls, digest, in_process_retries=stage == "all", fallback=stage == "fallback"
        )
        if result is not None:
            return result
        error = run.last_failure
        if stage in ("primary", "fallback"):
            # Step Functions retries or moves to the next stage, matching on the error's class.
            raise error or NoFallbackModel("the template's chain has no fallback model")
        if error is not None and not policy_for(error).degrade:
            raise error
        reason = degraded_reason or (run.first_failure.code if run.first_failure else "no_model_available")
        degraded = self._serve_degraded(run, found, reason)
        if degraded is not None:
            return degraded
        raise error or ProviderError("no model answered and there is no stale or static answer")

    def _through_models(
        self, run: _Run, calls: tuple[ModelCall, ...], digest: str, *, in_process_retries: bool, fallback: bool
    ) -> CompletionResult | None:
        """Tries each model in turn as the failure policy directs; None when none answered."""
        ctx, spec = run.ctx, run.spec
        for index, call in enumerate(calls):
            later = calls[index + 1 :]
            previous = run.last_failure
            if (
                previous is not None
                and policy_for(previous).action == "larger"
                and get_model(call.model).context_window <= self._window_of_failed(calls, index)
            ):
                continue  # only a larger window can take this input
            messages, trimmed = self._fit(call, spec, later)
            if messages is None:
                run.failed(
                    ContextLengthExceeded("the input is longer than the model's context window", field="variables")
                )
                continue
            tries, repaired = 0, False
            while run.attempts < MAX_ATTEMPTS:
                if ctx.deadline.remaining_s() - DEADLINE_RESERVE_S < MIN_ATTEMPT_S:
                    run.failed(run.last_failure or ProviderTimeout("the deadline left no time to call the model"))
                    return None
                try:
                    result = self._attempt(
                        run, call, messages, digest, hops_left=len(later), fallback=fallback or index > 0
                    )
                except GatewayError as exc:
                    run.failed(exc)
                    policy = policy_for(exc)
                    if policy.action == "stop":
                        raise
                    if policy.action == "retry" and in_process_retries and tries + 1 < TRIES_PER_MODEL:
                        wait = self.backoff.delay(tries, retry_after_s=getattr(exc, "retry_after_s", None))
                        if self.backoff.fits(wait, ctx.deadline):
                            tries += 1
                            self.sleep(wait)
                            continue
                    if policy.action == "repair" and not repaired and isinstance(exc, InvalidModelOutput):
                        repaired = True
                        messages = _repair_messages(messages, exc)
                        continue
                    break  # on to the next model
                if trimmed:
                    result = _labelled(result, degraded_reason="input_trimmed")
                if result.fallback:
                    reason = run.first_failure.code if run.first_failure else (run.upstream_reason or "fallback")
                    result = _labelled(result, degraded_reason=reason)
                    self._mark_fallback(ctx, result)
                return result
        return None

    @staticmethod
    def _window_of_failed(calls: tuple[ModelCall, ...], index: int) -> int:
        """The largest context window among the models already tried (the input did not fit it)."""
        return max(get_model(c.model).context_window for c in calls[:index]) if index else 0

    def _fit(
        self, call: ModelCall, spec: CompletionSpec, later: tuple[ModelCall, ...]
    ) -> tuple[list[dict[str, Any]] | None, bool]:
        """The messages for `call`, trimmed if no later model could take them whole.

        (None, False): skip this model, a later one has the window for the input as it is.
        """
        overflow = _overflow(call, spec.messages, spec.response_format)
        if overflow <= 0:
            return spec.messages, False
        if any(_overflow(c, spec.messages, spec.response_format) <= 0 for c in later):
            return None, False
        return _trim_longest(spec.messages, call.model, overflow), True

    def _attempt(
        self, run: _Run, call: ModelCall, messages: list[dict[str, Any]], digest: str, *, hops_left: int, fallback: bool
    ) -> CompletionResult:
        """One provider attempt: breaker → reserve → call → validate → settle (‖ cache write).

        Raises the attempt's domain error after settling its ledger row.
        """
        ctx, spec, now = run.ctx, run.spec, run.now
        p = ctx.principal
        price = price_for(call.model, now)
        try:
            provider_cfg, client = self.llm(call.provider)
        except GatewayError as exc:  # a hop naming a provider this deployment does not declare
            logger().error("fallback provider unavailable", extra={"provider": call.provider, "error": exc.message})
            raise ProviderRejected(f"provider {call.provider!r} is not configured") from exc
        circuit = circuit_id(provider_cfg.name, call.model)
        now_ms = int(now.timestamp() * 1000)
        admission, probe = self.breaker.admit(circuit, now_ms)  # raises CircuitOpen: no call, no row
        attempt = run.take_attempt()
        try:
            reservation = self.budgets.reserve(
                attempt_id(ctx.request_id, attempt), p.tenant_id, run.scopes, self._worst_case(call, spec, price), now
            )
        except GatewayError:
            self._verdict(circuit, admission, probe, None)
            raise
        timeout = attempt_timeout(ctx.deadline, self.attempt_timeout_s, hops_left=hops_left)
        try:
            reply = chat_completion(
                client,
                model=call.model,
                messages=messages,
                params=call.params,
                response_format=spec.response_format,
                timeout_s=timeout,
            )
        except GatewayError as exc:
            self._verdict(circuit, admission, probe, exc)
            # One ledger row per attempt, failures included; a failed call is not billed.
            failed = run.row(attempt, call.model, provider_cfg.name, "failure", Usage(0, 0, 0), 0, None, error=exc.code)
            self._settle(ctx, failed, reservation, run.snapshot)
            raise
        self._verdict(circuit, admission, probe, None)
        usage = Usage(reply.input_tokens, reply.cached_tokens, reply.output_tokens)
        cost = cost_micros(
            price, input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens, output_tokens=usage.output_tokens
        )
        provider = "simulated" if reply.simulated else provider_cfg.name
        price_from = price.effective_from.isoformat()
        try:
            if reply.finish_reason == "content_filter":
                raise ContentFiltered("the model provider's content filter withheld the answer")
            output = _output(spec, reply.content, reply.tool_calls)
        except (InvalidModelOutput, ContentFiltered) as exc:
            # The provider answered (and charged us); the answer is unusable and is not cached.
            failed = run.row(attempt, call.model, provider, "failure", usage, cost, price_from, error=exc.code)
            self._settle(ctx, failed, reservation, run.snapshot)
            raise
        entry = run.row(attempt, call.model, provider, "success", usage, cost, price_from)
        settle: list[Callable[[], object]] = [lambda: self.ledger.settle(entry, reservation)]
        if not fallback:  # a fallback model's answer is not pinned in the cache for the TTL
            answer = CachedAnswer(
                content=reply.content,
                model=call.model,
                input_tokens=usage.input_tokens,
                cached_tokens=usage.cached_tokens,
                output_tokens=usage.output_tokens,
                cost_micros=cost,
                provider=provider,
                created_at=now.isoformat(),
                finish_reason=reply.finish_reason,
                tool_calls=reply.tool_calls,
            )
            settle.append(
                lambda: self.cache.put(
                    p.tenant_id,
                    digest,
                    answer,
                    now_epoch=int(now.timestamp()),
                    ttl_seconds=spec.cache_ttl_s,
                    stale_seconds=spec.stale_if_error_s,
                )
            )
        # Phase 3: settlement ‖ cache write.
        self.db.parallel(*settle)
        self._after_charge(entry, run.snapshot, now)
        self._log(ctx, entry, reply)
        return CompletionResult(
            output=output,
            model=call.model,
            provider=provider,
            cached=False,
            fallback=fallback,
            usage=usage,
            cost_micros=cost,
            cost_saved_micros=0,
            latency_ms=entry.latency_ms,
            served_by="fallback_model" if fallback else "primary",
            attempts=run.attempts,
            limits=run.limits,
            extra=_answer_extra(reply.finish_reason, reply.tool_calls),
        )

    def _verdict(self, circuit: str, admission: Admission, probe: str | None, error: GatewayError | None) -> None:
        """Tells the breaker how the call went: only failures of the model count against it."""
        now_ms = int(self.clock().timestamp() * 1000)
        if error is not None and policy_for(error).breaker:
            self.breaker.failed(circuit, admission, probe, now_ms)
        else:
            self.breaker.succeeded(circuit, admission, probe, now_ms)

    def _serve_degraded(self, run: _Run, stale: CachedAnswer | None, reason: str) -> CompletionResult | None:
        """No model answered: a stale cache entry, else the template's static answer, labelled."""
        spec = run.spec
        if stale is not None:
            output, model, provider, served_by = (
                _output(spec, stale.content, stale.tool_calls),
                stale.model,
                stale.provider,
                "stale_cache",
            )
        elif spec.static_answer is not None:
            output, model, provider, served_by = spec.validate(spec.static_answer), None, "gateway", "static_answer"
        else:
            return None
        # The degraded answer's own row follows the attempts' rows; it is not a provider attempt.
        attempt = run.next_attempt
        run.next_attempt += 1
        entry = run.row(
            attempt, model or spec.static_model, provider, "fallback", Usage(0, 0, 0), 0, None, error=reason
        )
        self._settle(run.ctx, entry, None, {})
        result = CompletionResult(
            output=output,
            model=model,
            provider=provider,
            cached=served_by == "stale_cache",
            fallback=True,
            usage=Usage(0, 0, 0),
            cost_micros=0,
            cost_saved_micros=0,
            latency_ms=entry.latency_ms,
            served_by=served_by,  # type: ignore[arg-type]
            degraded_reason=reason,
            attempts=run.attempts,
            limits=run.limits,
            extra=_answer_extra(stale.finish_reason, stale.tool_calls) if stale is not None else {},
        )
        self._mark_fallback(run.ctx, result)
        return result

    @staticmethod
    def _mark_fallback(ctx: CallContext, result: CompletionResult) -> None:
        """A log line and a metric for every answer that did not come from the primary path."""
        logger().warning(
            "fallback served",
            extra={
                "served_by": result.served_by,
                "model": result.model,
                "degraded_reason": result.degraded_reason,
                "attempts": result.attempts,
                "feature": ctx.feature,
                "template": ctx.template,
            },
        )
        count("Fallback", served_by=result.served_by)

    @staticmethod
    def _worst_case(call: ModelCall, spec: CompletionSpec, price: Price) -> int:
        """The most this call can cost: every input token uncached, every allowed output token used."""
        input_tokens = int(_input_tokens(call, spec.messages, spec.response_format) * INPUT_ESTIMATE_MARGIN)
        return worst_case_micros(
            price, input_tokens=input_tokens + INPUT_ESTIMATE_SLACK_TOKENS, max_output_tokens=_max_output(call)
        )

    def _serve_hit(
        self,
        ctx: CallContext,
        hit: CachedAnswer,
        spec: CompletionSpec,
        now: datetime,
        started: float,
        limits: LimitStatus,
    ) -> CompletionResult:
        output = _output(spec, hit.content, hit.tool_calls)
        usage = Usage(hit.input_tokens, hit.cached_tokens, hit.output_tokens)
        entry = ledger_entry(
            ctx, ctx.attempt, started, now, hit.model, hit.provider, "cache_hit", usage, 0, None, saved=hit.cost_micros
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
            served_by="cache",
            attempts=0,
            limits=limits,
            extra=_answer_extra(hit.finish_reason, hit.tool_calls),
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

    def _log(self, ctx: CallContext, entry: LedgerEntry, reply: ProviderReply | None) -> None:
        # Prompts never reach the log: only their hash (DESIGN §6).
        logger().info(
            "completion",
            extra={
                "feature": ctx.feature,
                "template": ctx.template,
                "attempt": entry.attempt,
                "model": entry.model,
                "provider": entry.provider,
                "outcome": entry.outcome,
                "error_code": entry.error_code,
                "input_tokens": entry.input_tokens,
                "output_tokens": entry.output_tokens,
                "cost_micros": entry.cost_micros,
                "latency_ms": entry.latency_ms,
                "provider_latency_ms": reply.latency_ms if reply else None,
            },
        )


def ledger_entry(
    ctx: CallContext,
    attempt: int,
    started: float,
    now: datetime,
    model: str,
    provider: str,
    outcome: Outcome,
    usage: Usage,
    cost: int,
    price_from: str | None,
    *,
    saved: int = 0,
    error: str | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        request_id=ctx.request_id,
        attempt=attempt,
        tenant_id=ctx.principal.tenant_id,
        user_id=ctx.principal.user_id,
        key_id=ctx.principal.key_id,
        feature=ctx.feature,
        template=ctx.template,
        variant=ctx.variant,
        locale=ctx.locale,
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


def _labelled(result: CompletionResult, *, degraded_reason: str) -> CompletionResult:
    return replace(result, degraded_reason=result.degraded_reason or degraded_reason)


def _max_output(call: ModelCall) -> int:
    params = call.params
    return int(
        params.get("max_tokens") or params.get("max_completion_tokens") or get_model(call.model).max_output_tokens
    )


def _output(spec: CompletionSpec, content: str, tool_calls: tuple[dict[str, Any], ...]) -> Any:
    """What the caller gets: function calls pass through as the model made them (the client runs
    them and validates their arguments); text goes through the spec's validator."""
    return content if tool_calls else spec.validate(content)


def _answer_extra(finish_reason: str, tool_calls: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return {"finish_reason": finish_reason, **({"tool_calls": list(tool_calls)} if tool_calls else {})}


def _input_tokens(call: ModelCall, messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> int:
    counted = tokens.count_messages(messages, call.model)
    for structured in (response_format, call.params.get("tools")):  # both are prompt too
        if structured is not None:
            counted += tokens.count_text(json.dumps(structured), call.model)
    return counted


def _overflow(call: ModelCall, messages: list[dict[str, Any]], response_format: dict[str, Any] | None) -> int:
    """Tokens by which the input plus the output limit exceed the model's context window."""
    return _input_tokens(call, messages, response_format) + _max_output(call) - get_model(call.model).context_window


def _trim_longest(messages: list[dict[str, Any]], model: str, overflow: int) -> list[dict[str, Any]] | None:
    """The messages with the longest one shortened by `overflow` tokens (and a margin), or None
    when even removing most of it would not be enough."""
    longest = max(range(len(messages)), key=lambda i: len(messages[i].get("content") or ""))
    text = messages[longest].get("content") or ""
    have = tokens.count_text(text, model)
    target = have - overflow - max(64, overflow // 50)
    if target < have // 10:
        return None
    trimmed = [dict(m) for m in messages]
    trimmed[longest]["content"] = tokens.trim_middle(text, model, target)
    return trimmed


def _repair_messages(messages: list[dict[str, Any]], error: InvalidModelOutput) -> list[dict[str, Any]]:
    """The conversation once more, with the invalid answer and what is wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": error.content},
        {"role": "user", "content": REPAIR_INSTRUCTION.format(problems=error.problems or "unknown")},
    ]
