"""One small repository per item family. Key layouts are documented in docs/architecture.md."""

from __future__ import annotations

import zlib
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

from aigateway.store.dynamo import ConditionFailed, Dynamo, Item, tx_delete, tx_put, tx_update


@dataclass(frozen=True)
class ApiKeys:
    """API keys, stored only as hashes: State table, pk `APIKEY#<sha256>`."""

    db: Dynamo
    table: str

    @staticmethod
    def _key(key_hash: str) -> Item:
        return {"pk": f"APIKEY#{key_hash}", "sk": "APIKEY"}

    def get(self, key_hash: str) -> Item | None:
        return self.db.get(self.table, self._key(key_hash))

    def create(
        self,
        key_hash: str,
        *,
        key_id: str,
        tenant_id: str,
        user_id: str,
        role: str,
        created_at: str,
        created_by: str | None = None,
    ) -> Item:
        item = {
            **self._key(key_hash),
            "key_id": key_id,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "role": role,
            "status": "active",
            "created_at": created_at,
            "gsi1pk": f"TENANT#{tenant_id}",
            "gsi1sk": f"APIKEY#{key_id}",
        }
        if created_by is not None:
            item["created_by"] = created_by
        self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        return item

    def for_tenant(self, tenant_id: str) -> list[Item]:
        """Every key of a tenant, active or revoked, by key id (gsi1)."""
        return self.db.query_all(
            self.table,
            "gsi1pk = :p AND begins_with(gsi1sk, :s)",
            {":p": f"TENANT#{tenant_id}", ":s": "APIKEY#"},
            index="gsi1",
        )

    def find(self, tenant_id: str, key_id: str) -> Item | None:
        """A tenant's key by its id (gsi1: eventually consistent, fine for an operator's revoke)."""
        items, _ = self.db.query(
            self.table,
            "gsi1pk = :p AND gsi1sk = :s",
            {":p": f"TENANT#{tenant_id}", ":s": f"APIKEY#{key_id}"},
            index="gsi1",
        )
        return items[0] if items else None

    def revoke(self, pk: str, *, revoked_by: str, at: str) -> Item:
        """Marks a key revoked (once: a second revoke keeps the first one's time and author)."""
        return self.db.update(
            self.table,
            {"pk": pk, "sk": "APIKEY"},
            "SET #st = :revoked, revoked_at = if_not_exists(revoked_at, :at), "
            "revoked_by = if_not_exists(revoked_by, :by)",
            names={"#st": "status"},
            values={":revoked": "revoked", ":at": at, ":by": revoked_by},
            condition="attribute_exists(pk)",
        )


@dataclass(frozen=True)
class Tenants:
    """Tenants: State table, pk `TENANT#<id>`, sk `TENANT`."""

    db: Dynamo
    table: str

    def get(self, tenant_id: str) -> Item | None:
        return self.db.get(self.table, {"pk": f"TENANT#{tenant_id}", "sk": "TENANT"})

    def create(self, tenant_id: str, *, name: str, created_at: str) -> Item | None:
        """Creates the tenant once; returns the stored item, or None if it already existed."""
        item = {
            "pk": f"TENANT#{tenant_id}",
            "sk": "TENANT",
            "tenant_id": tenant_id,
            "name": name,
            "status": "active",
            "created_at": created_at,
            "gsi1pk": "TENANTS",
            "gsi1sk": tenant_id,
        }
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return None
        return item

    def all(self) -> list[Item]:
        """Every tenant, by id (gsi1)."""
        return self.db.query_all(self.table, "gsi1pk = :p", {":p": "TENANTS"}, index="gsi1")

    def ids(self) -> list[str]:
        """Every tenant id, in order (for admin exports and sweeps that span tenants)."""
        return [i["tenant_id"] for i in self.all()]


@dataclass(frozen=True)
class TenantSettings:
    """A tenant's governance settings (budgets, rate limits): pk `TENANT#<id>`, sk `GOVERNANCE`."""

    db: Dynamo
    table: str

    @staticmethod
    def _key(tenant_id: str) -> Item:
        return {"pk": f"TENANT#{tenant_id}", "sk": "GOVERNANCE"}

    def get(self, tenant_id: str) -> Item | None:
        return self.db.get(self.table, self._key(tenant_id), consistent=True)

    def put(self, tenant_id: str, governance: Item, *, updated_by: str, at: str) -> None:
        item = {**self._key(tenant_id), "tenant_id": tenant_id, "governance": governance}
        self.db.put(self.table, {**item, "updated_by": updated_by, "updated_at": at})


