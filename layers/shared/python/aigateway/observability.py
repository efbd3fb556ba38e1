"""Powertools Logger, Tracer and Metrics, created once per execution environment."""

from __future__ import annotations

from functools import lru_cache

from aws_lambda_powertools import Logger, Metrics, Tracer

NAMESPACE = "AiGateway"


@lru_cache(maxsize=1)
def logger() -> Logger:
    return Logger(service=_service())


@lru_cache(maxsize=1)
def tracer() -> Tracer:
    return Tracer(service=_service())


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    return Metrics(namespace=NAMESPACE, service=_service())


def _service() -> str:
    import os

    return os.environ.get("POWERTOOLS_SERVICE_NAME", "aigateway")


def count(name: str, value: float = 1, **dimensions: str) -> None:
    """One CloudWatch metric (EMF log line), flushed at once: for events that are rare and must
    not wait for a handler's metrics flush (fallbacks, circuit transitions)."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    with single_metric(
        name=name,
        unit=MetricUnit.Count,
        value=value,
        namespace=NAMESPACE,
        default_dimensions={"service": _service(), **dimensions},
    ):
        pass
