"""Template-driven generation, shared by POST /v1/generate and asynchronous jobs.

Input and output models are separate from stored models and mapped explicitly.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aigateway.completion import CallContext, Completions, CompletionSpec, ModelCall, Stage, Usage, json_output
from aigateway.experiments import ExperimentConfigs, choose_template
from aigateway.governance.pricing import micros_to_usd
from aigateway.llm.catalog import Profile, completion_params, get_model, get_profile, parse_hop
from aigateway.prompts.registry import PromptTemplate, TemplateRegistry, normalize_locale
from aigateway.prompts.render import render_messages


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$", description="Template name, e.g. skill_assessment")
    version: int | None = Field(default=None, ge=1, description="Template version; latest when omitted")
    variables: dict[str, Any] = Field(default_factory=dict, description="Values for the template's declared variables")
    model_profile: str | None = Field(default=None, description="creative | analytical | reasoning")
    max_tokens: int | None = Field(default=None, ge=16, le=32_000, description="Output token ceiling")
    locale: str | None = Field(
        default=None,
        description="BCP-47 tag (fr, pt-BR): the template's text in that language if it has it, else the closest "
        "(fr-CA → fr), else its default; the response names the locale served",
    )
    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Your end user's stable id, as in OpenAI's `user`: prompt experiments assign variants per end "
        "user (default: the API key's user). Not written to the ledger or logs",
    )

    @field_validator("locale")
    @classmethod
    def _canonical_locale(cls, value: str | None) -> str | None:
        return None if value is None else normalize_locale(value)


class UsageOut(BaseModel):
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
        )


class GenerateResponse(BaseModel):
    request_id: str
    template: str
    version: int
    model: str | None = Field(description="The model that produced the answer; null for the template's static answer")
    provider: str = Field(description="openai, simulated when no provider key is configured, or gateway")
    output: dict[str, Any] | str
    cached: bool
    fallback: bool = Field(description="True when the answer is not the primary model's fresh answer")
    served_by: Literal["primary", "fallback_model", "cache", "stale_cache", "static_answer"] = Field(
        description="Which hop of the chain answered"
    )
    degraded_reason: str | None = Field(
        description="Why the request left its primary path (an error code such as provider_rate_limited)"
    )
    attempts: int = Field(
        description="Provider attempts this call made (each is a ledger row); for a job, those of its final stage"
    )
    usage: UsageOut
    cost_usd: float = Field(description="What this request cost (0 for a cache hit), in USD")
    cost_micros: int = Field(description="The same, exact, in micro-USD")
    cost_saved_micros: int = Field(description="For a cache hit: what the original call cost")
    variant: str | None = Field(
        default=None,
        description="The prompt experiment's label: a variant name, `pinned` (the tenant's pin), `request` (you "
        "named the version), or null (no experiment: the latest version)",
    )
    locale: str | None = Field(default=None, description="The locale of the template text served")


FEATURE = "generate"


def model_calls(
    template: PromptTemplate, profile: Profile, max_tokens: int, *, caller_chose: bool
) -> tuple[ModelCall, ...]:
    """The chain: the primary model, then the template's fallback models (or the profile's).

    A template may pin a model for its own profile; a caller choosing a profile gets that
    profile's model and fallbacks.
    """
    primary = profile.model if caller_chose or not template.model else template.model
    hops = list(profile.fallbacks if caller_chose or template.fallback_models is None else template.fallback_models)
    calls: list[ModelCall] = []
    for provider, name in [("", primary), *(parse_hop(h) for h in hops)]:
        call = ModelCall(name, completion_params(get_model(name), profile, max_tokens), provider)
        if call not in calls:
            calls.append(call)
    return tuple(calls)


def response_format_of(template: PromptTemplate) -> dict[str, Any] | None:
    """Structured Outputs for a template with an output schema (named after the template)."""
    if template.output_schema is None:
        return None
    return {
        "type": "json_schema",
        "json_schema": {"name": template.name, "schema": template.output_schema, "strict": True},
    }


def generate(
    request: GenerateRequest,
    ctx: CallContext,
    *,
    templates: TemplateRegistry,
    completions: Completions,
    stage: Stage = "all",
    degraded_reason: str | None = None,
    experiments: ExperimentConfigs | None = None,
) -> tuple[GenerateResponse, dict[str, str]]:
    """The response, and the headers that go with it (the caller's rate-limit status).

    `stage` runs one part of the fallback chain (the jobs workflow); see Completions.complete.
    `experiments`: the tenants' prompt experiments (None: none apply, the latest version serves).
    """
    template, variant = choose_template(
        request.template,
        principal=ctx.principal,
        requested_version=request.version,
        locale=request.locale,
        end_user=request.user,
        templates=templates,
        experiments=experiments,
    )
    messages = render_messages(template, request.variables)
    profile = get_profile(request.model_profile or template.model_profile)
    calls = model_calls(
        template, profile, request.max_tokens or template.max_tokens, caller_chose=request.model_profile is not None
    )
    response_format = response_format_of(template)
    # The caller names the feature (generate, jobs …); the template decides the rest of the row.
    ctx = replace(ctx, template=template.ref, variant=variant, locale=template.locale)
    static = template.fallback
    result = completions.complete(
        ctx,
        CompletionSpec(
            calls=calls,
            messages=messages,
            response_format=response_format,
            cache_ttl_s=template.cache_ttl_seconds,
            validate=json_output(template.output_model),
            static_answer=json.dumps(static) if static is not None else None,
            stale_if_error_s=template.stale_if_error_seconds,
        ),
        stage=stage,
        degraded_reason=degraded_reason,
    )
    response = GenerateResponse(
        request_id=ctx.request_id,
        template=template.name,
        version=template.version,
        model=result.model,
        provider=result.provider,
        output=result.output,
        cached=result.cached,
        fallback=result.fallback,
        served_by=result.served_by,
        degraded_reason=result.degraded_reason,
        attempts=result.attempts,
        usage=UsageOut.of(result.usage),
        cost_usd=float(micros_to_usd(result.cost_micros)),
        cost_micros=result.cost_micros,
        cost_saved_micros=result.cost_saved_micros,
        variant=variant,
        locale=template.locale,
    )
    return response, result.limits.headers()
