"""Before vs after governance: the pre-governance tree's own bench, run in the same `make bench`.

The baseline is a git worktree of BASELINE_REF (override: env BENCH_BASELINE_REF; "none" or ""
skips) under build/bench/baseline/, reused when it is already at that commit. Its bench runs in a
subprocess with the same interpreter, cwd = the worktree and PYTHONPATH = the worktree's folders,
so it measures that tree's code end to end (its own runtime, synth, handlers); the figures are read
back from the worktree's build/bench/results.json.

Noise: this machine is shared, so the order is A B A, not A then B. The baseline runs twice with
half the rounds each (ROUNDS // 2, each after its usual warm-up), once just before this tree's
latency run and once just after it; their samples are pooled (rounds stay paired within each
half). Drift that is linear in time then lands on both sides
alike. The only changes made to the baseline's bench are set on its modules before its `main()`
runs: those round counts (ROUNDS, WARMUP_ROUNDS) and a minimal cold start (1 run of `import boto3`;
the handler's import cost is measured by this bench, both trees in one round-robin, coldstart.py).
Its peak RSS is read from /proc/self/status (VmHWM) by the small runner that calls its `main()`.

The Lambda deps layer is not downloaded again: when the worktree has no build/layers/deps, this
tree's build/layers/deps is hard-linked into it (a copy where links are impossible) with its stamp
(infra/layers.py rebuilds a layer only when its stamp's input hash differs; the deps requirements
are the same at both commits). Everything else the worktree builds itself, once (stamps again).

Anything that goes wrong here (no git, a shallow clone without the commit, a failing build) is
reported as the reason the section is skipped; the rest of the bench does not depend on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.latency import COMPARISONS, Comparison, compare
from bench.stats import Summary, median

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "cbd47cd"  # last commit before governance
REF_ENV = "BENCH_BASELINE_REF"
WORKTREE = ROOT / "build" / "bench" / "baseline"
LOGS = ROOT / "build" / "bench"
RUN_TIMEOUT_S = 600
GIT_TIMEOUT_S = 120
# Runs the tree's own bench with fewer rounds: argv = rounds, warm-up rounds, cold-start runs, and
# a file for the process's peak RSS. Its own figure (getrusage) cannot be used: ru_maxrss survives
# exec, so a child starts at its parent's peak. VmHWM belongs to the post-exec address space.
# Its cold start is not used (bench/coldstart.py imports its handler in this tree's round-robin):
# it imports only boto3, the cheapest module, so that section of its report still has a row.
_RUNNER = """
import json, sys
import bench.__main__ as bench_main
import bench.coldstart as bench_coldstart
bench_main.ROUNDS, bench_main.WARMUP_ROUNDS, bench_main.COLD_START_RUNS = map(int, sys.argv[1:4])
bench_coldstart.MODULES = ("boto3",)
try:
    code = bench_main.main()
finally:
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        with open(sys.argv[4], "w") as out:
            json.dump({"vm_hwm_mib": kib / 1024}, out)
    except (OSError, StopIteration, ValueError):
        pass
