"""`python -m bench leads`: 1,000 leads scored end to end, and what AWS would bill for it.

One fresh embedded stack (infra.local.runtime.LocalStack on moto) with the simulated provider,
one bench tenant whose rate limits and budget are out of reach (bench/tenant.py). The bench:
  1. generates N varied leads from a fixed seed (SEED; `--leads N`, default 1,000): companies,
     titles, industries, sizes, sources, 0-8 engagement events, notes, custom fields. Event dates
     are days before the run's date (fixed offsets), so every run scores the same relative ages;
  2. upserts them, 500 per `POST /v1/leads` with `"score": "never"`, then queues them with
     `POST /v1/leads/score` `{"lead_ids": [...]}` and an Idempotency-Key (as `python -m cli
     score` does), paced: at most IN_FLIGHT (60; `--in-flight`) jobs queued or running, in calls
     of half that. The embedded runtime runs every Step Functions execution in a thread of this
     one process: with all 1,000 queued at once (`--in-flight 0`: calls of 500) the threads
     starve each other, tasks outlive their Lambda deadlines, the breaker opens and about half
     the leads end up scored by the rules scorer, an artifact of the single process, not the
     per-lead cost of the pipeline. Pacing keeps the local runtime within its means;
  3. polls `GET /v1/jobs?status=queued`, then `status=processing` (every page, every
     POLL_INTERVAL_S) until no job of the run is left in either, reads the terminal jobs' records
     (`status=succeeded|failed|cancelled`), then waits for the stack to go quiet (no RUNNING
     execution, an empty queue) so the last Persist tasks' writes are counted too.
Requests go through LocalApiGateway.prepare in-process (route table, authorizer with its cache),
then the handler is invoked on the bench's thread: no sockets, and no 30 s integration limit (in
this crowded process a 500-lead request can outlast it; see Api).

What is counted, from the first upsert until the stack is quiet (the counting window):
  * Lambda: every handler invocation (LocalStack.invoke, wrapped here; `stack.invocations` agrees)
    by function, with its duration. GB-s = Σ memory (infra/routes.py FUNCTIONS) × duration
    rounded up to 1 ms. Handlers are imported before the window (no cold import is timed).
    Durations here are moto's CPU time and two cores shared by every thread of the runtime (the
    GIL, one lock around every DynamoDB request), not network round trips: an estimate.
  * DynamoDB: every request that reaches moto (moto's DynamoHandler.call_action wrapped before the
    runtime wraps it with its lock, so the handlers', Powertools idempotency's and any other
    client's calls are all seen, one at a time), by operation and by the function that made it.
    Request units follow the on-demand rules with item sizes measured on moto's items (before
    and after each write): a write costs ceil(max(old, new) KB) WRU (deletes: the old item), ×2 in
    a transaction (ConditionCheck included); each GSI whose entry a write adds, changes or
    removes costs ceil(entry KB) more (a key change: a delete plus a put), never doubled; reads
    cost ceil(size / 4 KB) RRU, × 0.5 when eventually consistent (GetItem and BatchGetItem per
    item, Query per request on the sum of the items read, from their full stored size; a Query's
    filtered-out items are estimated from ScannedCount). Failed conditional writes and cancelled
    transactions are billed as if they had written (an upper bound). Sizes follow the documented
    rules (names + values, numbers ~1 byte per 2 digits + 1, lists and maps 3 bytes + 1 per
    element); index entries' 100 bytes of storage overhead are not counted.
  * SQS: every request that reaches moto (moto's SQSResponse.call_action wrapped). The AWS model
    billed here: SendMessageBatch and ReceiveMessage count one request per 64 KB of payload; the
    event source mapping's receives that returned messages count as measured, and its deletes as
    one DeleteMessageBatch per delivered batch (Lambda deletes a batch at once; the local poller
    deletes message by message, reported too). Empty long-poll receives are a fixed cost of having
    the mapping at all (a few pollers, one 20 s long poll each), not a cost per lead: excluded.
  * Step Functions: after the window, every execution's history (get_execution_history), in a
    shuffled order within HISTORY_BUDGET_S (a sample when time runs out, and then said so).
    Billed transitions per execution = the states entered (`*StateEntered`, Succeed and Fail
    included) + task retries (a `LambdaFunctionScheduled`/`TaskScheduled` after the first of a
    state entry): AWS Standard "counts a state transition each time a step of your workflow is
    executed … including retries". ExecutionStarted/Succeeded are not states and do not count.
  * API Gateway (HTTP API): the bench's requests, each metered in 512 KB increments of its body.
  * The model: the ledger's rows of feature `leads` (sum of cost_micros), priced by the gateway's
    catalog for what the simulated provider reported: simulated-provider pricing, shown apart.
The bench's own polling (the `jobs` function and its DynamoDB reads, its API requests) depends on
how a client polls; it is reported and priced apart from the per-lead pipeline.

Run: cd <repo> && PYTHONPATH=layers/shared/python:functions:. .venv/bin/python -m bench leads
     [--leads N] [--in-flight K] [--timeout S] [--poll-interval S]
Results also go to build/bench/leads.json; the gateway's logs to build/bench/leads.log.
Timings on a shared machine are noisy; the counts (calls, units, transitions) are not.
"""

from __future__ import annotations

import argparse
import base64
import contextvars
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.streams import fds_to

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
RESULTS = BUILD / "leads.json"
LOG = BUILD / "leads.log"

SEED = 20261122
DEFAULT_LEADS = 1000
CHUNK = 500  # leads per POST /v1/leads and per POST /v1/leads/score (the API's maximum)
PAGE = 200  # GET /v1/jobs page size (the API's maximum)
POLL_INTERVAL_S = 1.0
IN_FLIGHT = 60  # jobs queued or running at once (see the module docstring); 0: no limit
PROGRESS_EVERY_S = 15.0
QUIET_TIMEOUT_S = 60.0  # after every job is terminal: at most this long for the stack to go quiet
HISTORY_BUDGET_S = 180.0  # reading execution histories: a sample when this runs out
TERMINAL = ("succeeded", "failed", "cancelled")
API_KEY = "aig_bench_leads_0123456789abcdef"
TENANT = "bench-leads"
QUIET_ENV = {"POWERTOOLS_LOG_LEVEL": "WARNING", "LOG_LEVEL": "WARNING"}
POLLING_FUNCTIONS = ("jobs",)  # only the bench's GET /v1/jobs calls reach it in this run
ESM = "event source mapping"  # the runtime's SQS poller threads (Lambda's, on AWS)
BENCH = "bench"  # the bench's own calls (drain checks): never billed

# --- us-east-1 prices, on-demand, no free tier. Checked 2026-11-22 against stored copies of these pages
# (Lambda, Step Functions, API Gateway) and, for DynamoDB and SQS, secondary sources quoting them.
# https://aws.amazon.com/lambda/pricing/ (Arm: first 7.5 billion GB-s a month; x86 is $0.0000166667)
LAMBDA_USD_PER_GB_S_ARM64 = 0.0000133334  # the functions are arm64 (infra/functions.py ARCHITECTURE)
LAMBDA_USD_PER_REQUEST = 0.20 / 1_000_000
# https://aws.amazon.com/step-functions/pricing/ (Standard; each retry is a further transition)
SFN_USD_PER_TRANSITION = 0.025 / 1000
# https://aws.amazon.com/sqs/pricing/ (standard queue, first 100 billion requests; 64 KB chunks)
SQS_USD_PER_REQUEST = 0.40 / 1_000_000
# https://aws.amazon.com/dynamodb/pricing/on-demand/ (after the November 2024 reduction)
DDB_USD_PER_WRU = 0.625 / 1_000_000
DDB_USD_PER_RRU = 0.125 / 1_000_000
# https://aws.amazon.com/api-gateway/pricing/ (HTTP APIs, first 300 million; 512 KB increments)
APIGW_USD_PER_REQUEST = 1.00 / 1_000_000
PRICES_AS_OF = "2026-11-22"

KB = 1024
SQS_CHUNK = 64 * KB
APIGW_CHUNK = 512 * KB
WRITE_OPS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
READ_OPS = ("GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems")

_FUNCTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_leads_function", default=None)


def _caller() -> str:
    """Which Lambda is running on this thread (or the runtime's SQS poller, or the bench)."""
    function = _FUNCTION.get()
    if function:
        return function
    return ESM if threading.current_thread().name.startswith("sqs-") else BENCH


