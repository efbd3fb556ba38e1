"""Tenant-scoped exact-match response cache.

The key is a digest of everything that determines the answer (model, messages, parameters,
output schema, template@version); the tenant id is part of the stored key, so one tenant can never
read another's entry even with the same digest. Only successful, schema-valid answers from the
request's own (primary) model are stored: a fallback model's answer is not pinned for the TTL.
An entry is fresh until `fresh_until`, then kept as *stale* for the template's stale-if-error
window (RFC 5861): a stale entry is never a hit, but it may answer, labelled, when no model can.
DynamoDB TTL (`expires_at`, the end of the stale window) deletes lazily, up to days late, so both
times are checked on every read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from aigateway.store.repos import CacheEntries


def request_digest(parts: dict[str, Any]) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    content: str
    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_micros: int  # what producing it cost: a hit saves this much
    provider: str
    created_at: str
    fresh: bool = True  # False: past its TTL, inside the stale-if-error window
    finish_reason: str = "stop"
    tool_calls: tuple[dict[str, Any], ...] = ()  # an answer that is function calls (OpenAI-compatible route)


class ResponseCache:
    def __init__(self, entries: CacheEntries):
        self.entries = entries

    def get(self, tenant_id: str, digest: str, *, now_epoch: int) -> CachedAnswer | None:
        """The entry, fresh or stale (`fresh=False`); None when absent or past its stale window."""
        item = self.entries.get(tenant_id, digest)
        if item is None or int(item.get("expires_at", 0)) <= now_epoch:
            return None
        fresh_until = int(item.get("fresh_until") or item["expires_at"])
        return CachedAnswer(
            content=item["content"],
            model=item["model"],
            input_tokens=int(item["input_tokens"]),
            cached_tokens=int(item["cached_tokens"]),
            output_tokens=int(item["output_tokens"]),
            cost_micros=int(item["cost_micros"]),
            provider=item["provider"],
            created_at=item["created_at"],
            fresh=now_epoch < fresh_until,
            finish_reason=item.get("finish_reason", "stop"),
            tool_calls=tuple(json.loads(item["tool_calls"])) if item.get("tool_calls") else (),
        )

    def put(
        self,
        tenant_id: str,
        digest: str,
        answer: CachedAnswer,
        *,
        now_epoch: int,
        ttl_seconds: int,
        stale_seconds: int = 0,
    ) -> None:
        if ttl_seconds <= 0:
            return
        self.entries.put(
            tenant_id,
            digest,
            {
                "content": answer.content,
                "model": answer.model,
                "input_tokens": answer.input_tokens,
                "cached_tokens": answer.cached_tokens,
                "output_tokens": answer.output_tokens,
                "cost_micros": answer.cost_micros,
                "provider": answer.provider,
                "created_at": answer.created_at,
                "finish_reason": answer.finish_reason,
                # JSON text, not a map: replayed byte for byte, and no number turns into a Decimal
                **({"tool_calls": json.dumps(answer.tool_calls)} if answer.tool_calls else {}),
                "fresh_until": now_epoch + ttl_seconds,
                "expires_at": now_epoch + ttl_seconds + max(0, stale_seconds),
            },
        )
