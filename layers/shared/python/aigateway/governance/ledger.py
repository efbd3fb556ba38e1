"""The usage ledger: one immutable row per provider attempt and per cache hit, and its settlement.

A row's id is `<request_id>#<attempt>` (attempt zero-padded to three digits: a synchronous call
numbers its attempts from 0, the jobs workflow from a base per stage and retry, see
functions/workflow). Settlement writes, in one DynamoDB transaction:
the row (conditional on its id not existing), the release of the attempt's budget reservation,
the real cost charged to each budget, and the usage rollup counters. A replayed settlement
(client retry, SQS redelivery, Lambda retry) fails the row's condition, which cancels the whole
transaction — so nothing can be billed or counted twice.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aigateway.governance.budgets import Reservation, charge_ops
from aigateway.store.dynamo import Dynamo, TransactionCancelled
from aigateway.store.repos import BudgetCounters, LedgerRows, Reservations, Rollups

Outcome = Literal["success", "cache_hit", "failure", "fallback"]

# Rollup counters, all summed with ADD; an export's totals reconcile to these.
ROLLUP_COUNTERS = (
    "attempts",
    "successes",
    "cache_hits",
    "failures",
    "fallbacks",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "cost_micros",
    "cost_saved_micros",
    "latency_ms_sum",
)
_OUTCOME_COUNTER = {"success": "successes", "cache_hit": "cache_hits", "failure": "failures", "fallback": "fallbacks"}


def attempt_id(request_id: str, attempt: int) -> str:
    """Names one attempt: its ledger row and its budget reservation."""
    return f"{request_id}#{attempt:03d}"


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    attempt: int = Field(ge=0, le=999)
    tenant_id: str
    user_id: str
    key_id: str
    feature: str
    template: str | None  # name@version
    # The prompt experiment's label (a variant name, "pinned", "request") and the template's locale;
    # None on rows of requests without them, and on rows written before they existed.
    variant: str | None = None
    locale: str | None = None
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
        return attempt_id(self.request_id, self.attempt)

    @property
    def month(self) -> str:
        return self.created_at.strftime("%Y-%m")

    @property
    def day(self) -> str:
        return self.created_at.strftime("%Y-%m-%d")

    def rollup_counters(self) -> dict[str, int]:
        counters = dict.fromkeys(ROLLUP_COUNTERS, 0)
        counters["attempts"] = 1
        counters[_OUTCOME_COUNTER[self.outcome]] = 1
        counters["input_tokens"] = self.input_tokens
        counters["cached_tokens"] = self.cached_tokens
        counters["output_tokens"] = self.output_tokens
        counters["cost_micros"] = self.cost_micros
        counters["cost_saved_micros"] = self.cost_saved_micros
        counters["latency_ms_sum"] = self.latency_ms
        return counters


class Ledger:
    def __init__(
        self, db: Dynamo, rows: LedgerRows, rollups: Rollups, counters: BudgetCounters, reservations: Reservations
    ):
        self.db = db
        self.rows = rows
        self.rollups = rollups
        self.counters = counters
        self.reservations = reservations

    def settle(self, entry: LedgerEntry, reservation: Reservation | None) -> bool:
        """Records the row and settles its money exactly once; False means it was a replay.

        `reservation` is the attempt's open budget reservation: it is released and the real cost
        charged in its place. Only a row that costs nothing (a cache hit) may come without one.
        """
        if reservation is None and entry.cost_micros:
            raise ValueError("a billed ledger row must settle a budget reservation")
        releasing = reservation is not None
        while True:
            ops: list[dict[str, Any]] = [
                self.rows.put_tx(entry.tenant_id, entry.month, entry.row_id, entry.model_dump(mode="json")),
                self.rollups.add_tx(
                    entry.tenant_id,
                    day=entry.day,
                    feature=entry.feature,
                    model=entry.model,
                    user_id=entry.user_id,
                    counters=entry.rollup_counters(),
                ),
            ]
            if reservation is not None:
                if releasing:
                    ops.append(self.reservations.delete_tx(reservation.reservation_id))
                released = reservation.amount_micros if releasing else 0
                ops += charge_ops(self.counters, reservation, cost=entry.cost_micros, released=released)
            try:
                self.db.transact(ops)
                return True
            except TransactionCancelled as cancelled:
                if cancelled.failed(0):
                    # This row is already in the ledger: a replay, already settled. If this delivery's
                    # reservation is still open, it was made afresh under the settled id and will never
                    # be settled: give it back now rather than hold it until the sweeper's deadline.
                    if reservation is not None and releasing and not cancelled.failed(2):
                        self._release_replayed(reservation)
                    return False
                if releasing and cancelled.failed(2):
                    # The sweeper gave this reservation back already (the request outlived its hold):
                    # charge the cost without releasing it a second time.
                    releasing = False
                    continue
                raise

    def _release_replayed(self, reservation: Reservation) -> None:
        """Releases the reservation of a replayed attempt (a duplicate run that missed the cache).

        The delete is conditional on the stored record being exactly this reservation, so a stale
        replay cannot release what another run reserved, and a sweep racing it cannot release twice.
        """
        ops = [
            self.reservations.delete_tx(
                reservation.reservation_id,
                matching={
                    "tenant_id": reservation.tenant_id,
                    "period": reservation.period,
                    "scopes": list(reservation.scopes),
                    "amount": reservation.amount_micros,
                },
            ),
            *charge_ops(self.counters, reservation, cost=0, released=reservation.amount_micros),
        ]
        with suppress(TransactionCancelled):  # released meanwhile, or not this reservation: nothing to do
            self.db.transact(ops)
