"""Presidio set-up: one recogniser per PII class, the analyzer that runs them, the anonymizer that writes pseudonyms.

This is the one module that imports Presidio (and through it spaCy). ``engine.py`` imports it only when a
``Sanitizer`` is built, so the operator and the CLI's other commands never load either.

Presidio's own recognisers are used where they exist (e-mail, phone numbers through libphonenumber, credit cards
with the Luhn check, IBAN with its checksum, US SSN, IP and MAC addresses, the spaCy NER results), with patterns
of our own where Presidio has none (API keys, street addresses, dates of birth) or where its own miss formats
users write (NANP phone numbers the numbering plan rejects, such as ``(555) 123-4567``; URLs without a listed
top-level domain). No recogniser reads anything from the network: Presidio's e-mail check would fetch the
public-suffix list, so ours checks the top-level domain's shape instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import regex
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import (
    NerModelConfiguration,
    NlpArtifacts,
    NlpEngine,
    NlpEngineProvider,
    NoOpNlpEngine,
    SpacyNlpEngine,
)
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    MacAddressRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig
from presidio_anonymizer.entities import RecognizerResult as AnonymizerSpan

from slm_operator.sanitize import patterns
from slm_operator.sanitize.classes import BY_ENTITY, BY_NAME
from slm_operator.sanitize.memo import FindingsMemo
from slm_operator.sanitize.spans import WINDOW, Found, windows

LANGUAGE = "en"
#: A finding below this score is dropped. Every recogniser here scores its matches at or above it without
#: help from context words, so a spaCy engine and the no-op engine (pattern classes only) find the same spans.
SCORE_THRESHOLD = 0.5
#: Case-sensitive, unlike Presidio's default: street and month names are recognised by their capitals.
CASE_SENSITIVE = regex.DOTALL | regex.MULTILINE

# Presidio logs every skipped recogniser and every loaded model at INFO/WARNING; a sanitiser run is quiet.
logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail pattern; the domain must end in a top-level domain of two or more letters.

    Presidio validates with ``tldextract``, which downloads the public-suffix list on first use: that would
    hang or fail in a pod without network, and reject reserved names such as ``corp.example`` that are still
    someone's address.
    """

    def validate_result(self, pattern_text: str) -> bool:
        return patterns.EMAIL_TLD.search(pattern_text) is not None


class PhoneNumberRecognizer(PhoneRecognizer):
    """libphonenumber's matcher over the regions whose formats the sanitiser reads; no date, no short code."""

    SCORE = 0.6  # above SCORE_THRESHOLD: a number libphonenumber validates needs no context word

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if sum(c.isdigit() for c in text) < patterns.PHONE_MIN_DIGITS:
            return []  # most strings: libphonenumber's 15 passes over them would find nothing
        found = super().analyze(text, entities, nlp_artifacts)  # type: ignore[arg-type]  # it accepts None
        return [r for r in found if patterns.phone_shaped(text[r.start : r.end])]


class ContextPhoneRecognizer(PatternRecognizer):
    """Phone numbers libphonenumber rejects: NANP formats (fictional 555 numbers too) and digits after a phone word."""

    def invalidate_result(self, pattern_text: str) -> bool:
        return not patterns.phone_shaped(pattern_text)


class DateOfBirthRecognizer(PatternRecognizer):
    """A date preceded by a birth word (born, DOB, geboren, né le, nacido...): other dates stay."""


def _pattern_recognizer(
    cls: type[PatternRecognizer], entity: str, named: Sequence[tuple[str, str, float]]
) -> PatternRecognizer:
    return cls(
        supported_entity=entity,
        patterns=[Pattern(name, rx, score) for name, rx, score in named],
        global_regex_flags=CASE_SENSITIVE,
    )


def _recognisers(entities: set[str]) -> list[EntityRecognizer]:
    """Presidio recognisers for the wanted entity types (each only when its class is asked for)."""
    made: dict[str, list[EntityRecognizer]] = {
        "EMAIL_ADDRESS": [OfflineEmailRecognizer()],
        "PHONE_NUMBER": [
            PhoneNumberRecognizer(supported_regions=patterns.PHONE_REGIONS, leniency=1),
            _pattern_recognizer(ContextPhoneRecognizer, "PHONE_NUMBER", patterns.PHONE),
        ],
        "CREDIT_CARD": [CreditCardRecognizer(patterns=[Pattern("card", patterns.CREDIT_CARD, 0.3)])],
        "API_KEY": [_pattern_recognizer(PatternRecognizer, "API_KEY", patterns.API_KEYS)],
        "IP_ADDRESS": [IpRecognizer()],
        "IBAN_CODE": [IbanRecognizer()],
        "US_SSN": [UsSsnRecognizer()],
        "URL": [UrlRecognizer(patterns=[Pattern(n, rx, s) for n, rx, s in patterns.URLS])],
        "PERSON": [_pattern_recognizer(PatternRecognizer, "PERSON", patterns.PERSON_CUES)],
        "STREET_ADDRESS": [
            _pattern_recognizer(PatternRecognizer, "STREET_ADDRESS", patterns.STREET_ADDRESSES)
        ],
        "DATE_OF_BIRTH": [
            _pattern_recognizer(DateOfBirthRecognizer, "DATE_OF_BIRTH", patterns.DATES_OF_BIRTH)
        ],
        "MAC_ADDRESS": [MacAddressRecognizer()],
    }
    found = [r for entity, rs in made.items() if entity in entities for r in rs]
    ner = sorted(entities & {"PERSON", "LOCATION", "ORGANIZATION"})
    return [*found, SpacyRecognizer(supported_entities=ner)] if ner else found


class NerOnlySpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine, loading only what finds entities, and never downloading.

    The sanitiser reads entities (and its own patterns), not parses or lemmas: leaving spaCy's tagger, parser
    and lemmatizer out makes a record about twice as fast. Presidio's own ``load`` would download a missing
    model; ``engine.py`` refuses a missing one before this runs, and this ``load`` never downloads.
    """

    def load(self) -> None:
        self.nlp = {m["lang_code"]: _load_ner(m["model_name"]) for m in self.models}  # type: ignore[assignment]


class NerModelUnusable(RuntimeError):
    """spaCy found the named model but cannot load it (a broken folder, a model for another spaCy version)."""


def _load_ner(model: str) -> spacy.language.Language:
    try:
        nlp = spacy.load(model, exclude=_NOT_NER)
    except (OSError, ValueError, ImportError) as exc:  # spaCy's E050, E053, E054...
        raise NerModelUnusable(f"the NER model {model!r} cannot be loaded: {exc}") from None
    # the small English pipeline's NER has its own token vectors: the shared ones then feed nobody
    if "tok2vec" in nlp.pipe_names and not getattr(nlp.get_pipe("tok2vec"), "listening_components", None):
        nlp.remove_pipe("tok2vec")
    return nlp


#: spaCy pipeline components the sanitiser does not need (absent ones are ignored).
_NOT_NER = ["tagger", "parser", "senter", "attribute_ruler", "lemmatizer", "morphologizer"]


def _nlp_engine(ner_model: str | None) -> NlpEngine:
    """spaCy with the named model (NER for Person/Location/Organization), or no NLP at all for pattern classes.

    The configuration is explicit: Presidio's default would load ``en_core_web_lg`` and download it when it is
    missing. ``engine.py`` checks the model is installed first, so nothing is downloaded here.
    """
    if ner_model is None:
        config: dict[str, object] = {
            "nlp_engine_name": "no_op",
            "models": [{"lang_code": LANGUAGE, "model_name": "none"}],  # no model is loaded
        }
    else:
        config = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": LANGUAGE, "model_name": ner_model}],
            "ner_model_configuration": NerModelConfiguration(
                model_to_presidio_entity_mapping=patterns.SPACY_LABELS,
                labels_to_ignore=[],
                low_score_entity_names=[],
            ).model_dump(),
        }
    return NlpEngineProvider(
        nlp_engines=(NerOnlySpacyNlpEngine, NoOpNlpEngine), nlp_configuration=config
    ).create_engine()


class PresidioFinder:
    """Finds the spans of the wanted classes in a batch of strings (one record's), with Presidio; a string seen
    recently is looked up in ``memo`` instead of being analysed again (``memo.py``)."""

    def __init__(self, classes: Iterable[str], ner_model: str | None) -> None:
        self.entities = sorted(BY_NAME[c].entity for c in classes)
        self.window = WINDOW
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        for recogniser in _recognisers(set(self.entities)):
            registry.add_recognizer(recogniser)
        self.nlp = _nlp_engine(ner_model)
        self.analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=self.nlp,
            supported_languages=[LANGUAGE],
            default_score_threshold=SCORE_THRESHOLD,
        )
        self.memo = FindingsMemo()

    def find(self, texts: Sequence[str]) -> list[list[Found]]:
        """The findings in each text: those seen recently from the memo, the others analysed (``analyse``)."""
        if not self.entities:
            return [[] for _ in texts]
        return self.memo.find(texts, self.analyse, self.window)

    def analyse(self, texts: Sequence[str]) -> list[list[Found]]:
        """The findings in each text; the NLP pipeline runs over the whole batch at once.

        A long text is read in overlapping windows (``windows``): spaCy refuses a text over a million
        characters and needs about 1 GB per 100,000 to run NER on one. Findings of two windows merge later.
        """
        pieces = [
            (i, offset, piece) for i, t in enumerate(texts) for offset, piece in windows(t, self.window)
        ]
        out: list[list[Found]] = [[] for _ in texts]
        batch = self.nlp.process_batch([p for _, _, p in pieces], LANGUAGE, batch_size=32)
        for (i, offset, _), (piece, artifacts) in zip(pieces, batch, strict=True):
            results = self.analyzer.analyze(
                text=piece, language=LANGUAGE, entities=self.entities, nlp_artifacts=artifacts
            )
            out[i] += [
                Found(offset + r.start, offset + r.end, BY_ENTITY[r.entity_type].name, r.score)
                for r in results
            ]
        return out


class PresidioRedactor:
    """Writes the pseudonyms with Presidio's anonymizer (a ``custom`` operator per class looks each value up).

    The spans come merged (``spans.merge``), so the anonymizer's own conflict handling has nothing to do; its
    merging of same-class neighbours separated by spaces is off ("Jane Bob" are two persons).
    ``spans.redact`` is the same operation in plain Python; ``tests/test_sanitize.py`` checks they agree.
    """

    def __init__(self) -> None:
        self.engine = AnonymizerEngine()  # type: ignore[no-untyped-call]

    def redact(self, text: str, spans: Sequence[Found], names: Mapping[tuple[str, str], str]) -> str:
        if not spans:
            return text

        def operator(cls: str) -> OperatorConfig:
            return OperatorConfig("custom", {"lambda": lambda value: names[(cls, value)]})

        return self.engine.anonymize(
            text=text,
            analyzer_results=[AnonymizerSpan(BY_NAME[s.cls].entity, s.start, s.end, s.score) for s in spans],
            operators={BY_NAME[c].entity: operator(c) for c in {s.cls for s in spans}},
            merge_entities_with_spaces=False,
        ).text
