"""Runs the stack in one process: moto for AWS, the handlers in-process, pollers in threads."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.provision import ACCOUNT, REGION, LocalFunction, Provisioned, Provisioner

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
TEMPLATE = BUILD / "cdk.out" / "AiGateway.template.json"
Handler = Callable[[dict[str, Any], Any], Any]


def _source_hash() -> str:
    digest = hashlib.sha256()
    for folder in ("infra", "functions", "layers/shared", "prompts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    digest.update((ROOT / "app.py").read_bytes())
    return digest.hexdigest()


def synthesize(force: bool = False) -> Path:
    """`python app.py` into build/cdk.out, skipped when no source changed since the last synth."""
    stamp = BUILD / "cdk.out" / ".source-hash"
    current = _source_hash()
    if not force and TEMPLATE.exists() and stamp.exists() and stamp.read_text() == current:
        return TEMPLATE
    print("synthesizing the CDK stack (python app.py) …", file=sys.stderr, flush=True)
    env = {
        **os.environ,
        "CDK_OUTDIR": str(BUILD / "cdk.out"),
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, check=True)
    stamp.write_text(current)
    return TEMPLATE


@dataclass
class LambdaContext:
    """What a handler reads from the Lambda context object."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_s: int
    started: float

    @property
    def function_version(self) -> str:
        return "$LATEST"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.monotonic()) * 1000))