@dataclass(frozen=True)
class RateLimitBuckets:
    """GCRA state per limited principal: pk `RATE#<tenant>#<scope>:<who>#<feature|*>`, sk `RATE`.

    `tat_us` is the bucket's theoretical arrival time (epoch microseconds); `expires_at` lets
    DynamoDB TTL drop idle buckets (an absent bucket is a full one, so late deletion is harmless).
    """

    db: Dynamo
    table: str

    @staticmethod
    def key(bucket: str) -> Item:
        return {"pk": f"RATE#{bucket}", "sk": "RATE"}

    def take_from_idle(self, bucket: str, *, now_us: int, interval_us: int, expires_at: int) -> Item:
        """The bucket had fully drained (or never existed): TAT restarts at now + interval."""
        return self.db.update(
            self.table,
            self.key(bucket),
            "SET tat_us = :tat, expires_at = :exp",
            values={":tat": now_us + interval_us, ":now": now_us, ":exp": expires_at},
            condition="attribute_not_exists(tat_us) OR tat_us <= :now",
        )

    def take_from_busy(self, bucket: str, *, now_us: int, interval_us: int, max_tat_us: int, expires_at: int) -> Item:
        """The bucket is in use: TAT advances by one interval unless that would exceed the burst."""
        return self.db.update(
            self.table,
            self.key(bucket),
            "SET tat_us = tat_us + :i, expires_at = :exp",
            values={":i": interval_us, ":now": now_us, ":max": max_tat_us, ":exp": expires_at},
            condition="tat_us > :now AND tat_us <= :max",
        )

    def give_back(self, bucket: str, *, interval_us: int) -> None:
        """Undo one admission (another limit refused the request)."""
        with suppress(ConditionFailed):
            self.db.update(
                self.table,
                self.key(bucket),
                "SET tat_us = tat_us - :i",
                values={":i": interval_us},
                condition="attribute_exists(tat_us)",
            )


@dataclass(frozen=True)
class BudgetCounters:
    """One counter per budget and period: pk `BUDGET#<tenant>#<scope>`, sk `<YYYY-MM>`.

    `headroom_micros` is limit − spent − reserved, kept in the item because DynamoDB conditions
    cannot do arithmetic: a reservation is admitted by `headroom_micros >= :amount` in one write.
    gsi1 (`TENANT#<id>`, `BUDGET#<period>#<scope>`) lists a tenant's counters for a period.
    """

    db: Dynamo
    table: str

    @staticmethod
    def key(tenant_id: str, scope: str, period: str) -> Item:
        return {"pk": f"BUDGET#{tenant_id}#{scope}", "sk": period}

    def create(self, tenant_id: str, scope: str, period: str, *, limit_micros: int, thresholds: Item, at: str) -> None:
        item = {
            **self.key(tenant_id, scope, period),
            "tenant_id": tenant_id,
            "scope": scope,
            "period": period,
            "limit_micros": limit_micros,
            "spent_micros": 0,
            "reserved_micros": 0,
            "headroom_micros": limit_micros,
            "created_at": at,
            "gsi1pk": f"TENANT#{tenant_id}",
            "gsi1sk": f"BUDGET#{period}#{scope}",
            **thresholds,
        }
        with suppress(ConditionFailed):  # created concurrently: same limit, same zero counters
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")

    def get_many(self, tenant_id: str, scopes: list[str], period: str) -> list[Item]:
        return self.db.batch_get(self.table, [self.key(tenant_id, s, period) for s in scopes])

    def for_period(self, tenant_id: str, period: str, *, scope_prefix: str = "") -> list[Item]:
        return self.db.query_all(
            self.table,
            "gsi1pk = :p AND begins_with(gsi1sk, :s)",
            {":p": f"TENANT#{tenant_id}", ":s": f"BUDGET#{period}#{scope_prefix}"},
            index="gsi1",
        )

    def reserve_tx(self, tenant_id: str, scope: str, period: str, amount: int) -> dict[str, Any]:
        return tx_update(
            self.table,
            self.key(tenant_id, scope, period),
            "ADD reserved_micros :a, headroom_micros :neg",
            values={":a": amount, ":neg": -amount},
            condition="headroom_micros >= :a",
        )

    def settle_tx(self, tenant_id: str, scope: str, period: str, *, released: int, cost: int) -> dict[str, Any]:
        """Release `released` of the reservation and charge `cost` (headroom moves by the difference)."""
        return tx_update(
            self.table,
            self.key(tenant_id, scope, period),
            "ADD reserved_micros :r, spent_micros :c, headroom_micros :h",
            values={":r": -released, ":c": cost, ":h": released - cost},
            condition="attribute_exists(pk)",
        )

    def set_limit(self, tenant_id: str, scope: str, period: str, *, old: int, new: int, thresholds: Item) -> None:
        """Change a live counter's limit; conditional on the old one so a race cannot lose a change."""
        names = {f"#t{i}": k for i, k in enumerate(thresholds)}
        values: Item = {":old": old, ":new": new, ":delta": new - old}
        sets = ["limit_micros = :new"]
        for i, v in enumerate(thresholds.values()):
            values[f":t{i}"] = v
            sets.append(f"#t{i} = :t{i}")
        self.db.update(
            self.table,
            self.key(tenant_id, scope, period),
            f"SET {', '.join(sets)} ADD headroom_micros :delta",
            values=values,
            names=names,
            condition="limit_micros = :old",
        )

    def claim_alert(self, tenant_id: str, scope: str, period: str, threshold: int, *, at: str) -> bool:
        """Marks `threshold` % as alerted if spend has reached it and nobody marked it before."""
        try:
            self.db.update(
                self.table,
                self.key(tenant_id, scope, period),
                "SET #sent = :at",
                values={":at": at},
                names={"#sent": f"alerted_{threshold}", "#level": f"alert_at_{threshold}"},
                condition="spent_micros >= #level AND attribute_not_exists(#sent)",
            )
        except ConditionFailed:
            return False
        return True

    def unclaim_alert(self, tenant_id: str, scope: str, period: str, threshold: int, *, at: str) -> None:
        """Undo a claim whose message could not be sent, so a later check sends it."""
        with suppress(ConditionFailed):
            self.db.update(
                self.table,
                self.key(tenant_id, scope, period),
                "REMOVE #sent",
                values={":at": at},
                names={"#sent": f"alerted_{threshold}"},
                condition="#sent = :at",
            )


