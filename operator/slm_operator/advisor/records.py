"""The advisor's input: one captured call (``CallRecord``) and how a JSON-lines file of them is read.

Pure: no I/O beyond parsing the lines it is given. A line needs ``id``, ``request`` (an OpenAI chat-completions
request body) and ``response`` (its response body); the usage store's export (``slm-operator usage export``,
``CaptureRecord``) is a superset, and its token counts, latency and time are used when present. ``label`` is the
ground truth of synthetic traces (``advisor/traces.py``); the advisor never reads it, the tests do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CallRecord(BaseModel):
    """One call the advisor learns from."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    time: datetime | None = None
    route: str | None = None
    backend: str | None = None
    task: str | None = Field(default=None, description="the task the gateway tagged the call with, if any")
    status: int | None = None
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)
    total_ms: float | None = Field(default=None, ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    fallback_reason: str | None = None
    label: str | None = Field(
        default=None, description="ground truth of synthetic traces; never used to decide"
    )


class Unparsable(BaseModel):
    """A line that is not a call record: where it is and why, so a report can count what it skipped."""

    line: int
    reason: str


def parse_lines(lines: Iterable[str | bytes]) -> Iterator[CallRecord | Unparsable]:
    """Each non-blank line as a ``CallRecord``, or ``Unparsable`` with its 1-based line number and the reason
    (never an exception: one bad line must not stop an analysis of 100,000)."""
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Unparsable(line=number, reason=f"not JSON: {exc.msg}")
            continue
        if not isinstance(data, dict):
            yield Unparsable(line=number, reason="not a JSON object")
            continue
        try:
            yield CallRecord.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            yield Unparsable(line=number, reason=f"{where}: {first['msg']}")
