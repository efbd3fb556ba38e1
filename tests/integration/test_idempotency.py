"""Idempotency-Key on POST /v1/generate: a client retry never runs or bills twice.

On the embedded runtime (moto, handlers in-process, the simulated provider). Figures printed:
provider calls and how concurrent duplicates were answered.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from aigateway import deps
from aigateway.errors import IdempotencyInProgress
from aigateway.governance.config import RateLimitRule
from aigateway.idempotency import Reply as Stored
from aigateway.idempotency import once
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client, Reply
from tests.integration.governance_support import LOOSE_LIMITS, configure, ledger_rows, skill
from tests.integration.test_generate import SKILL

OTHER_BODY = skill(1)  # the same template, another answer


def post(client: Client, key: str | None, body: dict[str, Any] = SKILL) -> Reply:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/generate", body, headers=headers)


def idempotency_records() -> list[dict[str, Any]]:
    table = deps.get_settings().idempotency_table
    assert table, "the local runtime must export IDEMPOTENCY_TABLE"
    items: list[dict[str, Any]] = boto3.client("dynamodb").scan(TableName=table)["Items"]
    return items


def test_same_key_twice_calls_the_provider_once_bills_once_and_answers_the_same(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a generate request sent with an Idempotency-Key
    first = post(client, "order-42")
    assert first.status == 200, first.body
    # When the client retries it with the same key and body
    second = post(client, "order-42")
    # Then the provider was called once and one ledger row was written (a cache hit would add one)
    rows = ledger_rows("demo")
    print(f"provider calls: {simulator.stats()['requests']}, ledger rows: {len(rows)}")
    assert simulator.stats()["requests"] == 1
    assert [(r["outcome"], r["request_id"]) for r in rows] == [("success", first.body["request_id"])]
    # And the retry gets the first answer (its request id included), marked as a replay
    assert second.status == 200 and second.body == first.body
    assert second.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    # … with the first answer's rate-limit headers, while x-request-id names this request
    assert second.headers["x-ratelimit-limit"] == first.headers["x-ratelimit-limit"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    # And exactly one record was stored, completed, with a 24 h expiry
    (record,) = idempotency_records()
    assert record["status"]["S"] == "COMPLETED"
    ttl_s = int(record["expiration"]["N"]) - time.time()
    assert 24 * 3600 - 60 < ttl_s <= 24 * 3600
    assert "order-42" not in record["id"]["S"], "the client's key is stored only as a hash"


def test_without_a_key_every_request_runs(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given no Idempotency-Key / When the same body is sent twice
    first, second = post(client, None), post(client, None)
    # Then both ran (the second is an ordinary cache hit), and nothing was stored for idempotency
    assert first.status == second.status == 200
    assert second.body["cached"] is True and second.body["request_id"] != first.body["request_id"]
    assert "idempotent-replayed" not in second.headers
    assert len(ledger_rows("demo")) == 2 and idempotency_records() == []


def test_same_key_with_a_different_body_is_refused_422(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given a key already used for one request
    assert post(client, "k-reuse").status == 200
    # When it is sent with a different body
    reply = post(client, "k-reuse", OTHER_BODY)
    # Then 422 idempotency_key_reused, and the different request did not run
    assert reply.status == 422, reply.body
    assert reply.body["error"]["code"] == "idempotency_key_reused"
    assert reply.body["error"]["field"] == "Idempotency-Key"
    assert simulator.stats()["requests"] == 1 and len(ledger_rows("demo")) == 1


def test_the_same_key_from_another_tenant_runs_independently(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given tenant demo used key "shared-key"
    mine = post(client, "shared-key")
    other = seed_demo_tenant("aig_other_tenant_key_idem_0001", tenant_id="acme", user_id="acme-user", role="member")
    # When tenant acme sends the same key and body
    theirs = post(Client(client.gateway, other.api_key), "shared-key")
    # Then acme's request ran for acme: its own provider call, its own ledger row, no replay
    print(f"provider calls: {simulator.stats()['requests']} (one per tenant)")
    assert mine.status == theirs.status == 200
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.body["request_id"] != mine.body["request_id"] and theirs.body["cached"] is False
    assert simulator.stats()["requests"] == 2
    assert [r["request_id"] for r in ledger_rows("acme")] == [theirs.body["request_id"]]
    assert len(idempotency_records()) == 2


def test_a_request_refused_by_a_rate_limit_is_not_stored_so_its_retry_runs(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a per-key limit of 1 request per 2 s, already used by a request without a key
    limit = RateLimitRule(scope="key", limit=1, period_s=2)
    configure("demo", rate_limits=(*(r for r in LOOSE_LIMITS if r.scope != "key"), limit))
    assert post(client, None, OTHER_BODY).status == 200
    # When a keyed request is refused (429) …
    refused = post(client, "after-429")
    assert refused.status == 429, refused.body
    assert idempotency_records() == [], "a failure must not leave a record"
    # … and retried with the same key once the limit allows
    time.sleep(2.1)
    retried = post(client, "after-429")
    # Then the retry ran (not a replay of the 429)
    assert retried.status == 200, retried.body
    assert "idempotent-replayed" not in retried.headers
    assert simulator.stats()["requests"] == 2


def test_a_failure_after_the_provider_call_is_not_stored_so_the_retry_runs(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a provider whose content filter refuses the first call (an error no fallback can mask:
    # transient 5xx are retried and then degrade to a labelled 200, which is a stored success)
    simulator.set_faults({"script": ["content_filter"]})
    # When a keyed request fails with it …
    failed = post(client, "after-filter")
    calls_failed = simulator.stats()["requests"]
    assert failed.status == 422 and failed.body["error"]["code"] == "content_filtered", failed.body
    assert calls_failed == 1 and idempotency_records() == []
    # … and is retried with the same key
    retried = post(client, "after-filter")
    # Then the retry called the provider again and succeeded, and only then was a record stored
    print(f"provider calls: {calls_failed} failed, {simulator.stats()['requests'] - calls_failed} on the retry")
    assert retried.status == 200, retried.body
    assert "idempotent-replayed" not in retried.headers
    assert simulator.stats()["requests"] > calls_failed
    assert [r["status"]["S"] for r in idempotency_records()] == ["COMPLETED"]


def test_concurrent_duplicates_run_once_and_the_rest_replay_or_get_409(
    client: Client, stack: LocalStack, simulator: Any
) -> None:
    # Given a slow provider, so duplicates overlap the first call
    simulator.set_faults({"latency_ms": 800})
    # When 8 requests with the same key arrive at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: post(client, "burst-1"), range(8)))
    # Then the provider was called exactly once and one ledger row written
    ran = [r for r in replies if r.status == 200 and "idempotent-replayed" not in r.headers]
    replayed = [r for r in replies if r.status == 200 and r.headers.get("idempotent-replayed") == "true"]
    in_progress = [r for r in replies if r.status == 409]
    print(
        f"8 concurrent duplicates: {len(ran)} ran, {len(replayed)} replayed, {len(in_progress)} got 409; "
        f"provider calls: {simulator.stats()['requests']}"
    )
    assert simulator.stats()["requests"] == 1 and len(ledger_rows("demo")) == 1
    assert len(ran) == 1 and len(ran) + len(replayed) + len(in_progress) == 8
    assert in_progress, "with an 800 ms provider some duplicates must find the first still running"
    # And each 409 says so and when to retry; each replay is the first answer
    for reply in in_progress:
        assert reply.body["error"]["code"] == "idempotency_in_progress"
        assert reply.headers["retry-after"] == "1"
    assert all(r.body == ran[0].body for r in replayed)
    # And a retry after the first finished is a replay
    after = post(client, "burst-1")
    assert after.status == 200 and after.headers.get("idempotent-replayed") == "true" and after.body == ran[0].body


def test_invalid_keys_are_refused_400_before_anything_runs(client: Client, stack: LocalStack, simulator: Any) -> None:
    # Given keys that are empty, too long, or not visible ASCII
    for key in ["", "x" * 256, "has space", "tab\there", "caf\u00e9"]:
        # When sent
        reply = post(client, key)
        # Then 400 invalid_idempotency_key, and nothing ran or was stored
        assert reply.status == 400, (key, reply.body)
        assert reply.body["error"]["code"] == "invalid_idempotency_key", key
    assert simulator.stats()["requests"] == 0 and ledger_rows("demo") == [] and idempotency_records() == []
    # And the longest valid key (255 visible characters) works
    assert post(client, "~" * 255).status == 200


@dataclass
class FakeLambdaContext:
    remaining_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def once_(key: str, run: Any, *, remaining_ms: int = 60_000, route: str = "POST /v1/test") -> Stored:
    return once(
        deps.idempotency_store,
        tenant_id="demo",
        route=route,
        key=key,
        payload={"n": 1},
        run=run,
        lambda_context=FakeLambdaContext(remaining_ms),
    )


def test_an_in_progress_record_expires_with_its_invocation_not_after_24_hours(stack: LocalStack) -> None:
    # Given a call still running under an invocation that has 300 ms left (as if about to time out)
    started, release = threading.Event(), threading.Event()

    def stuck() -> Stored:
        started.set()
        release.wait(10)
        return Stored(200, {"run": "first"}, {})

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(once_, "stuck-key", stuck, remaining_ms=300)
        assert started.wait(5)
        try:
            # When a duplicate arrives while that invocation is alive
            # Then it is told to retry (409)
            with pytest.raises(IdempotencyInProgress) as refused:
                once_("stuck-key", lambda: Stored(200, {"run": "second"}, {}))
            assert refused.value.headers == {"Retry-After": "1"}
            # When it arrives after that invocation's deadline (Lambda would have ended it)
            time.sleep(0.5)
            second = once_("stuck-key", lambda: Stored(200, {"run": "second"}, {}))
            # Then it runs, instead of waiting out the record's 24 h
            assert second == Stored(200, {"run": "second"}, {})
        finally:
            release.set()
            first.result()


def test_the_same_key_on_another_route_is_another_record(stack: LocalStack) -> None:
    # Given a key used on one route
    calls: list[str] = []

    def run(name: str) -> Any:
        def call() -> Stored:
            calls.append(name)
            return Stored(200, {"route": name}, {})

        return call

    once_("per-route", run("a"), route="POST /v1/a")
    # When the same key is used on another route, then again on the first
    on_b = once_("per-route", run("b"), route="POST /v1/b")
    again_a = once_("per-route", run("a2"), route="POST /v1/a")
    # Then the second route ran its own call, and the first route replayed its answer
    assert calls == ["a", "b"]
    assert on_b.body == {"route": "b"} and "Idempotent-Replayed" not in on_b.headers
    assert again_a == Stored(200, {"route": "a"}, {"Idempotent-Replayed": "true"})
