"""Prompt experiments end to end: an admin splits skill_assessment 50/50 between versions 1 and 2,
end users keep their variant, the ledger records it, feedback is stored per request and user, and
the report compares the variants; pins, named versions, locales and a job take the same path."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from aigateway import deps
from aigateway.experiments import assign, subject_of
from aigateway.ids import new_id
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client
from tests.integration.governance_support import LOOSE_LIMITS, configure
from tests.integration.test_jobs_api import wait_until_ended

PATH = "/v1/admin/tenants/{}/experiments/{}"
TEMPLATE = "skill_assessment"
SPLIT = {
    "variants": [
        {"name": "control", "version": 1, "weight": 50},
        {"name": "concise", "version": 2, "weight": 50},
    ]
}
THIRD = {"name": "x", "version": 7, "weight": 1}  # a version that is not deployed
USERS = [f"learner-{i:02d}" for i in range(16)]
FRENCH_MARKER = "Analysez le projet ci-dessous"  # ASCII, so it appears as-is in the JSON request body


def key_of(client: Client, tenant: str, role: str, user: str = "u1") -> Client:
    seeded = seed_demo_tenant(f"aig_{tenant}_{role}_key_0000000000000", tenant_id=tenant, user_id=user, role=role)
    return Client(client.gateway, seeded.api_key)


def ask(user: str, n: int, **extra: Any) -> dict[str, Any]:
    """A generate body unique to (user, n): no two calls share a cache entry."""
    return {
        "template": TEMPLATE,
        "user": user,
        "variables": {
            "skill": "SQL joins",
            "question": "What does a LEFT JOIN return?",
            "answer": f"All rows of the left table ({user} attempt {n}), with matches or NULLs.",
        },
        **extra,
    }


def v2_marker() -> str:
    """A run of plain text in version 2's prompt that version 1's never contains: the simulator
    fails the answers of requests carrying it (marked fault scripts match on the request body)."""
    registry = deps.templates()
    v1, v2 = registry.get(TEMPLATE, 1), registry.get(TEMPLATE, 2)
    for line in v2.system.splitlines():
        for run in re.findall(r"[A-Za-z][A-Za-z ,.;:()-]{24,}", line):
            if run not in v1.system and run not in v1.user and run not in v2.user:
                return run
    raise AssertionError("skill_assessment v2 has no text of its own to mark")


def assigned_variant(salt: str, user: str) -> str | None:
    experiment = deps.experiment_configs().for_template("demo", TEMPLATE).model_copy(update={"salt": salt})
    return assign(experiment, tenant_id="demo", subject=subject_of("demo-admin", user), requested_version=None).variant


def month_rows(tenant: str = "demo") -> list[dict[str, Any]]:
    rows, _ = deps.repos().ledger.month(tenant, datetime.now(UTC).strftime("%Y-%m"))
    return rows


def test_a_split_is_sticky_per_user_recorded_in_the_ledger_rated_and_reported(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given an admin split of skill_assessment 50/50 between v1 (control) and v2 (concise) …
    configure("demo", rate_limits=LOOSE_LIMITS)
    put = client.request("PUT", PATH.format("demo", TEMPLATE), SPLIT)
    assert put.status == 200, put.body
    assert put.body["mode"] == "split" and put.body["version"] == 1
    assert [v["share"] for v in put.body["variants"]] == [0.5, 0.5]
    # (a reshuffle draws a new salt; one is drawn until both variants have users, so no run is degenerate)
    salts = [deps.experiment_configs().for_template("demo", TEMPLATE, fresh=True).salt]
    while len(salts) < 2 or len({assigned_variant(salts[-1], user) for user in USERS}) < 2:
        put = client.request("PUT", PATH.format("demo", TEMPLATE), {**SPLIT, "reshuffle": True})
        salts.append(deps.experiment_configs().for_template("demo", TEMPLATE, fresh=True).salt)
    assert put.body["version"] == len(salts) and len(set(salts)) == len(salts)
    # … and a provider whose first answer to every v2 prompt breaks the schema (the repair succeeds)
    simulator.set_faults({"marked": {v2_marker(): ["schema_invalid", "ok"] * 2 * len(USERS)}})

    # When each end user generates twice (distinct inputs: no cache hits)
    replies: dict[str, list[dict[str, Any]]] = {}
    for user in USERS:
        for n in range(2):
            reply = client.post("/v1/generate", ask(user, n))
            assert reply.status == 200, reply.body
            replies.setdefault(user, []).append(reply.body)

    # Then every user kept their variant, served at that variant's version
    experiment = deps.experiment_configs().for_template("demo", TEMPLATE, fresh=True)
    version_of = {"control": 1, "concise": 2}
    variant_of: dict[str, str] = {}
    for user, bodies in replies.items():
        variants = {b["variant"] for b in bodies}
        assert len(variants) == 1, (user, variants)
        variant_of[user] = variants.pop()
        assert {b["version"] for b in bodies} == {version_of[variant_of[user]]}
        # And it is the pure assignment of the stored experiment (every environment computes the same)
        expected = assign(experiment, tenant_id="demo", subject=subject_of("demo-admin", user), requested_version=None)
        assert variant_of[user] == expected.variant
    split = Counter(variant_of.values())
    print(f"users per variant: {dict(split)}")
    assert set(split) == {"control", "concise"}

    # And every ledger row of every request carries its request's variant
    rows = month_rows()
    by_request: dict[str, set[Any]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], set()).add((row.get("variant"), row["template"]))
    for bodies in replies.values():
        for body in bodies:
            assert by_request[body["request_id"]] == {(body["variant"], f"{TEMPLATE}@{body['version']}")}
    outcomes = Counter((row.get("variant"), row["outcome"], row.get("error_code")) for row in rows)
    print(f"ledger rows by (variant, outcome, error): {dict(outcomes)}")
    assert outcomes[("concise", "failure", "invalid_model_output")] == 2 * split["concise"]
    assert not any(v == "control" and o == "failure" for v, o, _ in outcomes)

    # When each user rates their first answer (control 4, concise 2), one of them twice
    for user, bodies in replies.items():
        rating = 4 if variant_of[user] == "control" else 2
        reply = client.post("/v1/feedback", {"request_id": bodies[0]["request_id"], "rating": rating, "user": user})
        assert reply.status == 201, reply.body
        assert reply.body["variant"] == variant_of[user] and reply.body["version"] == bodies[0]["version"]
        assert reply.body["template"] == TEMPLATE and reply.body["replaced"] is False
    first = USERS[0]
    again = client.post(
        "/v1/feedback",
        {
            "request_id": replies[first][0]["request_id"],
            "rating": 4 if variant_of[first] == "control" else 2,
            "user": first,
            "comment": "Clear, but the second point was vague.",
            "label": "vague",
        },
    )
    # Then a repeat replaces the user's rating (200), keeping when it was first given
    assert again.status == 200 and again.body["replaced"] is True, again.body
    assert again.body["comment"] == "Clear, but the second point was vague." and again.body["label"] == "vague"
    assert again.body["created_at"] < again.body["updated_at"]

    # And another tenant's key cannot rate (or learn of) this tenant's request: 404 as for an unknown id
    acme = key_of(client, "acme", "member")
    foreign = acme.post("/v1/feedback", {"request_id": replies[first][0]["request_id"], "rating": 1})
    unknown = client.post("/v1/feedback", {"request_id": new_id(), "rating": 1})
    assert (foreign.status, unknown.status) == (404, 404), (foreign.body, unknown.body)
    assert foreign.body["error"]["code"] == unknown.body["error"]["code"] == "unknown_request"
    bad = client.post("/v1/feedback", {"request_id": replies[first][0]["request_id"], "rating": 4.5})
    assert bad.status == 422 and bad.body["error"]["field"] == "rating", bad.body

    # When the tenant reads the report
    report = client.get(f"/v1/experiments/{TEMPLATE}/report")
    assert report.status == 200, report.body
    control, concise = report.body["variants"][:2]
    for v in (control, concise):
        print(
            f"{v['variant']}@{v['version']}: {v['requests']} requests, {v['provider_answers']} answers, "
            f"schema-valid {v['schema_valid_rate']}, fallback {v['fallback_rate']}, "
            f"p50/p95 {v['latency_p50_ms']}/{v['latency_p95_ms']} ms, cost {v['cost_micros']} µUSD "
            f"({v['cost_per_request_micros']}/request), "
            f"feedback {v['feedback']['count']} mean {v['feedback']['mean']}; "
            f"vs first {v['vs_first']}"
        )
    # Then both variants are there, in the configured order, with their counts, validity and ratings
    assert (control["variant"], control["version"], concise["variant"], concise["version"]) == (
        "control",
        1,
        "concise",
        2,
    )
    assert len(report.body["variants"]) == 2  # no other labels were used
    assert control["requests"] == 2 * split["control"] and concise["requests"] == 2 * split["concise"]
    assert control["schema_valid_rate"] == 1.0 and concise["schema_valid_rate"] == 0.5
    assert concise["provider_answers"] == 2 * concise["requests"]
    assert control["feedback"]["count"] == split["control"] and control["feedback"]["mean"] == 4.0
    assert concise["feedback"]["count"] == split["concise"] and concise["feedback"]["mean"] == 2.0
    assert concise["vs_first"]["schema_valid_rate"] == -0.5 and concise["vs_first"]["mean_rating"] == -2.0
    assert control["vs_first"] is None and control["fallback_rate"] == 0.0
    assert control["cost_micros"] > 0 and control["latency_p50_ms"] is not None
    assert sum(int(r["cost_micros"]) for r in rows) == control["cost_micros"] + concise["cost_micros"]
    # And a member key reads its own tenant's report only
    assert acme.get(f"/v1/experiments/{TEMPLATE}/report?tenant=demo").status == 403
    assert acme.get(f"/v1/experiments/{TEMPLATE}/report").body["variants"] == []
    # And the range is on when rows were written: yesterday had none (the configured arms are still listed)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    before = client.get(f"/v1/experiments/{TEMPLATE}/report?since={yesterday}&until={yesterday}").body
    assert [(v["variant"], v["requests"], v["feedback"]["count"]) for v in before["variants"]] == [
        ("control", 0, 0),
        ("concise", 0, 0),
    ]
    too_long = client.get(f"/v1/experiments/{TEMPLATE}/report?since=2026-01-01&until=2026-11-01")
    assert too_long.status == 400 and too_long.body["error"]["code"] == "invalid_range", too_long.body


def test_member_keys_cannot_change_experiments_and_bad_input_is_a_clear_4xx(client: Client, stack: LocalStack) -> None:
    member = key_of(client, "demo", "member", user="m1")
    # A member key of the tenant itself can neither read nor change its experiments
    assert member.request("PUT", PATH.format("demo", TEMPLATE), SPLIT).status == 403
    assert member.get(PATH.format("demo", TEMPLATE)).status == 403
    cases: list[tuple[str, str, Any, int, str, str]] = [
        ("demo", TEMPLATE, {"variants": [{"name": "a", "version": 1, "weight": 1}] * 2}, 422, "variants", "unique"),
        ("demo", TEMPLATE, {"variants": [{"name": "request", "version": 1, "weight": 1}]}, 422, "variants", "reserved"),
        ("demo", TEMPLATE, {"variants": [{"name": "a", "version": 1, "weight": 0}]}, 422, "variants", "more than 0"),
        ("demo", TEMPLATE, {"pinned_version": 9}, 422, "pinned_version", "no version 9"),
        ("demo", TEMPLATE, {"variants": [*SPLIT["variants"], THIRD]}, 422, "variants.2.version", "no version 7"),
        ("demo", TEMPLATE, {"pinned_version": 1, **SPLIT}, 422, "body", "not both"),
        ("demo", TEMPLATE, {"pinned": 1}, 422, "pinned", "not allowed"),
        ("demo", "no_such_template", {}, 404, "template", "does not exist"),
        ("nobody", TEMPLATE, {}, 404, "tenant_id", "no tenant"),
    ]
    for tenant, template, body, status, field, message in cases:
        reply = client.request("PUT", PATH.format(tenant, template), body)
        assert reply.status == status, (body, reply.body)
        assert reply.body["error"]["field"] == field and message in reply.body["error"]["message"], (body, reply.body)
    codes = {client.request("PUT", PATH.format("demo", TEMPLATE), {"pinned_version": 9}).body["error"]["code"]}
    assert codes == {"unknown_template_version"}
    # And nothing was stored by the refused writes
    current = client.get(PATH.format("demo", TEMPLATE))
    assert current.status == 200 and current.body["version"] == 0 and current.body["mode"] == "none"


def test_pin_request_version_ending_the_experiment_locales_and_jobs(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    configure("demo", rate_limits=LOOSE_LIMITS)
    latest = max(deps.templates().versions(TEMPLATE))
    # Given a pin on version 1
    assert client.request("PUT", PATH.format("demo", TEMPLATE), {"pinned_version": 1}).status == 200
    pinned = client.post("/v1/generate", ask("pin", 0)).body
    # Then requests without a version get it, labelled; a named version still wins
    named = client.post("/v1/generate", ask("pin", 1, version=2)).body
    assert (pinned["version"], pinned["variant"]) == (1, "pinned")
    assert (named["version"], named["variant"]) == (2, "request")
    # And an asynchronous job takes the same path: its result and rows carry the pin
    job = client.post("/v1/jobs", ask("pin", 2))
    assert job.status == 202, job.body
    ended = wait_until_ended(client, job.body["job_id"])
    assert ended["status"] == "succeeded", ended
    assert (ended["result"]["version"], ended["result"]["variant"]) == (1, "pinned")
    job_rows = [r for r in month_rows() if r["request_id"] == job.body["job_id"]]
    assert job_rows and {r.get("variant") for r in job_rows} == {"pinned"}
    # When the experiment is ended with {}, the latest version serves again, unlabelled
    ended_put = client.request("PUT", PATH.format("demo", TEMPLATE), {})
    assert ended_put.body["mode"] == "none" and ended_put.body["version"] == 2
    plain = client.post("/v1/generate", ask("pin", 3)).body
    assert (plain["version"], plain["variant"]) == (latest, None)

    # Given project_insights in English (default), French and Spanish
    simulator.set_faults({"marked": {FRENCH_MARKER: ["latency=1"] * 5}})
    project = {
        "template": "project_insights",
        "variables": {"project_name": "Atlas", "description": "Migrating billing to the new platform by June."},
    }
    # When a French-Canadian caller asks, then the French template serves (the provider saw French text)
    french = client.post("/v1/generate", {**project, "locale": "fr-ca"})
    assert french.status == 200, french.body
    assert french.body["locale"] == "fr" and french.body["version"] == 1
    assert simulator.stats()["faults_by_kind"].get("latency=1") == 1
    # And a locale without a variant gets the default, which says which it is
    german = client.post("/v1/generate", {**project, "locale": "de", "variables": {**project["variables"], "x": 1}})
    assert german.status == 422  # (an undeclared variable is still refused)
    german = client.post("/v1/generate", {**project, "locale": "de"})
    assert german.body["locale"] == "en" and simulator.stats()["faults_by_kind"].get("latency=1") == 1
    rows = {r["request_id"]: r for r in month_rows()}
    assert rows[french.body["request_id"]]["locale"] == "fr" and rows[german.body["request_id"]]["locale"] == "en"
    # A malformed locale is a validation error naming the field
    bad = client.post("/v1/generate", {**project, "locale": "french"})
    assert bad.status == 422 and bad.body["error"]["field"] == "locale", bad.body
    print(
        f"pin → v{pinned['version']} ({pinned['variant']}); named v2 → {named['variant']}; job → "
        f"{ended['result']['variant']}; ended → v{plain['version']}; fr-ca → {french.body['locale']}; "
        f"de → {german.body['locale']}"
    )
