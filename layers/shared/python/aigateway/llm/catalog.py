"""What the gateway knows about each model: limits, accepted parameters, tokenizer.

Prices live in governance/pricing.py (versioned by effective date); this file is about what a
model *is*, so the request builder can never send a parameter the model rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aigateway.errors import UnknownModel

Family = Literal["chat", "reasoning"]
ProfileName = Literal["creative", "analytical", "reasoning"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    context_window: int
    max_output_tokens: int
    encoding: str  # BPE table used to count tokens offline
    supports_json_schema: bool = True

    @property
    def is_reasoning(self) -> bool:
        """o-series and gpt-5 take max_completion_tokens and reasoning_effort, never temperature."""
        return self.family == "reasoning"


_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("gpt-4o-mini", "chat", 128_000, 16_384, "o200k_base"),
    ModelSpec("gpt-4o", "chat", 128_000, 16_384, "o200k_base"),
    ModelSpec("gpt-4.1", "chat", 1_047_576, 32_768, "o200k_base"),
    ModelSpec("gpt-4.1-mini", "chat", 1_047_576, 32_768, "o200k_base"),
    ModelSpec("gpt-4.1-nano", "chat", 1_047_576, 32_768, "o200k_base"),
    ModelSpec("o3", "reasoning", 200_000, 100_000, "o200k_base"),
    ModelSpec("o3-mini", "reasoning", 200_000, 100_000, "o200k_base"),
    ModelSpec("o4-mini", "reasoning", 200_000, 100_000, "o200k_base"),
    ModelSpec("gpt-5", "reasoning", 400_000, 128_000, "o200k_base"),
    ModelSpec("gpt-5-mini", "reasoning", 400_000, 128_000, "o200k_base"),
    ModelSpec("gpt-5-nano", "reasoning", 400_000, 128_000, "o200k_base"),
)
MODELS: dict[str, ModelSpec] = {m.name: m for m in _MODELS}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(f"model {name!r} is not in the catalog", field="model") from None


@dataclass(frozen=True)
class Profile:
    """A named intent; resolved per model into parameters that model accepts."""

    name: ProfileName
    model: str
    # Tried in order when the model fails (aigateway/resilience): "<model>" on the gateway's own
    # provider, or "<provider>:<model>" on one of FALLBACK_PROVIDERS.
    fallbacks: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


PROFILES: dict[str, Profile] = {
    # gpt-4.1-mini: another model family's capacity, and a 1M-token window for inputs that outgrow 128k.
    "creative": Profile("creative", "gpt-4o-mini", ("gpt-4.1-mini",), temperature=0.9, top_p=0.95),
    "analytical": Profile("analytical", "gpt-4o-mini", ("gpt-4.1-mini",), temperature=0.2, top_p=1.0),
    "reasoning": Profile("reasoning", "o4-mini", ("o3-mini",), reasoning_effort="medium"),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownModel(f"model profile {name!r} is unknown (known: {known})", field="model_profile") from None


def completion_params(model: ModelSpec, profile: Profile, max_tokens: int) -> dict[str, Any]:
    """The sampling/limit parameters for one call, shaped for what `model` accepts."""
    max_tokens = min(max_tokens, model.max_output_tokens)
    if model.is_reasoning:
        params: dict[str, Any] = {"max_completion_tokens": max_tokens}
        if profile.reasoning_effort is not None:
            params["reasoning_effort"] = profile.reasoning_effort
        return params
    params = {"max_tokens": max_tokens}
    if profile.temperature is not None:
        params["temperature"] = profile.temperature
    if profile.top_p is not None:
        params["top_p"] = profile.top_p
    return params


def parse_hop(hop: str) -> tuple[str, str]:
    """ "<model>" or "<provider>:<model>" → (provider, model); the model must be in the catalog."""
    provider, _, model = hop.rpartition(":")
    get_model(model)
    return provider, model
