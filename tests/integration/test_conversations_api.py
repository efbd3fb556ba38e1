"""Conversations on the embedded runtime: chat handler → aigateway.conversations → completions →
simulated provider, history in moto's State table.

The simulator counts prompt tokens with the same tokenizer as the gateway and refuses a request
over the model's window (400 context_length_exceeded), so a conversation that keeps answering past
128k tokens of history, and `tokens_used == usage.input_tokens`, are checked against the provider.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from aigateway import deps
from aigateway.conversations import SUMMARY_LABEL, SUMMARY_TEMPLATE, message_tokens
from aigateway.llm import tokens
from aigateway.llm.catalog import get_model
from aigateway.llm.simulated import SimulatedProvider
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client, Reply

CONVERSATIONS = "/v1/conversations"
WORDS = "amber basil cedar delta ember fjord garnet harbor indigo juniper kelp lumen mosaic nectar".split()  # noqa: SIM905


def sized(n_tokens: int, seed: int) -> str:
    """Distinct prose of `n_tokens` tokens (every message differs, so nothing is a repeat)."""
    rng = random.Random(seed)
    text = " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 999)}" for _ in range(n_tokens // 2 + 10))
    return tokens.truncate_text(text, "gpt-4o-mini", n_tokens)


def create(client: Client, **body: Any) -> str:
    reply = client.post(CONVERSATIONS, body)
    assert reply.status == 201, reply.body
    assert reply.headers["location"] == f"{CONVERSATIONS}/{reply.body['conversation_id']}"
    return str(reply.body["conversation_id"])


def say(client: Client, conversation_id: str, content: str, **body: Any) -> Reply:
    return client.post(f"{CONVERSATIONS}/{conversation_id}/messages", {"content": content, **body})


def ledger_rows(tenant: str = "demo") -> list[dict[str, Any]]:
    rows, _ = deps.repos().ledger.month(tenant, datetime.now(UTC).strftime("%Y-%m"))
    return rows


def state_items(conversation_id: str) -> list[dict[str, Any]]:
    """Every State item of a conversation's partition (whoever owns it)."""
    table = deps.get_settings().state_table
    raw = deps.dynamo().client.scan(TableName=table)["Items"]
    return [i for i in raw if i["pk"]["S"].endswith(f"#CONV#{conversation_id}")]


