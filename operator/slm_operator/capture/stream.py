"""Reassemble a streamed response into the body the same call would have returned without streaming.

Pure. The gateway passes every server-sent event's JSON object on to the caller and also feeds it to a
``StreamAssembler`` (or collects them for ``reassemble_chat_stream``); the captured record keeps one
``chat.completion`` (or ``text_completion``) body, so the trainer reads streamed and unstreamed calls alike.

What is joined, per choice (by its ``index``; several choices may interleave):

* ``delta.content`` and every other string field of the delta (``refusal``, ``reasoning_content``...) are
  concatenated; a field only ever ``null`` stays ``null``; ``content`` is always present, ``null`` when no
  piece of text came (a reply that is only tool calls);
* ``delta.tool_calls`` are merged by their ``index``: the ``id``, ``type`` and ``function.name`` of the first
  piece that has them, ``function.arguments`` concatenated across pieces (``function_call``, the older form,
  likewise);
* ``logprobs`` lists are concatenated; ``finish_reason`` (and any other choice field) keeps the last non-null
  value; legacy completions (``choices[].text``) are concatenated the same way;
* ``usage`` is the last non-null one (the final chunk when the request set ``stream_options.include_usage``;
  vLLM's continuous usage stats are cumulative, so the last one is the total); ``id``, ``created``, ``model``,
  ``system_fingerprint``, ``error`` and any other top-level field keep the first non-null value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_CHOICE_HANDLED = frozenset({"index", "delta", "text", "logprobs"})
_TOP_HANDLED = frozenset({"choices", "object", "usage"})


@dataclass
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def add(self, piece: dict[str, Any]) -> None:
        self.id = self.id or piece.get("id")
        self.type = self.type or piece.get("type")
        fn = piece.get("function") or {}
        self.name = self.name or fn.get("name")
        if isinstance(fn.get("arguments"), str):
            self.arguments.append(fn["arguments"])

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type or "function",
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@dataclass
class _Choice:
    role: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)  # delta field -> pieces
    others: dict[str, Any] = field(default_factory=dict)  # non-string delta fields: last non-null wins
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    function_call: _ToolCall | None = None
    completion_text: list[str] | None = None  # legacy completions: choices[].text
    logprobs: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # finish_reason, stop_reason, ...: last non-null

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self._add_delta(delta)
        if isinstance(choice.get("text"), str):
            if self.completion_text is None:
                self.completion_text = []
            self.completion_text.append(choice["text"])
        if isinstance(choice.get("logprobs"), dict):
            self._add_logprobs(choice["logprobs"])
        for key, value in choice.items():
            if key not in _CHOICE_HANDLED and (value is not None or key not in self.fields):
                self.fields[key] = value

    def _add_delta(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if key == "role":
                self.role = self.role or value
            elif key == "tool_calls":
                for n, piece in enumerate(value or []):
                    self.tool_calls.setdefault(piece.get("index", n), _ToolCall()).add(piece)
            elif key == "function_call" and isinstance(value, dict):
                self.function_call = self.function_call or _ToolCall()
                self.function_call.add({"function": value})
            elif isinstance(value, str):
                self.texts.setdefault(key, []).append(value)
            elif value is not None or (key not in self.texts and key not in self.others):
                self.others[key] = value

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        merged = self.logprobs if self.logprobs is not None else {}
        for key, value in logprobs.items():
            if isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key].extend(value)  # our own copy (below), so extending is safe
            elif value is not None or key not in merged:
                merged[key] = list(value) if isinstance(value, list) else value
        self.logprobs = merged

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": self.role or "assistant", "content": None}
        msg.update(self.others)
        msg.update({key: "".join(pieces) for key, pieces in self.texts.items()})
        if self.tool_calls:
            msg["tool_calls"] = [self.tool_calls[i].body() for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            msg["function_call"] = self.function_call.body()["function"]
        return msg

    def body(self, index: int, chat: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index}
        if chat:
            out["message"] = self.message()
        else:
            out["text"] = "".join(self.completion_text or [])
        out["logprobs"] = self.logprobs
        out["finish_reason"] = None
        out.update(self.fields)
        return out


class StreamAssembler:
    """Incremental form of ``reassemble_chat_stream``: ``add`` each chunk object as it passes, ``result`` at
    the end (keeps the joined pieces, not the chunks). Not thread-safe; one per stream."""

    def __init__(self) -> None:
        self._top: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self._chat: bool | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        obj = chunk.get("object")
        if self._chat is None and isinstance(obj, str):
            self._chat = obj.startswith("chat.")
        for n, choice in enumerate(chunk.get("choices") or []):
            if self._chat is None:
                self._chat = "delta" in choice or "text" not in choice
            self._choices.setdefault(choice.get("index", n), _Choice()).add(choice)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        for key, value in chunk.items():
            if key not in _TOP_HANDLED and self._top.get(key) is None:
                self._top[key] = value

    def result(self) -> dict[str, Any]:
        chat = self._chat is not False
        body: dict[str, Any] = {"id": None, "object": "chat.completion" if chat else "text_completion"}
        body.update(self._top)
        body["choices"] = [self._choices[i].body(i, chat) for i in sorted(self._choices)]
        body["usage"] = self._usage
        return body


def reassemble_chat_stream(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``chat.completion.chunk`` objects (the JSON of each server-sent event, without ``[DONE]``) -> the one
    ``chat.completion`` body (legacy ``text_completion`` chunks -> a ``text_completion``). Rules: module doc."""
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.result()
