"""Tenants and API keys over the API: the operator onboards a tenant, the tenant's own admin issues,
lists and revokes its keys and runs its prompt experiments, and no key reaches another tenant or
climbs above its own role."""

from __future__ import annotations

from typing import Any

import pytest

from aigateway import deps
from cli.__main__ import main as cli_main
from tests.conftest import Client

TENANTS = "/v1/admin/tenants"
KEYS = "/v1/admin/tenants/{}/keys"
GENERATE_BODY = {
    "template": "skill_assessment",
    "variables": {"skill": "SQL", "question": "What is an index?", "answer": "A sorted lookup structure."},
}


def as_key(client: Client, api_key: str) -> Client:
    return Client(client.gateway, api_key)


def codes(*replies: Any) -> list[tuple[int, str | None]]:
    return [(r.status, (r.body.get("error") or {}).get("code") if isinstance(r.body, dict) else None) for r in replies]


def onboard(client: Client, tenant: str) -> Client:
    """The operator creates a tenant and its first tenant_admin key; returns that key's client."""
    created = client.post(TENANTS, {"tenant_id": tenant, "name": f"{tenant} Inc."})
    assert created.status == 201, created.body
    issued = client.post(KEYS.format(tenant), {"user_id": "alice", "role": "tenant_admin"})
    assert issued.status == 201, issued.body
    return as_key(client, issued.body["api_key"])


def test_the_operator_onboards_a_tenant_whose_admin_then_runs_its_own_keys(client: Client) -> None:
    # Given the operator creates tenant acme and its first tenant_admin key
    acme_admin = onboard(client, "acme")
    again = client.post(TENANTS, {"tenant_id": "acme", "name": "someone else"})
    assert codes(again) == [(409, "tenant_exists")]
    assert {t["tenant_id"] for t in client.get(TENANTS).body["tenants"]} == {"demo", "acme"}

    # When acme's admin issues a member key for bob
    issued = acme_admin.post(KEYS.format("acme"), {"user_id": "bob"})
    assert issued.status == 201, issued.body
    bob = as_key(client, issued.body["api_key"])
    assert issued.body["role"] == "member" and issued.body["status"] == "active"
    assert issued.body["api_key"].startswith(f"aig_{issued.body['key_id']}_")

    # Then bob's key works, as acme's user bob (billed to acme)
    answer = bob.post("/v1/generate", GENERATE_BODY)
    assert answer.status == 200, answer.body
    budget = bob.get("/v1/budget").body
    assert budget["tenant_id"] == "acme", budget

    # And the listing shows both keys, never the key itself or its hash
    listed = acme_admin.get(KEYS.format("acme")).body["keys"]
    assert [(k["user_id"], k["role"], k["status"]) for k in sorted(listed, key=lambda k: k["user_id"])] == [
        ("alice", "tenant_admin", "active"),
        ("bob", "member", "active"),
    ]
    flat = repr(listed)
    assert issued.body["api_key"] not in flat and "APIKEY#" not in flat and "pk" not in listed[0]

    # When acme's admin revokes bob's key
    revoked = acme_admin.request("DELETE", f"{KEYS.format('acme')}/{issued.body['key_id']}")
    assert revoked.status == 200 and revoked.body["status"] == "revoked", revoked.body
    assert revoked.body["revoked_by"] == acme_admin.api_key.split("_")[1]  # type: ignore[union-attr]
    # Then, once the authorizer's cached answer for it has expired, the key is refused
    client.gateway.expire_authorizations()
    assert codes(bob.post("/v1/generate", GENERATE_BODY)) == [(401, "unauthorized")]
    # And a second revoke keeps the first one's record; an unknown key id is 404
    repeat = acme_admin.request("DELETE", f"{KEYS.format('acme')}/{issued.body['key_id']}")
    assert repeat.status == 200 and repeat.body["revoked_at"] == revoked.body["revoked_at"]
    assert codes(acme_admin.request("DELETE", f"{KEYS.format('acme')}/0123456789ab")) == [(404, "not_found")]


