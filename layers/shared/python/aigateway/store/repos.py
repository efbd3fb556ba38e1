"""One small repository per item family. Key layouts are documented in docs/architecture.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aigateway.store.dynamo import ConditionFailed, Dynamo, Item


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

    def create(self, key_hash: str, *, key_id: str, tenant_id: str, user_id: str, role: str, created_at: str) -> None:
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
        self.db.put(self.table, item, condition="attribute_not_exists(pk)")


@dataclass(frozen=True)
class Tenants:
    """Tenants: State table, pk `TENANT#<id>`, sk `TENANT`."""

    db: Dynamo
    table: str

    def get(self, tenant_id: str) -> Item | None:
        return self.db.get(self.table, {"pk": f"TENANT#{tenant_id}", "sk": "TENANT"})

    def create(self, tenant_id: str, *, name: str, created_at: str) -> bool:
        """Creates the tenant once; returns False if it already existed."""
        item = {
            "pk": f"TENANT#{tenant_id}",
            "sk": "TENANT",
            "tenant_id": tenant_id,
            "name": name,
            "status": "active",
            "created_at": created_at,
        }
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return False
        return True


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


@dataclass(frozen=True)
class Jobs:
    """Asynchronous jobs: State table, pk `JOB#<id>`, sk `JOB`; gsi1 lists a tenant's jobs by time."""

    db: Dynamo
    table: str

    @staticmethod
    def _key(job_id: str) -> Item:
        return {"pk": f"JOB#{job_id}", "sk": "JOB"}

    def get(self, job_id: str) -> Item | None:
        return self.db.get(self.table, self._key(job_id), consistent=True)

    def create(self, job_id: str, *, tenant_id: str, created_at: str, attributes: Item) -> bool:
        item = {
            **self._key(job_id),
            "job_id": job_id,
            "tenant_id": tenant_id,
            "status": "queued",
            "created_at": created_at,
            "updated_at": created_at,
            "gsi1pk": f"TENANT#{tenant_id}#JOBS",
            "gsi1sk": f"{created_at}#{job_id}",
            **attributes,
        }
        try:
            self.db.put(self.table, item, condition="attribute_not_exists(pk)")
        except ConditionFailed:
            return False
        return True

    def transition(
        self, job_id: str, *, to: str, allowed_from: tuple[str, ...], at: str, extra: Item | None = None
    ) -> Item:
        """Moves a job between states; raises ConditionFailed if it is not in one of `allowed_from`."""
        names = {"#s": "status"}
        values: dict[str, Any] = {":to": to, ":at": at}
        sets = ["#s = :to", "updated_at = :at"]
        for i, (k, v) in enumerate((extra or {}).items()):
            names[f"#e{i}"] = k
            values[f":e{i}"] = v
            sets.append(f"#e{i} = :e{i}")
        allowed = []
        for i, state in enumerate(allowed_from):
            values[f":from{i}"] = state
            allowed.append(f":from{i}")
        return self.db.update(
            self.table,
            self._key(job_id),
            "SET " + ", ".join(sets),
            values=values,
            names=names,
            condition=f"attribute_exists(pk) AND #s IN ({', '.join(allowed)})",
        )
