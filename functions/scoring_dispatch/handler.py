"""SQS consumer: one workflow execution per job message, with partial batch failures.

A message that fails (unreadable, or Step Functions unavailable) is reported back alone, so the
rest of its batch is not redelivered; after the queue's receive count it lands in the DLQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from aigateway import jobs
from aigateway.observability import logger
from aigateway.settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

processor = BatchProcessor(event_type=EventType.SQS)


def start_job(record: SQSRecord) -> None:
    message = jobs.decode(record.body)
    arn = get_settings().workflow_arn
    if not arn:
        raise RuntimeError("WORKFLOW_ARN is not configured")
    started = jobs.start_execution(arn, message)
    logger().info("job dispatched", extra={"job_id": message.job_id, "started": started})


@logger().inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=start_job, processor=processor, context=context)
