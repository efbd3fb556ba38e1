"""`Dynamo.transact`: conflicts are retried, failed conditions surface with the items they saw."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from aigateway.store.dynamo import Dynamo, TransactionCancelled, serialize

# The module itself (the package re-exports a function of the same name).
dynamo_module = importlib.import_module("aigateway.store.dynamo")


def cancelled(*reasons: dict[str, Any]) -> ClientError:
    """What botocore raises for a cancelled TransactWriteItems."""
    codes = ", ".join(r.get("Code", "None") for r in reasons)
    return ClientError(
        {
            "Error": {
                "Code": "TransactionCanceledException",
                "Message": f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
            },
            "CancellationReasons": list(reasons),
        },
        "TransactWriteItems",
    )


class StubClient:
    """Raises the scripted errors in turn, then succeeds; records every call."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls: list[list[dict[str, Any]]] = []

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(TransactItems)
        if self.errors:
            raise self.errors.pop(0)
        return {}


ITEMS = [{"Put": {"TableName": "t", "Item": serialize({"pk": "a"})}}, {"Delete": {"TableName": "t", "Key": {}}}]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(dynamo_module, "time", SimpleNamespace(sleep=slept.append))
    return slept


def test_transaction_conflicts_are_retried_until_the_transaction_goes_through(no_backoff: list[float]) -> None:
    # Given a transaction that conflicts with others twice, then goes through
    conflict = cancelled({"Code": "TransactionConflict", "Message": "conflict"}, {"Code": "None"})
    client = StubClient(conflict, conflict)
    # When it is written
    Dynamo(client).transact(ITEMS)
    # Then it was sent three times (the same items), with a bounded jittered wait between tries
    assert len(client.calls) == 3 and all(call == ITEMS for call in client.calls)
    assert len(no_backoff) == 2
    assert all(0 <= s <= dynamo_module.TRANSACTION_CONFLICT_BASE_S * 2**i for i, s in enumerate(no_backoff))


def test_endless_conflicts_surface_after_the_retry_budget() -> None:
    conflict = cancelled({"Code": "TransactionConflict", "Message": "conflict"}, {"Code": "None"})
    client = StubClient(*[conflict] * (dynamo_module.TRANSACTION_CONFLICT_RETRIES + 1))
    with pytest.raises(TransactionCancelled) as raised:
        Dynamo(client).transact(ITEMS)
    assert raised.value.reasons == ["TransactionConflict", None]
    assert len(client.calls) == dynamo_module.TRANSACTION_CONFLICT_RETRIES + 1


def test_a_failed_condition_is_not_retried_and_carries_the_items_it_saw() -> None:
    # Given a transaction whose second item's condition fails, seeing the item as it was (ALL_OLD)
    old = {"pk": "BUDGET#demo#tenant", "sk": "2026-11", "headroom_micros": 12, "limit_micros": 1000}
    failure = cancelled(
        {"Code": "None"},
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed", "Item": serialize(old)},
    )
    client = StubClient(failure)
    # When it is written
    with pytest.raises(TransactionCancelled) as raised:
        Dynamo(client).transact(ITEMS)
    # Then it is tried once and the reasons and the decoded items are reported per position
    assert len(client.calls) == 1
    error = raised.value
    assert error.reasons == [None, "ConditionalCheckFailed"]
    assert error.items == [None, old] and isinstance(error.items[1]["headroom_micros"], int)  # type: ignore[index]
    assert not error.failed(0) and error.failed(1)


def test_a_condition_failure_beside_a_conflict_is_not_retried() -> None:
    failure = cancelled({"Code": "TransactionConflict"}, {"Code": "ConditionalCheckFailed"})
    client = StubClient(failure)
    with pytest.raises(TransactionCancelled) as raised:
        Dynamo(client).transact(ITEMS)
    assert len(client.calls) == 1 and raised.value.failed(1) and raised.value.items == [None, None]


def test_other_client_errors_pass_through() -> None:
    throttled = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "TransactWriteItems")
    client = StubClient(throttled)
    with pytest.raises(ClientError) as raised:
        Dynamo(client).transact(ITEMS)
    assert raised.value is throttled and len(client.calls) == 1