@dataclass(frozen=True)
class Reservations:
    """Open budget reservations: pk `RESV#<request_id>#<attempt>`, sk `RESV`.

    gsi1 (`RESV#<shard>`, `<release_after>#<id>`) lets the sweeper find expired ones; 16 shards keep
    the index's write load off a single partition. The deadline attribute is `release_after`, not
    the table's TTL attribute: TTL would delete an orphan without giving its money back.
    """

    db: Dynamo
    table: str
    SHARDS = 16

    @staticmethod
    def key(reservation_id: str) -> Item:
        return {"pk": f"RESV#{reservation_id}", "sk": "RESV"}

    def put_tx(self, reservation_id: str, attributes: Item, *, release_after: int) -> dict[str, Any]:
        shard = zlib.crc32(reservation_id.encode()) % self.SHARDS
        item = {
            **self.key(reservation_id),
            **attributes,
            "reservation_id": reservation_id,
            "release_after": release_after,
            "gsi1pk": f"RESV#{shard:02d}",
            "gsi1sk": f"{release_after:012d}#{reservation_id}",
        }
        return tx_put(self.table, item, condition="attribute_not_exists(pk)")

    def delete_tx(self, reservation_id: str, *, matching: Item | None = None) -> dict[str, Any]:
        """Deletes the open reservation; with `matching`, only if its attributes are exactly these."""
        if not matching:
            return tx_delete(self.table, self.key(reservation_id), condition="attribute_exists(pk)")
        names = {f"#m{i}": k for i, k in enumerate(matching)}
        values = {f":m{i}": v for i, v in enumerate(matching.values())}
        checks = " AND ".join(f"#m{i} = :m{i}" for i in range(len(matching)))
        return tx_delete(
            self.table,
            self.key(reservation_id),
            condition=f"attribute_exists(pk) AND {checks}",
            values=values,
            names=names,
        )

    def expired(self, now_epoch: int) -> list[Item]:
        """Reservations past their `release_after`, from every shard (queried side by side)."""

        def shard(n: int) -> list[Item]:
            values = {":p": f"RESV#{n:02d}", ":s": f"{now_epoch:012d}#"}
            return self.db.query_all(self.table, "gsi1pk = :p AND gsi1sk < :s", values, index="gsi1")

        per_shard = self.db.parallel(*[partial(shard, n) for n in range(self.SHARDS)])
        return [item for items in per_shard for item in items]


