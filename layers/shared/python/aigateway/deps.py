"""Cached factories wiring the rooms together for a function's execution environment.

Handlers call these at request time (never at import), so tests can point the environment at
moto before the first call and reset with `reset()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from aigateway import idempotency
from aigateway.cache import ResponseCache
from aigateway.completion import Completions
from aigateway.governance.alerts import BudgetAlerts, sns_publisher
from aigateway.governance.budgets import Budgets
from aigateway.governance.config import GovernanceConfigs
from aigateway.governance.ledger import Ledger
from aigateway.governance.limits import RateLimiter
from aigateway.governance.usage import UsageService
from aigateway.jobs import JobService
from aigateway.llm.client import provider_client
from aigateway.prompts.registry import TemplateRegistry, get_registry
from aigateway.resilience.breaker import CircuitBreaker
from aigateway.settings import ConfigurationError, get_settings
from aigateway.store.dynamo import dynamo
from aigateway.store.repos import (
    ApiKeys,
    BudgetCounters,
    CacheEntries,
    Circuits,
    Jobs,
    Leads,
    LedgerRows,
    RateLimitBuckets,
    Reservations,
    Rollups,
    ScoringSettingsRepo,
    Tenants,
    TenantSettings,
)

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

    from aigateway.conversations import ConversationService
    from aigateway.experiments import ExperimentConfigs, ExperimentService
    from aigateway.scoring.service import LeadScorer, LeadService, ScoringConfigs


@dataclass(frozen=True)
class Repos:
    api_keys: ApiKeys
    tenants: Tenants
    cache: CacheEntries
    ledger: LedgerRows
    jobs: Jobs
    settings: TenantSettings
    buckets: RateLimitBuckets
    budgets: BudgetCounters
    reservations: Reservations
    rollups: Rollups
    circuits: Circuits
    leads: Leads
    scoring: ScoringSettingsRepo


@lru_cache(maxsize=1)
def repos() -> Repos:
    s, db = get_settings(), dynamo()
    return Repos(
        api_keys=ApiKeys(db, s.state_table),
        tenants=Tenants(db, s.state_table),
        cache=CacheEntries(db, s.cache_table),
        ledger=LedgerRows(db, s.ledger_table),
        jobs=Jobs(db, s.state_table),
        settings=TenantSettings(db, s.state_table),
        buckets=RateLimitBuckets(db, s.state_table),
        budgets=BudgetCounters(db, s.state_table),
        reservations=Reservations(db, s.state_table),
        rollups=Rollups(db, s.ledger_table),
        circuits=Circuits(db, s.state_table),
        leads=Leads(db, s.state_table),
        scoring=ScoringSettingsRepo(db, s.state_table),
    )


@lru_cache(maxsize=1)
def governance_configs() -> GovernanceConfigs:
    return GovernanceConfigs(repos().settings)


@lru_cache(maxsize=1)
def budgets() -> Budgets:
    r = repos()
    return Budgets(r.budgets, r.reservations, dynamo())


@lru_cache(maxsize=1)
def ledger() -> Ledger:
    r = repos()
    return Ledger(dynamo(), r.ledger, r.rollups, r.budgets, r.reservations)


@lru_cache(maxsize=1)
def usage_service() -> UsageService:
    r = repos()
    return UsageService(
        rollups=r.rollups,
        ledger=r.ledger,
        tenants=r.tenants,
        budgets=budgets(),
        configs=governance_configs(),
        db=dynamo(),
    )


@lru_cache(maxsize=1)
def budget_alerts() -> BudgetAlerts:
    return BudgetAlerts(repos().budgets, sns_publisher(get_settings().alerts_topic_arn))


@lru_cache(maxsize=1)
def breaker() -> CircuitBreaker:
    """One per execution environment: its in-memory view of the circuits is shared by its requests."""
    return CircuitBreaker(repos().circuits)


@lru_cache(maxsize=1)
def completions() -> Completions:
    r = repos()
    return Completions(
        db=dynamo(),
        cache=ResponseCache(r.cache),
        ledger=ledger(),
        configs=governance_configs(),
        limiter=RateLimiter(r.buckets, dynamo()),
        budgets=budgets(),
        alerts=budget_alerts(),
        breaker=breaker(),
        llm=lambda provider: provider_client(get_settings(), provider),
        attempt_timeout_s=get_settings().openai_timeout_s,
    )


def templates() -> TemplateRegistry:
    return get_registry(get_settings().prompts_dir)


@lru_cache(maxsize=1)
def idempotency_store() -> BasePersistenceLayer:
    """Powertools' persistence layer on the Idempotency table, built on first use of a key.

    Its own client with the store's timeouts and retries: Powertools tags its client's user agent
    with `idempotency`, which the store's calls should not carry.
    """
    import boto3
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    table = get_settings().idempotency_table
    if not table:
        raise ConfigurationError("IDEMPOTENCY_TABLE is not set: this function was not granted idempotency")
    client = boto3.client("dynamodb", config=dynamo().client.meta.config)
    return idempotency.prepare(DynamoDBPersistenceLayer(table_name=table, boto3_client=client))


@lru_cache(maxsize=1)
def job_service() -> JobService:
    s, r = get_settings(), repos()
    return JobService(
        jobs=r.jobs,
        queue_url=s.jobs_queue_url,
        templates=templates,
        configs=governance_configs(),
        limiter=RateLimiter(r.buckets, dynamo()),
        workflow_arn=s.workflow_arn,
    )


@lru_cache(maxsize=1)
def scoring_configs() -> ScoringConfigs:
    # Lead scoring is imported by the functions that use it only (~45 ms of cold start otherwise).
    from aigateway.scoring.service import ScoringConfigs

    return ScoringConfigs(repos().scoring)


@lru_cache(maxsize=1)
def lead_service() -> LeadService:
    from aigateway.scoring.service import LeadService

    s, r = get_settings(), repos()
    return LeadService(
        leads=r.leads,
        jobs=r.jobs,
        configs=scoring_configs(),
        governance=governance_configs(),
        limiter=RateLimiter(r.buckets, dynamo()),
        queue_url=s.jobs_queue_url,
    )


@lru_cache(maxsize=1)
def lead_scorer() -> LeadScorer:
    from aigateway.scoring.service import LeadScorer

    r = repos()
    return LeadScorer(
        db=dynamo(),
        leads=r.leads,
        jobs=r.jobs,
        configs=scoring_configs(),
        templates=templates,
        completions=completions(),
    )


@lru_cache(maxsize=1)
def experiment_configs() -> ExperimentConfigs:
    """Tenants' prompt experiments (pins and splits), read through the 30 s tenant cache."""
    from aigateway.experiments import ExperimentConfigs
    from aigateway.store.experiments import ExperimentsRepo

    return ExperimentConfigs(ExperimentsRepo(dynamo(), get_settings().state_table))


