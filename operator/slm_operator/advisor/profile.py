"""What each task's calls look like and cost: the figures S4 decides on and the report shows.

Pure: a ``TaskProfile`` per task from the records assigned to it. Token counts come from the record (the
store's ``prompt_tokens``/``completion_tokens``), else the response's ``usage``, else an estimate (characters / 4,
the gateway's rule, ``routing.features``). The LLM's cost is its token prices times the tokens; the window is
the span of the records' times, so a projection per month scales by 30 days over it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slm_operator.advisor.records import CallRecord
from slm_operator.routing.features import CHARS_PER_TOKEN, estimate_prompt_tokens, wants_json

#: the projection period of the report's monthly figures
MONTH = timedelta(days=30)


class TokenPrice(BaseModel):
    """An LLM's price in a currency per million tokens (what the provider's price list says)."""

    model_config = ConfigDict(frozen=True)

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class Percentiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    p50: float
    p95: float
    p99: float
    max: float


class TaskProfile(BaseModel):
    """One task's traffic, tokens, LLM latency and cost over the analysed window."""

    model_config = ConfigDict(frozen=True)

    id: str
    label: str
    calls: int = Field(ge=0)
    call_share: float = Field(ge=0, le=1, description="of every analysed call")
    tokens: int = Field(ge=0, description="prompt + completion tokens")
    token_share: float = Field(ge=0, le=1)
    prompt_tokens: Percentiles
    completion_tokens: Percentiles
    tools_share: float = Field(ge=0, le=1, description="calls that offer tools")
    tool_call_share: float = Field(ge=0, le=1, description="answers that call a tool")
    json_share: float = Field(ge=0, le=1, description="calls that ask for JSON (response_format)")
    tools: list[str] = Field(default_factory=list, description="tools the task's calls offer")
    llm_latency_ms: Percentiles | None = None
    peak_calls_per_second: float = Field(ge=0, description="busiest minute of the window, per second")
    mean_calls_per_second: float = Field(ge=0)
    llm_cost: float | None = Field(default=None, description="over the window, at the LLM's token prices")
    llm_cost_per_month: float | None = None
    example_ids: list[str] = Field(default_factory=list)

    @property
    def uses_tools(self) -> bool:
        return self.tools_share >= 0.5

    @property
    def context_tokens_p99(self) -> int:
        """Prompt p99 + completion p99: the sequence length a model must hold for the task."""
        return math.ceil(self.prompt_tokens.p99 + self.completion_tokens.p99)


def percentiles(values: Sequence[float]) -> Percentiles:
    """Nearest-rank percentiles (the value at rank ceil(p * n)); zeros for no values."""
    if not values:
        return Percentiles(p50=0, p95=0, p99=0, max=0)
    ordered = sorted(values)

    def rank(p: float) -> float:
        return float(ordered[max(0, math.ceil(p * len(ordered)) - 1)])

    return Percentiles(p50=rank(0.50), p95=rank(0.95), p99=rank(0.99), max=float(ordered[-1]))


def _usage(record: CallRecord) -> Mapping[str, Any]:
    usage = (record.response or {}).get("usage")
    return usage if isinstance(usage, Mapping) else {}


def _answer_chars(response: Mapping[str, Any] | None) -> int:
    if not response:
        return 0
    chars = 0
    for choice in response.get("choices") or []:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if isinstance(message, Mapping):
            chars += len(str(message.get("content") or ""))
            chars += len(json.dumps(message.get("tool_calls") or "", separators=(",", ":")))
    return chars


def tokens_of(record: CallRecord) -> tuple[int, int]:
    """(prompt, completion) tokens of a call: the record's counts, the response's usage, else estimates."""
    usage = _usage(record)
    prompt = record.prompt_tokens
    if prompt is None:
        prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
    if prompt is None:
        prompt = estimate_prompt_tokens(record.request)
    completion = record.completion_tokens
    if completion is None:
        value = usage.get("completion_tokens")
        completion = (
            value if isinstance(value, int) else math.ceil(_answer_chars(record.response) / CHARS_PER_TOKEN)
        )
    return prompt, completion


def tool_names(request: Mapping[str, Any]) -> list[str]:
    """Names of the functions a request offers."""
    out: list[str] = []
    for tool in request.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out.append(fn["name"])
    return out


def calls_a_tool(response: Mapping[str, Any] | None) -> bool:
    for choice in (response or {}).get("choices") or []:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if isinstance(message, Mapping) and message.get("tool_calls"):
            return True
    return False


def window(records: Sequence[CallRecord]) -> tuple[datetime, datetime] | None:
    """First and last call time of the records that carry one."""
    times = [r.time for r in records if r.time is not None]
    return (min(times), max(times)) if times else None


def _rates(times: Sequence[datetime], span_s: float) -> tuple[float, float]:
    """(peak per second over the busiest minute, mean per second over the window)."""
    if not times or span_s <= 0:
        return 0.0, 0.0
    per_minute: dict[int, int] = defaultdict(int)
    for t in times:
        per_minute[int(t.timestamp() // 60)] += 1
    return max(per_minute.values()) / 60.0, len(times) / span_s


def profile_task(
    task_id: str,
    label: str,
    members: Sequence[CallRecord],
    *,
    totals: tuple[int, int],
    span: tuple[datetime, datetime] | None,
    price: TokenPrice | None,
) -> TaskProfile:
    """The profile of one task from its member records. ``totals`` is (every call, every token) of the
    analysis, for the shares; ``span`` the analysis window (rates and the monthly projection need one)."""
    tokens = [tokens_of(r) for r in members]
    prompt_total = sum(p for p, _ in tokens)
    completion_total = sum(c for _, c in tokens)
    tools: dict[str, int] = defaultdict(int)
    for r in members:
        for name in tool_names(r.request):
            tools[name] += 1
    n = max(1, len(members))
    latencies = [r.total_ms for r in members if r.total_ms is not None]
    span_s = (span[1] - span[0]).total_seconds() if span else 0.0
    peak, mean = _rates([r.time for r in members if r.time is not None], span_s)
    cost = price.cost(prompt_total, completion_total) if price else None
    monthly = cost * (MONTH.total_seconds() / span_s) if cost is not None and span_s > 0 else None
    all_calls, all_tokens = totals
    return TaskProfile(
        id=task_id,
        label=label,
        calls=len(members),
        call_share=len(members) / all_calls if all_calls else 0.0,
        tokens=prompt_total + completion_total,
        token_share=(prompt_total + completion_total) / all_tokens if all_tokens else 0.0,
        prompt_tokens=percentiles([p for p, _ in tokens]),
        completion_tokens=percentiles([c for _, c in tokens]),
        tools_share=sum(1 for r in members if r.request.get("tools")) / n,
        tool_call_share=sum(1 for r in members if calls_a_tool(r.response)) / n,
        json_share=sum(1 for r in members if wants_json(r.request)) / n,
        tools=sorted(tools, key=lambda k: (-tools[k], k))[:12],
        llm_latency_ms=percentiles(latencies) if latencies else None,
        peak_calls_per_second=peak,
        mean_calls_per_second=mean,
        llm_cost=cost,
        llm_cost_per_month=monthly,
        example_ids=[r.id for r in members[:3]],
    )


def total_tokens(records: Sequence[CallRecord]) -> int:
    return sum(sum(tokens_of(r)) for r in records)
