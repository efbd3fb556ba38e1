"""The real openai SDK against scripted provider responses (respx): billing and failure paths."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from aigateway.governance.pricing import cost_micros, price_for
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


def completion(content: str, *, prompt: int = 1500, cached: int = 0, completion_tokens: int = 120) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_763_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
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


@pytest.mark.parametrize(
    ("response", "status", "code"),
    [
        (httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}}), 502, "provider_error"),
        (
            httpx.Response(429, json={"error": {"message": "slow down", "type": "rate_limit_exceeded"}}),
            503,
            "provider_rate_limited",
        ),
        (httpx.ReadTimeout("hang"), 504, "provider_timeout"),
        (httpx.RemoteProtocolError("reset"), 502, "provider_error"),
        (httpx.Response(200, text="<html>not json</html>"), 502, "provider_error"),
    ],
    ids=["500", "429", "timeout", "reset", "malformed"],
)
def test_provider_failure_is_a_clear_error_and_a_zero_cost_ledger_row(
    client: Client, stack: LocalStack, provider: Any, response: Any, status: int, code: str
) -> None:
    provider.mock(side_effect=[response])
    reply = client.post("/v1/generate", SKILL)
    assert_error(reply, status, code)
    rows = ledger_rows(stack)
    assert [(r["outcome"], int(r["cost_micros"]), r["error_code"]) for r in rows] == [("failure", 0, code)]


def test_schema_invalid_output_is_billed_but_never_cached(client: Client, stack: LocalStack, provider: Any) -> None:
    # Given a provider that answers twice with JSON that breaks the template's schema
    bad = {**VALID_OUTPUT, "score": 140}
    provider.mock(return_value=httpx.Response(200, json=completion(json.dumps(bad))))
    # When the same request is made twice
    first = client.post("/v1/generate", SKILL)
    second = client.post("/v1/generate", SKILL)
    # Then both are errors, both reached the provider (nothing cached), and both are billed
    assert_error(first, 502, "invalid_model_output")
    assert_error(second, 502, "invalid_model_output")
    assert provider.call_count == 2
    rows = ledger_rows(stack)
    assert len(rows) == 2 and all(r["outcome"] == "failure" and int(r["cost_micros"]) > 0 for r in rows)