def _progress(message: str, stream: Any = None) -> None:
    print(f"  … {message}", file=stream or sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Leads
# ---------------------------------------------------------------------------------------------

_COMPANIES = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Wonka", "Soylent",
    "Tyrell", "Cyberdyne", "Aperture", "Nakatomi", "Oscorp", "Pied Piper", "Gringotts", "Monarch",
)  # fmt: skip
_SUFFIXES = ("Labs", "Systems", "Analytics", "Cloud", "Health", "Logistics", "Foods", "Bank", "Robotics", "Media")
_TITLES = (
    "CEO", "CTO", "Co-Founder", "VP Engineering", "VP of Sales", "Head of Data", "Director of IT",
    "Chief Marketing Officer", "Engineering Manager", "Senior Software Engineer", "Data Analyst",
    "Marketing Coordinator", "Procurement Specialist", "Office Manager", "Intern", "Product Manager",
)  # fmt: skip
_INDUSTRIES = (
    "software", "SaaS", "fintech", "technology", "healthcare", "retail", "manufacturing", "education",
    "logistics", "media", "government", "energy",
)  # fmt: skip
_SOURCES = ("referral", "partner", "inbound", "outbound", "event", "purchased_list", "webinar", "website")
_EVENTS = (
    "demo_request", "pricing_page", "trial_signup", "webinar", "email_reply", "email_open",
    "whitepaper_download", "site_visit", "unsubscribe",
)  # fmt: skip
_NOTES = (
    "Asked about SSO and SOC 2 compliance.",
    "Budget approved for next quarter.",
    "Evaluating two competitors; decision by end of month.",
    "Not interested until next year.",
    "Wants a pilot for the data team first.",
    "Met at the Berlin conference; follow up with a case study.",
    "Current contract with a competitor ends in March.",
    "Champion left the company; need a new contact.",
    "Requested pricing for 200 seats.",
    "Reply to jordan.doe@example.com, not the generic inbox.",
)
_REGIONS = ("EMEA", "NA", "APAC", "LATAM")
_STAGES = ("MQL", "SQL", "opportunity", "nurture")


def make_leads(n: int, seed: int = SEED, today: date | None = None) -> list[dict[str, Any]]:
    """N varied leads, the same for the same seed (event dates: fixed offsets before `today`)."""
    rng = random.Random(seed)
    today = today or datetime.now(UTC).date()
    leads = []
    for i in range(n):
        lead: dict[str, Any] = {
            "lead_id": f"bench-{i:06d}",
            "company": f"{rng.choice(_COMPANIES)} {rng.choice(_SUFFIXES)} {i}",
            "title": rng.choice(_TITLES),
            "industry": rng.choice(_INDUSTRIES),
            "source": rng.choice(_SOURCES),
        }
        if rng.random() < 0.9:
            lead["size"] = int(10 ** rng.uniform(0.5, 4.5))
        events = []
        for _ in range(rng.choice((0, 0, 1, 1, 2, 2, 3, 4, 5, 8))):
            at = today - timedelta(days=rng.randint(0, 200))
            events.append({"type": rng.choice(_EVENTS), "at": at.isoformat()})
        lead["events"] = sorted(events, key=lambda e: e["at"])
        if rng.random() < 0.75:
            lead["notes"] = " ".join(rng.sample(_NOTES, rng.randint(1, 3)))
        custom: dict[str, Any] = {}
        if rng.random() < 0.6:
            custom["region"] = rng.choice(_REGIONS)
        if rng.random() < 0.5:
            custom["crm_stage"] = rng.choice(_STAGES)
        if rng.random() < 0.3:
            custom["budget_k"] = rng.choice((5, 20, 50, 120, 400))
        if rng.random() < 0.2:
            custom["existing_customer"] = rng.random() < 0.5
        lead["custom"] = custom
        leads.append(lead)
    return leads


# ---------------------------------------------------------------------------------------------
# DynamoDB: calls and request units, at moto
# ---------------------------------------------------------------------------------------------


def _units(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0").rstrip("0")
    return (len(digits) + 1) // 2 + 1


def _binary_size(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    try:
        return len(base64.b64decode(str(value)))
    except ValueError:
        return len(str(value))


def attribute_size(value: Any) -> int:
    """An attribute value's size in bytes (DynamoDB's documented rules, wire format in)."""
    if not isinstance(value, dict) or len(value) != 1:
        return len(json.dumps(value, default=str))  # not wire format: a fair stand-in
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return _number_size(str(inner))
    if kind == "B":
        return _binary_size(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in inner)
    if kind == "NS":
        return sum(_number_size(str(s)) for s in inner)
    if kind == "BS":
        return sum(_binary_size(s) for s in inner)
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in inner)
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_size(v) + 1 for k, v in inner.items())
    return len(json.dumps(inner, default=str))


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


class DynamoMeter:
    """Counts every DynamoDB request moto serves while `active`, with its request units.

    Installed on moto's DynamoHandler before the runtime wraps that with its lock, so it runs
    inside the lock: the items it reads before and after a write are the write's own.
    """

    def __init__(self) -> None:
        self.active = False
        # Keyed (caller, operation, table): table is "A+B" for a request that names several.
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.failures: Counter[tuple[str, str, str]] = Counter()  # refused requests (a failed condition …)
        self.wru: defaultdict[tuple[str, str, str], float] = defaultdict(float)  # table writes
        self.wru_index: defaultdict[tuple[str, str, str], float] = defaultdict(float)  # GSI writes
        self.rru: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        self.errors: Counter[tuple[str, str, str]] = Counter()  # (caller, operation, error type)
        self.meter_errors: Counter[str] = Counter()
        self.overhead_s = 0.0  # the meter's own time, inside the runtime's DynamoDB lock
        self._original: Any = None

    def install(self) -> None:
        from moto.dynamodb.responses import DynamoHandler

        self._original = original = DynamoHandler.call_action
        meter = self

        def call_action(handler: Any) -> Any:
            if not meter.active:
                return original(handler)
            return meter._measure(handler, original)

        DynamoHandler.call_action = call_action  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            from moto.dynamodb.responses import DynamoHandler

            DynamoHandler.call_action = self._original  # type: ignore[method-assign]
            self._original = None

    # --- one request --------------------------------------------------------------------------
    def _measure(self, handler: Any, original: Callable[[Any], Any]) -> Any:
        started = time.perf_counter()
        caller = _caller()
        op, params, backend = "?", {}, None
        targets: list[tuple[Any, dict[str, Any], int]] = []
        before: list[dict[str, Any] | None] = []
        try:
            op = str(handler._get_action())
            params = dict(getattr(handler, "params", None) or {})
            backend = handler.dynamodb_backend
            targets = self._write_targets(backend, op, params) if op in WRITE_OPS else []
            before = [_snapshot(table, key) for table, key, _ in targets]
        except Exception as exc:  # the call is still counted; its units may be short
            self.meter_errors[f"before {op}: {type(exc).__name__}"] += 1
            targets, before = [], []
        called = time.perf_counter()
        response = original(handler)
        returned = time.perf_counter()
        try:
            status, body = int(response[0]), response[2]
            key = (caller, op, "+".join(sorted({_short_table(t) for t in _tables_of(op, params)})) or "-")
            self.calls[key] += 1
            data = _json(body)
            if status >= 300:
                self.failures[key] += 1
                self.errors[(caller, op, str(data.get("__type", "error")).rsplit("#", 1)[-1])] += 1
            if op in WRITE_OPS:
                for (table, key_wire, factor), old in zip(targets, before, strict=True):
                    new = _snapshot(table, key_wire)
                    base, index = _write_units(table, old, new, factor)
                    self.wru[key] += base
                    self.wru_index[key] += index
            elif op in READ_OPS:
                self.rru[key] += _read_units(backend, op, params, data)
        except Exception as exc:
            self.meter_errors[f"after {op}: {type(exc).__name__}"] += 1
        self.overhead_s += (called - started) + (time.perf_counter() - returned)
        return response

    @staticmethod
    def _write_targets(backend: Any, op: str, params: dict[str, Any]) -> list[tuple[Any, dict[str, Any], int]]:
        """(table, key in wire format, unit factor) of every item the write may touch."""
        out: list[tuple[Any, dict[str, Any], int]] = []

        def add(table_name: str, item_or_key: dict[str, Any], factor: int) -> None:
            table = backend.get_table(table_name)
            out.append((table, _key_of(table, item_or_key), factor))

        if op == "PutItem":
            add(params["TableName"], params["Item"], 1)
        elif op in ("UpdateItem", "DeleteItem"):
            add(params["TableName"], params["Key"], 1)
        elif op == "BatchWriteItem":
            for table_name, requests in params.get("RequestItems", {}).items():
                for request in requests:
                    if "PutRequest" in request:
                        add(table_name, request["PutRequest"]["Item"], 1)
                    elif "DeleteRequest" in request:
                        add(table_name, request["DeleteRequest"]["Key"], 1)
        elif op == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                ((_, spec),) = entry.items()
                add(spec["TableName"], spec.get("Key") or spec["Item"], 2)
        return out

    # --- figures ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "requests": [
                {
                    "caller": c,
                    "operation": o,
                    "table": t,
                    "calls": n,
                    "refused": self.failures[(c, o, t)],
                    "wru_table": round(self.wru[(c, o, t)], 3),
                    "wru_index": round(self.wru_index[(c, o, t)], 3),
                    "rru": round(self.rru[(c, o, t)], 3),
                }
                for (c, o, t), n in sorted(self.calls.items())
            ],
            "errors": [
                {"caller": c, "operation": o, "error": e, "count": n} for (c, o, e), n in sorted(self.errors.items())
            ],
            "meter_errors": dict(self.meter_errors),
        }


