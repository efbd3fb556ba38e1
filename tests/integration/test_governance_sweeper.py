"""The sweeper gives back the money of reservations whose request died, exactly once.

Figures printed: reservations released, and double releases / double charges (must be 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aigateway import deps
from aigateway.governance.budgets import RESERVATION_HOLD_S, Budgets, BudgetScope, Reservation
from aigateway.governance.config import BudgetSettings
from aigateway.governance.ledger import LedgerEntry
from aigateway.store.dynamo import Item
from infra.local.runtime import LocalStack
from tests.integration.governance_support import configure, counter, ledger_rows, now, open_reservations, success_entry

LIMIT = 1_000_000
TENANT = [BudgetScope("tenant", LIMIT)]


def entry_for(reservation: Reservation, cost: int) -> LedgerEntry:
    request_id, attempt = reservation.reservation_id.rsplit("#", 1)
    return success_entry(request_id, tenant_id=reservation.tenant_id, cost=cost, attempt=int(attempt))


def money(period: str | None = None) -> tuple[int, int, int]:
    """(spent, reserved, headroom) of the tenant budget in `period` (this month by default)."""
    c = deps.repos().budgets.get_many("demo", ["tenant"], period)[0] if period else counter("demo")
    return int(c["spent_micros"]), int(c["reserved_micros"]), int(c["headroom_micros"])


def test_a_crashed_request_s_reservation_is_released_once_and_a_late_settle_charges_once(stack: LocalStack) -> None:
    # Given a request that reserved 5,000 µUSD and then died without settling
    configure("demo", budgets=BudgetSettings(monthly_micros=LIMIT))
    at = now()
    reservation = deps.budgets().reserve("01CRASHED000000000000000000#00", "demo", TENANT, 5_000, at)
    assert money() == (0, 5_000, LIMIT - 5_000)
    epoch = int(at.timestamp())
    # When the sweeper runs before the hold is over, nothing is released (the request may be alive)
    assert deps.budgets().release_expired(epoch + RESERVATION_HOLD_S - 1) == 0
    assert money() == (0, 5_000, LIMIT - 5_000)
    # When it runs after the hold, twice
    released = [deps.budgets().release_expired(epoch + RESERVATION_HOLD_S + 1) for _ in range(2)]
    # Then the money is back, once
    assert released == [1, 0] and money() == (0, 0, LIMIT) and open_reservations() == []
    # When the request was only slow and settles after all (cost 1,200), and that settlement is replayed
    e = entry_for(reservation, 1_200)
    settles = [deps.ledger().settle(e, reservation), deps.ledger().settle(e, reservation)]
    # Then the cost is charged once and nothing is released a second time
    spent, reserved, headroom = money()
    double_release = headroom - (LIMIT - spent)
    double_charge = spent - 1_200
    print(f"released {released}; settles {settles}; double release {double_release}, double charge {double_charge}")
    assert settles == [True, False]
    assert (spent, reserved, headroom) == (1_200, 0, LIMIT - 1_200)
    assert double_release == 0 and double_charge == 0 and len(ledger_rows("demo")) == 1


@dataclass
class StaleReservations:
    """The sweeper's view read just before the request settled: it lists a reservation already gone."""

    real: Any
    stale: list[Item]

    def expired(self, now_epoch: int) -> list[Item]:
        return self.stale

    def delete_tx(self, reservation_id: str) -> dict[str, Any]:
        return dict(self.real.delete_tx(reservation_id))


def test_a_sweep_racing_a_settlement_gives_nothing_back_twice(stack: LocalStack) -> None:
    # Given an expired reservation that the sweeper has listed …
    configure("demo", budgets=BudgetSettings(monthly_micros=LIMIT))
    at = now() - timedelta(seconds=RESERVATION_HOLD_S + 60)
    reservation = deps.budgets().reserve("01RACING0000000000000000000#00", "demo", TENANT, 7_000, at)
    listed = deps.repos().reservations.expired(int(now().timestamp()))
    assert [i["reservation_id"] for i in listed] == [reservation.reservation_id]
    # … when the request settles before the sweeper acts on its list
    assert deps.ledger().settle(entry_for(reservation, 3_000), reservation)
    r = deps.repos()
    sweeper = Budgets(r.budgets, StaleReservations(r.reservations, listed), deps.dynamo())  # type: ignore[arg-type]
    released = sweeper.release_expired(int(now().timestamp()))
    # Then the sweep finds nothing to give back, and the books show one settlement
    print(f"stale sweep released {released}")
    assert released == 0 and money(reservation.period) == (3_000, 0, LIMIT - 3_000)


def test_the_scheduled_sweeper_releases_an_expired_reservation(stack: LocalStack, demo: Any) -> None:
    # Given a reservation made longer ago than the hold, never settled, and a fresh one
    configure("demo", budgets=BudgetSettings(monthly_micros=LIMIT))
    old = now() - timedelta(seconds=RESERVATION_HOLD_S + 30)
    orphan = deps.budgets().reserve("01ORPHAN0000000000000000000#00", "demo", TENANT, 4_000, old)
    live = deps.budgets().reserve("01INFLIGHT00000000000000000#00", "demo", TENANT, 2_500, now())
    # When the EventBridge schedule fires the sweeper
    result = stack.run_schedule("reservation-sweeper")
    # Then only the orphan's money is back; the live request keeps its reservation
    print(f"scheduled sweep: {result}")
    assert result["reservations_released"] == 1
    if orphan.period == live.period:
        assert money() == (0, 2_500, LIMIT - 2_500)
    else:  # the test straddles a month boundary: each month's counter on its own
        assert money(orphan.period) == (0, 0, LIMIT) and money(live.period) == (0, 2_500, LIMIT - 2_500)
    assert [i["reservation_id"] for i in open_reservations()] == ["01INFLIGHT00000000000000000#00"]
