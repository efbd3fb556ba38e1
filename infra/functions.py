"""One Lambda per entry of `routes.FUNCTIONS`, sharing the deps and shared layers.

Each function's role is granted exactly what its `grants` tags say (see `Functions._grants`), plus what
Lambda itself needs (logs, X-Ray) and, for the jobs consumer, its SQS event source.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_cdk import Acknowledgment, ArnFormat, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import layers, routes
from infra.data import JOBS_CONSUMER, Data

# The runtime follows the layers' build target (deps wheels and bytecode are built for it).
RUNTIME = {
    "3.12": lambda_.Runtime.PYTHON_3_12,
    "3.13": lambda_.Runtime.PYTHON_3_13,
    "3.14": lambda_.Runtime.PYTHON_3_14,
}[layers.LAMBDA_PYTHON]
ARCHITECTURE = lambda_.Architecture.ARM_64
METADATA_KEY = "aigateway:function"
METRICS_NAMESPACE = "AiGateway"
PROMPTS_DIR = "/opt/prompts"
JOBS_BATCH_SIZE = 10

# DynamoDB actions per access level (TransactWriteItems is authorised per contained item action).
_READ = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
_WRITE = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem")
_DELETE = ("dynamodb:DeleteItem",)
# BatchWriteItem is its own IAM action (unlike TransactWriteItems) and can delete as well as put:
# only State writers get it (Dynamo.batch_put writes job rows there); ledger writers never do.
_BATCH_WRITE = ("dynamodb:BatchWriteItem",)
_DESCRIBE = ("dynamodb:DescribeTable",)
# What Powertools' DynamoDBPersistenceLayer calls: get (consistent), conditional put, update, delete.
_IDEMPOTENCY = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
# Key actions for a table's data: CDK's table grants without the action wildcards
# (DynamoDB never re-encrypts or asks for data-key variants on a caller's behalf).
_KMS_READ = ("kms:Decrypt", "kms:DescribeKey")
_KMS_WRITE = (*_KMS_READ, "kms:Encrypt", "kms:GenerateDataKey")


def construct_id(name: str) -> str:
    """`scoring_dispatch` -> `ScoringDispatch` (the construct id; logical ids derive from it)."""
    return "".join(part.capitalize() for part in name.split("_"))


class Functions(Construct):
    def __init__(self, scope: Construct, construct_id_: str, *, data: Data) -> None:
        super().__init__(scope, construct_id_)
        self._data = data

        self.deps_layer = lambda_.LayerVersion(
            self,
            "DepsLayer",
            code=lambda_.Code.from_asset(str(layers.build_deps_layer())),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description=f"Pinned third-party packages (layers/deps/requirements.txt), arm64 {RUNTIME.name}",
        )
        self.shared_layer = lambda_.LayerVersion(
            self,
            "SharedLayer",
            code=lambda_.Code.from_asset(str(layers.build_shared_layer())),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            description="The aigateway package and prompts/",
        )

        self.by_name: dict[str, lambda_.Function] = {}
        for spec in routes.FUNCTIONS:
            self.by_name[spec.name] = self._function(spec)
            for tag in spec.grants:
                if not tag.startswith("workflow:"):  # granted in bind_workflow (the machine comes later)
                    self._grant(tag, self.by_name[spec.name])

        self.by_name[JOBS_CONSUMER].add_event_source(
            event_sources.SqsEventSource(
                data.jobs_queue,
                batch_size=JOBS_BATCH_SIZE,
                report_batch_item_failures=True,
            )
        )

    def _function(self, spec: routes.Function) -> lambda_.Function:
        scope = Construct(self, construct_id(spec.name))
        data = self._data
        log_group = logs.LogGroup(
            scope,
            "Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        fn = lambda_.Function(
            scope,
            "Function",
            description=spec.description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            code=lambda_.Code.from_asset(str(layers.stage_function(spec.name))),
            handler=f"{spec.name}.handler.lambda_handler",
            layers=[self.deps_layer, self.shared_layer],
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_s),
            tracing=lambda_.Tracing.ACTIVE,
            logging_format=lambda_.LoggingFormat.JSON,
            log_group=log_group,
            environment={
                "CACHE_TABLE": data.cache_table.table_name,
                "LEDGER_TABLE": data.ledger_table.table_name,
                "STATE_TABLE": data.state_table.table_name,
                "JOBS_QUEUE_URL": data.jobs_queue.queue_url,
                "ALERTS_TOPIC_ARN": data.alerts_topic.topic_arn,
                "EXPORTS_BUCKET": data.exports_bucket.bucket_name,
                "OPENAI_SECRET_ARN": data.openai_secret.secret_arn,
                "PROMPTS_DIR": PROMPTS_DIR,
                "PROVIDER": "auto",
                "POWERTOOLS_SERVICE_NAME": spec.name,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        cfn = fn.node.default_child
        assert isinstance(cfn, lambda_.CfnFunction)
        cfn.add_metadata(METADATA_KEY, spec.name)

        stack = Stack.of(self)
        acknowledgments = [
            (
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]",
                "AWSLambdaBasicExecutionRole only lets the function write its own CloudWatch "
                "Logs; it is the AWS-maintained minimum for any Lambda.",
            ),
            (
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords (active tracing) do not support "
                "resource-level permissions.",
            ),
            (
                "AwsSolutions-L1",
                f"Pinned to {RUNTIME.name} on purpose (supported until 2029): the layers ship "
                "deps wheels and bytecode built for exactly this minor version by a local "
                "interpreter of that version; moving up is a deliberate change in infra/layers.py.",
            ),
        ]
        if any(t.startswith("state:") for t in spec.grants):
            state = stack.get_logical_id(_cfn(data.state_table))
            acknowledgments.append(
                (
                    f"AwsSolutions-IAM5[Resource::<{state}.Arn>/index/*]",
                    "Queries on the State table's GSIs: CDK's table grant names "
                    "<table arn>/index/*, which is scoped to this one table.",
                )
            )
        if "imports:readwrite" in spec.grants:
            bucket = stack.get_logical_id(_cfn_bucket(data.imports_bucket))
            for prefix in ("incoming", "reports"):
                acknowledgments.append(
                    (
                        f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{prefix}/*]",
                        "Lead files are named by their tenant and uploader: the grant names the "
                        f"{prefix}/ prefix (read incoming files, write their reports), not each object.",
                    )
                )
        if "exports:write" in spec.grants:
            bucket = stack.get_logical_id(_cfn_bucket(data.exports_bucket))
            acknowledgments.append(
                (
                    f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/usage/*]",
                    "PutObject on the exports bucket's usage/ prefix: export object names carry the "
                    "month and tenant, so the grant names the prefix, not each object.",
                )
            )
        for rule_id, reason in acknowledgments:
            Validations.of(fn).acknowledge(Acknowledgment(id=rule_id, reason=reason))
        return fn

    # --- grants ------------------------------------------------------------------------------

    def _grant(self, tag: str, fn: lambda_.Function) -> None:
        grant = self._grants().get(tag)
        if grant is None:
            raise ValueError(f"unknown grant tag {tag!r} (known: {sorted(self._grants())})")
        grant(fn)

    def _grants(self) -> dict[str, Callable[[lambda_.Function], object]]:
        d = self._data
        return {
            "cache:readwrite": lambda fn: self._table(fn, d.cache_table, _READ + _WRITE + _DELETE),
            "cache:describe": lambda fn: d.cache_table.grant(fn, *_DESCRIBE),
            "ledger:write": lambda fn: self._table(fn, d.ledger_table, _WRITE, write=True),
            "ledger:describe": lambda fn: d.ledger_table.grant(fn, *_DESCRIBE),
            "ledger:read": lambda fn: self._table(fn, d.ledger_table, _READ, write=False),
            "state:read": lambda fn: self._table(fn, d.state_table, _READ, write=False),
            "state:readwrite": lambda fn: self._table(fn, d.state_table, _READ + _WRITE + _DELETE + _BATCH_WRITE),
            "secret:read": lambda fn: d.openai_secret.grant_read(fn),
            # Publishing to the KMS-encrypted topic needs the data key; granted without wildcards.
            "alerts:publish": lambda fn: self._allow(fn, ["sns:Publish"], [d.alerts_topic.topic_arn]),
            # Writing export objects (SSE-KMS with a bucket key) under usage/, nothing else.
            "exports:write": lambda fn: self._allow(
                fn, ["s3:PutObject"], [d.exports_bucket.arn_for_objects("usage/*")]
            ),
            # Idempotency-Key records (Powertools' persistence layer): the table name in the
            # environment, and exactly the four item calls it makes.
            "idempotency:readwrite": self._idempotency,
            # Reading lead files under incoming/ and writing their reports under reports/.
            "imports:readwrite": self._imports,
            # Sending job messages to the Jobs queue (SSE-KMS), nothing else on it.
            "jobs:enqueue": lambda fn: self._allow(fn, ["sqs:SendMessage"], [d.jobs_queue.queue_arn]),
            # A new tag is added here, with a test in tests/infra/test_stack.py and no unexplained
            # cdk-nag finding (CDK's convenience grants use action wildcards).
        }

    def _imports(self, fn: lambda_.Function) -> None:
        bucket = self._data.imports_bucket
        self._allow(fn, ["s3:GetObject"], [bucket.arn_for_objects("incoming/*")])
        self._allow(fn, ["s3:PutObject"], [bucket.arn_for_objects("reports/*")])

    def _idempotency(self, fn: lambda_.Function) -> None:
        table = self._data.idempotency_table
        fn.add_environment("IDEMPOTENCY_TABLE", table.table_name)
        self._table(fn, table, _IDEMPOTENCY)

    def _allow(self, fn: lambda_.Function, actions: list[str], resources: list[str]) -> None:
        """Named actions on named resources, plus the data key they are encrypted with."""
        fn.add_to_role_policy(iam.PolicyStatement(actions=actions, resources=resources))
        self._data.key.grant(fn, "kms:Decrypt", "kms:GenerateDataKey")

    def _table(
        self,
        fn: lambda_.Function,
        table: dynamodb.Table,
        actions: tuple[str, ...],
        *,
        write: bool = True,
    ) -> None:
        table.grant(fn, *actions)
        self._data.key.grant(fn, *(_KMS_WRITE if write else _KMS_READ))

    def bind_workflow(self, state_machine: sfn.StateMachine) -> None:
        """WORKFLOW_ARN and states:StartExecution for the functions tagged `workflow:start`.

        Done after the state machine exists: it invokes the `workflow` function, so the functions
        cannot reference it at construction time without a cycle for the workflow function.
        """
        for spec in routes.FUNCTIONS:
            fn = self.by_name[spec.name]
            if "workflow:start" in spec.grants or "workflow:stop" in spec.grants:
                fn.add_environment("WORKFLOW_ARN", state_machine.state_machine_arn)
            if "workflow:start" in spec.grants:
                state_machine.grant_start_execution(fn)
            if "workflow:stop" in spec.grants:
                # StopExecution names an execution: <machine's execution prefix>:<execution name>.
                executions = Stack.of(self).format_arn(
                    service="states",
                    resource="execution",
                    resource_name=f"{state_machine.state_machine_name}:*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
                fn.add_to_role_policy(iam.PolicyStatement(actions=["states:StopExecution"], resources=[executions]))
                machine = Stack.of(self).get_logical_id(_cfn_machine(state_machine))
                Validations.of(fn).acknowledge(
                    Acknowledgment(
                        id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:"
                        f"<AWS::AccountId>:execution:<{machine}.Name>:*]",
                        reason="StopExecution on this state machine's executions (named by job id at run "
                        "time), to cancel a job; no other state machine.",
                    )
                )


def _cfn_machine(machine: sfn.StateMachine) -> sfn.CfnStateMachine:
    cfn = machine.node.default_child
    assert isinstance(cfn, sfn.CfnStateMachine)
    return cfn


def _cfn_bucket(bucket: s3.Bucket) -> s3.CfnBucket:
    cfn = bucket.node.default_child
    assert isinstance(cfn, s3.CfnBucket)
    return cfn


def _cfn(table: dynamodb.Table) -> dynamodb.CfnTable:
    cfn = table.node.default_child
    assert isinstance(cfn, dynamodb.CfnTable)
    return cfn
