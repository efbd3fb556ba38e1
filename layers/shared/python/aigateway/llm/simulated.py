"""A simulated OpenAI-compatible provider: deterministic, honest, and able to misbehave on demand.

Used when no OpenAI key is configured (local runtime, demos, a Lambda deployed without a key)
and by tests and benchmarks. It speaks the Chat Completions wire format closely enough for the
real `openai` SDK, counts tokens with the real tokenizers (tokens.py), and every answer says it
is simulated: text starts with "[simulated]", generated JSON strings start with "[simulated] ",
responses carry `system_fingerprint: "fp_simulated"` and the header `x-simulated: true`.

Layout: a pure core (`SimulatedProvider.handle`, no I/O, no sleeping) and thin transports that
carry out what the core decides (delays, dropped connections):
- `SimulatedProviderServer`: HTTP/1.1 on 127.0.0.1 (ThreadingHTTPServer in a daemon thread).
- `simulated_transport` / `SimulatedTransport`: in-process, no sockets; an httpx transport.
- `python -m aigateway.llm.simulated --port 8100 [--faults JSON]`.

Fault plan (POST /_sim/faults, env SIM_FAULTS, or the constructor), any subset of:
    {"script": ["429", "500", "ok", "latency=250", ...],   # one entry per chat request, first
     "marked": {"cell-7": ["500", "500"]},                  # scripts for requests containing a marker
     "rate": 0.2, "kinds": ["429", "500", "503"],          # then random faults, seeded
     "seed": 7, "latency_ms": 50,                            # base latency on every chat request
     "retry_after_s": 1, "hang_s": 30}                        # 429 retry-after; "timeout" hold
Kinds: 429, 429_retry_after (Retry-After: retry_after_s, default 1 s), 500, 503, timeout, reset,
malformed, schema_invalid, content_filter (400 `content_filter`, Azure OpenAI's shape),
context_length (400 `context_length_exceeded`), 401 (invalid_api_key), latency=NNN, ok.
Requests whose prompt plus output limit exceed the model's context window are refused with the
same 400 `context_length_exceeded` OpenAI sends, fault or not.
Tools: with `tools` (and `tool_choice` not "none") the answer is one call of the named function,
else of the first, arguments generated from its parameter schema (`finish_reason: "tool_calls"`);
with `auto` after a tool result it answers in words. Tool messages must answer a preceding call.
Exact answers for tests: `queue_response(status, body, headers)` or POST /_sim/responses
{"status": 200, "body": {...}, "headers": {...}}; each is used once, before the script.
Counters: GET /_sim/stats (DELETE resets them); DELETE /_sim/faults clears plan and queue.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

from aigateway.llm import simulated_scoring, tokens
from aigateway.llm.catalog import MODELS, ModelSpec

if TYPE_CHECKING:
    import httpx

SIMULATED_PREFIX = "[simulated] "
SYSTEM_FINGERPRINT = "fp_simulated"
ENV_VAR = "SIM_FAULTS"
FAULT_KINDS = (
    "429",
    "429_retry_after",
    "500",
    "503",
    "timeout",
    "reset",
    "malformed",
    "schema_invalid",
    "content_filter",
    "context_length",
    "401",
)
DEFAULT_RETRY_AFTER_S = 1.0
DEFAULT_RANDOM_KINDS = ("429", "500", "503")
DEFAULT_HANG_S = 30.0
MODELS_CREATED = 1_700_000_000  # fixed so /v1/models is deterministic
_LATENCY_RE = re.compile(r"^latency=(\d+(?:\.\d+)?)$")
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
_MAX_SCHEMA_DEPTH = 6  # past this, optional properties, null branches and minItems win
_HARD_DEPTH = 40
_MAX_GENERATED = 10_000  # cap on minItems / minLength honoured
_MAX_N = 8

SIM_HEADERS = {"x-simulated": "true", "openai-organization": "simulated", "openai-version": "2020-10-01"}


# ---------------------------------------------------------------------------------------------
# Fault plan
# ---------------------------------------------------------------------------------------------


def _check_entry(entry: str) -> str:
    if entry == "ok" or entry in FAULT_KINDS or _LATENCY_RE.match(entry):
        return entry
    raise ValueError(f"unknown fault {entry!r} (known: ok, {', '.join(FAULT_KINDS)}, latency=NNN)")


@dataclass(frozen=True)
class FaultPlan:
    """What the provider does wrong, and when. Immutable; the provider keeps the script cursor."""

    script: tuple[str, ...] = ()
    rate: float = 0.0
    kinds: tuple[str, ...] = DEFAULT_RANDOM_KINDS
    latency_ms: float = 0.0
    seed: int = 0
    retry_after_s: float | None = None
    hang_s: float = DEFAULT_HANG_S
    # A request whose body contains a marker takes its next fault from that marker's script
    # (before the main script): concurrent tests give each case its own faults.
    marked: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_json(cls, data: object) -> FaultPlan:
        """Validate a plan given as JSON (a dict); raises ValueError with a readable message."""
        if not isinstance(data, Mapping):
            raise ValueError("fault plan must be a JSON object")
        unknown = set(data) - {"script", "rate", "kinds", "latency_ms", "seed", "retry_after_s", "hang_s", "marked"}
        if unknown:
            raise ValueError(f"unknown fault plan field(s): {', '.join(sorted(unknown))}")
        script = data.get("script", [])
        if not isinstance(script, list) or not all(isinstance(s, (str, int)) for s in script):
            raise ValueError("'script' must be a list of fault names")
        kinds = data.get("kinds", list(DEFAULT_RANDOM_KINDS))
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, (str, int)) for k in kinds):
            raise ValueError("'kinds' must be a non-empty list of fault names")
        rate = _number(data, "rate", 0.0)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("'rate' must be between 0 and 1")
        latency_ms = _number(data, "latency_ms", 0.0)
        hang_s = _number(data, "hang_s", DEFAULT_HANG_S)
        if latency_ms < 0 or hang_s < 0:
            raise ValueError("'latency_ms' and 'hang_s' must not be negative")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("'seed' must be an integer")
        retry_after = data.get("retry_after_s")
        if retry_after is not None:
            retry_after = _number(data, "retry_after_s", 0.0)
            if retry_after < 0:
                raise ValueError("'retry_after_s' must not be negative")
        marked = data.get("marked", {})
        if not isinstance(marked, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, list) for k, v in marked.items()
        ):
            raise ValueError("'marked' must map non-empty marker strings to lists of fault names")
        return cls(
            marked=tuple((k, tuple(_check_entry(str(e)) for e in v)) for k, v in marked.items()),
            script=tuple(_check_entry(str(s)) for s in script),
            rate=rate,
            kinds=tuple(_check_entry(str(k)) for k in kinds),
            latency_ms=latency_ms,
            seed=seed,
            retry_after_s=retry_after,
            hang_s=hang_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "script": list(self.script),
            "rate": self.rate,
            "kinds": list(self.kinds),
            "latency_ms": self.latency_ms,
            "seed": self.seed,
            "retry_after_s": self.retry_after_s,
            "hang_s": self.hang_s,
            "marked": {k: list(v) for k, v in self.marked},
        }


def _number(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{key}' must be a number")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


@dataclass
class SimResponse:
    """What to answer. Transports honour `delay_s` (wait first) and `reset` (drop the connection)."""

    status: int
    headers: dict[str, str]
    body: bytes | Iterator[bytes]
    delay_s: float = 0.0
    reset: bool = False
    fault: str | None = None


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return _json_bytes({"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass
class _Stats:
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults_injected: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The provider (pure core)
# ---------------------------------------------------------------------------------------------


class SimulatedProvider:
    """OpenAI-compatible request handler with a fault plan and counters. Thread-safe."""

    def __init__(
        self,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if faults is None:
            raw = (os.environ if env is None else env).get(ENV_VAR, "").strip()
            if raw:
                try:
                    faults = FaultPlan.from_json(json.loads(raw))
                except (ValueError, json.JSONDecodeError) as exc:
                    raise ValueError(f"{ENV_VAR} is not a valid fault plan: {exc}") from exc
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._script: list[str] = []
        self._marked: dict[bytes, list[str]] = {}
        self._canned: list[SimResponse] = []
        self._rng = random.Random(0)
        self._stats = _Stats()
        self.set_faults(faults if faults is not None else FaultPlan())

    # -- control ------------------------------------------------------------------------------

    def set_faults(self, plan: FaultPlan | Mapping[str, Any]) -> FaultPlan:
        """Replace the fault plan (the script restarts, the random stream is reseeded)."""
        if not isinstance(plan, FaultPlan):
            plan = FaultPlan.from_json(plan)
        with self._lock:
            self._plan = plan
            self._script = list(plan.script)
            self._marked = {k.encode(): list(v) for k, v in plan.marked}
            self._rng = random.Random(plan.seed)
        return plan

    def reset_faults(self) -> None:
        """Back to no faults; queued canned responses are dropped too."""
        self.set_faults(FaultPlan())
        with self._lock:
            self._canned.clear()

    @property
    def faults(self) -> FaultPlan:
        with self._lock:
            return self._plan

    def queue_response(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        """Answer the next chat request with exactly this (queued answers go before the script).

        For tests that need a precise provider answer, e.g. usage with cached tokens. `body` is
        JSON-encoded unless it is bytes; `x-simulated: true` is always added.
        """
        raw = body if isinstance(body, bytes) else _json_bytes(body)
        merged = {**self._headers(), **{k.lower(): v for k, v in (headers or {}).items()}}
        with self._lock:
            self._canned.append(SimResponse(status, merged, raw, fault="canned"))

    def remaining_script(self) -> list[str]:
        with self._lock:
            return list(self._script)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._stats.requests,
                "by_status": dict(self._stats.by_status),
                "faults_injected": self._stats.faults_injected,
                "faults_by_kind": dict(self._stats.faults_by_kind),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = _Stats()

    def _next_fault(self, raw: bytes = b"") -> tuple[str | None, float, FaultPlan]:
        """(fault kind or None, extra latency seconds, plan) for one chat request."""
        with self._lock:
            plan = self._plan
            entry: str | None = None
            marked = next((script for marker, script in self._marked.items() if script and marker in raw), None)
            if marked:
                entry = marked.pop(0)
            elif self._script:
                entry = self._script.pop(0)
            elif plan.rate > 0 and self._rng.random() < plan.rate:
                entry = self._rng.choice(plan.kinds)
            delay = plan.latency_ms / 1000.0
            if entry is not None:
                match = _LATENCY_RE.match(entry)
                if match:
                    delay += float(match.group(1)) / 1000.0
                if entry != "ok":
                    self._stats.faults_injected += 1
                    self._stats.faults_by_kind[entry] = self._stats.faults_by_kind.get(entry, 0) + 1
                if entry == "ok" or match:
                    entry = None
            return entry, delay, plan

    def _record(self, response: SimResponse) -> SimResponse:
        key = "reset" if response.reset else str(response.status)
        with self._lock:
            self._stats.requests += 1
            self._stats.by_status[key] = self._stats.by_status.get(key, 0) + 1
        return response

    # -- routing ------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> SimResponse:
        """Answer one HTTP request. Never sleeps and never raises; see SimResponse for delays."""
        method = method.upper()
        route = path.split("?", 1)[0].rstrip("/") or "/"
        if route.startswith(("/_sim/", "/v1/_sim/")):
            return self._control(method, route.removeprefix("/v1"), body)
        api = route[3:] if route.startswith("/v1/") else route
        try:
            if api == "/chat/completions":
                if method != "POST":
                    raise _ApiError(405, f"Invalid method for URL ({method} {path})", code=None)
                return self._record(self._chat(body))
            if api == "/models":
                if method != "GET":
                    raise _ApiError(405, f"Invalid method for URL ({method} {path})")
                return self._record(self._ok({"object": "list", "data": [_model_json(m) for m in MODELS.values()]}))
            if api.startswith("/models/"):
                name = api[len("/models/") :]
                if method != "GET":
                    raise _ApiError(405, f"Invalid method for URL ({method} {path})")
                if name not in MODELS:
                    raise _ApiError(
                        404,
                        f"The model `{name}` does not exist or you do not have access to it.",
                        code="model_not_found",
                    )
                return self._record(self._ok(_model_json(MODELS[name])))
            raise _ApiError(404, f"Invalid URL ({method} {path})")
        except _ApiError as err:
            return self._record(self._error(err))
        except Exception as exc:  # noqa: BLE001 - a simulator bug must still answer like a server
            bug = _ApiError(500, f"The simulated provider failed: {type(exc).__name__}: {exc}", type_="server_error")
            return self._record(self._error(bug))

    def _control(self, method: str, route: str, body: bytes) -> SimResponse:
        try:
            if route == "/_sim/faults":
                if method == "GET":
                    return self._ok({"faults": self.faults.to_json(), "remaining_script": self.remaining_script()})
                if method in ("POST", "PUT"):
                    try:
                        data = json.loads(body or b"{}")
                        plan = self.set_faults(FaultPlan.from_json(data))
                    except (ValueError, json.JSONDecodeError) as exc:
                        raise _ApiError(400, f"invalid fault plan: {exc}", code="invalid_fault_plan") from None
                    return self._ok({"faults": plan.to_json()})
                if method == "DELETE":
                    self.reset_faults()
                    return self._ok({"faults": self.faults.to_json()})
            elif route == "/_sim/responses" and method == "POST":
                try:
                    data = json.loads(body or b"{}")
                    if not isinstance(data, dict) or not isinstance(data.get("status", 200), int):
                        raise ValueError("expected {'status': int, 'body': any, 'headers': {str: str}}")
                    headers = data.get("headers") or {}
                    if not isinstance(headers, dict):
                        raise ValueError("'headers' must be an object")
                    self.queue_response(
                        int(data.get("status", 200)), data.get("body"), {str(k): str(v) for k, v in headers.items()}
                    )
                except ValueError as exc:
                    raise _ApiError(400, f"invalid canned response: {exc}", code="invalid_canned_response") from None
                return self._ok({"queued": True})
            elif route == "/_sim/stats":
                if method == "GET":
                    return self._ok(self.stats())
                if method == "DELETE":
                    self.reset_stats()
                    return self._ok(self.stats())
            else:
                raise _ApiError(404, f"Invalid URL ({method} {route})")
            raise _ApiError(405, f"Invalid method for URL ({method} {route})")
        except _ApiError as err:
            return self._error(err)

    @staticmethod
    def _headers(content_type: str = "application/json") -> dict[str, str]:
        return {
            "content-type": content_type,
            "x-request-id": f"req_sim_{uuid.uuid4().hex}",
            "openai-processing-ms": "0",
            **SIM_HEADERS,
        }

    def _ok(self, data: object) -> SimResponse:
        return SimResponse(200, self._headers(), _json_bytes(data))

    def _error(self, err: _ApiError) -> SimResponse:
        return SimResponse(err.status, self._headers(), _error_body(err.message, err.type, err.param, err.code))

    # -- chat completions ---------------------------------------------------------------------

    def _chat(self, raw: bytes) -> SimResponse:
        with self._lock:
            canned = self._canned.pop(0) if self._canned else None
        if canned is not None:
            canned.headers["x-request-id"] = f"req_sim_{uuid.uuid4().hex}"
            return canned
        fault, delay, plan = self._next_fault(raw)
        response = self._chat_answer(raw, fault, plan)
        response.delay_s += delay
        response.fault = fault
        return response

    def _chat_answer(self, raw: bytes, fault: str | None, plan: FaultPlan) -> SimResponse:
        if fault in ("429", "429_retry_after"):
            headers = self._headers()
            message = "Rate limit reached for requests (simulated). Please try again later."
            retry_after = plan.retry_after_s
            if fault == "429_retry_after" and retry_after is None:
                retry_after = DEFAULT_RETRY_AFTER_S
            if retry_after is not None:
                headers["retry-after"] = _fmt_seconds(retry_after)
                headers["retry-after-ms"] = str(int(retry_after * 1000))
                wait = _fmt_seconds(retry_after)
                message = f"Rate limit reached for requests (simulated). Please try again in {wait}s."
            return SimResponse(429, headers, _error_body(message, "requests", None, "rate_limit_exceeded"))
        if fault == "401":
            message = "Incorrect API key provided (simulated). You can find your API key at the provider's console."
            return SimResponse(
                401, self._headers(), _error_body(message, "invalid_request_error", None, "invalid_api_key")
            )
        if fault == "content_filter":
            message = (
                "The response was filtered due to the prompt triggering the content management policy "
                "(simulated). Please modify your prompt and retry."
            )
            return SimResponse(
                400, self._headers(), _error_body(message, "invalid_request_error", "prompt", "content_filter")
            )
        if fault == "context_length":
            # As if the prompt were just over the window of the model asked for.
            try:
                window = MODELS[str(self._parse(raw).get("model"))].context_window
            except (_ApiError, KeyError):
                window = 128_000
            return self._error(_context_length_error(window, window + 1))
        if fault == "500":
            message = "The server had an error while processing your request. Sorry about that! (simulated)"
            return SimResponse(500, self._headers(), _error_body(message, "server_error", None, None))
        if fault == "503":
            message = "The engine is currently overloaded, please try again later. (simulated)"
            return SimResponse(503, self._headers(), _error_body(message, "server_error", None, None))
        if fault == "reset":
            return SimResponse(0, {}, b"", reset=True)
        if fault == "malformed":
            # Claims JSON (or SSE), is not: what a misbehaving proxy or a cut-off body looks like.
            if _wants_stream(raw):
                headers = self._headers("text/event-stream; charset=utf-8")
                cut = b'data: {"id":"chatcmpl-sim-malformed","object":"chat.compl\n\n'
                return SimResponse(200, headers, iter([cut]))
            body = b'{"id": "chatcmpl-sim-malformed", "object": "chat.completion", "choices": [{"index": 0, "mess'
            return SimResponse(200, self._headers(), body)
        response = self._completion(raw, schema_invalid=fault == "schema_invalid")
        if fault == "timeout":
            response.delay_s += plan.hang_s
        return response

    def _completion(self, raw: bytes, *, schema_invalid: bool) -> SimResponse:
        try:
            request = self._parse(raw)
            spec, max_tokens = _validate(request)
        except _ApiError as err:
            return self._error(err)
        model = spec.name
        messages: list[dict[str, Any]] = request["messages"]
        response_format = request.get("response_format")
        n = int(request.get("n") or 1)
        digest = _digest(model, messages, response_format)
        prompt_tokens = tokens.count_messages(messages, model)
        if request.get("tools"):  # definitions are prompt too (an estimate: OpenAI's rendering is private)
            prompt_tokens += tokens.count_text(json.dumps(request["tools"], ensure_ascii=False), model)
        if prompt_tokens + (max_tokens or 0) > spec.context_window:
            return self._error(_context_length_error(spec.context_window, prompt_tokens, max_tokens or 0))

        choices: list[tuple[str, str]] = []  # (content, finish_reason)
        completion_tokens = 0
        # Tool calls are simulated in whole answers only (the gateway never streams from a provider).
        tool_calls = [] if request.get("stream") else _tool_calls(request, digest)
        for call in tool_calls:
            completion_tokens += tokens.count_text(call["function"]["name"] + call["function"]["arguments"], model)
        for index in range(0 if tool_calls else n):
            content = _content(model, messages, response_format, digest if index == 0 else _digest(digest, index))
            if schema_invalid:
                content = _invalid_content(response_format, digest)
            finish = "stop"
            if max_tokens is not None and tokens.count_text(content, model) > max_tokens:
                content = tokens.truncate_text(content, model, max_tokens)
                finish = "length"
            completion_tokens += tokens.count_text(content, model)
            choices.append((content, finish))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        completion_id = f"chatcmpl-sim-{digest[:24]}"
        created = int(time.time())
        if request.get("stream"):
            options = request.get("stream_options") or {}
            include_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
            stream = _sse(completion_id, created, model, choices, usage if include_usage else None)
            headers = self._headers("text/event-stream; charset=utf-8")
            headers["cache-control"] = "no-cache"
            return SimResponse(200, headers, stream)
        answers: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (content, finish) in enumerate(choices)
        ]
        if tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": tool_calls, "refusal": None}
            answers = [{"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}]
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": answers,
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return SimResponse(200, self._headers(), _json_bytes(body))

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw or b"")
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise _ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.) (simulated)",
            )
        return data


# ---------------------------------------------------------------------------------------------
# Validation (mirrors what api.openai.com rejects)
# ---------------------------------------------------------------------------------------------


def _context_length_error(window: int, prompt_tokens: int, max_tokens: int = 0) -> _ApiError:
    """OpenAI's refusal of a request that does not fit the model's context window."""
    message = (
        f"This model's maximum context length is {window} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    return _ApiError(400, message, param="messages", code="context_length_exceeded")


def _wants_stream(raw: bytes) -> bool:
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("stream") is True


def _validate(request: dict[str, Any]) -> tuple[ModelSpec, int | None]:
    model = request.get("model")
    if not model:
        raise _ApiError(400, "you must provide a model parameter")
    if not isinstance(model, str) or model not in MODELS:
        raise _ApiError(
            404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
        )
    spec = MODELS[model]
    if "messages" not in request or request["messages"] is None:
        raise _ApiError(
            400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    messages = request["messages"]
    if not isinstance(messages, list):
        raise _ApiError(
            400,
            f"Invalid type for 'messages': expected an array, but got {_json_type(messages)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        raise _ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        _validate_message(i, message)

    if request.get("stream") is not None and not isinstance(request["stream"], bool):
        raise _ApiError(400, "Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type")
    n = request.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_N):
        raise _ApiError(
            400, f"Invalid 'n': the simulated provider supports 1 to {_MAX_N} choices.", param="n", code="invalid_value"
        )

    if spec.is_reasoning:
        _validate_reasoning(spec, request)
    elif request.get("reasoning_effort") is not None:
        raise _ApiError(
            400,
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            param="reasoning_effort",
            code="unsupported_parameter",
        )
    else:
        for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
            value = request.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise _ApiError(
                    400,
                    f"Invalid '{name}': expected a number between {low:g} and {high:g}, but got {value!r} instead.",
                    param=name,
                    code="invalid_value",
                )

    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _ApiError(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value!r} instead.",
                param=name,
                code="integer_below_min_value",
            )
        if value > spec.max_output_tokens:
            raise _ApiError(
                400,
                f"{name} is too large: {value}. This model supports at most {spec.max_output_tokens} "
                f"completion tokens, whereas you provided {value}.",
                param=name,
                code="invalid_value",
            )
        max_tokens = value if max_tokens is None else min(max_tokens, value)

    _validate_response_format(request.get("response_format"), messages)
    _validate_tools(request.get("tools"), request.get("tool_choice"), messages)
    return spec, max_tokens


def _validate_message(i: int, message: object) -> None:
    if not isinstance(message, dict):
        raise _ApiError(
            400,
            f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(message)} instead.",
            param=f"messages[{i}]",
            code="invalid_type",
        )
    role = message.get("role")
    if role is None:
        raise _ApiError(
            400,
            f"Missing required parameter: 'messages[{i}].role'.",
            param=f"messages[{i}].role",
            code="missing_required_parameter",
        )
    if role not in _ROLES:
        raise _ApiError(
            400,
            f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
            "'tool', and 'developer'.",
            param=f"messages[{i}].role",
            code="invalid_value",
        )
    content = message.get("content")
    if content is None and role in ("system", "developer", "user", "tool"):
        raise _ApiError(
            400,
            f"Missing required parameter: 'messages[{i}].content'.",
            param=f"messages[{i}].content",
            code="missing_required_parameter",
        )
    if content is not None and not isinstance(content, (str, list)):
        raise _ApiError(
            400,
            f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects, "
            f"but got {_json_type(content)} instead.",
            param=f"messages[{i}].content",
            code="invalid_type",
        )


def _validate_reasoning(spec: ModelSpec, request: dict[str, Any]) -> None:
    # o3-mini refuses the sampling parameters outright; the others accept only the default (1).
    for name in ("temperature", "top_p"):
        value = request.get(name)
        if value is None:
            continue
        if spec.name == "o3-mini":
            raise _ApiError(
                400,
                f"Unsupported parameter: '{name}' is not supported with this model.",
                param=name,
                code="unsupported_parameter",
            )
        if value != 1:
            raise _ApiError(
                400,
                f"Unsupported value: '{name}' does not support {value!r} with this model. "
                "Only the default (1) value is supported.",
                param=name,
                code="unsupported_value",
            )
    if request.get("max_tokens") is not None:
        raise _ApiError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    effort = request.get("reasoning_effort")
    if effort is not None and effort not in _REASONING_EFFORTS:
        raise _ApiError(
            400,
            f"Invalid value: '{effort}'. Supported values are: {', '.join(repr(e) for e in _REASONING_EFFORTS)}.",
            param="reasoning_effort",
            code="invalid_value",
        )


def _tool_functions(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        return []
    return [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]


def _validate_tools(tools: object, choice: object, messages: list[dict[str, Any]]) -> None:
    """What OpenAI refuses about tools: a malformed definition, a tool_choice without tools or
    naming an unknown function, and a tool message that answers no preceding tool call."""
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise _ApiError(400, "Invalid 'tools': expected a non-empty array.", param="tools", code="invalid_value")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(name, str):
                raise _ApiError(
                    400, f"Invalid 'tools[{i}]': expected a function tool with a name.", param=f"tools[{i}]"
                )
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise _ApiError(
                    400,
                    f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that "
                    "matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    param=f"tools[{i}].function.name",
                    code="invalid_value",
                )
    if choice is not None and tools is None:
        raise _ApiError(
            400,
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if named not in {f.get("name") for f in _tool_functions(tools)}:
            raise _ApiError(
                400, f"Invalid value for 'tool_choice': function {named!r} is not in 'tools'.", param="tool_choice"
            )
    called: set[object] = set()
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            called = {c.get("id") for c in message.get("tool_calls") or [] if isinstance(c, dict)}
        elif message.get("role") == "tool" and message.get("tool_call_id") not in called:
            raise _ApiError(
                400,
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                "'tool_calls'.",
                param=f"messages.[{i}].role",
            )


def _tool_calls(request: dict[str, Any], digest: str) -> list[dict[str, Any]]:
    """The function call the simulated model makes: the named one, else the first tool, when it
    must call one (`required`) or may (`auto`) and the conversation is not already answering a
    tool result; arguments are an instance of the function's parameter schema."""
    choice = request.get("tool_choice", "auto")
    functions = _tool_functions(request.get("tools"))
    if not functions or choice == "none":
        return []
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if named is None and choice != "required" and request["messages"][-1].get("role") == "tool":
        return []  # `auto` with the tool's result in hand: answer in words
    function = next((f for f in functions if f.get("name") == named), functions[0])
    parameters = function.get("parameters")
    rng = random.Random(int(digest[:16], 16))
    arguments = _SchemaFaker(parameters if isinstance(parameters, dict) else {"type": "object"}, rng).value()
    return [
        {
            "id": f"call_{digest[:24]}",
            "type": "function",
            "function": {"name": function["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
        }
    ]


def _validate_response_format(fmt: object, messages: list[dict[str, Any]]) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise _ApiError(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
            param="response_format.type",
            code="invalid_value",
        )
    if fmt["type"] == "json_object":
        text = " ".join(t for m in messages for t in _texts(m.get("content")))
        if "json" not in text.lower():
            raise _ApiError(
                400,
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                param="messages",
            )
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise _ApiError(
                400,
                "Missing required parameter: 'response_format.json_schema'.",
                param="response_format.json_schema",
                code="missing_required_parameter",
            )
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise _ApiError(
                400,
                "Missing required parameter: 'response_format.json_schema.name'.",
                param="response_format.json_schema.name",
                code="missing_required_parameter",
            )
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise _ApiError(
                400,
                "Invalid type for 'response_format.json_schema.schema': expected an object.",
                param="response_format.json_schema.schema",
                code="invalid_type",
            )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _model_json(spec: ModelSpec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": MODELS_CREATED, "owned_by": "simulated"}


# ---------------------------------------------------------------------------------------------
# Deterministic content
# ---------------------------------------------------------------------------------------------

_WORDS = (
    "alpha",
    "amber",
    "atlas",
    "beacon",
    "cedar",
    "cobalt",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "maple",
    "nimbus",
    "onyx",
    "prism",
    "quartz",
    "raven",
    "sierra",
    "tundra",
    "umber",
    "vertex",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
    "orbit",
)
_PHRASES = (
    "No model was called and no external service was contacted.",
    "Token counts are real; the words are placeholders.",
    "The same request always yields this same answer.",
    "Set an OpenAI API key to get real completions.",
    "This text is deterministic and safe to assert on in tests.",
    "Latency, rate limits and errors can be injected for testing.",
)


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _last_user_snippet(messages: Sequence[dict[str, Any]], words: int = 8) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            text = " ".join(_texts(message.get("content")))
            found = text.split()
            if found:
                snippet = " ".join(found[:words])
                if len(snippet) > 80:
                    snippet = snippet[:77] + "..."
                elif len(found) > words:
                    snippet += " ..."
                return snippet
    return "(no user message)"


def _content(model: str, messages: Sequence[dict[str, Any]], fmt: object, digest: str) -> str:
    rng = random.Random(int(digest[:16], 16))
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        json_schema = fmt.get("json_schema") or {}
        if isinstance(json_schema, dict) and json_schema.get("name") == simulated_scoring.SCHEMA_NAME:
            # The first user message is the lead (later ones may be repair requests).
            user = next((m for m in messages if m.get("role") == "user"), {})
            return json.dumps(simulated_scoring.judge(" ".join(_texts(user.get("content")))), ensure_ascii=False)
        schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
        value = _SchemaFaker(schema if isinstance(schema, dict) else {}, rng).value()
        return json.dumps(value, ensure_ascii=False)
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return json.dumps(
            {
                "simulated": True,
                "model": model,
                "answer": f"{SIMULATED_PREFIX}reply to: {_last_user_snippet(messages)}",
                "ref": digest[:8],
            },
            ensure_ascii=False,
        )
    phrases = rng.sample(_PHRASES, 2)
    return (
        f'[simulated] {model} reply to "{_last_user_snippet(messages)}": this answer was produced offline '
        f"by the simulated provider (ref {digest[:8]}, {rng.choice(_WORDS)}-{rng.choice(_WORDS)}). " + " ".join(phrases)
    )


def _invalid_content(fmt: object, digest: str) -> str:
    """JSON that breaks the requested schema (fault "schema_invalid")."""
    schema: dict[str, Any] = {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        candidate = fmt["json_schema"].get("schema")
        schema = candidate if isinstance(candidate, dict) else {}
    rng = random.Random(int(digest[:16], 16))
    if schema.get("type") == "object" or "properties" in schema:
        value = _SchemaFaker(schema, rng).value()
        if isinstance(value, dict):
            required = [k for k in schema.get("required", []) if k in value]
            properties = schema.get("properties") or {}
            if required:
                del value[required[0]]  # a required property is missing
            elif properties:
                first = next(iter(properties))
                value[first] = [{"simulated_fault": "schema_invalid"}]  # wrong type
            else:
                value["simulated_fault"] = "schema_invalid"
            value["simulated_fault_extra"] = 1  # and an unexpected one
            return json.dumps(value, ensure_ascii=False)
    return json.dumps([f"{SIMULATED_PREFIX}schema_invalid"], ensure_ascii=False)


class _SchemaFaker:
    """Deterministic instances of a JSON Schema (the subset Structured Outputs accepts)."""

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def value(self) -> Any:
        return self.gen(self.root, "value", 0)

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return {}
            node = node[part]
        return node if isinstance(node, dict) else {}

    def gen(self, schema: object, name: str, depth: int) -> Any:
        if depth > _HARD_DEPTH:  # a schema that only recursion can satisfy: stop somewhere
            return None
        if not isinstance(schema, dict):  # `true` / missing schema
            return f"{SIMULATED_PREFIX}{_label(name)}"
        if "$ref" in schema:
            merged = {**self.resolve(str(schema["$ref"])), **{k: v for k, v in schema.items() if k != "$ref"}}
            return self.gen(merged, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.gen(self.pick(options, depth, first=key == "oneOf"), name, depth)
        if isinstance(schema.get("allOf"), list):
            merged = dict(schema)
            del merged["allOf"]
            for part in schema["allOf"]:
                if isinstance(part, dict):
                    part = self.resolve(str(part["$ref"])) if "$ref" in part else part
                    for key, value in part.items():
                        if key == "properties" and isinstance(value, dict):
                            merged["properties"] = {**merged.get("properties", {}), **value}
                        elif key == "required" and isinstance(value, list):
                            merged["required"] = [*merged.get("required", []), *value]
                        else:
                            merged.setdefault(key, value)
            return self.gen(merged, name, depth)

        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            kind = "null" if (not non_null or (depth >= _MAX_SCHEMA_DEPTH and "null" in kind)) else non_null[0]
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"

        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, name)

    def pick(self, options: list[Any], depth: int, *, first: bool) -> Any:
        def is_null(option: Any) -> bool:
            return isinstance(option, dict) and option.get("type") == "null"

        non_null = [o for o in options if not is_null(o)]
        if not non_null or (depth >= _MAX_SCHEMA_DEPTH and len(non_null) < len(options)):
            return {"type": "null"}
        return non_null[0] if first else self.rng.choice(non_null)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        result: dict[str, Any] = {}
        for key, sub in properties.items():
            if depth >= _MAX_SCHEMA_DEPTH and key not in required:
                continue
            result[key] = self.gen(sub, key, depth + 1)
        extra = schema.get("additionalProperties", True)
        if not properties and extra is not False:
            if isinstance(extra, dict) and extra:
                result["simulated"] = self.gen(extra, "simulated", depth + 1)
            else:
                result["simulated"] = True
        minimum = schema.get("minProperties")
        if isinstance(minimum, int) and len(result) < minimum and extra is not False:
            for i in range(len(result), minimum):
                sub_schema = extra if isinstance(extra, dict) else {}
                result[f"simulated_{i}"] = self.gen(sub_schema, f"simulated {i}", depth + 1)
        return result

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        low = min(_int(schema.get("minItems"), 0), _MAX_GENERATED)
        high = _int(schema.get("maxItems"), max(low, 3))
        high = max(low, high)
        # Usually 1-3 items within [minItems, maxItems]; just the minimum deep in recursive schemas.
        deep = depth >= _MAX_SCHEMA_DEPTH
        count = low if deep else self.rng.randint(max(low, min(1, high)), min(high, max(low, 3)))
        items = schema.get("items", {})
        result: list[Any] = []
        seen: set[str] = set()
        attempts = 0
        while len(result) < count and attempts < count * 8 + 8:
            attempts += 1
            item = self.gen(items, _singular(name), depth + 1)
            if schema.get("uniqueItems"):
                key = json.dumps(item, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
            result.append(item)
        return result

    def integer(self, schema: dict[str, Any]) -> int:
        low: int | None = None
        high: int | None = None
        if isinstance(schema.get("minimum"), (int, float)):
            low = math.ceil(schema["minimum"])
        if isinstance(schema.get("exclusiveMinimum"), (int, float)):
            low = math.floor(schema["exclusiveMinimum"]) + 1
        if isinstance(schema.get("maximum"), (int, float)):
            high = math.floor(schema["maximum"])
        if isinstance(schema.get("exclusiveMaximum"), (int, float)):
            high = math.ceil(schema["exclusiveMaximum"]) - 1
        lo_f, hi_f = _bounds(low, high, 100)
        lo, hi = int(lo_f), int(hi_f)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first <= last:
                return self.rng.randint(first, last) * step
        return self.rng.randint(lo, hi)

    def number(self, schema: dict[str, Any]) -> float:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        lo, hi = _bounds(
            float(low) if isinstance(low, (int, float)) else None,
            float(high) if isinstance(high, (int, float)) else None,
            100.0,
        )
        value = round(self.rng.uniform(lo, hi), 2)
        exclusive_low = isinstance(schema.get("exclusiveMinimum"), (int, float))
        exclusive_high = isinstance(schema.get("exclusiveMaximum"), (int, float))
        if value < lo or value > hi or (exclusive_low and value <= lo) or (exclusive_high and value >= hi):
            value = (lo + hi) / 2
        return value

    def string(self, schema: dict[str, Any], name: str) -> str:
        fmt = schema.get("format")
        tag = f"{self.rng.getrandbits(32):08x}"
        if fmt == "date-time":
            return f"2025-01-{self.rng.randint(1, 28):02d}T12:00:00Z"
        if fmt == "date":
            return f"2025-01-{self.rng.randint(1, 28):02d}"
        if fmt == "time":
            return f"12:{self.rng.randint(0, 59):02d}:00"
        if fmt == "email":
            return f"simulated-{tag}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/simulated/{tag}"
        if fmt == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        min_len = min(_int(schema.get("minLength"), 0), _MAX_GENERATED)
        max_len = _int(schema.get("maxLength"), 0) or None
        text = f"{SIMULATED_PREFIX}{_label(name)} {self.rng.choice(_WORDS)}"
        while len(text) < min_len:
            text += " " + self.rng.choice(_WORDS)
        if max_len is not None and len(text) > max_len:
            text = text[:max_len].rstrip() if max_len >= len(SIMULATED_PREFIX) else "[sim]"[:max_len]
            text = text.ljust(min_len, "~")
        return text


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _bounds(lo: float | None, hi: float | None, span: float) -> tuple[float, float]:
    if lo is None and hi is None:
        return 0, span
    if lo is None:
        assert hi is not None
        return min(hi, 0) if hi >= 0 else hi - span, hi
    if hi is None:
        return lo, lo + span
    return (lo, hi) if lo <= hi else (hi, lo)


def _label(name: str) -> str:
    return re.sub(r"[_\-]+", " ", name).strip() or "value"


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") and len(name) > 3 else f"{name} item"


def _fmt_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _sse(
    completion_id: str,
    created: int,
    model: str,
    choices: list[tuple[str, str]],
    usage: dict[str, Any] | None,
) -> Iterator[bytes]:
    def chunk(choice_list: list[dict[str, Any]], with_usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choice_list,
        }
        if usage is not None:
            data["usage"] = with_usage
        return b"data: " + _json_bytes(data) + b"\n\n"

    for index, (content, finish) in enumerate(choices):
        yield chunk(
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        for piece in re.findall(r"\s*\S+|\s+$", content):
            yield chunk([{"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
        yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}])
    if usage is not None:
        yield chunk([], usage)
    yield b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# HTTP transport
# ---------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], provider: SimulatedProvider, stopping: threading.Event) -> None:
        self.provider = provider
        self.stopping = stopping
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: clients vanish
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "simulated-openai/1"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.provider.handle(self.command, self.path, headers, body)
        if response.delay_s > 0 and self.server.stopping.wait(response.delay_s):
            self._reset()  # server stopping: give up on the held request
            return
        if response.reset:
            self._reset()
            return
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            if isinstance(response.body, bytes):
                self.send_header("content-length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)
            else:
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for piece in response.body:
                    if piece:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.wfile.close()
            self.connection.close()
        except OSError:
            pass


class SimulatedProviderServer:
    """The simulated provider on a local HTTP port, served from a daemon thread.

    with SimulatedProviderServer() as server:
        client = openai.OpenAI(api_key="sim", base_url=server.base_url)
    """

    def __init__(self, provider: SimulatedProvider | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.provider = provider if provider is not None else SimulatedProvider()
        self.host = host
        self.port = port
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("server is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        """Bind, serve in a daemon thread, and return the OpenAI base URL (…/v1)."""
        if self._server is not None:
            return self.base_url
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self.provider, self._stopping)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="simulated-openai", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving; requests held by a "timeout" fault are released (connection dropped)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def serve_forever(self) -> None:
        """Start and block until KeyboardInterrupt (for the CLI)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> SimulatedProviderServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# In-process transport
# ---------------------------------------------------------------------------------------------


class SimulatedTransport:
    """An in-process HTTP transport (no sockets) answering with a SimulatedProvider.

    It is an httpx transport (what the openai SDK is built on); httpx is imported lazily, from
    the request it receives, so importing this module stays cheap.

    Delays are slept in the calling thread. A "timeout" fault longer than the request's read
    timeout sleeps that timeout and raises the library's ReadTimeout (the SDK raises
    APITimeoutError); "reset" raises RemoteProtocolError (the SDK raises APIConnectionError).
    """

    def __init__(self, provider: SimulatedProvider | None = None) -> None:
        self.provider = provider if provider is not None else SimulatedProvider()

    def handle_request(self, request: Any) -> Any:
        module: Any = sys.modules[type(request).__module__.split(".", 1)[0]]
        body = request.read()
        path = request.url.raw_path.decode("ascii")
        response = self.provider.handle(request.method, path, dict(request.headers), body)
        if response.delay_s > 0:
            timeouts = request.extensions.get("timeout") or {}
            read_timeout = timeouts.get("read")
            if read_timeout is not None and read_timeout < response.delay_s:
                time.sleep(read_timeout)
                raise module.ReadTimeout("simulated provider: read timed out", request=request)
            time.sleep(response.delay_s)
        if response.reset:
            raise module.RemoteProtocolError(
                "Server disconnected without sending a response. (simulated reset)", request=request
            )
        return module.Response(response.status, headers=response.headers, content=response.body, request=request)

    def close(self) -> None:
        return None

    def __enter__(self) -> SimulatedTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def simulated_transport(provider: SimulatedProvider | None = None) -> httpx.BaseTransport:
    """A transport for `httpx.Client(transport=...)`, e.g. the OpenAI SDK's `http_client`:

    client = openai.OpenAI(api_key="sim", base_url="http://simulated.invalid/v1",
                           http_client=httpx.Client(transport=simulated_transport(provider)))
    """
    return cast("httpx.BaseTransport", SimulatedTransport(provider))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aigateway.llm.simulated", description="Serve the simulated OpenAI-compatible provider."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--faults", help='fault plan JSON, e.g. \'{"rate": 0.1, "kinds": ["429"]}\'')
    args = parser.parse_args(argv)
    try:
        plan = FaultPlan.from_json(json.loads(args.faults)) if args.faults else None
        provider = SimulatedProvider(plan)
    except (ValueError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    server = SimulatedProviderServer(provider, host=args.host, port=args.port)
    url = server.start()
    print(f"simulated OpenAI-compatible provider on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    print(f"  faults: {json.dumps(provider.faults.to_json())}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
