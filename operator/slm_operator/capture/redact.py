"""Redaction of a captured call before it is kept anywhere (store or spool). Pure.

The sanitiser is injected through ``RecordSanitizer``; by default the shared Presidio sanitiser of
``slm_operator.sanitize`` (``Sanitizer(classes).sanitize_record(value) -> (value, Counter)``), the one the
FineTuneJob's sanitise step uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
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