@dataclass(frozen=True)
class Rollups:
    """Usage counters: Ledger table, pk `ROLLUP#<tenant>#<YYYY-MM>`, sk `<day>#<feature>#<model>#<user>`.

    Updated in the same transaction as the ledger row they summarise, so they cannot drift from it.
    """

    db: Dynamo
    table: str

    @staticmethod
    def key(tenant_id: str, day: str, feature: str, model: str, user_id: str) -> Item:
        return {"pk": f"ROLLUP#{tenant_id}#{day[:7]}", "sk": f"{day}#{feature}#{model}#{user_id}"}

    def add_tx(
        self, tenant_id: str, *, day: str, feature: str, model: str, user_id: str, counters: dict[str, int]
    ) -> dict[str, Any]:
        names = {f"#c{i}": k for i, k in enumerate(counters)}
        values: Item = {f":c{i}": v for i, v in enumerate(counters.values())}
        values.update({":t": tenant_id, ":d": day, ":f": feature, ":m": model, ":u": user_id})
        adds = ", ".join(f"#c{i} :c{i}" for i in range(len(counters)))
        return tx_update(
            self.table,
            self.key(tenant_id, day, feature, model, user_id),
            f"SET tenant_id = :t, #day = :d, feature = :f, #model = :m, user_id = :u ADD {adds}",
            values=values,
            names={**names, "#day": "day", "#model": "model"},
        )

    def days(
        self, tenant_id: str, month: str, *, first_day: str | None = None, last_day: str | None = None
    ) -> list[Item]:
        """A month's rollup items, optionally only days in [first_day, last_day] (YYYY-MM-DD)."""
        low, high = first_day or f"{month}-00", last_day or f"{month}-31"
        return self.db.query_all(
            self.table,
            "pk = :p AND sk BETWEEN :lo AND :hi",
            {":p": f"ROLLUP#{tenant_id}#{month}", ":lo": low, ":hi": f"{high}#\uffff"},
        )


@dataclass(frozen=True)
class CacheEntries:
    """Response cache: Cache table, pk `<tenant_id>#<request digest>` (tenant scope is in the key)."""

    db: Dynamo
    table: str

    def get(self, tenant_id: str, digest: str) -> Item | None:
        return self.db.get(self.table, {"pk": f"{tenant_id}#{digest}"})

    def put(self, tenant_id: str, digest: str, attributes: Item) -> None:
        self.db.put(self.table, {"pk": f"{tenant_id}#{digest}", **attributes})


@dataclass(frozen=True)
class LedgerRows:
    """Usage ledger: pk `TENANT#<id>#<YYYY-MM>`, sk `<request_id>#<attempt>`; rows are never updated."""

    db: Dynamo
    table: str

    def put_tx(self, tenant_id: str, month: str, row_id: str, attributes: Item) -> dict[str, Any]:
        """The row as one item of a settlement transaction, conditional on its id."""
        item = {"pk": f"TENANT#{tenant_id}#{month}", "sk": row_id, **attributes}
        return tx_put(self.table, item, condition="attribute_not_exists(pk)")

    def put_once(self, tenant_id: str, month: str, row_id: str, attributes: Item) -> bool:
        """Writes the row unless it exists; False means it was already written (a replay)."""
        item = {"pk": f"TENANT#{tenant_id}#{month}", "sk": row_id, **attributes}
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return False
        return True

    def month(
        self, tenant_id: str, month: str, *, limit: int | None = None, start_key: Item | None = None
    ) -> tuple[list[Item], Item | None]:
        return self.db.query(
            self.table, "pk = :pk", {":pk": f"TENANT#{tenant_id}#{month}"}, limit=limit, start_key=start_key
        )

    def page(self, tenant_id: str, month: str, *, after: str | None, limit: int) -> tuple[list[Item], str | None]:
        """Up to `limit` rows of one tenant-month in row-id order, starting after row id `after`.

        Returns the rows and, when DynamoDB stopped early (the limit or its 1 MB page), the row id
        to continue after; None means the partition is exhausted. The partition key is built here
        from the tenant and month, so a caller's position can never point into another partition.
        """
        pk = f"TENANT#{tenant_id}#{month}"
        items, last = self.db.query(
            self.table,
            "pk = :pk",
            {":pk": pk},
            limit=limit,
            start_key={"pk": pk, "sk": after} if after is not None else None,
        )
        return items, (str(last["sk"]) if last is not None else None)


