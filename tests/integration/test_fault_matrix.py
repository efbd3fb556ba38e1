"""The fault matrix: every provider fault × {synchronous request, Step Functions job}.

Each fault of the simulated provider is injected twice per path: transient (the fault once, then
the provider answers) and persistent (the fault on every call). Every cell must end in a valid
answer, a labelled fallback (served_by, fallback, degraded_reason) or a clear error (a 4xx/5xx
body `{"error": {"code", "message"}, "request_id"}`, or a failed job naming a domain error class)
— and never in an unhandled error (a 500 `internal_error`, a job failed by anything but a domain
error, a job that never ends). The expected outcome of each cell is derived from the failure
policy (aigateway/resilience/policy.py) and the jobs workflow (infra/workflow.py); the respx
table in test_provider_scripted.py covers the same faults at the SDK's level.

Isolation: each request carries a marker (in the learner's `answer`) and the simulator takes that
request's faults from the marker's own script, so concurrent jobs never take each other's faults.
The circuit breaker (one per provider × model, opening at the 5th counted failure in 30 s) would
turn the later cells of a shared stack into CircuitOpen skips, so cells run in groups, a fresh
stack per group, with at most 4 counted failures per circuit in a group; each group checks at the
end that every circuit is still closed, so what the matrix shows is the per-request policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from aigateway import deps, jobs
from aigateway.completion import MAX_ATTEMPTS, STATIC_MODEL, TRIES_PER_MODEL
from aigateway.errors import code_of
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack
from infra.local.seed import seed_demo_tenant
from tests.conftest import Client, Reply
from tests.integration.test_generate import SKILL, ledger_rows
from tests.integration.test_jobs_workflow import PRINCIPAL, run_task_max_attempts
from workflow.handler import STAGE_BASE

API_KEY = "aig_demo_test_key_0123456789"
PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4.1-mini"  # skill_assessment's chain (the analytical profile)

RETRYABLE = {  # fault → the error code it is classified as (llm/client.py)
    "429": "provider_rate_limited",
    "429_retry_after": "provider_rate_limited",
    "500": "provider_error",
    "503": "provider_error",
    "timeout": "provider_timeout",
    "reset": "provider_unreachable",
    "malformed": "provider_bad_response",
}
CODES = {
    **RETRYABLE,
    "schema_invalid": "invalid_model_output",
    "content_filter": "content_filtered",
    "context_length": "context_length_exceeded",
    "401": "provider_auth_error",
}
FAULTS = tuple(CODES)
PERSISTENT_CALLS = 20  # more calls than any cell makes
HANG_S = 3.0  # how long a "timeout" fault holds the request; the stack's attempt timeout is shorter
ATTEMPT_TIMEOUT_S = "1.5"  # OPENAI_TIMEOUT_S for the groups with timeout cells
JOB_WAIT_S = 90


@dataclass(frozen=True)
class Cell:
    fault: str
    persistent: bool

    @property
    def variant(self) -> str:
        return "persistent" if self.persistent else "transient"

    @property
    def marker(self) -> str:
        # Bracketed, so no marker is a substring of another (429 vs 429_retry_after).
        return f"[cell:{self.fault}:{self.variant}]"

    @property
    def script(self) -> list[str]:
        return [self.fault] * (PERSISTENT_CALLS if self.persistent else 1)

    def request(self) -> dict[str, Any]:
        variables = dict(SKILL["variables"])  # type: ignore[call-overload]
        variables["answer"] = f"{variables['answer']} {self.marker}"
        return {**SKILL, "variables": variables}


@dataclass(frozen=True)
class Outcome:
    """One cell's end: HTTP status or job status; served_by, or the error code / error class."""

    status: str
    label: str
    degraded_reason: str | None
    attempts: tuple[int, ...]  # ledger attempt numbers of the provider attempts (no degraded row)

    def text(self) -> str:
        reason = f" ← {self.degraded_reason}" if self.degraded_reason else ""
        n = len(self.attempts)
        return f"{self.status} {self.label}{reason} ({n} attempt{'s' if n != 1 else ''})"


