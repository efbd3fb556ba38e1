"""Lambda for /v1/jobs: submit a template job (202, at most once per Idempotency-Key), read one back.

No AWS code here: validation, rate limits and enqueueing are `aigateway.jobs.JobService`.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path

from aigateway import deps
from aigateway.api import (
    create_app,
    entrypoint,
    idempotency_key_header,
    idempotent_response,
    ok_response,
    request_info,
    require_principal,
)
from aigateway.generation import GenerateRequest
from aigateway.idempotency import Reply
from aigateway.jobs import JobAccepted, JobOut

JOB_ID = Path(pattern=r"^[0-9A-Za-z]{1,64}$", description="The job id POST /v1/jobs returned")

app = create_app()


@app.post(
    "/v1/jobs",
    summary="Queue a template generation to run asynchronously; poll the job for its result",
    tags=["jobs"],
    responses={202: ok_response("Queued; `Location` names the job to poll", JobAccepted, location=True)},
)
def post_job(
    request: Annotated[GenerateRequest, Body()],
    idempotency_key: Annotated[str | None, idempotency_key_header()] = None,
) -> Response[Any]:
    info = request_info(app)
    principal = require_principal(app)

    def run() -> Reply:
        accepted, headers = deps.job_service().submit(request, principal, client_ip=info.client_ip)
        return Reply(202, accepted.model_dump(mode="json"), {**headers, "Location": accepted.links["self"]})

    return idempotent_response(app, key=idempotency_key, payload=request, run=run, store=deps.idempotency_store)


@app.get("/v1/jobs/<job_id>", summary="A job's status, and its result or error once it has ended", tags=["jobs"])
def get_job(job_id: Annotated[str, JOB_ID]) -> JobOut:
    return deps.job_service().status(require_principal(app), job_id)


lambda_handler = entrypoint(app)
