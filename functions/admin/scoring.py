"""Operator endpoints for a tenant's lead-scoring settings (role admin only): criteria and
weights, tier thresholds, excluded and PII fields, trigger fields and the freshness window.

Every change is a new version (the audit record of each score names the version it used); a
change applies to scores computed after it, within 30 s in every execution environment.
"""

from __future__ import annotations

from datetime import UTC, datetime

from admin.governance import existing_tenant, require_admin
from aigateway import deps
from aigateway.auth import Principal
from aigateway.scoring.models import ScoringSettings, ScoringSettingsIn


def get_scoring(principal: Principal, tenant_id: str) -> ScoringSettings:
    require_admin(principal)
    existing_tenant(tenant_id)
    return deps.scoring_configs().get(tenant_id, fresh=True)


def put_scoring(principal: Principal, tenant_id: str, settings: ScoringSettingsIn) -> ScoringSettings:
    require_admin(principal)
    existing_tenant(tenant_id)
    at = datetime.now(UTC).isoformat()
    return deps.scoring_configs().put(tenant_id, settings, updated_by=principal.key_id, at=at)
