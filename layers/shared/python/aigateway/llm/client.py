"""The OpenAI client: built once per execution environment, pointed at whichever provider is configured.

`openai` is imported lazily so that paths that never call a model (cache hits, health, auth)
never pay its ~0.4 s import.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aigateway.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    GatewayError,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnreachable,
)
from aigateway.settings import Settings

if TYPE_CHECKING:
    from openai import OpenAI


DEFAULT_PROVIDER = ""  # a hop naming no provider uses the gateway's own (openai or simulated)


@dataclass(frozen=True)
class ProviderConfig:
    name: str  # "openai" (any OpenAI-compatible base_url), "simulated", or a FALLBACK_PROVIDERS name
    api_key: str
    base_url: str | None


@lru_cache(maxsize=8)
def provider_config(settings: Settings, name: str = DEFAULT_PROVIDER) -> ProviderConfig:
    """Decides which provider answers: an explicit key wins, then the Secrets Manager secret.

    `name` selects one of FALLBACK_PROVIDERS instead. Cached per execution environment: a secret
    is read once per cold start, not per call.
    """
    if name != DEFAULT_PROVIDER:
        return _named_provider(settings, name)
    if settings.provider != "simulated":
        if settings.openai_api_key:
            return ProviderConfig("openai", settings.openai_api_key, settings.openai_base_url)
        if settings.openai_secret_arn:
            secret = _read_secret(settings.openai_secret_arn)
            if secret.get("api_key"):
                return ProviderConfig("openai", secret["api_key"], secret.get("base_url") or settings.openai_base_url)
        if settings.provider == "openai":
            raise GatewayError("PROVIDER=openai but no OpenAI API key is configured")
    return ProviderConfig("simulated", "simulated", settings.simulator_url)


def _named_provider(settings: Settings, name: str) -> ProviderConfig:
    try:
        declared = json.loads(settings.fallback_providers or "{}")
    except ValueError as exc:
        raise GatewayError("FALLBACK_PROVIDERS is not valid JSON") from exc
    entry = declared.get(name) if isinstance(declared, dict) else None
    if not isinstance(entry, dict) or not entry.get("base_url"):
        raise GatewayError(f"provider {name!r} is not declared in FALLBACK_PROVIDERS (with a base_url)")
    api_key = entry.get("api_key")
    if not api_key and entry.get("secret_arn"):
        api_key = _read_secret(entry["secret_arn"]).get("api_key")
    return ProviderConfig(name, str(api_key or "none"), str(entry["base_url"]))


def _read_secret(arn: str) -> dict[str, str]:
    import boto3

    raw = boto3.client("secretsmanager").get_secret_value(SecretId=arn).get("SecretString") or "{}"
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


@lru_cache(maxsize=4)
def _client(config: ProviderConfig, timeout_s: float, max_retries: int) -> OpenAI:
    import httpx
    from openai import OpenAI

    if config.name == "simulated" and not config.base_url:
        from aigateway.llm.simulated import SimulatedProvider, simulated_transport

        http_client = httpx.Client(transport=simulated_transport(SimulatedProvider()))
        return OpenAI(
            api_key="simulated",
            base_url="http://simulated.invalid/v1",
            http_client=http_client,
            timeout=timeout_s,
            max_retries=max_retries,
        )
    return OpenAI(api_key=config.api_key, base_url=config.base_url, timeout=timeout_s, max_retries=max_retries)


def provider_client(settings: Settings, name: str = DEFAULT_PROVIDER) -> tuple[ProviderConfig, OpenAI]:
    """The provider's config and its client. The SDK's own retries are OPENAI_MAX_RETRIES (0):
    retrying is the gateway's job (aigateway/resilience), so retries never multiply."""
    config = provider_config(settings, name)
    return config, _client(config, settings.openai_timeout_s, settings.openai_max_retries)


