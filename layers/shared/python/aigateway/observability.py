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
