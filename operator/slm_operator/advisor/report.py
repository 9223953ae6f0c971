"""The advisor's report: Markdown for review in a pull request, and one self-contained HTML page with plots.

Pure: ``Advice`` in, text out. The HTML has no script and loads nothing (inline CSS and SVG), so it can be
attached to a ticket or served as a file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from slm_operator.advisor.loop import Finding
from slm_operator.advisor.profile import TaskProfile
from slm_operator.advisor.select import Recommendation


class Advice(BaseModel):
    """Everything one ``advise`` run found and proposes."""

    model_config = ConfigDict(frozen=True)

    generated: datetime
    source: str = Field(description="where the calls came from (file or store, without credentials)")
    calls: int
    skipped: int = Field(description="lines that were not call records")
    window: tuple[datetime, datetime] | None
    noise: int = Field(description="calls in no task")
    tasks: list[TaskProfile]
    recommendations: list[Recommendation]
    pool: str | None = Field(description="the GPUPool the moves were planned on; None: not planned")
    currency: str = "USD"
    assumptions: list[str] = Field(default_factory=list)
    examples: dict[str, list[str]] = Field(
        default_factory=dict, description="task id -> sanitised user turns"
    )
    changes: list[Finding] = Field(
        default_factory=list, description="what changed since the last run (advisor.loop)"
    )
    compared: bool = Field(default=False, description="a previous run's classifier was compared with")
    retrains: list[str] = Field(default_factory=list, description="autoRetrain: started, or why not")

    def recommendation(self, task: str) -> Recommendation | None:
        return next((r for r in self.recommendations if r.task == task), None)

    @property
    def moved(self) -> list[Recommendation]:
        return [r for r in self.recommendations if r.decision == "Move"]


def _money(value: float | None, currency: str) -> str:
    return "-" if value is None else f"{value:,.2f} {currency}"


def _gpus(value: float) -> str:
    return f"{value:.2f}"


def _headline(a: Advice) -> list[str]:
    moved = a.moved
    moved_calls = sum(t.calls for t in a.tasks if a.recommendation(t.id) in moved)
    llm = sum(r.llm_cost_per_month or 0 for r in moved)
    slm = sum(r.chosen.cost_per_month for r in moved if r.chosen)
    gpus = sum(r.chosen.gpu_fraction for r in moved if r.chosen)
    span = (
        f"from {a.window[0]:%Y-%m-%d %H:%M} to {a.window[1]:%Y-%m-%d %H:%M} UTC" if a.window else "(no times)"
    )
    lines = [
        f"- **{a.calls:,} calls** read from {a.source} {span}; {a.skipped} lines skipped as unparsable.",
        f"- **{len(a.tasks)} recurring tasks** found; {a.noise:,} calls ({a.noise / max(1, a.calls):.1%}) in no task.",
        f"- **{len(moved)} tasks proposed for SLMs**: {moved_calls:,} calls ({moved_calls / max(1, a.calls):.1%} "
        "of the traffic).",
    ]
    if a.pool:
        lines.append(
            f"- Planned on GPUPool `{a.pool}`: the moved tasks hold **{_gpus(gpus)} GPUs** together."
        )
    else:
        lines.append("- No GPUPool was given (`-f`): tasks were found, no model or share was planned.")
    if moved and any(r.llm_cost_per_month is not None for r in moved):
        lines.append(
            f"- Projected per month for the moved tasks: LLM {_money(llm, a.currency)}, SLMs "
            f"{_money(slm, a.currency)}, **saving {_money(llm - slm, a.currency)}**."
        )
    return lines


def _task_rows(a: Advice) -> list[list[str]]:
    rows = []
    for t in a.tasks:
        r = a.recommendation(t.id)
        chosen = r.chosen if r else None
        rows.append(
            [
                f"`{t.id}`",
                t.label,
                f"{t.calls:,} ({t.call_share:.1%})",
                f"{t.token_share:.1%}",
                f"{t.prompt_tokens.p50:.0f} / {t.prompt_tokens.p99:.0f}",
                f"{t.completion_tokens.p50:.0f} / {t.completion_tokens.p99:.0f}",
                ", ".join(t.tools[:4]) or "-",
                f"{t.llm_latency_ms.p95:.0f}" if t.llm_latency_ms else "-",
                r.decision if r else "-",
                f"{chosen.model} ({chosen.share}, {chosen.replicas}x)" if chosen else "-",
                _money(r.saving_per_month if r else None, a.currency),
            ]
        )
    return rows


TASK_HEADER = [
    "task",
    "label",
    "calls",
    "tokens",
    "prompt p50/p99",
    "completion p50/p99",
    "tools",
    "LLM p95 ms",
    "decision",
    "model (share, replicas)",
    "saving / month",
]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def _md_task(a: Advice, t: TaskProfile) -> list[str]:
    r = a.recommendation(t.id)
    out = [f"### `{t.id}`: {t.label}", ""]
    if r:
        out += [f"**{r.decision}**: {r.reason}", ""]
    if r and r.candidates:
        rows = [
            [
                c.model,
                c.license,
                f"{c.parameters / 1e9:.2f}B",
                f"{c.memory_bytes / 2**30:.1f} GiB",
                c.share,
                _gpus(c.gpu_fraction),
                _money(c.cost_per_month, a.currency) if c.placed else f"not placed: {c.reason}",
            ]
            for c in r.candidates
        ]
        out += _md_table(
            ["candidate", "licence", "size", "memory/replica", "share", "GPUs", "cost / month"], rows
        )
        out.append("")
    for example in a.examples.get(t.id, []):
        out.append(f"> {example[:300]}")
        out.append("")
    return out


def _change_lines(a: Advice) -> list[str]:
    """The "Since the last run" section's lines (no section on a first run without findings)."""
    if not a.compared and not a.changes and not a.retrains:
        return []
    lines = [f"**{f.kind}** `{f.task}`: {f.message}" for f in a.changes]
    lines += [f"**autoRetrain**: {x}" for x in a.retrains]
    if not lines:
        lines = ["No new task, no drift and no rising fallback rate."]
    return lines


