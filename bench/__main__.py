"""`python -m bench`: what the gateway adds to a model call, measured in one run.

1. Latency of POST /v1/generate (cache MISS and HIT; p50, p99, mean) through the embedded
   runtime over real loopback HTTP and in-process, against the same request sent straight to the
   simulated provider with the `openai` SDK. Added latency = gateway − direct, same run.
2. Cold start: importing the generate handler (and openai, boto3 for reference) in a fresh
   interpreter, median of 5; and whether the handler's import pulls in `openai`.
3. DynamoDB calls and sequential phases per request: the first request of a budget period, then
   steady-state miss and hit (after that warm-up request), and after the governance config's
   cache expires; each DynamoDB phase timed (bench/dynamo_calls.py).
4. Peak RSS.
5. Before vs after governance: the pre-governance commit's own bench in a git worktree, run as
   baseline half, this tree, baseline half (A B A; bench/baseline.py), compared in one table.
6. Resilience: /v1/generate over 1,000 requests with the provider failing 20 % of calls, with
   and without fallback models (bench/resilience.py; `python -m bench resilience` runs it alone,
   `make bench` runs it after sections 1-5 in a process of its own).
7. Features: the OpenAI-compatible endpoint vs the SDK straight to the provider, /v1/batch vs
   sequential /v1/generate, and a long conversation's tokens sent vs the whole history
   (bench/features.py; `python -m bench features` runs it alone, `make bench` runs it too).
Results also go to build/bench/results.json (`summary` holds the headline figures).

The bench tenants' rate limits and budget are set out of reach (bench/tenant.py): every request
still takes from its three GCRA buckets and reserves/settles its budget, none is refused.

Run: cd <repo> && PYTHONPATH=layers/shared/python:functions:. .venv/bin/python -m bench
(BENCH_BASELINE_REF=<ref> compares against another commit; BENCH_BASELINE_REF=none skips section 5.)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.streams import fds_into

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "bench" / "results.json"
ROUNDS = 200
WARMUP_ROUNDS = 20
COLD_START_RUNS = 5
QUIET_ENV = {"POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"}


def _bootstrap_path() -> None:
    """Same import roots as PYTHONPATH=layers/shared/python:functions:. (harmless when already set)."""
    for folder in (ROOT, ROOT / "functions", ROOT / "layers" / "shared" / "python"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence fds 1 and 2 (child processes included); replay what was written if the block fails."""
    with tempfile.TemporaryFile() as sink:
        try:
            with fds_into(sink):
                yield
        except BaseException:
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
            raise


def _command() -> str:
    try:
        python = os.path.relpath(sys.executable, ROOT)
    except ValueError:
        python = sys.executable
    pythonpath = os.environ.get("PYTHONPATH", "")
    prefix = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    return f"cd {ROOT} && {prefix}{python} -m bench"


