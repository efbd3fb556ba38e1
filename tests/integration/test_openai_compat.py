"""The official `openai` SDK, pointed at the embedded runtime over loopback HTTP, changing only
base_url and api_key: plain, JSON mode, structured output, streaming, function calling, usage,
models, and every error as the SDK's own typed exception."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from aigateway.governance.config import BudgetSettings
from aigateway.llm import tokens
from infra.local.seed import seed_demo_tenant
from tests.integration.governance_support import configure, ledger_rows

MODEL = "gpt-4o-mini"


@pytest.fixture
def sdk(base_url: str, demo: Any) -> openai.OpenAI:
    # max_retries=0: the gateway retries; an SDK retry would hide what the gateway answered.
    return openai.OpenAI(base_url=base_url, api_key=demo.api_key, max_retries=0, timeout=30)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


def test_plain_completion_reports_usage_that_matches_the_tokenizer_and_is_on_the_ledger(
    sdk: openai.OpenAI, demo: Any
) -> None:
    messages = ask("Name one prime number between 10 and 20.")
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL and completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == tokens.count_messages(messages, MODEL), usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    request_id = raw.headers["x-request-id"]
    assert completion.id == f"chatcmpl-{request_id}"
    assert raw.headers["x-aigateway-served-by"] == "primary" and raw.headers["x-aigateway-cached"] == "false"
    rows = [r for r in ledger_rows(demo.tenant_id) if r["request_id"] == request_id]
    assert [(r["feature"], r["outcome"], r["input_tokens"]) for r in rows] == [("chat", "success", usage.prompt_tokens)]
    assert int(raw.headers["x-aigateway-cost-micros"]) == rows[0]["cost_micros"] > 0
    # The completion's id is enough to rate it (feedback finds the request on the ledger).
    rated = httpx.post(
        f"{sdk.base_url}feedback",
        headers={"authorization": f"Bearer {sdk.api_key}"},
        json={"request_id": completion.id, "rating": 5},
        timeout=30,
    )
    assert rated.status_code == 201 and rated.json()["request_id"] == request_id, rated.text
    assert rated.json()["model"] == MODEL


def test_identical_request_is_a_cache_hit_unless_the_client_asks_for_a_fresh_answer(sdk: openai.OpenAI) -> None:
    messages = ask("Which planet is known as the red planet?")
    first = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    again = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    fresh = sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        extra_headers={"Cache-Control": "no-cache"},
    )
    assert (first.headers["x-aigateway-cached"], again.headers["x-aigateway-cached"]) == ("false", "true")
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.headers["x-aigateway-cost-micros"] == "0"
    assert fresh.headers["x-aigateway-cached"] == "false" and int(fresh.headers["x-aigateway-cost-micros"]) > 0


def test_json_mode_and_structured_output(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=ask("Reply in JSON with the capital of France."),  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)

    class City(BaseModel):
        name: str
        country: str
        population: int

    parsed = sdk.chat.completions.parse(model=MODEL, messages=ask("The largest city in Japan."), response_format=City)  # type: ignore[arg-type]
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.name and city.country


def test_streamed_completion_is_valid_sse_with_usage_and_the_same_text(sdk: openai.OpenAI, base_url: str) -> None:
    messages = ask("Describe the water cycle in three sentences.")
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    print(f"\nstream: {len(chunks)} chunks, {len(text)} characters, usage {usage}")
    assert chunks[0].choices[0].delta.role == "assistant" and finishes == ["stop"]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens == tokens.count_messages(messages, MODEL)
    # The same request unstreamed is a cache hit with exactly the streamed text.
    plain = sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert plain.choices[0].message.content == text and len(chunks) > 3

    # The wire format itself: content type, data lines, and the [DONE] terminator.
    response = httpx.post(
        f"{base_url}/chat/completions",
        headers={"authorization": f"Bearer {sdk.api_key}"},
        json={"model": MODEL, "messages": messages, "stream": True},
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2][6:])  # usage chunks only when stream_options asks


def test_a_failing_primary_is_answered_by_the_fallback_model(sdk: openai.OpenAI, simulator: Any) -> None:
    simulator.set_faults({"script": ["500", "500"]})
    raw = sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask("Spell the word gateway backwards."),  # type: ignore[arg-type]
        temperature=0.3,
        max_tokens=200,
    )
    assert raw.headers["x-aigateway-served-by"] == "fallback_model"
    assert raw.parse().model == "gpt-4.1-mini" and raw.headers["x-aigateway-attempts"] == "3"


def test_parameters_a_model_rejects_are_not_forwarded(sdk: openai.OpenAI, simulator: Any) -> None:
    # o4-mini refuses max_tokens and non-default temperature (the simulator enforces OpenAI's rules).
    completion = sdk.chat.completions.create(
        model="o4-mini",
        messages=ask("Is 97 prime? Answer yes or no."),  # type: ignore[arg-type]
        temperature=0.2,
        max_tokens=300,
        reasoning_effort="low",
    )
    assert completion.model == "o4-mini" and completion.choices[0].message.content
    assert simulator.stats()["by_status"].get("400", 0) == 0


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def chat_rows(tenant: str) -> list[dict[str, Any]]:
    return [r for r in ledger_rows(tenant) if r["feature"] == "chat"]


def test_function_calling_round_trip_streamed_cached_and_billed(sdk: openai.OpenAI, demo: Any) -> None:
    # Given a question and a weather tool
    messages: Any = ask("What is the weather in Paris?")
    tools: Any = [WEATHER]
    # When the model is asked, it calls the tool with arguments that fit the tool's schema
    first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("c", "f")
    # And the tool definitions are billed as prompt, counted the same way by gateway and provider
    definitions = tokens.count_text(json.dumps(tools), MODEL)
    assert first.usage is not None and first.usage.prompt_tokens == tokens.count_messages(messages, MODEL) + definitions
    # When the same request comes again it is a cache hit carrying the same call
    again = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages, tools=tools)
    replayed = again.parse().choices[0]
    assert again.headers["x-aigateway-cached"] == "true" and replayed.finish_reason == "tool_calls"
    assert replayed.message.tool_calls is not None and replayed.message.tool_calls[0].model_dump() == call.model_dump()
    # And streamed, the deltas add up to the same call, as OpenAI streams one
    streamed = {"id": "", "name": "", "arguments": ""}
    finish = None
    for chunk in sdk.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True):
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            streamed["id"] += piece.id or ""
            streamed["name"] += (piece.function.name or "") if piece.function else ""
            streamed["arguments"] += (piece.function.arguments or "") if piece.function else ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert finish == "tool_calls"
    assert streamed == {"id": call.id, "name": "get_weather", "arguments": call.function.arguments}
    # When the tool's result goes back, the model answers in words
    follow: Any = [
        *messages,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "unit": "c"}'},
    ]
    answered = sdk.chat.completions.create(model=MODEL, messages=follow, tools=tools)
    assert answered.choices[0].finish_reason == "stop" and answered.choices[0].message.content
    # And a named tool_choice forces a call; "none" forbids one
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    forced = sdk.chat.completions.create(model=MODEL, messages=follow, tools=tools, tool_choice=named)
    assert forced.choices[0].finish_reason == "tool_calls"
    words = sdk.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="none")
    assert words.choices[0].message.tool_calls is None and words.choices[0].message.content
    # And every answer is on the ledger: 4 model answers, 2 cache hits (the repeat, and the stream of it)
    rows = chat_rows(demo.tenant_id)
    print(f"function calling: {len(rows)} ledger rows, tool definitions {definitions} prompt tokens")
    assert sorted(r["outcome"] for r in rows) == ["cache_hit"] * 2 + ["success"] * 4

    # Bad tool use is OpenAI's 400, naming the parameter, before anything is spent
    unanswered: Any = [*messages, {"role": "tool", "tool_call_id": "call_nope", "content": "{}"}]
    unknown: Any = {"type": "function", "function": {"name": "get_time"}}
    refused = []
    for kwargs in (
        {"messages": unanswered, "tools": tools},
        {"messages": messages, "tools": tools, "tool_choice": unknown},
        {"messages": messages, "tools": [WEATHER, WEATHER]},
        {"messages": messages, "tool_choice": "auto"},
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(model=MODEL, **kwargs)
        refused.append(bad.value.param)
    assert refused == ["messages[2].tool_call_id", "tool_choice", "tools", "tool_choice"]
    assert len(chat_rows(demo.tenant_id)) == len(rows)


def test_models_list_and_retrieve(sdk: openai.OpenAI) -> None:
    listed = [m.id for m in sdk.models.list()]
    assert MODEL in listed and "o4-mini" in listed
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-imaginary")
    assert missing.value.code == "model_not_found"


def test_errors_arrive_as_the_sdks_typed_exceptions(sdk: openai.OpenAI, base_url: str, demo: Any) -> None:
    messages = ask("Hello there.")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="aig_wrong_key_000", max_retries=0).chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="gpt-imaginary", messages=messages)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=messages, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as unsupported:
        sdk.chat.completions.create(model=MODEL, messages=messages, logprobs=True)  # type: ignore[arg-type]
    assert unsupported.value.code == "unsupported_parameter" and unsupported.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as no_json_word:
        sdk.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    assert no_json_word.value.param == "messages"

    # An exhausted budget is OpenAI's insufficient_quota 429, which clients treat as final.
    configure(demo.tenant_id, budgets=BudgetSettings(monthly_micros=0))
    with pytest.raises(openai.RateLimitError) as quota:
        sdk.chat.completions.create(model=MODEL, messages=ask("Hello, budget."))  # type: ignore[arg-type]
    assert quota.value.code == "insufficient_quota" and quota.value.type == "insufficient_quota"


def test_provider_outage_is_a_server_error_with_the_openai_shape(sdk: openai.OpenAI, simulator: Any) -> None:
    simulator.set_faults({"rate": 1.0, "kinds": ["500"]})
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model=MODEL, messages=ask("Anyone there?"))  # type: ignore[arg-type]
    body = failed.value.body
    assert isinstance(body, dict) and body.get("type") == "server_error" and body.get("code") == "provider_error"
    assert failed.value.response.headers["x-request-id"]


def test_a_second_tenant_never_sees_the_first_tenants_cached_answer(
    sdk: openai.OpenAI, base_url: str, demo: Any
) -> None:
    messages = ask("What is the boiling point of water at sea level?")
    sdk.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    other = seed_demo_tenant("aig_other_tenant_key_0123456789", tenant_id="other", user_id="o-user", role="member")
    theirs = openai.OpenAI(base_url=base_url, api_key=other.api_key, max_retries=0)
    raw = theirs.chat.completions.with_raw_response.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-aigateway-cached"] == "false"


def test_a_context_larger_than_the_default_body_limit_is_accepted(sdk: openai.OpenAI) -> None:
    # ~100k tokens of history (≈ 0.45 MB of JSON): more than the gateway's default 256 KiB body limit.
    filler = " ".join(f"note{i} lorem ipsum dolor" for i in range(22_000))
    messages = [{"role": "user", "content": filler}, {"role": "user", "content": "Summarise the notes."}]
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=50)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == tokens.count_messages(messages, MODEL) > 65_000
