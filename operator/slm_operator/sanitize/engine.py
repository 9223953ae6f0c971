"""``Sanitizer``: build once (it loads the NER model), then call per record or per text."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm_operator.sanitize.classes import DEFAULT_NER_MODEL, NER_CLASSES, parse_classes
from slm_operator.sanitize.records import sanitize_value
from slm_operator.sanitize.spans import Found

if TYPE_CHECKING:
    from slm_operator.sanitize.recognizers import PresidioFinder, PresidioRedactor


class SanitizerUnavailable(RuntimeError):
    """The sanitiser cannot run here: Presidio is not installed, or the NER model is missing or unusable."""


class NerModelMissing(SanitizerUnavailable):
    """The named spaCy model is not installed; the message says how to install it (nothing is downloaded)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"the NER model {model!r} is not installed, and the sanitiser never downloads one at run time. "
            f"Install it into this environment (`pip install 'slm-operator[sanitize]'` brings "
            f"{DEFAULT_NER_MODEL}; Explosion's en_core_web_lg: `python -m spacy download en_core_web_lg` when "
            f"building an image), or name an installed one or a model folder with --ner-model "
            f"(or $SLM_NER_MODEL)"
        )
        self.model = model


def ner_model_installed(name: str) -> bool:
    """Whether spaCy can load ``name`` without a download: an installed model package or a model folder."""
    if Path(name).is_dir():
        return True
    return name.isidentifier() and importlib.util.find_spec(name) is not None


class Sanitizer:
    """Redacts the given PII classes with consistent pseudonyms per record.

    Building one loads Presidio and, when a class needs it (Person, Location, Organization), the spaCy model
    ``ner_model`` (about a second for the small model, see docs/sanitization.md): build it once and reuse it.
    Pattern classes alone load no spaCy model at all.
    """

    def __init__(self, classes: Iterable[str], *, ner_model: str | None = DEFAULT_NER_MODEL) -> None:
        self.classes = parse_classes(classes)
        ner = sorted(NER_CLASSES.intersection(self.classes))
        if ner and ner_model is None:
            raise ValueError(f"{', '.join(ner)} need an NER model; name one or leave these classes out")
        if ner and ner_model is not None and not ner_model_installed(ner_model):
            raise NerModelMissing(ner_model)
        self.ner_model = ner_model if ner else None
        # Lazy import, the documented exception to "imports at the top": Presidio brings spaCy (a second to
        # import, hundreds of MB with a model). Only a process that sanitises loads it; the operator, the CLI's
        # other commands and readers of this package's class list do not.
        try:
            from slm_operator.sanitize.recognizers import NerModelUnusable, PresidioFinder, PresidioRedactor
        except ImportError as exc:
            raise SanitizerUnavailable(
                f"the sanitiser needs Presidio and spaCy ({exc.name} is missing): install the sanitize extra, "
                "`pip install 'slm-operator[sanitize]'` (the trainer image has it, the operator image does not)"
            ) from None
        try:
            self._finder: PresidioFinder = PresidioFinder(self.classes, self.ner_model)
        except NerModelUnusable as exc:
            raise SanitizerUnavailable(str(exc)) from None
        self._redactor: PresidioRedactor = PresidioRedactor()

    def find(self, texts: Sequence[str]) -> list[list[Found]]:
        """The raw findings per text (overlaps not yet merged): for evaluation and debugging."""
        return self._finder.find(texts)

    def sanitize_record(self, record: Any) -> tuple[Any, Counter[str]]:
        """The JSON value with every string redacted (one pseudonym per value across the record), and counts."""
        return sanitize_value(record, self._finder.find, self._redactor.redact)

    def sanitize_text(self, text: str) -> tuple[str, Counter[str]]:
        clean, counts = sanitize_value(text, self._finder.find, self._redactor.redact)
        return str(clean), counts
