"""From findings to redacted text: overlaps merged, consistent pseudonyms, placeholders written. Pure.

The recognisers may report overlapping findings (an e-mail's domain is also a URL; spaCy tags "Baker" inside
"221B Baker Street" as a person). Overlapping findings become one span covering all of them, so nothing a
recogniser found stays readable; the finding that covers most text names the span.

Within one record the same value always gets the same placeholder and different values different ones:
"Jane Doe wrote to Bob; Jane signed" becomes "<PERSON_1> wrote to <PERSON_2>; <PERSON_1> signed", so a task's
pattern (who answered whom, which address the tool was called with) survives the redaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from slm_operator.sanitize.classes import BY_TAG, PATTERN_CLASSES, SPECIFICITY, placeholder

_RANK = {name: i for i, name in enumerate(SPECIFICITY)}
#: A placeholder this sanitiser writes; text that already holds one (a record sanitised twice) keeps it.
PLACEHOLDER = re.compile(r"<(" + "|".join(sorted(BY_TAG, key=len, reverse=True)) + r")_(\d+)>")
#: Classes whose values are compared by their letters and digits only ("+1 555-0100" = "+1 (555) 0100").
_COMPACT = frozenset({"PhoneNumber", "CreditCard", "IBAN", "USSocialSecurityNumber", "MACAddress"})
_WORD = re.compile(r"\w+")
_EDGE = " \t\n,;:.()[]{}<>\"'!?-/"
_NAME_WORD = r"[A-ZÀ-ÖØ-Þ][a-zß-ÿ'\u2019]+(?:-[A-ZÀ-ÖØ-Þ][a-zß-ÿ]+)?"
_WORD_BEFORE = re.compile(rf"(?<![\w-]){_NAME_WORD} $")
_WORD_AFTER = re.compile(rf" {_NAME_WORD}(?![\w-])")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*|\(\s*)$")
_PARTICLES = re.compile(r"\s+(?:(?:van|von|de|der|den|del|della|di|da|du|dos|das|le|la|ten|ter|zu)\s+)+")


@dataclass(frozen=True)
class Found:
    """A finding: ``text[start:end]`` is a value of PII class ``cls`` (an API name), with the recogniser's score."""

    start: int
    end: int
    cls: str
    score: float = 1.0


#: How much of one string the recognisers read at once, and how far two windows overlap.
WINDOW = 20_000
OVERLAP = 1_000


def windows(text: str, size: int = WINDOW, overlap: int = OVERLAP) -> list[tuple[int, str]]:
    """``(offset, piece)`` covering ``text``: one piece when it is short, else pieces of at most ``size``
    characters, each starting at most ``overlap`` characters before the previous one ends and at least
    ``overlap - overlap // 10`` before it (at a space when there is one there). A value of up to that many
    characters is therefore wholly inside one piece."""
    if len(text) <= size:
        return [(0, text)]
    out = []
    start = 0
    seek = overlap // 10
    while True:
        end = min(len(text), start + size)
        if end < len(text):  # end at a space in the last quarter when there is one, so no word is cut
            cut = text.rfind(" ", start + size * 3 // 4, end)
            end = cut if cut > start else end
        out.append((start, text[start:end]))
        if end >= len(text):
            return out
        start = max(start + 1, end - overlap)
        space = text.find(" ", start, start + seek)
        start = space + 1 if space != -1 else start


def merge(found: Iterable[Found], *, score_first: bool = False) -> list[Found]:
    """Non-overlapping spans, in text order, covering every finding; each is named by its best finding.

    The best is the longest, then the more specific class (``classes.SPECIFICITY``), then the higher score; with
    ``score_first`` the highest score comes first (for the NER classes: a name after a title, scored 0.9, is a
    person even where spaCy, at 0.85, calls "Herr Lukas Wagner" an organisation). Findings that only touch (one
    ends where the next starts) stay apart.
    """
    clusters: list[list[Found]] = []
    end = -1
    for f in sorted((f for f in found if f.end > f.start), key=lambda f: (f.start, -f.end)):
        if clusters and f.start < end:
            clusters[-1].append(f)
            end = max(end, f.end)
        else:
            clusters.append([f])
            end = f.end

    def rank(f: Found) -> tuple[float, ...]:
        by_length = (f.start - f.end, _RANK[f.cls], -f.score)
        return (-f.score, *by_length) if score_first else by_length

    merged = []
    for cluster in clusters:
        best = min(cluster, key=rank)
        merged.append(Found(cluster[0].start, max(f.end for f in cluster), best.cls, best.score))
    return merged


def _complete_names(text: str, spans: list[Found]) -> list[Found]:
    """Person spans grow over the capitalised words right next to them ("Alejandro" of "of Alejandro
    Fernández" when the model found only "Fernández"), but not over a sentence's first word."""
    out = []
    for s in spans:
        start, end = s.start, s.end
        if s.cls == "Person":
            while (m := _WORD_BEFORE.search(text, 0, start)) and not _SENTENCE_START.search(
                text, 0, m.start()
            ):
                start = m.start()
            while m := _WORD_AFTER.match(text, end):
                end = m.end()
        out.append(Found(start, end, s.cls, s.score))
    return out


def _join_particles(text: str, spans: list[Found]) -> list[Found]:
    """Two person spans with only name particles between them are one name ("Eva van" + "Berg")."""
    out: list[Found] = []
    for s in spans:
        prev = out[-1] if out else None
        if prev and prev.cls == s.cls == "Person" and _PARTICLES.fullmatch(text[prev.end : s.start]):
            out[-1] = Found(prev.start, s.end, s.cls, max(prev.score, s.score))
        else:
            out.append(s)
    return out


def _trimmed(text: str, f: Found, start: int, end: int) -> Found | None:
    """The part ``start:end`` of finding ``f`` without surrounding spaces and punctuation, when it still reads
    as a name (it starts with a capital letter); None otherwise."""
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip(_EDGE))
    start, end = start + lead, start + len(piece.rstrip(_EDGE))
    if end <= start or not text[start].isupper():
        return None
    return Found(start, end, f.cls, f.score)


