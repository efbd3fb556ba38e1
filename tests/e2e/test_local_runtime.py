"""Starts the embedded runtime exactly as `make run` does and calls it over real loopback HTTP."""

from __future__ import annotations

import csv
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


def banner_curl_commands(banner: str) -> list[str]:
    """Every runnable `curl` command the banner prints (continuation lines joined); commands with a
    placeholder such as <job_id> or piped into another program are not runnable as printed."""
    joined = banner.replace("\\\n", " ")
    commands = [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
    return [c for c in commands if "<" not in c and "|" not in c]


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
    assert first.json()["cached"] is False and second.json()["cached"] is True, (first.text, second.text)
    assert second.json()["output"] == first.json()["output"]
    assert first.headers["x-request-id"] == first.json()["request_id"]
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "unauthorized"
    assert "/v1/generate" in openapi.json()["paths"]


def test_the_operator_cli_scores_a_csv_end_to_end_over_http(server: tuple[str, list[str]], tmp_path: Path) -> None:
    # Given the example lead file (five good rows, one with a size that is not a number on line 7)
    url, _ = server
    source = tmp_path / "leads.csv"
    source.write_bytes((ROOT / "docs" / "examples" / "leads.csv").read_bytes())
    out = tmp_path / "scored.csv"
    env = {**os.environ, "AIG_BASE_URL": url, "AIG_API_KEY": DEMO_KEY, "PYTHONPATH": "layers/shared/python:functions:."}
    # When the operator scores it with the CLI
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "score",
            str(source),
            "--out",
            str(out),
            "--no-progress",
            "--poll-interval",
            "0.5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"cli score: exit {done.returncode} in {time.monotonic() - started:.1f} s\n{done.stderr[-600:]}")
    # Then it finishes with "some rows were bad" (exit 3), scores the good rows through the real
    # stack and names the bad one by its line
    assert done.returncode == 3, done.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    by_id = {r["lead_id"]: r for r in rows}
    assert [r["line"] for r in rows] == ["2", "3", "4", "5", "6", "7"]
    scored = [r for r in rows if r["status"] == "succeeded"]
    assert {r["lead_id"] for r in scored} == {"acme-1", "globex-7", "initech-3", "umbrella-9", "hooli-2"}
    assert all(r["tier"] in ("hot", "warm", "cold") and r["top_factors"] and r["job_id"] for r in scored)
    assert by_id["bad-size"]["status"] != "succeeded" and "size" in by_id["bad-size"]["error"]
    # And the scores are the ones the API holds for those leads
    with httpx.Client(base_url=url, timeout=30) as http:
        lead = http.get("/v1/leads/acme-1", headers={"Authorization": f"Bearer {DEMO_KEY}"}).json()
    assert str(lead["score"]["score"]) == by_id["acme-1"]["score"] and lead["score"]["tier"] == by_id["acme-1"]["tier"]


def test_a_lead_file_dropped_in_the_imports_bucket_is_imported_over_http(server: tuple[str, list[str]]) -> None:
    # Given a JSONL lead file with one good and one malformed line
    url, _ = server
    body = (
        b'{"lead_id": "jsonl-1", "company": "Initrode", "title": "CTO", "size": 120}\n'
        b'{"lead_id": "jsonl-2", "size": -5}\n'
    )
    with httpx.Client(base_url=url, timeout=60) as http:
        # When it is dropped in the imports bucket (the local stand-in for `aws s3 cp`)
        report = http.put("/_local/imports/demo/drop.jsonl", content=body).json()
        # Then the report names the bad line and the good lead is queued and scored
        assert report["created"] == 1 and report["queued"] == 1, report
        assert [r["line"] for r in report["rejected"]] == [2]
        deadline = time.monotonic() + 60
        score = None
        while time.monotonic() < deadline and score is None:
            score = http.get("/v1/leads/jsonl-1", headers={"Authorization": f"Bearer {DEMO_KEY}"}).json()["score"]
            time.sleep(0.3)
    assert score is not None and score["trigger"] == "import", score


# Last in the module: the banner's lines change shared state (an experiment split, a provider fault
# plan while it is on), which the tests above must not see.
def test_every_curl_line_the_banner_prints_works_as_pasted(server: tuple[str, list[str]]) -> None:
    _, output = server
    commands = banner_curl_commands("".join(output))
    codes, bodies = {}, {}
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command + " -w '\\n%{http_code}'"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        body, _, code = done.stdout.rpartition("\n")
        codes[command[:90]], bodies[command] = code, body
    print(f"\n{len(commands)} banner curl lines: " + ", ".join(sorted(set(codes.values()))))
    assert len(commands) >= 12 and any("/v1/chat/completions" in c for c in commands)
    assert all(code.startswith("2") for code in codes.values()), codes
    # The fault demonstration does what the banner says it does
    (degraded,) = [body for command, body in bodies.items() if "GROUP BY" in command]
    assert '"served_by":"static_answer"' in degraded, degraded
