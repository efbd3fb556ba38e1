"""Synthesize the AiGateway stack once per test session (what `cdk synth` would produce).

The layers are built first through infra/layers.py (the deps layer downloads wheels once, about
a minute, then is reused from build/). The app is built by app.py's own `build()`, so the tests
see exactly what `cdk deploy` deploys, cdk-nag plugin included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# jsii prints a banner about Node 20; the variable names differ before and after its EOL date.
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass(frozen=True)
class Synth:
    app_module: ModuleType
    stack: Any  # infra.stack.AiGatewayStack
    template: Any  # aws_cdk.assertions.Template
    template_json: dict[str, Any]
    template_path: Path
    outdir: Path
    # Set when App.synth() raised (cdk-nag findings make the synth itself fail): the message.
    synth_error: str | None
    seconds: float


def _load_app_module() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("aigateway_cdk_app", ROOT / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    from aws_cdk.assertions import Template

    from infra import layers

    layers.build_deps_layer()
    layers.build_shared_layer()

    started = time.perf_counter()
    app_module = _load_app_module()
    outdir = tmp_path_factory.mktemp("cdk.out")
    app, stack = app_module.build(str(outdir))
    synth_error: str | None = None
    try:
        app.synth()
    except RuntimeError as exc:  # jsii surfaces ValidationFailed (cdk-nag) as RuntimeError
        synth_error = str(exc)
    template_path = outdir / f"{stack.artifact_id}.template.json"
    template_json = json.loads(template_path.read_text())
    yield Synth(
        app_module=app_module,
        stack=stack,
        # From the written file: Template.from_stack would synthesize the whole app again.
        template=Template.from_json(template_json),
        template_json=template_json,
        template_path=template_path,
        outdir=outdir,
        synth_error=synth_error,
        seconds=time.perf_counter() - started,
    )


@pytest.fixture(scope="session")
def stack(synth: Synth) -> Any:
    return synth.stack


@pytest.fixture(scope="session")
def template(synth: Synth) -> Any:
    return synth.template


@pytest.fixture(scope="session")
def resources(synth: Synth) -> dict[str, dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = synth.template_json["Resources"]
    return resources
