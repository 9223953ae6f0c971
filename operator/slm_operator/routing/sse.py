"""Server-sent events of OpenAI-compatible streams: bytes in, the JSON of each ``data:`` event out."""

from __future__ import annotations

import json
from typing import Any

DONE = b"[DONE]"


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of every complete ``data:`` line (``[DONE]`` and lines that are not JSON are skipped)."""
    out: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == DONE:
            continue
        try:
            value = json.loads(payload)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def count_data_events(chunk: bytes, carry: bytes = b"\n") -> tuple[int, bytes]:
    """``data:`` events starting in ``chunk`` of a stream read piece by piece: (count, carry for the next piece).

    An event starts at a line beginning with ``data:``; JSON escapes newlines inside strings, so a raw newline
    followed by ``data:`` only occurs between events. ``carry`` (the end of the previous piece, a newline at the
    start of the stream) catches a boundary split between two pieces. ``[DONE]`` counts too.
    """
    joined = carry + chunk
    return joined.count(b"\ndata:"), joined[-5:]


def stream_usage(tail: bytes) -> dict[str, Any] | None:
    """The ``usage`` of the last event in ``tail`` that carries one (``stream_options.include_usage``).

    Read from the end, and only events whose bytes hold ``"usage"`` are parsed: the others (every content
    chunk) cannot carry it, and parsing them cost a stream a JSON decode per chunk."""
    for line in reversed(tail.splitlines()):
        if b'"usage"' not in line or not line.startswith(b"data:"):
            continue
        try:
            event = json.loads(line[5:].strip())
        except ValueError:
            continue
        usage = event.get("usage") if isinstance(event, dict) else None
        if isinstance(usage, dict):
            return usage
    return None


def join_completion_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``text_completion`` body a stream of ``/v1/completions`` chunks adds up to (texts joined per choice)."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, Any] = {}
    usage: Any = None
    for event in events:
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            texts.setdefault(index, []).append(str(choice.get("text") or ""))
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    first = events[0] if events else {}
    return {
        "id": first.get("id"),
        "object": "text_completion",
        "model": first.get("model"),
        "choices": [
            {"index": i, "text": "".join(parts), "finish_reason": finish.get(i)}
            for i, parts in sorted(texts.items())
        ],
        "usage": usage,
    }


_DECODER = json.JSONDecoder()


def body_usage(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of a (non-streamed) answer, without parsing the whole answer: the last ``"usage"``
    key's object (the string ``"usage"`` as a value, e.g. an answer's content, is skipped). None when there is
    none or it is not a JSON object."""
    end = len(body)
    while (at := body.rfind(b'"usage"', 0, end)) >= 0:
        rest = body[at + 7 :].lstrip()
        if rest.startswith(b":"):  # a key; the string "usage" as a value is followed by , } or ]
            try:
                value, _ = _DECODER.raw_decode(rest[1:].decode("utf-8", "replace").lstrip())
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
        end = at
    return None
