"""Admin endpoints for a tenant's budgets and rate limits: role checks, validation, applying at once."""

from __future__ import annotations

from typing import Any

from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client
from tests.integration.test_generate import SKILL

PATH = "/v1/admin/tenants/{}/governance"


def member(client: Client, tenant: str = "acme") -> Client:
    other = seed_demo_tenant(f"aig_{tenant}_member_key_000000000000", tenant_id=tenant, user_id="u1", role="member")
    return Client(client.gateway, other.api_key)


def test_member_keys_get_403_and_admin_keys_see_the_configuration(client: Client, stack: LocalStack) -> None:
    # Given a member key of tenant acme and the demo admin key
    acme = member(client)
    # When the member reads or writes governance (its own tenant's included)
    read = acme.get(PATH.format("acme"))
    write = acme.request("PUT", PATH.format("acme"), {"budgets": {"monthly_micros": 1}})
    # Then both are refused with 403 and nothing changes
    assert (read.status, write.status) == (403, 403), (read.body, write.body)
    assert read.body["error"]["code"] == "forbidden"
    # And the admin sees the defaults with an untouched counter
    reply = client.get(PATH.format("acme"))
    assert reply.status == 200, reply.body
    assert reply.body["governance"]["budgets"]["monthly_micros"] == 100_000_000
    assert reply.body["budgets"][0]["scope"] == "tenant" and reply.body["budgets"][0]["spent_micros"] == 0


def test_bad_governance_input_is_a_clear_4xx(client: Client, stack: LocalStack) -> None:
    member(client)
    cases: list[tuple[str, Any, int, str]] = [
        ("acme", {"budgets": {"monthly_micros": -1}}, 422, "budgets.monthly_micros"),
        ("acme", {"budgets": {"features": {"generate": -5}}}, 422, "budgets.features"),
        ("acme", {"rate_limits": [{"scope": "planet", "limit": 1, "period_s": 60}]}, 422, "rate_limits.0.scope"),
        ("acme", {"rate_limits": [{"scope": "key", "limit": 0, "period_s": 60}]}, 422, "rate_limits.0.limit"),
        ("acme", {"budget": {}}, 422, "budget"),
        ("nobody", {}, 404, "tenant_id"),
        ("bad tenant!", {}, 422, "tenant_id"),
    ]
    for tenant, body, status, field in cases:
        reply = client.request("PUT", PATH.format(tenant.replace(" ", "%20")), body)
        assert reply.status == status, (tenant, body, reply.body)
        assert reply.body["error"]["field"].startswith(field), (body, reply.body)
    # And nothing was stored by the refused writes
    assert client.get(PATH.format("acme")).body["governance"]["budgets"]["monthly_micros"] == 100_000_000


def test_a_lowered_budget_applies_to_the_live_counter_at_once(client: Client, stack: LocalStack) -> None:
    # Given the demo tenant has spent something this month
    first = client.post("/v1/generate", SKILL)
    assert first.status == 200, first.body
    spent = first.body["cost_micros"]
    # When an admin lowers the tenant budget to exactly what was spent
    reply = client.request("PUT", PATH.format("demo"), {"budgets": {"monthly_micros": spent}})
    assert reply.status == 200, reply.body
    (tenant_budget,) = reply.body["budgets"]
    # Then the live counter moved with it: nothing remains and the next miss is refused with 402
    assert tenant_budget["limit_micros"] == spent and tenant_budget["spent_micros"] == spent
    assert tenant_budget["remaining_micros"] == 0
    other = {**SKILL, "variables": {**SKILL["variables"], "answer": "Something new, so not cached."}}
    refused = client.post("/v1/generate", other)
    assert refused.status == 402, refused.body
    error = refused.body["error"]
    assert error["code"] == "budget_exhausted" and error["budget"] == "tenant" and error["remaining_micros"] == 0
    # And a cache hit still answers: it costs nothing
    assert client.post("/v1/generate", SKILL).body["cached"] is True
    # When the budget is raised again, the headroom comes back by the difference
    raised = client.request("PUT", PATH.format("demo"), {"budgets": {"monthly_micros": spent + 1_000_000}})
    assert raised.body["budgets"][0]["remaining_micros"] == 1_000_000
    assert client.post("/v1/generate", other).status == 200