def test_keys_stay_inside_their_tenant_and_their_role(client: Client) -> None:
    # Given two tenants, each with a tenant admin, and a member of acme
    acme_admin = onboard(client, "acme")
    onboard(client, "globex")
    member = as_key(client, acme_admin.post(KEYS.format("acme"), {"user_id": "carol"}).body["api_key"])
    demo_keys = client.get(KEYS.format("demo")).body["keys"]
    operator_key_id = demo_keys[0]["key_id"]

    # Then acme's admin cannot act on globex (nor learn whether a tenant exists), nor mint or
    # revoke operator keys, nor create tenants or change budgets; a member administers nothing
    refused = [
        acme_admin.get(KEYS.format("globex")),
        acme_admin.get(KEYS.format("no-such-tenant")),
        acme_admin.post(KEYS.format("globex"), {"user_id": "mallory", "role": "tenant_admin"}),
        acme_admin.request("DELETE", f"{KEYS.format('demo')}/{operator_key_id}"),
        acme_admin.post(KEYS.format("acme"), {"user_id": "mallory", "role": "admin"}),
        acme_admin.post(TENANTS, {"tenant_id": "evil", "name": "Evil"}),
        acme_admin.get(TENANTS),
        acme_admin.request("PUT", "/v1/admin/tenants/acme/governance", {"budgets": {"monthly_micros": 1}}),
        acme_admin.get("/v1/admin/tenants/globex/experiments/skill_assessment"),
        member.get(KEYS.format("acme")),
        member.post(KEYS.format("acme"), {"user_id": "dave"}),
        member.get("/v1/admin/tenants/acme/experiments/skill_assessment"),
    ]
    assert codes(*refused) == [(403, "forbidden")] * len(refused)
    # And a key id of another tenant is not found through one's own tenant
    globex_key = client.get(KEYS.format("globex")).body["keys"][0]["key_id"]
    assert codes(acme_admin.request("DELETE", f"{KEYS.format('acme')}/{globex_key}")) == [(404, "not_found")]
    # And nothing was written by the refused calls
    assert {k["user_id"] for k in client.get(KEYS.format("acme")).body["keys"]} == {"alice", "carol"}
    assert {t["tenant_id"] for t in client.get(TENANTS).body["tenants"]} == {"demo", "acme", "globex"}
    assert all(k["status"] == "active" for k in client.get(KEYS.format("demo")).body["keys"])


def test_a_tenant_admin_runs_its_own_experiments_and_reads_its_budgets(client: Client) -> None:
    acme_admin = onboard(client, "acme")
    split = {"variants": [{"name": "control", "version": 1, "weight": 70}, {"name": "new", "version": 2, "weight": 30}]}
    put = acme_admin.request("PUT", "/v1/admin/tenants/acme/experiments/skill_assessment", split)
    assert put.status == 200, put.body
    read = acme_admin.get("/v1/admin/tenants/acme/experiments/skill_assessment")
    assert [v["weight"] for v in read.body["variants"]] == [70, 30]
    governance = acme_admin.get("/v1/admin/tenants/acme/governance")
    assert governance.status == 200 and governance.body["tenant_id"] == "acme"
    scoring = acme_admin.get("/v1/admin/tenants/acme/scoring")
    assert scoring.status == 200, scoring.body


def test_bad_tenant_and_key_requests_name_the_field(client: Client) -> None:
    bad = [
        client.post(TENANTS, {"tenant_id": "has space", "name": "x"}),
        client.post(TENANTS, {"tenant_id": "ok", "name": ""}),
        client.post(TENANTS, {"tenant_id": "ok", "name": "x", "plan": "gold"}),
        client.post(KEYS.format("demo"), {"user_id": "system:lead-batch"}),
        client.post(KEYS.format("demo"), {"user_id": "bob", "role": "root"}),
    ]
    assert [(r.status, r.body["error"]["code"], r.body["error"]["field"]) for r in bad] == [
        (422, "validation_error", "tenant_id"),
        (422, "validation_error", "name"),
        (422, "validation_error", "plan"),
        (422, "validation_error", "user_id"),
        (422, "validation_error", "role"),
    ]
    assert codes(client.post(KEYS.format("nope"), {"user_id": "bob"})) == [(404, "not_found")]
    assert {t["tenant_id"] for t in client.get(TENANTS).body["tenants"]} == {"demo"}


def test_bootstrap_issues_the_first_operator_key_of_a_deployment(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a deployment's State table (the local stack's) and no operator tenant yet
    table = deps.repos().tenants.table
    # When the operator runs the bootstrap command with its AWS credentials
    assert cli_main(["bootstrap", "--table", table, "--tenant", "ops", "--user", "root-operator"]) == 0
    printed = capsys.readouterr()
    api_key = printed.out.strip()
    # Then the key it prints is an admin of tenant ops, which can onboard a customer
    operator = as_key(client, api_key)
    assert operator.post(TENANTS, {"tenant_id": "initech", "name": "Initech"}).status == 201
    listed = operator.get(KEYS.format("ops")).body["keys"]
    assert [(k["user_id"], k["role"]) for k in listed] == [("root-operator", "admin")]
    assert "created" in printed.err and api_key not in printed.err
    # And a second run keeps the tenant and adds a second key
    assert cli_main(["bootstrap", "--table", table, "--tenant", "ops"]) == 0
    assert "already existed" in capsys.readouterr().err
    assert len(operator.get(KEYS.format("ops")).body["keys"]) == 2
