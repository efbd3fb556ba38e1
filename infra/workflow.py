"""The asynchronous jobs workflow (Step Functions STANDARD): a skeleton later issues extend.

    MarkProcessing -> Run -> Persist -> Done
                       `--(Catch States.ALL)--> RecordFailure -> Failed

Every Task invokes the `workflow` Lambda with `{"action": ..., "job.$": "$", "attempt.$":
"$$.State.RetryCount"}`: the retry count numbers the ledger rows, so each retried provider call
is its own billed attempt and a replay of one attempt is not billed twice. With
`payload_response_only=True` the ASL `Resource` is the function ARN itself (no
`arn:aws:states:::lambda:invoke` wrapper), so a task's result is the handler's return value.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

METADATA_KEY = "aigateway:workflow"
METADATA_VALUE = "jobs"

# Error names raised by the workflow handler (aigateway.errors) that are worth retrying.
PROVIDER_RETRYABLE = ["ProviderRateLimited", "ProviderTimeout", "ProviderError"]
LAMBDA_TRANSIENT = [
    "Lambda.ServiceException",
    "Lambda.TooManyRequestsException",
    "Lambda.SdkClientException",
]


class Workflow(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, handler: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)

        def task(name: str, action: str, result_path: str | None = None) -> tasks.LambdaInvoke:
            step = tasks.LambdaInvoke(
                self,
                name,
                lambda_function=handler,
                payload=sfn.TaskInput.from_object(
                    {
                        "action": action,
                        "job": sfn.JsonPath.entire_payload,
                        "attempt": sfn.JsonPath.number_at("$$.State.RetryCount"),
                    }
                ),
                payload_response_only=True,
                retry_on_service_exceptions=False,  # explicit retriers below, in a fixed order
                result_path=result_path,
            )
            return step

        def retry_lambda_transient(step: tasks.LambdaInvoke) -> None:
            step.add_retry(
                errors=LAMBDA_TRANSIENT,
                interval=Duration.seconds(1),
                backoff_rate=2.0,
                max_attempts=2,
            )

        mark = task("MarkProcessing", "mark_processing", "$.marked")
        run = task("Run", "run", "$.result")
        persist = task("Persist", "persist")
        record_failure = task("RecordFailure", "record_failure")

        run.add_retry(
            errors=PROVIDER_RETRYABLE,
            interval=Duration.seconds(1),
            backoff_rate=2.0,
            max_attempts=3,
            jitter_strategy=sfn.JitterType.FULL,
        )
        for step in (mark, run, persist, record_failure):
            retry_lambda_transient(step)

        failed = sfn.Fail(self, "Failed", error="JobFailed", cause="The job's run step failed")
        run.add_catch(record_failure.next(failed), errors=[sfn.Errors.ALL], result_path="$.error")
        definition = mark.next(run).next(persist).next(sfn.Succeed(self, "Done"))

        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            comment="jobs workflow",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel.ERROR,
                include_execution_data=False,
            ),
        )
        cfn = self.state_machine.node.default_child
        assert isinstance(cfn, sfn.CfnStateMachine)
        cfn.add_metadata(METADATA_KEY, METADATA_VALUE)

        handler_arn = Stack.of(self).get_logical_id(_cfn_function(handler))
        Validations.of(self.state_machine).acknowledge(
            Acknowledgment(
                id="AwsSolutions-SF1",
                reason="Logs ERROR events only, without execution data: job payloads carry "
                "tenant data and the STANDARD execution history is already the audit trail.",
            ),
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{handler_arn}.Arn>:*]",
                reason="LambdaInvoke grants the workflow function and its versions/aliases "
                "(<function arn>:*); it names this one function only.",
            ),
            Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray tracing (PutTraceSegments, GetSamplingRules...) and CloudWatch Logs "
                "vended delivery (CreateLogDelivery, ...) do not support resource-level permissions.",
            ),
        )


def _cfn_function(fn: lambda_.IFunction) -> lambda_.CfnFunction:
    cfn = fn.node.default_child
    assert isinstance(cfn, lambda_.CfnFunction)
    return cfn