def render_markdown(a: Advice) -> str:
    lines = [f"# slm-operator advice ({a.generated:%Y-%m-%d %H:%M} UTC)", "", *_headline(a), ""]
    if changed := _change_lines(a):
        lines += ["## Since the last run", "", *[f"- {x}" for x in changed], ""]
    lines += ["## Tasks", "", *_md_table(TASK_HEADER, _task_rows(a)), ""]
    lines += ["## Per task", ""]
    for t in a.tasks:
        lines += _md_task(a, t)
    lines += ["## Assumptions", ""] + [f"- {x}" for x in a.assumptions] + [""]
    return "\n".join(lines)


def _svg_bars(title: str, items: Sequence[tuple[str, float]], unit: str, width: int = 640) -> str:
    """A horizontal bar chart as inline SVG."""
    bar_h, gap, label_w = 18, 6, 220
    height = 30 + len(items) * (bar_h + gap)
    top = max([v for _, v in items] + [1e-9])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = 26 + i * (bar_h + gap)
        w = (width - label_w - 90) * value / top
        parts += [
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{html.escape(label[:32])}</text>',
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4c78a8"/>',
            f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="12">{value:,.2f} {html.escape(unit)}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
    "th{background:#f2f2f2}blockquote{color:#555;border-left:3px solid #ccc;margin:4px 0;padding-left:8px}"
)


def render_html(a: Advice) -> str:
    labels = {t.id: f"{t.id} {t.label}" for t in a.tasks}
    plots = [
        _svg_bars("Share of calls per task", [(labels[t.id], 100 * t.call_share) for t in a.tasks], "%"),
        _svg_bars(
            "Prompt tokens per task (p99)", [(labels[t.id], t.prompt_tokens.p99) for t in a.tasks], "tok"
        ),
        _svg_bars(
            "Completion tokens per task (p99)",
            [(labels[t.id], t.completion_tokens.p99) for t in a.tasks],
            "tok",
        ),
    ]
    moved = [r for r in a.moved if r.chosen]
    if moved:
        plots.append(
            _svg_bars(
                "Projected GPUs per moved task",
                [(labels[r.task], r.chosen.gpu_fraction) for r in moved if r.chosen],
                "GPU",
            )
        )
        savings = [(labels[r.task], r.saving_per_month) for r in moved if r.saving_per_month is not None]
        if savings:
            plots.append(
                _svg_bars("Projected saving per month", [(k, float(v)) for k, v in savings], a.currency)
            )
    details = []
    for t in a.tasks:
        r = a.recommendation(t.id)
        examples = "".join(
            f"<blockquote>{html.escape(x[:300])}</blockquote>" for x in a.examples.get(t.id, [])
        )
        decision = f"<p><b>{html.escape(r.decision)}</b>: {html.escape(r.reason)}</p>" if r else ""
        details.append(f"<h3>{html.escape(labels[t.id])}</h3>{decision}{examples}")
    headline = "".join(f"<li>{html.escape(x.lstrip('- ').replace('**', ''))}</li>" for x in _headline(a))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>slm-operator advice</title><style>{STYLE}</style></head><body>"
        f"<h1>slm-operator advice ({a.generated:%Y-%m-%d %H:%M} UTC)</h1><ul>{headline}</ul>"
        + "".join(f"<div>{p}</div>" for p in plots)
        + (
            "<h2>Since the last run</h2><ul>"
            + "".join(f"<li>{html.escape(x.replace('**', '').replace('`', ''))}</li>" for x in changed)
            + "</ul>"
            if (changed := _change_lines(a))
            else ""
        )
        + "<h2>Tasks</h2>"
        + _html_table(TASK_HEADER, [[c.strip("`") for c in row] for row in _task_rows(a)])
        + "<h2>Per task</h2>"
        + "".join(details)
        + "<h2>Assumptions</h2><ul>"
        + "".join(f"<li>{html.escape(x)}</li>" for x in a.assumptions)
        + "</ul></body></html>"
    )
