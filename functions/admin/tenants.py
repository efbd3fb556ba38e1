"""Tenants and their API keys.

The platform operator (role admin) creates tenants and may issue keys of any role to any tenant.
A tenant's own tenant_admin keys issue, list and revoke that tenant's keys, up to tenant_admin: a
tenant can run its own onboarding without the operator, and can never mint an operator key.

A new key's plain text is in the 201 answer only (it is stored as a SHA-256 hash). Key creation
takes no Idempotency-Key on purpose: replaying the answer would mean storing the plain key; a
retried request makes a second key, which the list shows and a DELETE revokes. A revoked key is
refused from the next authorizer run: at once for a key not seen recently, within the authorizer
cache TTL (300 s, `infra/api.py`) for one in use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aigateway import deps
from aigateway.auth import (
    Principal,
    Role,
    issue_key,
    require_admin,
    require_may_manage,
    require_tenant_admin,
    revoke_key,
)
from aigateway.errors import NotFound, TenantExists
from aigateway.observability import logger
from aigateway.store.dynamo import Item

TENANT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# No ':' so a key's user can never pose as a system principal (`system:<source>`, lead scoring).
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$"


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(pattern=TENANT_ID_PATTERN, description="Stable id; appears in every ledger row")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="Display name")


class TenantOut(BaseModel):
    tenant_id: str
    name: str
    status: str
    created_at: str


class TenantsOut(BaseModel):
    tenants: list[TenantOut]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(
        pattern=USER_ID_PATTERN,
        description="Who holds the key: per-user budgets, rate limits and the ledger are keyed by it",
    )
    role: Role = Field(
        default="member",
        description="member: calls the API; tenant_admin: also manages this tenant's keys, experiments and "
        "scoring settings; admin: the platform operator (only an admin key may grant it)",
    )


class KeyOut(BaseModel):
    key_id: str = Field(description="Public id of the key (also inside the key itself, aig_<key_id>_…)")
    tenant_id: str
    user_id: str
    role: Role
    status: Literal["active", "revoked"]
    created_at: str
    created_by: str | None = Field(default=None, description="key_id of the key that created it")
    revoked_at: str | None = None
    revoked_by: str | None = None

    @classmethod
    def of(cls, item: Item) -> KeyOut:
        return cls.model_validate({name: item.get(name) for name in cls.model_fields})


class IssuedKeyOut(KeyOut):
    api_key: str = Field(description="The key itself; shown in this answer only, store it now")


class KeysOut(BaseModel):
    keys: list[KeyOut]


def existing_tenant(tenant_id: str) -> None:
    if deps.repos().tenants.get(tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id!r}", field="tenant_id")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _tenant_out(item: Item) -> TenantOut:
    return TenantOut.model_validate({name: item[name] for name in TenantOut.model_fields})


def create_tenant(principal: Principal, tenant: TenantIn) -> TenantOut:
    require_admin(principal)
    tenants = deps.repos().tenants
    if not tenants.create(tenant.tenant_id, name=tenant.name, created_at=_now()):
        raise TenantExists(f"tenant {tenant.tenant_id!r} already exists", field="tenant_id")
    logger().info("tenant created", extra={"created_tenant": tenant.tenant_id, "by_key": principal.key_id})
    created = tenants.get(tenant.tenant_id)
    assert created is not None
    return _tenant_out(created)


def list_tenants(principal: Principal) -> TenantsOut:
    require_admin(principal)
    return TenantsOut(tenants=[_tenant_out(item) for item in deps.repos().tenants.all()])


def create_key(principal: Principal, tenant_id: str, request: KeyIn) -> IssuedKeyOut:
    require_tenant_admin(principal, tenant_id)
    require_may_manage(principal, request.role)
    existing_tenant(tenant_id)
    item, api_key = issue_key(
        deps.repos().api_keys,
        tenant_id=tenant_id,
        user_id=request.user_id,
        role=request.role,
        created_at=_now(),
        created_by=principal.key_id,
    )
    logger().info(
        "api key issued",
        extra={"key_tenant": tenant_id, "new_key_id": item["key_id"], "role": request.role, "by_key": principal.key_id},
    )
    return IssuedKeyOut(**KeyOut.of(item).model_dump(), api_key=api_key)


def list_keys(principal: Principal, tenant_id: str) -> KeysOut:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    return KeysOut(keys=[KeyOut.of(item) for item in deps.repos().api_keys.for_tenant(tenant_id)])


def delete_key(principal: Principal, tenant_id: str, key_id: str) -> KeyOut:
    require_tenant_admin(principal, tenant_id)
    existing_tenant(tenant_id)
    item = revoke_key(deps.repos().api_keys, principal, tenant_id=tenant_id, key_id=key_id, at=_now())
    logger().info(
        "api key revoked", extra={"key_tenant": tenant_id, "revoked_key_id": key_id, "by_key": principal.key_id}
    )
    return KeyOut.of(item)