@lru_cache(maxsize=1)
def experiment_service() -> ExperimentService:
    """Feedback and experiment reports (the usage function)."""
    from aigateway.experiments import ExperimentService
    from aigateway.store.experiments import FeedbackRepo, LedgerReads

    s = get_settings()
    return ExperimentService(
        db=dynamo(),
        ledger=LedgerReads(dynamo(), s.ledger_table),
        feedback_repo=FeedbackRepo(dynamo(), s.state_table),
        configs=experiment_configs(),
        templates=templates,
    )


@lru_cache(maxsize=1)
def conversation_service() -> ConversationService:
    """Conversations (the chat function): history in the State table, turns through completions()."""
    from aigateway.conversations import ConversationService
    from aigateway.store.conversations import ConversationStore

    return ConversationService(
        store=ConversationStore(dynamo(), get_settings().state_table), completions=completions(), templates=templates
    )


def reset() -> None:
    """Forget every cached client and setting (tests, and the local runtime between stacks)."""
    from aigateway.llm import client

    factories = (
        get_settings,
        dynamo,
        repos,
        governance_configs,
        budgets,
        ledger,
        budget_alerts,
        breaker,
        usage_service,
        completions,
        idempotency_store,
        job_service,
        scoring_configs,
        lead_service,
        lead_scorer,
        conversation_service,
        experiment_configs,
        experiment_service,
        get_registry,
        client.provider_config,
        client._client,
    )
    for factory in factories:
        factory.cache_clear()
