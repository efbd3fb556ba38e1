"""First-start data: a demo tenant with an admin key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from aigateway import deps
from aigateway.auth import Role, issue_key

DEMO_TENANT = "demo"


@dataclass(frozen=True)
class DemoTenant:
    tenant_id: str
    user_id: str
    api_key: str


def seed_demo_tenant(
    api_key: str | None = None, *, tenant_id: str = DEMO_TENANT, user_id: str = "demo-admin", role: Role = "admin"
) -> DemoTenant:
    now = datetime.now(UTC).isoformat()
    repos = deps.repos()
    repos.tenants.create(tenant_id, name=f"{tenant_id} tenant", created_at=now)
    _, key = issue_key(repos.api_keys, tenant_id=tenant_id, user_id=user_id, role=role, created_at=now, api_key=api_key)
    return DemoTenant(tenant_id, user_id, key)