sys.exit(code)
"""


class BaselineUnavailable(Exception):
    """Why the before/after section cannot be produced in this run."""


def ref() -> str | None:
    value = os.environ.get(REF_ENV, BASELINE_REF).strip()
    return None if value.lower() in ("", "none", "off") else value


def _git(*args: str, cwd: Path = ROOT) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineUnavailable(f"git {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise BaselineUnavailable(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


@dataclass
class Worktree:
    ref: str
    sha: str
    path: Path
    reused: bool
    deps_layer: str  # what was done about build/layers/deps


def _head_of(path: Path) -> str | None:
    """The commit checked out at `path` if it is a worktree of this repository, else None."""
    if not (path / ".git").exists():
        return None
    try:
        top = _git("rev-parse", "--show-toplevel", cwd=path)
        common = _git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=path)
        ours = _git("rev-parse", "--path-format=absolute", "--git-common-dir")
        head = _git("rev-parse", "HEAD", cwd=path)
    except BaselineUnavailable:
        return None
    return head if Path(top).resolve() == path.resolve() and Path(common) == Path(ours) else None


def prepare(wanted: str) -> Worktree:
    """The worktree of `wanted` under build/bench/baseline, created or moved there as needed."""
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}")
    except BaselineUnavailable as exc:
        shallow = ""
        with_shallow = (ROOT / ".git" / "shallow").exists()
        if with_shallow:
            shallow = " (this is a shallow clone: `git fetch --unshallow` brings the history)"
        raise BaselineUnavailable(f"{wanted!r} is not a commit in this clone{shallow}") from exc
    head = _head_of(WORKTREE)
    reused = head == sha
    if head is None:
        if WORKTREE.exists():  # not a worktree of ours (or a broken one): start again
            shutil.rmtree(WORKTREE)
        _git("worktree", "prune")
        WORKTREE.parent.mkdir(parents=True, exist_ok=True)
        _git("worktree", "add", "--detach", "--force", str(WORKTREE), sha)
    elif not reused:  # another ref: move it, keeping its build/ caches (stamps decide what is stale)
        _git("checkout", "--quiet", "--detach", "--force", sha, cwd=WORKTREE)
    return Worktree(wanted, sha, WORKTREE, reused, _share_deps_layer(WORKTREE))


def _link_or_copy(src: str, dst: str) -> object:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _share_deps_layer(tree: Path) -> str:
    source = ROOT / "build" / "layers" / "deps"
    source_stamp = source.with_name("deps.stamp")
    target = tree / "build" / "layers" / "deps"
    if target.exists():
        return "the worktree's own (already built)"
    if not source.is_dir() or not source_stamp.is_file():
        return "none to share: the worktree builds its own (pip download)"
    if (ROOT / "layers" / "deps" / "requirements.txt").read_bytes() != (
        tree / "layers" / "deps" / "requirements.txt"
    ).read_bytes():
        return "not shared (the requirements differ): the worktree builds its own (pip download)"
    partial = target.with_name("deps.linking")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, partial, symlinks=True, copy_function=_link_or_copy)
    partial.rename(target)
    shutil.copy2(source_stamp, target.with_name("deps.stamp"))  # last: a partial copy never looks current
    return "hard-linked from this tree's build/layers/deps"


@dataclass
class Half:
    label: str
    rounds: int
    warmup_rounds: int
    cold_start_runs: int
    elapsed_s: float
    returncode: int
    log: str
    results: dict[str, Any]
    peak_rss_mib: float | None  # VmHWM of the bench process (None where /proc is not there)

    def to_json(self) -> dict[str, Any]:
        env = self.results.get("environment", {})
        return {
            "label": self.label,
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "cold_start_runs": self.cold_start_runs,
            "elapsed_s": round(self.elapsed_s, 1),
            "returncode": self.returncode,
            "log": self.log,
            "loadavg_start": env.get("loadavg_start"),
            "loadavg_end": env.get("loadavg_end"),
            "latency_errors": len(self.results.get("latency", {}).get("errors", [])),
            "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1),
            "phases_s": self.results.get("phases_s"),
        }


def run_half(tree: Worktree, label: str, rounds: int, warmup: int, cold_start_runs: int, env: dict[str, str]) -> Half:
    """The worktree's bench once, in a subprocess; its results.json, or BaselineUnavailable."""
    results = tree.path / "build" / "bench" / "results.json"
    results.unlink(missing_ok=True)  # never read an earlier run's figures
    log = LOGS / f"baseline-{label}.log"
    rss_file = LOGS / f"baseline-{label}.rss.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    rss_file.unlink(missing_ok=True)
    child_env = {
        **env,
        "PYTHONPATH": os.pathsep.join(str(tree.path / p) for p in ("layers/shared/python", "functions", ".")),
        REF_ENV: "none",  # a baseline whose bench has this module must not start its own baseline
    }
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _RUNNER, str(rounds), str(warmup), str(cold_start_runs), str(rss_file)],
                cwd=tree.path,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT_S,
                check=False,
            )
            returncode = done.returncode
        except subprocess.TimeoutExpired as exc:
            raise BaselineUnavailable(f"the baseline bench ({label}) ran over {RUN_TIMEOUT_S} s; see {log}") from exc
    elapsed = time.perf_counter() - started
    relative = os.path.relpath(log, ROOT)
    if not results.is_file():
        tail = log.read_text(errors="replace")[-1500:]
        raise BaselineUnavailable(
            f"the baseline bench ({label}) exited {returncode} without results ({relative}):\n{tail}"
        )
    data = json.loads(results.read_text())
    peak: float | None = None
    if rss_file.is_file():
        peak = float(json.loads(rss_file.read_text())["vm_hwm_mib"])
        rss_file.unlink()
    return Half(label, rounds, warmup, cold_start_runs, elapsed, returncode, relative, data, peak)


