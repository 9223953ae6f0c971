"""A small validator for OpenAPI v3 schemas: the structural subset of our CRD schemas (unit tests) and the API
server's published OpenAPI v3 documents (the e2e chart tests resolve ``$ref`` through ``doc``).

It checks what a user would notice the API server rejecting: unknown fields (the server's strict field
validation), types, enums, patterns, numeric bounds, string and list lengths, required fields, ``allOf``,
``oneOf``/``anyOf`` and ``x-kubernetes-int-or-string``. CEL rules are checked by the API server in the e2e suite.
"""

from __future__ import annotations

import re
from typing import Any


def validate(
    value: Any, schema: dict[str, Any], path: str = "", doc: dict[str, Any] | None = None
) -> list[str]:
    """Errors of ``value`` against ``schema`` (``doc``: the OpenAPI document that ``$ref`` points into)."""
    errors: list[str] = []
    _validate(value, schema, path, errors, doc)
    return errors


def _resolve(schema: dict[str, Any], doc: dict[str, Any] | None) -> dict[str, Any]:
    while "$ref" in schema:
        assert doc is not None, f"$ref {schema['$ref']} without a document"
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _validate(
    value: Any, schema: dict[str, Any], path: str, errors: list[str], doc: dict[str, Any] | None
) -> None:
    schema = _resolve(schema, doc)
    for sub in schema.get("allOf", []):
        _validate(value, sub, path, errors, doc)
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            errors.append(f"{path}: want integer or string, got {value!r}")
        return
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        if all(validate(value, alt, path, doc) for alt in alternatives):
            errors.append(f"{path}: {value!r} matches none of {alternatives}")
        return
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        if not isinstance(value, dict):
            errors.append(f"{path}: want object, got {type(value).__name__}")
            return
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                _validate(v, props[k], f"{path}.{k}", errors, doc)
            elif isinstance(extra, dict):
                _validate(v, extra, f"{path}.{k}", errors, doc)
            elif not (
                extra is True
                or schema.get("x-kubernetes-preserve-unknown-fields")
                or (not props and extra is None)
            ):
                errors.append(f"{path}.{k}: unknown field")
        for k in schema.get("required", []):
            if k not in value:
                errors.append(f"{path}.{k}: required")
    elif t == "array":
        if not isinstance(value, list):
            errors.append(f"{path}: want array, got {type(value).__name__}")
            return
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, v in enumerate(value):
            _validate(v, schema.get("items", {}), f"{path}[{i}]", errors, doc)
    elif t == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: want string, got {value!r}")
        elif "enum" in schema and value not in schema["enum"]:
            errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
        elif "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        elif len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: longer than {schema['maxLength']}")
    elif t in ("integer", "number"):
        kinds = int if t == "integer" else int | float
        if not isinstance(value, kinds) or isinstance(value, bool):
            errors.append(f"{path}: want {t}, got {value!r}")
        elif not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            errors.append(f"{path}: {value} out of bounds")
    elif t == "boolean" and not isinstance(value, bool):
        errors.append(f"{path}: want boolean, got {value!r}")
