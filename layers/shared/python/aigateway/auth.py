"""API keys → principals. Keys are stored as SHA-256 hashes only; the plain key never persists.

A plain SHA-256 (not a slow KDF) is right here: keys are 190 bits of randomness, so there is no
dictionary to attack, and the authorizer must stay fast.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from aigateway.errors import Unauthorized
from aigateway.ids import new_api_key
from aigateway.store.repos import ApiKeys

Role = Literal["member", "admin"]


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
    keys: ApiKeys, *, tenant_id: str, user_id: str, role: Role, created_at: str, api_key: str | None = None
) -> tuple[str, str]:
    """Creates a key (or registers a given one, for a fixed demo key); returns (key_id, plain key)."""
    if api_key is None:
        key_id, api_key = new_api_key()
    else:
        key_id = hash_key(api_key)[:12]
    keys.create(
        hash_key(api_key), key_id=key_id, tenant_id=tenant_id, user_id=user_id, role=role, created_at=created_at
    )
    return key_id, api_key


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
