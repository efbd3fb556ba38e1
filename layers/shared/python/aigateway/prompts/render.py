"""Rendering in a sandbox: variables are data, never template code.

Three layers keep a caller's values from acting as anything but data:

1. Template code comes only from the files in prompts/, compiled once at load. Values are passed
   to the compiled template as context and Jinja never parses them: `{{ 7*7 }}`, `{% for %}` or
   `${7*7}` inside a value is printed as those characters. Nothing here calls `from_string` on a
   value, and the environment has no loader, so `{% include %}` cannot pull in other text.
2. The template itself runs in jinja2's `ImmutableSandboxedEnvironment`: a template (a bad edit,
   a compromised file) reaching for `__class__`, `__globals__` or `mro` gets a SecurityError
   (mapped to TemplateError), and cannot mutate the lists and dicts it is given. `StrictUndefined`
   turns a misspelt variable into an error instead of an empty string. Autoescape stays off:
   prompts are not HTML, and escaping would change what the model reads.
3. Delimiters hold. Templates wrap each user value in `<tag>…</tag>` and tell the model that tagged
   text is data. A value must not be able to close its tag or open another, so in every string
   value (after record expansion, see records.py) a tag-like sequence naming one of the
   template's own tags, or a chat role (system, user, assistant, developer, tool), has its angle
   brackets replaced by the look-alike quotes U+2039/U+203A: `</description>` becomes
   `‹/description›`, `<system>` becomes `‹system›` (case and spacing variants too, such as
   `< /Description >`). The text stays readable and the model still sees what was written; other
   angle brackets (`a < b`, `<h1>` in a page under review) are left alone, so HTML and code pass
   unchanged unless they imitate this template's delimiters.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError as JinjaError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from pydantic import ValidationError

from aigateway.errors import TemplateError, ValidationFailed
from aigateway.prompts.records import expand
from aigateway.prompts.registry import PromptTemplate

ROLE_TAGS = frozenset({"system", "user", "assistant", "developer", "tool"})
LEFT, RIGHT = "\u2039", "\u203a"  # ‹ › : read as brackets by people and models, parsed as tags by neither
_TEMPLATE_TAG = re.compile(r"</?([A-Za-z][\w-]*)")  # tags as the template files write them


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,  # prompts are not HTML; escaping would change what the model reads
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def validate_variables(template: PromptTemplate, variables: dict[str, Any]) -> dict[str, Any]:
    """Check variables against the template's declaration; returns them with defaults applied."""
    try:
        model = template.variables_model.model_validate(variables)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        kind = first["type"]
        if kind == "missing":
            message = f"variable {loc!r} is required by {template.ref}"
        elif kind == "extra_forbidden":
            message = f"variable {loc!r} is not declared by {template.ref}"
        else:
            message = f"variable {loc!r}: {first['msg']}"
        raise ValidationFailed(message, field=f"variables.{loc}") from None
    return model.model_dump(mode="json")


@lru_cache(maxsize=256)
def delimiter_pattern(*texts: str) -> re.Pattern[str]:
    """What to neutralise in values rendered into `texts` (a template's system and user text):
    an opening or closing tag-like sequence naming one of their tags or a chat role, with any
    attributes and spacing, and its closing bracket if it has one."""
    names = {match.group(1).lower() for text in texts for match in _TEMPLATE_TAG.finditer(text)} | ROLE_TAGS
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(rf"<(\s*/?\s*(?:{alternatives})(?![\w-])[^<>]*)(>?)", re.IGNORECASE)


def neutralise(text: str, pattern: re.Pattern[str]) -> str:
    """`text` with the tag-like sequences `pattern` finds turned into look-alikes (module docstring)."""
    return pattern.sub(lambda m: LEFT + m.group(1) + (RIGHT if m.group(2) else ""), text)


def neutralise_values(value: Any, pattern: re.Pattern[str]) -> Any:
    """Every string inside `value` (lists and dicts walked; keys are schema names, left alone)."""
    if isinstance(value, str):
        return neutralise(value, pattern)
    if isinstance(value, list):
        return [neutralise_values(item, pattern) for item in value]
    if isinstance(value, dict):
        return {key: neutralise_values(item, pattern) for key, item in value.items()}
    return value


def render_messages(template: PromptTemplate, variables: dict[str, Any]) -> list[dict[str, str]]:
    """The system and user messages; every caller (generate, batch, jobs, scoring) renders here,
    so record expansion and delimiter neutralisation apply to all of them."""
    values = validate_variables(template, variables)
    if template.record_expansion is not None:
        values = expand(template.record_expansion, values)  # ExcludedField, UnknownField, InvalidRecord: 422
    values = neutralise_values(values, delimiter_pattern(template.system, template.user))
    system, user = template.compiled
    try:
        return [
            {"role": "system", "content": system.render(values).strip()},
            {"role": "user", "content": user.render(values).strip()},
        ]
    except JinjaError as exc:  # a template bug: variables were already validated
        raise TemplateError(f"{template.ref} failed to render: {exc}") from exc
