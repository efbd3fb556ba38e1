"""The asynchronous jobs workflow (Step Functions STANDARD): the fallback chain as states.

    MarkProcessing -> Run -> Persist -> Done
                       |  Retry: transient provider errors (backoff, full jitter)
                       |  Catch: the caller's errors ----------------------------> RecordFailure -> Failed
                       `--Catch: anything else --> RunFallback --> Persist
                                                    |  (same Retry / caller Catch)
                                                    `--Catch: anything else --> Degrade --> Persist
                                                                                   `--Catch --> RecordFailure
    MarkProcessing and Persist catch into RecordFailure too: a job never stays `processing`.

Which errors are retried and which are the caller's comes from aigateway/resilience/policy.py,
the same table the synchronous chain follows. Every Task invokes the `workflow` Lambda with
`{"action", "stage"?, "job.$": "$", "attempt.$": "$$.State.RetryCount"}`; the handler turns stage
and retry count into ledger attempt numbers that never repeat within a job. With
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

from infra.openapi import ensure_paths

METADATA_KEY = "aigateway:workflow"
METADATA_VALUE = "jobs"

LAMBDA_TRANSIENT = [
    "Lambda.ServiceException",
    "Lambda.TooManyRequestsException",
    "Lambda.SdkClientException",
]
# Step Functions counts retries, not tries: each model stage makes up to 1 + RETRIES calls.
RETRIES = 2


def error_classes() -> tuple[list[str], list[str]]:
    """(retryable, the caller's) error class names, from the resilience policy."""
    ensure_paths()
    from aigateway.resilience.policy import RETRYABLE, caller_errors

    return list(RETRYABLE), list(caller_errors())


class Workflow(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, handler: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        retryable, caller = error_classes()

        def task(
            name: str, action: str, result_path: str | None = None, stage: str | None = None
        ) -> tasks.LambdaInvoke:
            payload: dict[str, object] = {
                "action": action,
                "job": sfn.JsonPath.entire_payload,
                "attempt": sfn.JsonPath.number_at("$$.State.RetryCount"),
            }
            if stage is not None:
                payload["stage"] = stage
            step = tasks.LambdaInvoke(
                self,
                name,
                lambda_function=handler,
                payload=sfn.TaskInput.from_object(payload),
                payload_response_only=True,
                retry_on_service_exceptions=False,  # explicit retriers below, in a fixed order
                result_path=result_path,
            )
            step.add_retry(errors=LAMBDA_TRANSIENT, interval=Duration.seconds(1), backoff_rate=2.0, max_attempts=2)
            return step

        def model_stage(name: str, stage: str) -> tasks.LambdaInvoke:
            step = task(name, "run", "$.result", stage)
            step.add_retry(
                errors=retryable,
                interval=Duration.seconds(1),
                backoff_rate=2.0,
                max_attempts=RETRIES,
                jitter_strategy=sfn.JitterType.FULL,
            )
            return step

        mark = task("MarkProcessing", "mark_processing", "$.marked")
        run = model_stage("Run", "primary")
        run_fallback = model_stage("RunFallback", "fallback")
        degrade = task("Degrade", "run", "$.result", "degraded")
        persist = task("Persist", "persist")
        record_failure = task("RecordFailure", "record_failure")

        failed = sfn.Fail(self, "Failed", error="JobFailed", cause="The job failed; its record holds the error")
        failure = record_failure.next(failed)
        persist.next(sfn.Succeed(self, "Done"))
        # The caller's errors end the job at once; a larger window may still take a too-long input.
        run.add_catch(failure, errors=[e for e in caller if e != "ContextLengthExceeded"], result_path="$.error")
        run.add_catch(run_fallback, errors=[sfn.Errors.ALL], result_path="$.error")
        run_fallback.add_catch(failure, errors=caller, result_path="$.error")
        run_fallback.add_catch(degrade, errors=[sfn.Errors.ALL], result_path="$.error")
        for step in (mark, degrade, persist):
            step.add_catch(failure, errors=[sfn.Errors.ALL], result_path="$.error")
        run.next(persist)
        run_fallback.next(persist)
        degrade.next(persist)
        definition = mark.next(run)

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
