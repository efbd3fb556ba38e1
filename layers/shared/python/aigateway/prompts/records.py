"""Record expansion: `{*}` and `{field}` placeholders in an instruction, with excluded fields.

A template declaring `record_expansion` takes a free-form record (a JSON object nested at most one
level: `company`, `contact.title`) and one or more instruction variables written by the caller.
Before rendering, each instruction's placeholders are replaced by record data:

- `{*}`: every visible field as a `path: value` line (line breaks inside a value are folded to
  spaces, so one field is always one line and a value cannot forge another field's line);
- `{company}`, `{contact.title}`: that field's value; `{contact}`: its visible fields as lines;
- `{{anything}}` (doubled braces) is not a placeholder and stays as written, so Jinja- or
  Mustache-looking text in an instruction is left alone rather than half-expanded.

Exclusions are the template's defaults plus the request's `exclude` paths, compared
case-insensitively (`Contact.Email` is `contact.email`); excluding `contact` excludes all of it.
An excluded field never leaves: `{*}` skips it; a placeholder naming it is refused (ExcludedField,
422) before anything is sent, rather than silently sent without it; an excluded string value of
four characters or more is replaced by `[excluded]` wherever else it appears (another field, the
instruction, any other variable); and the record variable itself reaches the template only as the
list of visible fields, so a template cannot leak an excluded value by naming the record.

Values are data. Expansion is a single pass (one `re.sub` over the instruction), so a value
containing `{other}` or `{{7*7}}` is inserted literally and never expanded again; string values
get e-mail and phone redaction (privacy.redact) on the way in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aigateway.errors import ExcludedField, InvalidRecord, TemplateError, UnknownField, ValidationFailed
from aigateway.privacy import redact

NAME = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(rf"^{NAME}$")
_PATH = re.compile(rf"^{NAME}(?:\.{NAME})?$")
# `{*}` or `{name}` / `{top.sub}`, not touching another brace: `{{name}}` is left as written.
PLACEHOLDER = re.compile(rf"(?<!\{{)\{{(\*|{NAME}(?:\.{NAME})?)\}}(?!\}})")
EXCLUDED_MARK = "[excluded]"
MIN_SCRUBBED = 4  # shorter excluded values ("CA", "yes") are too common to scrub from other text
MAX_LIST_ITEMS = 50
NO_FIELDS = "(no record fields may be shared)"


class RecordExpansion(BaseModel):
    """How a template expands its record; declared in the template's YAML, checked at load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record: str = Field(description="The variable holding the record: a free-form object")
    instructions: tuple[str, ...] = Field(min_length=1, description="String variables whose placeholders expand")
    exclude: tuple[str, ...] = Field(default=(), description="Paths never sent, whatever the request says")
    exclude_variable: str | None = Field(default=None, description="Array-of-strings variable of extra exclusions")
    max_fields: int = Field(default=100, ge=1, le=500, description="Most leaf fields a record may have")
    max_value_length: int = Field(default=2000, ge=1, le=20_000, description="Longest value, in characters")


# --------------------------------------------------------------------------- load time


def check_declaration(ref: str, variables: dict[str, Any], spec: RecordExpansion | None) -> None:
    """Free-form objects are allowed only as the declared record; the declaration names real
    variables of the right types, and its default exclusions are well-formed paths."""
    props: dict[str, Any] = variables.get("properties", {})
    free_form = sorted(_free_form_paths("variables", variables))
    allowed = [f"variables.{spec.record}"] if spec is not None else []
    stray = [path for path in free_form if path not in allowed]
    if stray:
        raise TemplateError(f"{ref}: free-form objects are only allowed as a declared record_expansion record: {stray}")
    if spec is None:
        return
    if f"variables.{spec.record}" not in free_form:
        raise TemplateError(
            f"{ref}: record_expansion.record {spec.record!r} must be a variable of type object with "
            "additionalProperties: true and no properties"
        )
    for name in spec.instructions:
        if props.get(name, {}).get("type") != "string" or "enum" in props[name]:
            raise TemplateError(f"{ref}: record_expansion.instructions {name!r} must be a free-text string variable")
    if spec.exclude_variable is not None:
        declared = props.get(spec.exclude_variable, {})
        if declared.get("type") != "array" or declared.get("items", {}).get("type") != "string":
            raise TemplateError(
                f"{ref}: record_expansion.exclude_variable {spec.exclude_variable!r} must be an array of strings"
            )
    bad = [path for path in spec.exclude if not _PATH.match(path)]
    if bad:
        raise TemplateError(f"{ref}: record_expansion.exclude has malformed paths {bad} (use `field` or `top.sub`)")


def _free_form_paths(path: str, schema: dict[str, Any]) -> Iterable[str]:
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is True and not schema.get("properties"):
            yield path
        for key, sub in schema.get("properties", {}).items():
            yield from _free_form_paths(f"{path}.{key}", sub)
    elif schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        yield from _free_form_paths(f"{path}[]", schema["items"])


# --------------------------------------------------------------------------- per request


def expand(spec: RecordExpansion, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (already validated against the template) with placeholders expanded, the record
    replaced by its visible fields, and excluded values scrubbed everywhere."""
    record = values.get(spec.record) or {}
    leaves = _leaves(spec, record)
    excluded = _exclusions(spec, values)

    def is_excluded(path: str) -> bool:
        folded = path.casefold()
        return folded in excluded or folded.partition(".")[0] in excluded

    secrets = sorted(
        {text for path, value in leaves if is_excluded(path) for text in _strings(value) if len(text) >= MIN_SCRUBBED},
        key=len,
        reverse=True,  # the longest first, so a secret containing another is replaced whole
    )
    visible = {path: _scrub(redact_value(value), secrets) for path, value in leaves if not is_excluded(path)}
    out = {key: _scrub_all(value, secrets) for key, value in values.items() if key != spec.record}
    for name in spec.instructions:
        if isinstance(out.get(name), str):
            out[name] = _expand_text(out[name], name, record, visible, is_excluded)
    out[spec.record] = [{"name": path, "value": text} for path, text in visible.items() if text is not None]
    return out


def _exclusions(spec: RecordExpansion, values: dict[str, Any]) -> set[str]:
    requested = values.get(spec.exclude_variable) if spec.exclude_variable else None
    for i, path in enumerate(requested or ()):
        if not _PATH.match(path):
            raise ValidationFailed(
                f"exclude path {path!r} is not a field name or `top.sub` path",
                field=f"variables.{spec.exclude_variable}.{i}",  # as pydantic locates list items
            )
    return {path.casefold() for path in (*spec.exclude, *(requested or ()))}


def _leaves(spec: RecordExpansion, record: dict[str, Any]) -> list[tuple[str, Any]]:
    """(path, value) for every leaf of the record, in the record's order; checks its shape."""
    leaves: list[tuple[str, Any]] = []
    for key, value in record.items():
        _check_name(spec, key, key)
        if isinstance(value, dict):
            for sub, inner in value.items():
                _check_name(spec, sub, f"{key}.{sub}")
                if isinstance(inner, dict):
                    raise InvalidRecord(
                        f"record field {key}.{sub} is an object; records nest one level at most",
                        field=f"variables.{spec.record}.{key}.{sub}",
                    )
                leaves.append((f"{key}.{sub}", _checked_value(spec, f"{key}.{sub}", inner)))
        else:
            leaves.append((key, _checked_value(spec, key, value)))
        if len(leaves) > spec.max_fields:
            raise InvalidRecord(f"the record has more than {spec.max_fields} fields", field=f"variables.{spec.record}")
    return leaves


def _check_name(spec: RecordExpansion, name: str, path: str) -> None:
    if not _NAME.match(name):
        raise InvalidRecord(
            f"record field name {name[:80]!r} must start with a letter or underscore and hold only letters, digits, "
            "'_' and '-' (at most 64)",
            field=f"variables.{spec.record}.{path[:140]}",
        )


def _checked_value(spec: RecordExpansion, path: str, value: Any) -> Any:
    field = f"variables.{spec.record}.{path}"
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise InvalidRecord(f"record field {path} has more than {MAX_LIST_ITEMS} items", field=field)
        if any(isinstance(item, dict | list) for item in value):
            raise InvalidRecord(f"record field {path} must be a list of plain values", field=field)
    if len(_text(value) or "") > spec.max_value_length:
        raise InvalidRecord(f"record field {path} is longer than {spec.max_value_length} characters", field=field)
    return value


def _text(value: Any) -> str | None:
    """A leaf as prompt text: strings as they are, lists comma-joined, other scalars as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(t for t in map(_text, value) if t is not None)
    return json.dumps(value)


def _strings(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item.strip() for item in items if isinstance(item, str)]


def redact_value(value: Any) -> str | None:
    """The leaf's text with e-mails and phone numbers redacted; numbers and booleans are not
    free text (a 9-digit revenue is not a phone number) and pass unchanged."""
    if isinstance(value, list):
        return ", ".join(t for t in map(redact_value, value) if t is not None)
    text = _text(value)
    return redact(text) if isinstance(value, str) and text is not None else text


def _scrub(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for secret in secrets:
        text = text.replace(secret, EXCLUDED_MARK)
    return text


def _scrub_all(value: Any, secrets: list[str]) -> Any:
    if not secrets:
        return value
    if isinstance(value, str):
        return _scrub(value, secrets)
    if isinstance(value, list):
        return [_scrub_all(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_all(item, secrets) for key, item in value.items()}
    return value


def _lines(visible: dict[str, str | None], prefix: str | None = None) -> str:
    lines = [
        f"{path}: {' '.join(text.split())}"  # folded: one field, one line
        for path, text in visible.items()
        if text is not None and (prefix is None or path.startswith(f"{prefix}."))
    ]
    return "\n".join(lines) or NO_FIELDS


def _expand_text(
    text: str,
    variable: str,
    record: dict[str, Any],
    visible: dict[str, str | None],
    is_excluded: Callable[[str], bool],
) -> str:
    def replace(match: re.Match[str]) -> str:
        path = match.group(1)
        if path == "*":
            return _lines(visible)
        if is_excluded(path):
            raise ExcludedField(
                f"placeholder {{{path}}} names an excluded field; excluded fields never leave the gateway",
                field=f"variables.{variable}",
                details={"placeholder": path},
            )
        top, _, sub = path.partition(".")
        known = top in record and (not sub or (isinstance(record[top], dict) and sub in record[top]))
        if not known:
            shown = ", ".join(list(visible)[:20]) or "none"
            raise UnknownField(
                f"placeholder {{{path}}} names no field of the record (fields: {shown})",
                field=f"variables.{variable}",
                details={"placeholder": path},
            )
        if not sub and isinstance(record[top], dict):
            return _lines(visible, prefix=top)
        return visible.get(path) or ""

    # One pass: what `replace` returns is never scanned again, so values cannot expand.
    return PLACEHOLDER.sub(replace, text)
