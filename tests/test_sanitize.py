"""The PII sanitiser: what a user sees redacted (the issue's examples, many countries' formats), the labelled
corpus's precision and recall, consistent pseudonyms, JSON records and lines. The CLI is in test_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from slm_operator.api.v1alpha1 import PIIClass, Sanitization
from slm_operator.sanitize import (
    CLASS_NAMES,
    DEFAULT_NER_MODEL,
    NER_CLASSES,
    PATTERN_CLASSES,
    Found,
    NerModelMissing,
    Sanitizer,
    SanitizerUnavailable,
    UnknownPIIClass,
    sanitize_lines,
    sanitize_value,
)
from slm_operator.sanitize.classes import DEFAULT_REDACT
from slm_operator.sanitize.records import TERMINATION_LOG_LIMIT, strings_in, with_strings
from slm_operator.sanitize.spans import WINDOW, merge, pseudonyms, redact, resolve, windows
from tests import pii_corpus


@pytest.fixture(scope="module")
def everything() -> Sanitizer:
    """Every class, with the test tier's NER model: built once (about a second), as a user would."""
    return Sanitizer(CLASS_NAMES, ner_model=DEFAULT_NER_MODEL)


@pytest.fixture(scope="module")
def patterns_only() -> Sanitizer:
    """The pattern classes: no NER model loaded, so only the patterns are under test."""
    return Sanitizer(PATTERN_CLASSES)


def clean(s: Sanitizer, text: str) -> str:
    return s.sanitize_text(text)[0]


# --- the classes ------------------------------------------------------------------------------------------------


def test_the_api_enum_and_the_sanitiser_name_the_same_classes() -> None:
    assert [c.value for c in PIIClass] == list(CLASS_NAMES)
    assert len(CLASS_NAMES) >= 12 and {"Person", "Location", "Organization"} == NER_CLASSES
    assert set(CLASS_NAMES) == PATTERN_CLASSES | NER_CLASSES
    assert [c.value for c in Sanitization().redact] == list(DEFAULT_REDACT)
    assert {"Email", "PhoneNumber", "CreditCard", "APIKey"} <= set(DEFAULT_REDACT)  # v0.1.0's defaults stay


def test_importing_the_package_loads_neither_presidio_nor_spacy() -> None:
    code = "import sys, slm_operator.sanitize, slm_operator.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('presidio_analyzer', 'spacy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_class_or_a_missing_model_is_refused_with_what_to_do() -> None:
    with pytest.raises(
        UnknownPIIClass, match=r"unknown PII classes \['Horoscope'\]; known: Email, PhoneNumber"
    ):
        Sanitizer(["Email", "Horoscope"])
    with pytest.raises(NerModelMissing) as missing:
        Sanitizer(["Person"], ner_model="en_core_web_nonexistent")
    assert "en_core_web_nonexistent" in str(missing.value) and "never downloads" in str(missing.value)
    assert "pip install" in str(missing.value)
    with pytest.raises(ValueError, match="Location, Person need an NER model"):
        Sanitizer(["Person", "Location"], ner_model=None)
    # pattern classes need no model at all: a missing one does not matter, and none is loaded
    s = Sanitizer(["Email"], ner_model="en_core_web_nonexistent")
    assert s.ner_model is None and clean(s, "mail jane@corp.example") == "mail <EMAIL_1>"


