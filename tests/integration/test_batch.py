"""POST /v1/batch: up to ten generate requests, concurrently, within one deadline, each on its own."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import Client
from tests.integration.test_generate import SKILL, ledger_rows


def skill(marker: str) -> dict[str, Any]:
    """A distinct skill_assessment request (no cache hits); `marker` can key a simulator fault."""
    variables = {**SKILL["variables"], "answer": f"All rows of the left table ({marker})."}  # type: ignore[dict-item]
    return {**SKILL, "variables": variables}


def test_mixed_good_and_bad_items_each_get_their_own_answer(client: Client, stack: Any, simulator: Any) -> None:
    # Item 5's provider fails on every hop: it degrades to the template's static answer, alone.
    simulator.set_faults({"marked": {"item-five": ["500", "500", "500", "500"]}})
    requests: list[dict[str, Any]] = [skill(f"item-{n}") for n in ("zero", "one", "two", "three", "four", "five")]
    requests += [
        {"template": "no_such_template", "variables": {}},
        {"template": "skill_assessment", "variables": {"skill": "SQL"}},
        {**skill("item-eight"), "temperature": 0.5},
        {**skill("item-nine"), "version": 1},
    ]
    reply = client.post("/v1/batch", {"requests": requests})
    assert reply.status == 200, reply.body
    items = reply.body["items"]
    statuses = [i["status"] for i in items]
    print(f"\nbatch statuses: {statuses}; succeeded {reply.body['succeeded']}, failed {reply.body['failed']}")
    assert [i["index"] for i in items] == list(range(10))
    assert statuses == [200, 200, 200, 200, 200, 200, 404, 422, 422, 200]
    assert items[6]["error"]["code"] == "unknown_template"
    # An item's error is what POST /v1/generate would have answered for it, field names included.
    assert items[7]["error"]["code"] == "validation_error" and items[7]["error"]["field"] == "variables.question"
    assert items[8]["error"]["field"] == "temperature"
    assert items[5]["result"]["served_by"] == "static_answer"
    assert all(items[i]["result"]["served_by"] == "primary" for i in (0, 1, 2, 3, 4, 9))
    assert (reply.body["succeeded"], reply.body["failed"]) == (7, 3)
    # Items go through prompt-version selection like /v1/generate: a named version is the "request" variant.
    assert (items[9]["result"]["version"], items[9]["result"]["variant"]) == (1, "request")

    # Each item is its own request on the ledger: `<batch id>-<index>`, billed once.
    batch_id = reply.body["request_id"]
    rows = [r for r in ledger_rows(stack) if r["request_id"].startswith(batch_id)]
    charged = {r["request_id"] for r in rows if r["outcome"] == "success"}
    assert charged == {f"{batch_id}-{i:02d}" for i in (0, 1, 2, 3, 4, 9)}
    assert [items[i]["result"]["request_id"] for i in (0, 9)] == [f"{batch_id}-00", f"{batch_id}-09"]
    assert reply.body["cost_micros"] == sum(r["cost_micros"] for r in rows) > 0


def test_items_run_concurrently_within_the_callers_deadline(client: Client, simulator: Any) -> None:
    # Every provider call takes 1.2 s: ten in sequence would need 12 s; the deadline is 5 s.
    simulator.set_faults({"latency_ms": 1200})
    started = time.perf_counter()
    reply = client.post("/v1/batch", {"requests": [skill(f"slow-{i}") for i in range(10)], "deadline_ms": 5000})
    elapsed = time.perf_counter() - started
    served = [i["result"]["served_by"] if i["result"] else i["error"]["code"] for i in reply.body["items"]]
    print(f"\n10 items x 1.2 s provider latency: {elapsed:.2f} s for the batch; served {served}")
    assert reply.status == 200 and served == ["primary"] * 10


def test_a_hanging_item_is_cut_at_the_deadline_and_the_others_answer(client: Client, simulator: Any) -> None:
    simulator.set_faults({"marked": {"hangs-forever": ["timeout", "timeout", "timeout", "timeout"]}, "hang_s": 30})
    started = time.perf_counter()
    reply = client.post(
        "/v1/batch", {"requests": [skill("hangs-forever"), skill("quick-one"), skill("quick-two")], "deadline_ms": 4000}
    )
    elapsed = time.perf_counter() - started
    items = reply.body["items"]
    first = items[0]["result"] or items[0]["error"]
    print(f"\nhanging item: answered in {elapsed:.2f} s with a 4 s deadline; item 0 served by {first.get('served_by')}")
    assert reply.status == 200 and elapsed < 6
    assert [i["status"] for i in items] == [200, 200, 200]
    assert items[0]["result"]["served_by"] == "static_answer"
    assert [i["result"]["served_by"] for i in items[1:]] == ["primary", "primary"]


def test_batch_shape_errors_name_the_field(client: Client, simulator: Any) -> None:
    for body, field in (
        ({"requests": []}, "requests"),
        ({"requests": [skill(f"many-{i}") for i in range(11)]}, "requests"),
        ({"requests": [skill("x")], "deadline_ms": 100}, "deadline_ms"),
        ({"items": [skill("x")]}, "requests"),
    ):
        reply = client.post("/v1/batch", body)
        assert reply.status == 422 and reply.body["error"]["field"] == field, (body, reply.body)
    assert simulator.stats()["requests"] == 0
