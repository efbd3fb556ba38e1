"""A provider that hangs never makes the caller wait past its deadline (DESIGN §6): every attempt's
timeout is cut from what is left, and the chain stops trying while there is time to answer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aigateway import deps
from aigateway.api import Deadline
from aigateway.auth import Principal
from aigateway.completion import CallContext
from aigateway.generation import GenerateRequest, generate
from infra.local.runtime import LocalStack
from tests.conftest import Client
from tests.integration.test_generate import SKILL

API_GATEWAY_LIMIT_S = 30.0  # HTTP API's integration timeout; the functions' own is 29 s


def test_a_hanging_provider_is_abandoned_within_a_short_deadline(stack: LocalStack, demo: Any, simulator: Any) -> None:
    # Given a provider that holds every request for 30 s, and a caller with 4 s to spare
    simulator.set_faults({"script": ["timeout"] * 20, "hang_s": 30})
    principal = Principal(tenant_id="demo", user_id="demo-admin", key_id="k1", role="admin")
    ctx = CallContext("01DEADLINE0000000000000000", principal, "generate", Deadline(time.monotonic() + 4.0))
    # When it generates
    started = time.monotonic()
    response, _ = generate(
        GenerateRequest.model_validate(SKILL), ctx, templates=deps.templates(), completions=deps.completions()
    )
    elapsed = time.monotonic() - started
    # Then it returns inside the deadline with the labelled static answer
    print(f"deadline 4.0 s: answered after {elapsed:.2f} s by {response.served_by} ({response.attempts} attempts)")
    assert elapsed < 4.0
    assert response.served_by == "static_answer" and response.degraded_reason == "provider_timeout"
    assert response.attempts >= 1


@pytest.mark.slow
def test_a_hanging_provider_answers_before_the_api_gateway_limit(client: Client, simulator: Any) -> None:
    # Given a provider that never answers in time, behind the real route (the function's 29 s deadline)
    simulator.set_faults({"script": ["timeout"] * 20, "hang_s": 60})
    # When a client calls the API
    started = time.monotonic()
    reply = client.post("/v1/generate", SKILL)
    elapsed = time.monotonic() - started
    # Then the answer comes before API Gateway would cut the connection, labelled as a fallback
    print(f"API: answered after {elapsed:.1f} s (limit {API_GATEWAY_LIMIT_S:.0f} s), {reply.body.get('served_by')}")
    assert elapsed < API_GATEWAY_LIMIT_S - 1
    assert reply.status == 200 and reply.body["served_by"] == "static_answer"
    assert reply.body["degraded_reason"] == "provider_timeout"
