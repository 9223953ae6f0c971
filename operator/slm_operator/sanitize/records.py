"""Records and JSON lines: every string inside a JSON value is sanitised; counts per class; skipped lines. Pure.

``sanitize_value`` takes the finder as a function (``Sanitizer`` passes Presidio's), so this module, the
pseudonyms and the streaming are tested without loading a model.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from slm_operator.sanitize.classes import CLASS_NAMES
from slm_operator.sanitize.spans import Found, numbers_in_use, pseudonyms, redact, resolve

#: Finds the PII in a batch of strings (one record's): one list of findings per string.
FindFn = Callable[[Sequence[str]], list[list[Found]]]
#: Writes the pseudonyms: ``(text, merged spans, (class, value) -> placeholder) -> redacted text``.
RedactFn = Callable[[str, Sequence[Found], Mapping[tuple[str, str], str]], str]
#: The termination message's limit (Kubernetes keeps at most 4096 bytes of it).
TERMINATION_LOG_LIMIT = 4096


class RecordSanitizer(Protocol):
    def sanitize_record(self, record: Any) -> tuple[Any, Counter[str]]: ...


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON value, depth first; object keys are structure and are left alone."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    return []


def with_strings(value: Any, strings: Iterator[str]) -> Any:
    """``value`` with its strings replaced, in ``strings_in`` order, by the next ones from ``strings``."""
    if isinstance(value, str):
        return next(strings)
    if isinstance(value, list):
        return [with_strings(v, strings) for v in value]
    if isinstance(value, dict):
        return {k: with_strings(v, strings) for k, v in value.items()}
    return value


def sanitize_value(value: Any, find: FindFn, replace: RedactFn = redact) -> tuple[Any, Counter[str]]:
    """The JSON value with its PII replaced by pseudonyms consistent across all its strings, and the counts."""
    texts = strings_in(value)
    found = find(texts) if texts else []
    spans = [resolve(t, f) for t, f in zip(texts, found, strict=True)]
    mentions = [(s.cls, t[s.start : s.end]) for t, ss in zip(texts, spans, strict=True) for s in ss]
    names = pseudonyms(mentions, numbers_in_use(texts))
    clean = [replace(t, ss, names) for t, ss in zip(texts, spans, strict=True)]
    return with_strings(value, iter(clean)), Counter(cls for cls, _ in mentions)


@dataclass
class SanitizeReport:
    """What a run did: records written, lines skipped as not JSON, values redacted per class."""

    records: int = 0
    skipped: int = 0
    redacted: dict[str, int] = field(default_factory=dict)

    def add(self, counts: Counter[str]) -> None:
        self.records += 1
        for cls, n in counts.items():
            self.redacted[cls] = self.redacted.get(cls, 0) + n

    def to_dict(self) -> dict[str, Any]:
        order = {c: i for i, c in enumerate(CLASS_NAMES)}
        redacted = {
            c: self.redacted[c] for c in sorted(self.redacted, key=lambda c: order.get(c, len(order)))
        }
        return {"records": self.records, "skipped": self.skipped, "redacted": redacted}

    def to_json(self) -> str:
        """``{"records": 120, "skipped": 2, "redacted": {"Email": 10, ...}}``: the termination message and
        ``--report``; at most 14 classes, so always well under ``TERMINATION_LOG_LIMIT``."""
        return json.dumps(self.to_dict())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python reads them, other JSON readers do not


def parse_line(line: str | bytes) -> Any:
    """The JSON value of one line; ``ValueError`` when it is not UTF-8 JSON."""
    text = line.decode("utf-8") if isinstance(line, bytes) else line  # UnicodeDecodeError is a ValueError
    return json.loads(text, parse_constant=_reject_constant)


def sanitize_lines(
    lines: Iterable[str | bytes], sanitizer: RecordSanitizer
) -> tuple[Iterator[str], SanitizeReport]:
    """JSON lines in, sanitised JSON lines out (without newlines), lazily; the report fills as they are read.

    A blank line is ignored; a line that is not UTF-8 JSON is counted in ``report.skipped`` and left out.
    """
    report = SanitizeReport()

    def run() -> Iterator[str]:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = parse_line(line)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
                report.skipped += 1
                continue
            clean, counts = sanitizer.sanitize_record(record)
            report.add(counts)
            yield json.dumps(clean, ensure_ascii=False)

    return run(), report
