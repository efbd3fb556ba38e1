"""`python -m bench resilience`: /v1/generate while the provider fails 20 % of its calls.

The issue's benchmark: success rate and p50/p99 latency of POST /v1/generate over 1,000 requests
with the simulated provider failing 20 % of calls (mixed classes), with and without fallback models.

Runs, each on a fresh stack (moto, empty cache, every circuit closed), the same 1,000 requests,
the same fault plan and the same seed (the simulator is re-seeded before each run, so its n-th
call fails the same way in every run; runs make different numbers of calls, so the totals differ):
  A  fallback models configured: the templates as shipped (profile analytical: gpt-4o-mini →
     gpt-4.1-mini), static answer and stale cache on;
  B  no fallback models: a copy of prompts/ where every template says `fallback_models: []`
     (PROMPTS_DIR); the static answer and stale cache remain;
  C  neither fallback models nor the static answer (`fallback:` removed as well): the raw error
     rate the chain's retries alone leave.
Every request is distinct (the `answer` variable carries a per-request marker), so every request
is a cache miss and no stale entry exists: stale_cache can only show 0 here.

Faults: rate 0.2, drawn uniformly from 429, 429_retry_after (Retry-After 0.2 s), 500, 503,
timeout (held 2 s; OPENAI_TIMEOUT_S=1 so a timeout costs ~1 s), reset, malformed, schema_invalid.
Not injected: content_filter, context_length, 401 — the request or the credentials are at fault,
not provider flakiness, and the chain deliberately does not hide them.

Transport: 8 client threads, httpx (keep-alive) → LocalHttpServer → LocalApiGateway → generate
handler → the simulator over loopback HTTP. The bench tenant's limits and budget are out of reach
(bench/tenant.py). Circuit openings are counted from the gateway's own log lines ("circuit open",
written to build/bench/resilience-<run>.log), the final circuit states come from GET /v1/health.

Run alone: PYTHONPATH=layers/shared/python:functions:. python -m bench resilience
(or python -m bench.resilience). Results also go to build/bench/resilience.json.
Environment knobs: BENCH_RESILIENCE_REQUESTS (default 1000), BENCH_RESILIENCE_WORKERS (8),
BENCH_RESILIENCE_VARIANTS (ABC; add D and E for two diagnostic runs, A and B with the breaker's
threshold out of reach, which show what retries and fallback models achieve on their own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.streams import fds_to

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
RESULTS = BUILD / "resilience.json"

REQUESTS = int(os.environ.get("BENCH_RESILIENCE_REQUESTS", "1000"))
WORKERS = int(os.environ.get("BENCH_RESILIENCE_WORKERS", "8"))
SEED = 7
FAULT_RATE = 0.2
FAULT_KINDS = ("429", "429_retry_after", "500", "503", "timeout", "reset", "malformed", "schema_invalid")
RETRY_AFTER_S = 0.2
HANG_S = 2.0
PROVIDER_TIMEOUT_S = 1.0
FAULT_PLAN = {
    "rate": FAULT_RATE,
    "kinds": list(FAULT_KINDS),
    "seed": SEED,
    "retry_after_s": RETRY_AFTER_S,
    "hang_s": HANG_S,
}
QUIET_ENV = {"POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"}
API_KEY = "aig_bench_resilience_0123456789ab"
TENANT = "bench-resilience"
PATH = "/v1/generate"
TEMPLATE = "skill_assessment"
MODEL_SERVED = ("primary", "fallback_model")
SERVED_ORDER = ("primary", "fallback_model", "cache", "stale_cache", "static_answer")
TIMELINE_BUCKETS = 10


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    fallback_models: bool
    static_answer: bool
    breaker: bool = True  # False: the breaker's threshold out of reach (a diagnostic, not a setting)


VARIANTS = (
    Variant("A", "fallback models (as shipped)", fallback_models=True, static_answer=True),
    Variant("B", "no fallback models", fallback_models=False, static_answer=True),
    Variant("C", "no fallback models, no static answer", fallback_models=False, static_answer=False),
    # Diagnostics (BENCH_RESILIENCE_VARIANTS=ABCDE): what retries and fallback models do on their own.
    Variant("D", "A, breaker never opens", fallback_models=True, static_answer=True, breaker=False),
    Variant("E", "B, breaker never opens", fallback_models=False, static_answer=True, breaker=False),
)
NEVER_OPENS = 10**9  # failures in a window: the breaker's threshold for runs without one


@dataclass(frozen=True)
class Outcome:
    index: int
    started_s: float  # since the run's first request
    ms: float
    status: int
    served_by: str | None = None
    model: str | None = None
    attempts: int | None = None
    degraded_reason: str | None = None
    code: str | None = None  # the error code of a non-200 answer


@dataclass
class RunResult:
    variant: Variant
    outcomes: list[Outcome]
    wall_s: float
    simulator: dict[str, Any]
    circuit_events: list[dict[str, Any]]
    circuits_final: dict[str, Any]
    log: str
    unhandled: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def body(index: int) -> bytes:
    """The i-th request; the same i is the same request in every run, no two i alike (all misses)."""
    return json.dumps(
        {
            "template": TEMPLATE,
            "variables": {
                "skill": "SQL",
                "question": "What does a LEFT JOIN return?",
                "answer": f"All rows of the left table, with the matching right rows, or NULLs (res-{index:06d}).",
            },
        }
    ).encode()


def prompts_copy(dest: Path, *, fallback_models: bool, static_answer: bool) -> Path:
    """prompts/ as shipped, or a copy whose templates lose their fallback models (and static answer)."""
    if fallback_models and static_answer:
        return ROOT / "prompts"
    import yaml

    shutil.copytree(ROOT / "prompts", dest)
    for path in sorted(dest.glob("*/v*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not fallback_models:
            data["fallback_models"] = []
        if not static_answer:
            data.pop("fallback", None)
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return dest


def _progress(message: str, stream: Any = None) -> None:
    print(f"  … {message}", file=stream or sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _send(client: Any, url: str, index: int, t0: float) -> Outcome:
    started = time.perf_counter()
    try:
        response = client.post(url, content=body(index))
    except Exception as exc:  # a transport failure is an outcome too
        return Outcome(index, started - t0, (time.perf_counter() - started) * 1000, 0, code=type(exc).__name__)
    ms = (time.perf_counter() - started) * 1000
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code == 200:
        return Outcome(
            index,
            started - t0,
            ms,
            200,
            served_by=data.get("served_by"),
            model=data.get("model"),
            attempts=data.get("attempts"),
            degraded_reason=data.get("degraded_reason"),
        )
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    code = error.get("code") or data.get("message") or "?"
    return Outcome(index, started - t0, ms, response.status_code, code=str(code))


def _circuit_events(log: Path, t0_wall: float) -> list[dict[str, Any]]:
    """The gateway's "circuit open" / "circuit closed" log lines, with seconds since the run began."""
    events = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{") or '"circuit ' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message")
        if message not in ("circuit open", "circuit closed"):
            continue
        at = None
        with contextlib.suppress(TypeError, ValueError):
            at = datetime.strptime(str(record.get("timestamp")), "%Y-%m-%d %H:%M:%S,%f%z").timestamp() - t0_wall
        events.append(
            {"event": message.split()[1], "circuit": record.get("circuit"), "reason": record.get("reason"), "t_s": at}
        )
    return events


def _unhandled(log: Path) -> Counter[str]:
    """The gateway's "unhandled error" log lines (a 500 internal_error), by exception."""
    found: Counter[str] = Counter()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if '"unhandled error"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        last = str(record.get("exception", "")).strip().splitlines()[-1:] or ["?"]
        found[last[0][:120]] += 1
    return found


def run_variant(variant: Variant, template: Path, simulator: Any, provider_url: str, workdir: Path) -> RunResult:
    import httpx

    from bench import tenant
    from infra.local.apigateway import LocalApiGateway
    from infra.local.runtime import LocalStack
    from infra.local.server import LocalHttpServer

    prompts = prompts_copy(
        workdir / f"prompts-{variant.key}", fallback_models=variant.fallback_models, static_answer=variant.static_answer
    )
    overrides = {
        "SIMULATOR_URL": provider_url,
        "PROVIDER": "simulated",
        "OPENAI_TIMEOUT_S": str(PROVIDER_TIMEOUT_S),
        "PROMPTS_DIR": str(prompts),
        **QUIET_ENV,
    }
    BUILD.mkdir(parents=True, exist_ok=True)
    log = BUILD / f"resilience-{variant.key}.log"
    outcomes: list[Outcome] = []
    with fds_to(log) as (_, progress):
        _progress(f"run {variant.key} ({variant.label}): starting a fresh stack", progress)
        stack = LocalStack(template, env_overrides=overrides).start()
        server: LocalHttpServer | None = None
        try:
            tenant.seed(API_KEY, tenant_id=TENANT)
            if not variant.breaker:
                from aigateway import deps
                from aigateway.resilience.breaker import BreakerSettings

                # This environment's breaker (deps.reset() on stop puts the shipped one back).
                deps.breaker().settings = BreakerSettings(min_failures=NEVER_OPENS)
            gateway = LocalApiGateway(stack)
            server = LocalHttpServer(gateway, port=0)
            base = server.start()
            url = base + PATH
            headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
            # Warm the authorizer cache and the handler's imports with a request the run does not count.
            simulator.provider.set_faults({})
            with httpx.Client(timeout=60.0, headers=headers) as warm:
                warm.post(url, content=body(999_999))
            simulator.provider.set_faults(FAULT_PLAN)  # re-seeded: the same fault sequence every run
            simulator.provider.reset_stats()

            _progress(f"run {variant.key}: {REQUESTS} requests, {WORKERS} workers", progress)
            lock = threading.Lock()
            cursor = iter(range(REQUESTS))
            t0_wall, t0 = time.time(), time.perf_counter()

            def worker() -> None:
                with httpx.Client(timeout=60.0, headers=headers) as client:
                    while True:
                        with lock:
                            index = next(cursor, None)
                        if index is None:
                            return
                        outcome = _send(client, url, index, t0)
                        with lock:
                            outcomes.append(outcome)
                            done = len(outcomes)
                        if done % 250 == 0:
                            _progress(
                                f"run {variant.key}: {done}/{REQUESTS} ({time.perf_counter() - t0:.0f} s)", progress
                            )

            threads = [threading.Thread(target=worker, name=f"bench-res-{i}") for i in range(WORKERS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall_s = time.perf_counter() - t0
            sim_stats = simulator.provider.stats()
            simulator.provider.set_faults({})
            with httpx.Client(timeout=30.0) as client:
                health = client.get(base + "/v1/health").json()
        finally:
            if server is not None:
                server.stop()
            stack.stop()
    outcomes.sort(key=lambda o: o.index)
    return RunResult(
        variant=variant,
        outcomes=outcomes,
        wall_s=wall_s,
        simulator=sim_stats,
        circuit_events=_circuit_events(log, t0_wall),
        circuits_final=health.get("circuits", {}),
        log=os.path.relpath(log, ROOT),
        unhandled=dict(_unhandled(log)),
    )


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def figures(run: RunResult) -> dict[str, Any]:
    from bench.stats import summarize

    out = run.outcomes
    n = len(out)
    served = Counter(o.served_by for o in out if o.status == 200)
    errors = Counter(f"{o.status} {o.code}" for o in out if o.status != 200)
    by_model = [o for o in out if o.served_by in MODEL_SERVED]
    answered = [o for o in out if o.status == 200]
    attempts = [o.attempts for o in answered if o.attempts is not None]
    sim_calls = int(run.simulator.get("requests", 0))
    opened = Counter(e["circuit"] for e in run.circuit_events if e["event"] == "open")
    closed = Counter(e["circuit"] for e in run.circuit_events if e["event"] == "closed")
    return {
        "requests": n,
        "wall_s": round(run.wall_s, 1),
        "throughput_rps": round(n / run.wall_s, 1) if run.wall_s else None,
        "served_by": {k: served.get(k, 0) for k in SERVED_ORDER},
        "errors": dict(errors.most_common()),
        "answered_by_model": len(by_model),
        "answered": len(answered),
        "latency_ms": {
            "all": summarize([o.ms for o in out]).to_json(),
            "answered_by_model": summarize([o.ms for o in by_model]).to_json(),
            "primary": summarize([o.ms for o in out if o.served_by == "primary"]).to_json(),
            "fallback_model": summarize([o.ms for o in out if o.served_by == "fallback_model"]).to_json(),
            "static_answer": summarize([o.ms for o in out if o.served_by == "static_answer"]).to_json(),
            "errors": summarize([o.ms for o in out if o.status != 200]).to_json(),
        },
        "attempts_mean_answered": round(sum(attempts) / len(attempts), 3) if attempts else None,
        "provider_calls": sim_calls,
        "provider_calls_per_request": round(sim_calls / n, 3) if n else None,
        "degraded_reasons": dict(Counter(o.degraded_reason for o in answered if o.degraded_reason).most_common()),
        "circuit_openings": dict(opened),
        "circuit_closings": dict(closed),
        "circuit_events": run.circuit_events,
        "circuits_final": run.circuits_final,
        "simulator": run.simulator,
        "timeline": timeline(run),
        "log": run.log,
        "unhandled_errors": run.unhandled,
    }


def timeline(run: RunResult) -> list[dict[str, Any]]:
    """Requests by start time in TIMELINE_BUCKETS equal slices of the run: what served them."""
    if not run.outcomes:
        return []
    span = max(o.started_s for o in run.outcomes) or 1.0
    buckets: list[Counter[str]] = [Counter() for _ in range(TIMELINE_BUCKETS)]
    for o in run.outcomes:
        slot = min(int(o.started_s / span * TIMELINE_BUCKETS), TIMELINE_BUCKETS - 1)
        buckets[slot][o.served_by or f"error {o.status}"] += 1
    return [
        {"from_s": round(span * i / TIMELINE_BUCKETS, 1), "to_s": round(span * (i + 1) / TIMELINE_BUCKETS, 1), **b}
        for i, b in enumerate(buckets)
    ]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    if not summary.get("n") or value is None:
        return "-"
    return f"{value:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def render(results: dict[str, dict[str, Any]], env: dict[str, Any], total_s: float) -> str:
    from bench.report import heading, table

    keys = list(results)
    out = [heading("6. Resilience: POST /v1/generate with the provider failing 20 % of calls")]
    out.append(
        f"  {REQUESTS} distinct requests per run (every one a cache MISS; no stale entry can exist), {WORKERS} client"
        f" threads over loopback HTTP, template {TEMPLATE} (profile analytical: gpt-4o-mini → gpt-4.1-mini)."
    )
    out.append(
        f"  faults: rate {FAULT_RATE:g}, seed {SEED}, kinds {', '.join(FAULT_KINDS)}; 429_retry_after says"
        f" Retry-After {RETRY_AFTER_S:g} s; 'timeout' holds {HANG_S:g} s and OPENAI_TIMEOUT_S={PROVIDER_TIMEOUT_S:g},"
        " so a timeout costs ~1 s. Not injected: content_filter, context_length, 401 (the request or the"
        " credentials, not provider flakiness)."
    )
    out.append(
        "  every run: a fresh stack (empty cache, all circuits closed), the simulator re-seeded (its n-th call fails"
        " alike in every run); breaker as shipped: opens for 20 s when ≥ 5 calls and ≥ 50 % of a 30 s window failed."
    )
    for key in keys:
        v = next(x for x in VARIANTS if x.key == key)
        kept = []
        kept.append("fallback models" if v.fallback_models else "NO fallback models")
        kept.append("static answer" if v.static_answer else "NO static answer")
        kept.append("stale cache on (never applicable here)")
        kept.append("breaker as shipped" if v.breaker else "breaker threshold out of reach (diagnostic)")
        out.append(f"  run {key}: {v.label}: {', '.join(kept)}")

    headers = ["", *(f"run {k}" for k in keys)]
    out.append(table(headers, _main_rows(results, keys)))

    # Faults by kind.
    out.append("")
    out.append(
        "  Faults injected by kind (simulator /_sim/stats; counts differ because the runs make different calls):"
    )
    kinds = [k for k in FAULT_KINDS if any(results[x]["simulator"].get("faults_by_kind", {}).get(k) for x in keys)]
    out.append(
        "  "
        + table(
            ["kind", *(f"run {k}" for k in keys)],
            [
                [kind, *(str(results[k]["simulator"].get("faults_by_kind", {}).get(kind, 0)) for k in keys)]
                for kind in kinds
            ],
        ).replace("\n", "\n  ")
    )

    # Why requests were degraded.
    out.append("")
    out.append("  degraded_reason of answered requests (the error that moved each off its primary path):")
    for key in keys:
        reasons = results[key]["degraded_reasons"]
        text = ", ".join(f"{r} {n}" for r, n in reasons.items()) or "none"
        out.append(f"    run {key}: {text}")

    # Timeline.
    out.append("")
    out.append(
        f"  Timeline (requests by start time, {TIMELINE_BUCKETS} equal slices of each run):"
        " primary / fallback model / static answer / error"
    )
    for key in keys:
        cells = []
        for b in results[key]["timeline"]:
            err = sum(v for k, v in b.items() if k.startswith("error"))
            cells.append(f"{b.get('primary', 0)}/{b.get('fallback_model', 0)}/{b.get('static_answer', 0)}/{err}")
        out.append(f"    run {key}: " + "  ".join(cells))
    for key in keys:
        events = results[key]["circuit_events"]
        if events:
            text = ", ".join(
                f"{'reopen' if e['reason'] == 'probe failed' else e['event']}"
                f" {str(e['circuit']).split('#')[-1]} @{e['t_s']:.0f}s"
                if e["t_s"] is not None
                else e["event"]
                for e in events[:12]
            )
            more = f" (+{len(events) - 12} more)" if len(events) > 12 else ""
            out.append(f"    run {key} circuit events: {text}{more}")

    # Pairs: with vs without fallback models.
    for x, y, what in (("A", "B", "breaker as shipped"), ("D", "E", "breaker never opens")):
        if x in results and y in results:
            out.extend(_pair(results, x, y, what))
    for key in keys:
        for exception, n in results[key]["unhandled_errors"].items():
            out.append(f"  !! run {key}: {n} × 500 internal_error, unhandled {exception} ({results[key]['log']})")
    out.append("")
    if not any(k in results for k in "DE"):
        out.append(
            "  diagnostic runs D and E (A and B with the breaker's threshold out of reach):"
            " BENCH_RESILIENCE_VARIANTS=ABCDE python -m bench resilience"
        )
    out.append(
        "  latency is measured at the client (loopback HTTP, moto-backed DynamoDB, simulator with no base latency):"
        " compare runs with each other, not with AWS."
    )
    out.append(
        f"  logs: {', '.join(results[k]['log'] for k in keys)}; load avg {env.get('loadavg_start')} →"
        f" {env.get('loadavg_end')}; total {total_s:.1f} s"
    )
    return "\n".join(out)


def _main_rows(results: dict[str, dict[str, Any]], keys: list[str]) -> list[list[str]]:
    """One row per figure, one column per run."""
    rows: list[list[str]] = []

    def add(label: str, cell: Any) -> None:
        rows.append([label, *(cell(results[k]) for k in keys)])

    def share(r: dict[str, Any], part: int) -> str:
        return f"{part} ({_pct(part, r['requests'])})"

    def p50_p99(scope: str) -> Any:
        return lambda r: f"{_ms(r['latency_ms'][scope], 'p50_ms')} / {_ms(r['latency_ms'][scope], 'p99_ms')}"

    add("answered at all (HTTP 200, incl. labelled static)", lambda r: share(r, r["answered"]))
    add("answered by a model (primary + fallback model)", lambda r: share(r, r["answered_by_model"]))
    for served in ("primary", "fallback_model", "stale_cache", "static_answer"):
        add(f"  served_by {served}", lambda r, s=served: share(r, r["served_by"][s]))
    codes = sorted({c for k in keys for c in results[k]["errors"]})
    add("errors (HTTP status, code)", lambda r: share(r, r["requests"] - r["answered"]))
    for code in codes:
        add(f"  {code}", lambda r, c=code: str(r["errors"].get(c, 0)))
    scopes = (
        ("all", "all requests"),
        ("answered_by_model", "answered by a model"),
        ("primary", "  primary"),
        ("fallback_model", "  fallback model"),
        ("static_answer", "static answer"),
        ("errors", "errors"),
    )
    for scope, label in scopes:
        add(f"p50 / p99 ms, {label}", p50_p99(scope))
    add("mean attempts per answered request (response)", lambda r: f"{r['attempts_mean_answered']:.2f}")
    add("provider calls per request (simulator count)", lambda r: f"{r['provider_calls_per_request']:.2f}")
    add(
        "faults injected / provider calls",
        lambda r: f"{r['simulator'].get('faults_injected', 0)} / {r['provider_calls']}",
    )
    add("circuit openings (gateway log)", lambda r: str(sum(r["circuit_openings"].values())))
    for circuit in sorted(
        {c for k in keys for c in [*results[k]["circuit_openings"], *results[k]["circuit_closings"]]}
    ):
        add(
            f"  {circuit} opened / closed",
            lambda r, c=circuit: f"{r['circuit_openings'].get(c, 0)} / {r['circuit_closings'].get(c, 0)}",
        )
    add("circuits open at the end (GET /v1/health)", lambda r: str(r["circuits_final"].get("open", "?")))
    add("wall time, s (throughput, req/s)", lambda r: f"{r['wall_s']:.1f} ({r['throughput_rps']:.1f})")
    return rows


def _pair(results: dict[str, dict[str, Any]], x: str, y: str, what: str) -> list[str]:
    a, b = results[x], results[y]
    la, lb = a["latency_ms"]["all"], b["latency_ms"]["all"]
    ma, mb = a["latency_ms"]["answered_by_model"], b["latency_ms"]["answered_by_model"]
    return [
        "",
        f"  {x} vs {y} (fallback models vs none, {what}; same requests, same fault plan):",
        f"    answered by a model: {_pct(a['answered_by_model'], a['requests'])} vs"
        f" {_pct(b['answered_by_model'], b['requests'])} ({_ratio(a['answered_by_model'], b['answered_by_model'])});"
        f" answered at all: {_pct(a['answered'], a['requests'])} vs {_pct(b['answered'], b['requests'])}",
        f"    all requests: p50 {_ms(la, 'p50_ms')} vs {_ms(lb, 'p50_ms')} ms ({_ratio(la['p50_ms'], lb['p50_ms'])}),"
        f" p99 {_ms(la, 'p99_ms')} vs {_ms(lb, 'p99_ms')} ms ({_ratio(la['p99_ms'], lb['p99_ms'])})",
        f"    answered by a model: p50 {_ms(ma, 'p50_ms')} vs {_ms(mb, 'p50_ms')} ms"
        f" ({_ratio(ma['p50_ms'], mb['p50_ms'])}), p99 {_ms(ma, 'p99_ms')} vs {_ms(mb, 'p99_ms')} ms"
        f" ({_ratio(ma['p99_ms'], mb['p99_ms'])})",
        f"    provider calls per request {a['provider_calls_per_request']:.2f} vs"
        f" {b['provider_calls_per_request']:.2f}; circuit openings {sum(a['circuit_openings'].values())} vs"
        f" {sum(b['circuit_openings'].values())}",
    ]


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _bootstrap_path() -> None:
    for folder in (ROOT, ROOT / "functions", ROOT / "layers" / "shared" / "python"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def measure() -> tuple[dict[str, dict[str, Any]], dict[str, Any], float]:
    """Every variant (BENCH_RESILIENCE_VARIANTS, default ABC): (figures by run, environment, seconds)."""
    started = time.perf_counter()
    os.environ.update(QUIET_ENV)
    _bootstrap_path()
    from aigateway.llm.simulated import SimulatedProvider, SimulatedProviderServer
    from infra.local.runtime import synthesize

    wanted = os.environ.get("BENCH_RESILIENCE_VARIANTS", "ABC").upper()
    variants = [v for v in VARIANTS if v.key in wanted]
    env: dict[str, Any] = {
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "requests": REQUESTS,
        "workers": WORKERS,
        "fault_plan": FAULT_PLAN,
        "openai_timeout_s": PROVIDER_TIMEOUT_S,
    }
    _progress("resilience: synthesizing (skipped when nothing changed)")
    BUILD.mkdir(parents=True, exist_ok=True)
    with fds_to(BUILD / "resilience-synth.log"):
        template = synthesize()
    simulator = SimulatedProviderServer(SimulatedProvider({}))
    provider_url = simulator.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-resilience-") as tmp:
            for variant in variants:
                run = run_variant(variant, template, simulator, provider_url, Path(tmp))
                results[variant.key] = figures(run)
                _progress(f"run {variant.key}: done in {run.wall_s:.1f} s")
    finally:
        simulator.stop()
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return results, env, time.perf_counter() - started


def write_results(results: dict[str, dict[str, Any]], env: dict[str, Any], total_s: float) -> Path:
    payload = {
        "environment": env,
        "variants": {v.key: asdict(v) for v in VARIANTS if v.key in results},
        "runs": results,
        "total_s": round(total_s, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    return RESULTS


def main() -> int:
    results, env, total_s = measure()
    print(render(results, env, total_s))
    path = write_results(results, env, total_s)
    print(f"\nresults: {os.path.relpath(path, ROOT)}    resilience run time {total_s:.1f} s")
    # No HTTP answer at all is a bench or server fault, not a result. (A 500 is reported with "!!"
    # and its exception: the embedded runtime runs one handler module on many threads.)
    broken = sum(count for r in results.values() for code, count in r["errors"].items() if code.startswith("0 "))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
