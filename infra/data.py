"""Stateful resources: the data key, the tables, the jobs queue, alerts, secret, exports."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, CfnOutput, Duration, RemovalPolicy, SecretValue, Stack, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import routes

# SQS guidance for Lambda event sources: visibility timeout at least 6x the consumer's timeout.
JOBS_CONSUMER = "scoring_dispatch"
JOBS_MAX_RECEIVE_COUNT = 3
STRING = dynamodb.AttributeType.STRING


class Data(Construct):
    """One customer-managed key encrypts every table, queue, topic, secret and the exports bucket."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)

        self.key = kms.Key(
            self,
            "DataKey",
            description="AI Gateway data key: tables, queues, topic, secret, exports",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # CloudWatch alarms publish to the encrypted Alerts topic.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToUseTheKey",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" means this key
            )
        )

        # Response cache: disposable, expires by TTL.
        self.cache_table = self._table("Cache", sort_key=False, ttl=True, retain=False)
        # Usage ledger: the financial record. Never deleted with the stack.
        self.ledger_table = self._table("Ledger", sort_key=True, ttl=False, retain=True, protect=True)
        # Tenants, keys, budgets, limits, jobs, leads, conversations, circuits.
        self.state_table = self._table("State", sort_key=True, ttl=True, retain=True)
        self.state_table.add_global_secondary_index(
            index_name="gsi1",
            partition_key=dynamodb.Attribute(name="gsi1pk", type=STRING),
            sort_key=dynamodb.Attribute(name="gsi1sk", type=STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        CfnOutput(
            Stack.of(self),
            "StateTableName",
            value=self.state_table.table_name,
            description="State table: `python -m cli bootstrap --table <this>` issues the first operator key",
        )
        # Jobs by status, leads by when they were last scored (see docs/architecture.md).
        self.state_table.add_global_secondary_index(
            index_name="gsi2",
            partition_key=dynamodb.Attribute(name="gsi2pk", type=STRING),
            sort_key=dynamodb.Attribute(name="gsi2sk", type=STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        # Idempotency-Key records (Powertools' layout: `id`, TTL on `expiration`); they live 24 h.
        self.idempotency_table = self._table(
            "Idempotency", partition_key="id", sort_key=False, ttl=True, ttl_attribute="expiration", retain=False
        )

        self.jobs_dlq = sqs.Queue(
            self,
            "JobsDlq",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        consumer_timeout = routes.function(JOBS_CONSUMER).timeout_s
        self.jobs_queue = sqs.Queue(
            self,
            "Jobs",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(6 * consumer_timeout),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.jobs_dlq, max_receive_count=JOBS_MAX_RECEIVE_COUNT),
        )

        self.alerts_topic = sns.Topic(
            self,
            "Alerts",
            display_name="AI Gateway alerts",
            master_key=self.key,
            enforce_ssl=True,
        )

        # Set by the operator after deploy (docs/operations.md); CDK generates no value.
        self.openai_secret = secretsmanager.Secret(
            self,
            "OpenAiCredentials",
            description='OpenAI-compatible provider credentials: {"api_key": "...", "base_url": "..."}',
            encryption_key=self.key,
            secret_object_value={
                "api_key": SecretValue.unsafe_plain_text(""),
                "base_url": SecretValue.unsafe_plain_text(""),
            },
            removal_policy=RemovalPolicy.DESTROY,
        )
        Validations.of(self.openai_secret).acknowledge(
            Acknowledgment(
                id="AwsSolutions-SMG4",
                reason="Third-party provider API key: issued and rotated at the provider by the "
                "operator, who then updates the secret; there is no rotation Lambda to run.",
            )
        )

        self.access_logs_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # server access logging requires SSE-S3
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN,
        )
        # (cdk-nag S1 does not flag a bucket that is a server-access-log destination, nor SQS3 a
        # queue that is another queue's DLQ: neither needs an acknowledgment.)
        self.exports_bucket = self._bucket("Exports", log_prefix="exports/", versioned=True)
        # Lead files: `incoming/<tenant>/<file>` in, `reports/<tenant>/<file>.json` out. S3 sends
        # its object events to EventBridge (infra/schedules.py routes them to lead_batch).
        self.imports_bucket = self._bucket(
            "Imports", log_prefix="imports/", lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))]
        )
        # Set on the CloudFormation resource itself: `event_bridge_enabled=True` would add CDK's
        # bucket-notifications custom resource (one more Lambda, with a managed-policy role).
        imports_cfn = self.imports_bucket.node.default_child
        assert isinstance(imports_cfn, s3.CfnBucket)
        imports_cfn.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )

    def _bucket(self, construct_id: str, *, log_prefix: str, **options: Any) -> s3.Bucket:
        """Private, SSE-KMS with the data key (bucket key on), TLS only, owner-enforced, access
        logged under `log_prefix`, kept on stack deletion."""
        return s3.Bucket(
            self,
            construct_id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix=log_prefix,
            removal_policy=RemovalPolicy.RETAIN,
            **options,
        )

    def _table(
        self,
        construct_id: str,
        *,
        sort_key: bool,
        ttl: bool,
        retain: bool,
        protect: bool = False,
        partition_key: str = "pk",
        ttl_attribute: str = "expires_at",
    ) -> dynamodb.Table:
        """On-demand, encrypted with the data key, point-in-time recovery on (every table)."""
        return dynamodb.Table(
            self,
            construct_id,
            partition_key=dynamodb.Attribute(name=partition_key, type=STRING),
            sort_key=dynamodb.Attribute(name="sk", type=STRING) if sort_key else None,
            time_to_live_attribute=ttl_attribute if ttl else None,
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=self.key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=True if protect else None,
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
