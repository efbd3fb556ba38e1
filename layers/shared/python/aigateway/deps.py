"""Cached factories wiring the rooms together for a function's execution environment.

Handlers call these at request time (never at import), so tests can point the environment at
moto before the first call and reset with `reset()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aigateway.cache import ResponseCache
from aigateway.completion import Completions
from aigateway.governance.ledger import Ledger
from aigateway.llm.client import provider_client
from aigateway.prompts.registry import TemplateRegistry, get_registry
from aigateway.settings import get_settings
from aigateway.store.dynamo import dynamo
from aigateway.store.repos import ApiKeys, CacheEntries, Jobs, LedgerRows, Tenants


@dataclass(frozen=True)
class Repos:
    api_keys: ApiKeys
    tenants: Tenants
    cache: CacheEntries
    ledger: LedgerRows
    jobs: Jobs


@lru_cache(maxsize=1)
def repos() -> Repos:
    s, db = get_settings(), dynamo()
    return Repos(
        api_keys=ApiKeys(db, s.state_table),
        tenants=Tenants(db, s.state_table),
        cache=CacheEntries(db, s.cache_table),
        ledger=LedgerRows(db, s.ledger_table),
        jobs=Jobs(db, s.state_table),
    )


@lru_cache(maxsize=1)
def completions() -> Completions:
    r = repos()
    return Completions(
        db=dynamo(),
        cache=ResponseCache(r.cache),
        ledger=Ledger(r.ledger),
        llm=lambda: provider_client(get_settings()),
    )


def templates() -> TemplateRegistry:
    return get_registry(get_settings().prompts_dir)


def reset() -> None:
    """Forget every cached client and setting (tests, and the local runtime between stacks)."""
    from aigateway.llm import client

    for factory in (get_settings, dynamo, repos, completions, get_registry, client.provider_config, client._client):
        factory.cache_clear()
