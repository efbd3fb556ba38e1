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

from aigateway.errors import GatewayError, ProviderError, ProviderRateLimited, ProviderTimeout
from aigateway.settings import Settings

if TYPE_CHECKING:
    from openai import OpenAI


@dataclass(frozen=True)
class ProviderConfig:
    name: str  # "openai" (any OpenAI-compatible base_url) or "simulated"
    api_key: str
    base_url: str | None


@lru_cache(maxsize=4)
def provider_config(settings: Settings) -> ProviderConfig:
    """Decides which provider answers: an explicit key wins, then the Secrets Manager secret.

    Cached per execution environment: the secret is read once per cold start, not per call.
    """
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


def provider_client(settings: Settings) -> tuple[ProviderConfig, OpenAI]:
    config = provider_config(settings)
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


def chat_completion(
    client: OpenAI,
    *,
    model: str,
    messages: list[dict[str, str]],
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
    except openai.RateLimitError as exc:
        raise ProviderRateLimited("the model provider is rate limiting requests") from exc
    except openai.APIStatusError as exc:
        raise ProviderError(f"the model provider answered HTTP {exc.status_code}") from exc
    except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as exc:
        # ValueError: a 200 whose body is not JSON surfaces from the SDK as a bare JSONDecodeError.
        raise ProviderError("the model provider's answer could not be read") from exc
    latency_ms = int((time.perf_counter() - started) * 1000)
    if not isinstance(completion, ChatCompletion):
        # A 200 with a non-JSON content type comes back from the SDK as the raw text.
        raise ProviderError("the model provider's answer could not be read")
    if not completion.choices:
        raise ProviderError("the model provider returned no choices")
    choice = completion.choices[0]
    usage = completion.usage
    cached = 0
    if usage is not None and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens or 0
    return ProviderReply(
        content=choice.message.content or "",
        model=completion.model or model,
        input_tokens=usage.prompt_tokens if usage else 0,
        cached_tokens=cached,
        output_tokens=usage.completion_tokens if usage else 0,
        finish_reason=choice.finish_reason or "stop",
        simulated=(completion.system_fingerprint or "") == "fp_simulated",
        latency_ms=latency_ms,
    )