@dataclass(frozen=True)
class Jobs:
    """Asynchronous jobs: State table, pk `JOB#<id>`, sk `JOB`.

    gsi1 lists a tenant's jobs by creation time; gsi2 lists them by status, then creation time
    (`TENANT#<t>#JOBS#<status>`, moved by every transition), for the jobs API and retry-all-failed.
    """

    db: Dynamo
    table: str

    @staticmethod
    def _key(job_id: str) -> Item:
        return {"pk": f"JOB#{job_id}", "sk": "JOB"}

    @staticmethod
    def status_partition(tenant_id: str, status: str) -> str:
        return f"TENANT#{tenant_id}#JOBS#{status}"

    def get(self, job_id: str) -> Item | None:
        return self.db.get(self.table, self._key(job_id), consistent=True)

    def find(self, tenant_id: str, job_id: str) -> Item | None:
        """The job if it belongs to `tenant_id`; another tenant's job is reported as absent."""
        item = self.get(job_id)
        return item if item is not None and item.get("tenant_id") == tenant_id else None

    def new_item(self, job_id: str, *, tenant_id: str, created_at: str, attributes: Item) -> Item:
        return {
            **self._key(job_id),
            "job_id": job_id,
            "tenant_id": tenant_id,
            "status": "queued",
            "created_at": created_at,
            "updated_at": created_at,
            "gsi1pk": f"TENANT#{tenant_id}#JOBS",
            "gsi1sk": f"{created_at}#{job_id}",
            "gsi2pk": self.status_partition(tenant_id, "queued"),
            "gsi2sk": f"{created_at}#{job_id}",
            **attributes,
        }

    def create(self, job_id: str, *, tenant_id: str, created_at: str, attributes: Item) -> bool:
        item = self.new_item(job_id, tenant_id=tenant_id, created_at=created_at, attributes=attributes)
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return False
        return True

    def create_many(self, items: list[Item]) -> None:
        """Fresh jobs (`new_item`s with new ids, so no condition is needed), 25 per BatchWriteItem."""
        self.db.batch_put(self.table, items)

    def transition(
        self,
        job_id: str,
        *,
        tenant_id: str,
        to: str,
        allowed_from: tuple[str, ...],
        at: str,
        extra: Item | None = None,
        remove: tuple[str, ...] = (),
        add_run: bool = False,
    ) -> Item:
        """Moves a job between states; raises ConditionFailed if it is not in one of `allowed_from`."""
        names = {"#s": "status"}
        values: dict[str, Any] = {":to": to, ":at": at, ":g2": self.status_partition(tenant_id, to)}
        sets = ["#s = :to", "updated_at = :at", "gsi2pk = :g2"]
        for i, (k, v) in enumerate((extra or {}).items()):
            names[f"#e{i}"] = k
            values[f":e{i}"] = v
            sets.append(f"#e{i} = :e{i}")
        if add_run:
            sets.append("runs = if_not_exists(runs, :one) + :one")  # a job starts with one run
            values[":one"] = 1
        allowed = []
        for i, state in enumerate(allowed_from):
            values[f":from{i}"] = state
            allowed.append(f":from{i}")
        expression = "SET " + ", ".join(sets)
        if remove:
            for i, k in enumerate(remove):
                names[f"#r{i}"] = k
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        return self.db.update(
            self.table,
            self._key(job_id),
            expression,
            values=values,
            names=names,
            condition=f"attribute_exists(pk) AND #s IN ({', '.join(allowed)})",
        )

    def succeed_tx(self, job_id: str, *, tenant_id: str, at: str, result: Item) -> dict[str, Any]:
        """The `processing` → `succeeded` transition as a transaction item (written with its outcome)."""
        return tx_update(
            self.table,
            self._key(job_id),
            "SET #s = :to, updated_at = :at, gsi2pk = :g2, #r = :r",
            values={
                ":to": "succeeded",
                ":at": at,
                ":g2": self.status_partition(tenant_id, "succeeded"),
                ":r": result,
                ":from": "processing",
            },
            names={"#s": "status", "#r": "result"},
            condition="attribute_exists(pk) AND #s = :from",
        )

    def page(
        self,
        tenant_id: str,
        *,
        status: str | None,
        since: str,
        until: str,
        limit: int,
        after: Item | None,
    ) -> tuple[list[Item], Item | None]:
        """A tenant's jobs created in [since, until) (ISO times), newest first, optionally of one status.

        `after` is the previous page's last (created_at#job_id, job_id): the partition and the
        table key are rebuilt from the tenant, so no cursor reaches another tenant's jobs.
        """
        index, pk_name, sk_name = ("gsi2", "gsi2pk", "gsi2sk") if status else ("gsi1", "gsi1pk", "gsi1sk")
        pk = self.status_partition(tenant_id, status) if status else f"TENANT#{tenant_id}#JOBS"
        start = None
        if after is not None:
            start = {**self._key(str(after["job_id"])), pk_name: pk, sk_name: after["sk"]}
        return self.db.query(
            self.table,
            f"{pk_name} = :pk AND {sk_name} BETWEEN :lo AND :hi",
            {":pk": pk, ":lo": since, ":hi": until},
            index=index,
            limit=limit,
            forward=False,
            start_key=start,
        )


