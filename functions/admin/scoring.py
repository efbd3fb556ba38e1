"""A tenant's lead-scoring settings (the platform operator or the tenant's own tenant_admin keys):
criteria and weights, tier thresholds, excluded and PII fields, trigger fields, freshness window.

Every change is a new version (the audit record of each score names the version it used); a
change applies to scores computed after it, within 30 s in every execution environment.
"""

from __future__ import annotations

from datetime import UTC, datetime

from admin.tenants import existing_tenant
from aigateway import deps
from aigateway.auth import Principal, require_tenant_admin
from aigateway.scoring.models import ScoringSettings, ScoringSettingsIn


def get_scoring(principal: Principal, tenant_id: str) -> ScoringSettings:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    return deps.scoring_configs().get(tenant_id, fresh=True)


def put_scoring(principal: Principal, tenant_id: str, settings: ScoringSettingsIn) -> ScoringSettings:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    at = datetime.now(UTC).isoformat()
    return deps.scoring_configs().put(tenant_id, settings, updated_by=principal.key_id, at=at)