def _json(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _short_table(name: str) -> str:
    """AiGateway-DataState804A1476 → State."""
    short = name.split("-", 1)[-1]
    short = short.removeprefix("Data")
    return short.rstrip("0123456789ABCDEF") or name


def _tables_of(op: str, params: dict[str, Any]) -> list[str]:
    if "TableName" in params:
        return [str(params["TableName"])]
    if op in ("BatchGetItem", "BatchWriteItem"):
        return list(params.get("RequestItems", {}))
    if op in ("TransactWriteItems", "TransactGetItems"):
        return sorted({str(next(iter(e.values()))["TableName"]) for e in params.get("TransactItems", [])})
    return []


def _key_of(table: Any, item: dict[str, Any]) -> dict[str, Any]:
    key = {table.hash_key_attr: item[table.hash_key_attr]}
    if table.range_key_attr:
        key[table.range_key_attr] = item[table.range_key_attr]
    return key


def _snapshot(table: Any, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored item (wire format, a copy), or None."""
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import dynamo_json_dump

    hash_key = DynamoType(key[table.hash_key_attr])
    range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    try:
        item = table.get_item(hash_key, range_key)
    except Exception:
        return None
    if item is None:
        return None
    attributes: dict[str, Any] = json.loads(dynamo_json_dump(item)).get("Attributes", {})
    return attributes


def _projection(table: Any, index: Any, item: dict[str, Any] | None) -> dict[str, Any] | None:
    """The item's entry in a secondary index (None when the item has no value for the index key)."""
    if item is None or any(attr not in item for attr in index.schema_key_attrs):
        return None
    projection = index.projection or {}
    kind = projection.get("ProjectionType", "ALL")
    if kind == "ALL":
        return item
    keep = {table.hash_key_attr, table.range_key_attr, *index.schema_key_attrs}
    if kind == "INCLUDE":
        keep.update(projection.get("NonKeyAttributes", []))
    return {k: v for k, v in item.items() if k in keep}


def _write_units(table: Any, old: dict[str, Any] | None, new: dict[str, Any] | None, factor: int) -> tuple[int, int]:
    """(table WRU, index WRU) of one item write."""
    base = _units(max(item_size(old), item_size(new)), KB) * factor
    if old == new:
        return base, 0  # a failed condition, or nothing changed: no index write
    index_units = 0
    for index in getattr(table, "global_indexes", None) or []:
        before, after = _projection(table, index, old), _projection(table, index, new)
        if before is None and after is None:
            continue
        if before is None:
            index_units += _units(item_size(after), KB)
        elif after is None:
            index_units += _units(item_size(before), KB)
        elif any(old.get(a) != new.get(a) for a in index.schema_key_attrs):  # type: ignore[union-attr]
            index_units += _units(item_size(before), KB) + _units(item_size(after), KB)
        elif before != after:
            index_units += _units(max(item_size(before), item_size(after)), KB)
    return base, index_units


def _read_units(backend: Any, op: str, params: dict[str, Any], data: dict[str, Any]) -> float:
    if op == "GetItem":
        table = backend.get_table(params["TableName"])
        size = item_size(_snapshot(table, params["Key"]))
        return _units(size, 4 * KB) * (1.0 if params.get("ConsistentRead") else 0.5)
    if op in ("BatchGetItem", "TransactGetItems"):
        total = 0.0
        if op == "BatchGetItem":
            for table_name, spec in params.get("RequestItems", {}).items():
                table = backend.get_table(table_name)
                factor = 1.0 if spec.get("ConsistentRead") else 0.5
                total += sum(_units(item_size(_snapshot(table, k)), 4 * KB) * factor for k in spec.get("Keys", []))
        else:
            for entry in params.get("TransactItems", []):
                spec = entry["Get"]
                table = backend.get_table(spec["TableName"])
                total += _units(item_size(_snapshot(table, spec["Key"])), 4 * KB) * 2.0
        return total
    # Query / Scan: the sum of the items read (their full stored size), rounded up per request.
    table = backend.get_table(params["TableName"])
    index_name = params.get("IndexName")
    index = next((i for i in getattr(table, "global_indexes", None) or [] if i.name == index_name), None)
    items = data.get("Items") or []
    size = 0
    for item in items:
        full = _snapshot(table, _key_of(table, item)) if table.hash_key_attr in item else None
        full = full or item
        size += item_size(_projection(table, index, full) if index is not None else full)
    count, scanned = int(data.get("Count", len(items))), int(data.get("ScannedCount", len(items)))
    if count and scanned > count:
        size = int(size * scanned / count)  # items a filter dropped: assumed as large as those kept
    consistent = bool(params.get("ConsistentRead")) and index is None
    return _units(size, 4 * KB) * (1.0 if consistent else 0.5)


# ---------------------------------------------------------------------------------------------
# SQS requests, at moto
# ---------------------------------------------------------------------------------------------


class SqsMeter:
    """Counts every SQS request moto serves while `active`: calls, messages, 64 KB chunks."""

    def __init__(self) -> None:
        self.active = False
        self.calls: Counter[tuple[str, str]] = Counter()  # (caller, action)
        self.chunks: Counter[tuple[str, str]] = Counter()  # billed requests (64 KB chunks)
        self.messages: Counter[tuple[str, str]] = Counter()  # messages sent / received
        self.empty_receives: Counter[str] = Counter()
        self.meter_errors: Counter[str] = Counter()
        self._original: Any = None
        self._lock = threading.Lock()

    def install(self) -> None:
        from moto.sqs.responses import SQSResponse

        self._original = original = SQSResponse.call_action
        meter = self

        def call_action(handler: Any) -> Any:
            response = original(handler)
            if meter.active:
                meter._record(handler, response)
            return response

        SQSResponse.call_action = call_action  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            from moto.sqs.responses import SQSResponse

            SQSResponse.call_action = self._original  # type: ignore[method-assign]
            self._original = None

    def _record(self, handler: Any, response: Any) -> None:
        caller = _caller()
        try:
            action = str(handler._get_action())
            params = dict(getattr(handler, "params", None) or {})
            messages, payload = 0, 0
            if action == "SendMessageBatch":
                entries = params.get("Entries") or []
                messages = len(entries)
                payload = sum(len(str(e.get("MessageBody", "")).encode()) for e in entries)
            elif action == "SendMessage":
                messages, payload = 1, len(str(params.get("MessageBody", "")).encode())
            elif action == "ReceiveMessage":
                received = _json(response[2]).get("Messages") or []
                messages = len(received)
                payload = sum(len(str(m.get("Body", "")).encode()) for m in received)
            with self._lock:
                self.calls[(caller, action)] += 1
                self.messages[(caller, action)] += messages
                self.chunks[(caller, action)] += _units(payload, SQS_CHUNK)
                if action == "ReceiveMessage" and not messages:
                    self.empty_receives[caller] += 1
        except Exception as exc:
            with self._lock:
                self.meter_errors[type(exc).__name__] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": [
                {
                    "caller": c,
                    "action": a,
                    "calls": n,
                    "messages": self.messages[(c, a)],
                    "billed_64kb_chunks": self.chunks[(c, a)],
                }
                for (c, a), n in sorted(self.calls.items())
            ],
            "empty_receives": dict(self.empty_receives),
            "meter_errors": dict(self.meter_errors),
        }


# ---------------------------------------------------------------------------------------------
# Lambda invocations, timed
# ---------------------------------------------------------------------------------------------


