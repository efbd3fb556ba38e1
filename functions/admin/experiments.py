"""A tenant's prompt experiment on one template; the platform operator or the tenant's own
tenant_admin keys read and change it.

PUT replaces the experiment: `{"pinned_version": N}` serves version N to every request;
`{"variants": [{"name", "version", "weight"}, …]}` splits subjects by weight, sticky per subject;
`{}` (or `{"variants": []}`) ends the experiment, so the latest version serves. Each change is a
new version of the experiment (a conditional write on the previous one: a concurrent change is
409 version_conflict) and applies within 30 s in every execution environment. The assignment
salt survives changes (`"reshuffle": true` draws a new one), so moving weight moves few subjects.
"""

from __future__ import annotations

from datetime import UTC, datetime

from admin.tenants import existing_tenant
from aigateway import deps
from aigateway.auth import Principal, require_tenant_admin
from aigateway.experiments import ExperimentIn, ExperimentOut, check_versions, experiment_out


def get_experiment(principal: Principal, tenant_id: str, template: str) -> ExperimentOut:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    templates = deps.templates()
    templates.get(template)  # 404 unknown_template
    experiment = deps.experiment_configs().for_template(tenant_id, template, fresh=True)
    return experiment_out(tenant_id, experiment, templates)


def put_experiment(principal: Principal, tenant_id: str, template: str, settings: ExperimentIn) -> ExperimentOut:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    templates = deps.templates()
    check_versions(settings, template, templates)
    at = datetime.now(UTC).isoformat()
    stored = deps.experiment_configs().put(tenant_id, template, settings, updated_by=principal.key_id, at=at)
    return experiment_out(tenant_id, stored, templates)
