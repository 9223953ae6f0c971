"""What the gateway knows about a call before it picks a backend: its task, whether it offers tools, its length.

Pure functions of the request body (the JSON of ``/v1/chat/completions`` or ``/v1/completions``) and the task the
shell found (the ``x-slm-task`` header, else the task classifier's tag).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: The prompt-length estimate: characters / 4, the usual rule of thumb for English text with BPE tokenisers.
CHARS_PER_TOKEN = 4
#: Tokens a chat template adds per message (role markers, separators).
TOKENS_PER_MESSAGE = 4


class TaskTagger(Protocol):
    """A route's task classifier (``slm_operator.advisor.classifier.TaskClassifier``): the task of a request body
    (None: no task is near enough) and its distance to the nearest task."""

    def tag(self, request: Mapping[str, Any]) -> tuple[str | None, float]: ...


def call_task(header: str | None, body: Mapping[str, Any], tagger: TaskTagger | None) -> str | None:
    """The call's task: the ``x-slm-task`` header when the caller sent one (it wins), else the tag of the route's
    task classifier when it has one loaded, else None."""
    if header:
        return header
    if tagger is None:
        return None
    return tagger.tag(body)[0] or None


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """The features SLMRoute rules match on (``spec.rules[].match``)."""

    task: str | None
    tools_present: bool
    prompt_tokens: int  # estimated
    stream: bool
    wants_json: bool  # response_format json_object or json_schema
    max_tokens: int | None


def _text_chars(content: Any) -> int:
    """Characters of a message's content: a string, or a list of parts whose text parts count."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += len(part["text"])
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def _message_chars(message: Any) -> int:
    if not isinstance(message, Mapping):
        return 0
    chars = _text_chars(message.get("content"))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return chars


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a request: characters of messages (or ``prompt``) and tools / 4.

    An estimate, not a tokenizer: it is used for rules (``minPromptTokens``/``maxPromptTokens``) and to charge
    ``tokensPerMinute`` when a call starts; the backend's ``usage`` corrects the charge when it ends.
    """
    chars = 0
    messages = body.get("messages")
    overhead = 0
    if isinstance(messages, list):
        chars += sum(_message_chars(m) for m in messages)
        overhead = TOKENS_PER_MESSAGE * len(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(json.dumps(tools, separators=(",", ":")))
    return -(-chars // CHARS_PER_TOKEN) + overhead


def wants_json(body: Mapping[str, Any]) -> bool:
    """Whether the request asks for a JSON answer (``response_format`` ``json_object`` or ``json_schema``)."""
    fmt = body.get("response_format")
    return isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")


def request_features(body: Mapping[str, Any], task: str | None) -> RequestFeatures:
    """The features of a request; ``task`` is what the shell found (header, else classifier), or None."""
    tools = body.get("tools")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return RequestFeatures(
        task=task or None,
        tools_present=isinstance(tools, list) and len(tools) > 0,
        prompt_tokens=estimate_prompt_tokens(body),
        stream=body.get("stream") is True,
        wants_json=wants_json(body),
        max_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
    )
