"""Cold-start import cost, each sample in a fresh interpreter (no shared module cache).

With a baseline tree (bench/baseline.py), its `generate.handler` is imported in the same
round-robin as this tree's modules (its own PYTHONPATH and cwd), so before and after see the same
machine at the same moments.
"""

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
IMPORT_ROOTS = ("layers/shared/python", "functions", ".")
PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in IMPORT_ROOTS)
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
HANDLER = "generate.handler"


@dataclass
class ImportTiming:
    module: str
    import_s: list[float]
    process_s: list[float]
    loaded: dict[str, bool]
    tree: str = "this"  # or "baseline"

    def to_json(self) -> dict[str, Any]:
        return {
            "tree": self.tree,
            "module": self.module,
            "import_ms_median": round(median(self.import_s) * 1000, 1),
            "process_wall_ms_median": round(median(self.process_s) * 1000, 1),
            "import_ms_samples": [round(s * 1000, 1) for s in self.import_s],
            "modules_loaded": self.loaded,
        }


def _env(root: Path = ROOT) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENAI_", "SIMULATOR_"))}
    env.update(HANDLER_ENV)
    env["PYTHONPATH"] = os.pathsep.join(str(root / p) for p in IMPORT_ROOTS)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _once(module: str, env: dict[str, str], root: Path = ROOT) -> tuple[float, float, dict[str, bool]]:
    code = _SNIPPET.format(module=module, probe=PROBE)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} in a fresh interpreter failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["s"]), wall, dict(result["loaded"])


def measure(runs: int = 5, baseline_root: Path | None = None) -> list[ImportTiming]:
    """`runs` fresh interpreters per module, interleaved round-robin so drift hits all alike.

    One unmeasured round first writes any missing .pyc files (Lambda ships them precompiled too).
    With `baseline_root`, that tree's generate.handler joins the round-robin (tree="baseline").
    """
    series: list[tuple[str, str, Path]] = [("this", m, ROOT) for m in MODULES]
    if baseline_root is not None:
        series.append(("baseline", HANDLER, baseline_root))
    envs = {root: _env(root) for _, _, root in series}
    for _, module, root in series:
        _once(module, envs[root], root)
    timings = {(tree, m): ImportTiming(m, [], [], {}, tree) for tree, m, _ in series}
    for _ in range(runs):
        for tree, module, root in series:
            seconds, wall, loaded = _once(module, envs[root], root)
            timing = timings[(tree, module)]
            timing.import_s.append(seconds)
            timing.process_s.append(wall)
            timing.loaded = loaded
    return [timings[(tree, m)] for tree, m, _ in series]
