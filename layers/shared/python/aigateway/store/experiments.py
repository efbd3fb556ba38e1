"""Prompt experiments and feedback, and the ledger reads they need (key layouts: docs/architecture.md).

- State `TENANT#<t>` / `EXPERIMENT#<template>`: a tenant's experiment on one template (a pinned
  version or weighted variants), its assignment salt and its version (conditional writes). All of
  a tenant's experiments share its partition, so one Query reads them for the 30 s cache.
- State `FEEDBACK#<t>#<template>#<YYYY-MM>` / `<request_id>#<rater>`: one rating per request and
  rater (a repeat replaces it), with what was served copied from the ledger, so a report reads
  feedback without a join. The month is the rated request's ledger month; `-` stands for a
  request made without a template.
- Ledger reads: one request's rows (`TENANT#<t>#<YYYY-MM>`, `begins_with(sk, "<request_id>#")`) and
  a month's rows of one template, filtered server-side and projected to what a report needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aigateway.store.dynamo import ConditionFailed, Dynamo, Item, deserialize, serialize

NO_TEMPLATE = "-"


@dataclass(frozen=True)
class ExperimentsRepo:
    db: Dynamo
    table: str

    @staticmethod
    def _key(tenant_id: str, template: str) -> Item:
        return {"pk": f"TENANT#{tenant_id}", "sk": f"EXPERIMENT#{template}"}

    def get(self, tenant_id: str, template: str) -> Item | None:
        return self.db.get(self.table, self._key(tenant_id, template), consistent=True)

    def all_for(self, tenant_id: str) -> list[Item]:
        """Every experiment of a tenant (one partition, usually one page)."""
        return self.db.query_all(
            self.table, "pk = :p AND begins_with(sk, :s)", {":p": f"TENANT#{tenant_id}", ":s": "EXPERIMENT#"}
        )

    def put(
        self, tenant_id: str, template: str, config: Item, *, salt: str, version: int, at: str, updated_by: str
    ) -> None:
        """Stores version `version`; ConditionFailed if another change got there first."""
        item = {
            **self._key(tenant_id, template),
            "tenant_id": tenant_id,
            "template": template,
            "config": config,
            "salt": salt,
            "version": version,
            "updated_at": at,
            "updated_by": updated_by,
        }
        self.db.put_version(self.table, item)


@dataclass(frozen=True)
class FeedbackRepo:
    db: Dynamo
    table: str

    @staticmethod
    def partition(tenant_id: str, template: str | None, month: str) -> str:
        return f"FEEDBACK#{tenant_id}#{template or NO_TEMPLATE}#{month}"

    def put(
        self, tenant_id: str, template: str | None, month: str, request_id: str, rater: str, attributes: Item
    ) -> Item | None:
        """Stores the rating; returns the one it replaced (None when it is the first).

        First a conditional put (a new rating costs one write); a repeat fails it, gets the old item
        back with the failure (ALL_OLD, no read) and replaces it, keeping its first `created_at`.
        """
        item = {"pk": self.partition(tenant_id, template, month), "sk": f"{request_id}#{rater}", **attributes}
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed as exc:
            previous = exc.item or {}
            self.db.put(self.table, {**item, "created_at": previous.get("created_at", item.get("created_at"))})
            return previous
        return None

    def month(self, tenant_id: str, template: str | None, month: str) -> list[Item]:
        return self.db.query_all(self.table, "pk = :p", {":p": self.partition(tenant_id, template, month)})


# What an experiment report needs from a ledger row (a projection keeps the pages small).
REPORT_ATTRIBUTES = (
    "request_id",
    "attempt",
    "template",
    "variant",
    "locale",
    "model",
    "outcome",
    "error_code",
    "latency_ms",
    "cost_micros",
    "created_at",
)


@dataclass(frozen=True)
class LedgerReads:
    """Read-only views of the Ledger table for feedback and experiment reports."""

    db: Dynamo
    table: str

    def request_rows(self, tenant_id: str, month: str, request_id: str) -> list[Item]:
        """One request's rows (attempts, cache hit, degraded answer), in attempt order."""
        return self.db.query_all(
            self.table,
            "pk = :pk AND begins_with(sk, :rid)",
            {":pk": f"TENANT#{tenant_id}#{month}", ":rid": f"{request_id}#"},
        )

    def template_rows(
        self, tenant_id: str, month: str, template: str, *, first_at: str, end_at: str, max_rows: int
    ) -> tuple[list[Item], bool]:
        """The month's rows of `template` (any version) created in [first_at, end_at) (ISO times).

        DynamoDB applies the filter after reading, so a month's whole partition is read (and paid
        for); only matching rows travel. Returns (rows, complete): False when `max_rows` stopped it.
        """
        names = {f"#a{i}": a for i, a in enumerate(REPORT_ATTRIBUTES)}
        position = {a: f"#a{i}" for i, a in enumerate(REPORT_ATTRIBUTES)}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "FilterExpression": f"begins_with({position['template']}, :tpl) "
            f"AND {position['created_at']} >= :lo AND {position['created_at']} < :hi",
            "ProjectionExpression": ", ".join(names),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": serialize(
                {":pk": f"TENANT#{tenant_id}#{month}", ":tpl": f"{template}@", ":lo": first_at, ":hi": end_at}
            ),
        }
        rows: list[Item] = []
        while True:
            raw = self.db._call("query", **kwargs)  # the store's counted call: Dynamo.query has no filter
            rows.extend(deserialize(i) for i in raw.get("Items", []))
            if len(rows) > max_rows:
                return rows[:max_rows], False
            last = raw.get("LastEvaluatedKey")
            if not last:
                return rows, True
            kwargs["ExclusiveStartKey"] = last
