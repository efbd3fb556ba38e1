"""The simulated OpenAI-compatible provider, driven by the real `openai` SDK.

Every behaviour is checked over both transports: the HTTP server on an ephemeral port and the
in-process httpx transport (what a Lambda without an OpenAI key uses). Clients never retry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel

from aigateway.llm import tokens
from aigateway.llm.catalog import MODELS
from aigateway.llm.simulated import (
    FaultPlan,
    SimulatedProvider,
    SimulatedProviderServer,
    simulated_transport,
)

ROOT = Path(__file__).resolve().parents[2]
IN_PROCESS_BASE_URL = "http://simulated.invalid/v1"
USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Summarise the quarterly report for ACME in three bullets"}
]

NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 5, "maxLength": 40},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 2, "maxItems": 4},
        "owner": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "team": {
                            "type": "object",
                            "properties": {"id": {"type": "integer", "minimum": 100, "maximum": 200}},
                            "required": ["id"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "team"],
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "amount": {"type": "number", "minimum": -5, "maximum": 5}},
                "required": ["label", "amount"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "sentiment", "score", "confidence", "urgent", "tags", "owner", "items"],
    "additionalProperties": False,
}


def _schema_format(schema: dict[str, Any]) -> ResponseFormatJSONSchema:
    return {"type": "json_schema", "json_schema": {"name": "report", "schema": schema, "strict": True}}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@dataclass
class Sim:
    """One provider behind one transport, plus client factories that clean up after themselves."""

    kind: str
    provider: SimulatedProvider
    base_url: str
    _closers: list[Any] = field(default_factory=list)

    def _http_client(self) -> httpx.Client | None:
        if self.kind == "http":
            return None
        client = httpx.Client(transport=simulated_transport(self.provider))
        self._closers.append(client)
        return client

    def openai(self, timeout: float = 5.0) -> openai.OpenAI:
        client = openai.OpenAI(
            api_key="sim", base_url=self.base_url, max_retries=0, timeout=timeout, http_client=self._http_client()
        )
        self._closers.append(client)
        return client

    def http(self) -> httpx.Client:
        """A plain HTTP client rooted at the server (for raw bodies and the /_sim endpoints)."""
        root = self.base_url.removesuffix("/v1")
        if self.kind == "http":
            client = httpx.Client(base_url=root, timeout=5.0)
        else:
            transport = simulated_transport(self.provider)
            client = httpx.Client(base_url=root, timeout=5.0, transport=transport)
        self._closers.append(client)
        return client

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer.close()


@pytest.fixture(params=["http", "in_process"])
def sim(request: pytest.FixtureRequest) -> Iterator[Sim]:
    provider = SimulatedProvider(env={})
    if request.param == "http":
        with SimulatedProviderServer(provider) as server:
            harness = Sim("http", provider, server.base_url)
            yield harness
            harness.close()
    else:
        harness = Sim("in_process", provider, IN_PROCESS_BASE_URL)
        yield harness
        harness.close()


# -- happy paths ---------------------------------------------------------------------------------


def test_plain_chat_is_marked_simulated_and_mentions_the_question(sim: Sim) -> None:
    # Given a client pointed at the simulated provider
    client = sim.openai()
    # When it asks a plain question
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    completion = raw.parse()
    # Then the answer says it is simulated and quotes the question's first words
    content = completion.choices[0].message.content or ""
    print(f"\n[{sim.kind}] {content}")
    assert content.startswith("[simulated]")
    assert "Summarise the quarterly report for ACME" in content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-sim-")
    assert completion.system_fingerprint == "fp_simulated"
    assert completion.model == "gpt-4o-mini"
    assert raw.headers["x-simulated"] == "true"
    assert raw.headers["x-request-id"].startswith("req_sim_")


def test_json_schema_output_validates_against_a_nested_schema(sim: Sim) -> None:
    # Given a nested schema (objects, arrays of objects, enum, bounds, anyOf null)
    client = sim.openai()
    # When structured output is requested
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, response_format=_schema_format(NESTED_SCHEMA)
    )
    data = json.loads(completion.choices[0].message.content or "")
    print(f"\n[{sim.kind}] {json.dumps(data)}")
    # Then it validates, and every free-text string says it is simulated
    jsonschema.Draft202012Validator(NESTED_SCHEMA).validate(data)
    free_text = [s for s in _strings(data) if s not in ("positive", "neutral", "negative")]
    assert free_text
    assert all(s.startswith("[simulated]") for s in free_text), free_text


def test_sdk_parse_with_a_pydantic_model_gets_a_parsed_object(sim: Sim) -> None:
    # Given the SDK's structured-output helper with nested pydantic models ($defs/$ref)
    class Step(BaseModel):
        action: str
        minutes: int

    class Plan(BaseModel):
        goal: str
        steps: list[Step]
        done: bool

    # When the SDK parses the simulated answer
    completion = sim.openai().chat.completions.parse(model="gpt-4o", messages=USER, response_format=Plan)
    parsed = completion.choices[0].message.parsed
    # Then it is a Plan whose strings say they are simulated
    assert isinstance(parsed, Plan)
    assert parsed.goal.startswith("[simulated]")
    assert all(step.action.startswith("[simulated]") for step in parsed.steps)


def test_json_object_mode_returns_a_simulated_object(sim: Sim) -> None:
    # Given JSON mode (which, like OpenAI, requires the word "json" in the messages)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Reply in JSON: what is 2 + 2?"}]
    # When requested
    completion = sim.openai().chat.completions.create(
        model="gpt-4.1-mini", messages=messages, response_format={"type": "json_object"}
    )
    # Then the content is an object flagged as simulated
    data = json.loads(completion.choices[0].message.content or "")
    assert data["simulated"] is True


def test_same_request_same_content_different_messages_different_content(sim: Sim) -> None:
    # Given the same request twice and a request with different messages
    client = sim.openai()
    first = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    other = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Other"}])
    schema_a = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, response_format=_schema_format(NESTED_SCHEMA)
    )
    schema_b = client.chat.completions.create(
        model="gpt-4o-mini", messages=USER, response_format=_schema_format(NESTED_SCHEMA)
    )
    # Then identical requests get identical content (and id); different ones do not
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.id == second.id
    assert first.choices[0].message.content != other.choices[0].message.content
    assert schema_a.choices[0].message.content == schema_b.choices[0].message.content


def test_usage_is_counted_with_the_real_tokenizer(sim: Sim) -> None:
    # Given a system + user conversation
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You are terse."}, *USER]
    # When completed
    completion = sim.openai().chat.completions.create(model="o4-mini", messages=messages)
    usage = completion.usage
    assert usage is not None
    content = completion.choices[0].message.content or ""
    # Then usage equals tokens.count_messages / count_text, with OpenAI's detail fields
    assert usage.prompt_tokens == tokens.count_messages(messages, "o4-mini")
    assert usage.completion_tokens == tokens.count_text(content, "o4-mini")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_max_tokens_truncates_and_reports_length(sim: Sim) -> None:
    # Given a limit smaller than the simulated answer
    client = sim.openai()
    # When completed with max_tokens (chat model) and max_completion_tokens (reasoning model)
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=5)
    reasoning = client.chat.completions.create(model="gpt-5-mini", messages=USER, max_completion_tokens=4)
    # Then the content is cut to the limit and finish_reason is "length"
    for completion, limit in ((chat, 5), (reasoning, 4)):
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens <= limit
        assert (completion.choices[0].message.content or "").startswith("[simulated]"[:8])


def test_streaming_yields_chunks_then_usage_and_done(sim: Sim) -> None:
    # Given a streaming request asking for usage
    client = sim.openai()
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    # When streamed through the SDK
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    # Then the deltas rebuild the non-streamed content, the last chunk carries usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    print(f"\n[{sim.kind}] {len(chunks)} chunks")
    assert len(chunks) > 5
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == tokens.count_text(text, "gpt-4o-mini")
    # And on the wire it is SSE ending with [DONE]
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with sim.http().stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes()).decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["usage"]["total_tokens"] > 0


def test_tools_get_a_schema_valid_call_then_words_after_the_result(sim: Sim) -> None:
    client = sim.openai()
    tool: Any = {"type": "function", "function": {"name": "lookup", "parameters": NESTED_SCHEMA}}
    # A question with a tool: one call, its arguments an instance of the parameter schema
    called = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[tool])
    choice = called.choices[0]
    (call,) = choice.message.tool_calls or []
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
    jsonschema.validate(json.loads(call.function.arguments), NESTED_SCHEMA)
    assert called.usage is not None and called.usage.prompt_tokens == tokens.count_messages(
        USER, "gpt-4o-mini"
    ) + tokens.count_text(json.dumps([tool]), "gpt-4o-mini")
    # With the tool's result in hand (`auto`), an answer in words
    result: Any = [
        *USER,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "ok"},
    ]
    answered = client.chat.completions.create(model="gpt-4o-mini", messages=result, tools=[tool])
    assert answered.choices[0].finish_reason == "stop" and answered.choices[0].message.tool_calls is None
    # A tool message answering no call is OpenAI's 400
    stray: Any = [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "ok"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o-mini", messages=stray, tools=[tool])
    assert "must be a response to a preceeding message with 'tool_calls'" in str(bad.value)


def test_models_endpoint_lists_the_catalog(sim: Sim) -> None:
    # Given the catalog
    # When the SDK lists models
    ids = [m.id for m in sim.openai().models.list()]
    # Then they are the catalog's models
    assert ids == list(MODELS)


# -- validation errors, as OpenAI words them -------------------------------------------------------


def test_reasoning_model_rejects_temperature_and_max_tokens(sim: Sim) -> None:
    client = sim.openai()
    # Given a reasoning model
    # When called with a non-default temperature
    with pytest.raises(openai.BadRequestError) as temp:
        client.chat.completions.create(model="o4-mini", messages=USER, temperature=0.2)
    # Then 400 unsupported_value on `temperature`, like api.openai.com
    assert temp.value.status_code == 400
    assert temp.value.code == "unsupported_value"
    assert temp.value.param == "temperature"
    # And max_tokens is an unsupported parameter (max_completion_tokens is the one to use)
    with pytest.raises(openai.BadRequestError) as legacy:
        client.chat.completions.create(model="o3", messages=USER, max_tokens=100)
    assert legacy.value.code == "unsupported_parameter"
    assert legacy.value.param == "max_tokens"
    # And o3-mini refuses temperature outright
    with pytest.raises(openai.BadRequestError) as o3mini:
        client.chat.completions.create(model="o3-mini", messages=USER, temperature=1)
    assert o3mini.value.code == "unsupported_parameter"
    # And chat models reject reasoning_effort
    with pytest.raises(openai.BadRequestError) as effort:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, reasoning_effort="low")
    assert effort.value.param == "reasoning_effort"


def test_unknown_model_is_not_found(sim: Sim) -> None:
    # Given a model outside the catalog
    # When called
    with pytest.raises(openai.NotFoundError) as err:
        sim.openai().chat.completions.create(model="gpt-imaginary", messages=USER)
    # Then 404 model_not_found in OpenAI's error shape
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert err.value.body == {
        "message": "The model `gpt-imaginary` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_request_shape_errors_are_400s_in_openai_shape(sim: Sim) -> None:
    http = sim.http()
    cases = [
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", None),
        (
            {"model": "gpt-4o-mini", "messages": USER, "response_format": {"type": "json_object"}},
            "messages",
            None,
        ),
        (
            {"model": "gpt-4o-mini", "messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}},
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        ({"model": "gpt-4o-mini", "messages": USER, "max_tokens": 10**6}, "max_tokens", "invalid_value"),
    ]
    for body, param, code in cases:
        # Given a malformed request / When posted
        response = http.post("/v1/chat/completions", json=body)
        # Then 400 with {"error": {message, type, param, code}}
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param, body
        if code is not None:
            assert error["code"] == code, body
    assert http.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert http.get("/v1/nothing-here").status_code == 404


# -- faults ----------------------------------------------------------------------------------------


def test_fault_429_raises_rate_limit_error_with_retry_after(sim: Sim) -> None:
    # Given a scripted 429 with retry_after_s
    sim.provider.set_faults({"script": ["429"], "retry_after_s": 1})
    # When called
    with pytest.raises(openai.RateLimitError) as err:
        sim.openai().chat.completions.create(model="gpt-4o-mini", messages=USER)
    # Then RateLimitError, code rate_limit_exceeded, retry-after visible on the response
    assert err.value.status_code == 429
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.response.headers["x-simulated"] == "true"


def test_fault_429_retry_after_defaults_to_one_second(sim: Sim) -> None:
    sim.provider.set_faults({"script": ["429_retry_after"]})
    with pytest.raises(openai.RateLimitError) as err:
        sim.openai().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.response.headers["retry-after-ms"] == "1000"


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        ("401", openai.AuthenticationError, 401, "invalid_api_key"),
        ("content_filter", openai.BadRequestError, 400, "content_filter"),
        ("context_length", openai.BadRequestError, 400, "context_length_exceeded"),
    ],
)
def test_client_side_faults_raise_the_sdks_typed_errors(
    sim: Sim, fault: str, exception: type[openai.APIStatusError], status: int, code: str
) -> None:
    sim.provider.set_faults({"script": [fault]})
    with pytest.raises(exception) as err:
        sim.openai().chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert err.value.status_code == status and err.value.code == code
    # the next call, unscripted, answers normally
    assert sim.openai().chat.completions.create(model="gpt-4o-mini", messages=USER).choices


def test_a_prompt_larger_than_the_context_window_is_refused_like_openai(sim: Sim) -> None:
    # Given gpt-4o-mini (128k window) and a prompt that fits only without the output limit
    prompt = "word " * 127_500
    # When asked for 16k output tokens
    with pytest.raises(openai.BadRequestError) as err:
        sim.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=16_000
        )
    # Then it is OpenAI's context_length_exceeded, naming the window
    assert err.value.code == "context_length_exceeded" and "128000" in str(err.value.message)


def test_marked_scripts_give_each_concurrent_case_its_own_faults(sim: Sim) -> None:
    # Given faults scripted for requests carrying a marker, and none for the rest
    sim.provider.set_faults({"marked": {"case-a": ["500", "500"]}})
    client = sim.openai()
    marked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "case-a: hello"}]
    # Then unmarked requests are untouched, and marked ones consume their own script
    assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=marked)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=marked).choices


def test_fault_500_and_503_raise_internal_server_error(sim: Sim) -> None:
    # Given scripted 500 then 503
    sim.provider.set_faults({"script": ["500", "503"]})
    client = sim.openai()
    # When called twice
    with pytest.raises(openai.InternalServerError) as first:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    with pytest.raises(openai.InternalServerError) as second:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    # Then both are InternalServerError with OpenAI's server_error type
    assert (first.value.status_code, second.value.status_code) == (500, 503)
    assert isinstance(first.value.body, dict) and first.value.body["type"] == "server_error"


def test_fault_malformed_surfaces_as_a_json_decode_error(sim: Sim) -> None:
    # Given a scripted malformed 200 (content-type JSON, body cut short)
    sim.provider.set_faults({"script": ["malformed", "malformed"]})
    client = sim.openai()
    # When called: the SDK does not wrap it; it raises json.JSONDecodeError (a ValueError), not an
    # openai.APIError. APIResponseValidationError only appears with _strict_response_validation
    # and a non-JSON content-type.
    with pytest.raises(json.JSONDecodeError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert not isinstance(err.value, openai.OpenAIError)
    # And when streaming, the broken event raises the same while iterating
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    with pytest.raises(json.JSONDecodeError):
        list(stream)


def test_fault_schema_invalid_returns_json_that_breaks_the_schema(sim: Sim) -> None:
    # Given a scripted schema_invalid
    sim.provider.set_faults({"script": ["schema_invalid"]})
    # When structured output is requested
    completion = sim.openai().chat.completions.create(
        model="gpt-4o-mini", messages=USER, response_format=_schema_format(NESTED_SCHEMA)
    )
    # Then the SDK gets a 200 whose content is JSON that fails validation
    data = json.loads(completion.choices[0].message.content or "")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, NESTED_SCHEMA)


def test_fault_timeout_raises_api_timeout_error_quickly(sim: Sim) -> None:
    # Given a scripted timeout that would hold the request for 3 s
    sim.provider.set_faults({"script": ["timeout"], "hang_s": 3})
    client = sim.openai(timeout=0.5)
    # When the client's timeout is 0.5 s
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    elapsed = time.perf_counter() - started
    print(f"\n[{sim.kind}] APITimeoutError after {elapsed:.2f}s")
    # Then APITimeoutError arrives at the client's deadline, not the provider's
    assert 0.45 <= elapsed < 1.5


def test_fault_reset_raises_api_connection_error(sim: Sim) -> None:
    # Given a scripted connection reset
    sim.provider.set_faults({"script": ["reset"]})
    # When called
    with pytest.raises(openai.APIConnectionError) as err:
        sim.openai().chat.completions.create(model="gpt-4o-mini", messages=USER)
    # Then APIConnectionError (not a timeout), caused by a transport error
    assert not isinstance(err.value, openai.APITimeoutError)
    assert isinstance(err.value.__cause__, httpx.TransportError)
    print(f"\n[{sim.kind}] reset -> {type(err.value).__name__} from {type(err.value.__cause__).__name__}")


def test_latency_fault_delays_then_answers(sim: Sim) -> None:
    # Given a scripted 200 ms latency on top of a 50 ms base latency
    sim.provider.set_faults({"script": ["latency=200"], "latency_ms": 50})
    client = sim.openai()
    # When called twice
    started = time.perf_counter()
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    slow = time.perf_counter() - started
    started = time.perf_counter()
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    base = time.perf_counter() - started
    print(f"\n[{sim.kind}] latency: scripted {slow * 1000:.0f} ms, base {base * 1000:.0f} ms")
    # Then the first takes >= 250 ms and the second >= 50 ms, both succeed
    assert slow >= 0.25
    assert 0.05 <= base < 0.25


def test_script_is_consumed_in_order_and_counted(sim: Sim) -> None:
    # Given a script through the control endpoint
    http = sim.http()
    posted = http.post("/_sim/faults", json={"script": ["429", "ok", "500"]})
    assert posted.status_code == 200
    client = sim.openai()
    outcomes = []
    # When four chat requests are made
    for _ in range(4):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            outcomes.append("ok")
        except openai.APIStatusError as err:
            outcomes.append(str(err.status_code))
    # Then the script plays in order, then everything succeeds; stats agree
    assert outcomes == ["429", "ok", "500", "ok"]
    stats = http.get("/_sim/stats").json()
    assert stats["requests"] == 4
    assert stats["by_status"] == {"429": 1, "200": 2, "500": 1}
    assert stats["faults_injected"] == 2
    # And DELETE resets the plan
    sim.provider.set_faults({"script": ["500"]})
    assert http.delete("/_sim/faults").status_code == 200
    client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    # And an invalid plan is refused
    assert http.post("/_sim/faults", json={"script": ["418"]}).status_code == 400


def test_queued_response_is_returned_verbatim_once(sim: Sim) -> None:
    # Given an exact provider answer queued through the control endpoint (usage with cached tokens)
    canned = {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1500,
            "completion_tokens": 120,
            "total_tokens": 1620,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    }
    queued = sim.http().post("/_sim/responses", json={"status": 200, "body": canned})
    assert queued.status_code == 200
    sim.provider.set_faults({"script": ["500"]})
    client = sim.openai()
    # When the SDK calls twice
    first = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    # Then the first call gets the queued answer, the second falls through to the fault script
    assert first.id == "chatcmpl-canned"
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 1024
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert sim.http().post("/_sim/responses", json={"status": "x"}).status_code == 400


# -- core (no transport) ---------------------------------------------------------------------------


def _chat_status(provider: SimulatedProvider) -> str:
    body = json.dumps({"model": "gpt-4o-mini", "messages": USER}).encode()
    response = provider.handle("POST", "/v1/chat/completions", {}, body)
    return "reset" if response.reset else str(response.status)


def test_random_faults_are_seeded_and_roughly_at_the_rate() -> None:
    # Given two providers with the same random plan
    plan = {"rate": 0.3, "kinds": ["429", "503"], "seed": 7}
    a, b = SimulatedProvider(plan, env={}), SimulatedProvider(plan, env={})
    # When each handles 200 requests
    seq_a = [_chat_status(a) for _ in range(200)]
    seq_b = [_chat_status(b) for _ in range(200)]
    # Then the sequences are identical and the fault rate is near 30 %
    faults = sum(s != "200" for s in seq_a)
    print(f"\n200 requests at rate 0.3 -> {faults} faults; stats {a.stats()}")
    assert seq_a == seq_b
    assert 40 <= faults <= 80
    assert set(seq_a) == {"200", "429", "503"}
    assert a.stats()["faults_injected"] == faults


def test_fault_plan_from_env_var_and_validation() -> None:
    # Given SIM_FAULTS in the environment
    provider = SimulatedProvider(env={"SIM_FAULTS": '{"script": ["503"], "latency_ms": 5}'})
    # When the first chat request arrives
    # Then the plan applies
    assert _chat_status(provider) == "503"
    assert _chat_status(provider) == "200"
    assert provider.faults.latency_ms == 5
    # And a broken plan fails loudly at construction
    with pytest.raises(ValueError, match="SIM_FAULTS"):
        SimulatedProvider(env={"SIM_FAULTS": '{"script": ["teapot"]}'})
    with pytest.raises(ValueError):
        FaultPlan.from_json({"rate": 2})


def test_concurrent_requests_are_counted_exactly() -> None:
    # Given one provider and a script of 50 faults
    provider = SimulatedProvider({"script": ["500"] * 50}, env={})
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            status = _chat_status(provider)
            with lock:
                results.append(status)

    # When 8 threads make 200 requests in all
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly 50 failed and the counters add up
    assert results.count("500") == 50
    stats = provider.stats()
    assert stats["requests"] == 200
    assert stats["by_status"] == {"500": 50, "200": 150}


# -- transports ------------------------------------------------------------------------------------


def test_stopping_the_server_releases_a_held_request() -> None:
    # Given a request held by a 30 s timeout fault
    provider = SimulatedProvider({"script": ["timeout"], "hang_s": 30}, env={})
    server = SimulatedProviderServer(provider)
    base_url = server.start()
    client = openai.OpenAI(api_key="sim", base_url=base_url, max_retries=0, timeout=20)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    # When the server stops
    started = time.perf_counter()
    server.stop()
    thread.join(timeout=5)
    elapsed = time.perf_counter() - started
    client.close()
    # Then stop returns promptly and the client sees a connection error, not a 30 s wait
    print(f"\nstop + release took {elapsed:.2f}s")
    assert not thread.is_alive()
    assert elapsed < 2
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)


def test_http_server_keeps_connections_alive() -> None:
    # Given an HTTP/1.1 client with a single-connection pool
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    with SimulatedProviderServer() as server, httpx.Client(limits=httpx.Limits(max_connections=1)) as http:
        root = server.base_url.removesuffix("/v1")
        client_ports = []
        for _ in range(3):
            # When it makes several requests: JSON, an error, and a chunked SSE stream
            for response in (
                http.get(root + "/v1/models"),
                http.get(root + "/v1/nothing"),
                http.post(root + "/v1/chat/completions", json=body),
            ):
                assert response.http_version == "HTTP/1.1"
                if "content-length" in response.headers:
                    assert response.headers["content-length"] == str(len(response.content))
                else:
                    assert response.headers["transfer-encoding"] == "chunked"
                    assert response.text.endswith("data: [DONE]\n\n")
                client_ports.append(response.extensions["network_stream"].get_extra_info("client_addr"))
        # Then one connection served all nine
        assert len(client_ports) == 9
        assert len(set(client_ports)) == 1


def test_module_import_is_light() -> None:
    # Given a fresh interpreter
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import aigateway.llm.simulated\n"
        "print(round(time.perf_counter() - t, 3), sorted(m for m in ('openai', 'httpx', 'bpe_openai',\n"
        "  'bpe_openai._bindings') if m in sys.modules))\n"
    )
    # When the module is imported
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(ROOT / "layers/shared/python"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    print(f"\nimport aigateway.llm.simulated: {out.strip()}")
    # Then neither the SDK, nor an HTTP client, nor a tokenizer is loaded
    assert out.strip().endswith("[]")


def test_cli_serves_until_interrupted() -> None:
    # Given the CLI on an ephemeral port with a fault plan
    process = subprocess.Popen(
        [sys.executable, "-m", "aigateway.llm.simulated", "--port", "0", "--faults", '{"script": ["503"]}'],
        env={**os.environ, "PYTHONPATH": str(ROOT / "layers/shared/python")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        base_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        # When the SDK calls it twice
        client = openai.OpenAI(api_key="sim", base_url=base_url, max_retries=0, timeout=5)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices
        client.close()
        # Then Ctrl-C stops it cleanly
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
