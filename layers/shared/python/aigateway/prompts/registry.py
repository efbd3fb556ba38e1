"""Template registry: `prompts/<name>/v<version>.yaml`, loaded and checked once per process.

A version may have localised variants beside it, `prompts/<name>/v<version>.<locale>.yaml` (a
BCP-47 tag such as `fr` or `pt-BR`, declared again in the file's `locale` field). A variant is
the same template in another language: it must declare exactly the variables and output schema
of its default file (checked at load), so a caller, the cache and the schema validation cannot
tell versions apart by locale, only readers can. `get(name, version, locale)` serves the exact
locale, then each shorter prefix of it (`fr-CA` → `fr`), then the default file.
"""

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
from aigateway.prompts.records import RecordExpansion, check_declaration
from aigateway.prompts.schema import model_from_schema, strict_output_schema

_FILE = re.compile(r"^v(\d+)(?:\.([A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*))?\.ya?ml$")
# The canonical form of the BCP-47 subset we serve: language, optional script, optional region.
LOCALE_PATTERN = r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-(?:[A-Z]{2}|[0-9]{3}))?$"
_LOCALE = re.compile(LOCALE_PATTERN)


def normalize_locale(value: str) -> str:
    """`pt_br`, `PT-br` → `pt-BR`; `zh-hant-tw` → `zh-Hant-TW`. ValueError for anything else."""
    parts = value.strip().replace("_", "-").split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        out.append(part.title() if len(part) == 4 else part.upper())
    tag = "-".join(out)
    if not _LOCALE.match(tag):
        raise ValueError(f"{value!r} is not a locale like 'fr', 'pt-BR' or 'zh-Hant-TW'")
    return tag


def locale_fallbacks(locale: str) -> list[str]:
    """The tags to try for a request's locale, most specific first: `zh-Hant-TW`, `zh-Hant`, `zh`."""
    parts = locale.split("-")
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]


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
    # `{*}` / `{field}` expansion of a free-form record into instruction variables (prompts/records.py).
    record_expansion: RecordExpansion | None = None
    # The language the text is written in. Required in a localised file (`v1.fr.yaml`); optional in
    # a default file, where it names the language served when no variant matches the request.
    locale: str | None = Field(default=None, pattern=LOCALE_PATTERN)

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
        check_declaration(self.ref, self.variables, self.record_expansion)
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
        # name → version → locale → the localised variant of that version
        self._localised: dict[str, dict[int, dict[str, PromptTemplate]]] = {}
        variants: list[tuple[Path, PromptTemplate]] = []
        for path in sorted(root.glob("*/v*.y*ml")):
            match = _FILE.match(path.name)
            if not match:
                continue
            template = _load(path)
            if template.name != path.parent.name or template.version != int(match.group(1)):
                raise TemplateError(f"{path}: name/version disagree with the file's location")
            if match.group(2) is None:
                self._templates.setdefault(template.name, {})[template.version] = template
            elif template.locale != match.group(2):
                raise TemplateError(f"{path}: its locale field ({template.locale!r}) disagrees with the file name")
            else:
                variants.append((path, template))
        for path, variant in variants:  # after every default file is loaded, whatever the sort order
            self._check_variant(path, variant)
            self._localised.setdefault(variant.name, {}).setdefault(variant.version, {})[variant.locale or ""] = variant

    def _check_variant(self, path: Path, variant: PromptTemplate) -> None:
        """A localised file is a translation: same inputs and output as its default, another language."""
        default = self._templates.get(variant.name, {}).get(variant.version)
        if default is None:
            raise TemplateError(f"{path}: there is no default file v{variant.version}.yaml for this locale")
        if variant.locale == default.locale:
            raise TemplateError(f"{path}: the default file already serves locale {variant.locale!r}")
        for part in ("variables", "output_schema", "record_expansion"):  # exclusions too: privacy is not translated
            if getattr(variant, part) != getattr(default, part):
                raise TemplateError(f"{path}: {part} must be identical to {default.ref}'s (a variant only translates)")

    def names(self) -> list[str]:
        return sorted(self._templates)

    def versions(self, name: str) -> list[int]:
        return sorted(self._templates.get(name, {}))

    def locales(self, name: str, version: int) -> list[str]:
        """The locales a version is served in: its default file's (if declared) and its variants'."""
        default = self._templates.get(name, {}).get(version)
        declared = [default.locale] if default is not None and default.locale else []
        return sorted([*declared, *self._localised.get(name, {}).get(version, {})])

    def get(self, name: str, version: int | None = None, locale: str | None = None) -> PromptTemplate:
        """The version (latest when None) in the best match for `locale` (a canonical tag, see
        `normalize_locale`): the exact tag, then its shorter prefixes, then the default file."""
        versions = self._templates.get(name)
        if not versions:
            raise UnknownTemplate(f"template {name!r} does not exist", field="template")
        if version is None:
            version = max(versions)
        try:
            default = versions[version]
        except KeyError:
            known = ", ".join(str(v) for v in sorted(versions))
            raise UnknownTemplate(
                f"template {name!r} has no version {version} (versions: {known})", field="version"
            ) from None
        if locale is None:
            return default
        localised = self._localised.get(name, {}).get(version, {})
        for tag in locale_fallbacks(locale):
            if tag in localised:
                return localised[tag]
            if tag == default.locale:
                return default
        return default


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