@dataclass
class Observed:
    cell: Cell
    outcome: Outcome
    expected: Outcome
    unhandled: bool
    problems: list[str]
    seconds: float = 0.0


def groups() -> list[list[Cell]]:
    """Cells per stack: a persistent retryable fault counts 2 (sync) or 3 (job) failures against
    each circuit and its transient twin 1 more; 401 counts 1 per call; the rest count none."""
    grouped = [[Cell(f, True), Cell(f, False)] for f in RETRYABLE]
    grouped.append([Cell(f, p) for f in FAULTS if f not in RETRYABLE for p in (True, False)])
    return grouped


def expected_sync(cell: Cell) -> Outcome:
    """What the failure policy prescribes for a synchronous request (stage "all")."""
    fault, code = cell.fault, CODES[cell.fault]
    tries = TRIES_PER_MODEL  # per model: the try and one in-process retry, or the try and one repair
    if fault in RETRYABLE or fault == "schema_invalid":
        if cell.persistent:  # both models, each twice; then the template's static answer
            return Outcome("200", "static_answer", code, tuple(range(2 * tries)))
        return Outcome("200", "primary", None, (0, 1))
    if fault == "content_filter":  # stop: the content is the cause
        return Outcome("422", code, None, (0,))
    if fault == "context_length":  # larger: the next hop has the larger window
        if cell.persistent:
            return Outcome("400", code, None, (0, 1))
        return Outcome("200", "fallback_model", code, (0, 1))
    assert fault == "401"  # next: no retry of our credentials; then degrade
    if cell.persistent:
        return Outcome("200", "static_answer", code, (0, 1))
    return Outcome("200", "fallback_model", code, (0, 1))


def expected_job(cell: Cell, retries: int) -> Outcome:
    """What the workflow prescribes: Run (primary) and RunFallback each try 1 + `retries` times
    on a retryable error; ledger attempt numbers are stage base + RetryCount × 10 + in-process index."""
    fault, code = cell.fault, CODES[cell.fault]
    primary, fallback = STAGE_BASE["primary"], STAGE_BASE["fallback"]

    def stage(base: int) -> tuple[int, ...]:
        return tuple(base + r * MAX_ATTEMPTS for r in range(1 + retries))

    if fault in RETRYABLE:
        if cell.persistent:
            return Outcome("succeeded", "static_answer", code, stage(primary) + stage(fallback))
        return Outcome("succeeded", "primary", None, (primary, primary + MAX_ATTEMPTS))
    if fault == "schema_invalid":  # repaired in-process; not retried by Step Functions
        if cell.persistent:
            return Outcome("succeeded", "static_answer", code, (primary, primary + 1, fallback, fallback + 1))
        return Outcome("succeeded", "primary", None, (primary, primary + 1))
    if fault == "content_filter":  # a caller error: straight to RecordFailure
        return Outcome("failed", "ContentFiltered", None, (primary,))
    if fault == "context_length":  # not the caller's until the larger window also refuses
        if cell.persistent:
            return Outcome("failed", "ContextLengthExceeded", None, (primary, fallback))
        return Outcome("succeeded", "fallback_model", code, (primary, fallback))
    assert fault == "401"
    if cell.persistent:
        return Outcome("succeeded", "static_answer", code, (primary, fallback))
    return Outcome("succeeded", "fallback_model", code, (primary, fallback))


@pytest.fixture(scope="module")
def matrix() -> Iterator[dict[str, list[Observed]]]:
    """Both paths' cells; printed together once both tests have run."""
    found: dict[str, list[Observed]] = {}
    yield found
    if len(found) == 2:
        print_matrix(found)


