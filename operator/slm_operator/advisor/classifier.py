"""The task classifier the gateway tags calls with: a request's nearest task centroid in TF-IDF term space.

``find_tasks`` (``advisor.cluster``) finds the tasks from requests *and* responses; at request time only the
request exists, so the classifier is fitted on request-only documents (``features.document(request, None)``) of
the records the clustering assigned, and ``tag`` works from the request alone. A request is weighted the way the
clustering weights terms (sublinear tf x idf x part weight, L2-normalised) and compared by cosine with one
centroid per task; farther than that task's threshold (a high quantile of its own members' distances, plus a
margin) it is no task (``None``): open-ended chat and calls of tasks too small to be found stay untagged.

Why term space and not the clustering's SVD space: the centroids of a dozen tasks need only the terms that
weigh in them (a few hundred each), so the classifier is small enough for a ConfigMap (vocabulary, idf and
centroids as base64 float16), and tagging needs no projection, only numpy and the standard library: the gateway
loads it without scikit-learn. A term outside the vocabulary still counts in the request's norm (with the idf
of a term seen once), so a request made mostly of words no task uses is far from every task.

Fitting is pure numpy too (``fit_classifier``): it sees documents and assignments, never records.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from slm_operator.advisor.features import WEIGHTS, document, prefix_of, sublinear_tf

CLASSIFIER_VERSION = 1
TERMS_PER_TASK = 256  # the heaviest terms of each task's centroid form the vocabulary ...
MAX_CELLS = 150_000  # ... fewer with many tasks: the centroids (tasks x terms float16) stay under ~400 KiB
THRESHOLD_QUANTILE = 0.99  # of a task's members' distances ...
THRESHOLD_MARGIN = 0.05  # ... plus this: a new call a little farther out is still the task's
MIN_THRESHOLD = 0.1  # a task of near-identical calls still admits calls that vary a little
MAX_THRESHOLD = 0.95  # beyond this a request shares next to nothing with the task
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


def _pack(values: FloatArray) -> str:
    return base64.b64encode(values.astype("<f2").tobytes()).decode("ascii")


def _unpack(text: str, count: int) -> FloatArray:
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f2")
    if raw.size != count:
        raise ValueError(f"expected {count} float16 values, got {raw.size}")
    return raw.astype(np.float32)


def _rounded(values: FloatArray) -> FloatArray:
    """``values`` as the serialised form keeps them (float16), so fitting sees what tagging will."""
    return values.astype(np.float16).astype(np.float32)


_EMPTY: FloatArray = np.zeros(0, dtype=np.float32)


class _Decoded:
    """A classifier's vocabulary index, idf vector and terms x tasks centroids, decoded from its fields. Derived
    from the fields, so it takes no part in comparing two classifiers."""

    __slots__ = ("centroids", "idf", "index")

    def __init__(self, index: dict[str, int], idf: FloatArray, centroids: FloatArray) -> None:
        self.index = index
        self.idf = idf
        self.centroids = centroids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Decoded)

    __hash__ = None  # type: ignore[assignment]


class TaskClassifier(BaseModel):
    """Nearest task centroid, with a distance threshold per task. JSON-serialisable and compact: the
    vocabulary is a list of terms; idf (x part weight) and the task x term centroid matrix are base64 float16."""

    model_config = ConfigDict(frozen=True)

    version: int = CLASSIFIER_VERSION
    tasks: list[str] = Field(default_factory=list, description="task ids, in the centroids' row order")
    thresholds: list[float] = Field(default_factory=list, description="max cosine distance of each task")
    medians: list[float] = Field(
        default_factory=list,
        description="median distance of each task's own calls when fitted: the baseline of drift (empty in a "
        "classifier fitted before it was kept)",
    )
    terms: list[str] = Field(default_factory=list, description="the vocabulary, in the columns' order")
    idf: str = Field(default="", description="base64 float16 per term: idf x the weight of its part")
    unknown_idf: float = Field(default=1.0, gt=0, description="idf of a term outside the vocabulary")
    part_weights: dict[str, float] = Field(
        default_factory=lambda: dict(WEIGHTS),
        description="the weight of each part (features.WEIGHTS) when fitted",
    )
    centroids: str = Field(
        default="", description="base64 float16, tasks x terms row-major, rows unit length"
    )

    _decoded: _Decoded = PrivateAttr(default_factory=lambda: _Decoded({}, _EMPTY, _EMPTY))

    @model_validator(mode="after")
    def _decode(self) -> TaskClassifier:
        """Checks the version and the sizes, and decodes the arrays once, for ``tag``."""
        if self.version != CLASSIFIER_VERSION:
            raise ValueError(
                f"classifier version {self.version} is not supported (this one reads {CLASSIFIER_VERSION})"
            )
        if len(self.thresholds) != len(self.tasks):
            raise ValueError("one threshold per task")
        if self.medians and len(self.medians) != len(self.tasks):
            raise ValueError("one median per task, or none")
        index = {term: i for i, term in enumerate(self.terms)}
        if len(index) != len(self.terms):
            raise ValueError("terms must be unique")
        idf = _unpack(self.idf, len(self.terms)) if self.terms else _EMPTY
        size = len(self.terms) * len(self.tasks)
        flat = _unpack(self.centroids, size) if size else _EMPTY
        centroids = np.ascontiguousarray(flat.reshape(len(self.tasks), len(self.terms)).T)
        self._decoded = _Decoded(index, idf, centroids)
        return self

    def tag(self, request: Mapping[str, Any]) -> tuple[str | None, float]:
        """The task of ``request`` (None: no task is near enough) and its cosine distance to the nearest task
        (1.0 when the request has no term at all or there are no tasks)."""
        return self.tag_document(document(request, None))

    def tag_document(self, doc: str) -> tuple[str | None, float]:
        """``tag`` of a request-only document (``features.document(request, None)``)."""
        similarities = self._similarities(doc)
        if similarities is None:
            return None, 1.0
        best = int(similarities.argmax())
        distance = max(0.0, 1.0 - float(similarities[best]))
        return (self.tasks[best] if distance <= self.thresholds[best] else None), distance

    def distances(self, doc: str) -> FloatArray:
        """The cosine distance of a request-only document to every task, in ``tasks`` order (1.0 each when the
        document has no known term)."""
        similarities = self._similarities(doc)
        if similarities is None:
            return np.ones(len(self.tasks), dtype=np.float32)
        return np.asarray(np.maximum(0.0, 1.0 - similarities), dtype=np.float32)

    def _similarities(self, doc: str) -> FloatArray | None:
        """Cosine similarity of the document to each task's centroid; None with no task or no known term."""
        if not self.tasks:
            return None
        index, idf, centroids = self._decoded.index, self._decoded.idf, self._decoded.centroids
        columns: list[int] = []
        tfs: list[float] = []
        unknown = 0.0
        for term, count in Counter(doc.split()).items():
            column = index.get(term)
            if column is None:
                part = self.part_weights.get(prefix_of(term), 1.0)
                unknown += (sublinear_tf(count) * self.unknown_idf * part) ** 2
            else:
                columns.append(column)
                tfs.append(sublinear_tf(count))
        if not columns:
            return None
        values = np.asarray(tfs, dtype=np.float32) * idf[columns]
        norm = math.sqrt(float(values @ values) + unknown)
        return np.asarray((values @ centroids[columns]) / norm, dtype=np.float32)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskClassifier:
        return cls.model_validate_json(text)


