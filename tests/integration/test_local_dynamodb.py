"""The embedded runtime's DynamoDB keeps the guarantees AWS gives: atomic requests, all-or-nothing transactions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from aigateway import deps
from aigateway.store.dynamo import ConditionFailed, TransactionCancelled, tx_put, tx_update
from infra.local.runtime import LocalStack


def test_a_cancelled_transaction_leaves_every_item_as_it_was(stack: LocalStack) -> None:
    # Given an existing counter and a ledger table with unrelated rows
    db, state, ledger = deps.dynamo(), deps.get_settings().state_table, deps.get_settings().ledger_table
    db.put(state, {"pk": "C", "sk": "C", "n": 5})
    db.put(ledger, {"pk": "L", "sk": "exists"})
    # When a transaction updates the counter, puts a new row, then fails a condition on its last item
    with pytest.raises(TransactionCancelled) as cancelled:
        db.transact(
            [
                tx_update(state, {"pk": "C", "sk": "C"}, "ADD n :one", values={":one": 1}),
                tx_put(ledger, {"pk": "L", "sk": "new"}),
                tx_put(ledger, {"pk": "L", "sk": "exists"}, condition="attribute_not_exists(pk)"),
            ]
        )
    # Then it reports which item failed, and neither the update nor the put happened
    assert cancelled.value.reasons == [None, None, "ConditionalCheckFailed"]
    assert cancelled.value.items[2] == {"pk": "L", "sk": "exists"}
    assert db.get(state, {"pk": "C", "sk": "C"}) == {"pk": "C", "sk": "C", "n": 5}
    assert db.get(ledger, {"pk": "L", "sk": "new"}) is None


def test_concurrent_conditional_writes_never_pass_the_same_condition_twice(stack: LocalStack) -> None:
    # Given a counter that may reach 25
    db, state = deps.dynamo(), deps.get_settings().state_table
    db.put(state, {"pk": "K", "sk": "K", "n": 0})

    def take(_: int) -> bool:
        try:
            db.update(state, {"pk": "K", "sk": "K"}, "ADD n :one", values={":one": 1, ":max": 25}, condition="n < :max")
        except ConditionFailed:
            return False
        return True

    # When 100 threads race for it
    with ThreadPoolExecutor(max_workers=32) as pool:
        admitted = sum(pool.map(take, range(100)))
    final = db.get(state, {"pk": "K", "sk": "K"})
    print(f"admitted {admitted} of 100, counter {final and final['n']}, overshoot {admitted - 25}")
    # Then exactly 25 were admitted, as DynamoDB would
    assert admitted == 25 and final is not None and final["n"] == 25
