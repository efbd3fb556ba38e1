"""Fixtures shared by the integration and e2e suites: the synthesized stack on moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from aigateway.llm.simulated import SimulatedProvider, SimulatedProviderServer
from infra.local.apigateway import LocalApiGateway
from infra.local.runtime import LocalStack, synthesize
from infra.local.server import LocalHttpServer


@pytest.fixture(scope="session")
def template_path() -> Any:
    return synthesize()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimulatedProviderServer]:
    server = SimulatedProviderServer(SimulatedProvider())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def simulator(sim_server: SimulatedProviderServer) -> SimulatedProvider:
    """The simulated provider, with no faults and zeroed counters for this test."""
    provider = sim_server.provider
    provider.reset_faults()
    provider.reset_stats()
    return provider


@pytest.fixture
def stack(
    template_path: Any, sim_server: SimulatedProviderServer, simulator: SimulatedProvider
) -> Iterator[LocalStack]:
    overrides = {"SIMULATOR_URL": sim_server.base_url, "PROVIDER": "simulated"}
    with LocalStack(template_path, env_overrides=overrides) as local:
        yield local


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Client:
    """Calls the local API Gateway in-process (no sockets): route table, authorizer, handler."""

    def __init__(self, gateway: LocalApiGateway, api_key: str | None):
        self.gateway = gateway
        self.api_key = api_key

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        key: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = {"content-type": "application/json", **(headers or {})}
        api_key = self.api_key if key == "default" else key
        if api_key is not None:
            sent["authorization"] = f"Bearer {api_key}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        response = self.gateway.handle(method, path, sent, payload)
        try:
            parsed = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = response.body.decode()
        return Reply(response.status, response.headers, parsed)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)


@pytest.fixture
def base_url(stack: LocalStack) -> Iterator[str]:
    """The stack's API over real loopback HTTP, as an OpenAI client's `base_url` (`…/v1`)."""
    server = LocalHttpServer(LocalApiGateway(stack), port=0)
    url = server.start()
    yield f"{url}/v1"
    server.stop()


@pytest.fixture
def demo(stack: LocalStack) -> Any:
    from infra.local.seed import seed_demo_tenant

    return seed_demo_tenant("aig_demo_test_key_0123456789")


@pytest.fixture
def client(stack: LocalStack, demo: Any) -> Client:
    return Client(LocalApiGateway(stack), demo.api_key)


def record_provider_bodies(simulator: SimulatedProvider, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request body the simulated provider receives from now on (what left the gateway)."""
    bodies: list[str] = []
    original = simulator.handle

    def recording(method: str, path: str, headers: Any, body: bytes) -> Any:
        bodies.append(body.decode("utf-8", "replace"))
        return original(method, path, headers, body)

    monkeypatch.setattr(simulator, "handle", recording)
    return bodies
