"""A thin, typed wrapper over the DynamoDB client: (de)serialisation, counting, parallel phases."""

from __future__ import annotations

import contextvars
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
    """A conditional write found the item in a state it did not allow."""


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


def serialize(item: Item) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in item.items() if v is not None}


def deserialize(raw: dict[str, Any]) -> Item:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in raw.items()}


class Dynamo:
    """Low-level operations used by the repositories."""

    def __init__(self, client: Any):
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ddb")
        self._in_parallel: contextvars.ContextVar[bool] = contextvars.ContextVar("in_parallel", default=False)

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        _count(operation, new_phase=not self._in_parallel.get())
        result: dict[str, Any] = getattr(self.client, operation)(**kwargs)
        return result

    def get(self, table: str, key: Item, *, consistent: bool = False) -> Item | None:
        raw = self._call("get_item", TableName=table, Key=serialize(key), ConsistentRead=consistent)
        return deserialize(raw["Item"]) if "Item" in raw else None

    def put(self, table: str, item: Item, *, condition: str | None = None, names: dict[str, str] | None = None) -> None:
        kwargs: dict[str, Any] = {"TableName": table, "Item": serialize(item)}
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            self._call("put_item", **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ConditionFailed(str(exc)) from exc
            raise

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
        kwargs: dict[str, Any] = {
            "TableName": table,
            "Key": serialize(key),
            "UpdateExpression": expression,
            "ReturnValues": "ALL_NEW",
        }
        if values:
            kwargs["ExpressionAttributeValues"] = serialize(values)
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if condition:
            kwargs["ConditionExpression"] = condition
        try:
            raw = self._call("update_item", **kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise ConditionFailed(str(exc)) from exc
            raise
        return deserialize(raw.get("Attributes", {}))

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

    def describe(self, table: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("describe_table", TableName=table)["Table"]
        return result

    def parallel(self, *calls: Callable[[], T]) -> list[T]:
        """Run independent calls side by side: one phase on the critical path, however many calls."""
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
