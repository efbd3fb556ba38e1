"""The usage ledger: one immutable row per provider attempt and per cache hit.

A row's id is `<request_id>#<attempt>` and the write is conditional on it not existing, so a
replayed write (client retry, SQS redelivery, Lambda retry) can never bill twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from aigateway.store.repos import LedgerRows

Outcome = Literal["success", "cache_hit", "failure", "fallback"]


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    attempt: int = Field(ge=0, le=99)
    tenant_id: str
    user_id: str
    key_id: str
    feature: str
    template: str | None  # name@version
    model: str
    provider: str
    outcome: Outcome
    input_tokens: int = Field(ge=0)
    cached_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cost_micros: int = Field(ge=0)
    cost_saved_micros: int = Field(default=0, ge=0)
    price_effective_from: str | None  # which price row was applied (None for cache hits and failures)
    latency_ms: int = Field(ge=0)
    error_code: str | None = None
    created_at: datetime

    @property
    def row_id(self) -> str:
        return f"{self.request_id}#{self.attempt:02d}"

    @property
    def month(self) -> str:
        return self.created_at.strftime("%Y-%m")


class Ledger:
    def __init__(self, rows: LedgerRows):
        self.rows = rows

    def record(self, entry: LedgerEntry) -> bool:
        """Writes the row exactly once; returns False when it was already there (a replay)."""
        attributes = entry.model_dump(mode="json")
        return self.rows.put_once(entry.tenant_id, entry.month, entry.row_id, attributes)
