"""cdk-nag AwsSolutions on the synthesized stack: zero unacknowledged errors and warnings.

cdk-nag 3 is a CDK policy-validation plugin (no longer an Aspect writing annotations): app.py
registers it with `Validations.of(app).add_plugins(...)`, findings make `synth` fail, and
acknowledgments are `Validations.of(construct).acknowledge(...)` with a written reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks

pytestmark = pytest.mark.infra


def _findings(report: Any) -> list[str]:
    return [
        f"{v.severity.upper()} {v.rule_name} at "
        + ", ".join(r.construct_path for r in v.violating_resources)
        + f"\n    {v.description}"
        for v in report.violations
    ]


def _by_severity(report: Any, severity: str) -> list[str]:
    return [f for f, v in zip(_findings(report), report.violations, strict=True) if v.severity == severity]


@pytest.fixture(scope="module")
def report(stack: Any) -> Any:
    return AwsSolutionsChecks(verbose=True).validate_scope(stack)


def test_synth_passes_cdk_nag_validation(synth: Any) -> None:
    # Given app.py's app (cdk-nag registered) / When synthesized / Then validation did not fail it.
    assert synth.synth_error is None, synth.synth_error


def test_no_unacknowledged_aws_solutions_errors(report: Any) -> None:
    errors = _by_severity(report, "error")
    print("\n".join(errors))
    assert not errors, "\n" + "\n".join(errors)


def test_no_unacknowledged_aws_solutions_warnings(report: Any) -> None:
    warnings = _by_severity(report, "warning")
    print("\n".join(warnings))
    assert not warnings, "\n" + "\n".join(warnings)


def test_the_checks_do_find_a_non_compliant_resource() -> None:
    # Given a queue with no DLQ, no KMS and no SSL policy / When checked / Then it is reported.
    stack = Stack(App(), "NagCanary")
    sqs.Queue(stack, "Plain")
    report = AwsSolutionsChecks(verbose=True).validate_scope(stack)
    rules = {v.rule_name for v in report.violations}
    assert {"AwsSolutions-SQS3", "AwsSolutions-SQS4"} <= rules, rules


def test_every_acknowledgment_carries_a_written_reason(stack: Any) -> None:
    from aws_cdk import Validations

    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    acknowledged: dict[str, str] = {}
    for node in stack.node.find_all():
        for entry in node.node.metadata:
            if entry.type == key:
                for rule, reason in dict(entry.data).items():
                    acknowledged[f"{node.node.path} {rule}"] = reason
    assert acknowledged, "expected the documented acknowledgments (IAM4, L1, SQS3, SMG4, ...)"
    for where, reason in acknowledged.items():
        assert isinstance(reason, str) and len(reason) >= 40, f"{where}: reason too thin: {reason!r}"
