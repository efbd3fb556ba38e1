"""Template-driven generation, shared by POST /v1/generate and asynchronous jobs.

Input and output models are separate from stored models and mapped explicitly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aigateway.completion import CallContext, Completions, CompletionSpec, json_output
from aigateway.governance.pricing import micros_to_usd
from aigateway.llm.catalog import completion_params, get_model, get_profile
from aigateway.prompts.registry import TemplateRegistry
from aigateway.prompts.render import render_messages


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$", description="Template name, e.g. skill_assessment")
    version: int | None = Field(default=None, ge=1, description="Template version; latest when omitted")
    variables: dict[str, Any] = Field(default_factory=dict, description="Values for the template's declared variables")
    model_profile: str | None = Field(default=None, description="creative | analytical | reasoning")
    max_tokens: int | None = Field(default=None, ge=16, le=32_000, description="Output token ceiling")


class UsageOut(BaseModel):
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    request_id: str
    template: str
    version: int
    model: str
    provider: str = Field(description="openai, or simulated when no provider key is configured")
    output: dict[str, Any] | str
    cached: bool
    fallback: bool
    usage: UsageOut
    cost_usd: float = Field(description="What this request cost (0 for a cache hit), in USD")
    cost_micros: int = Field(description="The same, exact, in micro-USD")
    cost_saved_micros: int = Field(description="For a cache hit: what the original call cost")


FEATURE = "generate"


def generate(
    request: GenerateRequest, ctx: CallContext, *, templates: TemplateRegistry, completions: Completions
) -> tuple[GenerateResponse, dict[str, str]]:
    """The response, and the headers that go with it (the caller's rate-limit status)."""
    template = templates.get(request.template, request.version)
    messages = render_messages(template, request.variables)
    profile = get_profile(request.model_profile or template.model_profile)
    # A template may pin a model for its own profile; a caller choosing a profile gets that profile's model.
    model = get_model(profile.model if request.model_profile or not template.model else template.model)
    params = completion_params(model, profile, request.max_tokens or template.max_tokens)
    response_format = None
    if template.output_schema is not None:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": template.name, "schema": template.output_schema, "strict": True},
        }
    ctx = replace(ctx, template=template.ref)  # the caller names the feature (generate, jobs …)
    result = completions.complete(
        ctx,
        CompletionSpec(
            model=model.name,
            messages=messages,
            params=params,
            response_format=response_format,
            cache_ttl_s=template.cache_ttl_seconds,
            validate=json_output(template.output_model),
        ),
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
        usage=UsageOut(
            input_tokens=result.usage.input_tokens,
            cached_input_tokens=result.usage.cached_tokens,
            output_tokens=result.usage.output_tokens,
            total_tokens=result.usage.total_tokens,
        ),
        cost_usd=float(micros_to_usd(result.cost_micros)),
        cost_micros=result.cost_micros,
        cost_saved_micros=result.cost_saved_micros,
    )
    return response, result.limits.headers()
