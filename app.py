#!/usr/bin/env python3
"""CDK app entry: builds the AiGateway stack and checks it with cdk-nag (AwsSolutions). No AWS calls at synth.

`python3 app.py` (what `cdk synth` runs) writes the cloud assembly to $CDK_OUTDIR, or to a
temporary directory when it is unset. The feature flags in cdk.json apply to direct runs too, so
the template the tests see is the template `cdk deploy` deploys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from infra.stack import STACK_NAME, AiGatewayStack

ROOT = Path(__file__).resolve().parent


def cdk_json_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text()).get("context", {})
    return context


def build(outdir: str | None = None) -> tuple[App, AiGatewayStack]:
    app = App(outdir=outdir, context=cdk_json_context())
    stack = AiGatewayStack(
        app,
        STACK_NAME,
        description="Serverless AI Gateway: HTTP API, per-feature Lambdas, DynamoDB, SQS, Step Functions",
    )
    # cdk-nag 3 is a policy-validation plugin: findings fail `synth`, acknowledged ones do not.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app, stack


if __name__ == "__main__":
    build()[0].synth()