# Where a tier's leads sort in a tenant's ranking (gsi1): best tier first, never-scored last.
TIER_RANK = {"hot": "1", "warm": "2", "cold": "3", "unscored": "9"}


@dataclass(frozen=True)
class Leads:
    """Leads: State table, partition `TENANT#<t>#LEAD#<id>`.

    sk `LEAD` holds the record, its hash and version, and its latest score; sk `SCORE#<job id>`
    each score's audit record (job ids are time-ordered ULIDs, so the history sorts by time).
    gsi1 ranks a tenant's scored leads: `TENANT#<t>#LEADS`, `<tier rank>#<1000 - score>#<id>`;
    gsi2 orders them by when they were last scored (`0` for never): the stale re-score reads it.
    """

    db: Dynamo
    table: str

    @staticmethod
    def _pk(tenant_id: str, lead_id: str) -> str:
        return f"TENANT#{tenant_id}#LEAD#{lead_id}"

    def key(self, tenant_id: str, lead_id: str) -> Item:
        return {"pk": self._pk(tenant_id, lead_id), "sk": "LEAD"}

    @staticmethod
    def rank_partition(tenant_id: str) -> str:
        return f"TENANT#{tenant_id}#LEADS"

    @staticmethod
    def age_partition(tenant_id: str) -> str:
        return f"TENANT#{tenant_id}#LEADS#BY_SCORED"

    @classmethod
    def rank_key(cls, tier: str, score: int | None, lead_id: str) -> str:
        return f"{TIER_RANK[tier]}#{1000 - (score or 0):04d}#{lead_id}"

    def get(self, tenant_id: str, lead_id: str) -> Item | None:
        return self.db.get(self.table, self.key(tenant_id, lead_id), consistent=True)

    def get_many(self, tenant_id: str, lead_ids: list[str]) -> dict[str, Item]:
        """The leads that exist among `lead_ids`, by id (100 keys per BatchGetItem)."""
        found: dict[str, Item] = {}
        unique = list(dict.fromkeys(lead_ids))
        for i in range(0, len(unique), 100):
            keys = [self.key(tenant_id, lid) for lid in unique[i : i + 100]]
            for item in self.db.batch_get(self.table, keys, consistent=True):
                found[str(item["lead_id"])] = item
        return found

    def upsert(self, tenant_id: str, lead_id: str, *, data: Item, data_hash: str, at: str, version: int | None) -> Item:
        """Writes the record if it is still at `version` (None: it must not exist yet); the score,
        the ranking keys and any pending re-score are left as they are. ConditionFailed otherwise."""
        values: dict[str, Any] = {
            ":data": data,
            ":h": data_hash,
            ":at": at,
            ":v": (version or 0) + 1,
            ":lid": lead_id,
            ":tid": tenant_id,
            ":g1": self.rank_partition(tenant_id),
            ":g1sk": self.rank_key("unscored", None, lead_id),
            ":g2": self.age_partition(tenant_id),
            ":g2sk": f"0#{lead_id}",
        }
        sets = [
            "#d = :data",
            "data_hash = :h",
            "updated_at = :at",
            "version = :v",
            "lead_id = :lid",
            "tenant_id = :tid",
            "created_at = if_not_exists(created_at, :at)",
            "gsi1pk = :g1",
            "gsi1sk = if_not_exists(gsi1sk, :g1sk)",
            "gsi2pk = :g2",
            "gsi2sk = if_not_exists(gsi2sk, :g2sk)",
        ]
        if version is None:
            condition = "attribute_not_exists(pk)"
        else:
            condition = "version = :old"
            values[":old"] = version
        return self.db.update(
            self.table,
            self.key(tenant_id, lead_id),
            "SET " + ", ".join(sets),
            values=values,
            names={"#d": "data"},
            condition=condition,
        )

    def score_record_tx(self, tenant_id: str, lead_id: str, job_id: str, record: Item) -> dict[str, Any]:
        """A score's audit record, once per job (a repeated Persist cannot write a second)."""
        item = {"pk": self._pk(tenant_id, lead_id), "sk": f"SCORE#{job_id}", **record}
        return tx_put(self.table, item, condition="attribute_not_exists(pk)")

    def set_latest(self, tenant_id: str, lead_id: str, *, summary: Item, tier: str, score: int, scored_at: str) -> bool:
        """Makes this the lead's latest score unless a later one is already there; False if it was."""
        try:
            self.db.update(
                self.table,
                self.key(tenant_id, lead_id),
                "SET latest = :s, gsi1sk = :g1sk, gsi2sk = :g2sk",
                values={
                    ":s": summary,
                    ":at": scored_at,
                    ":g1sk": self.rank_key(tier, score, lead_id),
                    ":g2sk": f"{scored_at}#{lead_id}",
                },
                condition="attribute_exists(pk) AND (attribute_not_exists(latest) OR latest.scored_at <= :at)",
            )
        except ConditionFailed:
            return False
        return True

    def history(self, tenant_id: str, lead_id: str, *, limit: int, after: str | None) -> tuple[list[Item], str | None]:
        """Score audit records, newest first; `after` is the previous page's last job id."""
        pk = self._pk(tenant_id, lead_id)
        items, last = self.db.query(
            self.table,
            "pk = :pk AND begins_with(sk, :p)",
            {":pk": pk, ":p": "SCORE#"},
            limit=limit,
            forward=False,
            start_key={"pk": pk, "sk": f"SCORE#{after}"} if after else None,
        )
        return items, (str(last["sk"]).removeprefix("SCORE#") if last else None)

    def ranked(
        self, tenant_id: str, *, tier: str | None, limit: int, after: str | None
    ) -> tuple[list[Item], str | None]:
        """Leads best first (hot, warm, cold, then unscored; by score within a tier), or one tier's.

        `after` is the previous page's last gsi1 sort key; the lead's table key is rebuilt from it
        under this tenant's partition.
        """
        pk = self.rank_partition(tenant_id)
        condition, values = "gsi1pk = :pk", {":pk": pk}
        if tier is not None:
            condition += " AND begins_with(gsi1sk, :t)"
            values[":t"] = TIER_RANK[tier] + "#"
        start = None
        if after:
            start = {**self.key(tenant_id, after.rsplit("#", 1)[-1]), "gsi1pk": pk, "gsi1sk": after}
        items, last = self.db.query(self.table, condition, values, index="gsi1", limit=limit, start_key=start)
        return items, (str(last["gsi1sk"]) if last else None)

    def scored_before(self, tenant_id: str, before: str, *, limit: int) -> list[Item]:
        """Leads whose latest score is older than `before` (ISO time), never-scored ones first."""
        items, _ = self.db.query(
            self.table,
            "gsi2pk = :pk AND gsi2sk < :before",
            {":pk": self.age_partition(tenant_id), ":before": before},
            index="gsi2",
            limit=limit,
        )
        return items

    def claim_rescore(self, tenant_id: str, lead_id: str, *, job_id: str, at: str, unless_since: str) -> bool:
        """Marks a re-score as pending unless one was queued since `unless_since`; False if one was."""
        try:
            self.db.update(
                self.table,
                self.key(tenant_id, lead_id),
                "SET pending_job = :j, pending_since = :at",
                values={":j": job_id, ":at": at, ":since": unless_since},
                condition="attribute_exists(pk) AND (attribute_not_exists(pending_job) OR pending_since < :since)",
            )
        except ConditionFailed:
            return False
        return True

    def release_rescore(self, tenant_id: str, lead_id: str, *, job_id: str) -> None:
        """Clears the pending re-score mark if it is still this job's."""
        with suppress(ConditionFailed):
            self.db.update(
                self.table,
                self.key(tenant_id, lead_id),
                "REMOVE pending_job, pending_since",
                values={":j": job_id},
                condition="pending_job = :j",
            )


