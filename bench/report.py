"""Plain-text tables for the terminal."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.latency import ROWS
from bench.stats import median

if TYPE_CHECKING:
    from bench.baseline import BeforeAfter
    from bench.coldstart import ImportTiming
    from bench.dynamo_calls import RequestCount
    from bench.latency import LatencyResult


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None) -> str:
    """A fixed-width table; `align` is one char per column, "l" or "r" (default: first l, rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align, strict=False)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def ms(value: float, *, signed: bool = False) -> str:
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def heading(text: str) -> str:
    return f"\n{text}\n{'=' * len(text)}"


def render(
    env: dict[str, Any],
    latency: LatencyResult,
    imports: list[ImportTiming],
    ddb: list[RequestCount],
    rss_self_mib: float,
    rss_children_mib: float,
    phases: dict[str, float],
    total_s: float,
    before_after: BeforeAfter,
) -> str:
    out: list[str] = []

    # 1. latency
    out.append(heading("1. POST /v1/generate latency, ms"))
    out.append(
        f"{latency.rounds} interleaved rounds (after {latency.warmup_rounds} warm-up rounds), one request of each "
        "kind per round, order rotated; simulated provider on loopback HTTP, no injected latency."
    )
    rows = []
    for key, label in ROWS:
        s = latency.summaries[key]
        rows.append([label, str(s.n), ms(s.mean_ms), ms(s.p50_ms), ms(s.p99_ms), ms(s.min_ms), ms(s.max_ms)])
    out.append(table(["path", "n", "mean", "p50", "p99", "min", "max"], rows))
    out.append("")
    out.append("Gateway-added latency = gateway − direct (same request, same run):")
    rows = []
    for c in latency.comparisons:
        rows.append(
            [
                c.name,
                ms(c.added_p50_ms, signed=True),
                ms(c.added_p99_ms, signed=True),
                ms(c.added_mean_ms, signed=True),
                f"{c.ratio_p50:.2f}x",
                ms(c.paired_median_delta_ms, signed=True),
            ]
        )
    out.append(table(["cache / transport", "added p50", "added p99", "added mean", "p50 ratio", "paired Δ p50"], rows))
    p50 = {key: summary.p50_ms for key, summary in latency.summaries.items()}
    out.append(
        f"  loopback HTTP in front of the gateway (HTTP row − in-process row, p50): "
        f"{p50['http_miss'] - p50['inproc_miss']:+.2f} ms miss, {p50['http_hit'] - p50['inproc_hit']:+.2f} ms hit;"
    )
    out.append(
        f"  with TCP_NODELAY on the server's sockets (diagnostic row − in-process row): "
        f"{p50['nodelay_miss'] - p50['inproc_miss']:+.2f} ms miss, "
        f"{p50['nodelay_hit'] - p50['inproc_hit']:+.2f} ms hit."
    )
    out.append(
        "  (infra/local/server.py sets TCP_NODELAY since this bench found Nagle + delayed ACK adding ~40 ms;"
        " the diagnostic row, a bench-side subclass forcing it, should now match the HTTP row)"
    )
    out.append(
        "  paired Δ p50 = median over rounds of (gateway − direct) within the same round; "
        "a HIT never calls the provider, so its 'added' is what a hit costs relative to calling the model."
    )
    same = "yes" if latency.baseline_identical and latency.baseline_hit_identical else "NO"
    out.append(f"  direct calls send the same JSON body the gateway sends to the provider: {same}")
    if latency.errors:
        out.append(f"  !! {len(latency.errors)} unexpected answers, first: {latency.errors[0]}")

    # 2. cold start
    out.append(heading("2. Cold start: import in a fresh interpreter, ms (median of runs)"))
    rows = []
    for timing in imports:
        loaded = timing.loaded
        rows.append(
            [
                f"import {timing.module}" + (" (before governance)" if timing.tree == "baseline" else ""),
                str(len(timing.import_s)),
                ms(median(timing.import_s) * 1000),
                ms(min(timing.import_s) * 1000),
                ms(max(timing.import_s) * 1000),
                ms(median(timing.process_s) * 1000),
                "yes" if loaded.get("openai") else "no",
                "yes" if loaded.get("boto3") else "no",
            ]
        )
    out.append(
        table(["module", "runs", "import p50", "min", "max", "process wall p50", "openai loaded", "boto3 loaded"], rows)
    )
    handler = next((t for t in imports if t.module == "generate.handler" and t.tree == "this"), None)
    if handler is not None:
        pulled = sorted(m for m, present in handler.loaded.items() if present)
        verdict = "YES — the cache-hit path pays for it" if handler.loaded.get("openai") else "no"
        out.append(f"  importing generate.handler imports openai: {verdict}")
        out.append(f"  loaded by generate.handler import: {', '.join(pulled) or 'none of the probed modules'}")
    out.append("  (import time inside the interpreter; 'process wall' adds interpreter start-up and exit; .pyc warm)")

    # 3. DynamoDB
    out.extend(_dynamodb(ddb))

    # 4. memory + run
    out.append(heading("4. Memory and run"))
    out.append(f"  peak RSS of this process: {rss_self_mib:.1f} MiB (moto, the stack, the simulator, both clients)")
    out.append(
        f"  peak RSS of the largest child process: {rss_children_mib:.1f} MiB (synth, cold-start interpreters, the"
        " baseline's bench; ru_maxrss survives exec, so a child counts from its parent's peak when it started)"
    )
    out.append("  phases: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in phases.items()))
    out.append(f"  load avg start {env['loadavg_start']} → end {env.get('loadavg_end')}; total {total_s:.1f} s")

    # 5. before vs after
    out.extend(_before_after(before_after))
    return "\n".join(out)


def _dynamodb(ddb: list[RequestCount]) -> list[str]:
    from bench.dynamo_calls import REPEATS, TARGET_PHASES

    out = [heading("3. DynamoDB per request (generate handler, counted by aigateway.store.dynamo)")]
    rows = []
    for d in ddb:
        rows.append(
            [
                d.kind,
                "yes" if d.cached else "no",
                str(d.calls),
                str(d.phases),
                str(d.repeats) + ("" if d.stable else " (varied!)"),
                ms(d.handler_ms),
                ms(d.dynamo_ms),
                ms(d.provider_ms) if d.provider_ms else "-",
            ]
        )
    headers = ["request", "cached", "calls", "seq. phases", "n", "handler ms", "DynamoDB ms", "provider ms"]
    out.append(table(headers, rows, align="llrrrrrr"))
    by_key = {d.key: d for d in ddb}
    verdicts = []
    for key, limit in TARGET_PHASES.items():
        count = by_key.get(key)
        if count is not None:
            met = "met" if count.phases <= limit else "MISSED"
            verdicts.append(f"{key} {count.phases} phases (target ≤ {limit}: {met})")
    out.append("  steady state: " + "; ".join(verdicts))
    out.append(
        f"  steady state = after the tenant's first request of the month; medians of {REPEATS} requests, "
        "each miss with its own variables, each hit repeating the miss before it"
    )
    out.append("  the authorizer is cached by the gateway (TTL 300 s), so its key lookup is not in these requests")
    out.append("")
    out.append("  Critical path, in order (ms: medians; moto's in-process emulation, not AWS round trips):")
    for d in ddb:
        steps = "  →  ".join(f"{p.label} {p.ms:.1f}" for p in d.timeline)
        other = d.handler_ms - d.dynamo_ms - d.provider_ms
        out.append(f"  {d.kind}: {steps}  (+ {other:.1f} in the handler outside these)")
    for d in ddb:
        out.extend(f"  !! {d.kind}: {note}" for note in d.notes)
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _value(value: float | None, is_count: bool) -> str:
    if value is None:
        return "-"
    return str(int(value)) if is_count else f"{value:.2f}"


def _before_after(result: BeforeAfter) -> list[str]:
    title = "5. Before vs after governance"
    if result.sha:
        title += f" (before = {result.ref}, {result.sha[:12]}: last commit before governance)"
    out = [heading(title)]
    if result.skipped or result.baseline is None:
        out.append(f"  skipped: {result.skipped}")
        out.extend(f"  note: {n}" for n in result.notes)
        return out
    base = result.baseline
    out.append(f"  order: {result.order}")
    out.append(f"  worktree {os.path.relpath(base.tree.path)} ({'reused' if base.tree.reused else 'new'}); "
               f"deps layer: {base.tree.deps_layer}")  # fmt: skip
    for half in base.halves:
        env = half.results.get("environment", {})
        out.append(
            f"  baseline half {half.label}: {half.rounds} rounds, {half.elapsed_s:.1f} s, exit {half.returncode}, "
            f"load avg {env.get('loadavg_start')} → {env.get('loadavg_end')}, log {half.log}"
        )
    rows = []
    for row in result.rows:
        unit = f" ({row.unit})" if row.unit else ""
        rows.append([row.metric + unit, _value(row.before, row.is_count), _value(row.after, row.is_count),
                     _ratio(row.ratio)])  # fmt: skip
    out.append(table(["metric", "before", "after", "after/before"], rows))
    out.append(
        "  added = gateway p50/p99 − direct p50/p99 within each side's own run; the direct row shows whether"
        " both sides ran on a comparable machine"
    )
    out.append(
        "  DynamoDB before: the baseline bench's fresh request (miss) and its repeat (hit);"
        " after: steady state (section 3)"
    )
    total = sum(h.rounds for h in base.halves)
    out.append(
        "  import: fresh interpreters, both trees in one round-robin (section 2); peak RSS: VmHWM of each bench"
        f" process (the baseline's ran {base.halves[0].rounds} rounds each, this one {total})"
    )
    out.extend(f"  note: {n}" for n in result.notes)
    return out
