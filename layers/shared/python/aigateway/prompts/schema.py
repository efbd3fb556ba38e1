"""JSON Schema (the strict subset OpenAI structured outputs accept) → pydantic models.

Templates declare their variables and output in YAML as JSON Schema, so a template is one
self-contained file; pydantic does the validating. Only the subset below is accepted, and a
template using anything else fails at load time rather than at request time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from aigateway.errors import TemplateError

_SCALARS: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
_ALLOWED_KEYS = {
    "type",
    "description",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "default",
    "title",
}


def model_from_schema(name: str, schema: dict[str, Any], *, forbid_extra: bool = True) -> type[BaseModel]:
    """Build a pydantic model for an object schema."""
    if schema.get("type") != "object":
        raise TemplateError(f"{name}: top-level schema must be an object")
    return _object_model(name, schema, forbid_extra)


def _object_model(name: str, schema: dict[str, Any], forbid_extra: bool) -> type[BaseModel]:
    _check_keys(name, schema)
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    unknown = required - set(props)
    if unknown:
        raise TemplateError(f"{name}: required names undeclared properties {sorted(unknown)}")
    fields: dict[str, Any] = {}
    for prop, sub in props.items():
        annotation = _annotation(f"{name}.{prop}", sub, forbid_extra)
        constraints = _constraints(sub)
        if sub.get("default") is not None:
            try:
                TypeAdapter(Annotated[annotation, Field(**constraints)]).validate_python(sub["default"])
            except ValidationError as exc:
                raise TemplateError(f"{name}.{prop}: default does not satisfy its own schema: {exc}") from exc
        if prop in required:
            fields[prop] = (annotation, Field(..., description=sub.get("description"), **constraints))
        else:
            fields[prop] = (
                Optional[annotation],  # noqa: UP045 - runtime construction needs the typing form
                Field(sub.get("default"), description=sub.get("description"), validate_default=True, **constraints),
            )
    config = ConfigDict(extra="forbid" if forbid_extra else "ignore", strict=False)
    model_name = "".join(part.capitalize() for part in name.replace(".", "_").split("_"))
    model: type[BaseModel] = create_model(model_name, __config__=config, **fields)
    return model


def _annotation(name: str, schema: dict[str, Any], forbid_extra: bool) -> Any:
    _check_keys(name, schema)
    kind = schema.get("type")
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        if "items" not in schema:
            raise TemplateError(f"{name}: array needs items")
        item = _annotation(f"{name}[]", schema["items"], forbid_extra)
        item_constraints = _constraints(schema["items"])
        if item_constraints:  # limits on each element, not on the list
            item = Annotated[item, Field(**item_constraints)]
        return list[item]  # type: ignore[valid-type]
    if kind == "object":
        if schema.get("additionalProperties") is True and not schema.get("properties"):
            # A free-form object (a CRM record). Only a template's declared record variable may be
            # one (prompts/records.py checks that at load, and bounds its size per request); strict
            # output schemas refuse it, since every output object must forbid additional properties.
            return dict[str, Any]
        return _object_model(name, schema, forbid_extra)
    raise TemplateError(f"{name}: unsupported schema type {kind!r}")


def _constraints(schema: dict[str, Any]) -> dict[str, Any]:
    mapping = {
        "minimum": "ge",
        "maximum": "le",
        "minLength": "min_length",
        "maxLength": "max_length",
        "minItems": "min_length",
        "maxItems": "max_length",
    }
    return {mapping[k]: v for k, v in schema.items() if k in mapping}


def _check_keys(name: str, schema: dict[str, Any]) -> None:
    extra = set(schema) - _ALLOWED_KEYS
    if extra:
        raise TemplateError(f"{name}: unsupported schema keywords {sorted(extra)}")


def strict_output_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as OpenAI's strict structured outputs want it.

    Strict mode requires every object to list all its properties as required and to forbid
    additional ones; we check rather than silently rewrite, so the template says what is sent.
    """

    def walk(path: str, node: dict[str, Any]) -> None:
        if node.get("type") == "object":
            props = node.get("properties", {})
            if node.get("additionalProperties", True) is not False:
                raise TemplateError(f"{name}: {path} must set additionalProperties: false")
            if set(node.get("required", [])) != set(props):
                raise TemplateError(f"{name}: {path} must list every property as required")
            for key, sub in props.items():
                walk(f"{path}.{key}", sub)
        elif node.get("type") == "array":
            if "items" not in node:
                raise TemplateError(f"{name}: {path} is an array without items")
            walk(f"{path}[]", node["items"])

    walk("output_schema", schema)
    return schema
