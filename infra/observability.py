"""Alarms. Every alarm notifies the Alerts topic (budget alerts publish to it too)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from constructs import Construct

from infra.data import Data


class Observability(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, data: Data) -> None:
        super().__init__(scope, construct_id)
        alert = cloudwatch_actions.SnsAction(data.alerts_topic)

        # Any message in the DLQ is a job that failed three deliveries: someone should look.
        self.dlq_alarm = cloudwatch.Alarm(
            self,
            "JobsDlqNotEmpty",
            alarm_description="Jobs dead-letter queue has messages (failed 3 deliveries); "
            "inspect and replay them (docs/operations.md).",
            metric=data.jobs_dlq.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1),
                statistic=cloudwatch.Stats.MAXIMUM,
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.dlq_alarm.add_alarm_action(alert)
        self.dlq_alarm.add_ok_action(alert)
