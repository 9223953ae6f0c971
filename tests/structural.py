"""A small validator for the structural OpenAPI v3 subset our CRD schemas use (shared by the unit tests).

It checks what a user would notice the API server rejecting: unknown fields, types, enums, patterns, numeric
bounds, string and list lengths, required fields. CEL rules are checked by the API server in the e2e suite.
"""

from __future__ import annotations

import re
from typing import Any


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    errors: list[str] = []
    _validate(value, schema, path, errors)
    return errors


def _validate(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    t = schema.get("type")
    if t == "object":
        if not isinstance(value, dict):
            errors.append(f"{path}: want object")
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                _validate(v, props[k], f"{path}.{k}", errors)
            elif isinstance(extra, dict):
                _validate(v, extra, f"{path}.{k}", errors)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{k}: unknown field")
        for k in schema.get("required", []):
            if k not in value:
                errors.append(f"{path}.{k}: required")
    elif t == "array":
        if not isinstance(value, list):
            errors.append(f"{path}: want array")
            return
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, v in enumerate(value):
            _validate(v, schema.get("items", {}), f"{path}[{i}]", errors)
    elif t == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: want string, got {value!r}")
        elif "enum" in schema and value not in schema["enum"]:
            errors.append(f"{path}: {value!r} not in {schema['enum']}")
        elif "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        elif len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: longer than {schema['maxLength']}")
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: want integer, got {value!r}")
        elif not schema.get("minimum", value) <= value <= schema.get("maximum", value):
            errors.append(f"{path}: {value} out of bounds")
    elif t == "boolean" and not isinstance(value, bool):
        errors.append(f"{path}: want boolean, got {value!r}")