@pytest.fixture
def received(simulator: SimulatedProvider, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every chat request body the simulated provider receives, in order."""
    bodies: list[dict[str, Any]] = []
    original: Callable[..., Any] = simulator.handle

    def recording(method: str, path: str, headers: Any, body: bytes) -> Any:
        if path.endswith("/chat/completions"):
            bodies.append(json.loads(body))
        return original(method, path, headers, body)

    monkeypatch.setattr(simulator, "handle", recording)
    return bodies


def test_a_conversation_longer_than_the_window_keeps_answering_summarised_with_pins_intact(
    client: Client, stack: LocalStack, received: list[dict[str, Any]]
) -> None:
    # Given a conversation with a 120k-token budget on gpt-4o-mini (window 128k) and a pinned fact
    window = get_model("gpt-4o-mini").context_window
    cid = create(client, system="You are a careful research assistant.", token_budget=120_000, max_tokens=800)
    pin = "Remember for the whole conversation: the project codename is BLUEFIN-7."
    first = say(client, cid, pin, pinned=True)
    assert first.status == 200, first.body
    # When twelve ~12k-token messages follow (history well past the model's window)
    replies, calls_before = [first.body], [0]
    for turn in range(12):
        calls_before.append(len(received))
        reply = say(client, cid, sized(12_000, turn))
        assert reply.status == 200, (turn, reply.body)
        replies.append(reply.body)
    # Then every turn answered, and no prompt the provider received exceeded the budget or the window
    main = [r for r in received if r["model"] == "gpt-4o-mini"]
    summariser = [r for r in received if r["model"] == "gpt-4.1-nano"]
    sent = [tokens.count_messages(r["messages"], "gpt-4o-mini") for r in main]
    history_tokens = sum(m["tokens"] for m in client.get(f"{CONVERSATIONS}/{cid}?limit=200").body["messages"])
    print(
        f"{len(replies)} turns, stored history {history_tokens} tokens (window {window}); largest prompt sent "
        f"{max(sent)} tokens; summariser calls {len(summariser)}; "
        f"tokens saved on the last turn {replies[-1]['context']['tokens_saved']}"
    )
    assert history_tokens > window
    assert len(main) == 13 and max(sent) <= 120_000 and max(sent) + 800 <= window
    # And tokens_used is exactly what the provider counted, turn by turn
    for body, count in zip(replies, sent, strict=True):
        assert body["context"]["tokens_used"] == body["usage"]["input_tokens"] == count
    # And the summary was made by the cheap model once older turns fell out, then reused as is
    folds = [i for i, b in enumerate(replies) if b["context"]["summary_updated"]]
    assert folds, "history past the budget must be summarised"
    fold = folds[0]
    assert replies[fold]["context"]["summary_applied"] and replies[fold]["context"]["summarised_messages"] > 0
    assert replies[fold]["summary_cost_micros"] > 0
    after = replies[fold + 1]["context"]
    assert after["summary_applied"] and not after["summary_updated"], "the next turn reuses the stored summary"
    assert after["summarised_messages"] == replies[fold]["context"]["summarised_messages"]
    assert calls_before[fold + 1] - calls_before[fold] == 2, "the fold turn: one summary + one reply"
    nano_between = [
        r for r in received[calls_before[fold + 1] : calls_before[fold + 2]] if r["model"] == "gpt-4.1-nano"
    ]
    assert nano_between == [], "no second summariser call when nothing new fell out"
    rows = [r for r in ledger_rows() if r.get("template") == SUMMARY_TEMPLATE]
    assert (
        rows and {r["model"] for r in rows} == {"gpt-4.1-nano"} and all(r["feature"] == "conversations" for r in rows)
    )
    # And the pinned message was sent on the last turn, right after the system prompt, then the summary
    last = main[-1]["messages"]
    assert last[1] == {"role": "user", "content": pin}
    assert last[2]["role"] == "system" and last[2]["content"].startswith(SUMMARY_LABEL)
    # And tokens_saved is the verbatim history minus what was sent (system + every stored message + new)
    conversation = client.get(f"{CONVERSATIONS}/{cid}?limit=200").body
    stored = conversation["messages"]
    verbatim = message_tokens("system", conversation["system"], "gpt-4o-mini") + sum(m["tokens"] for m in stored[:-2])
    verbatim += stored[-2]["tokens"] + tokens.REPLY_PRIMING_TOKENS
    assert replies[-1]["context"]["tokens_saved"] == verbatim - replies[-1]["context"]["tokens_used"]
    assert conversation["summary"]["model"] == "gpt-4.1-nano" and conversation["pinned_message_ids"] == ["msg_1"]
    assert conversation["totals"]["turns"] == 13 and conversation["totals"]["summaries"] == len(folds)


def test_a_failed_summariser_drops_old_turns_for_that_turn_and_folds_them_later(
    client: Client, stack: LocalStack, simulator: SimulatedProvider, received: list[dict[str, Any]]
) -> None:
    # Given a small budget, so the fourth turn no longer fits, and a summariser that fails
    cid = create(client, system="Be brief.", token_budget=1_200, max_tokens=100)
    for turn in range(3):
        assert say(client, cid, sized(300, 100 + turn)).status == 200
    # (marked by the summariser's instructions: its summaries quote the messages, so they would
    # carry a marker taken from the messages into later replies' prompts)
    simulator.set_faults({"marked": {"You keep a running summary": ["500"] * 4}})
    # When the fourth message arrives
    degraded = say(client, cid, sized(300, 103))
    # Then the user still gets the reply; older turns were left out without a summary, and it says so
    assert degraded.status == 200, degraded.body
    context = degraded.body["context"]
    print(f"summariser down: {context}")
    assert not context["summary_applied"] and context["summary_error"] == "provider_error"
    assert context["dropped_messages"] > 0 and context["tokens_used"] <= 1_200
    # And when the summariser is back, the next turn folds those turns too (they were kept pending)
    simulator.reset_faults()
    recovered = say(client, cid, sized(300, 104))
    assert recovered.status == 200, recovered.body
    assert recovered.body["context"]["summary_updated"] and recovered.body["context"]["summary_applied"]
    summary_prompt = [r for r in received if r["model"] == "gpt-4.1-nano"][-1]["messages"][1]["content"]
    assert "[user #1]" in summary_prompt and "[assistant #2]" in summary_prompt
    summary = client.get(f"{CONVERSATIONS}/{cid}").body["summary"]
    assert (
        summary["summarised_messages"]
        == recovered.body["context"]["summarised_messages"]
        >= context["dropped_messages"]
    )


def test_a_summary_made_for_a_turn_that_then_fails_is_kept_and_reused_by_the_retry(
    client: Client, simulator: SimulatedProvider, received: list[dict[str, Any]]
) -> None:
    # Given three turns under a small budget, so the fourth folds, and a reply that fails on every hop
    cid = create(client, system="Be brief.", token_budget=1_200, max_tokens=100)
    for turn in range(3):
        assert say(client, cid, sized(300, 200 + turn)).status == 200
    before = client.get(f"{CONVERSATIONS}/{cid}").body["totals"]
    message = "REPLY-FAILS " + sized(300, 203)
    simulator.set_faults({"marked": {"REPLY-FAILS": ["500"] * 40}})
    # When the fourth message's summary is made but its reply fails
    failed = say(client, cid, message)
    nano = [r for r in received if r["model"] == "gpt-4.1-nano"]
    # Then the caller gets the failure, and the summary it paid for is stored, with its cost
    assert failed.status == 502 and failed.body["error"]["code"] == "provider_error", failed.body
    assert len(nano) == 1, "the fold ran once"
    kept = client.get(f"{CONVERSATIONS}/{cid}").body
    summary_rows = [r for r in ledger_rows() if r.get("template") == SUMMARY_TEMPLATE and r["outcome"] == "success"]
    print(f"after the failed turn: totals {kept['totals']}, summary covers {kept['summary']['summarised_messages']}")
    assert kept["summary"] is not None and kept["totals"]["summaries"] == 1
    assert kept["totals"]["turns"] == before["turns"] == 3 and len(kept["messages"]) == 6, "no message of the turn"
    assert kept["totals"]["cost_micros"] - before["cost_micros"] == sum(r["cost_micros"] for r in summary_rows) > 0
    # And the retry answers with that summary, without a second summariser call
    simulator.reset_faults()
    retried = say(client, cid, message)
    assert retried.status == 200, retried.body
    assert retried.body["context"]["summary_applied"] and not retried.body["context"]["summary_updated"]
    assert len([r for r in received if r["model"] == "gpt-4.1-nano"]) == 1


def test_concurrent_messages_to_one_conversation_never_interleave_or_get_lost(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    # Given a conversation and a provider slow enough for messages to overlap
    cid = create(client, token_budget=8_000)
    simulator.set_faults({"latency_ms": 150})
    busy = [0]
    lock = threading.Lock()

    def send(n: int) -> Reply:
        # A client retries a 409 conversation_busy (sooner than its Retry-After, to keep the test short).
        while True:
            reply = say(client, cid, f"message number {n}: {sized(20, n)}")
            if reply.status != 409:
                return reply
            assert reply.body["error"]["code"] == "conversation_busy" and reply.headers["retry-after"] == "1"
            with lock:
                busy[0] += 1
            time.sleep(0.05)

    # When six clients post at the same moment
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(send, range(6)))
    # Then every message was answered once, stored in whole turns, none lost, none interleaved
    assert all(r.status == 200 for r in replies), [r.body for r in replies]
    messages = client.get(f"{CONVERSATIONS}/{cid}").body["messages"]
    ids = [m["message_id"] for m in messages]
    roles = [m["role"] for m in messages]
    interleaved = sum(
        1
        for user, reply in zip(messages[::2], messages[1::2], strict=True)
        if user["content"].split(":")[0] not in reply["content"]
    )
    lost = 6 - len({m["content"] for m in messages if m["role"] == "user"})
    print(
        f"6 concurrent messages: {busy[0]} answered 409 conversation_busy (then retried), "
        f"{simulator.stats()['requests']} provider calls, {len(messages)} messages stored, lost {lost}, "
        f"replies out of order {interleaved}"
    )
    assert ids == [f"msg_{n}" for n in range(1, 13)] and roles == ["user", "assistant"] * 6
    assert lost == 0 and interleaved == 0
    assert busy[0] > 0, "overlapping messages must find the conversation busy"
    assert simulator.stats()["requests"] == 6, "a refused message is refused before any provider call"
    assert len([r for r in ledger_rows() if r["feature"] == "conversations"]) == 6


def test_other_users_and_tenants_cannot_see_post_pin_or_delete_it(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    # Given the demo user's conversation with one turn
    cid = create(client, title="Private plans")
    assert say(client, cid, "my private plan").status == 200
    colleague = Client(client.gateway, seed_demo_tenant("aig_conv_colleague_key_0001", user_id="colleague").api_key)
    stranger = Client(
        client.gateway, seed_demo_tenant("aig_conv_stranger_key_00001", tenant_id="acme", user_id="demo-admin").api_key
    )
    calls = simulator.stats()["requests"]
    # When another user of the tenant, and a user of another tenant with the same user id, try
    for other in (colleague, stranger):
        attempts = [
            other.get(f"{CONVERSATIONS}/{cid}"),
            say(other, cid, "let me in"),
            other.request("PATCH", f"{CONVERSATIONS}/{cid}/messages/msg_1", {"pinned": True}),
            other.request("DELETE", f"{CONVERSATIONS}/{cid}"),
        ]
        # Then each is 404 conversation_not_found, as if it did not exist, and their list is empty
        assert [(r.status, r.body["error"]["code"]) for r in attempts] == [(404, "conversation_not_found")] * 4
        assert other.get(CONVERSATIONS).body["items"] == []
    # And nothing reached the provider, and the owner's conversation is intact
    assert simulator.stats()["requests"] == calls
    mine = client.get(f"{CONVERSATIONS}/{cid}").body
    assert len(mine["messages"]) == 2 and mine["pinned_message_ids"] == [] and mine["title"] == "Private plans"


def test_delete_removes_every_item_and_keeps_the_ledger(client: Client, stack: LocalStack) -> None:
    # Given a conversation with messages and a summary (a small budget makes it fold)
    cid = create(client, token_budget=700, max_tokens=60)
    for turn in range(5):
        assert say(client, cid, sized(180, 200 + turn)).status == 200
    before = state_items(cid)
    assert any(i["sk"]["S"] == "SUMMARY" for i in before), "the small budget must have produced a summary"
    rows = len(ledger_rows())
    # When it is deleted
    deleted = client.request("DELETE", f"{CONVERSATIONS}/{cid}")
    # Then 204, not one item of it is left, it is gone from reads and the list, and a second delete is 404
    print(f"delete: {len(before)} items before, {len(state_items(cid))} after")
    assert deleted.status == 204 and state_items(cid) == []
    assert client.get(f"{CONVERSATIONS}/{cid}").status == 404
    assert say(client, cid, "anyone there?").body["error"]["code"] == "conversation_not_found"
    assert client.get(CONVERSATIONS).body["items"] == []
    assert client.request("DELETE", f"{CONVERSATIONS}/{cid}").status == 404
    # And the ledger (billing records, no content) is kept
    assert len(ledger_rows()) == rows


def test_a_delete_during_a_turn_wins_and_the_turn_stores_nothing(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    # Given a turn in flight (slow provider)
    cid = create(client)
    assert say(client, cid, "first message").status == 200
    simulator.set_faults({"latency_ms": 600})
    with ThreadPoolExecutor(max_workers=1) as pool:
        turn = pool.submit(say, client, cid, "second message")
        time.sleep(0.3)
        # When the conversation is deleted meanwhile
        deleted = client.request("DELETE", f"{CONVERSATIONS}/{cid}")
        answered = turn.result()
    # Then the delete succeeds, the turn finds the conversation gone, and no item is left behind
    print(f"turn during delete: {answered.status} {answered.body['error']['code']}; items left {len(state_items(cid))}")
    assert deleted.status == 204
    assert (answered.status, answered.body["error"]["code"]) == (404, "conversation_not_found")
    assert state_items(cid) == []


def test_bad_input_is_refused_with_a_code_and_nothing_is_stored(
    client: Client, stack: LocalStack, simulator: SimulatedProvider
) -> None:
    cid = create(client, system="Short system.", token_budget=1_000, max_tokens=100)
    cases: list[tuple[str, Any, int, str, str | None]] = [
        ("POST", {"content": ""}, 422, "validation_error", "content"),
        ("POST", {"content": "   \n "}, 422, "validation_error", "content"),
        ("POST", {"content": "x" * 100_001}, 422, "validation_error", "content"),
        ("POST", {"content": "hi", "extra": 1}, 422, "validation_error", "extra"),
        ("POST", {"content": sized(1_200, 1)}, 400, "context_budget_exceeded", "content"),
        ("CREATE", {"model_profile": "poetic"}, 400, "unknown_model", "model_profile"),
        ("CREATE", {"token_budget": 200_000}, 422, "validation_error", "token_budget"),
        ("CREATE", {"token_budget": 10}, 422, "validation_error", "token_budget"),
        ("CREATE", {"max_tokens": 20_000}, 422, "validation_error", "max_tokens"),
        ("CREATE", {"system": "a", "template": {"name": "skill_assessment"}}, 422, "validation_error", "template"),
        ("CREATE", {"template": {"name": "no_such_template"}}, 404, "unknown_template", "template"),
        ("CREATE", {"template": {"name": "skill_assessment", "variables": {}}}, 422, "validation_error", None),
        ("CREATE", {"system": sized(800, 2), "token_budget": 1_000}, 400, "context_budget_exceeded", "system"),
    ]
    for kind, body, status, code, field in cases:
        reply = client.post(f"{CONVERSATIONS}/{cid}/messages" if kind == "POST" else CONVERSATIONS, body)
        assert (reply.status, reply.body["error"]["code"]) == (status, code), (kind, str(body)[:80], reply.body)
        if field is not None:
            assert reply.body["error"]["field"] == field, (kind, reply.body)
    budget = next(c for c in cases if c[3] == "context_budget_exceeded")
    refused = say(client, cid, **budget[1]).body["error"]
    assert refused["token_budget"] == 1_000 and refused["needed_tokens"] > 1_000
    # Unknown or malformed ids are 404s naming what was not found
    assert client.get(f"{CONVERSATIONS}/not-a-conversation").body["error"]["code"] == "conversation_not_found"
    patch = client.request("PATCH", f"{CONVERSATIONS}/{cid}/messages/msg_99", {"pinned": True})
    assert (patch.status, patch.body["error"]["code"]) == (404, "message_not_found")
    assert client.get(f"{CONVERSATIONS}?cursor=bm9wZQ").body["error"]["code"] == "invalid_cursor"
    # And none of it stored a message, reached the provider or created a conversation
    assert client.get(f"{CONVERSATIONS}/{cid}").body["messages"] == []
    assert simulator.stats()["requests"] == 0 and len(client.get(CONVERSATIONS).body["items"]) == 1


def test_pins_templates_paging_and_idempotent_messages(
    client: Client, stack: LocalStack, simulator: SimulatedProvider, received: list[dict[str, Any]]
) -> None:
    # Given a conversation whose system prompt is a template's rendered system message
    from aigateway.prompts.render import render_messages

    variables = {"skill": "SQL", "question": "What is a JOIN?", "answer": "It combines rows."}
    cid = create(client, template={"name": "skill_assessment", "version": 1, "variables": variables})
    conversation = client.get(f"{CONVERSATIONS}/{cid}").body
    expected = render_messages(deps.templates().get("skill_assessment", 1), variables)[0]["content"]
    assert conversation["system"] == expected and conversation["template"] == "skill_assessment@1"
    # When a message is sent twice with one Idempotency-Key
    key = {"Idempotency-Key": "conv-turn-1"}
    first = client.post(f"{CONVERSATIONS}/{cid}/messages", {"content": "First question"}, headers=key)
    again = client.post(f"{CONVERSATIONS}/{cid}/messages", {"content": "First question"}, headers=key)
    # Then it ran once (one provider call, one stored turn) and the retry replays the answer
    assert first.status == again.status == 200 and again.headers.get("idempotent-replayed") == "true"
    assert again.body == first.body and len(received) == 1
    # And the same key on another conversation is refused rather than replaying this one's answer
    other = create(client, title="Another")
    reused = client.post(f"{CONVERSATIONS}/{other}/messages", {"content": "First question"}, headers=key)
    assert (reused.status, reused.body["error"]["code"]) == (422, "idempotency_key_reused")
    # When msg_1 is pinned, and a second turn is sent
    pinned = client.request("PATCH", f"{CONVERSATIONS}/{cid}/messages/msg_1", {"pinned": True})
    assert pinned.status == 200 and pinned.body["pinned"] is True
    assert say(client, cid, "Second question").status == 200
    # Then it was sent as a pinned message (right after the system prompt), and GET shows the pin
    assert received[-1]["messages"][1] == {"role": "user", "content": "First question"}
    assert client.get(f"{CONVERSATIONS}/{cid}").body["pinned_message_ids"] == ["msg_1"]
    # And unpinned, it is ordinary history again, in its place
    assert client.request("PATCH", f"{CONVERSATIONS}/{cid}/messages/msg_1", {"pinned": False}).body["pinned"] is False
    assert say(client, cid, "Third question").status == 200
    sent = [m["content"] for m in received[-1]["messages"]]
    assert sent[1] == "First question" and sent[3] == "Second question" and sent[-1] == "Third question"
    # And messages page in order, conversations newest first
    page1 = client.get(f"{CONVERSATIONS}/{cid}?limit=4").body
    page2 = client.get(f"{CONVERSATIONS}/{cid}?limit=4&cursor={page1['next_cursor']}").body
    assert [m["message_id"] for m in page1["messages"] + page2["messages"]] == [f"msg_{n}" for n in range(1, 7)]
    assert page2["next_cursor"] is None
    listed = client.get(f"{CONVERSATIONS}?limit=1").body
    rest = client.get(f"{CONVERSATIONS}?limit=1&cursor={listed['next_cursor']}").body
    assert [i["conversation_id"] for i in listed["items"] + rest["items"]] == [other, cid]
    assert rest["items"][0]["title"] == "First question" and rest["items"][0]["messages"] == 6
