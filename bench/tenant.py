"""Bench tenants: governance that is exercised on every request but never refuses one.

The default limits (key 120/min, ip 300/min, tenant 1200/min) and budget (100 USD/month) would
refuse a 200-round run. The bench keeps the same rules (one GCRA bucket per scope, so the same
DynamoDB writes per request) with limits no run reaches, and a budget no run exhausts.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aigateway import deps
from aigateway.governance.config import BudgetSettings, Governance, RateLimitRule
from infra.local.seed import DemoTenant, seed_demo_tenant

BENCH_RATE_LIMIT = 1_000_000  # per minute and scope: the largest RateLimitRule allows
BENCH_BUDGET_MICROS = 1_000_000_000_000  # 1 M USD a month; a run spends well under a cent
# The same scopes as aigateway.governance.config.DEFAULT_RATE_LIMITS: the same buckets are written.
BENCH_GOVERNANCE = Governance(
    budgets=BudgetSettings(monthly_micros=BENCH_BUDGET_MICROS),
    rate_limits=tuple(
        RateLimitRule(scope=scope, limit=BENCH_RATE_LIMIT, period_s=60) for scope in ("key", "ip", "tenant")
    ),
)


def configure(tenant_id: str) -> None:
    """Stores the bench governance for `tenant_id` (and drops this environment's cached copy)."""
    deps.governance_configs().put(
        tenant_id, BENCH_GOVERNANCE, updated_by="bench", at=datetime.now(UTC).isoformat(timespec="seconds")
    )


def seed(api_key: str, tenant_id: str) -> DemoTenant:
    """A tenant with an admin key and the bench governance; call before its first request."""
    tenant = seed_demo_tenant(api_key, tenant_id=tenant_id)
    configure(tenant_id)
    return tenant
