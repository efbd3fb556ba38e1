"""OpenAI's Chat Completions contract on top of the gateway's completion path.

A client written for OpenAI (the official SDKs, LangChain, anything that takes a `base_url`) sends
its request unchanged; the gateway applies the same rate limits, cache, budgets, fallback chain and
ledger as every other route (`Completions.complete`), and answers in OpenAI's shapes:
- `chat.completion` objects, or for `stream: true` a `text/event-stream` of `chat.completion.chunk`
  events ending in `data: [DONE]` (the whole stream is produced at once: API Gateway's HTTP API
  buffers Lambda responses, so chunks could not arrive earlier anyway);
- errors as `{"error": {"message", "type", "param", "code"}}` (aigateway.errors), with a budget
  refusal as OpenAI's 429 `insufficient_quota`.
What the gateway did (served by which hop, cost, cache) travels in `x-aigateway-*` headers, so the
body stays exactly OpenAI's.

Function calling: `tools`, `tool_choice` and `parallel_tool_calls` go to every hop (they are part of
the cache key); an answer that calls functions comes back as `tool_calls` (streamed as OpenAI
streams them), is cached and billed like any answer, and skips JSON-mode validation (the client
runs the call and checks its arguments). Tool messages must answer a preceding call, as at OpenAI.

Parameters a model does not accept are dropped rather than forwarded, per hop: a request written
for gpt-4o-mini keeps working when the chain falls back to another family (reasoning models take
`max_completion_tokens` and no sampling parameters).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigateway.completion import CallContext, CompletionResult, Completions, CompletionSpec, ModelCall
from aigateway.errors import (
    BudgetExhausted,
    InvalidJson,
    InvalidModelOutput,
    InvalidRequest,
    ModelNotFound,
    QuotaExceeded,
    UnknownModel,
)
from aigateway.governance.pricing import PRICES
from aigateway.llm.catalog import MODELS, PROFILES, ModelSpec, parse_hop

FEATURE = "chat"
# An answer to the same messages and parameters is reused for this long (the client can ask for a
# fresh one with `Cache-Control: no-cache`).
CACHE_TTL_S = 3600
STALE_IF_ERROR_S = 24 * 3600
MAX_MESSAGES = 2048
SYSTEM_FINGERPRINT = "fp_aigateway"
CREATED = 1_700_000_000  # catalog models carry no creation date; one fixed epoch keeps /v1/models stable


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="JSON text, as the model wrote it")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    refusal: str | None = None  # the SDK echoes assistant messages back with it
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant message's function calls")
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256, description="A tool message's call")

    def wire(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": _text_of(self.content)}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump(mode="json") for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments")
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request the gateway serves; anything else is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request")
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def wire_tools(self) -> dict[str, Any]:
        """The tool parameters, as the provider takes them (part of every hop and of the cache key)."""
        params: dict[str, Any] = {}
        if self.tools is not None:
            params["tools"] = [tool.model_dump(mode="json", exclude_none=True) for tool in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            params["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump(mode="json")
        return params

    def wire_messages(self) -> list[dict[str, Any]]:
        return [m.wire() for m in self.messages]

    def json_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        return fmt.json_schema.schema_ if fmt is not None and fmt.json_schema is not None else None

    def wire_response_format(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        return fmt.model_dump(mode="json", by_alias=True, exclude_none=True)


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, message: str, param: str | None):
        super().__init__(message, field=param)


def parse_request(raw: str | None) -> ChatCompletionRequest:
    """The request, or a 400 naming the offending parameter the way OpenAI does."""
    try:
        data = json.loads(raw or "")
    except ValueError:
        raise InvalidJson("We could not parse the JSON body of your request.", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "extra_forbidden":
            raise UnsupportedParameter(
                f"Unsupported parameter: '{param}' is not supported by this gateway.", param
            ) from None
        if first.get("type") == "missing":
            raise InvalidRequest(f"Missing required parameter: '{param}'.", field=param) from None
        raise InvalidRequest(f"Invalid '{param}': {first.get('msg')}.", field=param) from None
    _check_request(request)
    return request


def _check_request(request: ChatCompletionRequest) -> None:
    """What OpenAI itself would refuse with a 400, refused here before anything is spent."""
    model = resolve_model(request.model)
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None and limit > model.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens is too large: {limit}. This model supports at most {model.max_output_tokens} "
            "completion tokens.",
            field="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        )
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest("Missing required parameter: 'response_format.json_schema'.", field="response_format")
    if fmt is not None and fmt.type == "json_object":
        text = " ".join(m["content"] or "" for m in request.wire_messages())
        if "json" not in text.lower():
            raise InvalidRequest(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                field="messages",
            )
    if isinstance(request.stop, list) and len(request.stop) > 4:
        raise InvalidRequest("Invalid 'stop': at most 4 sequences.", field="stop")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", field="stream_options"
        )
    for i, message in enumerate(request.messages):
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].content'.", field=f"messages[{i}].content"
            )
    _check_tools(request)


def _check_tools(request: ChatCompletionRequest) -> None:
    """OpenAI's own 400s about tools and tool messages, before anything is spent."""
    names = [tool.function.name for tool in request.tools or ()]
    if len(set(names)) != len(names):
        raise InvalidRequest("Invalid 'tools': function names must be unique.", field="tools")
    for i, tool in enumerate(request.tools or ()):
        if tool.function.parameters is not None:
            _check_schema(tool.function.parameters, field=f"tools[{i}].function.parameters")
    if (request.tool_choice is not None or request.parallel_tool_calls is not None) and request.tools is None:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            field="tool_choice" if request.tool_choice is not None else "parallel_tool_calls",
        )
    choice = request.tool_choice
    if not isinstance(choice, str) and choice is not None and choice.function.name not in names:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': function '{choice.function.name}' is not in 'tools'.",
            field="tool_choice",
        )
    answered: set[str] = set()
    for i, message in enumerate(request.messages):
        if message.role == "assistant":
            answered = {call.id for call in message.tool_calls or ()}
        elif message.role == "tool":
            if message.tool_call_id is None or message.tool_call_id not in answered:
                raise InvalidRequest(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    field=f"messages[{i}].tool_call_id",
                )
        elif message.tool_calls or message.tool_call_id is not None:
            raise InvalidRequest(
                f"Invalid 'messages[{i}]': only assistant messages carry 'tool_calls', only tool messages "
                "'tool_call_id'.",
                field=f"messages[{i}]",
            )