@dataclass
class Baseline:
    """The baseline's figures, pooled over its halves."""

    tree: Worktree
    halves: list[Half]
    samples_ms: dict[str, list[float]]
    summaries: dict[str, Summary]
    comparisons: list[Comparison]
    dynamodb: list[dict[str, Any]]
    peak_rss_mib: float | None
    errors: list[str] = field(default_factory=list)

    def added(self, name: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.name == name), None)

    def dynamo(self, kind: str) -> dict[str, Any] | None:
        return next((d for d in self.dynamodb if d.get("kind") == kind), None)


def combine(tree: Worktree, halves: list[Half]) -> Baseline:
    keys = {gw for _, gw, _ in COMPARISONS} | {base for _, _, base in COMPARISONS}
    samples: dict[str, list[float]] = {}
    errors: list[str] = []
    for half in halves:
        latency = half.results.get("latency", {})
        errors += latency.get("errors", [])
        for key, values in latency.get("samples_ms", {}).items():
            samples.setdefault(key, []).extend(values)
    missing = keys - samples.keys()
    if missing:
        raise BaselineUnavailable(f"the baseline's results have no samples for {sorted(missing)}")
    summaries, comparisons = compare({k: v for k, v in samples.items() if k in keys})
    first = halves[0].results
    rss = [h.peak_rss_mib for h in halves if h.peak_rss_mib is not None]
    return Baseline(
        tree=tree,
        halves=halves,
        samples_ms=samples,
        summaries=summaries,
        comparisons=comparisons,
        dynamodb=list(first.get("dynamodb_per_request", [])),
        peak_rss_mib=max(rss) if rss else None,
        errors=errors,
    )


@dataclass(frozen=True)
class Row:
    metric: str
    before: float | None
    after: float | None
    unit: str
    is_count: bool = False

    @property
    def ratio(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return self.after / self.before

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "metric": self.metric,
            "unit": self.unit,
            "before": None if self.before is None else round(self.before, 3),
            "after": None if self.after is None else round(self.after, 3),
            "ratio_after_before": None if ratio is None else round(ratio, 3),
        }


def rows(
    before: Baseline,
    after_comparisons: list[Comparison],
    after_summaries: dict[str, Summary],
    after_dynamo: dict[str, tuple[int, int]],
    imports_ms: tuple[float | None, float | None],
    after_rss_mib: float,
) -> list[Row]:
    """The before/after table; `after_dynamo` maps miss/hit to (calls, phases) in steady state."""
    out: list[Row] = []
    after_by_name = {c.name: c for c in after_comparisons}
    for name in ("MISS, HTTP", "MISS, in-process", "HIT, HTTP", "HIT, in-process"):
        b, a = before.added(name), after_by_name.get(name)
        for stat in ("p50", "p99"):
            out.append(
                Row(
                    f"added {stat}, {name}",
                    getattr(b, f"added_{stat}_ms") if b else None,
                    getattr(a, f"added_{stat}_ms") if a else None,
                    "ms",
                )
            )
    for key, label in (("inproc_miss", "in-process MISS"), ("inproc_hit", "in-process HIT")):
        out.append(Row(f"gateway p50, {label}", before.summaries[key].p50_ms, after_summaries[key].p50_ms, "ms"))
    out.append(Row("direct p50 (provider alone)", before.summaries["direct_miss"].p50_ms,
                   after_summaries["direct_miss"].p50_ms, "ms"))  # fmt: skip
    for kind in ("miss", "hit"):
        b_ddb = before.dynamo(kind)
        a_calls, a_phases = after_dynamo.get(kind, (None, None))
        out.append(Row(f"DynamoDB calls, {kind}", b_ddb.get("calls") if b_ddb else None, a_calls, "", True))
        out.append(Row(f"DynamoDB phases, {kind}", b_ddb.get("phases") if b_ddb else None, a_phases, "", True))
    out.append(Row("import generate.handler p50", *imports_ms, "ms"))
    out.append(Row("peak RSS, bench process", before.peak_rss_mib, after_rss_mib, "MiB"))
    return out


