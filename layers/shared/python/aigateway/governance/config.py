"""A tenant's governance settings: budgets and rate limits, defaults plus per-tenant overrides.

Stored in the State table (`TENANT#<id>` / `GOVERNANCE`) and read through a short in-memory cache
(`CONFIG_TTL_S`), so the hot path does not pay a read for it. What the cache can delay is *which*
rules apply (a new per-user budget, a changed rate limit) by at most that TTL in other execution
environments; budget *amounts* are not delayed, because each period's counter item carries its own
headroom and the admin endpoint adjusts it in place (governance/budgets.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aigateway.store.repos import TenantSettings

CONFIG_TTL_S = 30.0
T = TypeVar("T")
# A tenant nobody configured still has a ceiling: spend is never unbounded by omission.
DEFAULT_MONTHLY_BUDGET_MICROS = 100_000_000  # 100 USD

LimitScope = Literal["key", "user", "ip", "tenant"]
FEATURE_PATTERN = r"^[a-z][a-z0-9_]{1,31}$"


class RateLimitRule(BaseModel):
    """At most `limit` requests per `period_s`, per principal of `scope` (and per feature if set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: LimitScope
    feature: str | None = Field(default=None, pattern=FEATURE_PATTERN, description="Only this feature; all if omitted")
    limit: int = Field(ge=1, le=1_000_000)
    period_s: int = Field(ge=1, le=86_400)

    @property
    def name(self) -> str:
        return f"{self.scope}:{self.feature or '*'}"


DEFAULT_RATE_LIMITS: tuple[RateLimitRule, ...] = (
    RateLimitRule(scope="key", limit=120, period_s=60),
    RateLimitRule(scope="ip", limit=300, period_s=60),
    RateLimitRule(scope="tenant", limit=1200, period_s=60),
)


class BudgetSettings(BaseModel):
    """Monthly budgets in micro-USD. The tenant budget always applies; the others when set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    monthly_micros: int = Field(default=DEFAULT_MONTHLY_BUDGET_MICROS, ge=0, description="Whole tenant, per month")
    per_user_micros: int | None = Field(default=None, ge=0, description="Each user, per month, unless overridden")
    users: dict[str, int] = Field(default_factory=dict, description="Per-user overrides")
    features: dict[str, int] = Field(default_factory=dict, description="Per-feature budgets")

    @field_validator("users", "features")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"budget for {name!r} must not be negative")
        return value


class Governance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    # Overrides: a rule replaces the default with the same scope and feature.
    rate_limits: tuple[RateLimitRule, ...] = ()

    def effective_rate_limits(self, feature: str) -> list[RateLimitRule]:
        rules = {(r.scope, r.feature): r for r in DEFAULT_RATE_LIMITS}
        rules.update({(r.scope, r.feature): r for r in self.rate_limits})
        return [r for r in rules.values() if r.feature in (None, feature)]


class TenantCache(Generic[T]):
    """Per-execution-environment read-through cache of one kind of tenant settings: `load` reads a
    tenant's settings (defaults when it has none); a read is reused for `ttl_s`."""

    def __init__(self, load: Callable[[str], T], *, ttl_s: float = CONFIG_TTL_S):
        self._load = load
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str, *, fresh: bool = False) -> T:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant_id)
        if not fresh and cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        value = self._load(tenant_id)
        with self._lock:
            self._cache[tenant_id] = (now, value)
        return value

    def forget(self, tenant_id: str) -> None:
        """After a change: this environment reads it at once (others within the TTL)."""
        with self._lock:
            self._cache.pop(tenant_id, None)


class GovernanceConfigs(TenantCache[Governance]):
    """Tenants' governance settings, read through the cache."""

    def __init__(self, settings: TenantSettings, *, ttl_s: float = CONFIG_TTL_S):
        super().__init__(self._read, ttl_s=ttl_s)
        self.settings = settings

    def _read(self, tenant_id: str) -> Governance:
        item = self.settings.get(tenant_id)
        return Governance.model_validate(item["governance"]) if item else Governance()

    def put(self, tenant_id: str, config: Governance, *, updated_by: str, at: str) -> None:
        self.settings.put(tenant_id, config.model_dump(mode="json"), updated_by=updated_by, at=at)
        self.forget(tenant_id)