def _outside(text: str, names: Iterable[Found], patterns: Sequence[Found]) -> list[Found]:
    """The parts of the name findings that no pattern finding covers and that still read as names."""
    out = []
    for f in names:
        cuts = sorted((p.start, p.end) for p in patterns if p.start < f.end and f.start < p.end)
        pos = f.start
        for s, e in [*cuts, (f.end, f.end)]:
            piece = _trimmed(text, f, pos, min(s, f.end)) if s > pos else None
            out += [piece] if piece else []
            pos = max(pos, e)
    return out


def resolve(text: str, found: Iterable[Found]) -> list[Found]:
    """The spans to redact in ``text``: pattern findings as they are; NER findings without what a pattern found.

    The NER model, the small one most of all, often runs a name over the word before a number ("joindre au
    +41 78...", "IBAN DE89..." as one organisation). The pattern's class is the right one for its text; what the
    NER finding holds outside it stays only when it still reads as a name ("Jane Doe" of "Jane Doe +1 555...").
    Then overlapping findings merge (``merge``; among names the higher score names the span).
    """
    found = outside_placeholders(text, found)
    patterns = merge(f for f in found if f.cls in PATTERN_CLASSES)
    names = _outside(text, [f for f in found if f.cls not in PATTERN_CLASSES], patterns)
    names = _outside(text, _complete_names(text, merge(names, score_first=True)), patterns)
    names = _join_particles(text, merge(names, score_first=True))
    return sorted([*patterns, *names], key=lambda f: f.start)


def outside_placeholders(text: str, found: Iterable[Found]) -> list[Found]:
    """The findings that do not touch a placeholder already in ``text`` (sanitising twice changes nothing)."""
    taken = [m.span() for m in PLACEHOLDER.finditer(text)]
    return [f for f in found if not any(f.start < e and s < f.end for s, e in taken)]


def numbers_in_use(texts: Iterable[str]) -> dict[str, int]:
    """The highest placeholder number per class already in the texts; new pseudonyms count on from there."""
    used: dict[str, int] = {}
    for text in texts:
        for m in PLACEHOLDER.finditer(text):
            cls = BY_TAG[m[1]].name
            used[cls] = max(used.get(cls, 0), int(m[2]))
    return used


def identity(cls: str, value: str) -> str:
    """What makes two values of a class the same: case and spacing never matter; for numbers, only the digits."""
    if cls in _COMPACT:
        return "".join(c for c in value if c.isalnum()).upper()
    if cls == "Person":
        return " ".join(_WORD.findall(value.casefold()))
    return " ".join(value.casefold().split())


def _person_groups(keys: Sequence[str]) -> dict[str, str]:
    """Each person key -> the key of the full name it belongs to.

    "Jane" and "Doe" join "Jane Doe" when it is the only longer name holding all their words; a word two full
    names share ("Doe" with "Jane Doe" and "John Doe") stays its own person.
    """
    words = {k: frozenset(k.split()) for k in keys}
    roots = [k for k in words if not any(words[k] < words[o] for o in words)]
    group = {}
    for k in words:
        holders = [r for r in roots if words[k] < words[r]]
        group[k] = holders[0] if len(holders) == 1 else k
    return group


def pseudonyms(
    mentions: Sequence[tuple[str, str]], used: Mapping[str, int] | None = None
) -> dict[tuple[str, str], str]:
    """``(class, value) -> placeholder`` for every mention, numbered per class in order of first appearance.

    ``mentions`` are ``(class, value)`` in the order they appear in the record; ``used`` the numbers already
    taken per class (``numbers_in_use``).
    """
    keys = {m: identity(*m) for m in mentions}
    person = _person_groups(list(dict.fromkeys(k for (cls, _), k in keys.items() if cls == "Person")))
    counters = dict(used or {})
    by_group: dict[tuple[str, str], str] = {}
    out: dict[tuple[str, str], str] = {}
    for cls, value in mentions:
        key = keys[(cls, value)]
        group = (cls, person[key] if cls == "Person" else key)
        if group not in by_group:
            counters[cls] = counters.get(cls, 0) + 1
            by_group[group] = placeholder(cls, counters[cls])
        out[(cls, value)] = by_group[group]
    return out


def redact(text: str, spans: Sequence[Found], names: Mapping[tuple[str, str], str]) -> str:
    """``text`` with each (non-overlapping, ordered) span replaced by its pseudonym."""
    parts = []
    pos = 0
    for s in spans:
        parts += [text[pos : s.start], names[(s.cls, text[s.start : s.end])]]
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts)
