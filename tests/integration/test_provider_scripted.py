"""The real openai SDK against scripted provider responses (respx): billing, and how each failure is classified."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx

from aigateway.governance.pricing import cost_micros, price_for
from aigateway.resilience.backoff import Backoff
from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.test_errors import assert_error
from tests.integration.test_generate import SKILL, ledger_rows

VALID_OUTPUT = {
    "score": 82,
    "level_demonstrated": "intermediate",
    "feedback": "Correct and concise.",
    "strengths": ["Names both tables' roles"],
    "improvements": [{"area": "Precision", "suggestion": "Mention duplicate matches."}],
    "next_steps": ["Practise FULL OUTER JOIN"],
    "confidence": 0.8,
}


def completion(
    content: str, *, prompt: int = 1500, cached: int = 0, completion_tokens: int = 120, finish_reason: str = "stop"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_763_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


@pytest.fixture
def provider(sim_server: Any) -> Any:
    with respx.mock(assert_all_called=True) as mock:
        yield mock.post(f"{sim_server.base_url}/chat/completions")


def test_cached_prompt_tokens_are_billed_at_the_cached_rate(client: Client, stack: LocalStack, provider: Any) -> None:
    # Given a provider answer with 1,024 of 1,500 prompt tokens served from its prompt cache
    provider.mock(return_value=httpx.Response(200, json=completion(json.dumps(VALID_OUTPUT), cached=1024)))
    # When the gateway serves it
    reply = client.post("/v1/generate", SKILL)
    # Then the cost is exact integer maths on the price in force
    if reply.status != 200:
        pytest.fail(f"unexpected {reply.status}: {reply.body}")
    from datetime import UTC, datetime

    expected = cost_micros(
        price_for("gpt-4o-mini", datetime.now(UTC)), input_tokens=1500, cached_tokens=1024, output_tokens=120
    )
    # 476 × 0.15 + 1024 × 0.075 + 120 × 0.60 µUSD = 71.4 + 76.8 + 72 = 220.2 → 221 (rounded up once)
    assert expected == 221
    assert reply.body["cost_micros"] == expected
    assert reply.body["usage"] == {
        "input_tokens": 1500,
        "cached_input_tokens": 1024,
        "output_tokens": 120,
        "total_tokens": 1620,
    }
    assert int(ledger_rows(stack)[0]["cached_tokens"]) == 1024


def error(status: int, code: str | None, message: str = "scripted", headers: dict[str, str] | None = None) -> Any:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


VALID = httpx.Response(200, json=completion(json.dumps(VALID_OUTPUT)))
PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4.1-mini"  # the analytical profile's chain


@dataclass(frozen=True)
class Scripted:
    """One SDK-level failure, what the provider answers after it, and what the gateway must do."""

    script: tuple[Any, ...]  # respx side effects, one per HTTP request
    status: int
    outcome: str  # served_by, or the error code
    codes: tuple[str | None, ...]  # the ledger rows' error codes, one row per attempt (None: success)
    models: tuple[str, ...]  # the model each HTTP request asked for
    degraded_reason: str | None = None
    waits_s: float = 0.0  # the least time the request must take (a Retry-After honoured)
    within_s: float | None = None  # the most it may take (a Retry-After too long to wait for)
    # A completion cut off by the content filter came with usage the provider bills: its failure
    # row charges exactly those tokens at the price in force.
    billed_failure: bool = False


CLASSIFICATION = {
    "500": Scripted((error(500, None), VALID), 200, "primary", ("provider_error", None), (PRIMARY, PRIMARY)),
    "503": Scripted((error(503, None), VALID), 200, "primary", ("provider_error", None), (PRIMARY, PRIMARY)),
    "429": Scripted(
        (error(429, "rate_limit_exceeded"), VALID), 200, "primary", ("provider_rate_limited", None), (PRIMARY, PRIMARY)
    ),
    "429-retry-after": Scripted(
        (error(429, "rate_limit_exceeded", headers={"retry-after": "1"}), VALID),
        200,
        "primary",
        ("provider_rate_limited", None),
        (PRIMARY, PRIMARY),
        waits_s=1.0,
    ),
    "429-retry-after-ms": Scripted(
        (error(429, "rate_limit_exceeded", headers={"retry-after-ms": "600"}), VALID),
        200,
        "primary",
        ("provider_rate_limited", None),
        (PRIMARY, PRIMARY),
        waits_s=0.6,
    ),
    # A Retry-After longer than the gateway will wait in-process: the next model, at once.
    "429-retry-after-too-long": Scripted(
        (error(429, "rate_limit_exceeded", headers={"retry-after": "30"}), VALID),
        200,
        "fallback_model",
        ("provider_rate_limited", None),
        (PRIMARY, FALLBACK),
        degraded_reason="provider_rate_limited",
        within_s=Backoff().max_wait_s,
    ),
    "read-timeout": Scripted(
        (httpx.ReadTimeout("hang"), VALID), 200, "primary", ("provider_timeout", None), (PRIMARY, PRIMARY)
    ),
    "connection-reset": Scripted(
        (httpx.RemoteProtocolError("reset"), VALID), 200, "primary", ("provider_unreachable", None), (PRIMARY, PRIMARY)
    ),
    "connect-error": Scripted(
        (httpx.ConnectError("refused"), VALID), 200, "primary", ("provider_unreachable", None), (PRIMARY, PRIMARY)
    ),
    "non-json-200": Scripted(
        (httpx.Response(200, text="<html>not json</html>"), VALID),
        200,
        "primary",
        ("provider_bad_response", None),
        (PRIMARY, PRIMARY),
    ),
    "401": Scripted(
        (error(401, "invalid_api_key"), VALID),
        200,
        "fallback_model",
        ("provider_auth_error", None),
        (PRIMARY, FALLBACK),
        degraded_reason="provider_auth_error",
    ),
    "400-context-length": Scripted(
        (error(400, "context_length_exceeded"), VALID),
        200,
        "fallback_model",
        ("context_length_exceeded", None),
        (PRIMARY, FALLBACK),
        degraded_reason="context_length_exceeded",
    ),
    "400-other": Scripted(
        (error(400, "invalid_value"), VALID),
        200,
        "fallback_model",
        ("provider_rejected_request", None),
        (PRIMARY, FALLBACK),
        degraded_reason="provider_rejected_request",
    ),
    "400-content-filter": Scripted(
        (error(400, "content_filter"),), 422, "content_filtered", ("content_filtered",), (PRIMARY,)
    ),
    "200-finish-content-filter": Scripted(
        (httpx.Response(200, json=completion("", finish_reason="content_filter")),),
        422,
        "content_filtered",
        ("content_filtered",),
        (PRIMARY,),
        billed_failure=True,
    ),
}


@pytest.mark.parametrize("case", CLASSIFICATION.values(), ids=CLASSIFICATION.keys())
def test_each_provider_failure_is_classified_and_handled_by_its_policy(
    client: Client, stack: LocalStack, provider: Any, case: Scripted
) -> None:
    # Given the provider scripted, request by request: a failure, then (where the policy moves on) a valid answer
    provider.mock(side_effect=list(case.script))
    # When one request is made
    began = time.monotonic()
    reply = client.post("/v1/generate", SKILL)
    took = time.monotonic() - began
    # Then it ends as the failure's policy says: retried, the next model, or a clear error
    if case.status == 200:
        assert reply.status == 200, reply.body
        assert reply.body["served_by"] == case.outcome and reply.body["degraded_reason"] == case.degraded_reason
        assert reply.body["fallback"] is (case.outcome != "primary")
        assert reply.body["output"] == VALID_OUTPUT and reply.body["model"] == case.models[-1]
        assert reply.body["attempts"] == len(case.script)
    else:
        assert_error(reply, case.status, case.outcome)
    # And the SDK's own retries are off: exactly one HTTP request per attempt, to the model the chain chose
    assert provider.call_count == len(case.script)
    assert tuple(json.loads(call.request.content)["model"] for call in provider.calls) == case.models
    # And every attempt is its own ledger row; failed attempts cost nothing unless the provider billed them
    rows = sorted(ledger_rows(stack), key=lambda r: int(r["attempt"]))
    assert [(int(r["attempt"]), r["model"], r.get("error_code")) for r in rows] == [
        (i, model, code) for i, (model, code) in enumerate(zip(case.models, case.codes, strict=True))
    ]
    failures = [r for r in rows if r["outcome"] == "failure"]
    if case.billed_failure:
        from datetime import UTC, datetime

        billed = cost_micros(
            price_for(PRIMARY, datetime.now(UTC)), input_tokens=1500, cached_tokens=0, output_tokens=120
        )
        assert [(int(r["cost_micros"]), int(r["input_tokens"]), int(r["output_tokens"])) for r in failures] == [
            (billed, 1500, 120)
        ]
    else:
        assert all(int(r["cost_micros"]) == 0 for r in failures)
    assert all(int(r["cost_micros"]) > 0 for r in rows if r["outcome"] == "success")
    # And a Retry-After within the gateway's patience was honoured, never cut short; a longer one was not waited for
    assert took >= case.waits_s
    if case.within_s is not None:
        assert took < case.within_s


def test_schema_invalid_output_is_repaired_once(client: Client, stack: LocalStack, provider: Any) -> None:
    # Given a provider whose first answer breaks the template's schema and whose second is valid
    bad = {**VALID_OUTPUT, "score": 140}
    provider.mock(side_effect=[httpx.Response(200, json=completion(json.dumps(bad))), VALID])
    # When a request is made
    reply = client.post("/v1/generate", SKILL)
    # Then the same model was asked once more, shown its answer and what is wrong with it
    assert reply.status == 200 and reply.body["served_by"] == "primary" and reply.body["attempts"] == 2
    repair = json.loads(provider.calls[1].request.content)
    assert repair["model"] == PRIMARY
    assert repair["messages"][-2] == {"role": "assistant", "content": json.dumps(bad)}
    assert "score" in repair["messages"][-1]["content"]
    # And both answers are billed: the invalid one as a failure, the repaired one as the success
    rows = sorted(ledger_rows(stack), key=lambda r: int(r["attempt"]))
    outcomes = [(r["outcome"], r.get("error_code")) for r in rows]
    assert outcomes == [("failure", "invalid_model_output"), ("success", None)]
    assert all(int(r["cost_micros"]) > 0 for r in rows)


def test_schema_invalid_output_is_billed_but_never_cached(client: Client, stack: LocalStack, provider: Any) -> None:
    # Given a provider that always answers with JSON that breaks the template's schema
    bad = {**VALID_OUTPUT, "score": 140}
    provider.mock(return_value=httpx.Response(200, json=completion(json.dumps(bad))))
    # When the same request is made twice
    first = client.post("/v1/generate", SKILL)
    second = client.post("/v1/generate", SKILL)
    # Then each tried both models, each once more with a repair, and served the template's static answer
    for reply in (first, second):
        assert reply.status == 200, reply.body
        assert (reply.body["served_by"], reply.body["degraded_reason"]) == ("static_answer", "invalid_model_output")
        assert reply.body["fallback"] is True and reply.body["model"] is None and reply.body["attempts"] == 4
    # And nothing was cached: the second request reached the provider as often as the first
    assert provider.call_count == 8
    models = [json.loads(call.request.content)["model"] for call in provider.calls]
    assert models == [PRIMARY, PRIMARY, FALLBACK, FALLBACK] * 2
    # And every invalid answer is billed; the static answers cost nothing
    rows = ledger_rows(stack)
    failures = [r for r in rows if r["outcome"] == "failure"]
    static = [r for r in rows if r["outcome"] == "fallback"]
    assert len(failures) == 8 and all(int(r["cost_micros"]) > 0 for r in failures)
    assert len(static) == 2 and all(int(r["cost_micros"]) == 0 and r["model"] == "static-answer" for r in static)
