"""EventBridge rules: the schedules of `routes.SCHEDULES` (each invokes its function with
`{"schedule": name}`), and the imports bucket's "Object Created" events under `incoming/`."""

from __future__ import annotations

from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from constructs import Construct

from infra import routes
from infra.data import Data
from infra.functions import Functions, construct_id

METADATA_KEY = "aigateway:schedule"
IMPORTS_RULE = "lead-imports"
IMPORTS_FUNCTION = "lead_batch"


class Schedules(Construct):
    def __init__(self, scope: Construct, construct_id_: str, *, functions: Functions, data: Data) -> None:
        super().__init__(scope, construct_id_)
        self.rules: dict[str, events.Rule] = {}
        for schedule in routes.SCHEDULES:
            rule = events.Rule(
                self,
                construct_id(schedule.name.replace("-", "_")),
                description=schedule.description,
                schedule=events.Schedule.expression(schedule.expression),
                targets=[
                    targets.LambdaFunction(
                        functions.by_name[schedule.function],
                        event=events.RuleTargetInput.from_object({"schedule": schedule.name}),
                        retry_attempts=2,
                    )
                ],
            )
            cfn = rule.node.default_child
            assert isinstance(cfn, events.CfnRule)
            cfn.add_metadata(METADATA_KEY, schedule.name)
            self.rules[schedule.name] = rule

        imports = events.Rule(
            self,
            "LeadImports",
            description="A lead file dropped under incoming/ in the imports bucket: import and score it",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [data.imports_bucket.bucket_name]},
                    "object": {"key": [{"prefix": "incoming/"}]},
                },
            ),
            targets=[targets.LambdaFunction(functions.by_name[IMPORTS_FUNCTION], retry_attempts=2)],
        )
        cfn = imports.node.default_child
        assert isinstance(cfn, events.CfnRule)
        cfn.add_metadata(METADATA_KEY, IMPORTS_RULE)
        self.rules[IMPORTS_RULE] = imports
