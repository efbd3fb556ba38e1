"""Creates the template's data and messaging resources in moto, straight from their CFN properties.

Why not moto's CloudFormation `create_stack`: state machines it creates are invisible to the
executing Step Functions backend, and Lambda resources need their code assets uploaded. Reading
the template ourselves keeps what runs locally identical to what deploys (keys, indexes, TTL,
redrive policies, the state machine definition) while skipping what has no local meaning (IAM,
KMS, log groups, the HTTP API — `infra/local/server.py` plays API Gateway from the route table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import boto3

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "AiGateway"


@dataclass
class LocalFunction:
    logical_id: str
    name: str  # the folder under functions/
    physical_name: str
    arn: str
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int


@dataclass
class EventSource:
    queue_url: str
    queue_arn: str
    function: str
    batch_size: int
    report_failures: bool


@dataclass
class ScheduledTarget:
    """An EventBridge rule's function target: on a schedule (`expression`) or on an event pattern."""

    function: str
    expression: str
    input: dict[str, Any]
    pattern: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provisioned:
    physical: dict[str, str] = field(default_factory=dict)  # logical id -> Ref value
    arns: dict[str, str] = field(default_factory=dict)  # logical id -> Arn
    functions: dict[str, LocalFunction] = field(default_factory=dict)  # by function name
    event_sources: list[EventSource] = field(default_factory=list)
    state_machines: dict[str, str] = field(default_factory=dict)  # workflow name -> ARN
    schedules: dict[str, ScheduledTarget] = field(default_factory=dict)  # schedule name -> target

    def function_by_arn_or_name(self, ref: str) -> LocalFunction | None:
        for f in self.functions.values():
            if ref in (f.arn, f.physical_name, f.name) or ref.startswith(f.arn + ":"):
                return f
        return None


