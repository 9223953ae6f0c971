"""Remove personal data from usage records before they reach fine-tuning (step S2 of the LLM-to-SLM loop).

Pure and streaming: ``sanitize_text`` replaces each match of an enabled PII class with a typed placeholder
(``<EMAIL>``, ``<PHONE_NUMBER>``...); ``sanitize_records`` applies it to every string of JSON-lines records
and counts what it replaced. The FineTuneJob's init container runs ``slm-operator sanitize`` on the dataset.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

# Order matters: more specific patterns first (a credit card number would also look like a phone number).
PATTERNS: dict[str, re.Pattern[str]] = {
    "Email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "URL": re.compile(r"\bhttps?://[^\s\"'<>]+"),
    "APIKey": re.compile(
        r"\b(?:sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|xox[baprs]-[A-Za-z0-9-]{10,}"
        r"|AIza[0-9A-Za-z_-]{35}|[A-Za-z0-9_-]*(?:key|token|secret)[=:][A-Za-z0-9_\-]{16,})\b",
        re.IGNORECASE,
    ),
    "IBAN": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
    "CreditCard": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    "USSocialSecurityNumber": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "IPAddress": re.compile(
        r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
        r"|\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"
    ),
    "PhoneNumber": re.compile(r"(?<![\w.])\+?\d[\d ()-]{7,}\d\b"),
}


def _luhn_ok(digits: str) -> bool:
    nums = [int(c) for c in digits if c.isdigit()]
    total = 0
    for i, n in enumerate(reversed(nums)):
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return 13 <= len(nums) <= 19 and total % 10 == 0


PLACEHOLDERS = {
    "Email": "<EMAIL>",
    "URL": "<URL>",
    "APIKey": "<API_KEY>",
    "IBAN": "<IBAN>",
    "CreditCard": "<CREDIT_CARD>",
    "USSocialSecurityNumber": "<US_SSN>",
    "IPAddress": "<IP_ADDRESS>",
    "PhoneNumber": "<PHONE_NUMBER>",
}


def placeholder(cls: str) -> str:
    return PLACEHOLDERS[cls]


def sanitize_text(text: str, classes: Iterable[str], counts: Counter[str] | None = None) -> str:
    wanted = set(classes)
    for cls, pattern in PATTERNS.items():
        if cls not in wanted:
            continue

        def repl(m: re.Match[str], cls: str = cls) -> str:
            if cls == "CreditCard" and not _luhn_ok(m.group(0)):
                return m.group(0)
            if counts is not None:
                counts[cls] += 1
            return placeholder(cls)

        text = pattern.sub(repl, text)
    return text


def _walk(value: Any, classes: Iterable[str], counts: Counter[str]) -> Any:
    if isinstance(value, str):
        return sanitize_text(value, classes, counts)
    if isinstance(value, list):
        return [_walk(v, classes, counts) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, classes, counts) for k, v in value.items()}
    return value


def sanitize_records(lines: Iterable[str], classes: Iterable[str], counts: Counter[str]) -> Iterator[str]:
    """JSON-lines in, JSON-lines out; a line that is not JSON is treated as one text record."""
    cls = list(classes)
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = {"text": line}
        yield json.dumps(_walk(record, cls, counts), ensure_ascii=False)
