"""cfn-lint on the synthesized template: no errors; warnings are counted and shown."""

from __future__ import annotations

from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

pytestmark = pytest.mark.infra


def test_cfn_lint_reports_no_errors(synth: Any) -> None:
    # Given the template app.py synthesizes / When cfn-lint checks it / Then no E-level finding.
    matches = lint_file(synth.template_path, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    errors = [m for m in matches if m.rule.id.startswith("E")]
    warnings = [m for m in matches if m.rule.id.startswith("W")]
    print(f"cfn-lint: {len(errors)} errors, {len(warnings)} warnings")
    for m in warnings:
        print(f"  {m.rule.id} {m.message}")
    assert not errors, "\n".join(f"{m.rule.id} {m.message} ({'/'.join(map(str, m.path))})" for m in errors)


def test_cfn_lint_would_report_an_error() -> None:
    # Given a template with a bad property / When linted / Then cfn-lint flags an E-level error.
    from cfnlint.api import lint

    bad = '{"Resources": {"Q": {"Type": "AWS::SQS::Queue", "Properties": {"VisibilityTimeout": "soon"}}}}'
    assert any(m.rule.id.startswith("E") for m in lint(bad))