def test_a_broken_model_folder_or_a_missing_presidio_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(SanitizerUnavailable, match=f"the NER model '{tmp_path}' cannot be loaded: .*E054"):
        Sanitizer(["Person"], ner_model=str(tmp_path))
    code = (  # the operator image has no sanitize extra
        "import sys; sys.modules['presidio_analyzer'] = None\n"
        "from slm_operator.sanitize import Sanitizer, SanitizerUnavailable\n"
        "try: Sanitizer(['Email'])\n"
        "except SanitizerUnavailable as exc: print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs Presidio and spaCy" in out.stdout and "pip install 'slm-operator[sanitize]'" in out.stdout


# --- what a user sees -------------------------------------------------------------------------------------------


def test_the_issues_examples(everything: Sanitizer) -> None:
    assert clean(everything, "Jane Doe, 221B Baker Street") == "<PERSON_1>, <STREET_ADDRESS_1>"
    assert clean(everything, "call (555) 123-4567 now") == "call <PHONE_NUMBER_1> now"  # the "(" goes too
    dates = "The meeting moved from 2024-03-15 to 15.03.2025, then 03/15/2026 and 2024-2025."
    assert clean(everything, dates) == dates


@pytest.mark.parametrize(
    "number",
    [
        "+1 415-555-0132", "(415) 555-0132", "415.555.0132", "+1 (555) 010-4477",  # US
        "+44 20 7946 0958", "020 7946 0958", "07700 900123",  # UK
        "+49 30 12345678", "030 12345678", "0171 1234567", "+49 (0)30 1234567",  # DE
        "+33 1 42 68 53 00", "01 42 68 53 00", "06 12 34 56 78",  # FR
        "+34 912 345 678", "+39 06 1234 5678", "+31 20 123 4567", "+41 44 668 18 00",  # ES IT NL CH
        "+43 1 5880 1234", "+353 1 234 5678", "+91 98765 43210", "+61 2 9374 4000",  # AT IE IN AU
    ],
)  # fmt: skip
def test_phone_numbers_of_many_countries_are_redacted_whole(patterns_only: Sanitizer, number: str) -> None:
    assert clean(patterns_only, f"Phone: {number}.") == "Phone: <PHONE_NUMBER_1>."


@pytest.mark.parametrize(
    "address",
    [
        "1600 Pennsylvania Avenue NW, Washington, DC 20500",  # US
        "350 5th Avenue, Apt 12B",
        "10 Downing Street, London SW1A 2AA",  # UK
        "Flat 3, 12 Abbey Road",
        "Hauptstraße 12, 10115 Berlin",  # DE
        "Karl-Marx-Allee 5",
        "Goethestr. 7a, D-80331 München",
        "12 rue de la Paix, 75002 Paris",  # FR
        "8 bis avenue des Champs-Élysées",
        "Calle de Alcalá, 45, 28014 Madrid",  # ES
        "Via dei Condotti 8, 00187 Roma",  # IT
        "Keizersgracht 123, 1015 CJ Amsterdam",  # NL
    ],
)
def test_street_addresses_of_many_countries_are_redacted_whole(
    patterns_only: Sanitizer, address: str
) -> None:
    assert clean(patterns_only, f"Ship it to {address}. Thanks") == "Ship it to <STREET_ADDRESS_1>. Thanks"


def test_each_pattern_class_in_context(patterns_only: Sanitizer) -> None:
    text = (
        "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-8170, host 10.2.3.4, "
        "mac 00:1A:2B:3C:4D:5E, key sk-abcdefghijklmnopqrstuv, see https://wiki.corp:8443/x?id=7. "
        'api_key="s3cr3t-v4lue-123" DOB: 12 March 1985'
    )
    assert clean(patterns_only, text) == (
        "card <CREDIT_CARD_1>, IBAN <IBAN_1>, SSN <US_SSN_1>, host <IP_ADDRESS_1>, "
        "mac <MAC_ADDRESS_1>, key <API_KEY_1>, see <URL_1>. "
        'api_key="<API_KEY_2>" DOB: <DATE_OF_BIRTH_1>'
    )
    # what is not PII stays: a number that fails Luhn, a date that is no birth date, versions and times
    keep = "order 4111 1111 1111 1112 shipped on 12 March 2024 with v1.2.3 at 10:30"
    assert clean(patterns_only, keep) == keep


def test_only_the_requested_classes_are_redacted() -> None:
    s = Sanitizer(["PhoneNumber"])
    assert (
        clean(s, "Jane Doe <jane@corp.example>, +49 30 12345678")
        == "Jane Doe <jane@corp.example>, <PHONE_NUMBER_1>"
    )


# --- the labelled corpus ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    return pii_corpus.load()


def test_the_corpus_is_what_its_generator_writes(corpus: list[dict[str, Any]]) -> None:
    assert corpus == [
        json.loads(json.dumps(r)) for r in pii_corpus.generate()
    ]  # `python -m tests.pii_corpus generate`
    assert len(corpus) >= 300
    assert len({s["class"] for r in corpus for s in r["spans"]}) >= 12
    assert {r["lang"] for r in corpus} >= {"en", "de", "fr", "es", "it", "nl"}
    for r in corpus:
        for s in r["spans"]:
            assert r["text"][s["start"] : s["end"]].strip() == r["text"][s["start"] : s["end"]], r


def test_precision_and_recall_on_the_labelled_corpus(
    everything: Sanitizer, corpus: list[dict[str, Any]]
) -> None:
    scores = pii_corpus.score(corpus, pii_corpus.redacted_spans(everything))
    print(
        "\n" + pii_corpus.table(scores)
    )  # the table in docs/sanitization.md (`python -m tests.pii_corpus score`)
    for cls in PATTERN_CLASSES:
        assert scores[cls].labelled >= 15, cls
        assert scores[cls].recall >= 0.99, (cls, scores[cls])
        assert scores[cls].precision >= 0.95, (
            cls,
            scores[cls],
        )  # dates, versions, prices are no phone numbers
    for cls in ("Person", "Location"):
        assert scores[cls].recall >= 0.85, (cls, scores[cls])
        assert scores[cls].hidden_rate >= 0.95, (cls, scores[cls])  # redacted, whatever the class


# --- pseudonyms -------------------------------------------------------------------------------------------------


def test_pseudonyms_are_consistent_across_a_records_strings(everything: Sanitizer) -> None:
    record = {
        "messages": [
            {
                "role": "user",
                "content": "I'm Jane Doe. Please email bob.smith@corp.example and jane@corp.example.",
            },
            {"role": "assistant", "content": "Done, Jane: I wrote to bob.smith@corp.example."},
        ],
        "tools": [{"name": "send", "arguments": '{"to": "jane@corp.example"}'}],
        "turns": 2,
    }
    out, counts = everything.sanitize_record(record)
    assert out == {
        "messages": [
            {"role": "user", "content": "I'm <PERSON_1>. Please email <EMAIL_1> and <EMAIL_2>."},
            {"role": "assistant", "content": "Done, <PERSON_1>: I wrote to <EMAIL_1>."},
        ],
        "tools": [{"name": "send", "arguments": '{"to": "<EMAIL_2>"}'}],
        "turns": 2,
    }
    assert counts == Counter({"Email": 4, "Person": 2})
    # a new record numbers from 1 again
    assert everything.sanitize_text("mail jane@corp.example")[0] == "mail <EMAIL_1>"


def test_placeholders_are_kept_and_pattern_classes_sanitised_twice_change_nothing(
    patterns_only: Sanitizer, everything: Sanitizer, corpus: list[dict[str, Any]]
) -> None:
    for rec in corpus[:80]:
        once = clean(patterns_only, rec["text"])
        assert clean(patterns_only, once) == once, rec["text"]
    # a record that already holds placeholders keeps them and numbers on from them
    assert clean(everything, "<EMAIL_1> wrote to bob@corp.example") == "<EMAIL_1> wrote to <EMAIL_2>"


def test_a_first_or_last_name_is_the_person_of_the_one_full_name_holding_it() -> None:
    mentions = [
        ("Person", "Jane Doe"),
        ("Person", "Jane"),
        ("Person", "John Doe"),
        ("Person", "Doe"),
        ("Person", "Smith"),
    ]
    assert pseudonyms(mentions) == {
        ("Person", "Jane Doe"): "<PERSON_1>",
        ("Person", "Jane"): "<PERSON_1>",  # only Jane Doe holds "Jane"
        ("Person", "John Doe"): "<PERSON_2>",
        ("Person", "Doe"): "<PERSON_3>",  # both hold "Doe": which one is unknown
        ("Person", "Smith"): "<PERSON_4>",
    }


_values = st.text(alphabet="abcAB 12-", min_size=1, max_size=6)
_classes = st.sampled_from(["Email", "PhoneNumber", "IPAddress", "URL"])


@given(st.lists(st.tuples(_classes, _values), max_size=12), st.dictionaries(_classes, st.integers(0, 5)))
def test_the_same_value_gets_the_same_placeholder_and_different_values_different_ones(
    mentions: list[tuple[str, str]], used: dict[str, int]
) -> None:
    from slm_operator.sanitize.spans import identity

    names = pseudonyms(mentions, used)
    for a in mentions:
        for b in mentions:
            same = a[0] == b[0] and identity(*a) == identity(*b)
            assert (names[a] == names[b]) == same, (a, b)
    for cls in {c for c, _ in mentions}:  # numbered on from the used ones, without gaps
        numbers = sorted({int(names[m].rsplit("_", 1)[1][:-1]) for m in mentions if m[0] == cls})
        assert numbers == list(range(used.get(cls, 0) + 1, used.get(cls, 0) + 1 + len(numbers)))


# --- spans ------------------------------------------------------------------------------------------------------

_found = st.builds(
    lambda start, length, cls, score: Found(start, start + length, cls, score),
    st.integers(0, 40),
    st.integers(1, 12),
    st.sampled_from(CLASS_NAMES),
    st.sampled_from([0.5, 0.6, 0.85, 1.0]),
)


@given(st.lists(_found, max_size=10))
def test_merged_spans_do_not_overlap_and_cover_every_finding(found: list[Found]) -> None:
    merged = merge(found)
    assert all(a.end <= b.start for a, b in pairwise(merged))
    for f in found:
        assert any(m.start <= f.start and f.end <= m.end for m in merged)
    for m in merged:  # each is named by one of its findings
        assert any(f.cls == m.cls and m.start <= f.start and f.end <= m.end for f in found)


@given(st.lists(_found, max_size=10))
def test_resolved_spans_cover_every_pattern_finding_and_never_overlap(found: list[Found]) -> None:
    text = "Ab cd Ef " * 10
    spans = resolve(text, found)
    assert all(a.end <= b.start for a, b in pairwise(spans))
    for f in found:
        if f.cls in PATTERN_CLASSES:
            assert any(s.start <= f.start and f.end <= s.end and s.cls in PATTERN_CLASSES for s in spans)


@given(st.text(alphabet="ab ", max_size=400), st.integers(20, 80), st.integers(2, 40))
def test_long_texts_are_read_in_windows_that_hold_every_short_value_whole(
    text: str, size: int, overlap: int
) -> None:
    assume(overlap <= size // 2)  # as WINDOW 20,000 and OVERLAP 1,000
    pieces = windows(text, size, overlap)
    assert all(text[o : o + len(p)] == p and len(p) <= size for o, p in pieces)
    assert pieces[0][0] == 0 and pieces[-1][0] + len(pieces[-1][1]) == len(text)
    whole = overlap - overlap // 10
    for start in range(len(text) - whole + 1):  # every value of up to `whole` characters is inside one piece
        assert any(o <= start and start + whole <= o + len(p) for o, p in pieces), (start, pieces)


def test_a_long_string_read_in_windows_is_sanitised_as_if_read_whole(patterns_only: Sanitizer) -> None:
    # spaCy refuses strings over a million characters; windows of 20,000 keep every string readable. Here the
    # window is 300 characters, so values sit on window boundaries without a megabyte of text.
    filler = "The quick brown fox jumps over the lazy dog. "
    text = "".join(
        f"{filler * (i % 4)}mail jane{i % 5}@corp.example or +49 30 1234567{i % 3}. " for i in range(40)
    )
    whole = clean(patterns_only, text)
    patterns_only._finder.window = 300
    try:
        assert clean(patterns_only, text) == whole
    finally:
        patterns_only._finder.window = WINDOW
    assert "@" not in whole and "+49" not in whole and "<EMAIL_5>" in whole and "<PHONE_NUMBER_3>" in whole


def test_a_name_glued_to_a_number_loses_the_number_to_its_pattern() -> None:
    text = "Call Jane Doe +49 30 12345678 or joindre au +41 78 198 89 70"
    phone1, phone2 = text.index("+49"), text.index("+41")
    found = [
        Found(5, phone1 + 15, "Person", 0.85),  # spaCy's "Jane Doe +49 30 12345678"
        Found(phone1, phone1 + 15, "PhoneNumber", 0.6),
        Found(text.index("joindre"), len(text), "Person", 0.85),  # lower-case words are no name
        Found(phone2, len(text), "PhoneNumber", 0.6),
    ]
    assert [(text[s.start : s.end], s.cls) for s in resolve(text, found)] == [
        ("Jane Doe", "Person"),
        ("+49 30 12345678", "PhoneNumber"),
        ("+41 78 198 89 70", "PhoneNumber"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="ab cd.", max_size=30),
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 5)), max_size=5),
)
def test_presidios_anonymizer_writes_the_same_text_as_the_plain_redaction(
    text: str, cuts: list[tuple[int, int]]
) -> None:
    from slm_operator.sanitize.recognizers import PresidioRedactor

    spans = merge(Found(min(s, len(text)), min(s + n, len(text)), "Person") for s, n in cuts)
    spans = [s for s in spans if s.end > s.start]
    names = pseudonyms([(s.cls, text[s.start : s.end]) for s in spans])
    assert PresidioRedactor().redact(text, spans, names) == redact(text, spans, names)