def _revision() -> dict[str, Any]:
    """The commit measured as "after", and whether the working tree differs from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": git("rev-parse", "HEAD"), "uncommitted_changes": None if status is None else bool(status)}


def _progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def _environment() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "revision": _revision(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": _command(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _peak_rss_self_mib() -> float:
    """VmHWM (as the baseline's is measured, bench/baseline.py), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return _rss_mib(resource.RUSAGE_SELF)
    return kib / 1024


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["resilience"]:
        from bench import resilience

        return resilience.main()
    if args[:1] == ["leads"]:
        from bench import leads

        return leads.main(args[1:])
    if args[:1] == ["features"]:
        from bench import features

        return features.main(args[1:])
    if args:
        print(
            "usage: python -m bench [resilience | features | leads [--leads N] [--in-flight K] [--timeout S]]",
            file=sys.stderr,
        )
        return 2
    wall_start = time.perf_counter()
    os.environ.update(QUIET_ENV)
    _bootstrap_path()
    child_env = dict(os.environ)  # for the baseline's bench: taken before the stack sets anything
    env = _environment()
    print("Serverless AI Gateway benchmark")
    print(f"  python   : {env['python']} ({sys.executable})")
    print(f"  platform : {env['platform']}")
    print(f"  cpus     : {env['cpu_count']} (usable: {env['cpus_usable']}), load avg at start {env['loadavg_start']}")
    print(f"  command  : {env['command']}")
    revision = env["revision"]
    dirty = " + uncommitted changes" if revision["uncommitted_changes"] else ""
    print(f"  revision : {revision['sha']}{dirty}")
    print("  note     : shared, noisy machine; compare ratios and differences within this run, not across runs")

    phases: dict[str, float] = {}

    # --- 0. the synthesized template (skipped when nothing changed) ------------------------
    from infra.local.runtime import synthesize

    _progress("synthesizing (skipped when nothing changed)")
    t = time.perf_counter()
    with _quiet_fds():
        template = synthesize()
    phases["synthesize_s"] = time.perf_counter() - t

    # --- 5. the baseline's worktree (before governance), if git has it ----------------------
    from bench.baseline import BaselineRun

    baseline = BaselineRun(child_env, ROUNDS, WARMUP_ROUNDS, _progress)
    baseline_root = baseline.prepare(phases)

    # --- 2. cold start, first: no server threads running yet (baseline's handler interleaved)
    from bench import coldstart

    _progress("cold start")
    t = time.perf_counter()
    imports = coldstart.measure(COLD_START_RUNS, baseline_root)
    phases["cold_start_s"] = time.perf_counter() - t

    # --- 5, first half of the baseline (A B A: baseline, this tree, baseline) ----------------
    baseline.first_half(phases)

    # --- 1 & 3. the stack on moto, the simulator, the loopback HTTP server --------------------
    from aigateway.llm.simulated import SimulatedProviderServer
    from bench import dynamo_calls, tenant
    from bench.latency import LatencyBench, NoDelayHttpServer, RecordingProvider
    from infra.local.apigateway import LocalApiGateway
    from infra.local.runtime import LocalStack
    from infra.local.server import LocalHttpServer

    _progress(f"this tree: {ROUNDS} rounds of latency, then DynamoDB calls")
    t = time.perf_counter()
    recorder = RecordingProvider()
    simulator = SimulatedProviderServer(recorder)
    provider_url = simulator.start()
    overrides = {"SIMULATOR_URL": provider_url, "PROVIDER": "simulated", **QUIET_ENV}
    stack = LocalStack(template, env_overrides=overrides).start()
    server: LocalHttpServer | None = None
    nodelay: LocalHttpServer | None = None
    bench: LatencyBench | None = None
    try:
        demo = tenant.seed("aig_bench_key_0123456789abcdef", tenant_id="demo")
        gateway = LocalApiGateway(stack)
        server = LocalHttpServer(gateway, port=0)
        gateway_url = server.start()
        nodelay = NoDelayHttpServer(gateway, port=0)
        nodelay_url = nodelay.start()
        phases["stack_start_s"] = time.perf_counter() - t

        t = time.perf_counter()
        bench = LatencyBench(gateway, gateway_url, nodelay_url, provider_url, demo.api_key, recorder)
        latency = bench.run(ROUNDS, WARMUP_ROUNDS)
        phases["latency_s"] = time.perf_counter() - t

        t = time.perf_counter()
        ddb = dynamo_calls.measure(stack, gateway)
        phases["dynamodb_s"] = time.perf_counter() - t
    finally:
        if bench is not None:
            bench.close()
        for http_server in (server, nodelay):
            if http_server is not None:
                http_server.stop()
        stack.stop()
        simulator.stop()
    rss_self = _peak_rss_self_mib()

    # --- 5, second half of the baseline, then the comparison ---------------------------------
    baseline.second_half(phases)
    before_after = baseline.compare(latency, ddb, imports, rss_self)

    rss_children = _rss_mib(resource.RUSAGE_CHILDREN)
    env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    total_s = time.perf_counter() - wall_start

    from bench.report import render

    print(render(env, latency, imports, ddb, rss_self, rss_children, phases, total_s, before_after))
    results = _results(env, latency, imports, ddb, rss_self, rss_children, phases, total_s, before_after)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {os.path.relpath(RESULTS, ROOT)}    total run time {total_s:.1f} s")
    problems = latency.errors or [note for count in ddb for note in count.notes]
    return 1 if problems else 0


def _summary(latency: Any, ddb: Any, rss_self: float, before_after: Any) -> dict[str, Any]:
    """The headline figures in one place."""
    from bench.dynamo_calls import targets

    by_key = {count.key: count for count in ddb}
    before = {row.metric: row.before for row in before_after.rows} if before_after.rows else {}
    added = {}
    for c in latency.comparisons:
        if "diag." in c.name:
            continue
        for stat in ("p50", "p99"):
            metric = f"added {stat}, {c.name}"
            added[metric] = {"after_ms": round(getattr(c, f"added_{stat}_ms"), 3), "before_ms": before.get(metric)}
            if added[metric]["before_ms"] is not None:
                added[metric]["before_ms"] = round(added[metric]["before_ms"], 3)
    return {
        "dynamodb": {key: {"calls": count.calls, "phases": count.phases} for key, count in by_key.items()},
        "dynamodb_phase_targets": targets(ddb),
        "added_latency_ms": added,
        "peak_rss_mib": round(rss_self, 1),
        "peak_rss_mib_before": before.get("peak RSS, bench process"),
        "baseline": before_after.to_json_brief(),
    }


def _results(env: Any, latency: Any, imports: Any, ddb: Any, rss_self: float, rss_children: float,
             phases: dict[str, float], total_s: float, before_after: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "summary": _summary(latency, ddb, rss_self, before_after),
        "environment": env,
        "latency": {
            "rounds": latency.rounds,
            "warmup_rounds": latency.warmup_rounds,
            "baseline_request_identical": {"miss": latency.baseline_identical, "hit": latency.baseline_hit_identical},
            "summary_ms": {k: v.to_json() for k, v in latency.summaries.items()},
            "added": [c.to_json() for c in latency.comparisons],
            "errors": latency.errors,
            "samples_ms": {k: [round(x, 3) for x in v] for k, v in latency.samples_ms.items()},
        },
        "cold_start": [i.to_json() for i in imports],
        "dynamodb_per_request": [d.to_json() for d in ddb],
        "memory": {"peak_rss_mib": round(rss_self, 1), "peak_rss_children_mib": round(rss_children, 1)},
        "baseline": before_after.to_json(),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "total_s": round(total_s, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
