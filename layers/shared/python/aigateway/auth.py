"""API keys → principals, and who may administer what. Keys are stored as SHA-256 hashes only;
the plain key never persists.

Roles: `member` calls the API for its tenant; `tenant_admin` also manages its own tenant (API keys,
prompt experiments, lead-scoring settings; reads its budgets); `admin` is the platform operator:
every tenant, tenants themselves, budgets and rate limits, exports across tenants.

A plain SHA-256 (not a slow KDF) is right here: keys are 190 bits of randomness, so there is no
dictionary to attack, and the authorizer must stay fast.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from aigateway.errors import Forbidden, NotFound, Unauthorized
from aigateway.ids import new_api_key
from aigateway.store.dynamo import Item
from aigateway.store.repos import ApiKeys

Role = Literal["member", "tenant_admin", "admin"]
_RANK: dict[str, int] = {"member": 0, "tenant_admin": 1, "admin": 2}


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    tenant_id: str
    user_id: str
    key_id: str
    role: Role


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def resolve_key(keys: ApiKeys, api_key: str) -> Principal | None:
    item = keys.get(hash_key(api_key))
    if item is None or item.get("status") != "active":
        return None
    return Principal(tenant_id=item["tenant_id"], user_id=item["user_id"], key_id=item["key_id"], role=item["role"])


def issue_key(
    keys: ApiKeys,
    *,
    tenant_id: str,
    user_id: str,
    role: Role,
    created_at: str,
    created_by: str | None = None,
    api_key: str | None = None,
) -> tuple[Item, str]:
    """Creates a key (or registers a given one, for a fixed demo key); returns (stored item, plain key)."""
    if api_key is None:
        key_id, api_key = new_api_key()
    else:
        key_id = hash_key(api_key)[:12]
    item = keys.create(
        hash_key(api_key),
        key_id=key_id,
        tenant_id=tenant_id,
        user_id=user_id,
        role=role,
        created_at=created_at,
        created_by=created_by,
    )
    return item, api_key


def revoke_key(keys: ApiKeys, principal: Principal, *, tenant_id: str, key_id: str, at: str) -> Item:
    """Revokes a tenant's key by id: 404 for an id the tenant does not have, 403 for a key above
    the caller's role (a tenant admin cannot revoke an operator's key)."""
    found = keys.find(tenant_id, key_id)
    if found is None:
        raise NotFound(f"tenant {tenant_id!r} has no key {key_id!r}", field="key_id")
    require_may_manage(principal, found["role"])
    return keys.revoke(str(found["pk"]), revoked_by=principal.key_id, at=at)


def require_admin(principal: Principal) -> None:
    """The platform operator only."""
    if principal.role != "admin":
        raise Forbidden("this endpoint needs an admin key")


def require_tenant_admin(principal: Principal, tenant_id: str) -> None:
    """The platform operator, or a tenant admin of this very tenant. Checked before the tenant is
    looked up, so a refusal never tells whether another tenant exists."""
    if principal.role == "admin" or (principal.role == "tenant_admin" and principal.tenant_id == tenant_id):
        return
    raise Forbidden(f"this endpoint needs an admin key or a tenant_admin key of tenant {tenant_id!r}")


def require_may_manage(principal: Principal, role: str) -> None:
    """A key may create and revoke keys up to its own role, never above it."""
    if _RANK[role] > _RANK[principal.role]:
        raise Forbidden(f"a {principal.role} key cannot create or revoke {role} keys", field="role")


# What the authorizer hands to handlers (API Gateway passes `context` values as strings).
def authorizer_context(principal: Principal | None) -> dict[str, str]:
    if principal is None:
        return {"authenticated": "false"}
    return {"authenticated": "true", **principal.model_dump()}


def principal_from_event(event: dict[str, Any]) -> Principal:
    """The caller, as the authorizer resolved it; raises Unauthorized for a missing or wrong key."""
    context = (event.get("requestContext") or {}).get("authorizer") or {}
    values = context.get("lambda") or {}
    if values.get("authenticated") != "true":
        raise Unauthorized("missing or invalid API key (send 'Authorization: Bearer <key>')")
    return Principal.model_validate({k: values[k] for k in ("tenant_id", "user_id", "key_id", "role")})
