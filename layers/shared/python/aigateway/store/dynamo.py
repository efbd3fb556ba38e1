"""A thin, typed wrapper over the DynamoDB client: (de)serialisation, counting, parallel phases."""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

T = TypeVar("T")
Item = dict[str, Any]

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class ConditionFailed(Exception):
    """A conditional write found the item in a state it did not allow.

    `item` is the item as the failed condition saw it (None when it did not exist), taken from
    `ReturnValuesOnConditionCheckFailure=ALL_OLD` so the caller needs no extra read to decide.
    """

    def __init__(self, message: str, item: Item | None = None):
        super().__init__(message)
        self.item = item


class TransactionCancelled(Exception):
    """A transaction was cancelled; `reasons[i]` is the code for its i-th item (None = no fault).

    `items[i]` is that item as the failed condition saw it (None when absent or not reported).
    """

    def __init__(self, reasons: list[str | None], items: list[Item | None]):
        super().__init__(f"transaction cancelled: {reasons}")
        self.reasons = reasons
        self.items = items

    def failed(self, index: int) -> bool:
        return self.reasons[index] == "ConditionalCheckFailed"


# Concurrent transactions touching one item are refused with TransactionConflict (AWS only;
# moto never reports it). They are retried a few times with full jitter, then surfaced.
TRANSACTION_CONFLICT_RETRIES = 5
TRANSACTION_CONFLICT_BASE_S = 0.01


@dataclass
class RequestStats:
    calls: int = 0
    phases: int = 0
    operations: list[str] = field(default_factory=list)


_stats: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar("ddb_stats", default=None)


@contextmanager
def track_request() -> Iterator[RequestStats]:
    """Count DynamoDB calls and sequential phases made while the block runs."""
    stats = RequestStats()
    token = _stats.set(stats)
    try:
        yield stats
    finally:
        _stats.reset(token)


def request_stats() -> RequestStats | None:
    return _stats.get()


def _count(operation: str, *, new_phase: bool) -> None:
    stats = _stats.get()
    if stats is not None:
        stats.calls += 1
        stats.operations.append(operation)
        if new_phase:
            stats.phases += 1