class Provisioner:
    def __init__(self, template: dict[str, Any]):
        self.resources: dict[str, dict[str, Any]] = template["Resources"]
        self.out = Provisioned()
        self._in_progress: set[str] = set()
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.sns = boto3.client("sns", region_name=REGION)
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.secrets = boto3.client("secretsmanager", region_name=REGION)

    def run(self) -> Provisioned:
        for logical_id in self.resources:
            self._ensure(logical_id)
        return self.out

    # --- intrinsic functions -------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._get_att(logical, attr)
            if key == "Fn::Join":
                sep, parts = arg
                return sep.join(str(self.resolve(p)) for p in parts)
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                for name in _sub_names(text):
                    text = text.replace(
                        "${" + name + "}",
                        str(self._ref(name) if "." not in name else self._get_att(*name.split(".", 1))),
                    )
                return text
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: str) -> str:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": STACK,
            "AWS::NoValue": "",
        }
        if name in pseudo:
            return pseudo[name]
        self._ensure(name)
        return self.out.physical[name]

    def _get_att(self, logical: str, attr: str) -> str:
        self._ensure(logical)
        if attr == "Arn":
            return self.out.arns[logical]
        if attr == "QueueName":
            return self.out.physical[logical].rsplit("/", 1)[-1]
        if attr == "QueueUrl":
            return self.out.physical[logical]
        if attr == "TopicName":
            return self.out.physical[logical].rsplit(":", 1)[-1]
        return f"local-{logical}-{attr}"

    # --- resources -------------------------------------------------------------------------
    def _ensure(self, logical_id: str) -> None:
        if logical_id in self.out.physical or logical_id in self._in_progress:
            return
        self._in_progress.add(logical_id)
        resource = self.resources[logical_id]
        kind = resource["Type"]
        props = resource.get("Properties", {})
        creator = getattr(self, "_create_" + kind.replace("AWS::", "").replace("::", "_").lower(), None)
        if creator is not None:
            creator(logical_id, props, resource.get("Metadata", {}))
        else:  # no local meaning (IAM, KMS, logs, alarms, the HTTP API …): a placeholder identity
            self.out.physical[logical_id] = f"local-{logical_id}"
            self.out.arns[logical_id] = f"arn:aws:local:{REGION}:{ACCOUNT}:{logical_id}"
        self._in_progress.discard(logical_id)

    def _name(self, logical_id: str) -> str:
        return f"{STACK}-{logical_id}"[:80]

    def _create_dynamodb_table(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        name = props.get("TableName") or self._name(logical_id)
        kwargs: dict[str, Any] = {
            "TableName": name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = [
                {k: g[k] for k in ("IndexName", "KeySchema", "Projection")} for g in props["GlobalSecondaryIndexes"]
            ]
        self.ddb.create_table(**kwargs)
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            self.ddb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
            )
        self.out.physical[logical_id] = name
        self.out.arns[logical_id] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"

    def _create_sqs_queue(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        name = props.get("QueueName") or self._name(logical_id)
        attributes: dict[str, str] = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
            if key in props:
                attributes[key] = str(props[key])
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps(self.resolve(props["RedrivePolicy"]))
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.out.physical[logical_id] = url
        self.out.arns[logical_id] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    def _create_sns_topic(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        arn = self.sns.create_topic(Name=props.get("TopicName") or self._name(logical_id))["TopicArn"]
        self.out.physical[logical_id] = arn
        self.out.arns[logical_id] = arn

    def _create_s3_bucket(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        name = (props.get("BucketName") or self._name(logical_id)).lower()
        self.s3.create_bucket(Bucket=name)
        self.out.physical[logical_id] = name
        self.out.arns[logical_id] = f"arn:aws:s3:::{name}"

    def _create_secretsmanager_secret(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        secret = self.resolve(props.get("SecretString", "{}"))
        arn = self.secrets.create_secret(Name=props.get("Name") or self._name(logical_id), SecretString=secret)["ARN"]
        self.out.physical[logical_id] = arn
        self.out.arns[logical_id] = arn

    def _create_lambda_function(self, logical_id: str, props: dict[str, Any], metadata: dict[str, Any]) -> None:
        name = metadata.get("aigateway:function")
        physical = props.get("FunctionName") or self._name(logical_id)
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{physical}"
        # Registered before resolving the environment: a variable may refer back to this function.
        self.out.physical[logical_id] = physical
        self.out.arns[logical_id] = arn
        if name is None:  # a CDK-internal helper function: nothing to serve locally
            return
        env = self.resolve(props.get("Environment", {}).get("Variables", {}))
        self.out.functions[name] = LocalFunction(
            logical_id,
            name,
            physical,
            arn,
            {k: str(v) for k, v in env.items()},
            int(props.get("Timeout", 3)),
            int(props.get("MemorySize", 128)),
        )

    def _create_lambda_eventsourcemapping(self, logical_id: str, props: dict[str, Any], _: dict[str, Any]) -> None:
        queue_arn = self.resolve(props["EventSourceArn"])
        function_ref = self.resolve(props["FunctionName"])
        queue_logical = next(k for k, v in self.out.arns.items() if v == queue_arn)
        target = self.out.function_by_arn_or_name(function_ref)
        if target is None:
            raise RuntimeError(f"event source {logical_id} targets unknown function {function_ref}")
        self.out.event_sources.append(
            EventSource(
                queue_url=self.out.physical[queue_logical],
                queue_arn=queue_arn,
                function=target.name,
                batch_size=int(props.get("BatchSize", 10)),
                report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            )
        )
        self.out.physical[logical_id] = f"local-{logical_id}"

    def _create_stepfunctions_statemachine(
        self, logical_id: str, props: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        definition = self.resolve(props.get("DefinitionString"))
        if not isinstance(definition, str):
            definition = json.dumps(definition)
        name = props.get("StateMachineName") or self._name(logical_id)
        arn = self.sfn.create_state_machine(
            name=name,
            definition=definition,
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}-local",
            type=props.get("StateMachineType", "STANDARD"),
        )["stateMachineArn"]
        self.out.physical[logical_id] = arn
        self.out.arns[logical_id] = arn
        self.out.state_machines[metadata.get("aigateway:workflow", logical_id)] = arn

    def _create_events_rule(self, logical_id: str, props: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Rules do not fire by themselves locally: `LocalStack.run_schedule(name)` fires a schedule,
        `LocalStack.drop_import(...)` puts a file and delivers the imports rule's S3 event."""
        name = metadata.get("aigateway:schedule", logical_id)
        for target in props.get("Targets", []):
            function = self.out.function_by_arn_or_name(str(self.resolve(target["Arn"])))
            if function is not None:
                self.out.schedules[name] = ScheduledTarget(
                    function.name,
                    props.get("ScheduleExpression", ""),
                    json.loads(target.get("Input") or "{}"),
                    self.resolve(props.get("EventPattern") or {}),
                )
        self.out.physical[logical_id] = f"local-{logical_id}"
        self.out.arns[logical_id] = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{logical_id}"


def _sub_names(text: str) -> list[str]:
    names, start = [], 0
    while (i := text.find("${", start)) != -1:
        j = text.index("}", i)
        names.append(text[i + 2 : j])
        start = j + 1
    return names
