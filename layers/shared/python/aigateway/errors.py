"""Domain errors. Logic raises these; one mapper per transport turns them into responses.

Each error carries a machine-readable `code`, the HTTP status it maps to, and optionally the
request `field` it concerns. Nothing here knows about HTTP frameworks.
"""

from __future__ import annotations

import math


class GatewayError(Exception):
    code = "internal_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, object] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.details = details or {}

    @property
    def type(self) -> str:
        """OpenAI's error `type` for this status, so one body shape serves our routes and OpenAI clients."""
        return _OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self, request_id: str) -> dict[str, object]:
        # A superset of OpenAI's {"error": {"message", "type", "param", "code"}}: the official SDKs
        # read message/type/param/code from it; our clients read code/field.
        error: dict[str, object] = {"code": self.code, "message": self.message, "type": self.type, "param": self.field}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.details)
        return {"error": error, "request_id": request_id}


_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


class InvalidRequest(GatewayError):
    code = "invalid_request"
    status = 400


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class InvalidDate(InvalidRequest):
    """A date is not a real calendar day in `YYYY-MM-DD` form."""

    code = "invalid_date"


class InvalidRange(InvalidRequest):
    """A date range is reversed or longer than allowed."""

    code = "invalid_range"


class InvalidMonth(InvalidRequest):
    """A month is not `YYYY-MM`, or has not begun yet."""

    code = "invalid_month"


class UnsupportedFormat(InvalidRequest):
    code = "unsupported_format"


class InvalidTenant(InvalidRequest):
    """A tenant selector that cannot apply here (e.g. `*` where one tenant must be named)."""

    code = "invalid_tenant"


class InvalidCursor(InvalidRequest):
    """A paging cursor that this request did not issue (malformed, or another scope or month)."""

    code = "invalid_cursor"


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"
    status = 413


class ValidationFailed(GatewayError):
    code = "validation_error"
    status = 422


class UnknownTemplate(GatewayError):
    code = "unknown_template"
    status = 404


class UnknownModel(GatewayError):
    code = "unknown_model"
    status = 400


class Unauthorized(GatewayError):
    code = "unauthorized"
    status = 401


class Forbidden(GatewayError):
    code = "forbidden"
    status = 403


class RateLimited(GatewayError):
    """A rate limit refused the request; `limit` names it (`<scope>:<feature|*>`)."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, limit: str, headers: dict[str, str]):
        super().__init__(message, headers=headers, details={"limit": limit})


class BudgetExhausted(GatewayError):
    """A budget cannot cover the request's worst-case cost; names the budget and its period."""

    code = "budget_exhausted"
    status = 402

    def __init__(self, message: str, *, budget: str, period: str, limit_micros: int, remaining_micros: int):
        super().__init__(
            message,
            details={
                "budget": budget,
                "period": period,
                "limit_micros": limit_micros,
                "remaining_micros": remaining_micros,
            },
        )


class NotFound(GatewayError):
    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    """OpenAI's answer to a model id it does not serve (`model_not_found`)."""

    code = "model_not_found"


class QuotaExceeded(GatewayError):
    """A budget refused a request on the OpenAI-compatible route: OpenAI's `insufficient_quota` 429,
    which OpenAI clients treat as "stop, do not retry" (our own routes answer 402 budget_exhausted)."""

    code = "insufficient_quota"
    status = 429

    @property
    def type(self) -> str:
        return "insufficient_quota"


class ProviderError(GatewayError):
    """The model provider failed and no fallback could answer.

    Subclass names are what the jobs state machine's Retry and Catch match on (infra/workflow.py),
    and each has one policy in aigateway/resilience/policy.py.
    """

    code = "provider_error"
    status = 502

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        # When this error is the answer, the caller may come back when the provider said it could.
        headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
        super().__init__(message, headers=headers)
        self.retry_after_s = retry_after_s  # the provider's Retry-After (or a circuit's cooldown)


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status = 504


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    status = 503


class ProviderUnreachable(ProviderError):
    """The connection to the provider failed or was reset before an answer arrived."""

    code = "provider_unreachable"
    status = 502


class ProviderBadResponse(ProviderError):
    """The provider answered 2xx with a body that is not a chat completion (malformed, cut off)."""

    code = "provider_bad_response"
    status = 502


class ProviderAuthError(ProviderError):
    """The provider refused our credentials (401/403): a deployment fault, never the caller's."""

    code = "provider_auth_error"
    status = 502


class ProviderRejected(ProviderError):
    """The provider refused the request as invalid (a 4xx other than the classes above)."""

    code = "provider_rejected_request"
    status = 502


