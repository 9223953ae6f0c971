"""Training data: JSON lines in, examples out, split into train and held-out sets. Pure: no torch.

A record is one JSON object per line, in either of two formats:

* the OpenAI chat format: ``{"messages": [...], "tools": [...]}`` (``tools`` optional). The *last* assistant
  message (its ``content`` and/or ``tool_calls``) is the target the model learns to produce; the messages before
  it are the prompt; messages after it are dropped.
* the usage-capture format: ``{"request": {chat request}, "response": {chat completion}, ...}`` (what
  ``slm-operator usage export`` writes). The target is the response's first choice; a call that failed (an HTTP
  status other than 2xx, no response, no choice) or was cut off (``finish_reason: length``) is skipped.

Messages are normalised to what chat templates take: ``developer`` turns become ``system``, content parts are
joined into text, tool-call arguments become JSON objects. A record that cannot be used is skipped and counted
by reason, never a crash.

The split is deterministic and stable: a record goes to the held-out set when the hash of its normalised
content and the seed falls below ``eval_fraction``. It depends on the record alone, so appending records never
moves an old one to the other side, and duplicates always land on the same side (no leak of a held-out example
into training).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_operator.trainer.errors import BadInput

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class Unsuitable(ValueError):
    """A record the trainer cannot learn from; the message is the reason it is counted under."""


class DataError(BadInput):
    """The data as a whole cannot be trained on (no file, no usable record)."""


@dataclass(frozen=True)
class Example:
    """One training example: the prompt messages, the target assistant message and the tools offered."""

    prompt: tuple[dict[str, Any], ...]
    target: dict[str, Any]
    tools: tuple[dict[str, Any], ...] | None
    key: str  # sha256 of the normalised content: the split's input, the same for the same conversation

    def messages(self) -> list[dict[str, Any]]:
        return [*self.prompt, self.target]

    def tool_list(self) -> list[dict[str, Any]] | None:
        return list(self.tools) if self.tools else None


@dataclass
class DataReport:
    """What reading the data found: records read, usable examples, skipped lines per reason."""

    lines: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skipped: str | None = None  # "FILE:LINE: reason" of the first skipped line, for the error message

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        if self.first_skipped is None:
            self.first_skipped = f"{where}: {reason}"

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _text(content: Any, role: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise Unsuitable(f"a {role} message has content that is not text")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise Unsuitable(f"a {role} message's content is neither a string nor a list of parts")


def _tool_call(call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise Unsuitable("a tool call has no function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise Unsuitable("a tool call's arguments are not JSON") from None
    if not isinstance(args, dict):
        raise Unsuitable("a tool call's arguments are not a JSON object")
    out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _message(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise Unsuitable("a message is not an object")
    role = ROLES.get(str(raw.get("role")))
    if role is None:
        raise Unsuitable(f"unknown message role {str(raw.get('role'))[:40]!r}")
    msg: dict[str, Any] = {"role": role, "content": _text(raw.get("content"), role)}
    if role == "assistant" and raw.get("tool_calls"):
        if not isinstance(raw["tool_calls"], list):
            raise Unsuitable("tool_calls is not a list")
        msg["tool_calls"] = [_tool_call(c) for c in raw["tool_calls"]]
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(raw.get(key), str):
                msg[key] = raw[key]
    if msg["content"] is None and role != "assistant":
        msg["content"] = ""
    return msg


def _from_capture(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(messages, tools)`` of a usage-capture record, the response's first choice appended."""
    status = record.get("status")
    if isinstance(status, int) and not 200 <= status < 300:
        raise Unsuitable("the captured call failed (HTTP status not 2xx)")
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, Mapping):
        raise Unsuitable("the capture record's request is not an object")
    choices = response.get("choices") if isinstance(response, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise Unsuitable("the captured call has no response choice")
    if choices[0].get("finish_reason") == "length":
        raise Unsuitable("the captured response was cut off (finish_reason length)")
    answer = dict(choices[0].get("message") or {})
    answer.setdefault("role", "assistant")
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise Unsuitable("the captured request has no messages")
    return [*messages, answer], request.get("tools")


def _key(prompt: Sequence[dict[str, Any]], target: dict[str, Any], tools: Any) -> str:
    canonical = json.dumps([list(prompt), target, tools], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def to_example(record: Any) -> Example:
    """The example a record teaches. Raises ``Unsuitable`` with the reason it cannot be used."""
    if not isinstance(record, Mapping):
        raise Unsuitable("the line is not a JSON object")
    if "messages" in record:
        raw_messages, tools = record["messages"], record.get("tools")
    elif "request" in record:
        raw_messages, tools = _from_capture(record)
    else:
        raise Unsuitable("the record has neither messages nor request/response")
    if not isinstance(raw_messages, list):
        raise Unsuitable("messages is not a list")
    messages = [_message(m) for m in raw_messages]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise Unsuitable("no assistant message to learn")
    target = messages[last]
    if not target.get("tool_calls") and not target.get("content"):
        raise Unsuitable("the assistant message is empty")
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        raise Unsuitable("no user message before the assistant's")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools)):
        raise Unsuitable("tools is not a list of objects")
    tool_tuple = tuple(dict(t) for t in tools) if tools else None
    return Example(
        prompt=tuple(prompt),
        target=target,
        tools=tool_tuple,
        key=_key(prompt, target, list(tool_tuple) if tool_tuple else None),
    )