class LambdaMeter:
    """Wraps the stack's `invoke` (the API, the SQS pollers and Step Functions all call it).

    Each invocation's wall time (what Lambda bills, here inflated by every other thread of the
    runtime) and its thread's CPU time (the handler plus the moto emulation it calls in-process;
    no waiting). A workflow invocation is labelled with its action (workflow:run …), so the
    DynamoDB calls it makes can be told apart.
    """

    def __init__(self) -> None:
        self.active = False
        self.durations_ms: defaultdict[str, list[float]] = defaultdict(list)  # by function
        self.cpu_ms: defaultdict[str, list[float]] = defaultdict(list)  # by function
        self.by_label_ms: defaultdict[str, list[float]] = defaultdict(list)  # by function:action
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()

    def install(self, stack: Any) -> None:
        from infra.local.runtime import LocalStack

        meter = self

        def invoke(name: str, event: dict[str, Any]) -> Any:
            action = event.get("action") if isinstance(event, dict) else None
            label = f"{name}:{action}" if isinstance(action, str) else name
            token = _FUNCTION.set(label)
            started, cpu_started = time.perf_counter(), time.thread_time()
            failed = False
            try:
                return LocalStack.invoke(stack, name, event)
            except Exception:
                failed = True
                raise
            finally:
                elapsed = (time.perf_counter() - started) * 1000
                cpu = (time.thread_time() - cpu_started) * 1000
                _FUNCTION.reset(token)
                if meter.active:
                    with meter._lock:
                        meter.durations_ms[name].append(elapsed)
                        meter.cpu_ms[name].append(cpu)
                        meter.by_label_ms[label].append(elapsed)
                        if failed:
                            meter.errors[name] += 1

        stack.invoke = invoke


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Api:
    """The local API in-process, counting the bench's requests (and 512 KB increments) by kind.

    Everything API Gateway does before the integration (route, authorizer with its cache) is
    LocalApiGateway.prepare; the handler is then invoked on this thread with no 30 s integration
    limit. In this crowded process a 500-lead request can outlast it (and the function's own 29 s
    timeout, which the runtime does not enforce): a 503 and a retry would run the handler a
    second time once Powertools' in-progress record expired with the first invocation, queuing
    every job twice. Invocations longer than their function's timeout are reported instead.
    """

    RETRYABLE = (409, 429, 503, 504)

    def __init__(self, stack: Any, gateway: Any, api_key: str):
        self.stack = stack
        self.gateway = gateway
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.requests: Counter[str] = Counter()
        self.metered: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()  # polls the API asked to repeat, by status

    def call(self, kind: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        self.requests[kind] += 1
        self.metered[kind] += _units(len(payload), APIGW_CHUNK)
        prepared = self.gateway.prepare(method, path, {**self.headers, **(headers or {})}, payload)
        if not isinstance(prepared, tuple):  # API Gateway answered by itself (401, 403, 404, 413)
            raise ApiError(prepared.status, f"{method} {path} answered {prepared.status}: {prepared.body[:300]!r}")
        route, event = prepared
        result = self.stack.invoke(route.function, event)
        status = int(result.get("statusCode", 200)) if isinstance(result, dict) else 200
        text = result.get("body") if isinstance(result, dict) else json.dumps(result)
        if isinstance(result, dict) and result.get("isBase64Encoded") and text:
            text = base64.b64decode(text).decode()
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        if status >= 300:
            raise ApiError(status, f"{method} {path} answered {status}: {str(data)[:500]}")
        return data


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _jobs_in(api: Api, statuses: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
    """The tenant's jobs in these states, by id (every page, statuses in the order given); None
    when the API asked to come back later (the next round tries again)."""
    from urllib.parse import quote

    found: dict[str, dict[str, Any]] = {}
    for status in statuses:
        cursor = None
        while True:
            query = f"?status={status}&limit={PAGE}" + (f"&cursor={quote(cursor)}" if cursor else "")
            try:
                page = api.call("polling", "GET", "/v1/jobs" + query)
            except ApiError as exc:
                if exc.status in Api.RETRYABLE:
                    api.retries[f"polling {exc.status}"] += 1
                    return None
                raise
            for item in page["items"]:
                found[item["job_id"]] = item
            cursor = page.get("next_cursor")
            if not cursor:
                break
    return found


def _quiet(stack: Any, deadline: float) -> bool:
    """Waits until no execution is RUNNING and the jobs queue is empty (or the deadline passes)."""
    import boto3

    from aigateway import deps

    assert stack.resources is not None
    sfn = boto3.client("stepfunctions")
    sqs = boto3.client("sqs")
    arn = stack.resources.state_machines["jobs"]
    queue = deps.get_settings().jobs_queue_url
    while time.monotonic() < deadline:
        running = sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING", maxResults=10)["executions"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        queued = int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )
        if not running and not queued:
            time.sleep(0.5)  # a Persist that just returned: let its execution record the end
            return True
        time.sleep(0.5)
    return False


def _histories(stack: Any, job_ids: set[str], budget_s: float) -> dict[str, Any]:
    """Billed transitions per execution, from execution histories (a sample if time runs out)."""
    import boto3

    assert stack.resources is not None
    sfn = boto3.client("stepfunctions")
    arn = stack.resources.state_machines["jobs"]
    executions = []
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=arn):
        executions.extend(page["executions"])
    ours = [e for e in executions if e["name"].split("-r")[0] in job_ids]
    random.Random(SEED).shuffle(ours)
    deadline = time.monotonic() + budget_s
    per_execution: list[dict[str, Any]] = []
    event_types: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    task_errors: Counter[str] = Counter()  # failed task attempts (retried or caught), by error
    statuses: Counter[str] = Counter(e["status"] for e in ours)
    started = time.perf_counter()
    for execution in ours:
        if time.monotonic() > deadline:
            break
        events = []
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution["executionArn"]):
            events.extend(page["events"])
        entered = [e for e in events if e["type"].endswith("StateEntered")]
        scheduled: Counter[int] = Counter()  # task schedulings per state entry
        current = None
        for e in events:
            if e["type"].endswith("StateEntered"):
                current = e["id"]
            elif e["type"] in ("LambdaFunctionScheduled", "TaskScheduled") and current is not None:
                scheduled[current] += 1
        retries = sum(max(0, n - 1) for n in scheduled.values())
        event_types.update(e["type"] for e in events)
        for e in events:
            if e["type"] in ("LambdaFunctionFailed", "TaskFailed", "LambdaFunctionTimedOut", "TaskTimedOut"):
                details = next((v for k, v in e.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})
                task_errors[f"{details.get('error', '?')}: {str(details.get('cause', ''))[:160]}"] += 1
        names = [str((e.get("stateEnteredEventDetails") or {}).get("name", "?")) for e in entered]
        paths[" → ".join(names)] += 1
        per_execution.append(
            {
                "states_entered": len(entered),
                "states_exited": sum(1 for e in events if e["type"].endswith("StateExited")),
                "retries": retries,
                "transitions": len(entered) + retries,
                "events": len(events),
            }
        )
    return {
        "executions": len(ours),
        "executions_read": len(per_execution),
        "sampled": len(per_execution) < len(ours),
        "read_s": round(time.perf_counter() - started, 1),
        "statuses": dict(statuses),
        "per_execution": per_execution,
        "event_types": dict(event_types.most_common()),
        "paths": dict(paths.most_common()),
        "task_errors": dict(task_errors.most_common()),
    }


def _ledger(tenant_id: str, months: list[str]) -> dict[str, Any]:
    from aigateway import deps

    rows: list[dict[str, Any]] = []
    for month in months:
        start = None
        while True:
            page, start = deps.repos().ledger.month(tenant_id, month, start_key=start)
            rows.extend(page)
            if start is None:
                break
    leads = [r for r in rows if r.get("feature") == "leads"]
    return {
        "rows": len(rows),
        "rows_feature_leads": len(leads),
        "cost_micros_leads": sum(int(r.get("cost_micros") or 0) for r in leads),
        "by_model": dict(Counter(str(r.get("model")) for r in leads).most_common()),
        "by_outcome": dict(Counter(str(r.get("outcome")) for r in leads).most_common()),
        "input_tokens": sum(int(r.get("input_tokens") or 0) for r in leads),
        "output_tokens": sum(int(r.get("output_tokens") or 0) for r in leads),
    }


