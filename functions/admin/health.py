"""Health: every dependency a request needs, checked side by side with short timeouts."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from aigateway import deps
from aigateway.llm.client import provider_config
from aigateway.settings import get_settings
from aigateway.store.dynamo import dynamo

_LAYER_OPENAPI = Path("/opt/openapi.json")


def check_health() -> dict[str, Any]:
    settings = get_settings()
    tables = {"cache": settings.cache_table, "ledger": settings.ledger_table, "state": settings.state_table}
    db = dynamo()

    def table_status(name: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            status = db.describe(name)["TableStatus"]
        except Exception as exc:  # noqa: BLE001 - any failure is a finding, not a crash
            return {"ok": False, "error": type(exc).__name__}
        return {
            "ok": status == "ACTIVE",
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    results = db.parallel(*[(lambda n=n: table_status(n)) for n in tables.values()])
    dependencies: dict[str, Any] = {f"dynamodb.{k}": r for k, r in zip(tables, results, strict=True)}
    try:
        provider = provider_config(settings)
        dependencies["provider"] = {"ok": True, "name": provider.name, "base_url": provider.base_url}
    except Exception as exc:  # noqa: BLE001
        dependencies["provider"] = {"ok": False, "error": type(exc).__name__}
    try:
        dependencies["prompts"] = {"ok": True, "templates": len(deps.templates().names())}
    except Exception as exc:  # noqa: BLE001
        dependencies["prompts"] = {"ok": False, "error": type(exc).__name__}
    ok = all(d["ok"] for d in dependencies.values())
    return {"status": "ok" if ok else "degraded", "dependencies": dependencies, "circuits": circuit_report()}


def circuit_report() -> dict[str, Any]:
    """Every model circuit the gateway has opened or counted failures on (read fresh).

    Informational: an open circuit does not make the gateway unhealthy, since requests move on
    to their fallback models; it does tell an operator which models are failing.
    """
    try:
        views = deps.breaker().views(int(time.time() * 1000))
    except Exception as exc:  # noqa: BLE001 - the report must not fail the health check
        return {"ok": False, "error": type(exc).__name__}
    states = [v.state for v in views]
    return {
        "ok": True,
        "open": states.count("open"),
        "half_open": states.count("half_open"),
        "items": [v.to_json() for v in views],
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """Built at packaging time from every function's pydantic models (infra/openapi.py)."""
    path = Path(get_settings().openapi_path or _LAYER_OPENAPI)
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document
