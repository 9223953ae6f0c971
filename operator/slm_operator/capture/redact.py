"""Redaction of a captured call before it is kept anywhere (store or spool). Pure.

The sanitiser is injected through ``RecordSanitizer``; by default the shared Presidio sanitiser of
``slm_operator.sanitize`` (``Sanitizer(classes).sanitize_record(value) -> (value, Counter)``), the one the
FineTuneJob's sanitise step uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from slm_operator import sanitize
from slm_operator.capture.record import CaptureRecord


class RecordSanitizer(Protocol):
    def sanitize_record(self, value: Any) -> tuple[Any, Counter[str]]:
        """Every string inside ``value`` (dicts and lists walked) with PII replaced; counts per class."""
        ...


#: builds a sanitiser for a route's ``capture.redact`` classes (called once per distinct set of classes)
SanitizerFactory = Callable[[Sequence[str]], RecordSanitizer]


def default_sanitizer_factory(classes: Sequence[str]) -> RecordSanitizer:
    """The shared Presidio sanitiser (``slm_operator.sanitize``); an unknown class raises, so a route is never
    redacted less than it asks for."""
    return sanitize.Sanitizer(classes)


def redact_record(record: CaptureRecord, sanitizer: RecordSanitizer) -> tuple[CaptureRecord, Counter[str]]:
    """The record with the request and the response sanitised (the other fields hold no caller text: the
    caller is already a hash). A record whose ``redact`` is empty is returned as it is."""
    if not record.redact:
        return record, Counter()
    cleaned, counts = sanitizer.sanitize_record({"request": record.request, "response": record.response})
    return record.model_copy(update={"request": cleaned["request"], "response": cleaned["response"]}), counts


@dataclass
class RedactedBatch:
    kept: list[CaptureRecord] = field(default_factory=list)  # redacted, in the batch's order
    failed: int = 0  # records left out: their sanitiser failed (never kept raw)
    counts: Counter[str] = field(default_factory=Counter)  # values replaced, per PII class
    problems: list[str] = field(default_factory=list)  # sanitisers that could not be built, once each


class BatchRedactor:
    """Redacts batches of records with one sanitiser per distinct set of classes, built on first use and kept
    (a failure to build one is remembered: every record of its route fails alike, and it is reported once).

    Used from one thread at a time: the capture pipeline's redaction thread, or a redaction process."""

    def __init__(self, factory: SanitizerFactory) -> None:
        self.factory = factory
        self._sanitizers: dict[tuple[str, ...], RecordSanitizer | Exception] = {}

    def __call__(self, batch: Sequence[CaptureRecord]) -> RedactedBatch:
        out = RedactedBatch()
        for record in batch:
            if not record.redact:
                out.kept.append(record)
                continue
            try:
                clean, found = redact_record(record, self._sanitizer(tuple(record.redact), out))
            except Exception:  # the record is left out and counted by the caller
                out.failed += 1
                continue
            out.kept.append(clean)
            out.counts.update(found)
        return out

    def _sanitizer(self, classes: tuple[str, ...], out: RedactedBatch) -> RecordSanitizer:
        if classes not in self._sanitizers:
            try:
                self._sanitizers[classes] = self.factory(list(classes))
            except Exception as exc:
                self._sanitizers[classes] = exc
                out.problems.append(f"no sanitiser for PII classes {list(classes)} ({exc})")
        found = self._sanitizers[classes]
        if isinstance(found, Exception):
            raise found
        return found