class FunctionError(Exception):
    """A handler raised: carries the error type name as Lambda reports it."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


class LocalStack:
    """The whole stack on moto. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        template_path: Path | None = None,
        *,
        env_overrides: dict[str, str] | None = None,
        poll_interval_s: float = 0.2,
        redelivery_delay_s: int = 1,
    ):
        self.template_path = template_path or TEMPLATE
        self.env_overrides = env_overrides or {}
        self.poll_interval_s = poll_interval_s
        # AWS makes a failed SQS message visible again after the queue's visibility timeout
        # (minutes); locally it comes back after this many seconds so redelivery is observable.
        self.redelivery_delay_s = redelivery_delay_s
        self.resources: Provisioned | None = None
        self.invocations: dict[str, int] = {}
        self._mock: Any = None
        self._handlers: dict[str, Handler] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._saved_env: dict[str, str | None] = {}
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> LocalStack:
        from moto import mock_aws

        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }.items():
            self._set_env(key, value)
        self._mock = mock_aws(
            config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        )
        self._mock.start()
        template = json.loads(self.template_path.read_text())
        self.resources = Provisioner(template).run()
        self._configure_environment()
        self._route_step_functions_lambda_calls()
        self._make_dynamodb_calls_atomic()
        for source in self.resources.event_sources:
            thread = threading.Thread(target=self._poll, args=(source,), name=f"sqs-{source.function}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if hasattr(self, "_original_call_action"):
            from moto.dynamodb.responses import DynamoHandler

            DynamoHandler.call_action = self._original_call_action  # type: ignore[method-assign]
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from aigateway import deps

        deps.reset()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _set_env(self, key: str, value: str) -> None:
        self._saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _configure_environment(self) -> None:
        """Handlers share one process, so they share one environment: the union of the functions'."""
        assert self.resources is not None
        merged: dict[str, str] = {}
        for fn in self.resources.functions.values():
            for key, value in fn.environment.items():
                if key != "POWERTOOLS_SERVICE_NAME":
                    merged[key] = value
        merged.update(
            {
                "PROMPTS_DIR": str(ROOT / "prompts"),
                "OPENAPI_PATH": str(BUILD / "openapi.json"),
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon locally
                "POWERTOOLS_SERVICE_NAME": "aigateway-local",
            }
        )
        merged.update(self.env_overrides)
        for key, value in merged.items():
            self._set_env(key, value)
        for path in (ROOT / "functions", ROOT / "layers" / "shared" / "python"):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        from infra.openapi import write

        write(BUILD / "openapi.json")
        from aigateway import deps

        deps.reset()

    # --- invoking handlers -----------------------------------------------------------------
    def handler(self, name: str) -> Handler:
        if name not in self._handlers:
            self._handlers[name] = importlib.import_module(f"{name}.handler").lambda_handler
        return self._handlers[name]

    def function(self, name: str) -> LocalFunction:
        assert self.resources is not None
        return self.resources.functions[name]

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """Calls a function's handler the way Lambda would; raises FunctionError if it raises."""
        fn = self.function(name)
        context = LambdaContext(
            fn.physical_name, fn.memory_mb, fn.arn, str(uuid.uuid4()), fn.timeout_s, time.monotonic()
        )
        with self._lock:
            self.invocations[name] = self.invocations.get(name, 0) + 1
        try:
            return self.handler(name)(event, context)
        except Exception as exc:
            raise FunctionError(type(exc).__name__, str(exc)) from exc

    def _route_step_functions_lambda_calls(self) -> None:
        """moto's ASL interpreter invokes Lambda through LambdaSimpleBackend.invoke: answer in-process."""
        from moto.awslambda_simple.models import LambdaSimpleBackend

        stack = self

        def invoke(
            backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any
        ) -> bytes:
            assert stack.resources is not None
            target = stack.resources.function_by_arn_or_name(function_name)
            if target is None:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": "ResourceNotFoundException", "errorMessage": function_name}).encode()
            payload = json.loads(body) if body else {}
            try:
                result = stack.invoke(target.name, payload)
            except FunctionError as exc:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": exc.error_type, "errorMessage": str(exc)}).encode()
            return json.dumps(result).encode()

        self._original_invoke = LambdaSimpleBackend.invoke
        LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign,assignment]

    def _make_dynamodb_calls_atomic(self) -> None:
        """DynamoDB applies each request atomically; moto's backend takes no lock at all.

        Without this, two threads' conditional writes to one item can both pass their condition
        (a budget admits more than its limit). One lock around each DynamoDB request restores the
        guarantee the code relies on; moto requests take about a millisecond, so it costs little.
        """
        from moto.dynamodb.responses import DynamoHandler

        original = DynamoHandler.call_action
        lock = threading.RLock()

        def call_action(handler: Any) -> Any:
            with lock:
                return original(handler)

        self._original_call_action = original
        DynamoHandler.call_action = call_action  # type: ignore[method-assign]
        _make_transactions_cheap()

    # --- schedules ---------------------------------------------------------------------------
    def run_schedule(self, name: str) -> Any:
        """Fires one EventBridge schedule now: its function gets the rule's input, as on AWS."""
        assert self.resources is not None
        target = self.resources.schedules.get(name)
        if target is None:
            raise KeyError(f"no schedule {name!r} (known: {sorted(self.resources.schedules)})")
        event = _eventbridge_event("Scheduled Event", "aws.events", [], {})
        # A rule with a constant Input delivers that Input instead of the scheduled event.
        return self.invoke(target.function, target.input or event)

    def drop_import(self, tenant_id: str, name: str, body: bytes) -> Any:
        """Drops a lead file in the imports bucket, then delivers the "Object Created" event S3
        would send to EventBridge to the imports rule's function (moto does not route S3 events
        to rule targets); returns the function's import report."""
        import boto3

        assert self.resources is not None
        rule = self.resources.schedules["lead-imports"]
        bucket = rule.pattern["detail"]["bucket"]["name"][0]
        key = f"incoming/{tenant_id}/{name}"
        s3 = boto3.client("s3", region_name=REGION)
        put = s3.put_object(Bucket=bucket, Key=key, Body=body)
        detail = {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": len(body), "etag": put["ETag"].strip('"')},
            "request-id": str(uuid.uuid4()),
            "requester": ACCOUNT,
            "reason": "PutObject",
        }
        event = _eventbridge_event("Object Created", "aws.s3", [f"arn:aws:s3:::{bucket}"], detail)
        return self.invoke(rule.function, event)

    # --- SQS event sources -----------------------------------------------------------------
    def _poll(self, source: Any) -> None:
        import boto3

        sqs = boto3.client("sqs", region_name=REGION)
        while not self._stop.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=source.queue_url,
                    MaxNumberOfMessages=min(source.batch_size, 10),
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception:  # noqa: BLE001 - keep polling; moto is stopping or briefly busy
                if self._stop.wait(self.poll_interval_s):
                    return
                continue
            if not messages:
                self._stop.wait(self.poll_interval_s)
                continue
            self.deliver(sqs, source, messages)

    def deliver(self, sqs: Any, source: Any, messages: list[dict[str, Any]]) -> list[str]:
        """One batch to the consumer; deletes what succeeded. Returns the failed message ids."""
        event = {"Records": [_sqs_record(m, source.queue_arn) for m in messages]}
        try:
            response = self.invoke(source.function, event) or {}
            failed = (
                {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
                if source.report_failures
                else set()
            )
        except FunctionError:
            traceback.print_exc()
            failed = {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] in failed:
                sqs.change_message_visibility(
                    QueueUrl=source.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=self.redelivery_delay_s,
                )
            else:
                sqs.delete_message(QueueUrl=source.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return sorted(failed)


def _make_transactions_cheap() -> None:
    """moto deep-copies every table a transaction touches, to roll back: O(table) per transaction.

    At a thousand ledger rows that is ~45 ms per TransactWriteItems, and every request settles
    in one. Instead, snapshot only the items the transaction names and restore those on failure
    (the whole-table copies become no-ops). Safe because DynamoDB requests are serialized above.
    Idempotent: patching twice keeps one wrapper.
    """
    import copy
    import types

    from moto.dynamodb import models as ddb_models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    backend_cls = ddb_models.DynamoDBBackend
    if getattr(backend_cls.transact_write_items, "_cheap", False):
        return
    original = backend_cls.transact_write_items
    no_table_copies = types.SimpleNamespace(
        deepcopy=lambda value, memo=None: value if isinstance(value, Table) else copy.deepcopy(value, memo)
    )

    def transact_write_items(backend: Any, transact_items: list[dict[str, Any]]) -> None:
        snapshot = []
        for entry in transact_items:
            op = next(iter(entry.values()))
            table = backend.get_table(op["TableName"])
            key = op.get("Key") or op["Item"]
            hash_key = DynamoType(key[table.hash_key_attr])
            range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
            snapshot.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
        ddb_models.copy = no_table_copies  # type: ignore[assignment]
        try:
            original(backend, transact_items)
        except Exception:
            for table, hash_key, range_key, item in reversed(snapshot):
                if item is None:
                    if table.get_item(hash_key, range_key) is not None:
                        table.delete_item(hash_key, range_key)
                elif range_key is not None:
                    table.items[hash_key][range_key] = item
                else:
                    table.items[hash_key] = item
            raise
        finally:
            ddb_models.copy = copy

    transact_write_items._cheap = True  # type: ignore[attr-defined]
    backend_cls.transact_write_items = transact_write_items  # type: ignore[method-assign,assignment]


def _eventbridge_event(detail_type: str, source: str, resources: list[str], detail: dict[str, Any]) -> dict[str, Any]:
    """An event as EventBridge delivers it to a rule's target."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": resources,
        "detail": detail,
    }


def _sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }
