"""Valid template inputs built from a template's variables schema, for tests that cover every
template in prompts/ without knowing each one (the template library, injection and API suites).

Every free-text value is distinctive (template, path and a caller's salt), so a test can find it
in the rendered prompt, and two tests with different salts never share a cache entry.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from aigateway.prompts.registry import PromptTemplate, TemplateRegistry

Path = tuple[str | int, ...]  # ("rubric", 0, "criterion"): keys and list indexes into the variables

# The structured templates of the library: everything in prompts/ except lead scoring, whose
# fallback is the rules scorer rather than a static answer.
LIBRARY = (
    "analysis",
    "content_optimization",
    "crm_enrichment",
    "curriculum_plan",
    "issue_explanation",
    "lesson_content",
    "optimization_advice",
    "project_insights",
    "remediation",
    "response_assessment",
    "skill_assessment",
    "troubleshooting",
)


def all_files(registry: TemplateRegistry) -> dict[str, PromptTemplate]:
    """Every loaded file by `name@version[.locale]`: each version of each template and its variants."""
    files: dict[str, PromptTemplate] = {}
    for name in registry.names():
        for version in registry.versions(name):
            for locale in [None, *registry.locales(name, version)]:
                template = registry.get(name, version, locale)
                files[f"{name}@{version}{('.' + template.locale) if template.locale else ''}"] = template
    return files


def is_free_form(schema: dict[str, Any]) -> bool:
    return (
        schema.get("type") == "object" and schema.get("additionalProperties") is True and not schema.get("properties")
    )


def sample_record(label: str) -> dict[str, Any]:
    """A CRM record with top-level and nested fields; nothing in it is excluded by default."""
    return {
        "company": f"{label} company",
        "website": f"https://{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.example",
        "employees": 42,
        "contact": {"title": f"{label} title", "city": f"{label} city"},
    }


def sample(schema: dict[str, Any], label: str, *, minimal: bool = False) -> Any:
    """A value valid under `schema`; with `minimal`, objects carry only their required properties."""
    if "enum" in schema:
        return schema.get("default", schema["enum"][0])
    kind = schema.get("type")
    if kind == "string":
        text = label[: schema.get("maxLength", len(label))]
        return text.ljust(schema.get("minLength", 0), "x")
    if kind in ("integer", "number"):
        return schema.get("default", schema.get("minimum", 1))
    if kind == "boolean":
        return schema.get("default", False)
    if kind == "array":
        count = max(1, schema.get("minItems", 0))
        return [sample(schema["items"], f"{label} {i + 1}", minimal=minimal) for i in range(count)]
    if is_free_form(schema):
        return sample_record(label)
    required = set(schema.get("required", []))
    return {
        prop: sample(sub, f"{label} {prop}", minimal=minimal)
        for prop, sub in schema.get("properties", {}).items()
        if not minimal or prop in required
    }


def valid_input(template: PromptTemplate, salt: str = "", *, minimal: bool = False) -> dict[str, Any]:
    """Variables every template accepts: all declared ones (or only the required, with `minimal`)."""
    label = f"{template.name} {salt}".strip()
    variables: dict[str, Any] = sample(template.variables, label, minimal=minimal)
    spec = template.record_expansion
    if spec is not None:
        for name in spec.instructions:  # bring the record in, so its values are rendered too
            if name in variables:
                variables[name] = f"{variables[name]}\n{{*}}"
        if spec.exclude_variable in variables:
            variables[spec.exclude_variable] = ["internal_notes"]  # a well-formed path the sample record lacks
    return variables


def string_paths(schema: dict[str, Any], value: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, schema) of every free-text string in `value` (an input built by `valid_input`):
    top-level strings, list items, fields of objects in lists, and a free-form record's values."""
    if "enum" in schema:
        return
    kind = schema.get("type")
    if kind == "string":
        yield path, schema
    elif kind == "array" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from string_paths(schema["items"], item, (*path, i))
    elif is_free_form(schema) and isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict):
                for sub, inner in item.items():
                    if isinstance(inner, str):
                        yield (*path, key, sub), {"type": "string", "maxLength": 2000}
            elif isinstance(item, str):
                yield (*path, key), {"type": "string", "maxLength": 2000}
    elif kind == "object" and isinstance(value, dict):
        for prop, sub in schema.get("properties", {}).items():
            if prop in value:
                yield from string_paths(sub, value[prop], (*path, prop))


def with_value(variables: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """A deep copy of `variables` with the leaf at `path` set to `value`."""
    out = copy.deepcopy(variables)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def path_id(path: Path) -> str:
    return ".".join(str(p) for p in path)


# Delimiter structure of a rendered prompt: the template's own tags (values cannot forge any).
TAG = re.compile(r"<(/?)([A-Za-z][\w-]*)((?:\s[^<>]*)?)>")


def open_elements(text: str, position: int) -> list[str]:
    """The tags open at `position` of `text`, outermost first; fails on a mismatched close."""
    stack: list[str] = []
    for match in TAG.finditer(text):
        if match.start() >= position:
            break
        closing, name = match.group(1), match.group(2)
        if closing:
            assert stack and stack[-1] == name, f"</{name}> closes {stack[-1:] or 'nothing'} in:\n{text}"
            stack.pop()
        else:
            stack.append(name)
    return stack


def assert_balanced(text: str) -> None:
    """Every tag in `text` is closed, in order."""
    assert open_elements(text, len(text) + 1) == [], f"unclosed tags in:\n{text}"
