"""Resilience primitives: failure policy, backoff with full jitter, deadline-bounded timeouts,
provider error classification, and trimming an input to a context window."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from aigateway import errors
from aigateway.api import DEADLINE_RESERVE_S, Deadline
from aigateway.completion import Completions, CompletionSpec, ModelCall, json_output
from aigateway.llm import tokens
from aigateway.llm.client import classify_status, retry_after_seconds
from aigateway.resilience.backoff import MIN_ATTEMPT_S, Backoff, attempt_timeout
from aigateway.resilience.policy import POLICIES, RETRYABLE, caller_errors, policy_for


def all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    todo = [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_every_provider_outcome_class_has_its_own_policy() -> None:
    # Given every domain error a provider attempt can end in
    provider_classes = all_subclasses(errors.ProviderError) | {
        errors.ProviderError,
        errors.ContentFiltered,
        errors.ContextLengthExceeded,
    }
    # Then each has a policy of its own (not one inherited by accident)
    missing = sorted(c.__name__ for c in provider_classes if c not in POLICIES)
    assert missing == []
    # And the table says what the issue asks: transient errors retry, the caller's content stops
    assert set(RETRYABLE) == {
        "ProviderRateLimited",
        "ProviderTimeout",
        "ProviderUnreachable",
        "ProviderBadResponse",
        "ProviderError",
    }
    assert policy_for(errors.InvalidModelOutput("x")).action == "repair"
    assert policy_for(errors.ContextLengthExceeded("x")).action == "larger"
    assert policy_for(errors.ContentFiltered("x")).action == "stop"
    auth = policy_for(errors.ProviderAuthError("x"))
    assert auth.action == "next" and auth.breaker  # no retry with bad credentials, but the model is unusable
    assert not policy_for(errors.InvalidModelOutput("x")).breaker  # a wrong answer is not an outage


def test_caller_errors_are_every_4xx_class_and_no_provider_failure() -> None:
    caller = set(caller_errors())
    assert {"ContentFiltered", "ContextLengthExceeded", "BudgetExhausted", "ValidationFailed", "RateLimited"} <= caller
    assert not caller & set(RETRYABLE)
    assert "ProviderAuthError" not in caller  # our credentials are never the caller's fault


def test_full_jitter_stays_within_the_exponential_envelope_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=0.2, cap_s=2.0, rng=random.Random(7))
    for retry in range(6):
        draws = [backoff.delay(retry) for _ in range(2000)]
        ceiling = min(2.0, 0.2 * 2**retry)
        # Full jitter: anywhere in [0, ceiling], spread over the whole range (not clustered at the top)
        assert min(draws) >= 0 and max(draws) <= ceiling
        assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95
    # A provider's Retry-After is a floor, never shortened by the jitter
    assert all(backoff.delay(0, retry_after_s=1.5) >= 1.5 for _ in range(100))


def test_a_wait_that_would_leave_no_time_for_the_attempt_is_refused() -> None:
    backoff = Backoff(max_wait_s=5.0)
    roomy = Deadline(time.monotonic() + 20)
    tight = Deadline(time.monotonic() + DEADLINE_RESERVE_S + MIN_ATTEMPT_S + 0.5)
    assert backoff.fits(1.0, roomy)
    assert not backoff.fits(6.0, roomy)  # longer than the in-process ceiling: try another model instead
    assert backoff.fits(0.1, tight) and not backoff.fits(1.0, tight)


def test_attempt_timeout_leaves_time_for_the_fallback_hops() -> None:
    deadline = Deadline(time.monotonic() + 29)
    # The per-call ceiling applies when the deadline is far away ...
    assert attempt_timeout(deadline, 25.0, hops_left=0) == 25.0
    # ... while other hops remain, one attempt takes at most 60 % of what is left ...
    shared = attempt_timeout(deadline, 25.0, hops_left=1)
    assert (29 - DEADLINE_RESERVE_S) * 0.6 - 0.1 <= shared <= (29 - DEADLINE_RESERVE_S) * 0.6
    # ... and the last hop gets everything up to the reserve for settling and answering.
    last = attempt_timeout(Deadline(time.monotonic() + 10), 25.0, hops_left=0)
    assert 10 - DEADLINE_RESERVE_S - 0.1 <= last <= 10 - DEADLINE_RESERVE_S
    assert attempt_timeout(Deadline(time.monotonic() - 1), 25.0, hops_left=0) == 0.05  # never negative


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise one wins
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_either_header(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    at = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_after_seconds({"retry-after": format_datetime(at, usegmt=True)})
    assert seconds is not None and 28 <= seconds <= 31


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "rate_limit_exceeded", errors.ProviderRateLimited),
        (429, "insufficient_quota", errors.ProviderAuthError),  # billing: retrying cannot help
        (401, "invalid_api_key", errors.ProviderAuthError),
        (403, None, errors.ProviderAuthError),
        (400, "context_length_exceeded", errors.ContextLengthExceeded),
        (400, "content_filter", errors.ContentFiltered),
        (400, "content_policy_violation", errors.ContentFiltered),
        (400, "invalid_value", errors.ProviderRejected),
        (404, "model_not_found", errors.ProviderRejected),
        (408, None, errors.ProviderTimeout),
        (500, None, errors.ProviderError),
        (503, None, errors.ProviderError),
    ],
)
def test_provider_statuses_map_to_one_class_each(status: int, code: str | None, expected: type) -> None:
    error = classify_status(status, code, {"retry-after": "2"})
    assert type(error) is expected
    if expected is errors.ProviderRateLimited:
        assert error.retry_after_s == 2.0  # type: ignore[attr-defined]


def test_trim_middle_fits_the_budget_and_keeps_both_ends() -> None:
    text = "HEAD instructions. " + " ".join(f"filler{i}" for i in range(3000)) + " TAIL question?"
    trimmed = tokens.trim_middle(text, "gpt-4o-mini", 200)
    assert tokens.count_text(trimmed, "gpt-4o-mini") <= 200
    assert trimmed.startswith("HEAD instructions.") and trimmed.endswith("TAIL question?")
    assert "tokens trimmed" in trimmed
    assert tokens.trim_middle("short", "gpt-4o-mini", 200) == "short"


def spec_with(calls: tuple[ModelCall, ...], user_tokens: int) -> CompletionSpec:
    user = "word " * user_tokens
    return CompletionSpec(
        calls=calls,
        messages=[{"role": "system", "content": "Grade it."}, {"role": "user", "content": user}],
        response_format=None,
        cache_ttl_s=0,
        validate=json_output(None),
    )


MINI = ModelCall("gpt-4o-mini", {"max_tokens": 800})
LARGE = ModelCall("gpt-4.1-mini", {"max_tokens": 800})


def test_an_input_too_long_for_the_primary_goes_to_a_larger_window_untrimmed() -> None:
    # Given an input over gpt-4o-mini's 128k window and a fallback with a 1M window
    spec = spec_with((MINI, LARGE), 130_000)
    # Then the primary is skipped and the larger model gets the input whole
    assert Completions._fit(None, MINI, spec, (LARGE,)) == (None, False)  # type: ignore[arg-type]
    messages, trimmed = Completions._fit(None, LARGE, spec, ())  # type: ignore[arg-type]
    assert messages == spec.messages and not trimmed


def test_an_input_too_long_for_every_model_is_trimmed_to_fit() -> None:
    # Given only gpt-4o-mini in the chain
    spec = spec_with((MINI,), 130_000)
    messages, trimmed = Completions._fit(None, MINI, spec, ())  # type: ignore[arg-type]
    # Then the longest message is cut in the middle until input + output limit fit the window
    assert trimmed and messages is not None
    used = tokens.count_messages(messages, "gpt-4o-mini") + 800
    print(
        f"trimmed input: {tokens.count_messages(spec.messages, 'gpt-4o-mini')} -> {used - 800} tokens (window 128000)"
    )
    assert used <= 128_000
    assert messages[0] == spec.messages[0]  # the system prompt is untouched