def run(n: int, timeout_s: float, poll_interval_s: float, in_flight: int, progress: Any) -> dict[str, Any]:
    """One end-to-end run on a fresh stack: the raw counts (figures() turns them into results).

    The stack is stopped only when the run ended cleanly; after a timeout or an error, moto's
    execution threads may still be running, and the caller ends the process instead.
    """
    from aigateway.governance.budgets import period_of
    from aigateway.llm.simulated import SimulatedProvider, SimulatedProviderServer
    from bench import tenant
    from infra.local.apigateway import LocalApiGateway
    from infra.local.runtime import LocalStack, synthesize

    BUILD.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "leads": n,
        "timeout_s": timeout_s,
        "poll_interval_s": poll_interval_s,
        "in_flight": in_flight,
    }
    leads = make_leads(n)
    raw["lead_bytes_mean"] = round(sum(len(json.dumps(lead)) for lead in leads) / max(n, 1), 1)
    ddb, sqs, lam = DynamoMeter(), SqsMeter(), LambdaMeter()
    _progress("leads: synthesizing (skipped when nothing changed)", progress)
    template = synthesize()
    simulator = SimulatedProviderServer(SimulatedProvider({}))
    provider_url = simulator.start()
    ddb.install()  # before the runtime wraps call_action with its lock: counted inside it
    sqs.install()
    stack = LocalStack(template, env_overrides={"SIMULATOR_URL": provider_url, "PROVIDER": "simulated", **QUIET_ENV})
    lam.install(stack)
    clean = False
    try:
        _progress(f"leads: starting the stack, seeding tenant {TENANT}", progress)
        stack.start()
        tenant.seed(API_KEY, tenant_id=TENANT)
        api = Api(stack, LocalApiGateway(stack), API_KEY)
        for name in ("authorizer", "leads", "jobs", "scoring_dispatch", "workflow"):
            stack.handler(name)  # imported now: no cold import inside the window
        api.call("warmup", "GET", "/v1/jobs?limit=1")  # the authorizer's cache, the jobs handler's clients
        simulator.provider.reset_stats()
        invocations_before = dict(stack.invocations)

        # --- the window ------------------------------------------------------------------------
        for meter in (ddb, sqs, lam):
            meter.active = True
        t0, t0_wall = time.perf_counter(), datetime.now(UTC)
        deadline = t0 + timeout_s
        pace = f"at most {in_flight} jobs in flight" if in_flight else "all at once"
        _progress(f"leads: upserting {n} leads ({CHUNK} per call), then scoring them ({pace})", progress)
        for i in range(0, n, CHUNK):
            body = {"leads": leads[i : i + CHUNK], "score": "never"}
            api.call("upsert", "POST", "/v1/leads", body)
        upserted_s = time.perf_counter() - t0
        jobs: dict[str, str] = {}  # job id → lead id
        not_queued = 0
        # Score requests: all at once in calls of CHUNK (in_flight 0), or paced so that at most
        # `in_flight` jobs are queued or running, in calls of half that.
        batch = min(CHUNK, max(1, in_flight // 2)) if in_flight else CHUNK
        ids = [lead["lead_id"] for lead in leads]
        submitted, calls, active = 0, 0, 0
        rounds, last_progress, timed_out = 0, time.perf_counter(), False
        queued_s: float | None = None
        while True:
            while submitted < n and (not in_flight or active + batch <= in_flight):
                chunk = ids[submitted : submitted + batch]
                key = {"Idempotency-Key": f"bench-leads-{SEED}-{n}-{calls}"}
                out = api.call("score", "POST", "/v1/leads/score", {"lead_ids": chunk}, key)
                for job in out["jobs"]:
                    jobs[job["job_id"]] = job["lead_id"]
                    not_queued += job["status"] != "queued"
                submitted += len(chunk)
                active += len(chunk)
                calls += 1
            if submitted >= n and queued_s is None:
                queued_s = time.perf_counter() - t0
                _progress(f"leads: all {len(jobs)} jobs queued after {queued_s:.1f} s ({calls} calls)", progress)
            rounds += 1
            found = _jobs_in(api, ("queued", "processing"))  # in this order: a job moving is seen
            if found is not None:
                active = sum(1 for job_id in found if job_id in jobs)
            if submitted >= n and found is not None and active == 0:
                break
            now = time.perf_counter()
            if now > deadline:
                timed_out = True
                break
            if now - last_progress >= PROGRESS_EVERY_S:
                _progress(
                    f"leads: {len(jobs) - active}/{n} terminal after {now - t0:.0f} s ({active} in flight)", progress
                )
                last_progress = now
            time.sleep(poll_interval_s)
        terminal: dict[str, dict[str, Any]] = {}
        for _ in range(10):  # the terminal jobs' records (created_at, updated_at, result)
            found = _jobs_in(api, TERMINAL)
            if found is not None:
                terminal = {k: v for k, v in found.items() if k in jobs}
                if len(terminal) >= len(jobs) or timed_out:
                    break
            time.sleep(poll_interval_s)
        noticed_s = time.perf_counter() - t0
        quiet = False
        if not timed_out:
            _progress(f"leads: all {len(jobs)} jobs terminal after {noticed_s:.1f} s; waiting for quiet", progress)
            quiet = _quiet(stack, time.monotonic() + QUIET_TIMEOUT_S)
        for meter in (ddb, sqs, lam):
            meter.active = False
        window_s = time.perf_counter() - t0
        # --- end of the window -------------------------------------------------------------------

        invocations = {k: v - invocations_before.get(k, 0) for k, v in stack.invocations.items()}
        _progress("leads: reading execution histories and the ledger", progress)
        histories = _histories(stack, set(jobs), HISTORY_BUDGET_S)
        months = sorted({period_of(t0_wall), period_of(datetime.now(UTC))})
        raw.update(
            {
                "started_at": t0_wall.isoformat(timespec="seconds"),
                "upsert_s": upserted_s,
                "queue_s": queued_s,
                "score_calls": calls,
                "score_batch": batch,
                "noticed_s": noticed_s,
                "window_s": window_s,
                "poll_rounds": rounds,
                "timed_out": timed_out,
                "quiet": quiet,
                "jobs": len(jobs),
                "not_queued": not_queued,
                "job_items": list(terminal.values()),
                "pending": len(jobs) - len(terminal),
                "t0_wall": t0_wall.isoformat(),
                "api_requests": dict(api.requests),
                "api_metered": dict(api.metered),
                "api_retries": dict(api.retries),
                "invocations": invocations,
                "durations_ms": {k: list(v) for k, v in lam.durations_ms.items()},
                "cpu_ms": {k: list(v) for k, v in lam.cpu_ms.items()},
                "label_ms": {k: list(v) for k, v in lam.by_label_ms.items()},
                "invoke_errors": dict(lam.errors),
                "dynamodb": ddb,
                "sqs": sqs,
                "stepfunctions": histories,
                "ledger": _ledger(TENANT, months),
                "simulator": simulator.provider.stats(),
            }
        )
        clean = not timed_out and quiet
    finally:
        for meter in (ddb, sqs, lam):
            meter.active = False
        if clean:
            stack.stop()
            ddb.uninstall()
            sqs.uninstall()
            simulator.stop()
    return raw


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _memory_mb() -> dict[str, int]:
    from infra.routes import FUNCTIONS

    return {f.name: f.memory_mb for f in FUNCTIONS}


def _timeout_s() -> dict[str, int]:
    from infra.routes import FUNCTIONS

    return {f.name: f.timeout_s for f in FUNCTIONS}


def _pct(values: list[float], q: float) -> float | None:
    from bench.stats import percentile

    return round(percentile(values, q), 1) if values else None


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    n = raw["leads"]
    per_lead = 1 / n if n else 0.0
    scale = 1000 / n if n else 0.0  # to 1,000 leads
    jobs = raw["job_items"]
    t0 = _parse_time(raw["t0_wall"])

    # --- time and outcomes -------------------------------------------------------------------
    latencies = [(_parse_time(j["updated_at"]) - _parse_time(j["created_at"])).total_seconds() for j in jobs]
    last = max((_parse_time(j["updated_at"]) for j in jobs), default=None)
    wall_s = (last - t0).total_seconds() if last else None
    results = [j.get("result") or {} for j in jobs]
    outcomes = {
        "jobs": raw["jobs"],
        "terminal": len(jobs),
        "pending_at_end": raw["pending"],
        "not_queued": raw["not_queued"],
        "status": dict(Counter(j["status"] for j in jobs).most_common()),
        "scorer": dict(Counter(str(r.get("scorer")) for r in results if r).most_common()),
        "served_by": dict(Counter(str(r.get("served_by")) for r in results if r).most_common()),
        "degraded_reason": dict(Counter(str(r.get("degraded_reason")) for r in results if r.get("degraded_reason"))),
        "tier": dict(Counter(str(r.get("tier")) for r in results if r).most_common()),
        "errors": dict(Counter(str((j.get("error") or {}).get("type")) for j in jobs if j.get("error")).most_common()),
    }
    timing = {
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "leads_per_s": round(len(jobs) / wall_s, 2) if wall_s else None,
        "upsert_s": round(raw["upsert_s"], 2),
        "queue_s": round(raw["queue_s"], 2) if raw["queue_s"] is not None else None,
        "noticed_s": round(raw["noticed_s"], 1),
        "window_s": round(raw["window_s"], 1),
        "job_latency_s": {
            "p50": _pct(latencies, 50),
            "p95": _pct(latencies, 95),
            "max": round(max(latencies), 1) if latencies else None,
        },
    }

    # --- Lambda ------------------------------------------------------------------------------
    memory, timeouts = _memory_mb(), _timeout_s()
    lambda_rows = []
    for name in sorted(set(raw["invocations"]) | set(raw["durations_ms"])):
        durations = raw["durations_ms"].get(name, [])
        cpu = raw["cpu_ms"].get(name, [])
        gb = memory.get(name, 512) / 1024
        gb_s = sum(gb * math.ceil(ms) / 1000 for ms in durations)
        gb_s_cpu = sum(gb * math.ceil(ms) / 1000 for ms in cpu)
        lambda_rows.append(
            {
                "function": name,
                "memory_mb": memory.get(name),
                "invocations": raw["invocations"].get(name, 0),
                "timed": len(durations),
                "per_lead": round(raw["invocations"].get(name, 0) * per_lead, 3),
                "p50_ms": _pct(durations, 50),
                "p95_ms": _pct(durations, 95),
                "mean_ms": round(sum(durations) / len(durations), 1) if durations else None,
                "cpu_p50_ms": _pct(cpu, 50),
                "gb_s": round(gb_s, 3),
                "gb_s_per_lead": round(gb_s * per_lead, 5),
                "gb_s_cpu": round(gb_s_cpu, 3),
                "polling": name in POLLING_FUNCTIONS,
                "errors": raw["invoke_errors"].get(name, 0),
                "timeout_s": timeouts.get(name),
                "over_timeout": sum(1 for ms in durations if ms > timeouts.get(name, 900) * 1000),
            }
        )
    by_action = {
        label: {"invocations": len(v), "p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95)}
        for label, v in sorted(raw["label_ms"].items())
        if ":" in label
    }

    # --- DynamoDB ------------------------------------------------------------------------------
    ddb: DynamoMeter = raw["dynamodb"]

    def is_pipeline(caller: str) -> bool:
        return caller not in POLLING_FUNCTIONS and caller != BENCH

    def ddb_sum(counter: Any, keep: Callable[[str, str, str], bool]) -> float:
        return float(sum(v for (c, o, t), v in counter.items() if keep(c, o, t)))

    def pipeline_op(op: str) -> Callable[[str, str, str], bool]:
        return lambda c, o, t: is_pipeline(c) and o == op

    def pipeline_all(c: str, o: str, t: str) -> bool:
        return is_pipeline(c)

    def polling_all(c: str, o: str, t: str) -> bool:
        return c in POLLING_FUNCTIONS

    operations = sorted({o for _, o, _ in ddb.calls})
    requests = []
    for (caller, op, table_name), calls in sorted(ddb.calls.items()):
        key = (caller, op, table_name)
        requests.append(
            {
                "caller": caller,
                "operation": op,
                "table": table_name,
                "calls": calls,
                "per_lead": round(calls * per_lead, 3),
                "refused": ddb.failures[key],
                "wru_per_lead": round((ddb.wru[key] + ddb.wru_index[key]) * per_lead, 3),
                "wru_index_per_lead": round(ddb.wru_index[key] * per_lead, 3),
                "rru_per_lead": round(ddb.rru[key] * per_lead, 3),
                "pipeline": is_pipeline(caller),
            }
        )
    dynamodb: dict[str, Any] = {
        "by_operation": [
            {
                "operation": op,
                "calls": int(ddb_sum(ddb.calls, pipeline_op(op))),
                "per_lead": round(ddb_sum(ddb.calls, pipeline_op(op)) * per_lead, 3),
                "refused": int(ddb_sum(ddb.failures, pipeline_op(op))),
                "wru_per_lead": round(
                    (ddb_sum(ddb.wru, pipeline_op(op)) + ddb_sum(ddb.wru_index, pipeline_op(op))) * per_lead, 3
                ),
                "rru_per_lead": round(ddb_sum(ddb.rru, pipeline_op(op)) * per_lead, 3),
            }
            for op in operations
            if ddb_sum(ddb.calls, pipeline_op(op))
        ],
        "requests": requests,
        "pipeline_calls": int(ddb_sum(ddb.calls, pipeline_all)),
        "pipeline_calls_per_lead": round(ddb_sum(ddb.calls, pipeline_all) * per_lead, 2),
        "pipeline_refused": int(ddb_sum(ddb.failures, pipeline_all)),
        "pipeline_wru_table": round(ddb_sum(ddb.wru, pipeline_all), 1),
        "pipeline_wru_index": round(ddb_sum(ddb.wru_index, pipeline_all), 1),
        "pipeline_rru": round(ddb_sum(ddb.rru, pipeline_all), 1),
        "polling_calls": int(ddb_sum(ddb.calls, polling_all)),
        "polling_rru": round(ddb_sum(ddb.rru, polling_all), 1),
        "polling_wru": round(ddb_sum(ddb.wru, polling_all) + ddb_sum(ddb.wru_index, polling_all), 1),
        "bench_calls": int(ddb_sum(ddb.calls, lambda c, o, t: c == BENCH)),
        "raw": ddb.to_json(),
    }

    # --- SQS (the AWS model) -------------------------------------------------------------------
    sq: SqsMeter = raw["sqs"]

    def sqs_total(counter: Counter[tuple[str, str]], action: str, who: str | None = None) -> int:
        return sum(v for (c, a), v in counter.items() if a == action and (who is None or c == who))

    receives_nonempty = sqs_total(sq.calls, "ReceiveMessage", ESM) - sq.empty_receives.get(ESM, 0)
    sqs_model = {
        "send_requests": sqs_total(sq.chunks, "SendMessageBatch") + sqs_total(sq.chunks, "SendMessage"),
        "receive_requests": sqs_total(sq.chunks, "ReceiveMessage", ESM) - sq.empty_receives.get(ESM, 0),
        "delete_batch_requests": receives_nonempty,
        "change_visibility_requests": sqs_total(sq.calls, "ChangeMessageVisibility"),
    }
    sqs_model["total"] = sum(sqs_model.values())
    sqs = {
        "model": sqs_model,
        "per_lead": round(sqs_model["total"] * per_lead, 3),
        "messages_sent": sqs_total(sq.messages, "SendMessageBatch") + sqs_total(sq.messages, "SendMessage"),
        "local": {
            "receives": sqs_total(sq.calls, "ReceiveMessage", ESM),
            "empty_receives": sq.empty_receives.get(ESM, 0),
            "delete_message": sqs_total(sq.calls, "DeleteMessage"),
            "messages_received": sqs_total(sq.messages, "ReceiveMessage", ESM),
        },
        "raw": sq.to_json(),
    }

    # --- Step Functions ------------------------------------------------------------------------
    sf = raw["stepfunctions"]
    per_exec = sf["per_execution"]
    read = len(per_exec)
    mean_transitions = sum(e["transitions"] for e in per_exec) / read if read else 0.0
    transitions_total = mean_transitions * sf["executions"]  # extrapolated when sampled
    stepfunctions = {
        "executions": sf["executions"],
        "executions_per_lead": round(sf["executions"] * per_lead, 3),
        "histories_read": read,
        "sampled": sf["sampled"],
        "read_s": sf["read_s"],
        "statuses": sf["statuses"],
        "transitions_per_execution": dict(sorted(Counter(e["transitions"] for e in per_exec).items())),
        "mean_transitions_per_execution": round(mean_transitions, 3),
        "mean_entered_plus_exited": round(sum(e["states_entered"] + e["states_exited"] for e in per_exec) / read, 3)
        if read
        else None,
        "retries": sum(e["retries"] for e in per_exec),
        "transitions_total": round(transitions_total, 1),
        "transitions_per_lead": round(transitions_total * per_lead, 3),
        "paths": sf["paths"],
        "task_errors": sf["task_errors"],
        "event_types": sf["event_types"],
    }

    # --- cost per 1,000 leads (the pipeline; polling apart) --------------------------------------
    pipeline_invocations = sum(r["invocations"] for r in lambda_rows if not r["polling"])
    pipeline_gb_s = sum(r["gb_s"] for r in lambda_rows if not r["polling"])
    api_pipeline = sum(v for k, v in raw["api_metered"].items() if k in ("upsert", "score"))
    wru = ddb_sum(ddb.wru, pipeline_all) + ddb_sum(ddb.wru_index, pipeline_all)
    rru = ddb_sum(ddb.rru, pipeline_all)
    lines = [
        ("API Gateway HTTP API", "requests", api_pipeline, APIGW_USD_PER_REQUEST),
        ("Lambda", "requests", pipeline_invocations, LAMBDA_USD_PER_REQUEST),
        ("Lambda", "GB-s (arm64)", pipeline_gb_s, LAMBDA_USD_PER_GB_S_ARM64),
        ("Step Functions Standard", "state transitions", transitions_total, SFN_USD_PER_TRANSITION),
        ("SQS", "requests", sqs_model["total"], SQS_USD_PER_REQUEST),
        ("DynamoDB on-demand", "write request units", wru, DDB_USD_PER_WRU),
        ("DynamoDB on-demand", "read request units", rru, DDB_USD_PER_RRU),
    ]
    cost_rows = [
        {
            "service": service,
            "unit": unit,
            "per_1000_leads": round(quantity * scale, 3),
            "unit_price_usd": price,
            "usd_per_1000_leads": quantity * scale * price,
        }
        for service, unit, quantity, price in lines
    ]
    total = sum(r["usd_per_1000_leads"] for r in cost_rows)
    gb_s_cpu = sum(r["gb_s_cpu"] for r in lambda_rows if not r["polling"])
    lambda_cpu = {
        "gb_s_per_1000_leads": round(gb_s_cpu * scale, 2),
        "usd_per_1000_leads": gb_s_cpu * scale * LAMBDA_USD_PER_GB_S_ARM64,
        "total_usd": total
        - pipeline_gb_s * scale * LAMBDA_USD_PER_GB_S_ARM64
        + gb_s_cpu * scale * LAMBDA_USD_PER_GB_S_ARM64,
    }
    polling_rows = [r for r in lambda_rows if r["polling"]]
    polling: dict[str, Any] = {
        "api_requests": raw["api_metered"].get("polling", 0),
        "poll_rounds": raw["poll_rounds"],
        "lambda_invocations": sum(r["invocations"] for r in polling_rows),
        "lambda_gb_s": round(sum(r["gb_s"] for r in polling_rows), 3),
        "dynamodb_calls": dynamodb["polling_calls"],
        "dynamodb_rru": dynamodb["polling_rru"],
    }
    polling["usd_this_run"] = (
        polling["api_requests"] * APIGW_USD_PER_REQUEST
        + polling["lambda_invocations"] * LAMBDA_USD_PER_REQUEST
        + polling["lambda_gb_s"] * LAMBDA_USD_PER_GB_S_ARM64
        + polling["dynamodb_rru"] * DDB_USD_PER_RRU
        + dynamodb["polling_wru"] * DDB_USD_PER_WRU
    )
    ledger = raw["ledger"]
    model = {
        **ledger,
        "usd": ledger["cost_micros_leads"] / 1_000_000,
        "usd_per_1000_leads": ledger["cost_micros_leads"] / 1_000_000 * scale,
        "provider_calls": raw["simulator"].get("requests"),
    }
    return {
        "leads": n,
        "timing": timing,
        "score_calls": raw["score_calls"],
        "score_batch": raw["score_batch"],
        "outcomes": outcomes,
        "lambda": lambda_rows,
        "lambda_by_action": by_action,
        "dynamodb": dynamodb,
        "sqs": sqs,
        "stepfunctions": stepfunctions,
        "api_gateway": {
            "requests": raw["api_requests"],
            "metered_512kb": raw["api_metered"],
            "retries": raw["api_retries"],
        },
        "meter_overhead_s": round(ddb.overhead_s, 2),
        "cost_per_1000_leads": {
            "rows": cost_rows,
            "total_usd": total,
            "prices_as_of": PRICES_AS_OF,
            "lambda_on_cpu_time": lambda_cpu,
        },
        "polling": polling,
        "model": model,
        "timed_out": raw["timed_out"],
        "quiet": raw["quiet"],
        "lead_bytes_mean": raw["lead_bytes_mean"],
        "meter_errors": {**ddb.meter_errors, **{f"sqs {k}": v for k, v in sq.meter_errors.items()}},
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _usd(value: float) -> str:
    return f"${value:.4f}" if value >= 0.0001 or value == 0 else f"${value:.6f}"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(fig: dict[str, Any], env: dict[str, Any]) -> str:
    from bench.report import heading, table

    n = fig["leads"]
    t, o = fig["timing"], fig["outcomes"]
    out = [heading(f"Lead scoring: {n} leads through the embedded runtime (simulated provider)")]
    out.append(
        f"  seed {SEED}; mean lead {fig['lead_bytes_mean']:.0f} bytes of JSON; {CHUNK} leads per POST /v1/leads"
        f" (score=never); then {fig['score_calls']} POST /v1/leads/score of ≤{fig['score_batch']} lead_ids"
        f" (Idempotency-Key), "
        + (
            f"paced: at most {env['in_flight']} jobs queued or running (--in-flight; 0 sends all at once)"
            if env["in_flight"]
            else "all at once (--in-flight 0)"
        )
        + f"; polled with GET /v1/jobs?status=queued|processing every {env['poll_interval_s']:g} s"
    )
    if fig["timed_out"]:
        out.append(
            f"  !! TIMED OUT after {env['timeout_s']:g} s: {o['terminal']}/{o['jobs']} jobs terminal;"
            " the figures below cover what finished (rerun with a larger --timeout)"
        )
    elif not fig["quiet"]:
        out.append(f"  !! the stack was still busy {QUIET_TIMEOUT_S:g} s after the last job ended: counts may be short")

    rows = [
        ["wall time, first upsert → last job terminal (max updated_at)", f"{_num(t['wall_s'], 1)} s"],
        ["throughput", f"{_num(t['leads_per_s'])} leads/s"],
        [
            "upserts done / last score request sent (since first upsert)",
            f"{t['upsert_s']:.2f} s / {_num(t['queue_s'], 2)} s",
        ],
        ["bench noticed the last job (poll granularity)", f"{t['noticed_s']:.1f} s"],
        [
            "per-job latency created_at → updated_at: p50 / p95 / max",
            f"{_num(t['job_latency_s']['p50'], 1)} / {_num(t['job_latency_s']['p95'], 1)} /"
            f" {_num(t['job_latency_s']['max'], 1)} s",
        ],
        ["jobs: queued / terminal", f"{o['jobs']} / {o['terminal']}"],
        ["  status", ", ".join(f"{k} {v}" for k, v in o["status"].items()) or "-"],
        ["  scorer (llm / rules)", ", ".join(f"{k} {v}" for k, v in o["scorer"].items()) or "-"],
        ["  served_by", ", ".join(f"{k} {v}" for k, v in o["served_by"].items()) or "-"],
        ["  tier", ", ".join(f"{k} {v}" for k, v in o["tier"].items()) or "-"],
    ]
    if o["errors"]:
        rows.append(["  errors", ", ".join(f"{k} {v}" for k, v in o["errors"].items())])
    a = fig["api_gateway"]
    rows.append(["API requests (bench)", ", ".join(f"{k} {v}" for k, v in a["requests"].items() if k != "warmup")])
    if a["retries"]:
        rows.append(
            [
                "  polls answered 5xx/409/429 (repeated next round)",
                ", ".join(f"{k} {v}" for k, v in a["retries"].items()),
            ]
        )
    if o["degraded_reason"]:
        rows.append(["  degraded_reason", ", ".join(f"{k} {v}" for k, v in o["degraded_reason"].items())])
    out.append(table(["", ""], rows, align="ll"))

    # Lambda
    out.append("")
    out.append(
        "  Lambda invocations (LocalStack.invoke, wrapped): wall ms is what Lambda would bill, here inflated by every"
        " other thread of the runtime (GIL, one DynamoDB lock, 2 shared cores); CPU ms is the invoking thread's"
        " CPU (handler + moto in-process, no waiting). GB-s = memory × wall ms rounded up to 1 ms."
    )
    lambda_rows = [
        [
            r["function"] + (" (bench polling)" if r["polling"] else ""),
            str(r["memory_mb"]),
            str(r["invocations"]),
            f"{r['per_lead']:.3f}",
            _num(r["p50_ms"], 1),
            _num(r["p95_ms"], 1),
            _num(r["cpu_p50_ms"], 1),
            f"{r['gb_s']:.2f}",
            f"{r['gb_s_per_lead'] * 1000:.1f}",
        ]
        for r in fig["lambda"]
        if r["invocations"] or r["timed"]
    ]
    out.append(
        "  "
        + table(
            ["function", "MB", "invocations", "per lead", "wall p50 ms", "wall p95 ms", "CPU p50 ms", "GB-s",
             "GB-s/1k leads"],
            lambda_rows,
        ).replace("\n", "\n  ")
    )  # fmt: skip
    for r in fig["lambda"]:
        if r["over_timeout"]:
            out.append(
                f"  !! {r['over_timeout']} {r['function']} invocations ran longer than its {r['timeout_s']} s timeout"
                " (not enforced locally; on AWS they would have failed)"
            )
    actions = ", ".join(
        f"{label.split(':', 1)[1]} {a['invocations']} (p50 {_num(a['p50_ms'], 0)} ms)"
        for label, a in fig["lambda_by_action"].items()
    )
    if actions:
        out.append(f"    workflow by action: {actions}")

    # DynamoDB
    d = fig["dynamodb"]
    out.append("")
    out.append(
        f"  DynamoDB requests of the pipeline (every request moto served, the bench's polling apart):"
        f" {d['pipeline_calls']} = {d['pipeline_calls_per_lead']:.2f} per lead ({d['pipeline_refused']} refused:"
        f" a failed condition or a cancelled transaction); WRU {d['pipeline_wru_table']:.0f} table +"
        f" {d['pipeline_wru_index']:.0f} GSI, RRU {d['pipeline_rru']:.0f}"
    )
    out.append(
        "  "
        + table(
            ["operation", "calls", "per lead", "refused", "WRU/lead", "RRU/lead"],
            [
                [r["operation"], str(r["calls"]), f"{r['per_lead']:.3f}", str(r["refused"]),
                 f"{r['wru_per_lead']:.2f}", f"{r['rru_per_lead']:.2f}"]
                for r in d["by_operation"]
            ],
        ).replace("\n", "\n  ")
    )  # fmt: skip
    out.append("")
    out.append("  DynamoDB by caller (function, or workflow:action), operation and table:")
    out.append(
        "  "
        + table(
            ["caller", "operation", "table", "calls", "per lead", "refused", "WRU/lead (GSI)", "RRU/lead"],
            [
                [(r["caller"] + ("" if r["pipeline"] else " (polling)")), r["operation"], r["table"], str(r["calls"]),
                 f"{r['per_lead']:.3f}", str(r["refused"]), f"{r['wru_per_lead']:.2f} ({r['wru_index_per_lead']:.2f})",
                 f"{r['rru_per_lead']:.2f}"]
                for r in d["requests"]
            ],
            align="lllrrrrr",
        ).replace("\n", "\n  ")
    )  # fmt: skip
    errors = d["raw"]["errors"]
    if errors:
        text = ", ".join(f"{e['caller']} {e['operation']} {e['error']} {e['count']}" for e in errors)
        out.append(f"  refused requests by error: {text}")

    # SQS
    s = fig["sqs"]
    m = s["model"]
    out.append("")
    out.append(
        f"  SQS (AWS model): {m['total']} requests = {s['per_lead']:.3f} per lead: sends {m['send_requests']}"
        f" (64 KB chunks, {s['messages_sent']} messages), receives with messages {m['receive_requests']},"
        f" DeleteMessageBatch {m['delete_batch_requests']} (one per delivered batch),"
        f" ChangeMessageVisibility {m['change_visibility_requests']}"
    )
    local = s["local"]
    out.append(
        f"    locally: {local['receives']} receives ({local['empty_receives']} empty, excluded),"
        f" {local['messages_received']} messages received, {local['delete_message']} single DeleteMessage calls"
    )

    # Step Functions
    f = fig["stepfunctions"]
    out.append("")
    sampled = f" (a SAMPLE of {f['histories_read']}: time ran out)" if f["sampled"] else ""
    out.append(
        f"  Step Functions: {f['executions']} executions ({f['executions_per_lead']:.3f} per lead), histories read"
        f" {f['histories_read']}{sampled} in {f['read_s']:.1f} s; billed transitions = states entered + retries:"
        f" {f['mean_transitions_per_execution']:.2f} per execution, {f['transitions_per_lead']:.2f} per lead"
        f" ({f['retries']} retries; *StateEntered + *StateExited events: {_num(f['mean_entered_plus_exited'])})"
    )
    for path, count in list(f["paths"].items())[:5]:
        out.append(f"    {count} × {path}")
    for error, count in list(f["task_errors"].items())[:5]:
        out.append(f"    failed task attempts: {count} × {error}")

    # Cost
    c = fig["cost_per_1000_leads"]
    out.append("")
    out.append(
        f"  Projected AWS cost per 1,000 leads, excluding the model (us-east-1, on-demand, no free tier,"
        f" prices as of {c['prices_as_of']}; from this run's counts × 1000/{n}):"
    )
    cost_rows = [
        [
            r["service"],
            r["unit"],
            _num(r["per_1000_leads"], 2),
            f"{r['unit_price_usd']:.10f}".rstrip("0"),
            _usd(r["usd_per_1000_leads"]),
        ]
        for r in c["rows"]
    ]
    cost_rows.append(["total", "", "", "", _usd(c["total_usd"])])
    out.append(
        "  " + table(["service", "unit", "per 1,000 leads", "USD per unit", "USD"], cost_rows).replace("\n", "\n  ")
    )
    alt = c["lambda_on_cpu_time"]
    out.append(
        f"  Lambda GB-s above are wall-clock durations under this process's contention (an upper bound); on the"
        f" invoking threads' CPU time instead: {alt['gb_s_per_1000_leads']:,.1f} GB-s ="
        f" {_usd(alt['usd_per_1000_leads'])}, total {_usd(alt['total_usd'])} per 1,000 leads. Neither models a"
        " real model's latency (the simulator answers at once): each second a 512 MB Run task waits on a provider"
        " adds 0.5 GB-s ($0.0067 per 1,000 leads)."
    )
    p = fig["polling"]
    out.append(
        f"  not included: this bench's polling ({p['poll_rounds']} rounds, {p['api_requests']} API requests,"
        f" {p['lambda_invocations']} jobs invocations, {p['dynamodb_calls']} DynamoDB calls /"
        f" {p['dynamodb_rru']:.0f} RRU)"
        f" cost {_usd(p['usd_this_run'])} this run; empty SQS long polls; CloudWatch logs and metrics; X-Ray;"
        " storage; data transfer."
    )
    mo = fig["model"]
    out.append(
        f"  model (simulated-provider pricing, from the ledger): {mo['rows_feature_leads']} rows of feature leads,"
        f" cost_micros {mo['cost_micros_leads']} = {_usd(mo['usd'])} this run, {_usd(mo['usd_per_1000_leads'])}"
        f" per 1,000 leads; models {mo['by_model']}; provider calls {mo['provider_calls']}"
    )
    out.append(
        f"  the DynamoDB meter's own time (item sizes, inside the runtime's DynamoDB lock):"
        f" {fig['meter_overhead_s']:.1f} s"
    )
    if fig["meter_errors"]:
        out.append(f"  !! meter errors (counts may be short): {fig['meter_errors']}")
    out.append(
        f"  logs: {os.path.relpath(LOG, ROOT)}; load avg {env.get('loadavg_start')} → {env.get('loadavg_end')};"
        f" total {env.get('total_s', 0):.1f} s"
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _bootstrap_path() -> None:
    for folder in (ROOT, ROOT / "functions", ROOT / "layers" / "shared" / "python"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench leads", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--leads", type=int, default=DEFAULT_LEADS, help="leads to score (default 1000)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds from the first upsert (default 300 + 1.5 s per lead)"
    )
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_S, help="seconds between job polls")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=IN_FLIGHT,
        help=f"at most this many jobs queued or running, scored in calls of half that (default {IN_FLIGHT});"
        " 0: every lead at once, in calls of 500",
    )
    args = parser.parse_args(argv)
    if args.leads < 1:
        parser.error("--leads must be at least 1")
    if args.in_flight < 0:
        parser.error("--in-flight must be 0 (no limit) or more")
    if args.poll_interval <= 0:
        parser.error("--poll-interval must be positive")
    if args.timeout is None:
        args.timeout = 300 + 1.5 * args.leads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    os.environ.update(QUIET_ENV)
    _bootstrap_path()
    env: dict[str, Any] = {
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "leads": args.leads,
        "timeout_s": args.timeout,
        "poll_interval_s": args.poll_interval,
        "in_flight": args.in_flight,
        "cpus": os.cpu_count(),
    }
    BUILD.mkdir(parents=True, exist_ok=True)
    # The whole run writes fds 1 and 2 to the log (the runtime's threads may print after it);
    # the report and progress lines go to the real stdout and stderr.
    with fds_to(LOG) as (out, err):
        try:
            raw = run(args.leads, args.timeout, args.poll_interval, args.in_flight, err)
            fig = figures(raw)
        except BaseException:
            import traceback

            traceback.print_exc(file=err)
            traceback.print_exc()
            print(f"leads: FAILED (details above; the gateway's logs: {os.path.relpath(LOG, ROOT)})", file=err)
            err.flush()
            os._exit(3)  # moto's execution threads may still be running: do not wait for them
        env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        env["total_s"] = time.perf_counter() - started
        print(render(fig, env), file=out)
        RESULTS.write_text(json.dumps({"environment": env, "results": fig}, indent=2, default=str) + "\n")
        print(f"\nresults: {os.path.relpath(RESULTS, ROOT)}    leads run time {env['total_s']:.1f} s", file=out)
        failed = fig["outcomes"]["status"].get("failed", 0) + fig["outcomes"]["not_queued"]
        code = 2 if fig["timed_out"] else 1 if failed or fig["meter_errors"] else 0
        if fig["timed_out"]:
            pending = fig["outcomes"]["pending_at_end"]
            print(f"leads: TIMED OUT after {args.timeout:g} s with {pending} jobs not terminal", file=err)
        if fig["timed_out"] or not fig["quiet"]:
            out.flush()
            err.flush()
            os._exit(code)  # the stack was left running (see run()): end the process, not its threads
    return code


if __name__ == "__main__":
    sys.exit(main())
