"""Lambda for /v1/jobs: submit a template job (202, at most once per Idempotency-Key), read one back,
list a tenant's jobs by status, cancel one, retry one, or retry every failed job in a range.

No AWS code here: validation, rate limits and enqueueing are `aigateway.jobs.JobService`.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query

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
from aigateway.jobs import JobAccepted, JobOut, JobPage, JobState, RetryFailedIn, RetryReport

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


@app.get("/v1/jobs", summary="The tenant's jobs, newest first, optionally of one status", tags=["jobs"])
def list_jobs(
    status: Annotated[JobState | None, Query(description="queued, processing, succeeded, failed or cancelled")] = None,
    since: Annotated[str | None, Query(description="Created at or after (ISO 8601)")] = None,
    until: Annotated[str | None, Query(description="Created at or before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page")] = 50,
    cursor: Annotated[str | None, Query(description="The previous page's next_cursor")] = None,
) -> JobPage:
    return deps.job_service().page(
        require_principal(app), status=status, since=since, until=until, limit=limit, cursor=cursor
    )


@app.post(
    "/v1/jobs/<job_id>/cancel",
    summary="Cancel a queued or running job (its workflow is stopped); 409 job_finished once it has ended",
    tags=["jobs"],
)
def cancel_job(job_id: Annotated[str, JOB_ID]) -> JobOut:
    return deps.job_service().cancel(require_principal(app), job_id)


@app.post(
    "/v1/jobs/<job_id>/retry",
    summary="Run a failed or cancelled job again, under the same id",
    tags=["jobs"],
    responses={202: ok_response("Queued again", JobOut)},
)
def retry_job(job_id: Annotated[str, JOB_ID]) -> Response[Any]:
    out = deps.job_service().retry(require_principal(app), job_id)
    return Response(202, "application/json", out.model_dump_json(), {"Location": out.links["self"]})


@app.post(
    "/v1/jobs/retry-failed",
    summary="Run again the failed jobs created in a time range (up to `limit` per call)",
    tags=["jobs"],
    responses={202: ok_response("The jobs queued again", RetryReport)},
)
def retry_failed(request: Annotated[RetryFailedIn, Body()]) -> Response[Any]:
    out = deps.job_service().retry_failed(require_principal(app), request)
    return Response(202, "application/json", out.model_dump_json())


lambda_handler = entrypoint(app)