def read_examples(lines: Iterable[tuple[str, str]], report: DataReport) -> Iterator[Example]:
    """Examples of ``(where, line)`` pairs; unusable lines are counted in ``report`` by reason."""
    for where, line in lines:
        if not line.strip():
            continue
        report.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            report.skip(where, "not JSON")
            continue
        try:
            yield to_example(record)
        except Unsuitable as exc:
            report.skip(where, str(exc))


def data_files(path: Path) -> list[Path]:
    """The JSON-lines files ``--data`` names: the file, or the ``*.jsonl`` files of a folder (recursively)."""
    if path.is_dir():
        files = sorted(
            f
            for f in path.rglob("*.jsonl")
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"--data {path}: the folder holds no *.jsonl file")
        return files
    if not path.is_file():
        raise DataError(f"--data {path}: no such file or folder")
    return [path]


def _numbered_lines(files: Sequence[Path]) -> Iterator[tuple[str, str]]:
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, start=1):
                yield f"{f}:{n}", line


def load_examples(path: Path) -> tuple[list[Example], DataReport]:
    """Every usable example under ``path`` (a file or a folder of ``*.jsonl``), and the report."""
    report = DataReport()
    try:
        examples = list(read_examples(_numbered_lines(data_files(path)), report))
    except OSError as exc:
        raise DataError(f"--data {path}: {exc.strerror or exc}") from None
    if not examples:
        why = f" (first: {report.first_skipped})" if report.first_skipped else ""
        raise DataError(
            f"--data {path}: no usable record in {report.lines} lines{why}; give JSON lines with "
            '"messages" (OpenAI chat format, ending in an assistant message) or capture records '
            'with "request" and "response"'
        )
    return examples, report


def _position(key: str, seed: int) -> float:
    """Where an example falls in [0, 1) for the split: a hash of its content and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(
    examples: Sequence[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: an example is held out when its position is below ``eval_fraction``. With two or
    more examples neither side is left empty: the lowest-placed example is held out, the highest trained on."""
    train = [e for e in examples if _position(e.key, seed) >= eval_fraction]
    held = [e for e in examples if _position(e.key, seed) < eval_fraction]
    if len(examples) >= 2 and eval_fraction > 0:
        if not held:
            first = min(train, key=lambda e: _position(e.key, seed))
            train.remove(first)
            held.append(first)
        elif not train:
            last = max(held, key=lambda e: _position(e.key, seed))
            held.remove(last)
            train.append(last)
    return train, held


@dataclass(frozen=True)
class Prepared:
    """The data of a run, read and split."""

    train: list[Example]
    held_out: list[Example]
    report: DataReport


def prepare(path: Path, eval_fraction: float, seed: int) -> Prepared:
    """Read ``--data`` and split it (``DataError`` when nothing usable is left to train on)."""
    examples, report = load_examples(path)
    train, held_out = split(examples, eval_fraction, seed)
    if not train:
        raise DataError(
            f"--data {path}: {len(examples)} usable example(s), none left for training after the split"
        )
    return Prepared(train=train, held_out=held_out, report=report)