@dataclass(frozen=True)
class ProviderReply:
    content: str
    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    finish_reason: str
    simulated: bool
    latency_ms: int
    tool_calls: tuple[dict[str, Any], ...] = ()  # function calls the model asked for, in OpenAI's wire shape


def chat_completion(
    client: OpenAI,
    *,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    response_format: dict[str, Any] | None,
    timeout_s: float,
) -> ProviderReply:
    """One provider call with an explicit timeout; SDK errors become domain errors."""
    import openai
    from openai.types.chat import ChatCompletion

    started = time.perf_counter()
    kwargs: dict[str, Any] = {"model": model, "messages": messages, **params}
    if response_format is not None:
        kwargs["response_format"] = response_format
    try:
        completion = client.chat.completions.create(**kwargs, timeout=timeout_s)
    except openai.APITimeoutError as exc:
        raise ProviderTimeout(f"the model provider did not answer within {timeout_s:.1f}s") from exc
    except openai.APIStatusError as exc:
        raise classify_status(exc.status_code, _error_code(exc.body), exc.response.headers) from exc
    except openai.APIConnectionError as exc:
        raise ProviderUnreachable("the connection to the model provider failed") from exc
    except (openai.APIResponseValidationError, ValueError) as exc:
        # ValueError: a 200 whose body is not JSON surfaces from the SDK as a bare JSONDecodeError.
        raise ProviderBadResponse("the model provider's answer could not be read") from exc
    latency_ms = int((time.perf_counter() - started) * 1000)
    if not isinstance(completion, ChatCompletion):
        # A 200 with a non-JSON content type comes back from the SDK as the raw text.
        raise ProviderBadResponse("the model provider's answer could not be read")
    if not completion.choices:
        raise ProviderBadResponse("the model provider returned no choices")
    choice = completion.choices[0]
    usage = completion.usage
    cached = 0
    if usage is not None and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens or 0
    # finish_reason "content_filter" is an answer too (billed, unusable): the caller decides.
    return ProviderReply(
        content=choice.message.content or "",
        model=completion.model or model,
        input_tokens=usage.prompt_tokens if usage else 0,
        cached_tokens=cached,
        output_tokens=usage.completion_tokens if usage else 0,
        finish_reason=choice.finish_reason or "stop",
        simulated=(completion.system_fingerprint or "") == "fp_simulated",
        latency_ms=latency_ms,
        tool_calls=tuple(call.model_dump(mode="json", exclude_none=True) for call in choice.message.tool_calls or ()),
    )


def classify_status(status: int, code: str | None, headers: Any) -> GatewayError:
    """The domain error for a provider's HTTP error status (aigateway/resilience/policy.py says
    what each one triggers)."""
    if status == 429 and code != "insufficient_quota":
        return ProviderRateLimited(
            "the model provider is rate limiting requests", retry_after_s=retry_after_seconds(headers)
        )
    if status in (401, 403) or code == "insufficient_quota":
        return ProviderAuthError(f"the model provider refused the gateway's credentials (HTTP {status})")
    if code == "context_length_exceeded":
        return ContextLengthExceeded("the input is longer than the model's context window", field="variables")
    if code in ("content_filter", "content_policy_violation"):
        return ContentFiltered("the model provider's content filter refused the input", field="variables")
    if status == 408:
        return ProviderTimeout("the model provider timed out (HTTP 408)")
    if 400 <= status < 500:
        return ProviderRejected(f"the model provider refused the request (HTTP {status}, {code or 'no code'})")
    return ProviderError(f"the model provider answered HTTP {status}", retry_after_s=retry_after_seconds(headers))


def _error_code(body: object) -> str | None:
    """OpenAI's `{"error": {"code": …}}`; some servers send the error object bare."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("code") is not None:
            return str(error["code"])
    return None


def retry_after_seconds(headers: Any) -> float | None:
    """`retry-after-ms` (OpenAI's, precise) or `retry-after` in seconds or as an HTTP date."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, at.timestamp() - time.time())
