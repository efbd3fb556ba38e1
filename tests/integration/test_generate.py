"""The generate flow end to end on moto: route table → authorizer → handler → simulated provider."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aigateway.store.dynamo import track_request
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack
from tests.conftest import Client

SKILL = {
    "template": "skill_assessment",
    "variables": {
        "skill": "SQL",
        "question": "What does a LEFT JOIN return?",
        "answer": "All rows of the left table, with matching right rows or NULLs.",
    },
}


def ledger_rows(stack: LocalStack, tenant: str = "demo") -> list[dict[str, Any]]:
    """This month's ledger rows of `tenant`, read the way the export reads them."""
    from aigateway import deps

    month = datetime.now(UTC).strftime("%Y-%m")
    rows, _ = deps.repos().ledger.month(tenant, month)
    return rows


def test_generate_returns_schema_valid_output_and_bills_the_call(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given the demo tenant and the simulated provider
    # When it generates a skill assessment
    reply = client.post("/v1/generate", SKILL)
    # Then the answer is the template's structured output, labelled simulated, and billed
    assert reply.status == 200, reply.body
    body = reply.body
    assert body["template"] == "skill_assessment" and body["version"] >= 1
    assert body["provider"] == "simulated" and body["cached"] is False and body["fallback"] is False
    assert 0 <= body["output"]["score"] <= 100
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert body["cost_micros"] > 0 and body["cost_usd"] == body["cost_micros"] / 1_000_000
    assert reply.headers["x-request-id"] == body["request_id"]
    assert simulator.stats()["requests"] == 1
    rows = ledger_rows(stack)
    assert len(rows) == 1
    row = rows[0]
    assert row["outcome"] == "success" and int(row["cost_micros"]) == body["cost_micros"]
    assert row["template"] == f"skill_assessment@{body['version']}" and row["feature"] == "generate"
    assert row["user_id"] == "demo-admin" and row["request_id"] == body["request_id"]


def test_identical_second_call_is_a_cache_hit_that_costs_nothing(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a first call that went to the provider
    first = client.post("/v1/generate", SKILL).body
    # When the same request comes again
    second = client.post("/v1/generate", SKILL).body
    # Then no provider call is made, the answer is identical, and the ledger records the saving
    assert simulator.stats()["requests"] == 1
    assert second["cached"] is True and second["cost_micros"] == 0 and second["cost_usd"] == 0
    assert second["cost_saved_micros"] == first["cost_micros"]
    assert second["output"] == first["output"]
    outcomes = sorted((r["outcome"], int(r["cost_micros"]), int(r["cost_saved_micros"])) for r in ledger_rows(stack))
    assert outcomes == [("cache_hit", 0, first["cost_micros"]), ("success", first["cost_micros"], 0)]


def test_cache_is_scoped_to_the_tenant(client: Client, stack: LocalStack, simulator: Any) -> None:
    from infra.local.seed import seed_demo_tenant

    # Given tenant demo has cached an answer
    client.post("/v1/generate", SKILL)
    other = seed_demo_tenant("aig_other_tenant_key_987654", tenant_id="acme", user_id="acme-user", role="member")
    # When another tenant sends the identical request
    reply = Client(client.gateway, other.api_key).post("/v1/generate", SKILL)
    # Then it is not served from demo's cache
    assert reply.status == 200 and reply.body["cached"] is False
    assert simulator.stats()["requests"] == 2
    cross_tenant_hits = sum(1 for r in ledger_rows(stack, "acme") if r["outcome"] == "cache_hit")
    print(f"cross-tenant cache hits: {cross_tenant_hits}")
    assert cross_tenant_hits == 0


def test_dynamodb_round_trips_per_request(client: Client, stack: LocalStack) -> None:
    # Given the generate route, invoked the way API Gateway invokes it
    gateway = LocalApiGateway(stack)
    headers = {"authorization": f"Bearer {client.api_key}", "content-type": "application/json"}

    def invoke(body: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
        route, event = gateway.prepare("POST", "/v1/generate", headers, json.dumps(body).encode())  # type: ignore[misc]
        with track_request() as stats:
            result = stack.invoke(route.function, event)
        return stats.calls, stats.phases, json.loads(result["body"])

    # When the month's first request opens the budget counter (and loads the tenant's settings) …
    other = {**SKILL, "variables": {**SKILL["variables"], "answer": "A different answer, so a miss."}}
    first_calls, first_phases, _ = invoke(other)
    # … and then a steady-state miss and a hit are served
    miss_calls, miss_phases, miss = invoke(SKILL)
    hit_calls, hit_phases, hit = invoke(SKILL)
    print(
        f"DynamoDB per request: first of the period {first_calls} calls / {first_phases} phases; "
        f"miss {miss_calls} calls / {miss_phases} phases; hit {hit_calls} calls / {hit_phases} phases"
    )
    # Then the round-trip budget of DESIGN §5 holds
    assert miss["cached"] is False and hit["cached"] is True
    assert miss_phases <= 3 and hit_phases <= 2
    # Phase 1: cache get ‖ budget snapshot ‖ 3 rate-limit buckets (key, ip, tenant); a miss then
    # reserves (1 transaction) and settles (1 transaction) ‖ writes the cache; a hit settles.
    assert (miss_calls, hit_calls) == (8, 6)


def test_health_is_public_and_reports_dependencies(client: Client) -> None:
    reply = client.get("/v1/health", key=None)
    assert reply.status == 200, reply.body
    deps = reply.body["dependencies"]
    assert deps["dynamodb.cache"]["ok"] and deps["dynamodb.ledger"]["ok"] and deps["dynamodb.state"]["ok"]
    assert deps["provider"]["name"] == "simulated" and deps["prompts"]["templates"] >= 3


def test_openapi_document_describes_every_route(client: Client) -> None:
    from infra.routes import ROUTES

    reply = client.get("/v1/openapi.json", key=None)
    assert reply.status == 200
    paths = reply.body["paths"]
    for route in ROUTES:
        assert route.method.lower() in paths[route.path], f"{route.method} {route.path} missing from OpenAPI"
    assert "GenerateRequest" in reply.body["components"]["schemas"]
    assert paths["/v1/generate"]["post"]["security"] == [{"apiKey": []}]
