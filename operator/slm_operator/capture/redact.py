"""Redaction of a captured call before it is kept anywhere (store or spool). Pure.

The sanitiser is injected through ``RecordSanitizer`` so that the regex sanitiser of ``slm_operator.sanitize``
and its Presidio successor (``Sanitizer(classes).sanitize_record(value) -> (value, Counter)``) both fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from slm_operator import sanitize
from slm_operator.capture.record import CaptureRecord


class RecordSanitizer(Protocol):
    def sanitize_record(self, value: Any) -> tuple[Any, Counter[str]]:
        """Every string inside ``value`` (dicts and lists walked) with PII replaced; counts per class."""
        ...


#: builds a sanitiser for a route's ``capture.redact`` classes (called once per distinct set of classes)
SanitizerFactory = Callable[[Sequence[str]], RecordSanitizer]


class RegexSanitizer:
    """``slm_operator.sanitize``'s patterns behind the ``RecordSanitizer`` interface."""

    def __init__(self, classes: Iterable[str]) -> None:
        self.classes = list(classes)
        unknown = sorted(set(self.classes) - set(sanitize.PATTERNS))
        if unknown:  # redacting less than the route asks for would keep PII: refuse instead
            raise ValueError(f"unknown PII classes {unknown}; known: {', '.join(sanitize.PATTERNS)}")

    def sanitize_record(self, value: Any) -> tuple[Any, Counter[str]]:
        counts: Counter[str] = Counter()
        return self._walk(value, counts), counts

    def _walk(self, value: Any, counts: Counter[str]) -> Any:
        if isinstance(value, str):
            return sanitize.sanitize_text(value, self.classes, counts)
        if isinstance(value, list):
            return [self._walk(v, counts) for v in value]
        if isinstance(value, dict):
            return {k: self._walk(v, counts) for k, v in value.items()}
        return value


def default_sanitizer_factory(classes: Sequence[str]) -> RecordSanitizer:
    return RegexSanitizer(classes)


def redact_record(record: CaptureRecord, sanitizer: RecordSanitizer) -> tuple[CaptureRecord, Counter[str]]:
    """The record with the request and the response sanitised (the other fields hold no caller text: the
    caller is already a hash). A record whose ``redact`` is empty is returned as it is."""
    if not record.redact:
        return record, Counter()
    cleaned, counts = sanitizer.sanitize_record({"request": record.request, "response": record.response})
    return record.model_copy(update={"request": cleaned["request"], "response": cleaned["response"]}), counts