def _text_of(content: str | list[TextPart] | None) -> str | None:
    """Text parts joined: the provider receives what the tokenizer counts (images are not served)."""
    if content is None or isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def priced_models() -> list[ModelSpec]:
    """The models the gateway can bill, in catalog order: exactly the ones it serves."""
    priced = {p.model for p in PRICES}
    return [spec for spec in MODELS.values() if spec.name in priced]


def resolve_model(name: str) -> ModelSpec:
    for spec in priced_models():
        if spec.name == name:
            return spec
    raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", field="model")


def model_object(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "model",
        "created": CREATED,
        "owned_by": "openai",
        # Extensions a client may use to size its prompts; OpenAI clients ignore unknown fields.
        "context_window": spec.context_window,
        "max_output_tokens": spec.max_output_tokens,
    }


def hop_params(spec: ModelSpec, request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's parameters that `spec` accepts, shaped for it."""
    limit = request.max_completion_tokens or request.max_tokens
    params: dict[str, Any] = request.wire_tools()
    if request.parallel_tool_calls is not None and not spec.is_reasoning:  # o-series refuse it
        params["parallel_tool_calls"] = request.parallel_tool_calls
    if spec.is_reasoning:
        if limit is not None:
            params["max_completion_tokens"] = min(limit, spec.max_output_tokens)
        if request.reasoning_effort is not None:
            params["reasoning_effort"] = request.reasoning_effort
        return params
    if limit is not None:
        params["max_tokens"] = min(limit, spec.max_output_tokens)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    return params


def model_chain(request: ChatCompletionRequest) -> tuple[ModelCall, ...]:
    """The requested model, then the fallbacks of the profile it is primary for (else analytical's)."""
    primary = resolve_model(request.model)
    profile = next((p for p in PROFILES.values() if p.model == primary.name), PROFILES["analytical"])
    calls = [ModelCall(primary.name, hop_params(primary, request))]
    for hop in profile.fallbacks:
        provider, name = parse_hop(hop)
        call = ModelCall(name, hop_params(MODELS[name], request), provider)
        if name != primary.name and call not in calls:
            calls.append(call)
    return tuple(calls)


def output_validator(request: ChatCompletionRequest) -> Any:
    """JSON mode answers must be a JSON object, and match the caller's schema when it gave one: a
    failure takes the chain's repair path like a template's schema-invalid answer."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return lambda content: content
    schema = request.json_schema()

    def validate(content: str) -> str:
        try:
            value = json.loads(content)
        except ValueError:
            raise InvalidModelOutput(
                "the model's answer is not JSON", content=content, problems="not valid JSON"
            ) from None
        if not isinstance(value, dict):
            raise InvalidModelOutput(
                "the model's answer is not a JSON object", content=content, problems="not an object"
            )
        if schema is not None:
            import jsonschema  # only JSON-schema requests pay for the import

            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
            if errors:
                problems = "; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:8])
                raise InvalidModelOutput(
                    "the model's answer does not match the response schema", content=content, problems=problems
                )
        return content  # the client gets the model's text as it came, like OpenAI sends it

    return validate


def complete(
    request: ChatCompletionRequest, ctx: CallContext, completions: Completions, *, fresh: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """The `chat.completion` object and the headers that go with it."""
    schema = request.json_schema()
    if schema is not None:
        _check_schema(schema)
    spec = CompletionSpec(
        calls=model_chain(request),
        messages=request.wire_messages(),
        response_format=request.wire_response_format(),
        cache_ttl_s=CACHE_TTL_S,
        validate=output_validator(request),
        stale_if_error_s=STALE_IF_ERROR_S,
        read_cache=not fresh,
    )
    try:
        result = completions.complete(ctx, spec)
    except BudgetExhausted as exc:
        # OpenAI clients know this one: stop, do not retry (the budget, period and headroom stay in the body).
        raise _quota(exc) from exc
    except UnknownModel as exc:  # defensive: a catalog model with no price in force today
        raise ModelNotFound(exc.message, field="model") from exc
    return completion_object(ctx.request_id, result), gateway_headers(result)


def _check_schema(schema: dict[str, Any], *, field: str = "response_format.json_schema.schema") -> None:
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"Invalid schema for '{field}': {exc.message}", field=field) from None


def _quota(exc: BudgetExhausted) -> QuotaExceeded:
    return QuotaExceeded(
        f"You exceeded your current quota: {exc.message}", field=None, headers=exc.headers, details=exc.details
    )


def completion_object(request_id: str, result: CompletionResult) -> dict[str, Any]:
    content: str | None = result.output if isinstance(result.output, str) else json.dumps(result.output)
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    tool_calls = result.extra.get("tool_calls")
    if tool_calls:
        message = {**message, "content": content or None, "tool_calls": tool_calls}
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": result.extra.get("finish_reason", "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": result.usage.input_tokens,
            "completion_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": result.usage.cached_tokens},
        },
    }


def gateway_headers(result: CompletionResult) -> dict[str, str]:
    headers = {
        "x-aigateway-served-by": result.served_by,
        "x-aigateway-cached": "true" if result.cached else "false",
        "x-aigateway-cost-micros": str(result.cost_micros),
        "x-aigateway-attempts": str(result.attempts),
        **result.limits.headers(),
    }
    if result.degraded_reason:
        headers["x-aigateway-degraded-reason"] = result.degraded_reason
    return headers


_PIECE = re.compile(r"\s*\S+\s*")
WORDS_PER_CHUNK = 4
ARGUMENT_CHARS_PER_CHUNK = 24


def sse_stream(completion: dict[str, Any], *, include_usage: bool) -> str:
    """`completion` as OpenAI streams it: a role chunk, content deltas, tool-call deltas (each call's
    id and name, then its arguments in pieces), a finish chunk, optionally a usage chunk (no
    choices), then `[DONE]`. Concatenating the deltas gives the content and arguments exactly."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": completion["system_fingerprint"],
    }
    choice = completion["choices"][0]
    content: str = choice["message"]["content"] or ""
    calls: list[dict[str, Any]] = choice["message"].get("tool_calls") or []

    def event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            chunk["usage"] = None
        return chunk

    pieces = _PIECE.findall(content)
    if "".join(pieces) != content:  # leading/trailing whitespace only: keep it exact
        pieces = [content]
    # OpenAI opens a stream that only calls tools with `content: null`, any other with "".
    events = [event({"role": "assistant", "content": None if calls and not content else "", "refusal": None})]
    for start in range(0, len(pieces), WORDS_PER_CHUNK):
        events.append(event({"content": "".join(pieces[start : start + WORDS_PER_CHUNK])}))
    for index, call in enumerate(calls):
        # As OpenAI streams a call: id, type and name first, then the arguments in pieces.
        head = {"index": index, "id": call["id"], "type": "function"}
        events.append(
            event({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
        )
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), ARGUMENT_CHARS_PER_CHUNK):
            piece = arguments[start : start + ARGUMENT_CHARS_PER_CHUNK]
            events.append(event({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    events.append(event({}, choice["finish_reason"]))
    if include_usage:
        events.append({**base, "choices": [], "usage": completion["usage"]})
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"
