"""A small JSON Schema validator for what calls ask of answers (``response_format.json_schema``, tool parameters).

It checks the keywords that decide whether an agent can use an answer, and accepts what it does not know:

* ``type`` (one or a list: object, array, string, number, integer, boolean, null), ``enum``, ``const``;
* objects: ``required``, ``properties`` (recursively), ``additionalProperties`` (``false`` or a schema),
  ``minProperties``/``maxProperties``;
* arrays: ``items`` (one schema), ``minItems``/``maxItems``;
* strings: ``minLength``/``maxLength``; numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``,
  ``exclusiveMaximum``;
* ``anyOf``, ``oneOf`` (as anyOf: one branch must hold), ``allOf``, and local ``$ref`` (``#/$defs/...``,
  ``#/definitions/...``).

Not checked: ``pattern``, ``format``, ``patternProperties``, ``dependencies``, ``if/then/else``, remote refs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kinds = _TYPES.get(name)
    return True if kinds is None else isinstance(value, kinds)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> Mapping[str, Any] | None:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    if depth > MAX_DEPTH or not ref.startswith("#/"):
        return None  # a remote or runaway reference: not checked
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None


def _check_object(
    value: dict[str, Any], s: Mapping[str, Any], root: Mapping[str, Any], path: str, depth: int
) -> str | None:
    for key in s.get("required") or []:
        if key not in value:
            return f"{path}: the required key '{key}' is missing"
    props = s.get("properties")
    props = props if isinstance(props, Mapping) else {}
    extra = s.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            problem = schema_error(item, props[key], root, f"{path}.{key}", depth + 1)
            if problem:
                return problem
        elif extra is False:
            return f"{path}: the key '{key}' is not allowed"
        elif isinstance(extra, Mapping):
            problem = schema_error(item, extra, root, f"{path}.{key}", depth + 1)
            if problem:
                return problem
    if isinstance(s.get("minProperties"), int) and len(value) < s["minProperties"]:
        return f"{path}: fewer than {s['minProperties']} keys"
    if isinstance(s.get("maxProperties"), int) and len(value) > s["maxProperties"]:
        return f"{path}: more than {s['maxProperties']} keys"
    return None


def _check_array(
    value: list[Any], s: Mapping[str, Any], root: Mapping[str, Any], path: str, depth: int
) -> str | None:
    if isinstance(s.get("minItems"), int) and len(value) < s["minItems"]:
        return f"{path}: fewer than {s['minItems']} items"
    if isinstance(s.get("maxItems"), int) and len(value) > s["maxItems"]:
        return f"{path}: more than {s['maxItems']} items"
    items = s.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            problem = schema_error(item, items, root, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
    return None


def _check_scalar(value: Any, s: Mapping[str, Any], path: str) -> str | None:
    if isinstance(value, str):
        if isinstance(s.get("minLength"), int) and len(value) < s["minLength"]:
            return f"{path}: shorter than {s['minLength']} characters"
        if isinstance(s.get("maxLength"), int) and len(value) > s["maxLength"]:
            return f"{path}: longer than {s['maxLength']} characters"
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            bound = s.get(key)
            if isinstance(bound, int | float) and not isinstance(bound, bool) and _outside(value, key, bound):
                return f"{path}: {value} is outside {key} {bound}"
    return None


def _outside(value: float, key: str, bound: float) -> bool:
    if key == "minimum":
        return value < bound
    if key == "maximum":
        return value > bound
    if key == "exclusiveMinimum":
        return value <= bound
    return value >= bound


def _check_combinators(
    value: Any, s: Mapping[str, Any], root: Mapping[str, Any], path: str, depth: int
) -> str | None:
    for sub in s.get("allOf") or []:
        if isinstance(sub, Mapping):
            problem = schema_error(value, sub, root, path, depth + 1)
            if problem:
                return problem
    for key in ("anyOf", "oneOf"):
        branches = [b for b in s.get(key) or [] if isinstance(b, Mapping)]
        if branches and all(schema_error(value, b, root, path, depth + 1) for b in branches):
            return f"{path}: matches none of the {key} alternatives"
    return None


def schema_error(
    value: Any, schema: Any, root: Mapping[str, Any] | None = None, path: str = "$", depth: int = 0
) -> str | None:
    """The first way ``value`` breaks ``schema`` (a readable path and reason), or None when it holds."""
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return None  # `true`, `false`-less schemas and runaway nesting are accepted
    root = schema if root is None else root
    s = _resolve(schema, root, depth)
    if s is None:
        return None
    types = s.get("type")
    names = [types] if isinstance(types, str) else [t for t in types or [] if isinstance(t, str)]
    if names and not any(_is_type(value, t) for t in names):
        return f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"
    if "enum" in s and isinstance(s["enum"], list) and value not in s["enum"]:
        return f"{path}: {value!r} is not one of {s['enum']!r}"
    if "const" in s and value != s["const"]:
        return f"{path}: expected {s['const']!r}"
    if isinstance(value, dict):
        problem = _check_object(value, s, root, path, depth)
    elif isinstance(value, list):
        problem = _check_array(value, s, root, path, depth)
    else:
        problem = _check_scalar(value, s, path)
    return problem or _check_combinators(value, s, root, path, depth)
