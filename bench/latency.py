"""POST /v1/generate through the gateway vs the same request sent straight to the provider.

Every path talks to one `SimulatedProviderServer` on loopback HTTP (no injected latency):
- direct: the real `openai` SDK calling the simulator with exactly the body the gateway sends
  (captured from the gateway's own request, only the per-request marker swapped);
- gateway HTTP: httpx (keep-alive) → LocalHttpServer → LocalApiGateway → generate handler;
- gateway in-process: LocalApiGateway.handle, no sockets in front of the gateway;
- diagnostic: the same LocalHttpServer with TCP_NODELAY set on accepted sockets (NoDelayHttpServer,
  bench-side), which separates what the local server's socket settings cost from the gateway's work.
Rounds are interleaved (one request of each kind per round, order rotated) so the machine's
noise lands on every path alike; ratios and differences come from the same run.
"""

from __future__ import annotations

import inspect
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from aigateway.llm.simulated import FaultPlan, SimResponse, SimulatedProvider
from bench.stats import Summary, interleave, median, summarize
from infra.local.apigateway import LocalApiGateway
from infra.local.server import LocalHttpServer

PATH = "/v1/generate"
TEMPLATE = "skill_assessment"
_ANSWER = "All rows of the left table, with the matching right rows, or NULLs where nothing matches."


def marker(tag: str, i: int) -> str:
    """A per-request token; all markers have the same length so every request is the same size."""
    return f"bench-{tag}-{i:06d}"


def generate_body(mark: str) -> bytes:
    body = {
        "template": TEMPLATE,
        "variables": {"skill": "SQL", "question": "What does a LEFT JOIN return?", "answer": f"{_ANSWER} ({mark})"},
    }
    return json.dumps(body).encode()


class RecordingProvider(SimulatedProvider):
    """The simulated provider, remembering the last chat-completions body it received."""

    def __init__(self) -> None:
        super().__init__(FaultPlan())  # explicit: no faults, no latency, whatever SIM_FAULTS says
        self.last_chat: bytes | None = None

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> SimResponse:
        if path.split("?", 1)[0].rstrip("/").endswith("/chat/completions"):
            self.last_chat = body
        return super().handle(method, path, headers, body)


