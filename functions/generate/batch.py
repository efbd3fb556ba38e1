"""POST /v1/batch: up to ten generate requests at once, each answered on its own.

Items run side by side, each exactly as POST /v1/generate would run it (its own request id
`<batch id>-<index>`, rate-limit token, cache lookup, budget reservation, fallback chain and ledger
rows), under one deadline: the caller's `deadline_ms` or the function's, whichever is sooner. The
completion path never starts a provider attempt it cannot finish before that deadline, so every
item ends in time; an item still running when the deadline has passed anyway is reported as 504
and its thread is left to settle its own ledger row. One item's failure never fails another: the
batch answers 200 with a status per item, like a multi-status response.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigateway.api import Deadline, validation_failed
from aigateway.completion import CallContext, Completions
from aigateway.errors import GatewayError, ProviderTimeout
from aigateway.experiments import ExperimentConfigs
from aigateway.generation import GenerateRequest, GenerateResponse, generate
from aigateway.observability import logger
from aigateway.prompts.registry import TemplateRegistry

MAX_ITEMS = 10
# After the deadline, wait this much longer for items finishing their ledger writes before reporting 504.
SETTLE_GRACE_S = 0.5


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Items are validated one by one (a bad item is that item's 422, not the batch's).
    requests: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_ITEMS, description="Up to 10 bodies of POST /v1/generate"
    )
    deadline_ms: int | None = Field(
        default=None, ge=1000, le=29_000, description="Answer within this many milliseconds (default: 29 s)"
    )


class BatchItem(BaseModel):
    index: int
    status: int = Field(description="The HTTP status this item would have had on POST /v1/generate")
    result: GenerateResponse | None = None
    error: dict[str, Any] | None = Field(default=None, description="The error body's `error` object")


class BatchResponse(BaseModel):
    request_id: str
    succeeded: int
    failed: int
    cost_micros: int = Field(description="What the batch cost in total, in micro-USD")
    items: list[BatchItem]


def run_batch(
    batch: BatchRequest,
    ctx: CallContext,
    *,
    templates: TemplateRegistry,
    completions: Completions,
    experiments: ExperimentConfigs | None = None,
) -> BatchResponse:
    deadline = ctx.deadline
    if batch.deadline_ms is not None:
        deadline = Deadline(min(deadline.at, time.monotonic() + batch.deadline_ms / 1000))

    def run(index: int, body: dict[str, Any]) -> BatchItem:
        item_ctx = replace(ctx, request_id=f"{ctx.request_id}-{index:02d}", deadline=deadline)
        try:
            request = _parse_item(body)
            response, _ = generate(
                request, item_ctx, templates=templates, completions=completions, experiments=experiments
            )
        except GatewayError as exc:
            return _failed(index, exc, item_ctx.request_id)
        except Exception:  # noqa: BLE001 - a bug in one item must not lose the others' answers
            logger().exception("batch item failed", extra={"index": index})
            return _failed(index, GatewayError("internal error; quote the request_id to support"), item_ctx.request_id)
        return BatchItem(index=index, status=200, result=response)

    pool = ThreadPoolExecutor(max_workers=len(batch.requests), thread_name_prefix="batch")
    # Each item runs in a copy of this request's context: its DynamoDB calls count toward the request.
    futures = [pool.submit(contextvars.copy_context().run, run, i, body) for i, body in enumerate(batch.requests)]
    wait(futures, timeout=deadline.remaining_s() + SETTLE_GRACE_S)
    pool.shutdown(wait=False)  # a straggler finishes (and bills) on its own; it is not waited for
    items = []
    for index, future in enumerate(futures):
        if future.done():
            items.append(future.result())
        else:
            late = ProviderTimeout("the item did not finish within the batch's deadline")
            items.append(_failed(index, late, f"{ctx.request_id}-{index:02d}"))
    ok = [i for i in items if i.result is not None]
    return BatchResponse(
        request_id=ctx.request_id,
        succeeded=len(ok),
        failed=len(items) - len(ok),
        cost_micros=sum(i.result.cost_micros for i in ok if i.result is not None),
        items=items,
    )


def _failed(index: int, error: GatewayError, request_id: str) -> BatchItem:
    body = error.body(request_id)["error"]
    assert isinstance(body, dict)
    return BatchItem(index=index, status=error.status, error=body)


def _parse_item(body: dict[str, Any]) -> GenerateRequest:
    try:
        return GenerateRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Fields are named as POST /v1/generate would name them: an item's answer is that route's.
        raise validation_failed(first, [str(p) for p in first.get("loc", ())]) from None
