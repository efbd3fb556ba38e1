"""The synthesized AiGateway template: what the route/function tables promise, it contains.

Given the stack synthesized once per session (conftest), when we read its template, then ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_cdk.assertions import Match

from infra import routes
from infra.layers import LAMBDA_PYTHON

pytestmark = pytest.mark.infra

Resources = dict[str, dict[str, Any]]

WRITE_ACTIONS = {
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
}
READ_ACTIONS = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan"}

# What each grant tag may do, per table (the spec the roles are checked against).
TAG_TABLE_ACTIONS: dict[str, tuple[str, set[str]]] = {
    "cache:readwrite": ("cache", READ_ACTIONS - {"dynamodb:Scan"} | WRITE_ACTIONS - {"dynamodb:BatchWriteItem"}),
    "cache:describe": ("cache", {"dynamodb:DescribeTable"}),
    "ledger:write": ("ledger", {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"}),
    "ledger:describe": ("ledger", {"dynamodb:DescribeTable"}),
    "ledger:read": ("ledger", {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}),
    "state:read": ("state", {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}),
    # BatchWriteItem is authorised by its own action (moto checks no IAM): job rows are batch-written.
    "state:readwrite": ("state", READ_ACTIONS - {"dynamodb:Scan"} | WRITE_ACTIONS),
    # Exactly what Powertools' DynamoDBPersistenceLayer calls.
    "idempotency:readwrite": (
        "idempotency",
        {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"},
    ),
}


# --- helpers -----------------------------------------------------------------------------------


def logical_id(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


def of_type(resources: Resources, cfn_type: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in resources.items() if r["Type"] == cfn_type}


def referenced_ids(value: Any) -> Iterator[str]:
    """Logical ids named by Ref / Fn::GetAtt anywhere inside value."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0] if isinstance(inner, list) else inner.split(".")[0]
            else:
                yield from referenced_ids(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from referenced_ids(inner)


def lambda_functions(resources: Resources) -> dict[str, tuple[str, dict[str, Any]]]:
    """Function name (from the aigateway:function metadata) -> (logical id, resource)."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for lid, res in of_type(resources, "AWS::Lambda::Function").items():
        name = res.get("Metadata", {}).get("aigateway:function")
        assert name is not None, f"{lid} has no aigateway:function metadata"
        assert name not in found, f"two functions carry aigateway:function={name}"
        found[name] = (lid, res)
    return found


def role_statements(resources: Resources, function_name: str) -> list[dict[str, Any]]:
    """Every policy statement the function's execution role carries (inline policies)."""
    _, fn = lambda_functions(resources)[function_name]
    (role_id,) = set(referenced_ids(fn["Properties"]["Role"]))
    statements: list[dict[str, Any]] = []
    for policy in of_type(resources, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"].get("Roles", []):
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    for policy in resources[role_id]["Properties"].get("Policies", []):
        statements.extend(policy["PolicyDocument"]["Statement"])
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def table_actions(statements: list[dict[str, Any]], table_id: str) -> set[str]:
    """Actions granted on any resource that names this table (table or its indexes)."""
    actions: set[str] = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        if table_id in set(referenced_ids(statement.get("Resource"))):
            actions.update(as_list(statement["Action"]))
    return actions


def state_machine_definition(resources: Resources) -> dict[str, Any]:
    (sm,) = of_type(resources, "AWS::StepFunctions::StateMachine").values()
    definition = sm["Properties"]["DefinitionString"]
    if isinstance(definition, dict):  # {"Fn::Join": ["", [...parts]]}
        parts = definition["Fn::Join"][1]
        definition = "".join(p if isinstance(p, str) else "${" + next(referenced_ids(p)) + "}" for p in parts)
    parsed: dict[str, Any] = json.loads(definition)
    return parsed


@pytest.fixture(scope="module")
def tables(stack: Any) -> dict[str, str]:
    return {
        "cache": logical_id(stack, stack.data.cache_table),
        "ledger": logical_id(stack, stack.data.ledger_table),
        "state": logical_id(stack, stack.data.state_table),
        "idempotency": logical_id(stack, stack.data.idempotency_table),
    }


# --- data --------------------------------------------------------------------------------------


def test_there_are_exactly_four_tables_all_on_demand_kms_encrypted_with_pitr(resources: Resources, stack: Any) -> None:
    key_id = logical_id(stack, stack.data.key)
    found = of_type(resources, "AWS::DynamoDB::Table")
    assert len(found) == 4
    for lid, table in found.items():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST", lid
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, lid
        sse = props["SSESpecification"]
        assert sse["SSEEnabled"] is True and sse["SSEType"] == "KMS", lid
        assert sse["KMSMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}, lid
        assert "TableName" not in props, f"{lid}: physical names are CDK-generated"
    assert resources[key_id]["Properties"]["EnableKeyRotation"] is True


def test_cache_table_has_pk_only_ttl_and_is_disposable(resources: Resources, tables: dict[str, str]) -> None:
    cache = resources[tables["cache"]]
    assert cache["Properties"]["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert cache["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert cache["DeletionPolicy"] == "Delete"


def test_ledger_table_is_retained_and_deletion_protected(resources: Resources, tables: dict[str, str]) -> None:
    ledger = resources[tables["ledger"]]
    assert ledger["Properties"]["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert ledger["Properties"]["DeletionProtectionEnabled"] is True
    assert ledger["DeletionPolicy"] == "Retain" and ledger["UpdateReplacePolicy"] == "Retain"
    assert "TimeToLiveSpecification" not in ledger["Properties"]


def test_state_table_has_ttl_and_two_gsis(resources: Resources, tables: dict[str, str]) -> None:
    props = resources[tables["state"]]["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # gsi1: tenants, keys, budgets, jobs by time, leads ranked; gsi2: jobs by status, leads by age
    assert props["GlobalSecondaryIndexes"] == [
        {
            "IndexName": name,
            "KeySchema": [
                {"AttributeName": f"{name}pk", "KeyType": "HASH"},
                {"AttributeName": f"{name}sk", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
        for name in ("gsi1", "gsi2")
    ]
    for attribute in ("gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"):
        assert {"AttributeName": attribute, "AttributeType": "S"} in props["AttributeDefinitions"]
    assert resources[tables["state"]]["DeletionPolicy"] == "Retain"


def test_idempotency_table_has_powertools_key_and_ttl_and_is_disposable(
    resources: Resources, tables: dict[str, str]
) -> None:
    # Given Powertools' DynamoDBPersistenceLayer defaults (key_attr "id", expiry_attr "expiration")
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    defaults = DynamoDBPersistenceLayer(table_name="t", boto3_client=object())  # type: ignore[arg-type]
    table = resources[tables["idempotency"]]
    props = table["Properties"]
    # Then the table is keyed and expires by exactly those attributes, with no sort key or index
    assert props["KeySchema"] == [{"AttributeName": defaults.key_attr, "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": defaults.expiry_attr, "Enabled": True}
    assert "GlobalSecondaryIndexes" not in props
    # And records live 24 h, so the table goes with the stack
    assert table["DeletionPolicy"] == "Delete"


def test_jobs_queue_redrives_to_an_encrypted_dlq_after_three_receives(resources: Resources, stack: Any) -> None:
    jobs = resources[logical_id(stack, stack.data.jobs_queue)]["Properties"]
    dlq_id = logical_id(stack, stack.data.jobs_dlq)
    dlq = resources[dlq_id]["Properties"]
    assert jobs["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 3}
    consumer_timeout = routes.function("scoring_dispatch").timeout_s
    assert jobs["VisibilityTimeout"] >= 6 * consumer_timeout
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    key_arn = {"Fn::GetAtt": [logical_id(stack, stack.data.key), "Arn"]}
    assert jobs["KmsMasterKeyId"] == key_arn and dlq["KmsMasterKeyId"] == key_arn
    # enforce_ssl: each queue has a policy denying aws:SecureTransport=false
    policies = of_type(resources, "AWS::SQS::QueuePolicy").values()
    denied = {
        q
        for p in policies
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for q in referenced_ids(p["Properties"]["Queues"])
    }
    assert denied == {logical_id(stack, stack.data.jobs_queue), dlq_id}


def test_secret_holds_an_empty_credentials_template_under_the_data_key(resources: Resources, stack: Any) -> None:
    (secret,) = of_type(resources, "AWS::SecretsManager::Secret").values()
    assert json.loads(secret["Properties"]["SecretString"]) == {"api_key": "", "base_url": ""}
    assert secret["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [logical_id(stack, stack.data.key), "Arn"]}
    assert "GenerateSecretString" not in secret["Properties"]


def test_exports_bucket_is_private_versioned_encrypted_and_access_logged(resources: Resources, stack: Any) -> None:
    exports = resources[logical_id(stack, stack.data.exports_bucket)]["Properties"]
    logs_id = logical_id(stack, stack.data.access_logs_bucket)
    assert exports["VersioningConfiguration"] == {"Status": "Enabled"}
    assert exports["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = exports["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert exports["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": logs_id}


# --- functions ---------------------------------------------------------------------------------


def test_one_lambda_per_function_entry_found_by_metadata(resources: Resources) -> None:
    assert sorted(lambda_functions(resources)) == sorted(f.name for f in routes.FUNCTIONS)


def test_every_function_is_arm64_on_the_layers_runtime_with_both_layers_tracing_and_json_logs(
    resources: Resources, stack: Any
) -> None:
    layer_ids = [
        logical_id(stack, stack.functions.deps_layer),
        logical_id(stack, stack.functions.shared_layer),
    ]
    for layer_id in layer_ids:
        layer = resources[layer_id]["Properties"]
        assert layer["CompatibleArchitectures"] == ["arm64"]
        assert layer["CompatibleRuntimes"] == [f"python{LAMBDA_PYTHON}"]
    for spec in routes.FUNCTIONS:
        lid, fn = lambda_functions(resources)[spec.name]
        props = fn["Properties"]
        assert props["Runtime"] == f"python{LAMBDA_PYTHON}", lid
        assert props["Architectures"] == ["arm64"], lid
        assert props["Handler"] == f"{spec.name}.handler.lambda_handler", lid
        assert props["Layers"] == [{"Ref": layer_ids[0]}, {"Ref": layer_ids[1]}], lid
        assert props["TracingConfig"] == {"Mode": "Active"}, lid
        assert props["LoggingConfig"]["LogFormat"] == "JSON", lid
        (log_group_id,) = referenced_ids(props["LoggingConfig"]["LogGroup"])
        assert resources[log_group_id]["Properties"]["RetentionInDays"] == 30
        assert props["MemorySize"] == spec.memory_mb and props["Timeout"] == spec.timeout_s, lid
        assert "FunctionName" not in props


def test_lambda_runtime_is_not_past_its_aws_creation_block_date() -> None:
    # python3.11 (AL2) stopped accepting new functions on 2026-07-31: a stack on it cannot deploy.
    assert LAMBDA_PYTHON not in {"3.8", "3.9", "3.10", "3.11"}


def test_environment_satisfies_the_settings_contract(resources: Resources) -> None:
    from aigateway.settings import Settings

    aliases = {field.alias for field in Settings.model_fields.values()}
    required = {field.alias for field in Settings.model_fields.values() if field.is_required()}
    for spec in routes.FUNCTIONS:
        _, fn = lambda_functions(resources)[spec.name]
        env = fn["Properties"]["Environment"]["Variables"]
        assert required <= set(env), f"{spec.name}: missing {required - set(env)}"
        unknown = {k for k in env if k not in aliases and not k.startswith("POWERTOOLS_")}
        assert not unknown, f"{spec.name}: variables Settings does not read: {unknown}"
        assert env["PROMPTS_DIR"] == "/opt/prompts"
        assert env["PROVIDER"] == "auto"
        assert env["POWERTOOLS_SERVICE_NAME"] == spec.name
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "AiGateway"
        needs_machine = bool({"workflow:start", "workflow:stop"} & set(spec.grants))
        assert ("WORKFLOW_ARN" in env) == needs_machine, spec.name
        assert ("IDEMPOTENCY_TABLE" in env) == ("idempotency:readwrite" in spec.grants), spec.name


def test_idempotency_table_is_named_to_and_granted_for_the_post_functions_only(
    resources: Resources, tables: dict[str, str]
) -> None:
    # Given the functions serving POST routes that honour Idempotency-Key
    tagged = {spec.name for spec in routes.FUNCTIONS if "idempotency:readwrite" in spec.grants}
    assert tagged == {"chat", "generate", "jobs", "leads"}
    for spec in routes.FUNCTIONS:
        _, fn = lambda_functions(resources)[spec.name]
        env = fn["Properties"]["Environment"]["Variables"]
        actions = table_actions(role_statements(resources, spec.name), tables["idempotency"])
        if spec.name in tagged:
            # Then they get the table's name and exactly the four item calls on it
            assert env["IDEMPOTENCY_TABLE"] == {"Ref": tables["idempotency"]}, spec.name
            assert actions == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
        else:
            # And no other function can touch it
            assert "IDEMPOTENCY_TABLE" not in env and not actions, spec.name


def test_only_the_job_creating_functions_send_to_the_jobs_queue(resources: Resources, stack: Any) -> None:
    queue_id = logical_id(stack, stack.data.jobs_queue)
    for spec in routes.FUNCTIONS:
        statements = role_statements(resources, spec.name)
        sends = [s for s in statements if "sqs:SendMessage" in as_list(s["Action"])]
        assert bool(sends) == ("jobs:enqueue" in spec.grants), spec.name
        for s in sends:
            assert as_list(s["Action"]) == ["sqs:SendMessage"], spec.name
            assert set(referenced_ids(s["Resource"])) == {queue_id}, spec.name
    assert [spec.name for spec in routes.FUNCTIONS if "jobs:enqueue" in spec.grants] == ["jobs", "leads", "lead_batch"]


def test_jobs_routes_are_served_by_the_jobs_function() -> None:
    served = {(r.method, r.path): r.function for r in routes.ROUTES}
    assert served[("POST", "/v1/jobs")] == "jobs"
    assert served[("GET", "/v1/jobs/{job_id}")] == "jobs"
    assert served[("POST", "/v1/jobs/{job_id}/cancel")] == "jobs"
    assert served[("POST", "/v1/leads/score")] == "leads"
    assert not any(r.public for r in routes.ROUTES if r.function in ("jobs", "leads"))


def test_scoring_dispatch_consumes_jobs_in_batches_with_partial_failures(resources: Resources, stack: Any) -> None:
    (mapping,) = of_type(resources, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    dispatch_id, _ = lambda_functions(resources)["scoring_dispatch"]
    assert props["FunctionName"] == {"Ref": dispatch_id}
    assert props["EventSourceArn"] == {"Fn::GetAtt": [logical_id(stack, stack.data.jobs_queue), "Arn"]}
    assert props["BatchSize"] == 10
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


# --- least privilege ---------------------------------------------------------------------------


def test_authorizer_cannot_write_anything_nor_touch_ledger_or_cache(
    resources: Resources, tables: dict[str, str]
) -> None:
    statements = role_statements(resources, "authorizer")
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert not actions & WRITE_ACTIONS
    touched = {lid for s in statements for lid in referenced_ids(s.get("Resource"))}
    assert tables["ledger"] not in touched and tables["cache"] not in touched


def test_ledger_writers_can_neither_read_nor_delete_ledger_rows(resources: Resources, tables: dict[str, str]) -> None:
    for spec in routes.FUNCTIONS:
        if "ledger:write" in spec.grants:
            actions = table_actions(role_statements(resources, spec.name), tables["ledger"])
            assert actions == {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"}


def test_table_access_of_every_role_is_exactly_what_its_grant_tags_allow(
    resources: Resources, tables: dict[str, str]
) -> None:
    for spec in routes.FUNCTIONS:
        statements = role_statements(resources, spec.name)
        for table, table_id in tables.items():
            allowed: set[str] = set()
            for tag in spec.grants:
                if tag in TAG_TABLE_ACTIONS and TAG_TABLE_ACTIONS[tag][0] == table:
                    allowed |= TAG_TABLE_ACTIONS[tag][1]
            assert table_actions(statements, table_id) == allowed, (spec.name, table)


def test_no_role_has_wildcard_actions_or_scan(resources: Resources) -> None:
    for spec in routes.FUNCTIONS:
        for statement in role_statements(resources, spec.name):
            for action in as_list(statement["Action"]):
                assert "*" not in action, (spec.name, action)
                assert action != "dynamodb:Scan", spec.name


def test_only_workflow_starters_may_start_executions_and_read_the_secret_only_if_tagged(
    resources: Resources, stack: Any
) -> None:
    sm_id = logical_id(stack, stack.workflow.state_machine)
    secret_id = logical_id(stack, stack.data.openai_secret)
    for spec in routes.FUNCTIONS:
        statements = role_statements(resources, spec.name)
        starts = any(
            "states:StartExecution" in as_list(s["Action"]) and sm_id in set(referenced_ids(s["Resource"]))
            for s in statements
        )
        assert starts == ("workflow:start" in spec.grants), spec.name
        stops = [s for s in statements if "states:StopExecution" in as_list(s["Action"])]
        assert bool(stops) == ("workflow:stop" in spec.grants), spec.name
        for s in stops:
            # Only this machine's executions (arn:…:execution:<machine name>:*)
            assert as_list(s["Action"]) == ["states:StopExecution"]
            assert set(referenced_ids(s["Resource"])) - {"AWS::Partition", "AWS::Region", "AWS::AccountId"} == {sm_id}
            assert ":execution:" in json.dumps(s["Resource"])
        reads_secret = any(secret_id in set(referenced_ids(s.get("Resource"))) for s in statements)
        assert reads_secret == ("secret:read" in spec.grants), spec.name


def test_only_tagged_functions_publish_alerts_or_write_exports(resources: Resources, stack: Any) -> None:
    topic_id = logical_id(stack, stack.data.alerts_topic)
    bucket_id = logical_id(stack, stack.data.exports_bucket)
    for spec in routes.FUNCTIONS:
        statements = role_statements(resources, spec.name)
        publishes = [s for s in statements if "sns:Publish" in as_list(s["Action"])]
        assert bool(publishes) == ("alerts:publish" in spec.grants), spec.name
        for s in publishes:
            assert set(referenced_ids(s["Resource"])) == {topic_id}, spec.name
        puts = [s for s in statements if "s3:PutObject" in as_list(s["Action"])]
        export_puts = [s for s in puts if bucket_id in set(referenced_ids(s["Resource"]))]
        assert bool(export_puts) == ("exports:write" in spec.grants), spec.name
        for s in export_puts:
            assert "/usage/*" in json.dumps(s["Resource"]), "exports may only be written under usage/"


def test_imports_bucket_is_private_encrypted_sends_events_to_eventbridge_and_only_lead_batch_reads_it(
    resources: Resources, stack: Any
) -> None:
    bucket_id = logical_id(stack, stack.data.imports_bucket)
    props = resources[bucket_id]["Properties"]
    assert props["NotificationConfiguration"] == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    assert props["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    for spec in routes.FUNCTIONS:
        statements = [
            s for s in role_statements(resources, spec.name) if bucket_id in set(referenced_ids(s["Resource"]))
        ]
        assert bool(statements) == ("imports:readwrite" in spec.grants), spec.name
        actions = {a: json.dumps(s["Resource"]) for s in statements for a in as_list(s["Action"])}
        if statements:
            # Read incoming files, write reports: nothing else, nowhere else
            assert set(actions) == {"s3:GetObject", "s3:PutObject"}, spec.name
            assert "/incoming/*" in actions["s3:GetObject"] and "/reports/*" in actions["s3:PutObject"]


def test_lead_files_under_incoming_invoke_lead_batch_through_eventbridge(resources: Resources, stack: Any) -> None:
    rules = {
        r.get("Metadata", {}).get("aigateway:schedule"): r for r in of_type(resources, "AWS::Events::Rule").values()
    }
    rule = rules["lead-imports"]["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"]["object"] == {"key": [{"prefix": "incoming/"}]}
    assert set(referenced_ids(pattern["detail"]["bucket"]["name"])) == {logical_id(stack, stack.data.imports_bucket)}
    (target,) = rule["Targets"]
    assert set(referenced_ids(target["Arn"])) == {lambda_functions(resources)["lead_batch"][0]}


def test_every_schedule_is_an_eventbridge_rule_invoking_its_function(resources: Resources) -> None:
    rules = {
        r.get("Metadata", {}).get("aigateway:schedule"): r for r in of_type(resources, "AWS::Events::Rule").values()
    }
    functions = lambda_functions(resources)
    for schedule in routes.SCHEDULES:
        rule = rules[schedule.name]["Properties"]
        assert rule["ScheduleExpression"] == schedule.expression and rule["State"] == "ENABLED"
        (target,) = rule["Targets"]
        assert set(referenced_ids(target["Arn"])) == {functions[schedule.function][0]}
        assert json.loads(target["Input"]) == {"schedule": schedule.name}
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2


# --- API ---------------------------------------------------------------------------------------


def test_one_route_per_route_table_entry_with_the_right_authorization(resources: Resources) -> None:
    found = of_type(resources, "AWS::ApiGatewayV2::Route")
    assert len(found) == len(routes.ROUTES)
    by_key = {r["Properties"]["RouteKey"]: r["Properties"] for r in found.values()}
    integrations = of_type(resources, "AWS::ApiGatewayV2::Integration")
    (authorizer_id,) = of_type(resources, "AWS::ApiGatewayV2::Authorizer")
    functions = lambda_functions(resources)
    for route in routes.ROUTES:
        props = by_key[f"{route.method} {route.path}"]
        if route.public:
            assert props["AuthorizationType"] == "NONE"
            assert "AuthorizerId" not in props
        else:
            assert props["AuthorizationType"] == "CUSTOM"
            assert props["AuthorizerId"] == {"Ref": authorizer_id}
        (integration_id,) = [i for i in referenced_ids(props["Target"]) if i in integrations]
        integration = integrations[integration_id]["Properties"]
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["PayloadFormatVersion"] == "2.0"
        assert integration["IntegrationUri"] == {"Fn::GetAtt": [functions[route.function][0], "Arn"]}


def test_authorizer_is_a_cached_simple_lambda_authorizer_on_the_authorization_header(
    resources: Resources,
) -> None:
    (authorizer,) = of_type(resources, "AWS::ApiGatewayV2::Authorizer").values()
    props = authorizer["Properties"]
    assert props["AuthorizerType"] == "REQUEST"
    assert props["IdentitySource"] == ["$request.header.Authorization"]
    assert props["AuthorizerResultTtlInSeconds"] == 300
    assert props["EnableSimpleResponses"] is True
    assert props["AuthorizerPayloadFormatVersion"] == "2.0"
    authorizer_fn_id, _ = lambda_functions(resources)["authorizer"]
    assert authorizer_fn_id in set(referenced_ids(props["AuthorizerUri"]))


def test_default_stage_logs_access_and_throttles(template: Any) -> None:
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "StageName": "$default",
            "AutoDeploy": True,
            "AccessLogSettings": {"DestinationArn": Match.any_value(), "Format": Match.string_like_regexp("requestId")},
            "DefaultRouteSettings": {
                "ThrottlingBurstLimit": Match.any_value(),
                "ThrottlingRateLimit": Match.any_value(),
            },
        },
    )
    template.has_output("ApiUrl", {"Value": Match.any_value()})
    # What `python -m cli bootstrap --table` needs to issue the first operator key
    template.has_output("StateTableName", {"Value": {"Ref": Match.string_like_regexp("^DataState")}})


def test_every_http_function_may_be_invoked_by_api_gateway(resources: Resources) -> None:
    permissions = of_type(resources, "AWS::Lambda::Permission").values()
    invoked = {
        lid
        for p in permissions
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
        for lid in referenced_ids(p["Properties"]["FunctionName"])
    }
    functions = lambda_functions(resources)
    expected = {functions[name][0] for name in [*routes.http_functions(), "authorizer"]}
    assert invoked == expected


# --- workflow ----------------------------------------------------------------------------------


def test_state_machine_is_standard_traced_logged_and_tagged_for_the_local_runtime(
    resources: Resources,
) -> None:
    (sm,) = of_type(resources, "AWS::StepFunctions::StateMachine").values()
    props = sm["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ERROR"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False
    assert sm["Metadata"]["aigateway:workflow"] == "jobs"
    assert "StateMachineName" not in props


def test_workflow_definition_is_the_fallback_chain_with_retries_by_error_class(resources: Resources) -> None:
    from aigateway.resilience.policy import RETRYABLE, caller_errors

    definition = state_machine_definition(resources)
    states = definition["States"]
    workflow_fn_id, _ = lambda_functions(resources)["workflow"]
    assert definition["StartAt"] == "MarkProcessing"
    assert states["MarkProcessing"]["Next"] == "Run" and states["MarkProcessing"]["ResultPath"] == "$.marked"
    caller = sorted(caller_errors())
    for name, stage, on_failure in (("Run", "primary", "RunFallback"), ("RunFallback", "fallback", "Degrade")):
        step = states[name]
        assert step["ResultPath"] == "$.result" and step["Next"] == "Persist", name
        # Transient provider errors: retried by class, exponential backoff with full jitter.
        provider_retry = next(r for r in step["Retry"] if "ProviderRateLimited" in r["ErrorEquals"])
        assert provider_retry == {
            "ErrorEquals": list(RETRYABLE),
            "IntervalSeconds": 1,
            "MaxAttempts": 2,
            "BackoffRate": 2,
            "JitterStrategy": "FULL",
        }, name
        assert set(RETRYABLE) >= {"ProviderRateLimited", "ProviderTimeout", "ProviderError", "ProviderUnreachable"}
        assert any("Lambda.TooManyRequestsException" in r["ErrorEquals"] for r in step["Retry"]), name
        # The caller's errors end the job; anything else moves to the next stage of the chain.
        caller_catch, rest = step["Catch"]
        assert caller_catch["Next"] == "RecordFailure" and caller_catch["ResultPath"] == "$.error"
        assert rest == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": on_failure}, name
        assert step["Parameters"] == {"action": "run", "stage": stage, "job.$": "$", "attempt.$": "$$.State.RetryCount"}
    # A too-long input may still fit a fallback model's larger window; after that it is the caller's.
    assert sorted(states["Run"]["Catch"][0]["ErrorEquals"]) == [e for e in caller if e != "ContextLengthExceeded"]
    assert sorted(states["RunFallback"]["Catch"][0]["ErrorEquals"]) == caller
    assert {"ContentFiltered", "BudgetExhausted", "ValidationFailed"} <= set(caller)
    degrade = states["Degrade"]
    assert degrade["Parameters"]["stage"] == "degraded" and degrade["Next"] == "Persist"
    # No job is left `processing`: every step that can fail records the failure.
    for name in ("MarkProcessing", "Degrade", "Persist"):
        assert states[name]["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordFailure"}
        ], name
    assert states["RecordFailure"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"
    assert states["Persist"]["Next"] == "Done" and states["Done"]["Type"] == "Succeed"
    for name, action in {
        "MarkProcessing": "mark_processing",
        "Persist": "persist",
        "RecordFailure": "record_failure",
    }.items():
        # payload_response_only: the Resource is the function ARN itself, the payload its Parameters.
        assert states[name]["Resource"] == "${" + workflow_fn_id + "}", name
        # The retry count numbers the ledger attempt, so a retried provider call is billed once each.
        assert states[name]["Parameters"] == {"action": action, "job.$": "$", "attempt.$": "$$.State.RetryCount"}, name


def test_dlq_alarm_notifies_the_alerts_topic(resources: Resources, stack: Any) -> None:
    (alarm,) = of_type(resources, "AWS::CloudWatch::Alarm").values()
    props = alarm["Properties"]
    assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert props["Namespace"] == "AWS/SQS"
    assert set(referenced_ids(props["Dimensions"])) == {logical_id(stack, stack.data.jobs_dlq)}
    assert props["Threshold"] == 1
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert props["AlarmActions"] == [{"Ref": logical_id(stack, stack.data.alerts_topic)}]


# --- things the local runtime (moto CloudFormation) depends on ---------------------------------


def test_no_custom_resources_and_no_hard_coded_names(resources: Resources) -> None:
    custom = [lid for lid, r in resources.items() if r["Type"].startswith("Custom::")]
    custom += [lid for lid, r in resources.items() if r["Type"] == "AWS::CloudFormation::CustomResource"]
    assert not custom, f"moto cannot run custom resources: {custom}"
    named = {
        "AWS::DynamoDB::Table": "TableName",
        "AWS::SQS::Queue": "QueueName",
        "AWS::SNS::Topic": "TopicName",
        "AWS::Lambda::Function": "FunctionName",
        "AWS::S3::Bucket": "BucketName",
        "AWS::IAM::Role": "RoleName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::StepFunctions::StateMachine": "StateMachineName",
        "AWS::SecretsManager::Secret": "Name",
    }
    for lid, res in resources.items():
        prop = named.get(res["Type"])
        assert prop is None or prop not in res.get("Properties", {}), f"{lid} hard-codes {prop}"


# --- layers and staged code --------------------------------------------------------------------


def test_layers_and_functions_are_staged_for_lambda(synth: Any) -> None:
    # Given the builds conftest ran / Then the asset directories have Lambda's /opt and /var/task shapes.
    from infra import layers

    deps, shared = layers.build_deps_layer(), layers.build_shared_layer()
    site = deps / "python"
    assert (site / "pydantic_core").is_dir() and (site / "openai").is_dir()
    native = list((site / "pydantic_core").glob("_pydantic_core.*.so"))
    assert native and all(f"cpython-{LAMBDA_PYTHON.replace('.', '')}-aarch64" in p.name for p in native)
    assert not (site / "botocore").exists(), "the runtime's boto3/botocore pair must not be shadowed"
    assert (shared / "python" / "aigateway" / "settings.py").is_file()
    assert (shared / "prompts").is_dir()
    for spec in routes.FUNCTIONS:
        assert (layers.stage_function(spec.name) / spec.name / "handler.py").is_file()


def test_shipped_bytecode_is_hash_based_for_the_lambda_python(synth: Any) -> None:
    # Timestamp pycs would be stale on Lambda (zips carry fixed mtimes, /opt is read-only).
    from infra import layers

    if layers.bytecode_python() is None:
        pytest.skip(f"no local CPython {LAMBDA_PYTHON} to compile with: layers ship source only")
    tag = f"cpython-{LAMBDA_PYTHON.replace('.', '')}"
    pycs = list((layers.build_shared_layer() / "python" / "aigateway").rglob(f"*.{tag}.pyc"))
    assert pycs
    for pyc in pycs:
        header = pyc.read_bytes()[:8]
        flags = int.from_bytes(header[4:8], "little")
        assert flags == 0b01, f"{pyc}: not an unchecked-hash pyc (flags={flags})"