@dataclass
class BeforeAfter:
    """Section 5 as reported: the table, or why there is none."""

    ref: str | None
    sha: str | None
    order: str
    rows: list[Row]
    baseline: Baseline | None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json_brief(self) -> dict[str, Any]:
        return {"ref": self.ref, "sha": self.sha, "skipped": self.skipped}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.to_json_brief(), "order": self.order, "notes": self.notes}
        if self.baseline is None:
            return out
        b = self.baseline
        out.update(
            {
                "worktree": os.path.relpath(b.tree.path, ROOT),
                "worktree_reused": b.tree.reused,
                "deps_layer": b.tree.deps_layer,
                "halves": [h.to_json() for h in b.halves],
                "comparison": [r.to_json() for r in self.rows],
                "summary_ms": {k: v.to_json() for k, v in b.summaries.items()},
                "added": [c.to_json() for c in b.comparisons],
                "dynamodb_per_request": b.dynamodb,
                "peak_rss_mib": b.peak_rss_mib,
                "latency_errors": b.errors[:5],
            }
        )
        return out


class BaselineRun:
    """Runs the baseline around this tree's latency run (A B A) and never raises."""

    def __init__(self, env: dict[str, str], rounds: int, warmup: int, progress: Callable[[str], None]):
        self.env = env
        self.rounds = (rounds // 2, rounds - rounds // 2)
        self.warmup = warmup
        self.progress = progress
        self.wanted = ref()
        self.tree: Worktree | None = None
        self.halves: list[Half] = []
        self.skipped: str | None = None if self.wanted else f"{REF_ENV} says to skip it"
        self.notes: list[str] = []

    @property
    def order(self) -> str:
        a, b = self.rounds
        return (
            f"baseline {a} rounds (+{self.warmup} warm-up) → this tree {sum(self.rounds)} rounds → "
            f"baseline {b} rounds (+{self.warmup} warm-up); baseline samples pooled; cold start interleaved"
        )

    def _skip(self, exc: Exception) -> None:
        if isinstance(exc, BaselineUnavailable):
            self.skipped = str(exc)
        else:  # the comparison is optional; the bench carries on without it
            self.skipped = f"unexpected {type(exc).__name__}: {exc}"
        self.progress(f"baseline skipped: {self.skipped.splitlines()[0]}")

    def prepare(self, phases: dict[str, float]) -> Path | None:
        """The worktree (for the cold-start round-robin), or None when there is no baseline."""
        if self.skipped or self.wanted is None:
            return None
        self.progress(f"baseline {self.wanted}: git worktree under {os.path.relpath(WORKTREE, ROOT)}")
        started = time.perf_counter()
        try:
            self.tree = prepare(self.wanted)
        except Exception as exc:
            self._skip(exc)
            return None
        phases["baseline_prepare_s"] = time.perf_counter() - started
        return self.tree.path

    def first_half(self, phases: dict[str, float]) -> None:
        if self.skipped or self.tree is None:
            return
        reused = "reused" if self.tree.reused else "new"
        self.progress(f"baseline {self.tree.sha[:12]} ({reused} worktree): its bench, first half (builds once if new)")
        started = time.perf_counter()
        try:
            self.halves.append(run_half(self.tree, "1", self.rounds[0], self.warmup, 1, self.env))
        except Exception as exc:
            self._skip(exc)
        phases["baseline_1_s"] = time.perf_counter() - started

    def second_half(self, phases: dict[str, float]) -> None:
        if self.skipped or self.tree is None:
            return
        self.progress("baseline, second half")
        started = time.perf_counter()
        try:
            self.halves.append(run_half(self.tree, "2", self.rounds[1], self.warmup, 1, self.env))
        except Exception as exc:
            self.notes.append(f"the second half failed, figures from the first half only: {exc}")
        phases["baseline_2_s"] = time.perf_counter() - started

    def compare(self, latency: Any, ddb: list[Any], imports: list[Any], rss_self_mib: float) -> BeforeAfter:
        sha = self.tree.sha if self.tree else None
        if self.skipped or self.tree is None:
            return BeforeAfter(self.wanted, sha, self.order, [], None, self.skipped or "not run", self.notes)
        try:
            before = combine(self.tree, self.halves)
            handler = {t.tree: median(t.import_s) * 1000 for t in imports if t.module == "generate.handler"}
            imports_ms = (handler.get("baseline"), handler.get("this"))
            steady = {c.key: (c.calls, c.phases) for c in ddb if c.key in ("miss", "hit")}
            table = rows(before, latency.comparisons, latency.summaries, steady, imports_ms, rss_self_mib)
        except Exception as exc:
            reason = f"could not compare: {type(exc).__name__}: {exc}"
            return BeforeAfter(self.wanted, sha, self.order, [], None, reason, self.notes)
        if before.errors:
            self.notes.append(f"the baseline's bench saw {len(before.errors)} unexpected answers: {before.errors[0]}")
        return BeforeAfter(self.wanted, sha, self.order, table, before, None, self.notes)
