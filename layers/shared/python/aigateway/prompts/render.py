"""Rendering in a sandbox: variables are data, never template code.

`SandboxedEnvironment` blocks attribute tricks in the *template*; `StrictUndefined` turns a
misspelt variable into an error instead of an empty string. User values are inserted as
strings and never re-parsed as Jinja, so `{{ 7*7 }}` inside a variable stays literal text.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError as JinjaError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from aigateway.errors import TemplateError, ValidationFailed
from aigateway.prompts.registry import PromptTemplate


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
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


def render_messages(template: PromptTemplate, variables: dict[str, Any]) -> list[dict[str, str]]:
    values = validate_variables(template, variables)
    system, user = template.compiled
    try:
        return [
            {"role": "system", "content": system.render(values).strip()},
            {"role": "user", "content": user.render(values).strip()},
        ]
    except JinjaError as exc:  # a template bug: variables were already validated
        raise TemplateError(f"{template.ref} failed to render: {exc}") from exc
