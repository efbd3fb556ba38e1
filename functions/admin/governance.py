"""A tenant's budgets and rate limits: the platform operator (role admin) changes them; the tenant's
own tenant_admin keys may read them.

A change is stored, then applied in place to the current month's live budget counters (their
limit and headroom move together), so a lowered budget refuses the next reservation at once in
every execution environment. Which rate limits apply is read through a 30 s cache per environment.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from admin.tenants import existing_tenant
from aigateway import deps
from aigateway.auth import Principal, require_admin, require_tenant_admin
from aigateway.governance.budgets import BudgetScope, period_of
from aigateway.governance.config import Governance


class BudgetOut(BaseModel):
    scope: str
    period: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int


class GovernanceOut(BaseModel):
    tenant_id: str
    governance: Governance
    budgets: list[BudgetOut] = Field(description="This month's counters for every configured budget")


def _report(tenant_id: str, config: Governance, now: datetime) -> GovernanceOut:
    b = config.budgets
    scopes = [BudgetScope("tenant", b.monthly_micros)]
    scopes += [BudgetScope(f"user:{u}", v) for u, v in sorted(b.users.items())]
    scopes += [BudgetScope(f"feature:{f}", v) for f, v in sorted(b.features.items())]
    statuses = deps.budgets().statuses(tenant_id, scopes, period_of(now))
    return GovernanceOut(
        tenant_id=tenant_id,
        governance=config,
        budgets=[
            BudgetOut(
                scope=s.scope,
                period=s.period,
                limit_micros=s.limit_micros,
                spent_micros=s.spent_micros,
                reserved_micros=s.reserved_micros,
                remaining_micros=s.remaining_micros,
            )
            for s in statuses
        ],
    )


def get_governance(principal: Principal, tenant_id: str) -> GovernanceOut:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    return _report(tenant_id, deps.governance_configs().get(tenant_id, fresh=True), datetime.now(UTC))


def put_governance(principal: Principal, tenant_id: str, config: Governance) -> GovernanceOut:
    require_admin(principal)
    existing_tenant(tenant_id)
    now = datetime.now(UTC)
    deps.governance_configs().put(tenant_id, config, updated_by=principal.key_id, at=now.isoformat())
    deps.budgets().apply_limits(tenant_id, config, period_of(now))
    return _report(tenant_id, config, now)