def _sdk_kwargs(client: openai.OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """A wire body as `chat.completions.create` keyword arguments (unknown fields via extra_body)."""
    known = set(inspect.signature(client.chat.completions.create).parameters)
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


class NoDelayHttpServer(LocalHttpServer):
    """LocalHttpServer, except accepted sockets get TCP_NODELAY (a diagnostic; the server is unchanged).

    LocalHttpServer sends the headers and the body in two writes; with Nagle on, the second waits
    for the client's delayed ACK (~40 ms on Linux). The simulator's own server sets TCP_NODELAY.
    """

    def __init__(self, gateway: LocalApiGateway, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(gateway, host, port)
        handler: Any = self.httpd.RequestHandlerClass
        original_setup = handler.setup

        def setup(self: Any) -> None:
            original_setup(self)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self.httpd.RequestHandlerClass = type("NoDelayHandler", (handler,), {"setup": setup})


@dataclass
class Comparison:
    name: str
    gateway: str
    baseline: str
    added_p50_ms: float
    added_p99_ms: float
    added_mean_ms: float
    ratio_p50: float
    paired_median_delta_ms: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class LatencyResult:
    rounds: int
    warmup_rounds: int
    samples_ms: dict[str, list[float]]
    summaries: dict[str, Summary]
    comparisons: list[Comparison]
    baseline_identical: bool
    baseline_hit_identical: bool
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


# Row keys, in display order: (key, label).
ROWS = (
    ("direct_miss", "direct: openai SDK → simulator (miss request)"),
    ("http_miss", "gateway over loopback HTTP, cache MISS"),
    ("inproc_miss", "gateway in-process (no sockets), cache MISS"),
    ("direct_hit", "direct: openai SDK → simulator (hit request)"),
    ("http_hit", "gateway over loopback HTTP, cache HIT"),
    ("inproc_hit", "gateway in-process (no sockets), cache HIT"),
    ("nodelay_miss", "diagnostic: HTTP server + TCP_NODELAY, cache MISS"),
    ("nodelay_hit", "diagnostic: HTTP server + TCP_NODELAY, cache HIT"),
)
COMPARISONS = (
    ("MISS, HTTP", "http_miss", "direct_miss"),
    ("MISS, in-process", "inproc_miss", "direct_miss"),
    ("HIT, HTTP", "http_hit", "direct_hit"),
    ("HIT, in-process", "inproc_hit", "direct_hit"),
    ("MISS, HTTP+NODELAY (diag.)", "nodelay_miss", "direct_miss"),
    ("HIT, HTTP+NODELAY (diag.)", "nodelay_hit", "direct_hit"),
)


def compare(samples: Mapping[str, list[float]]) -> tuple[dict[str, Summary], list[Comparison]]:
    """Summaries per row and the gateway − direct comparisons; samples of one row align by round."""
    summaries = {name: summarize(values) for name, values in samples.items()}
    comparisons = []
    for label, gw, base in COMPARISONS:
        g, b = summaries[gw], summaries[base]
        paired = [x - y for x, y in zip(samples[gw], samples[base], strict=True)]
        comparisons.append(
            Comparison(
                label,
                gw,
                base,
                added_p50_ms=g.p50_ms - b.p50_ms,
                added_p99_ms=g.p99_ms - b.p99_ms,
                added_mean_ms=g.mean_ms - b.mean_ms,
                ratio_p50=g.p50_ms / b.p50_ms,
                paired_median_delta_ms=median(paired),
            )
        )
    return summaries, comparisons


class LatencyBench:
    def __init__(self, gateway: LocalApiGateway, gateway_url: str, nodelay_url: str, provider_url: str,
                 api_key: str, recorder: RecordingProvider) -> None:  # fmt: skip
        self.gateway = gateway
        self.url = gateway_url + PATH
        self.nodelay_url = nodelay_url + PATH
        self.recorder = recorder
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.http = httpx.Client(timeout=30.0)  # one keep-alive connection, reused
        self.http_nodelay = httpx.Client(timeout=30.0)
        # The same SDK settings the gateway's client uses (aigateway.llm.client: timeout, no SDK retries).
        self.sdk = openai.OpenAI(api_key="simulated", base_url=provider_url, timeout=20.0, max_retries=0)
        self.errors: list[str] = []
        self.hit_body = generate_body(marker("hh", 0))
        self._miss_template = ""
        self._miss_mark = marker("pr", 0)
        self.hit_kwargs: dict[str, Any] = {}

    def close(self) -> None:
        self.http.close()
        self.http_nodelay.close()
        self.sdk.close()

    # --- one request of each kind; each returns milliseconds ------------------------------
    def _gateway_http(self, body: bytes, cached: bool, *, nodelay: bool = False) -> float:
        client, url = (self.http_nodelay, self.nodelay_url) if nodelay else (self.http, self.url)
        started = time.perf_counter()
        response = client.post(url, content=body, headers=self.headers)
        elapsed = (time.perf_counter() - started) * 1000
        self._check("http+nodelay" if nodelay else "http", response.status_code, response.content, cached)
        return elapsed

    def _gateway_inproc(self, body: bytes, cached: bool) -> float:
        started = time.perf_counter()
        response = self.gateway.handle("POST", PATH, self.headers, body)
        elapsed = (time.perf_counter() - started) * 1000
        self._check("in-process", response.status, response.body, cached)
        return elapsed

    def _direct(self, kwargs: dict[str, Any]) -> float:
        started = time.perf_counter()
        completion = self.sdk.chat.completions.create(**kwargs)
        elapsed = (time.perf_counter() - started) * 1000
        if not completion.choices:
            self.errors.append("direct: no choices")
        return elapsed

    def _check(self, where: str, status: int, raw: bytes, cached: bool) -> None:
        if status != 200:
            self.errors.append(f"{where}: HTTP {status}: {raw[:200]!r}")
            return
        got = json.loads(raw).get("cached")
        if got is not cached:
            self.errors.append(f"{where}: expected cached={cached}, got {got}")

    def _direct_miss_kwargs(self, mark: str) -> dict[str, Any]:
        return _sdk_kwargs(self.sdk, json.loads(self._miss_template.replace(self._miss_mark, mark)))

    # --- setup ------------------------------------------------------------------------------
    def prime(self) -> tuple[bool, bool]:
        """Capture the provider bodies the gateway sends; prime the hit entry; check the baseline.

        Returns whether the direct calls send byte-for-byte-equivalent JSON to what the gateway sent.
        """
        self._gateway_http(generate_body(self._miss_mark), cached=False)
        captured = self.recorder.last_chat
        if captured is None or captured.decode().count(self._miss_mark) != 1:
            raise RuntimeError("could not capture the gateway's provider request (marker not found once)")
        self._miss_template = captured.decode()
        self.recorder.last_chat = None
        self._gateway_http(self.hit_body, cached=False)  # the one miss that fills the hit entry
        hit_wire = self.recorder.last_chat
        if hit_wire is None:
            raise RuntimeError("the hit request's priming call did not reach the provider")
        self.hit_kwargs = _sdk_kwargs(self.sdk, json.loads(hit_wire))

        probe = marker("dr", 999_999)
        self._direct(self._direct_miss_kwargs(probe))
        expected = json.loads(self._miss_template.replace(self._miss_mark, probe))
        miss_same = self.recorder.last_chat is not None and json.loads(self.recorder.last_chat) == expected
        self._direct(self.hit_kwargs)
        hit_same = self.recorder.last_chat is not None and json.loads(self.recorder.last_chat) == json.loads(hit_wire)
        return miss_same, hit_same

    # --- the run ----------------------------------------------------------------------------
    def run(self, rounds: int, warmup: int) -> LatencyResult:
        started = time.perf_counter()
        miss_same, hit_same = self.prime()
        ops: list[tuple[str, Callable[[int], float]]] = [
            ("direct_miss", lambda i: self._direct(self._direct_miss_kwargs(marker("dr", i)))),
            ("http_miss", lambda i: self._gateway_http(generate_body(marker("ht", i)), cached=False)),
            ("inproc_miss", lambda i: self._gateway_inproc(generate_body(marker("ip", i)), cached=False)),
            ("direct_hit", lambda i: self._direct(self.hit_kwargs)),
            ("http_hit", lambda i: self._gateway_http(self.hit_body, cached=True)),
            ("inproc_hit", lambda i: self._gateway_inproc(self.hit_body, cached=True)),
            ("nodelay_miss", lambda i: self._gateway_http(generate_body(marker("nd", i)), False, nodelay=True)),
            ("nodelay_hit", lambda i: self._gateway_http(self.hit_body, cached=True, nodelay=True)),
        ]
        samples = interleave(ops, rounds, warmup)
        summaries, comparisons = compare(samples)
        return LatencyResult(
            rounds=rounds,
            warmup_rounds=warmup,
            samples_ms=samples,
            summaries=summaries,
            comparisons=comparisons,
            baseline_identical=miss_same,
            baseline_hit_identical=hit_same,
            errors=list(self.errors),
            elapsed_s=time.perf_counter() - started,
        )