@dataclass(frozen=True)
class ScoringSettingsRepo:
    """A tenant's lead-scoring settings: pk `TENANT#<id>`, sk `SCORING`, versioned."""

    db: Dynamo
    table: str

    @staticmethod
    def _key(tenant_id: str) -> Item:
        return {"pk": f"TENANT#{tenant_id}", "sk": "SCORING"}

    def get(self, tenant_id: str) -> Item | None:
        return self.db.get(self.table, self._key(tenant_id), consistent=True)

    def put(self, tenant_id: str, settings: Item, *, version: int, at: str, updated_by: str) -> None:
        """Stores version `version`; ConditionFailed if another change got there first."""
        item = {
            **self._key(tenant_id),
            "settings": settings,
            "version": version,
            "updated_at": at,
            "updated_by": updated_by,
        }
        self.db.put_version(self.table, item)


@dataclass(frozen=True)
class Circuits:
    """Circuit breakers, one per provider × model: State table, pk `CIRCUITS`, sk `<provider>#<model>`.

    `failures` and `successes` count the calls of the current fixed window (`window_start_ms`).

    One partition, so a single Query reads every circuit (there are few, and each execution
    environment reads them at most every couple of seconds). Times are epoch milliseconds.
    A circuit is `closed` or `open`; an open one whose `open_until_ms` has passed is half-open,
    and `probe_id` marks the one caller allowed to probe it until `probe_until_ms`.
    """

    db: Dynamo
    table: str
    PK = "CIRCUITS"

    def _key(self, circuit: str) -> Item:
        return {"pk": self.PK, "sk": circuit}

    def all(self) -> list[Item]:
        return self.db.query_all(self.table, "pk = :p", {":p": self.PK})

    def count(self, circuit: str, *, failures: int, successes: int, now_ms: int, window_ms: int) -> Item:
        """Adds calls to the circuit's current window (or starts a new one); returns the item."""
        cut = now_ms - window_ms
        values = {":f": failures, ":s": successes, ":now": now_ms, ":cut": cut}
        for _ in range(2):  # a window started by someone else between the two branches: once more
            try:
                return self.db.update(
                    self.table,
                    self._key(circuit),
                    "ADD failures :f, successes :s SET updated_ms = :now",
                    values=values,
                    condition="window_start_ms > :cut",
                )
            except ConditionFailed:
                pass
            try:
                return self.db.update(
                    self.table,
                    self._key(circuit),
                    "SET failures = :f, successes = :s, window_start_ms = :now, updated_ms = :now",
                    values=values,
                    condition="attribute_not_exists(window_start_ms) OR window_start_ms <= :cut",
                )
            except ConditionFailed:
                pass
        raise RuntimeError(f"circuit {circuit}: calls not counted after two tries")  # pragma: no cover

    def open(self, circuit: str, *, now_ms: int, until_ms: int) -> bool:
        """Closed → open; False if it was already open (someone else opened it first)."""
        try:
            self.db.update(
                self.table,
                self._key(circuit),
                "SET circuit_state = :open, open_until_ms = :until, opened_ms = :now, updated_ms = :now "
                "REMOVE probe_id, probe_until_ms",
                values={":open": "open", ":closed": "closed", ":until": until_ms, ":now": now_ms},
                condition="attribute_not_exists(circuit_state) OR circuit_state = :closed",
            )
        except ConditionFailed:
            return False
        return True

    def claim_probe(self, circuit: str, probe_id: str, *, now_ms: int, lease_ms: int) -> bool:
        """Half-open: the first caller to claim the probe gets it, for `lease_ms`; the rest do not."""
        try:
            self.db.update(
                self.table,
                self._key(circuit),
                "SET probe_id = :id, probe_until_ms = :lease",
                values={":id": probe_id, ":lease": now_ms + lease_ms, ":now": now_ms, ":open": "open"},
                condition="circuit_state = :open AND open_until_ms <= :now "
                "AND (attribute_not_exists(probe_until_ms) OR probe_until_ms <= :now)",
            )
        except ConditionFailed:
            return False
        return True

    def end_probe(self, circuit: str, probe_id: str, *, now_ms: int, reopen_until_ms: int | None) -> bool:
        """The probe's verdict: closed again (None), or open until `reopen_until_ms`."""
        values: Item = {":id": probe_id, ":now": now_ms}
        if reopen_until_ms is None:
            expression = (
                "SET circuit_state = :closed, failures = :zero, successes = :zero, window_start_ms = :now, "
                "updated_ms = :now "
                "REMOVE probe_id, probe_until_ms, open_until_ms"
            )
            values.update({":closed": "closed", ":zero": 0})
        else:
            expression = (
                "SET open_until_ms = :until, opened_ms = :now, updated_ms = :now REMOVE probe_id, probe_until_ms"
            )
            values[":until"] = reopen_until_ms
        try:
            self.db.update(self.table, self._key(circuit), expression, values=values, condition="probe_id = :id")
        except ConditionFailed:
            return False
        return True