class NoFallbackModel(ProviderError):
    """A fallback stage ran for a template whose chain has no fallback model."""

    code = "no_fallback_model"
    status = 502


class CircuitOpen(ProviderError):
    """Every model that could answer is behind an open circuit breaker."""

    code = "provider_unavailable"
    status = 503


class InvalidModelOutput(ProviderError):
    """The model answered, but not in the shape the template's schema demands."""

    code = "invalid_model_output"
    status = 502

    def __init__(self, message: str, *, content: str = "", problems: str = "") -> None:
        super().__init__(message)
        self.content = content  # the unusable answer, for the repair attempt (never logged)
        self.problems = problems  # what is wrong with it, as the schema validator put it


class ContentFiltered(GatewayError):
    """The provider's content filter refused the input or cut the output: the content is the cause."""

    code = "content_filtered"
    status = 422


class ContextLengthExceeded(GatewayError):
    """The input does not fit the context window of any model in the chain."""

    code = "context_length_exceeded"
    status = 400


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"


class IdempotencyInProgress(GatewayError):
    """A request with the same Idempotency-Key is still running; retry after it finishes."""

    code = "idempotency_in_progress"
    status = 409


class IdempotencyKeyReused(GatewayError):
    """The Idempotency-Key was already used with a different request body."""

    code = "idempotency_key_reused"
    status = 422


class TemplateError(GatewayError):
    """A template in prompts/ is malformed: a packaging fault, found at load time."""

    code = "template_error"
    status = 500


def code_of(class_name: str) -> str | None:
    """The machine-readable code of a domain error named by its class (as Step Functions reports it)."""
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == class_name:
            return cls.code
        todo.extend(cls.__subclasses__())
    return None


class UnknownLeads(NotFound):
    """Lead ids that this tenant has no lead for (nothing was queued)."""

    code = "unknown_leads"


class JobFinished(GatewayError):
    """The job has already ended (succeeded, failed or cancelled): it cannot be cancelled."""

    code = "job_finished"
    status = 409


class JobNotRetryable(GatewayError):
    """Only a failed or cancelled job can be retried."""

    code = "job_not_retryable"
    status = 409


class QueueUnavailable(GatewayError):
    """SQS did not accept a job's message: the job is recorded as failed and can be retried."""

    code = "queue_unavailable"
    status = 503


class JobCancelled(GatewayError):
    """The job was cancelled before its workflow reached it: the workflow stops without writing."""

    code = "job_cancelled"
    status = 409


class TenantExists(GatewayError):
    """A tenant with this id already exists; tenant ids are never reused."""

    code = "tenant_exists"
    status = 409


class VersionConflict(GatewayError):
    """Someone else changed the record since it was read; read it again and retry."""

    code = "version_conflict"
    status = 409


class InvalidRecord(ValidationFailed):
    """A record given for `{*}` expansion is malformed: a bad field name, nesting deeper than one
    level, too many fields or a value too long; `field` names the offending path."""

    code = "invalid_record"


class ExcludedField(ValidationFailed):
    """An instruction's placeholder names a field that is excluded (by the template or the request):
    excluded fields never leave the gateway, so the request is refused rather than sent without it."""

    code = "excluded_field"


class UnknownField(ValidationFailed):
    """An instruction's placeholder names a field the record does not have."""

    code = "unknown_field"


class UnknownRequest(NotFound):
    """No request with this id in the caller's tenant (another tenant's is reported the same way)."""

    code = "unknown_request"


class UnknownTemplateVersion(ValidationFailed):
    """An experiment names a template version that is not deployed."""

    code = "unknown_template_version"


class ReportTooLarge(InvalidRequest):
    """The report's range holds more ledger rows than one request may read: narrow the range."""

    code = "report_too_large"


class ConversationNotFound(NotFound):
    """No such conversation for this caller: another user's or tenant's is reported the same way."""

    code = "conversation_not_found"


class MessageNotFound(NotFound):
    """The conversation has no message with this id."""

    code = "message_not_found"


class ConversationBusy(GatewayError):
    """Another message to this conversation is being answered: retry when it has finished."""

    code = "conversation_busy"
    status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class ContextBudgetExceeded(InvalidRequest):
    """What must be sent every turn (system prompt, pinned messages, the new message) exceeds the
    conversation's token budget; `needed_tokens` and `token_budget` say by how much."""

    code = "context_budget_exceeded"

    def __init__(self, message: str, *, needed_tokens: int, token_budget: int, field: str | None = None) -> None:
        super().__init__(message, field=field, details={"needed_tokens": needed_tokens, "token_budget": token_budget})
