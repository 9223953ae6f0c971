"""How a model's answer is scored against the held-out reference: pure functions, no torch.

Each held-out example is scored by the kind of answer its reference is:

* **tool call** (the reference assistant turn has ``tool_calls``): ``toolCallAccuracy``, 1 when the answer
  calls the same tools (as a multiset: parallel calls may come in any order) with the same name and the same
  arguments compared as JSON (``canonical_json``), else 0. Calls are read from the generated text as the JSON
  objects with a ``name`` and ``arguments`` (or ``parameters``) that chat templates render them as.
* **structured output** (the reference content is a JSON object or array): ``jsonExactMatch``, 1 when the answer
  is JSON equal to the reference after normalisation (key order, whitespace and number spelling do not count;
  ``1``, ``1.0`` and ``1e0`` are one number), else 0. A Markdown code fence around the answer is allowed;
  other text around it is not (an agent parsing the answer would fail on it).
* **free text**: ``textSimilarity``, the token F1 of the answer against the reference (the SQuAD measure: the
  harmonic mean of the precision and recall of the lower-cased word multiset). It gives partial credit for
  a partly right answer, does not depend on word order (wording differs legitimately), is symmetric and
  is 1 only for the same words; difflib's ratio was the alternative, but it counts characters in order, so a
  reordered but equivalent sentence scores low, and it grows quadratically with the text's length.

An example's score is in [0, 1]; a model's score is the mean over the examples, in percent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

KIND_TOOL_CALL = "toolCallAccuracy"
KIND_JSON = "jsonExactMatch"
KIND_TEXT = "textSimilarity"
KINDS = (KIND_JSON, KIND_TOOL_CALL, KIND_TEXT)

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)
_WORD = re.compile(r"\w+", re.UNICODE)


class NotJson(ValueError):
    """The text is not one JSON value."""


def _reject_constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """One JSON value from ``text`` (surrounding whitespace and a Markdown code fence allowed), numbers as
    ``Decimal`` so that no precision is lost; NaN and Infinity are not JSON. Raises ``NotJson``."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant)
    except (ValueError, InvalidOperation) as exc:
        raise NotJson(str(exc)) from None


def _canonical(value: Any) -> Any:
    """Numbers as their shortest exact spelling (``1.50`` -> ``1.5``, ``1e2`` -> ``100``), keys sorted."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        number = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
        if not number.is_finite():
            raise NotJson(f"{value} is not JSON")
        number = number.normalize()
        if not -20 < number.adjusted() < 40:  # far from 1: the normalised scientific spelling
            return _Raw(str(number))
        if number == number.to_integral_value():
            return _Raw(str(int(number)))
        return _Raw(format(number, "f"))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    raise NotJson(f"{type(value).__name__} is not JSON")


class _Raw(str):
    """A number already spelled canonically; written without quotes."""


def _dump(value: Any) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no whitespace, numbers normalised. Raises ``NotJson``."""
    return _dump(_canonical(value))


def json_equal(answer: str, reference: Any) -> bool:
    """Whether ``answer`` (text) is the JSON value ``reference`` after normalisation."""
    try:
        return canonical_json(parse_json(answer)) == canonical_json(reference)
    except NotJson:
        return False


@dataclass(frozen=True, order=True)
class ToolCall:
    """A tool call as it is compared: the function's name and its arguments' canonical JSON (or the raw text
    of arguments that are not JSON)."""

    name: str
    arguments: str

    @staticmethod
    def of(name: str, arguments: Any) -> ToolCall:
        if isinstance(arguments, str):
            try:
                return ToolCall(name, canonical_json(parse_json(arguments)))
            except NotJson:
                return ToolCall(name, arguments.strip())
        try:
            return ToolCall(name, canonical_json(arguments))
        except NotJson:
            return ToolCall(name, str(arguments))


def reference_tool_calls(message: Mapping[str, Any]) -> list[ToolCall]:
    """The tool calls of an assistant message in the OpenAI format (``tool_calls[].function``)."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = (call.get("function") or {}) if isinstance(call, Mapping) else {}
        calls.append(ToolCall.of(str(fn.get("name", "")), fn.get("arguments", "")))
    return calls


def _json_objects(text: str) -> Iterable[Any]:
    """Every top-level JSON object or array embedded in ``text``, left to right."""
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
    i = 0
    while True:
        starts = [p for p in (text.find("{", i), text.find("[", i)) if p >= 0]
        if not starts:
            return
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            i = start + 1
            continue
        yield value
        i = end


def _calls_in(value: Any) -> list[ToolCall]:
    if isinstance(value, list):
        return [c for v in value for c in _calls_in(v)]
    if not isinstance(value, dict):
        return []
    fn: dict[str, Any] = value["function"] if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    args = fn["arguments"] if "arguments" in fn else fn.get("parameters")
    if isinstance(name, str) and args is not None:
        return [ToolCall.of(name, args)]
    return []


def generated_tool_calls(text: str) -> list[ToolCall]:
    """The tool calls in a model's generated text: JSON objects with a ``name`` and ``arguments`` (or
    ``parameters``), alone or in a list, in whatever markup the chat template wraps them (``<tool_call>``,
    ``[TOOL_CALLS]``, ...)."""
    return [c for value in _json_objects(text) for c in _calls_in(value)]


def tool_calls_match(answer: str, reference: Sequence[ToolCall]) -> bool:
    """The same calls, as a multiset: parallel calls may come in another order."""
    return Counter(generated_tool_calls(answer)) == Counter(reference)


def text_similarity(answer: str, reference: str) -> float:
    """Token F1 of the lower-cased words (see the module docstring for why)."""
    a = Counter(w.lower() for w in _WORD.findall(answer))
    b = Counter(w.lower() for w in _WORD.findall(reference))
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    common = sum((a & b).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""


def reference_kind(message: Mapping[str, Any]) -> str:
    """Which score an example gets, from its reference assistant message."""
    if message.get("tool_calls"):
        return KIND_TOOL_CALL
    try:
        value = parse_json(message_text(message))
    except NotJson:
        return KIND_TEXT
    return KIND_JSON if isinstance(value, dict | list) else KIND_TEXT


def score_answer(answer: str, reference: Mapping[str, Any]) -> tuple[str, float]:
    """``(kind, score in [0, 1])`` of a generated answer against the reference assistant message."""
    kind = reference_kind(reference)
    if kind == KIND_TOOL_CALL:
        return kind, float(tool_calls_match(answer, reference_tool_calls(reference)))
    if kind == KIND_JSON:
        return kind, float(json_equal(answer, parse_json(message_text(reference))))
    return kind, text_similarity(answer, message_text(reference))


@dataclass(frozen=True)
class Scores:
    """A model's scores over the held-out examples."""

    examples: int
    #: The mean over every example, in percent, rounded; None without examples.
    score_percent: int | None
    #: Per kind: the mean over the examples of that kind (None: no example of that kind).
    metrics: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "scorePercent": self.score_percent, "metrics": self.metrics}


def aggregate(scored: Iterable[tuple[str, float]]) -> Scores:
    """Mean score overall (percent) and per kind (fraction, 4 decimals) of ``(kind, score)`` pairs."""
    by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for kind, score in scored:
        by_kind[kind].append(score)
    every = [s for scores in by_kind.values() for s in scores]
    metrics = {k: (round(sum(v) / len(v), 4) if v else None) for k, v in by_kind.items()}
    percent = round(100 * sum(every) / len(every)) if every else None
    return Scores(examples=len(every), score_percent=percent, metrics=metrics)
