"""Template registry: `prompts/<name>/v<version>.yaml`, loaded and checked once per process."""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import Template
from jinja2.exceptions import TemplateError as JinjaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigateway.errors import TemplateError, UnknownModel, UnknownTemplate
from aigateway.llm.catalog import parse_hop
from aigateway.prompts.schema import model_from_schema, strict_output_schema

_FILE = re.compile(r"^v(\d+)\.ya?ml$")


class PromptTemplate(BaseModel):
    """One version of one template, as declared in its YAML file."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    version: int = Field(ge=1)
    description: str = Field(min_length=10)
    model_profile: Literal["creative", "analytical", "reasoning"] = "analytical"
    model: str | None = None  # overrides the profile's default model
    max_tokens: int = Field(default=800, ge=16, le=32_000)
    cache_ttl_seconds: int = Field(default=3600, ge=0, le=30 * 24 * 3600)
    variables: dict[str, Any]
    system: str
    user: str
    output_schema: dict[str, Any] | None = None
    # Served (labelled) when every provider hop fails; shaped like output_schema.
    fallback: dict[str, Any] | None = None
    # The models tried after the primary ("<model>" or "<provider>:<model>"); None: the profile's.
    fallback_models: list[str] | None = None
    # How long past cache_ttl_seconds a cached answer may still serve, labelled, when no model can.
    stale_if_error_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @cached_property
    def variables_model(self) -> type[BaseModel]:
        return model_from_schema(f"{self.name}_variables", self.variables)

    @cached_property
    def output_model(self) -> type[BaseModel] | None:
        if self.output_schema is None:
            return None
        return model_from_schema(f"{self.name}_output", self.output_schema)

    @cached_property
    def compiled(self) -> tuple[Template, Template]:
        from aigateway.prompts.render import environment

        env = environment()
        return env.from_string(self.system), env.from_string(self.user)

    def check(self) -> None:
        """Everything that can be wrong with a template, found at load rather than per request."""
        try:
            _ = self.variables_model, self.compiled
        except JinjaError as exc:
            raise TemplateError(f"{self.ref}: template text does not compile: {exc}") from exc
        for hop in self.fallback_models or ():
            try:
                parse_hop(hop)
            except UnknownModel as exc:
                raise TemplateError(f"{self.ref}: fallback_models: {exc.message}") from exc
        if self.output_schema is not None:
            strict_output_schema(self.ref, self.output_schema)
            assert self.output_model is not None
            if self.fallback is not None:
                try:
                    self.output_model.model_validate(self.fallback)
                except ValidationError as exc:
                    raise TemplateError(f"{self.ref}: fallback does not match output_schema: {exc}") from exc


class TemplateRegistry:
    def __init__(self, root: Path):
        self.root = root
        self._templates: dict[str, dict[int, PromptTemplate]] = {}
        for path in sorted(root.glob("*/v*.y*ml")):
            match = _FILE.match(path.name)
            if not match:
                continue
            template = _load(path)
            if template.name != path.parent.name or template.version != int(match.group(1)):
                raise TemplateError(f"{path}: name/version disagree with the file's location")
            self._templates.setdefault(template.name, {})[template.version] = template

    def names(self) -> list[str]:
        return sorted(self._templates)

    def versions(self, name: str) -> list[int]:
        return sorted(self._templates.get(name, {}))

    def get(self, name: str, version: int | None = None) -> PromptTemplate:
        versions = self._templates.get(name)
        if not versions:
            raise UnknownTemplate(f"template {name!r} does not exist", field="template")
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            known = ", ".join(str(v) for v in sorted(versions))
            raise UnknownTemplate(
                f"template {name!r} has no version {version} (versions: {known})", field="version"
            ) from None


def _load(path: Path) -> PromptTemplate:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        template = PromptTemplate.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise TemplateError(f"{path}: {exc}") from exc
    template.check()
    return template


@lru_cache(maxsize=4)
def get_registry(root: Path) -> TemplateRegistry:
    return TemplateRegistry(root)