class _Bag:
    """Documents as a sparse matrix in coordinate form: row, term id and sublinear tf of each distinct term."""

    def __init__(self, docs: Sequence[str]) -> None:
        ids: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[float] = []
        for row, doc in enumerate(docs):
            for term, count in Counter(doc.split()).items():
                rows.append(row)
                cols.append(ids.setdefault(term, len(ids)))
                tfs.append(sublinear_tf(count))
        self.n = len(docs)
        self.terms = list(ids)
        self.rows: IntArray = np.asarray(rows, dtype=np.int64)
        self.cols: IntArray = np.asarray(cols, dtype=np.int64)
        self.tfs: FloatArray = np.asarray(tfs, dtype=np.float32)
        self.df: IntArray = np.bincount(self.cols, minlength=len(ids)).astype(np.int64)
        self.part_weight: FloatArray = np.asarray([WEIGHTS.get(prefix_of(t), 1.0) for t in ids], np.float32)

    def unit_values(self, weights: FloatArray) -> FloatArray:
        """Each entry's tf x weight, divided by its row's L2 norm over all its terms."""
        values = self.tfs * weights[self.cols]
        norms = np.sqrt(np.bincount(self.rows, weights=values * values, minlength=self.n)).astype(np.float32)
        return np.asarray(values / np.maximum(norms, 1e-12)[self.rows], dtype=np.float32)


def _centroids(bag: _Bag, values: FloatArray, keep: FloatArray, task_of_row: IntArray, k: int) -> FloatArray:
    """Unit-length mean of each task's rows over the kept terms (k x terms; a task with no row stays 0)."""
    mask = (task_of_row[bag.rows] >= 0) & (keep[bag.cols] > 0)
    flat = task_of_row[bag.rows[mask]] * len(bag.terms) + bag.cols[mask]
    sums = np.bincount(flat, weights=values[mask], minlength=k * len(bag.terms)).reshape(k, len(bag.terms))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.asarray(sums / np.maximum(norms, 1e-12), dtype=np.float32)