def print_matrix(found: dict[str, list[Observed]]) -> None:
    paths = list(found)
    columns = [(path, variant) for path in paths for variant in ("transient", "persistent")]
    cells = {(path, o.cell.fault, o.cell.variant): o for path in paths for o in found[path]}
    head = ["fault", *[f"{path} · {variant}" for path, variant in columns]]
    rows = [[fault, *[cells[(path, fault, v)].outcome.text() for path, v in columns]] for fault in FAULTS]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "-+-".join("-" * w for w in widths)
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    unhandled = sum(o.unhandled for path in paths for o in found[path])
    total = sum(len(found[path]) for path in paths)
    print(f"cells: {total}, unhandled errors: {unhandled}")


def stack_for(template_path: Any, sim_server: Any, group: list[Cell]) -> LocalStack:
    """A fresh stack for one group, and the simulator scripted for the group's markers."""
    overrides = {"SIMULATOR_URL": sim_server.base_url, "PROVIDER": "simulated"}
    if any(c.fault == "timeout" for c in group):
        overrides["OPENAI_TIMEOUT_S"] = ATTEMPT_TIMEOUT_S
    provider = sim_server.provider
    provider.reset_faults()
    provider.reset_stats()
    provider.set_faults({"marked": {c.marker: c.script for c in group}, "hang_s": HANG_S})
    return LocalStack(template_path, env_overrides=overrides)


def rows_of(stack: LocalStack, request_id: str) -> list[dict[str, Any]]:
    return sorted((r for r in ledger_rows(stack) if r["request_id"] == request_id), key=lambda r: int(r["attempt"]))


def check_rows(rows: list[dict[str, Any]], *, degraded: bool) -> tuple[tuple[int, ...], list[str]]:
    """The provider attempts' numbers, and what is wrong with the rows: one per attempt, failures
    at cost 0 except schema-invalid answers (billed), the degraded answer's row last, at cost 0."""
    problems: list[str] = []
    attempts = rows[:-1] if degraded and rows else rows
    if degraded:
        last = rows[-1] if rows else {}
        if last.get("outcome") != "fallback" or int(last.get("cost_micros", -1)) != 0:
            problems.append(f"degraded answer's row: {last}")
    for row in attempts:
        cost = int(row["cost_micros"])
        if row["outcome"] == "failure":
            billed = row["error_code"] == "invalid_model_output"
            if (cost > 0) != billed:
                problems.append(f"attempt {row['attempt']} ({row['error_code']}) cost {cost}")
        elif row["outcome"] != "success" or cost <= 0:
            problems.append(f"attempt {row['attempt']}: {row['outcome']} at cost {cost}")
    return tuple(int(r["attempt"]) for r in attempts), problems


