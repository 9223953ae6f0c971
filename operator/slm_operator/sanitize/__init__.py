"""Remove personal data from usage records before they reach fine-tuning (step S2 of the LLM-to-SLM loop).

Built on Presidio: pattern recognisers (with checksums and context where they exist) for e-mail, phone
numbers, cards, API keys, IP and MAC addresses, IBAN, US SSN, URLs, street addresses and dates of birth, and a
spaCy NER model for persons, locations and organisations. Every string inside a JSON record is redacted with
pseudonyms that are consistent within the record (``<PERSON_1>`` is the same person wherever it appears).
``docs/sanitization.md`` has the classes, the model, and the measured precision and recall.

Used by ``slm-operator sanitize`` (the FineTuneJob's first step), the trainer, and the gateway's usage capture:

    sanitizer = Sanitizer(["Email", "Person"])           # once: loads Presidio and the NER model
    clean, counts = sanitizer.sanitize_record(record)    # per record
    out, report = sanitize_lines(lines, sanitizer)       # JSON lines, lazily; report.to_json() when done

Importing this package loads neither Presidio nor spaCy; building a ``Sanitizer`` does (``engine.py``).
"""

from slm_operator.sanitize.classes import (
    CLASS_NAMES,
    CLASSES,
    DEFAULT_NER_MODEL,
    NER_CLASSES,
    NER_MODEL_ENV,
    PATTERN_CLASSES,
    UnknownPIIClass,
    parse_classes,
    placeholder,
)
from slm_operator.sanitize.engine import NerModelMissing, Sanitizer, SanitizerUnavailable, ner_model_installed
from slm_operator.sanitize.records import SanitizeReport, sanitize_lines, sanitize_value
from slm_operator.sanitize.spans import Found

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "DEFAULT_NER_MODEL",
    "NER_CLASSES",
    "NER_MODEL_ENV",
    "PATTERN_CLASSES",
    "Found",
    "NerModelMissing",
    "SanitizeReport",
    "Sanitizer",
    "SanitizerUnavailable",
    "UnknownPIIClass",
    "ner_model_installed",
    "parse_classes",
    "placeholder",
    "sanitize_lines",
    "sanitize_value",
]