def _similarities(bag: _Bag, values: FloatArray, centroids: FloatArray) -> FloatArray:
    """rows x tasks cosine similarities (``values`` already unit per row; centroids over the bag's terms)."""
    k = centroids.shape[0]
    out = np.zeros((bag.n, k), dtype=np.float32)
    for task in range(k):
        out[:, task] = np.bincount(bag.rows, weights=values * centroids[task, bag.cols], minlength=bag.n)
    return out


def _thresholds(distances: FloatArray, nearest: IntArray, task_of_row: IntArray, k: int) -> list[float]:
    thresholds = []
    for task in range(k):
        own = distances[(task_of_row == task) & (nearest == task)]
        q = float(np.quantile(own, THRESHOLD_QUANTILE)) if own.size else 0.0
        thresholds.append(round(min(MAX_THRESHOLD, max(MIN_THRESHOLD, q + THRESHOLD_MARGIN)), 4))
    return thresholds


def held_out_medians(
    docs: Sequence[str], assignments: Sequence[str | None], tasks: Sequence[str], **fit: Any
) -> list[float]:
    """Per task, the median distance of its documents to its centroid in a classifier fitted without them
    (two folds: even and odd positions): what calls of the task the classifier has never seen will measure, the
    baseline of drift (``advisor.loop``). Distances of the documents it was fitted on would be lower: the
    vocabulary is chosen from them."""
    found: dict[str, list[float]] = {t: [] for t in tasks}
    for fold in (0, 1):
        train = [i for i in range(len(docs)) if i % 2 != fold]
        model = fit_classifier(
            [docs[i] for i in train], [assignments[i] for i in train], baseline=False, **fit
        )
        column = {t: j for j, t in enumerate(model.tasks)}
        for i in range(fold, len(docs), 2):
            task = assignments[i]
            if task is not None and task in column:
                found[task].append(float(model.distances(docs[i])[column[task]]))
    return [round(float(np.median(found[t])), 4) if found[t] else 1.0 for t in tasks]


def fit_classifier(
    docs: Sequence[str],
    assignments: Sequence[str | None],
    *,
    terms_per_task: int = TERMS_PER_TASK,
    min_df: int = 2,
    baseline: bool = True,
) -> TaskClassifier:
    """The classifier of the tasks in ``assignments`` (one task id or None per document) from request-only
    ``docs``: each task's centroid over the vocabulary of the tasks' heaviest terms, and its threshold (a high
    quantile of the distances of its own documents, plus a margin), and with ``baseline`` each task's
    ``held_out_medians``. Deterministic: the same documents and assignments in the same order give the same
    classifier."""
    if len(docs) != len(assignments):
        raise ValueError("one assignment per document")
    tasks = sorted({a for a in assignments if a is not None})
    if not tasks:
        return TaskClassifier()
    position = {task: i for i, task in enumerate(tasks)}
    task_of_row = np.asarray([-1 if a is None else position[a] for a in assignments], dtype=np.int64)
    bag = _Bag(docs)
    n, k = bag.n, len(tasks)
    idf = (np.log((1 + n) / (1 + bag.df)) + 1).astype(np.float32) * bag.part_weight
    unknown_idf = round(math.log((1 + n) / 2) + 1, 4)
    unknown = (unknown_idf * bag.part_weight).astype(np.float32)
    # Pass 1: centroids over every term seen min_df times; each task's heaviest terms form the vocabulary.
    frequent = (bag.df >= min_df).astype(np.float32)
    rough = _centroids(bag, bag.unit_values(np.where(frequent > 0, idf, unknown)), frequent, task_of_row, k)
    keep = np.zeros(len(bag.terms), dtype=np.float32)
    per_task = max(16, min(terms_per_task, MAX_CELLS // (k * k)))
    for row in rough:
        heaviest = np.argsort(-row, kind="stable")[:per_task]
        keep[heaviest[row[heaviest] > 0]] = 1
    # Pass 2: what tagging will compute: terms outside the vocabulary count in the norm with unknown_idf.
    weights = np.where(keep > 0, _rounded(idf), unknown).astype(np.float32)
    values = bag.unit_values(weights)
    centroids = _rounded(_centroids(bag, values, keep, task_of_row, k))
    similarities = _similarities(bag, values, centroids)
    nearest = similarities.argmax(axis=1).astype(np.int64)
    distances = 1 - similarities.max(axis=1)
    vocabulary = np.flatnonzero(keep)
    order = vocabulary[np.argsort([bag.terms[i] for i in vocabulary], kind="stable")]
    return TaskClassifier(
        tasks=tasks,
        thresholds=_thresholds(distances, nearest, task_of_row, k),
        medians=held_out_medians(docs, assignments, tasks, terms_per_task=terms_per_task, min_df=min_df)
        if baseline
        else [],
        terms=[bag.terms[i] for i in order],
        idf=_pack(idf[order]),
        unknown_idf=unknown_idf,
        centroids=_pack(centroids[:, order].reshape(-1)),
    )
