"""Is an answer the JSON the call asked for? The ``InvalidJSON`` fallback trigger.

Checked on a chat completion (``choices[].message``), for every choice:

* when the answer calls tools: each tool call names a function the request offered, and its ``arguments`` is a
  JSON object that satisfies that function's ``parameters`` schema;
* otherwise, with ``response_format.type: json_object``: the content is a JSON object;
* with ``response_format.type: json_schema``: the content is JSON that satisfies ``json_schema.schema``
  (:mod:`slm_operator.routing.jsonschema` says which keywords are checked);
* an answer cut short by the length limit (``finish_reason: length``) with a JSON format asked is invalid.

A request that asks for neither a JSON format nor offers tools is never checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from slm_operator.routing.jsonschema import schema_error


def expects_json(request: Mapping[str, Any]) -> bool:
    """Whether :func:`json_problem` has anything to check for this request."""
    fmt = request.get("response_format")
    wants = isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")
    tools = request.get("tools")
    return wants or (isinstance(tools, list) and len(tools) > 0)


def _tool_schemas(request: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in request.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters")
    return out


def _tool_call_problem(call: Any, tools: Mapping[str, Any], where: str) -> str | None:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping):
        return f"{where}: a tool call without a function"
    name = fn.get("name")
    if tools and name not in tools:
        return f"{where}: calls '{name}', which the request did not offer"
    try:
        args = json.loads(fn.get("arguments") or "")
    except (TypeError, ValueError):
        return f"{where}: the arguments of '{name}' are not JSON"
    if not isinstance(args, dict):
        return f"{where}: the arguments of '{name}' are not a JSON object"
    problem = schema_error(args, tools.get(name) if isinstance(name, str) else None, path="arguments")
    return f"{where}: '{name}' {problem}" if problem else None


def _content_problem(content: Any, fmt: Mapping[str, Any], where: str) -> str | None:
    kind = fmt.get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    if not isinstance(content, str):
        return f"{where}: no content, but {kind} was asked for"
    try:
        value = json.loads(content)
    except ValueError:
        return f"{where}: the content is not JSON"
    if kind == "json_object":
        return None if isinstance(value, dict) else f"{where}: the content is not a JSON object"
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    problem = schema_error(value, schema)
    return f"{where}: {problem}" if problem else None


def json_problem(request: Mapping[str, Any], response: Mapping[str, Any]) -> str | None:
    """Why the chat completion ``response`` is not the JSON ``request`` asked for, or None when it is."""
    if not expects_json(request):
        return None
    fmt = request.get("response_format")
    fmt = fmt if isinstance(fmt, Mapping) else {}
    tools = _tool_schemas(request)
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the answer has no choices"
    for i, choice in enumerate(choices):
        where = f"choices[{i}]"
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            return f"{where}: no message"
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            for j, call in enumerate(calls):
                problem = _tool_call_problem(call, tools, f"{where}.tool_calls[{j}]")
                if problem:
                    return problem
            continue
        if fmt.get("type") in ("json_object", "json_schema") and choice.get("finish_reason") == "length":
            return f"{where}: cut short by the length limit"
        problem = _content_problem(message.get("content"), fmt, where)
        if problem:
            return problem
    return None
