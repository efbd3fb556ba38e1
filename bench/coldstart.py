"""Cold-start import cost, each sample in a fresh interpreter (no shared module cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import median

ROOT = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in ("layers/shared/python", "functions", "."))
# What the generate function's environment holds in AWS; dummy values, nothing is called at import.
HANDLER_ENV = {
    "CACHE_TABLE": "bench-cache",
    "LEDGER_TABLE": "bench-ledger",
    "STATE_TABLE": "bench-state",
    "JOBS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/bench-jobs",
    "ALERTS_TOPIC_ARN": "arn:aws:sns:us-east-1:000000000000:bench-alerts",
    "PROVIDER": "auto",
    "POWERTOOLS_SERVICE_NAME": "generate",
    "POWERTOOLS_METRICS_NAMESPACE": "AiGateway",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# The module under test is imported between two perf_counter reads; the rest reports what got loaded.
_SNIPPET = """
import time
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
import json, sys
print(json.dumps({{"s": elapsed, "loaded": {{m: m in sys.modules for m in {probe!r}}}}}))
"""
PROBE = ("openai", "boto3", "botocore", "httpx", "pydantic", "aws_lambda_powertools", "tiktoken", "moto")
MODULES = ("generate.handler", "openai", "boto3")


@dataclass
class ImportTiming:
    module: str
    import_s: list[float]
    process_s: list[float]
    loaded: dict[str, bool]

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "import_ms_median": round(median(self.import_s) * 1000, 1),
            "process_wall_ms_median": round(median(self.process_s) * 1000, 1),
            "import_ms_samples": [round(s * 1000, 1) for s in self.import_s],
            "modules_loaded": self.loaded,
        }


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENAI_", "SIMULATOR_"))}
    env.update(HANDLER_ENV)
    env["PYTHONPATH"] = PYTHONPATH
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _once(module: str, env: dict[str, str]) -> tuple[float, float, dict[str, bool]]:
    code = _SNIPPET.format(module=module, probe=PROBE)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} in a fresh interpreter failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["s"]), wall, dict(result["loaded"])


def measure(runs: int = 5) -> list[ImportTiming]:
    """`runs` fresh interpreters per module, interleaved round-robin so drift hits all alike.

    One unmeasured round first writes any missing .pyc files (Lambda ships them precompiled too).
    """
    env = _env()
    for module in MODULES:
        _once(module, env)
    timings = {m: ImportTiming(m, [], [], {}) for m in MODULES}
    for _ in range(runs):
        for module in MODULES:
            seconds, wall, loaded = _once(module, env)
            timing = timings[module]
            timing.import_s.append(seconds)
            timing.process_s.append(wall)
            timing.loaded = loaded
    return [timings[m] for m in MODULES]