def check_answer(answer: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """Whether a 2xx answer (a generate response) is a degraded one, and what is wrong with it:
    the output must be the template's, and the labels must agree with each other and the ledger."""
    problems: list[str] = []
    try:
        deps.templates().get("skill_assessment").output_model.model_validate(answer["output"])
    except (KeyError, ValueError) as exc:
        problems.append(f"output is not the template's: {exc}")
    served_by = answer.get("served_by")
    if answer.get("fallback") is not (served_by != "primary"):
        problems.append(f"fallback={answer.get('fallback')} with served_by={served_by}")
    if (served_by == "primary") is not (answer.get("degraded_reason") is None):
        problems.append(f"served_by={served_by} with degraded_reason={answer.get('degraded_reason')}")
    model = {"primary": PRIMARY, "fallback_model": FALLBACK, "static_answer": None}.get(str(served_by), "?")
    if answer.get("model") != model:
        problems.append(f"served_by={served_by} names model {answer.get('model')}")
    degraded = served_by in ("stale_cache", "static_answer")
    if degraded and (not rows or rows[-1]["model"] != STATIC_MODEL):
        problems.append(f"no static answer's row last: {rows[-1:]}")
    return degraded, problems


def all_circuits_closed() -> list[str]:
    views = deps.breaker().views(int(time.time() * 1000))
    return [f"circuit {v.circuit} is {v.state}" for v in views if v.state != "closed"]


# ---------------------------------------------------------------------------------------------
# Synchronous requests
# ---------------------------------------------------------------------------------------------


def observe_sync(cell: Cell, reply: Reply, rows: list[dict[str, Any]], calls: int) -> Observed:
    problems: list[str] = []
    body = reply.body if isinstance(reply.body, dict) else {}
    unhandled = reply.status == 500 or not body
    if 200 <= reply.status < 300:
        degraded, problems = check_answer(body, rows)
        outcome_label, reason = str(body.get("served_by")), body.get("degraded_reason")
        if body.get("attempts") != len(rows) - int(degraded):
            problems.append(f"attempts {body.get('attempts')} but {len(rows)} ledger rows")
    else:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        if not (error.get("code") and error.get("message") and body.get("request_id")):
            problems.append(f"not a clear error body: {reply.body}")
            unhandled = True
        elif body["request_id"] != reply.headers.get("x-request-id"):
            problems.append("request_id differs from x-request-id")
        if error.get("code") == "internal_error":
            unhandled = True
        degraded, outcome_label, reason = False, str(error.get("code")), None
    attempts, row_problems = check_rows(rows, degraded=degraded)
    problems += row_problems
    if attempts != tuple(range(len(attempts))):
        problems.append(f"attempt numbers {attempts}")
    if calls != len(attempts):  # exactly one HTTP request per attempt
        problems.append(f"{calls} provider calls for {len(attempts)} attempts")
    outcome = Outcome(str(reply.status), outcome_label, reason, attempts)
    return Observed(cell, outcome, expected_sync(cell), unhandled, problems)


def test_fault_matrix_synchronous_requests(
    template_path: Any, sim_server: Any, matrix: dict[str, list[Observed]]
) -> None:
    observed: list[Observed] = []
    started = time.monotonic()
    for group in groups():
        # Given a fresh stack and a provider scripted per cell (transient: once; persistent: always)
        with stack_for(template_path, sim_server, group) as stack:
            client = Client(LocalApiGateway(stack), seed_demo_tenant(API_KEY).api_key)
            for cell in group:
                before, began = sim_server.provider.stats()["requests"], time.monotonic()
                # When the cell's request is made
                reply = client.post("/v1/generate", cell.request())
                seconds = time.monotonic() - began
                calls = sim_server.provider.stats()["requests"] - before
                request_id = (reply.body or {}).get("request_id") if isinstance(reply.body, dict) else None
                rows = rows_of(stack, str(request_id))
                observed.append(observe_sync(cell, reply, rows, calls))
                observed[-1].seconds = seconds
            open_circuits = all_circuits_closed()
            assert not open_circuits, open_circuits
    matrix["synchronous"] = observed
    # Then every cell ends as the policy prescribes, each with its ledger rows, none unhandled
    print_path("synchronous", observed, time.monotonic() - started)
    assert_cells(observed)


def print_path(path: str, observed: list[Observed], elapsed: float) -> None:
    print(f"\n{path}: {len(observed)} cells in {elapsed:.1f}s")
    for o in observed:
        mark = "" if o.outcome == o.expected and not o.problems else f"   ✗ expected {o.expected.text()} {o.problems}"
        print(f"  {o.cell.fault:>16} {o.cell.variant:<10} {o.seconds:5.1f}s → {o.outcome.text()}{mark}")
    print(f"unhandled errors: {sum(o.unhandled for o in observed)}")


def assert_cells(observed: list[Observed]) -> None:
    assert sum(o.unhandled for o in observed) == 0, [o.outcome.text() for o in observed if o.unhandled]
    wrong = [
        f"{o.cell.fault} {o.cell.variant}: {o.outcome.text()} {o.outcome.attempts}, "
        f"expected {o.expected.text()} {o.expected.attempts}; {o.problems}"
        for o in observed
        if o.outcome != o.expected or o.problems
    ]
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------------
# Step Functions jobs
# ---------------------------------------------------------------------------------------------


def wait_all(job_ids: list[str], timeout_s: float) -> dict[str, tuple[dict[str, Any] | None, float]]:
    """Each job's item once it ended (None: still running at the timeout), and when it ended."""
    started = time.monotonic()
    deadline = started + timeout_s
    ended: dict[str, tuple[dict[str, Any] | None, float]] = {}
    while time.monotonic() < deadline and len(ended) < len(job_ids):
        for job_id in [j for j in job_ids if j not in ended]:
            item = deps.repos().jobs.get(job_id)
            if item and item["status"] in ("succeeded", "failed"):
                ended[job_id] = (item, time.monotonic() - started)
        time.sleep(0.2)
    return {j: ended.get(j, (None, timeout_s)) for j in job_ids}


def observe_job(cell: Cell, item: dict[str, Any] | None, rows: list[dict[str, Any]], retries: int) -> Observed:
    problems: list[str] = []
    unhandled = False
    expected = expected_job(cell, retries)
    if item is None:
        unhandled = True
        outcome = Outcome("stuck", "-", None, ())
        return Observed(cell, outcome, expected, unhandled, ["the job never ended"])
    degraded = False
    if item["status"] == "succeeded":
        result = item.get("result") or {}
        degraded, problems = check_answer(result, rows)
        label, reason = str(result.get("served_by")), result.get("degraded_reason")
    else:
        error = item.get("error") or {}
        # A clear failure names a domain error class and why; anything else was not handled.
        if code_of(str(error.get("type"))) is None or not error.get("cause"):
            unhandled = True
            problems.append(f"not a domain error: {error}")
        label, reason = str(error.get("type")), None
    attempts, row_problems = check_rows(rows, degraded=degraded)
    problems += row_problems
    if degraded and rows and int(rows[-1]["attempt"]) != STAGE_BASE["degraded"]:
        problems.append(f"degraded row numbered {rows[-1]['attempt']}")
    outcome = Outcome(str(item["status"]), label, reason, attempts)
    return Observed(cell, outcome, expected, unhandled, problems)


@pytest.mark.slow  # ~60 s: eight stacks in turn, each running its jobs side by side
def test_fault_matrix_step_functions_jobs(
    template_path: Any, sim_server: Any, matrix: dict[str, list[Observed]]
) -> None:
    observed: list[Observed] = []
    started = time.monotonic()
    for group in groups():
        # Given a fresh stack and a provider scripted per cell
        with stack_for(template_path, sim_server, group) as stack:
            seed_demo_tenant(API_KEY)
            retries = run_task_max_attempts(stack, "ProviderError")
            assert run_task_max_attempts(stack, "ProviderError", "RunFallback") == retries
            queue = deps.get_settings().jobs_queue_url or ""
            # When every cell's job is enqueued at once and the workflow runs them side by side
            job_ids = [
                jobs.enqueue(deps.repos().jobs, queue, principal=PRINCIPAL, kind="generate", request=c.request())
                for c in group
            ]
            ended = wait_all(job_ids, JOB_WAIT_S)
            cells = []
            for cell, job_id in zip(group, job_ids, strict=True):
                item, seconds = ended[job_id]
                cells.append(observe_job(cell, item, rows_of(stack, job_id), retries))
                cells[-1].seconds = seconds
            # (every attempt was exactly one provider call)
            attempts = sum(len(o.outcome.attempts) for o in cells)
            calls = sim_server.provider.stats()["requests"]
            if calls != attempts:
                cells[0].problems.append(f"group: {calls} provider calls for {attempts} attempts")
            observed += cells
            open_circuits = all_circuits_closed()
            assert not open_circuits, open_circuits
    matrix["job"] = observed
    # Then every job ends as the workflow prescribes, each with its ledger rows, none unhandled
    print_path("job", observed, time.monotonic() - started)
    assert_cells(observed)
