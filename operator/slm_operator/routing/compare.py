"""Whether a shadow backend's answer agrees with the answer the caller got (S6: shadow evaluation). Pure.

A rule's shadow copy goes to a backend that does not answer the caller (e.g. the SLM a task may move to, while
the LLM answers). Once both answers are in, ``compare_answers`` says how they agree:

* ``tool_calls``: the same functions called, in order, with arguments equal as JSON values;
* ``exact``: the same text, whitespace and letter case aside;
* ``json``: both texts are JSON and equal as values (key order and spacing aside);
* ``differs``: none of these;
* ``invalid``: the shadow's answer is not an answer (no text and no tool call): it would have failed a caller.

The first three count as agreement. Answers are chat completions (``choices[0].message``) or completions
(``choices[0].text``), whole or reassembled from a stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Agreement(StrEnum):
    TOOL_CALLS = "tool_calls"
    EXACT = "exact"
    JSON = "json"
    DIFFERS = "differs"
    INVALID = "invalid"

    @property
    def agrees(self) -> bool:
        return self in (Agreement.TOOL_CALLS, Agreement.EXACT, Agreement.JSON)


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def answer_parts(answer: Mapping[str, Any] | None) -> tuple[str | None, list[tuple[str, Any]]]:
    """The first choice's text and its tool calls as (name, arguments parsed as JSON where they are)."""
    choices = (answer or {}).get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None, []
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        text = choice.get("text")
        return (text if isinstance(text, str) else None), []
    calls: list[tuple[str, Any]] = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            raw = fn.get("arguments")
            args = _json(raw) if isinstance(raw, str) else raw
            calls.append((str(fn.get("name") or ""), raw if args is _NOT_JSON else args))
    content = message.get("content")
    return (content if isinstance(content, str) else None), calls


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def compare_answers(primary: Mapping[str, Any] | None, shadow: Mapping[str, Any] | None) -> Agreement:
    """How the shadow's answer agrees with the primary's (the one the caller got)."""
    s_text, s_calls = answer_parts(shadow)
    if not s_calls and not (s_text or "").strip():
        return Agreement.INVALID
    p_text, p_calls = answer_parts(primary)
    if p_calls or s_calls:
        return Agreement.TOOL_CALLS if p_calls == s_calls else Agreement.DIFFERS
    if p_text is None or s_text is None:
        return Agreement.DIFFERS
    if _normal(p_text) == _normal(s_text):
        return Agreement.EXACT
    p_json, s_json = _json(p_text), _json(s_text)
    if p_json is not _NOT_JSON and p_json == s_json:
        return Agreement.JSON
    return Agreement.DIFFERS
