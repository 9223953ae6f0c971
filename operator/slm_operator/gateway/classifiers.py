"""The routes' task classifiers (``spec.taskClassifier``), loaded from the ConfigMaps that hold them.

Both modes hand :meth:`ClassifierLoader.load` the ConfigMaps they have (the in-cluster gateway watches the
ConfigMaps the routes name, the standalone one reads them from its files) and put what it returns into the
routing table; the table's routes carry the loaded classifier, so a call costs one ``tag`` and no parsing. A
classifier is parsed once per (namespace, ConfigMap name, key, resourceVersion): a ConfigMap that did not
change is never parsed again. What it finds is logged once per change, never per call: loaded (how many tasks),
or why not, which the route's ``Accepted`` condition also says.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.routing.table import (
    TASK_CLASSIFIER_INVALID,
    TASK_CLASSIFIER_NOT_FOUND,
    ClassifierRef,
    LoadedClassifier,
    NamespacedName,
)

log = logging.getLogger("slm_operator.gateway")

#: the first characters of a parse error kept in the route's condition
ERROR_CHARS = 300


def _version(obj: Mapping[str, Any], text: str) -> str:
    """The ConfigMap's resourceVersion; a hash of the text when it has none (read from a file)."""
    meta = obj.get("metadata") or {}
    rv = meta.get("resourceVersion")
    return f"rv:{rv}" if rv else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        text = f"{where}: {first['msg']}" if where else str(first["msg"])
    else:
        text = str(exc)
    return text[:ERROR_CHARS]


def parse_classifier(ref: ClassifierRef, text: str) -> LoadedClassifier:
    """The classifier in ``text`` (the ConfigMap's value at the ref's key), or why it is not one."""
    ns, name, key = ref
    try:
        return LoadedClassifier(TaskClassifier.from_json(text))
    except (ValidationError, ValueError) as exc:
        return LoadedClassifier(
            None,
            TASK_CLASSIFIER_INVALID,
            f"task classifier: key '{key}' of ConfigMap {ns}/{name} is not a task classifier this gateway "
            f"reads ({_short(exc)}); publish it again with `slm-operator advise`; calls without `x-slm-task` "
            "have no task until then",
        )


class ClassifierLoader:
    """Parses the classifiers the routes name, each once per ConfigMap version, and logs what changed."""

    def __init__(self) -> None:
        self._parsed: dict[ClassifierRef, tuple[str, LoadedClassifier]] = {}  # ref -> (version, result)
        self._reported: dict[ClassifierRef, str] = {}  # ref -> the last state logged

    def load(
        self,
        refs: Iterable[ClassifierRef],
        configmaps: Mapping[NamespacedName, Mapping[str, Any]],
        unreadable: Mapping[NamespacedName, str] | None = None,
    ) -> dict[ClassifierRef, LoadedClassifier]:
        """The classifier of each ref from the ConfigMaps (namespace, name) -> object; a ref whose ConfigMap is
        absent is left out (the table says "not found") unless ``unreadable`` says why it could not be read."""
        unreadable = unreadable or {}
        out: dict[ClassifierRef, LoadedClassifier] = {}
        for ref in sorted(set(refs)):
            found = self._one(ref, configmaps.get(ref[:2]), unreadable.get(ref[:2]))
            if found is not None:
                out[ref] = found
        for ref in set(self._parsed) - set(out):
            del self._parsed[ref]
        self._report(refs, out)
        return out

    def _one(
        self, ref: ClassifierRef, obj: Mapping[str, Any] | None, unreadable: str | None
    ) -> LoadedClassifier | None:
        ns, name, key = ref
        if obj is None:
            if unreadable:
                return LoadedClassifier(None, TASK_CLASSIFIER_NOT_FOUND, f"task classifier: {unreadable}")
            return None
        text = (obj.get("data") or {}).get(key)
        if not isinstance(text, str):
            return LoadedClassifier(
                None,
                TASK_CLASSIFIER_NOT_FOUND,
                f"task classifier: ConfigMap {ns}/{name} has no key '{key}' (fix "
                "`spec.taskClassifier.configMapRef.key`); calls without `x-slm-task` have no task until then",
            )
        version = _version(obj, text)
        hit = self._parsed.get(ref)
        if hit is not None and hit[0] == version:
            return hit[1]
        loaded = parse_classifier(ref, text)
        self._parsed[ref] = (version, loaded)
        return loaded

    def _report(self, refs: Iterable[ClassifierRef], found: Mapping[ClassifierRef, LoadedClassifier]) -> None:
        """Log each classifier whose state changed since the last load: loaded (a new version) or why not."""
        wanted = set(refs)
        for ref in sorted(wanted):
            loaded = found.get(ref, LoadedClassifier(None, message=f"ConfigMap {ref[0]}/{ref[1]} not found"))
            tagger = loaded.tagger
            state = f"version {self._parsed[ref][0]}" if tagger is not None else loaded.message
            if self._reported.get(ref) == state:
                continue
            self._reported[ref] = state
            where = f"{ref[0]}/{ref[1]} key {ref[2]}"
            if isinstance(tagger, TaskClassifier):
                log.info("task classifier %s loaded: %d tasks (%s)", where, len(tagger.tasks), state)
            else:
                log.warning(
                    "task classifier %s not loaded; calls without x-slm-task have no task: %s", where, state
                )
        for ref in set(self._reported) - wanted:
            del self._reported[ref]