# --- JSON values and lines --------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(_json)
def test_walking_a_json_value_visits_every_string_and_rebuilds_it(value: Any) -> None:
    assert with_strings(value, iter(strings_in(value))) == value
    changed = with_strings(value, iter(s.upper() + "!" for s in strings_in(value)))
    assert strings_in(changed) == [s.upper() + "!" for s in strings_in(value)]
    assert _keys(changed) == _keys(value)  # keys are structure: left alone


def _keys(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [(k, _keys(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_keys(v) for v in value]
    return []


def _find_x(texts: Sequence[str]) -> list[list[Found]]:
    """A stand-in finder: every "x" is an e-mail address."""
    return [[Found(i, i + 1, "Email") for i, c in enumerate(t) if c == "x"] for t in texts]


class _XSanitizer:
    def sanitize_record(self, record: Any) -> tuple[Any, Counter[str]]:
        return sanitize_value(record, _find_x)


def test_lines_that_are_not_json_are_skipped_and_counted_never_a_crash() -> None:
    lines = [
        '{"a": "x y x"}\n',
        "not json\n",
        "\n",
        b'{"b": "\xff"}\n',  # not UTF-8
        '{"c": NaN}\n',  # Python reads it, JSON does not
        "[" * 100_000 + "\n",  # deeper than Python's stack
        '"x"\n',
        b'["\xc3\xa9x"]\n',
    ]
    out, report = sanitize_lines(lines, _XSanitizer())
    assert list(out) == ['{"a": "<EMAIL_1> y <EMAIL_1>"}', '"<EMAIL_1>"', '["é<EMAIL_1>"]']
    assert report.to_dict() == {"records": 3, "skipped": 4, "redacted": {"Email": 4}}


@given(st.dictionaries(st.sampled_from(CLASS_NAMES), st.integers(0, 10**12)), st.integers(0, 10**12))
def test_the_report_fits_a_termination_message(redacted: dict[str, int], n: int) -> None:
    from slm_operator.sanitize import SanitizeReport

    report = SanitizeReport(records=n, skipped=n, redacted=redacted)
    text = report.to_json()
    assert len(text.encode()) <= TERMINATION_LOG_LIMIT
    assert json.loads(text) == {"records": n, "skipped": n, "redacted": redacted}
    assert list(json.loads(text)["redacted"]) == [c for c in CLASS_NAMES if c in redacted]  # in API order
