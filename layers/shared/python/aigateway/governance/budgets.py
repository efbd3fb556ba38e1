"""Budgets in integer micro-USD: reserve the worst case before a call, settle the real cost after.

Each budget (the tenant's, optionally the user's and the feature's) has one counter item per month
holding limit, spent, reserved and headroom (= limit − spent − reserved). A reservation is one
transaction: every applicable counter is debited on the condition `headroom >= amount`, and a
reservation record is written beside them, so concurrent requests can never commit more than the
limit between them. Settlement (governance/ledger.py) releases the reservation and charges the
real cost in the same transaction as the ledger row. A reservation whose request died is released
by the sweeper after `release_after`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aigateway.errors import BudgetExhausted
from aigateway.governance.config import Governance
from aigateway.observability import logger
from aigateway.store.dynamo import ConditionFailed, Dynamo, Item, TransactionCancelled
from aigateway.store.repos import BudgetCounters, Reservations

THRESHOLDS = (50, 80, 100)
# How long a reservation may stay open before the sweeper gives its money back: longer than any
# function's timeout (the workflow's is 60 s), so a live request is never released under it.
RESERVATION_HOLD_S = 300


def period_of(at: datetime) -> str:
    return at.strftime("%Y-%m")


@dataclass(frozen=True)
class BudgetScope:
    name: str  # "tenant", "user:<id>", "feature:<name>"
    limit_micros: int


def scopes_for(config: Governance, *, user_id: str, feature: str) -> list[BudgetScope]:
    b = config.budgets
    scopes = [BudgetScope("tenant", b.monthly_micros)]
    user_limit = b.users.get(user_id, b.per_user_micros)
    if user_limit is not None:
        scopes.append(BudgetScope(f"user:{user_id}", user_limit))
    if feature in b.features:
        scopes.append(BudgetScope(f"feature:{feature}", b.features[feature]))
    return scopes


def threshold_levels(limit_micros: int) -> dict[str, int]:
    """Spend at which each alert fires (at least 1 µUSD, so a zero budget never alerts on zero spend)."""
    return {f"alert_at_{t}": max(1, math.ceil(limit_micros * t / 100)) for t in THRESHOLDS}


@dataclass(frozen=True)
class Reservation:
    reservation_id: str  # <request_id>#<attempt>
    tenant_id: str
    period: str
    scopes: tuple[str, ...]
    amount_micros: int


@dataclass(frozen=True)
class BudgetStatus:
    scope: str
    period: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    alerts_sent: tuple[int, ...]


def status_of(item: Item) -> BudgetStatus:
    return BudgetStatus(
        scope=item["scope"],
        period=item["period"],
        limit_micros=int(item["limit_micros"]),
        spent_micros=int(item["spent_micros"]),
        reserved_micros=int(item["reserved_micros"]),
        remaining_micros=max(0, int(item["headroom_micros"])),
        alerts_sent=tuple(t for t in THRESHOLDS if f"alerted_{t}" in item),
    )


class Budgets:
    def __init__(self, counters: BudgetCounters, reservations: Reservations, db: Dynamo):
        self.counters = counters
        self.reservations = reservations
        self.db = db

    def snapshot(self, tenant_id: str, scopes: list[BudgetScope], period: str) -> dict[str, Item]:
        """The counters as they are now (eventually consistent): for alert checks, not for admission."""
        items = self.counters.get_many(tenant_id, [s.name for s in scopes], period)
        return {i["scope"]: i for i in items}

    def reserve(
        self, reservation_id: str, tenant_id: str, scopes: list[BudgetScope], amount: int, now: datetime
    ) -> Reservation:
        """Debits `amount` from every scope's headroom, all or none; raises BudgetExhausted."""
        period = period_of(now)
        reservation = Reservation(reservation_id, tenant_id, period, tuple(s.name for s in scopes), amount)
        release_after = int(now.timestamp()) + RESERVATION_HOLD_S
        items = [self.counters.reserve_tx(tenant_id, s.name, period, amount) for s in scopes]
        items.append(
            self.reservations.put_tx(
                reservation_id,
                {"tenant_id": tenant_id, "period": period, "scopes": list(reservation.scopes), "amount": amount},
                release_after=release_after,
            )
        )
        created: set[str] = set()
        while True:
            try:
                self.db.transact(items)
                return reservation
            except TransactionCancelled as cancelled:
                missing = [s for i, s in enumerate(scopes) if cancelled.failed(i) and cancelled.items[i] is None]
                if missing and not created.intersection(s.name for s in missing):
                    # First use of this budget this period: open its counter, then try again.
                    for scope in missing:
                        self.counters.create(
                            tenant_id,
                            scope.name,
                            period,
                            limit_micros=scope.limit_micros,
                            thresholds=threshold_levels(scope.limit_micros),
                            at=now.isoformat(),
                        )
                        created.add(scope.name)
                    continue
                for i, scope in enumerate(scopes):
                    if cancelled.failed(i):
                        old = cancelled.items[i] or {}
                        limit = int(old.get("limit_micros", scope.limit_micros))
                        remaining = max(0, int(old.get("headroom_micros", 0)))
                        raise BudgetExhausted(
                            f"the {scope.name} budget for {period} cannot cover this request "
                            f"(worst case {amount} µUSD, {remaining} µUSD left of {limit})",
                            budget=scope.name,
                            period=period,
                            limit_micros=limit,
                            remaining_micros=remaining,
                        ) from cancelled
                raise

    def release_expired(self, now_epoch: int) -> int:
        """Sweeper: gives back the money of reservations whose request never settled. Idempotent."""
        released = 0
        for item in self.reservations.expired(now_epoch):
            rid, tenant, period, amount = item["reservation_id"], item["tenant_id"], item["period"], int(item["amount"])
            ops: list[dict[str, Any]] = [self.reservations.delete_tx(rid)]
            ops += [self.counters.settle_tx(tenant, scope, period, released=amount, cost=0) for scope in item["scopes"]]
            try:
                self.db.transact(ops)
            except TransactionCancelled:
                continue  # settled (or swept) meanwhile: nothing to give back
            released += 1
            logger().warning(
                "released an orphaned budget reservation",
                extra={"reservation_id": rid, "tenant_id": tenant, "amount_micros": amount},
            )
        return released

    def statuses(self, tenant_id: str, scopes: list[BudgetScope], period: str) -> list[BudgetStatus]:
        """Each scope's counter; a budget not used yet this period shows its full limit."""
        found = self.snapshot(tenant_id, scopes, period)
        result = []
        for s in scopes:
            item = found.get(s.name)
            if item is None:
                result.append(BudgetStatus(s.name, period, s.limit_micros, 0, 0, s.limit_micros, ()))
            else:
                result.append(status_of(item))
        return result

    def apply_limits(self, tenant_id: str, config: Governance, period: str) -> None:
        """After an admin change: move live counters of `period` to their new limits, in place."""
        by_scope = {i["scope"]: i for i in self.counters.for_period(tenant_id, period)}
        b = config.budgets
        for scope, item in by_scope.items():
            if scope == "tenant":
                new: int | None = b.monthly_micros
            elif scope.startswith("user:"):
                new = b.users.get(scope[5:], b.per_user_micros)
            else:
                new = b.features.get(scope[8:])
            old = int(item["limit_micros"])
            while new is not None and new != old:  # None: no longer configured; the counter stays as history
                try:
                    self.counters.set_limit(
                        tenant_id, scope, period, old=old, new=new, thresholds=threshold_levels(new)
                    )
                    break
                except ConditionFailed as raced:  # another admin change landed first: apply on top of it
                    old = int((raced.item or {}).get("limit_micros", new))


def charge_ops(counters: BudgetCounters, reservation: Reservation, *, cost: int, released: int) -> list[dict[str, Any]]:
    """Settlement items for every scope of a reservation (used by the ledger's transaction)."""
    return [
        counters.settle_tx(reservation.tenant_id, scope, reservation.period, released=released, cost=cost)
        for scope in reservation.scopes
    ]
