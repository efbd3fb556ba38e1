"""Each function's environment, validated once per cold start.

Nothing here reads the environment at import time: `get_settings()` is a cached factory that
tests reset with `get_settings.cache_clear()`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_LAYER_PROMPTS = Path("/opt/prompts")
_REPO_PROMPTS = Path(__file__).resolve().parents[4] / "prompts"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    cache_table: str = Field(alias="CACHE_TABLE")
    ledger_table: str = Field(alias="LEDGER_TABLE")
    state_table: str = Field(alias="STATE_TABLE")
    jobs_queue_url: str | None = Field(default=None, alias="JOBS_QUEUE_URL")
    workflow_arn: str | None = Field(default=None, alias="WORKFLOW_ARN")
    alerts_topic_arn: str | None = Field(default=None, alias="ALERTS_TOPIC_ARN")
    exports_bucket: str | None = Field(default=None, alias="EXPORTS_BUCKET")
    idempotency_table: str | None = Field(default=None, alias="IDEMPOTENCY_TABLE")

    # Provider selection: "auto" uses OpenAI when a key is available, else the simulated provider.
    provider: Literal["auto", "openai", "simulated"] = Field(default="auto", alias="PROVIDER")
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY", repr=False)
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    # Secrets Manager secret holding {"api_key": ..., "base_url"?: ...}; used when no key is set.
    openai_secret_arn: str | None = Field(default=None, alias="OPENAI_SECRET_ARN")
    # Where the simulated provider listens; unset means it runs in-process (no HTTP hop).
    simulator_url: str | None = Field(default=None, alias="SIMULATOR_URL")
    openai_timeout_s: float = Field(default=20.0, gt=0, alias="OPENAI_TIMEOUT_S")
    # The SDK's own retries. Kept at 0: retrying is the gateway's job (deadline-aware, one place).
    openai_max_retries: int = Field(default=0, ge=0, le=5, alias="OPENAI_MAX_RETRIES")
    # Further OpenAI-compatible providers that fallback hops may name ("<provider>:<model>"):
    # {"backup": {"base_url": "https://…/v1", "api_key": "…" | "secret_arn": "arn:…"}}.
    fallback_providers: str | None = Field(default=None, alias="FALLBACK_PROVIDERS", repr=False)

    prompts_dir: Path = Field(
        default_factory=lambda: _LAYER_PROMPTS if _LAYER_PROMPTS.is_dir() else _REPO_PROMPTS,
        alias="PROMPTS_DIR",
    )
    # The OpenAPI document generated at packaging time (the shared layer ships it at /opt/openapi.json).
    openapi_path: str | None = Field(default=None, alias="OPENAPI_PATH")
    max_body_bytes: int = Field(default=256 * 1024, gt=0, alias="MAX_BODY_BYTES")
    # A tenant may turn this on to log raw prompts; off means prompts appear only as hashes.
    debug_prompt_logging: bool = Field(default=False, alias="DEBUG_PROMPT_LOGGING")


class ConfigurationError(RuntimeError):
    """The function's environment is incomplete or invalid: a deploy fault, not a request fault."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings.model_validate(dict(os.environ))
    except ValidationError as exc:  # pragma: no cover - message formatting only
        raise ConfigurationError(f"invalid function environment: {exc}") from exc
