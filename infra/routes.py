"""The one route table: CDK builds the HTTP API from it and the local runtime serves it.

Each function named here is a folder `functions/<name>/` whose package `<name>.handler` exposes
`lambda_handler`. Routes with `public=True` skip the authorizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # API Gateway syntax: /v1/things/{id}
    function: str
    public: bool = False


@dataclass(frozen=True)
class Schedule:
    """An EventBridge schedule invoking a function with `{"schedule": name}` (infra/schedules.py)."""

    name: str
    function: str
    expression: str  # EventBridge syntax: rate(...) or cron(...)
    description: str


@dataclass(frozen=True)
class Function:
    """One Lambda: its folder under functions/, and what it may touch (see infra/functions.py)."""

    name: str
    description: str
    memory_mb: int = 512
    timeout_s: int = 29
    # Which data/messaging resources the function's role is granted, and how.
    grants: tuple[str, ...] = field(default_factory=tuple)


# What every function that calls a model needs (Completions.complete): the response cache, the
# ledger and budget counters, tenant settings and circuits, the provider key, budget alerts.
MODEL_CALLER = ("cache:readwrite", "ledger:write", "state:readwrite", "secret:read", "alerts:publish")

FUNCTIONS: tuple[Function, ...] = (
    Function(
        "authorizer",
        "Resolves an API key to tenant, user and role",
        memory_mb=256,
        timeout_s=5,
        grants=("state:read",),
    ),
    Function(
        "generate",
        "Template-driven generation: render, cache, provider, ledger",
        grants=(*MODEL_CALLER, "idempotency:readwrite"),
    ),
    Function(
        "chat",
        "OpenAI-compatible chat completions and models; conversations with context-window management",
        grants=(*MODEL_CALLER, "idempotency:readwrite"),
    ),
    Function(
        "jobs",
        "Asynchronous jobs: validate, rate-limit and enqueue; read a job's status and result",
        memory_mb=256,
        timeout_s=10,
        grants=("state:readwrite", "jobs:enqueue", "idempotency:readwrite", "workflow:stop"),
    ),
    Function(
        "leads",
        "Leads: upsert, request scores (one job per lead), read scores, history and rankings",
        memory_mb=512,
        timeout_s=29,
        grants=("state:readwrite", "jobs:enqueue", "idempotency:readwrite"),
    ),
    Function(
        "lead_batch",
        "Scheduled re-scoring of stale leads; imports of lead files dropped in the imports bucket",
        memory_mb=1024,
        timeout_s=900,
        grants=("state:readwrite", "jobs:enqueue", "imports:readwrite"),
    ),
    Function(
        "admin",
        "Health, OpenAPI document and operator endpoints (tenants, API keys, budgets and limits, settings)",
        memory_mb=256,
        timeout_s=10,
        grants=("cache:describe", "ledger:describe", "state:readwrite"),
    ),
    Function(
        "usage",
        "Finance: budget status, usage totals, paged ledger exports; feedback and prompt experiment reports",
        memory_mb=1024,
        timeout_s=29,
        grants=("ledger:read", "state:readwrite"),
    ),
    Function(
        "exporter",
        "Scheduled: last month's ledger of every tenant to the exports bucket (CSV + summary)",
        memory_mb=1024,
        timeout_s=900,
        grants=("ledger:read", "state:read", "exports:write"),
    ),
    Function(
        "sweeper",
        "Releases orphaned budget reservations; sends budget alerts no request sent",
        memory_mb=256,
        timeout_s=60,
        grants=("state:readwrite", "alerts:publish"),
    ),
    Function(
        "scoring_dispatch",
        "SQS consumer: starts one workflow execution per job message",
        memory_mb=256,
        timeout_s=30,
        grants=("state:readwrite", "workflow:start"),
    ),
    Function(
        "workflow",
        "Task states of the asynchronous job workflow",
        timeout_s=60,
        grants=MODEL_CALLER,
    ),
)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/generate", "generate"),
    Route("POST", "/v1/batch", "generate"),
    Route("POST", "/v1/chat/completions", "chat"),
    Route("GET", "/v1/models", "chat"),
    Route("GET", "/v1/models/{model}", "chat"),
    Route("POST", "/v1/conversations", "chat"),
    Route("GET", "/v1/conversations", "chat"),
    Route("GET", "/v1/conversations/{conversation_id}", "chat"),
    Route("DELETE", "/v1/conversations/{conversation_id}", "chat"),
    Route("POST", "/v1/conversations/{conversation_id}/messages", "chat"),
    Route("PATCH", "/v1/conversations/{conversation_id}/messages/{message_id}", "chat"),
    Route("POST", "/v1/feedback", "usage"),
    Route("GET", "/v1/experiments/{template}/report", "usage"),
    Route("POST", "/v1/jobs", "jobs"),
    Route("GET", "/v1/jobs", "jobs"),
    Route("GET", "/v1/jobs/{job_id}", "jobs"),
    Route("POST", "/v1/jobs/{job_id}/cancel", "jobs"),
    Route("POST", "/v1/jobs/{job_id}/retry", "jobs"),
    Route("POST", "/v1/jobs/retry-failed", "jobs"),
    Route("PUT", "/v1/leads/{lead_id}", "leads"),
    Route("POST", "/v1/leads", "leads"),
    Route("POST", "/v1/leads/score", "leads"),
    Route("GET", "/v1/leads", "leads"),
    Route("GET", "/v1/leads/{lead_id}", "leads"),
    Route("GET", "/v1/leads/{lead_id}/scores", "leads"),
    Route("GET", "/v1/budget", "usage"),
    Route("GET", "/v1/usage", "usage"),
    Route("GET", "/v1/usage/export", "usage"),
    Route("POST", "/v1/admin/tenants", "admin"),
    Route("GET", "/v1/admin/tenants", "admin"),
    Route("POST", "/v1/admin/tenants/{tenant_id}/keys", "admin"),
    Route("GET", "/v1/admin/tenants/{tenant_id}/keys", "admin"),
    Route("DELETE", "/v1/admin/tenants/{tenant_id}/keys/{key_id}", "admin"),
    Route("GET", "/v1/admin/tenants/{tenant_id}/governance", "admin"),
    Route("PUT", "/v1/admin/tenants/{tenant_id}/governance", "admin"),
    Route("GET", "/v1/admin/tenants/{tenant_id}/scoring", "admin"),
    Route("PUT", "/v1/admin/tenants/{tenant_id}/scoring", "admin"),
    Route("GET", "/v1/admin/tenants/{tenant_id}/experiments/{template}", "admin"),
    Route("PUT", "/v1/admin/tenants/{tenant_id}/experiments/{template}", "admin"),
    Route("GET", "/v1/health", "admin", public=True),
    Route("GET", "/v1/openapi.json", "admin", public=True),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule(
        "reservation-sweeper",
        "sweeper",
        "rate(1 minute)",
        "Release budget reservations past their hold; send budget alerts that are due",
    ),
    Schedule(
        "lead-rescore",
        "lead_batch",
        "rate(1 hour)",
        "Re-score leads whose score is older than their tenant's freshness window",
    ),
    Schedule(
        "monthly-usage-export",
        "exporter",
        "cron(0 3 1 * ? *)",
        "Export last month's ledger of every tenant to the exports bucket (CSV + summary)",
    ),
)

# The synchronous limit API Gateway puts on an integration; handlers plan their deadline from it.
API_GATEWAY_TIMEOUT_S = 30


def function(name: str) -> Function:
    for f in FUNCTIONS:
        if f.name == name:
            return f
    raise KeyError(name)


def http_functions() -> list[str]:
    """Functions that sit behind an HTTP route, in route-table order."""
    seen: list[str] = []
    for r in ROUTES:
        if r.function not in seen:
            seen.append(r.function)
    return seen
