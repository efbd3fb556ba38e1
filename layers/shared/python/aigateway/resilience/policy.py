"""One documented policy per class of provider outcome (docs/architecture.md has the table).

A failed attempt is classified by its domain error's class (raised by llm/client.py). The policy
says whether the same model is tried again, whether the failure counts against that model's
circuit breaker, and whether the chain moves on to the next hop or stops with the error.
The jobs state machine reads the same table (infra/workflow.py), so in-process and Step
Functions behaviour cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aigateway.errors import (
    BudgetExhausted,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    GatewayError,
    InvalidModelOutput,
    NoFallbackModel,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnreachable,
)

# retry: the same model again after a backoff (while the deadline allows);
# repair: the same model once more, shown its invalid answer and the schema errors;
# next: straight to the next hop; larger: the next hop whose context window is larger;
# stop: no other hop can do better, the error is the answer.
Action = Literal["retry", "repair", "next", "larger", "stop"]


@dataclass(frozen=True)
class Policy:
    action: Action
    breaker: bool  # counts against the model's circuit
    degrade: bool  # when no model answers, a stale cache entry or the static answer may serve
    why: str

    @property
    def retryable(self) -> bool:
        return self.action == "retry"


POLICIES: dict[type[GatewayError], Policy] = {
    ProviderRateLimited: Policy("retry", True, True, "transient; honour Retry-After, then another model"),
    ProviderTimeout: Policy("retry", True, True, "transient; retried only if the deadline leaves room"),
    ProviderUnreachable: Policy("retry", True, True, "connection reset or refused: transient"),
    ProviderBadResponse: Policy("retry", True, True, "a cut-off or non-JSON body: usually transient"),
    ProviderError: Policy("retry", True, True, "5xx: transient"),
    InvalidModelOutput: Policy("repair", False, True, "the model is up but wrong: one repair, then another model"),
    ContextLengthExceeded: Policy("larger", False, False, "only a model with a larger window can take the input"),
    ProviderAuthError: Policy("next", True, True, "our credentials: no retry; other providers may still answer"),
    ProviderRejected: Policy("next", False, True, "this model refuses the request; another may not"),
    CircuitOpen: Policy("next", False, True, "the model is shunned for now; no call is made"),
    NoFallbackModel: Policy("next", False, True, "a jobs fallback stage with nothing to try"),
    BudgetExhausted: Policy("stop", False, False, "the caller's budget: nothing else may spend it"),
    ContentFiltered: Policy("stop", False, False, "the content is the cause: no model or stale answer fixes it"),
}

# Transient classes: retried in-process, and by the jobs workflow's Retry (by these names).
RETRYABLE: tuple[str, ...] = tuple(cls.__name__ for cls, p in POLICIES.items() if p.retryable)


def caller_errors() -> tuple[str, ...]:
    """Every 4xx domain error's class name: the request itself is at fault, so no other hop,
    retry or degraded answer can help (the jobs workflow records them as the job's failure)."""
    found: set[str] = set()
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if 400 <= cls.status < 500:
            found.add(cls.__name__)
    return tuple(sorted(found))


def policy_for(error: GatewayError) -> Policy:
    """The policy of the most specific class that has one (every ProviderError has one)."""
    for cls in type(error).__mro__:
        if cls in POLICIES:
            return POLICIES[cls]
    return Policy("stop", False, False, "not a provider outcome")
