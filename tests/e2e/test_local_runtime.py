"""Starts the embedded runtime exactly as `make run` does and calls it over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_generate import SKILL

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "aig_e2e_fixed_demo_key_000000000"
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(template_path: Path) -> Iterator[tuple[str, list[str]]]:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DEMO_API_KEY": DEMO_KEY,
        "PYTHONPATH": "layers/shared/python:functions:.",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.local", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail("runtime exited early:\n" + "".join(output))
        output.append(line)
        if "Ctrl-C stops it" in line:
            break
    else:
        proc.kill()
        pytest.fail("runtime did not become ready:\n" + "".join(output))
    yield url, output
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("runtime did not stop on SIGTERM")


def test_banner_prints_the_demo_key_and_working_curl_lines(server: tuple[str, list[str]]) -> None:
    url, output = server
    banner = "".join(output)
    assert DEMO_KEY in banner and f"curl -s {url}/v1/health" in banner
    assert "simulated" in banner


def test_generate_over_http_then_cache_hit(server: tuple[str, list[str]]) -> None:
    url, _ = server
    headers = {"Authorization": f"Bearer {DEMO_KEY}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/health").json()["status"] == "ok"
        first = http.post("/v1/generate", json=SKILL, headers=headers)
        second = http.post("/v1/generate", json=SKILL, headers=headers)
        unauthorized = http.post("/v1/generate", json=SKILL, headers={"Authorization": "Bearer nope"})
        openapi = http.get("/v1/openapi.json")
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert second.json()["output"] == first.json()["output"]
    assert first.headers["x-request-id"] == first.json()["request_id"]
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "unauthorized"
    assert "/v1/generate" in openapi.json()["paths"]