def _to_dynamo(value: Any) -> Any:
    """DynamoDB numbers are decimals: floats go in through their shortest exact text."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def _raise_condition_failed(exc: ClientError) -> None:
    if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
        old = exc.response.get("Item")
        raise ConditionFailed(str(exc), deserialize(old) if old else None) from exc


def _expression_args(
    values: Item | None = None, names: dict[str, str] | None = None, condition: str | None = None
) -> dict[str, Any]:
    """The expression parts of a write; a failed condition always reports the item it saw."""
    args: dict[str, Any] = {}
    if values:
        args["ExpressionAttributeValues"] = serialize(values)
    if names:
        args["ExpressionAttributeNames"] = names
    if condition:
        args["ConditionExpression"] = condition
        args["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
    return args


def tx_put(table: str, item: Item, *, condition: str | None = None) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": serialize(item), **_expression_args(condition=condition)}}


def tx_update(
    table: str,
    key: Item,
    expression: str,
    *,
    values: Item | None = None,
    names: dict[str, str] | None = None,
    condition: str | None = None,
) -> dict[str, Any]:
    op = {"TableName": table, "Key": serialize(key), "UpdateExpression": expression}
    return {"Update": {**op, **_expression_args(values, names, condition)}}


def tx_delete(
    table: str,
    key: Item,
    *,
    condition: str | None = None,
    values: Item | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {"Delete": {"TableName": table, "Key": serialize(key), **_expression_args(values, names, condition)}}


def serialize(item: Item) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}


def deserialize(raw: dict[str, Any]) -> Item:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in raw.items()}


class Dynamo:
    """Low-level operations used by the repositories."""

    def __init__(self, client: Any):
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ddb")
        self._in_parallel: contextvars.ContextVar[bool] = contextvars.ContextVar("in_parallel", default=False)

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        _count(operation, new_phase=not self._in_parallel.get())
        result: dict[str, Any] = getattr(self.client, operation)(**kwargs)
        return result

    def get(self, table: str, key: Item, *, consistent: bool = False) -> Item | None:
        raw = self._call("get_item", TableName=table, Key=serialize(key), ConsistentRead=consistent)
        return deserialize(raw["Item"]) if "Item" in raw else None

    def put(
        self,
        table: str,
        item: Item,
        *,
        condition: str | None = None,
        names: dict[str, str] | None = None,
        values: Item | None = None,
    ) -> None:
        try:
            self._call(
                "put_item",
                TableName=table,
                Item=serialize(item),
                **_expression_args(values, names=names, condition=condition),
            )
        except ClientError as exc:
            _raise_condition_failed(exc)
            raise

    def put_version(self, table: str, item: Item) -> None:
        """Optimistic concurrency for versioned settings: `item["version"]` is written only over the
        version before it (version 1 only where nothing is); ConditionFailed if another change won."""
        version = int(item["version"])
        if version == 1:
            self.put(table, item, condition="attribute_not_exists(pk)")
        else:
            self.put(table, item, condition="version = :prev", values={":prev": version - 1})

    def update(
        self,
        table: str,
        key: Item,
        expression: str,
        *,
        values: Item | None = None,
        names: dict[str, str] | None = None,
        condition: str | None = None,
    ) -> Item:
        try:
            raw = self._call(
                "update_item",
                TableName=table,
                Key=serialize(key),
                UpdateExpression=expression,
                ReturnValues="ALL_NEW",
                **_expression_args(values, names, condition),
            )
        except ClientError as exc:
            _raise_condition_failed(exc)
            raise
        return deserialize(raw.get("Attributes", {}))

    def batch_get(self, table: str, keys: list[Item], *, consistent: bool = False) -> list[Item]:
        """Up to 100 items by key in one call (unprocessed keys are fetched again)."""
        if not keys:
            return []
        found: list[Item] = []
        request: dict[str, Any] = {table: {"Keys": [serialize(k) for k in keys], "ConsistentRead": consistent}}
        while request:
            raw = self._call("batch_get_item", RequestItems=request)
            found.extend(deserialize(i) for i in raw.get("Responses", {}).get(table, []))
            request = raw.get("UnprocessedKeys") or {}
        return found

    def batch_put(self, table: str, items: list[Item]) -> None:
        """Unconditional puts, 25 per BatchWriteItem (unprocessed items are written again)."""
        for i in range(0, len(items), 25):
            request: dict[str, Any] = {table: [{"PutRequest": {"Item": serialize(it)}} for it in items[i : i + 25]]}
            while request:
                raw = self._call("batch_write_item", RequestItems=request)
                request = raw.get("UnprocessedItems") or {}

    def transact(self, items: list[dict[str, Any]]) -> None:
        """All-or-nothing writes (items from `tx_put`/`tx_update`/`tx_delete`); at most 100 items.

        Raises TransactionCancelled when a condition fails. A conflict with another transaction
        on the same item is retried (bounded, jittered), since it says nothing about the data.
        """
        for attempt in range(TRANSACTION_CONFLICT_RETRIES + 1):
            try:
                self._call("transact_write_items", TransactItems=items)
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                codes = [r.get("Code") if r.get("Code") not in (None, "None") else None for r in reasons]
                conflict_only = "TransactionConflict" in codes and "ConditionalCheckFailed" not in codes
                if conflict_only and attempt < TRANSACTION_CONFLICT_RETRIES:
                    time.sleep(random.uniform(0, TRANSACTION_CONFLICT_BASE_S * 2**attempt))
                    continue
                old = [deserialize(r["Item"]) if r.get("Item") else None for r in reasons]
                raise TransactionCancelled(codes, old) from exc

    def query(
        self,
        table: str,
        key_condition: str,
        values: Item,
        *,
        index: str | None = None,
        limit: int | None = None,
        forward: bool = True,
        start_key: Item | None = None,
    ) -> tuple[list[Item], Item | None]:
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeValues": serialize(values),
            "ScanIndexForward": forward,
        }
        if index:
            kwargs["IndexName"] = index
        if limit:
            kwargs["Limit"] = limit
        if start_key:
            kwargs["ExclusiveStartKey"] = serialize(start_key)
        raw = self._call("query", **kwargs)
        last = raw.get("LastEvaluatedKey")
        return [deserialize(i) for i in raw.get("Items", [])], (deserialize(last) if last else None)

    def query_all(self, table: str, key_condition: str, values: Item, *, index: str | None = None) -> list[Item]:
        """Every item the key condition matches, following DynamoDB's pages."""
        found: list[Item] = []
        start: Item | None = None
        while True:
            items, start = self.query(table, key_condition, values, index=index, start_key=start)
            found.extend(items)
            if start is None:
                return found

    def describe(self, table: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("describe_table", TableName=table)["Table"]
        return result

    def parallel(self, *calls: Callable[[], T]) -> list[T]:
        """Run independent calls side by side: one phase on the critical path, however many calls."""
        if not calls:
            return []
        if len(calls) == 1:
            return [calls[0]()]
        stats = _stats.get()
        if stats is not None:
            stats.phases += 1

        def run(call: Callable[[], T]) -> T:
            self._in_parallel.set(True)
            return call()

        futures = [self._pool.submit(contextvars.copy_context().run, run, call) for call in calls]
        return [f.result() for f in futures]


@lru_cache(maxsize=1)
def dynamo() -> Dynamo:
    """One client per execution environment; short timeouts so a slow call cannot eat the deadline."""
    config = Config(
        connect_timeout=2,
        read_timeout=5,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=16,
    )
    return Dynamo(boto3.client("dynamodb", config=config))
