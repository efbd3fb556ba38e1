"""`python -m bench features`: what three gateway features cost or save, each against its baseline.

One embedded stack (infra.local.runtime.LocalStack on moto), one `SimulatedProviderServer` on
loopback HTTP, one bench tenant whose rate limits and budget are out of reach (bench/tenant.py),
the gateway behind `LocalHttpServer` (real loopback HTTP, as a client sees it). Figures are
medians and ratios against a baseline measured in the same run, rounds interleaved (order rotated
every round) so the machine's noise lands on both sides alike.

1. OpenAI-compatible endpoint overhead. The official `openai` SDK (max_retries=0, one keep-alive
   connection per client) makes the same `chat.completions.create` call twice per round: once
   with base_url = the gateway's /v1 and the bench tenant's key, once with base_url = the
   simulator. Only the base_url and key differ; the bench checks that the provider received the
   same request body from the gateway as from the direct call (`provider_request_identical`).
   Kinds: cache MISS (distinct messages every round: the gateway's full path, provider included),
   cache HIT (one fixed request, primed before the rounds: the gateway answers from its cache,
   while the direct call still goes to the provider, which is what the client would pay without
   the gateway), and `stream=True` MISS and HIT timed to the last chunk (the gateway calls the
   provider unstreamed and renders the SSE at once, API Gateway buffering Lambda responses; the
   direct call streams from the simulator), and a function-calling MISS (one `tools` entry; the
   answer is a tool call, its arguments checked non-empty). Every request is checked (status,
   x-aigateway-cached).
   Reported: p50/p95 per path, gateway − direct and gateway / direct at p50 and p95, and the
   median of the per-round paired differences. No provider latency is injected: the difference is
   the gateway's own work (authorizer cache, rate limits, budget, cache, ledger on moto).
2. Batch vs sequential. The simulator adds BATCH_LATENCY_MS to every provider call (FaultPlan
   `latency_ms`, as a real model's latency would). Per round: `POST /v1/batch` with BATCH_ITEMS
   distinct skill_assessment items vs the same number of distinct items sent one after another as
   `POST /v1/generate` (what a client without the batch route does), over the same keep-alive
   connection. Every item of every round is new (a cache miss on both sides). Reported: median
   wall time of each, the speed-up (sequential / batch), and, outside the timed rounds, DynamoDB
   calls of one batch vs its items sent one by one (counted by the store, as bench/dynamo_calls.py
   does: the request invoked in-process under `track_request`). Floors: BATCH_LATENCY_MS for the
   batch, BATCH_ITEMS × that for the sequential calls; what a batch spends above its floor here is
   mostly its items' gateway work, which the embedded runtime runs one DynamoDB call at a time
   (one lock around moto, two cores, the GIL), where AWS would overlap it.
3. Conversations. One conversation (POST /v1/conversations, token_budget CONV_BUDGET, profile
   analytical) of CONV_TURNS turns (POST /v1/conversations/{id}/messages), each user turn a
   distinct ~CONV_USER_TOKENS-token text. Per turn: latency over HTTP, the tokens sent (the
   response's context.tokens_used, cross-checked against the prompt the simulator received)
   against what sending the system prompt and the whole history verbatim would have sent
   (`tokens.count_messages` over the stored messages, the same replies), and summariser calls
   (the simulator's count of summariser prompts, and turns reporting summary_updated). Cost: the
   gateway's own bill (replies + summaries, cost_micros) vs the naive history priced with the same
   list price (aigateway.governance.pricing) and the same output tokens; and, because providers
   discount a repeated prompt prefix, both sides again with an estimate of OpenAI's prompt
   caching (the longest message prefix shared with the previous call of the same kind, counted
   in 128-token steps once it reaches 1,024 tokens; best case, as if no cache entry ever expired;
   the summariser's calls stay at what was billed: their prompts share only the short instructions).
   Reference latency: the same SDK sending the naive whole history straight to the simulator,
   interleaved with the turns (the simulator's replies are short, ~50 tokens; a real model's
   would make the naive history, and the savings, larger).
   Skipped (and said so) when the conversations routes do not answer.

Run: cd <repo> && PYTHONPATH=layers/shared/python:functions:. .venv/bin/python -m bench features
Figures go into build/bench/results.json under "features" (the file's other sections are kept);
the gateway's logs into build/bench/features.log. Knobs: BENCH_FEATURES_CHAT_ROUNDS (150),
BENCH_FEATURES_BATCH_ROUNDS (8), BENCH_FEATURES_TURNS (40), BENCH_FEATURES_PARTS (123).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import interleave, percentile
from bench.streams import fds_to

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
RESULTS = BUILD / "results.json"
LOG = BUILD / "features.log"
QUIET_ENV = {"POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"}
API_KEY = "aig_bench_features_0123456789ab"
TENANT = "bench-features"

CHAT_ROUNDS = int(os.environ.get("BENCH_FEATURES_CHAT_ROUNDS", "150"))
CHAT_WARMUP = 15
CHAT_MODEL = "gpt-4o-mini"
BATCH_ROUNDS = int(os.environ.get("BENCH_FEATURES_BATCH_ROUNDS", "8"))
BATCH_ITEMS = 10
BATCH_LATENCY_MS = 300.0
CONV_TURNS = int(os.environ.get("BENCH_FEATURES_TURNS", "40"))
CONV_USER_TOKENS = 1_500
CONV_BUDGET = 8_000
CONV_SYSTEM = "You are a patient data-engineering tutor. Answer accurately and concisely."
CACHE_MIN_PREFIX = 1_024  # OpenAI prompt caching: prefixes from 1,024 tokens, in 128-token steps
CACHE_STEP = 128


def _progress(message: str, stream: Any = None) -> None:
    print(f"  … {message}", file=stream or sys.stderr, flush=True)


def p95(values: list[float]) -> float:
    return percentile(values, 95)


def _dist(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p95_ms": round(percentile(values, 95), 3),
        "mean_ms": round(statistics.fmean(values), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


# ---------------------------------------------------------------------------------------------
# The simulator, recording what it is sent
# ---------------------------------------------------------------------------------------------


def _recording_provider() -> Any:
    from aigateway.llm.simulated import FaultPlan, SimResponse, SimulatedProvider

    class Recorder(SimulatedProvider):
        """The simulated provider, keeping the chat bodies it receives while `recording`."""

        def __init__(self) -> None:
            super().__init__(FaultPlan())  # explicit: no faults, no latency, whatever SIM_FAULTS says
            self.recording = False
            self.bodies: list[bytes] = []
            self._bodies_lock = threading.Lock()

        def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> SimResponse:
            if self.recording and path.split("?", 1)[0].rstrip("/").endswith("/chat/completions"):
                with self._bodies_lock:
                    self.bodies.append(body)
            return super().handle(method, path, headers, body)

        def take(self) -> list[dict[str, Any]]:
            with self._bodies_lock:
                taken, self.bodies = self.bodies, []
            return [json.loads(b) for b in taken]

    return Recorder()


# ---------------------------------------------------------------------------------------------
# 1. The OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------------

CHAT_KINDS = (
    ("miss", "cache MISS"),
    ("hit", "cache HIT"),
    ("stream_miss", "stream=True, MISS (to last chunk)"),
    ("stream_hit", "stream=True, HIT (to last chunk)"),
    ("tools_miss", "function calling, MISS (a tool call back)"),
)
# One function, as an agent framework would declare it: the answer is a call, not text.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_query",
            "description": "Run a read-only SQL query",
            "parameters": {
                "type": "object",
                "properties": {"sql": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 100}},
                "required": ["sql", "limit"],
                "additionalProperties": False,
            },
        },
    }
]


def _chat_messages(mark: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a concise SQL tutor."},
        {"role": "user", "content": f"In two sentences, what does a LEFT JOIN return? (ref {mark})"},
    ]


def _mark(tag: str, i: int) -> str:
    return f"{tag}-{i:06d}"  # every marker the same length: every request the same size


class ChatBench:
    def __init__(self, gateway_url: str, provider_url: str, api_key: str, recorder: Any) -> None:
        import openai

        self.recorder = recorder
        self.gw = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=30.0)
        self.direct = openai.OpenAI(base_url=provider_url, api_key="simulated", max_retries=0, timeout=30.0)
        self.errors: list[str] = []

    def close(self) -> None:
        self.gw.close()
        self.direct.close()

    def call(
        self, client: Any, messages: list[dict[str, str]], *, stream: bool, cached: bool | None, tools: bool = False
    ) -> float:
        """One SDK call, timed to the parsed answer (stream: to the last chunk); checked."""
        started = time.perf_counter()
        if stream:
            raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        elif tools:
            raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages, tools=TOOLS)
            calls = raw.parse().choices[0].message.tool_calls or []
            text = calls[0].function.arguments if calls else ""
        else:
            raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages)
            text = raw.parse().choices[0].message.content or ""
        elapsed = (time.perf_counter() - started) * 1000
        where = "gateway" if client is self.gw else "direct"
        if not text:
            self.errors.append(f"{where}: empty answer")
        if cached is not None and where == "gateway":
            got = raw.headers.get("x-aigateway-cached")
            if got != ("true" if cached else "false"):
                self.errors.append(f"gateway (stream={stream}): expected cached={cached}, x-aigateway-cached={got}")
        return elapsed

    def provider_bodies_match(self) -> bool:
        """Does the provider receive from the gateway what it receives from the direct call?"""
        self.recorder.take()
        self.recorder.recording = True
        try:
            self.call(self.gw, _chat_messages(_mark("probe", 1)), stream=False, cached=False)
            via_gateway = self.recorder.take()
            self.call(self.direct, _chat_messages(_mark("probe", 1)), stream=False, cached=None)
            direct = self.recorder.take()
        finally:
            self.recorder.recording = False
        return len(via_gateway) == 1 and via_gateway == direct

    def run(self, rounds: int, warmup: int) -> dict[str, Any]:
        started = time.perf_counter()
        identical = self.provider_bodies_match()
        hit, stream_hit = _chat_messages(_mark("hit", 0)), _chat_messages(_mark("shit", 0))
        self.call(self.gw, hit, stream=False, cached=False)  # the misses that fill the hit entries
        self.call(self.gw, stream_hit, stream=True, cached=False)
        gw, direct = self.gw, self.direct
        ops: list[tuple[str, Callable[[int], float]]] = [
            ("direct_miss", lambda i: self.call(direct, _chat_messages(_mark("dm", i)), stream=False, cached=None)),
            ("gateway_miss", lambda i: self.call(gw, _chat_messages(_mark("gm", i)), stream=False, cached=False)),
            ("direct_hit", lambda i: self.call(direct, hit, stream=False, cached=None)),
            ("gateway_hit", lambda i: self.call(gw, hit, stream=False, cached=True)),
            (
                "direct_stream_miss",
                lambda i: self.call(direct, _chat_messages(_mark("ds", i)), stream=True, cached=None),
            ),
            ("gateway_stream_miss", lambda i: self.call(gw, _chat_messages(_mark("gs", i)), stream=True, cached=False)),
            ("direct_stream_hit", lambda i: self.call(direct, stream_hit, stream=True, cached=None)),
            ("gateway_stream_hit", lambda i: self.call(gw, stream_hit, stream=True, cached=True)),
            (
                "direct_tools_miss",
                lambda i: self.call(direct, _chat_messages(_mark("dt", i)), stream=False, cached=None, tools=True),
            ),
            (
                "gateway_tools_miss",
                lambda i: self.call(gw, _chat_messages(_mark("gt", i)), stream=False, cached=False, tools=True),
            ),
        ]
        samples = interleave(ops, rounds, warmup)
        rows = []
        for kind, label in CHAT_KINDS:
            g, d = samples[f"gateway_{kind}"], samples[f"direct_{kind}"]
            g50, d50, g95, d95 = statistics.median(g), statistics.median(d), p95(g), p95(d)
            rows.append(
                {
                    "kind": kind,
                    "label": label,
                    "gateway_ms": _dist(g),
                    "direct_ms": _dist(d),
                    "added_p50_ms": round(g50 - d50, 3),
                    "added_p95_ms": round(g95 - d95, 3),
                    "ratio_p50": round(g50 / d50, 3),
                    "ratio_p95": round(g95 / d95, 3),
                    "paired_median_delta_ms": round(statistics.median(x - y for x, y in zip(g, d, strict=True)), 3),
                }
            )
        return {
            "rounds": rounds,
            "warmup_rounds": warmup,
            "model": CHAT_MODEL,
            "provider_request_identical": identical,
            "rows": rows,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "elapsed_s": round(time.perf_counter() - started, 1),
        }


# ---------------------------------------------------------------------------------------------
# 2. Batch vs sequential
# ---------------------------------------------------------------------------------------------


class BatchBench:
    def __init__(self, stack: Any, gateway: Any, gateway_url: str, api_key: str) -> None:
        import httpx

        self.stack = stack
        self.gateway = gateway
        self.url = gateway_url
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.http = httpx.Client(timeout=60.0, headers=self.headers)
        self.errors: list[str] = []

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def item(tag: str, round_: int, index: int) -> dict[str, Any]:
        from bench.latency import generate_body, marker

        return dict(json.loads(generate_body(marker(tag, round_ * 100 + index))))

    def batch(self, round_: int, tag: str = "bb") -> float:
        body = {"requests": [self.item(tag, round_, i) for i in range(BATCH_ITEMS)]}
        started = time.perf_counter()
        response = self.http.post(self.url + "/v1/batch", json=body)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            self.errors.append(f"batch: HTTP {response.status_code}: {response.text[:200]}")
        else:
            items = response.json()["items"]
            bad = [i for i in items if i["status"] != 200 or i["result"]["cached"]]
            if len(items) != BATCH_ITEMS or bad:
                self.errors.append(f"batch: {len(bad)} of {len(items)} items not a 200 miss: {bad[:1]}")
        return elapsed

    def sequential(self, round_: int, tag: str = "bs") -> float:
        started = time.perf_counter()
        for i in range(BATCH_ITEMS):
            response = self.http.post(self.url + "/v1/generate", json=self.item(tag, round_, i))
            if response.status_code != 200 or response.json().get("cached"):
                self.errors.append(f"generate: HTTP {response.status_code}: {response.text[:200]}")
        return (time.perf_counter() - started) * 1000

    def _ddb_calls(self, path: str, body: dict[str, Any]) -> Any:
        """The store's count of one request's DynamoDB calls (as bench/dynamo_calls.py counts them)."""
        from aigateway.store.dynamo import track_request
        from infra.local.apigateway import HttpResponse

        prepared = self.gateway.prepare("POST", path, self.headers, json.dumps(body).encode())
        if isinstance(prepared, HttpResponse):
            raise RuntimeError(f"the gateway refused the request: {prepared.status} {prepared.body!r}")
        route, event = prepared
        with track_request() as stats:  # the authorizer ran in prepare(), untracked, on both sides
            result = self.stack.invoke(route.function, event)
        if result.get("statusCode") != 200:
            self.errors.append(f"ddb probe {path}: HTTP {result.get('statusCode')}")
        return stats

    def run(self, rounds: int) -> dict[str, Any]:
        from collections import Counter

        started = time.perf_counter()
        self.batch(9_999, "wb")  # warm-up: every import and pool of both paths, not counted
        self.sequential(9_999, "ws")
        samples = interleave([("batch", self.batch), ("sequential", self.sequential)], rounds, 0)
        b, s = samples["batch"], samples["sequential"]
        one = self._ddb_calls("/v1/batch", {"requests": [self.item("db", 0, i) for i in range(BATCH_ITEMS)]})
        each = [self._ddb_calls("/v1/generate", self.item("ds", 0, i)) for i in range(BATCH_ITEMS)]
        batch_ops = Counter(one.operations)
        seq_ops: Counter[str] = Counter()
        for stats in each:
            seq_ops.update(stats.operations)
        return {
            "rounds": rounds,
            "items": BATCH_ITEMS,
            "provider_latency_ms": BATCH_LATENCY_MS,
            "batch_ms": _dist(b),
            "sequential_ms": _dist(s),
            "speedup_median": round(statistics.median(s) / statistics.median(b), 2),
            "paired_speedup_median": round(statistics.median(y / x for x, y in zip(b, s, strict=True)), 2),
            "ideal_batch_ms": BATCH_LATENCY_MS,
            "ideal_sequential_ms": BATCH_ITEMS * BATCH_LATENCY_MS,
            "samples_ms": {"batch": [round(x, 1) for x in b], "sequential": [round(x, 1) for x in s]},
            "dynamodb": {
                "batch_calls": one.calls,
                "batch_phases": one.phases,
                "sequential_calls": sum(x.calls for x in each),
                "sequential_phases": sum(x.phases for x in each),
                "per_generate_calls": sorted({x.calls for x in each}),
                "batch_operations": dict(sorted(batch_ops.items())),
                "sequential_operations": dict(sorted(seq_ops.items())),
            },
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "elapsed_s": round(time.perf_counter() - started, 1),
        }


# ---------------------------------------------------------------------------------------------
# 3. Conversations
# ---------------------------------------------------------------------------------------------

_TOPICS = (
    "partitioning", "indexes", "window functions", "late-arriving data", "idempotent loads", "schema drift",
    "slowly changing dimensions", "deduplication", "backfills", "query plans", "compaction", "data contracts",
)  # fmt: skip
_WORDS = (
    "table", "column", "row", "key", "join", "filter", "partition", "snapshot", "batch", "stream", "event",
    "timestamp", "customer", "order", "invoice", "warehouse", "pipeline", "job", "retry", "checkpoint", "offset",
    "latency", "throughput", "budget", "cost", "report", "dashboard", "metric", "owner", "team", "service",
    "replica", "shard", "bucket", "file", "format", "parquet", "schema", "version", "migration", "test",
)  # fmt: skip


def user_turn(turn: int, model: str, target_tokens: int) -> str:
    """A distinct, readable ~target_tokens-token user message (seeded by the turn number)."""
    from aigateway.llm import tokens

    rng = random.Random(1000 + turn)
    topic = _TOPICS[turn % len(_TOPICS)]
    text = f"Turn {turn}: I have a question about {topic} in our {rng.choice(_WORDS)} {rng.choice(_WORDS)}."
    used = tokens.count_text(text, model)
    while True:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 16)))
        sentence = f" The {words} is {rng.randint(2, 9999)} and owned by team {rng.choice(_WORDS)}."
        used += tokens.count_text(sentence, model)
        if used > target_tokens - 20:
            break
        text += sentence
    return f"{text} Given all that, what should we change first about {topic}, and why?"


def _prefix_tokens(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]], model: str) -> int:
    """OpenAI prompt caching, best case: the messages `current` shares with `previous`, as tokens,
    counted in CACHE_STEP steps once at least CACHE_MIN_PREFIX."""
    from aigateway.llm import tokens

    if not previous:
        return 0
    shared = 0
    for a, b in zip(previous, current, strict=False):
        if a != b:
            break
        shared += 1
    if shared == 0:
        return 0
    prefix = tokens.count_messages(current[:shared], model) - 3  # without the reply's priming
    return (prefix // CACHE_STEP) * CACHE_STEP if prefix >= CACHE_MIN_PREFIX else 0


def _is_summariser(body: dict[str, Any]) -> bool:
    from aigateway.conversations import SUMMARY_INSTRUCTIONS

    first = (body.get("messages") or [{}])[0]
    head = SUMMARY_INSTRUCTIONS.split("{", 1)[0]
    return first.get("role") == "system" and str(first.get("content", "")).startswith(head)


class ConversationBench:
    def __init__(self, gateway_url: str, provider_url: str, api_key: str, recorder: Any) -> None:
        import httpx
        import openai

        self.url = gateway_url
        self.recorder = recorder
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.http = httpx.Client(timeout=60.0, headers=headers)
        self.direct = openai.OpenAI(base_url=provider_url, api_key="simulated", max_retries=0, timeout=60.0)
        self.errors: list[str] = []

    def close(self) -> None:
        self.http.close()
        self.direct.close()

    def available(self) -> str | None:
        """None when the routes answer; otherwise why not."""
        try:
            response = self.http.post(self.url + "/v1/conversations", json={"title": "probe"})
        except Exception as exc:  # a missing route is a finding, not a crash
            return f"POST /v1/conversations failed: {type(exc).__name__}: {exc}"
        if response.status_code not in (200, 201):
            return f"POST /v1/conversations answered {response.status_code}: {response.text[:160]}"
        # Warm-up, not counted: one turn through the gateway, one SDK call straight to the simulator.
        probe = response.json()["conversation_id"]
        turn = self.http.post(f"{self.url}/v1/conversations/{probe}/messages", json={"content": "Warm-up: hello."})
        if turn.status_code not in (200, 201):
            return f"POST /v1/conversations/{{id}}/messages answered {turn.status_code}: {turn.text[:160]}"
        self.direct.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Warm-up."}])
        return None

    def run(self, turns: int) -> dict[str, Any]:
        from aigateway.governance.pricing import cost_micros, price_for
        from aigateway.llm import tokens

        started = time.perf_counter()
        created = self.http.post(
            self.url + "/v1/conversations",
            json={"title": "bench", "system": CONV_SYSTEM, "token_budget": CONV_BUDGET, "model_profile": "analytical"},
        )
        created.raise_for_status()
        conversation = created.json()
        conv_id, model = conversation["conversation_id"], conversation["model"]
        naive: list[dict[str, Any]] = [{"role": "system", "content": conversation["system"]}]
        rows: list[dict[str, Any]] = []
        direct_ms: list[float] = []
        prev_sent: list[dict[str, Any]] | None = None
        prev_naive: list[dict[str, Any]] | None = None
        summariser_bodies: list[dict[str, Any]] = []
        self.recorder.take()
        for turn in range(1, turns + 1):
            content = user_turn(turn, model, CONV_USER_TOKENS)
            naive_messages = [*naive, {"role": "user", "content": content}]

            def gateway_turn(content: str = content) -> tuple[float, Any]:
                self.recorder.recording = True
                t = time.perf_counter()
                response = self.http.post(f"{self.url}/v1/conversations/{conv_id}/messages", json={"content": content})
                ms = (time.perf_counter() - t) * 1000
                self.recorder.recording = False
                return ms, response

            def direct_turn(messages: list[dict[str, Any]] = naive_messages) -> float:
                t = time.perf_counter()
                completion = self.direct.chat.completions.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=conversation["max_tokens"],
                )
                ms = (time.perf_counter() - t) * 1000
                if not completion.choices:
                    self.errors.append("direct: no choices")
                return ms

            if turn % 2:  # alternate which goes first
                ms, response = gateway_turn()
                direct_ms.append(direct_turn())
            else:
                direct_ms.append(direct_turn())
                ms, response = gateway_turn()
            if response.status_code not in (200, 201):
                self.errors.append(f"turn {turn}: HTTP {response.status_code}: {response.text[:200]}")
                break
            out = response.json()
            bodies = self.recorder.take()
            summaries = [b for b in bodies if _is_summariser(b)]
            replies = [b for b in bodies if not _is_summariser(b)]
            summariser_bodies.extend(summaries)
            sent = replies[-1]["messages"] if replies else None
            ctx = out["context"]
            naive_tokens = tokens.count_messages(naive_messages, model)
            sent_counted = tokens.count_messages(sent, model) if sent else None
            reply_model = out.get("model") or model
            usage = out.get("usage") or {}
            rows.append(
                {
                    "turn": turn,
                    "ms": round(ms, 3),
                    "tokens_used": ctx["tokens_used"],
                    "tokens_sent_counted": sent_counted,
                    "naive_tokens": naive_tokens,
                    "tokens_saved": ctx["tokens_saved"],
                    "summary_applied": ctx["summary_applied"],
                    "summary_updated": ctx["summary_updated"],
                    "summariser_calls": len(summaries),
                    "provider_reply_calls": len(replies),
                    "messages_sent": ctx.get("messages_sent"),
                    "dropped_messages": ctx.get("dropped_messages"),
                    "output_tokens": int(usage.get("output_tokens") or usage.get("completion_tokens") or 0),
                    "cost_micros": out["cost_micros"],
                    "summary_cost_micros": out.get("summary_cost_micros", 0),
                    "model": reply_model,
                    "served_by": out.get("served_by"),
                    "cached_prefix_sent": _prefix_tokens(prev_sent, sent, reply_model) if sent else 0,
                    "cached_prefix_naive": _prefix_tokens(prev_naive, naive_messages, reply_model),
                    "summariser_bodies": summaries,
                }
            )
            prev_sent, prev_naive = sent, naive_messages
            naive = [*naive_messages, {"role": "assistant", "content": out["message"]["content"]}]
            if turn % 10 == 0:
                _progress(f"features: conversation turn {turn}/{turns}")

        # --- figures -------------------------------------------------------------------------
        today = datetime.now(UTC)

        def price(model_: str, inp: int, cached: int, out_: int) -> int:
            return cost_micros(price_for(model_, today), input_tokens=inp, cached_tokens=cached, output_tokens=out_)

        sent_total = sum(r["tokens_used"] for r in rows)
        naive_total = sum(r["naive_tokens"] for r in rows)
        gateway_billed = sum(r["cost_micros"] for r in rows)
        summary_billed = sum(r["summary_cost_micros"] for r in rows)
        summary_input = sum(tokens.count_messages(b["messages"], b.get("model", model)) for b in summariser_bodies)
        # Replies re-priced from their counts, so both sides follow one rule (with and without caching).
        replies_price = sum(price(r["model"], r["tokens_used"], 0, r["output_tokens"]) for r in rows)
        naive_price = sum(price(r["model"], r["naive_tokens"], 0, r["output_tokens"]) for r in rows)
        replies_cached = sum(
            price(r["model"], r["tokens_used"], min(r["cached_prefix_sent"], r["tokens_used"]), r["output_tokens"])
            for r in rows
        )
        naive_cached = sum(
            price(r["model"], r["naive_tokens"], min(r["cached_prefix_naive"], r["naive_tokens"]), r["output_tokens"])
            for r in rows
        )
        consistent = all(r["tokens_sent_counted"] in (None, r["tokens_used"]) for r in rows)
        saved_reported = sum(r["tokens_saved"] for r in rows)
        for r in rows:
            r.pop("summariser_bodies", None)
        latencies = [r["ms"] for r in rows]
        with_summary = [r["ms"] for r in rows if r["summariser_calls"]]
        without = [r["ms"] for r in rows if not r["summariser_calls"]]
        return {
            "turns": len(rows),
            "model": model,
            "token_budget": CONV_BUDGET,
            "user_turn_tokens": CONV_USER_TOKENS,
            "latency_ms": _dist(latencies),
            "latency_ms_turns_with_summariser": _dist(with_summary),
            "latency_ms_turns_without_summariser": _dist(without),
            "direct_naive_latency_ms": _dist(direct_ms),
            "tokens_sent_total": sent_total,
            "naive_tokens_total": naive_total,
            "tokens_saved_total": naive_total - sent_total,
            "tokens_saved_reported_total": saved_reported,
            "tokens_used_matches_provider_prompt": consistent,
            "max_tokens_sent_per_turn": max((r["tokens_used"] for r in rows), default=0),
            "max_naive_tokens_per_turn": max((r["naive_tokens"] for r in rows), default=0),
            "summariser_calls": len(summariser_bodies),
            "summariser_input_tokens": summary_input,
            "turns_summary_updated": sum(1 for r in rows if r["summary_updated"]),
            "first_turn_summary_applied": next((r["turn"] for r in rows if r["summary_applied"]), None),
            "cost_micros": {
                "gateway_billed_total": gateway_billed,
                "gateway_billed_summaries": summary_billed,
                "replies_list_price": replies_price,
                "naive_list_price": naive_price,
                "ratio_gateway_vs_naive": round(gateway_billed / naive_price, 3) if naive_price else None,
                "replies_with_prompt_cache_est": replies_cached,
                "naive_with_prompt_cache_est": naive_cached,
                "ratio_with_prompt_cache_est": round((replies_cached + summary_billed) / naive_cached, 3)
                if naive_cached
                else None,
            },
            "per_turn": rows,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "elapsed_s": round(time.perf_counter() - started, 1),
        }


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)

    return "\n".join(
        ["    " + line(headers), "    " + "  ".join("-" * w for w in widths), *("    " + line(r) for r in rows)]
    )


def render(results: dict[str, Any]) -> str:
    out = ["", "Features benchmark (python -m bench features)"]
    env = results["environment"]
    out.append(f"  load avg {env['loadavg_start']} → {env.get('loadavg_end')}; shared, noisy machine: read ratios")
    chat = results.get("openai_compat")
    if chat:
        out.append("")
        out.append(
            f"  1. OpenAI SDK → POST /v1/chat/completions (gateway, loopback HTTP) vs the same SDK call → simulator;"
            f" {chat['rounds']} interleaved rounds, ms"
        )
        rows = []
        for r in chat["rows"]:
            g, d = r["gateway_ms"], r["direct_ms"]
            rows.append(
                [
                    r["label"],
                    f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f}",
                    f"{g['p50_ms']:.1f} / {g['p95_ms']:.1f}",
                    f"{r['added_p50_ms']:+.1f} / {r['added_p95_ms']:+.1f}",
                    f"{r['ratio_p50']:.2f}× / {r['ratio_p95']:.2f}×",
                    f"{r['paired_median_delta_ms']:+.1f}",
                ]
            )
        out.append(
            _table(
                ["", "direct p50 / p95", "gateway p50 / p95", "gw − direct p50 / p95", "gw / direct", "paired Δ"],
                rows,
            )
        )
        out.append(
            f"    provider received the same request via the gateway as directly: {chat['provider_request_identical']};"
            f" errors: {chat['error_count']}"
        )
    batch = results.get("batch")
    if batch:
        out.append("")
        out.append(
            f"  2. POST /v1/batch ({batch['items']} skill_assessment items) vs {batch['items']} sequential"
            f" POST /v1/generate; provider latency {batch['provider_latency_ms']:.0f} ms/call;"
            f" {batch['rounds']} interleaved rounds, all misses"
        )
        b, s = batch["batch_ms"], batch["sequential_ms"]
        ddb = batch["dynamodb"]

        def batch_row(label: str, d: dict[str, Any], ideal: float, calls: int, phases: int) -> list[str]:
            cells = [f"{d[k]:.0f}" for k in ("p50_ms", "p95_ms", "min_ms")]
            return [label, *cells, f"{ideal:.0f}", f"{calls} ({phases})"]

        out.append(
            _table(
                ["", "median ms", "p95 ms", "min ms", "ideal ms", "DynamoDB calls (phases)"],
                [
                    batch_row("batch", b, batch["ideal_batch_ms"], ddb["batch_calls"], ddb["batch_phases"]),
                    batch_row(
                        "sequential", s, batch["ideal_sequential_ms"], ddb["sequential_calls"], ddb["sequential_phases"]
                    ),
                ],
            )
        )
        ops = sorted(set(ddb["batch_operations"]) | set(ddb["sequential_operations"]))
        diff = [
            f"{op} {ddb['batch_operations'].get(op, 0) - ddb['sequential_operations'].get(op, 0):+d}"
            for op in ops
            if ddb["batch_operations"].get(op, 0) != ddb["sequential_operations"].get(op, 0)
        ]
        out.append(f"    DynamoDB calls, batch − sequential by operation: {', '.join(diff) or 'none'}")
        out.append(
            f"    speed-up (sequential / batch): {batch['speedup_median']:.2f}× of medians,"
            f" {batch['paired_speedup_median']:.2f}× median of paired rounds; errors: {batch['error_count']}"
        )
    conv = results.get("conversations")
    if conv and "skipped" in conv:
        out.append("")
        out.append(f"  3. conversations: skipped: {conv['skipped']}")
    elif conv:
        out.append("")
        out.append(
            f"  3. one conversation, {conv['turns']} turns of ~{conv['user_turn_tokens']} tokens, token_budget"
            f" {conv['token_budget']}, model {conv['model']}"
        )
        lat, ws, wo, dn = (
            conv["latency_ms"],
            conv["latency_ms_turns_with_summariser"],
            conv["latency_ms_turns_without_summariser"],
            conv["direct_naive_latency_ms"],
        )

        def cells(d: dict[str, Any]) -> list[str]:
            return [str(d["n"]), f"{d['p50_ms']:.1f}", f"{d['p95_ms']:.1f}"] if d["n"] else ["0", "-", "-"]

        out.append(
            _table(
                ["per-turn latency", "n", "p50 ms", "p95 ms"],
                [
                    ["gateway turn (HTTP)", *cells(lat)],
                    ["  turns with a summariser call", *cells(ws)],
                    ["  turns without", *cells(wo)],
                    ["direct SDK, naive whole history (ref.)", *cells(dn)],
                ],
            )
        )
        rows = conv["per_turn"]
        picks = sorted({1, 2, 3, 5, 10, 20, 30, len(rows)} & set(range(1, len(rows) + 1)))
        out.append(
            _table(
                ["turn", "sent", "naive", "saved", "summary", "summariser", "ms"],
                [
                    [
                        str(t),
                        str(rows[t - 1]["tokens_used"]),
                        str(rows[t - 1]["naive_tokens"]),
                        str(rows[t - 1]["naive_tokens"] - rows[t - 1]["tokens_used"]),
                        "applied" if rows[t - 1]["summary_applied"] else "-",
                        str(rows[t - 1]["summariser_calls"]),
                        f"{rows[t - 1]['ms']:.0f}",
                    ]
                    for t in picks
                ],
            )
        )
        cost = conv["cost_micros"]
        sent, naive = conv["tokens_sent_total"], conv["naive_tokens_total"]
        out.append(
            f"    input tokens: {sent:,} sent vs {naive:,} naive ({sent / naive:.1%}); saved {naive - sent:,}"
            f" (gateway's tokens_saved sum {conv['tokens_saved_reported_total']:,}); most per turn"
            f" {conv['max_tokens_sent_per_turn']:,} vs {conv['max_naive_tokens_per_turn']:,}"
        )
        out.append(
            f"    summariser calls: {conv['summariser_calls']} (turns with summary_updated:"
            f" {conv['turns_summary_updated']}), {conv['summariser_input_tokens']:,} input tokens;"
            f" first summary sent on turn {conv['first_turn_summary_applied']}"
        )
        out.append(
            f"    cost, µUSD: gateway billed {cost['gateway_billed_total']:,} (summaries"
            f" {cost['gateway_billed_summaries']:,}) vs naive {cost['naive_list_price']:,} at list price →"
            f" {cost['ratio_gateway_vs_naive']:.3f}×; with prompt caching (est., best case both sides)"
            f" {cost['replies_with_prompt_cache_est'] + cost['gateway_billed_summaries']:,} vs"
            f" {cost['naive_with_prompt_cache_est']:,} → {cost['ratio_with_prompt_cache_est']:.3f}×"
        )
        out.append(
            f"    tokens_used matches the prompt the provider received: {conv['tokens_used_matches_provider_prompt']};"
            f" errors: {conv['error_count']}"
        )
    out.append("")
    out.append(f"  logs: {os.path.relpath(LOG, ROOT)}; total {results['total_s']:.1f} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _bootstrap_path() -> None:
    for folder in (ROOT, ROOT / "functions", ROOT / "layers" / "shared" / "python"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def measure(parts: str) -> dict[str, Any]:
    started = time.perf_counter()
    os.environ.update(QUIET_ENV)
    _bootstrap_path()
    from aigateway.llm.simulated import FaultPlan, SimulatedProviderServer
    from bench import tenant
    from infra.local.apigateway import LocalApiGateway
    from infra.local.runtime import LocalStack, synthesize
    from infra.local.server import LocalHttpServer

    results: dict[str, Any] = {
        "environment": {
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
        }
    }
    BUILD.mkdir(parents=True, exist_ok=True)
    with fds_to(LOG) as (_, progress):
        _progress("features: synthesizing (skipped when nothing changed)", progress)
        template = synthesize()
        recorder = _recording_provider()
        simulator = SimulatedProviderServer(recorder)
        provider_url = simulator.start()
        stack = LocalStack(
            template, env_overrides={"SIMULATOR_URL": provider_url, "PROVIDER": "simulated", **QUIET_ENV}
        )
        stack.start()
        server: LocalHttpServer | None = None
        try:
            tenant.seed(API_KEY, tenant_id=TENANT)
            gateway = LocalApiGateway(stack)
            server = LocalHttpServer(gateway, port=0)
            url = server.start()
            if "1" in parts:
                _progress(f"features 1: OpenAI-compatible endpoint, {CHAT_ROUNDS} rounds", progress)
                chat = ChatBench(url, provider_url, API_KEY, recorder)
                try:
                    results["openai_compat"] = chat.run(CHAT_ROUNDS, CHAT_WARMUP)
                finally:
                    chat.close()
            if "2" in parts:
                _progress(f"features 2: batch vs sequential, {BATCH_ROUNDS} rounds", progress)
                recorder.set_faults(FaultPlan(latency_ms=BATCH_LATENCY_MS))
                batch = BatchBench(stack, gateway, url, API_KEY)
                try:
                    results["batch"] = batch.run(BATCH_ROUNDS)
                finally:
                    batch.close()
                    recorder.set_faults(FaultPlan())
            if "3" in parts:
                _progress(f"features 3: a {CONV_TURNS}-turn conversation", progress)
                conv = ConversationBench(url, provider_url, API_KEY, recorder)
                try:
                    why_not = conv.available()
                    results["conversations"] = {"skipped": why_not} if why_not else conv.run(CONV_TURNS)
                finally:
                    conv.close()
        finally:
            if server is not None:
                server.stop()
            stack.stop()
            simulator.stop()
    results["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - started, 1)
    return results


def write_results(results: dict[str, Any]) -> Path:
    """Into results.json under "features", keeping whatever else the file holds."""
    try:
        existing = json.loads(RESULTS.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing["features"] = results
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    return RESULTS


def main(argv: list[str] | None = None) -> int:
    parts = os.environ.get("BENCH_FEATURES_PARTS", "123")
    results = measure(parts)
    print(render(results))
    path = write_results(results)
    print(f'\nresults: {os.path.relpath(path, ROOT)} ("features")    features run time {results["total_s"]:.1f} s')
    errors = sum(int(section.get("error_count", 0)) for section in results.values() if isinstance(section, dict))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
