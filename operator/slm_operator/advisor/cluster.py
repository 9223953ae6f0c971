"""S3 of the LLM-to-SLM loop: the recurring tasks in captured calls (``find_tasks``), and their classifier.

Each call becomes a document (``features.document``: masked system prompt and last user turn, tools, response
format and shape). By default the documents are embedded offline: TF-IDF (sublinear tf, part weights, a bounded
vocabulary; a token outside the vocabulary still counts in a row's norm, so a call made of words no other call
uses has a short row), then a seeded TruncatedSVD to ``SVD_DIMS`` dimensions. ``embed`` replaces that with any
sentence-embedding callable (texts -> (n, d) array; it gets ``features.readable`` texts).

Clustering, bounded in time and memory whatever the input size: a seeded **sample** of at most ``sample_size``
calls is clustered (on unit vectors), with HDBSCAN (density: calls in no dense region are noise; its leaf
clusters, then clusters whose centroids are ``MERGE_SIMILARITY`` similar merged, as one task's calls form a
dense pocket per agent and prompt variant) or k-means (k of the best silhouette on a sub-sample). **Every**
call, sampled or not, is then assigned to the nearest task centroid if it lies within that task's radius
(``RADIUS_FACTOR`` x a high quantile of the sampled members' distances, within ``MIN_RADIUS``..``MAX_RADIUS``),
else it is noise (``None``). A task with fewer than ``min_task_size`` calls is dissolved into noise.

Open-ended chat has no task's pattern: its calls are noise, or, where many share a system prompt, a task marked
``diffuse``: answers that are mostly free text (not JSON objects or tool calls) worded inconsistently, like
its user turns (``consistency``). The selection keeps a diffuse task on the LLM.

The sample is the calls with the smallest seeded hash of their id and document, taken in that order, so the
result does not depend on the order of the input. A task's id is a hash of its distinctive terms and tools
(``t-`` + 10 hex digits), not of a cluster number: the same data and seed give the same ids. The classifier
(``advisor.classifier``) is fitted on the request-only documents of the first ``CLASSIFIER_SAMPLE`` calls in
that order.

Pure: no I/O. scikit-learn is needed here, not by the classifier the gateway loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.metrics import silhouette_score

from slm_operator.advisor.classifier import TaskClassifier, fit_classifier
from slm_operator.advisor.features import answer_words, document, readable, response_tokens, weight
from slm_operator.advisor.records import CallRecord

SAMPLE_SIZE = 8000  # calls clustered; the rest are assigned to the nearest centroid
CLASSIFIER_SAMPLE = 20000  # calls the classifier is fitted on
SVD_DIMS = 100
MAX_FEATURES = 20000  # TF-IDF vocabulary bound
MIN_DF_SHARE = 0.001  # a term in fewer of the sampled calls (and at least 2) is left out
MERGE_SIMILARITY = 0.2  # clusters whose centroids are this similar (cosine, average linkage) are one task
ASSIGN_QUANTILE = 0.99  # a task's radius: this quantile of its sampled members' distances ...
RADIUS_FACTOR = 2.0  # ... times this (the density clustering keeps a task's core; its calls spread wider) ...
MIN_RADIUS = 0.2  # ... at least this (a task of near-identical calls still takes a call that varies) ...
MAX_RADIUS = 0.8  # ... and at most this (cosine similarity 0.2: next to nothing in common)
# A task is diffuse with fewer answers that are JSON objects or tool calls than DIFFUSE_STRUCTURED and a
# consistency (of user-turn and answer wording) below DIFFUSE_CONSISTENCY.
DIFFUSE_STRUCTURED = 0.5
DIFFUSE_CONSISTENCY = 0.35
CONSISTENCY_SAMPLE = 300  # calls of a task its consistency is measured on
KMEANS_MAX_K = 30
SILHOUETTE_SAMPLE = 2000
TOP_TERMS = 8
ID_TERMS = 6  # the top terms (sorted) and tools that the task id hashes
ASSIGN_CHUNK = 16384
DEFAULT_MIN_SHARE = 0.005  # min_task_size when not given: 0.5 % of the calls (and at least 10)
Embedder = Callable[[list[str]], np.ndarray[Any, Any]]  # texts -> (n, d) array
Method = Literal["hdbscan", "kmeans"]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


class TaskCluster(BaseModel):
    """One recurring task: what it looks like (distinctive terms, tools), how many calls and which."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$", max_length=63)
    label: str = Field(description="readable: the top terms and the tools")
    top_terms: list[str] = Field(
        description="the most distinctive words of its calls, most distinctive first"
    )
    tools: list[str] = Field(description="tools offered to or called by most of its calls")
    size: int = Field(ge=0)
    cohesion: float = Field(description="mean cosine similarity of its calls to its centroid (1: identical)")
    structured: float = Field(
        ge=0, le=1, description="share of its answers that are JSON objects or tool calls"
    )
    consistency: float = Field(
        description="how alike its user turns and text answers are worded: mean cosine of each call to the "
        "others' centroid (leave-one-out, TF-IDF of user-turn and answer words; 1: identical)"
    )
    diffuse: bool = Field(
        description="open-ended (chat): unstructured answers and inconsistent wording; not a task to move"
    )
    members: list[int] = Field(description="indices of its calls in the input, ascending")


class Clustering(BaseModel):
    """The tasks, largest first; one task id (or None: noise) per input record; the gateway's classifier."""

    model_config = ConfigDict(frozen=True)

    tasks: list[TaskCluster]
    assignments: list[str | None]
    classifier: TaskClassifier
    method: Method
    sample_size: int = Field(
        ge=0, description="calls clustered; the others were assigned to the nearest task"
    )

    @property
    def noise(self) -> int:
        return sum(1 for a in self.assignments if a is None)


@dataclass(frozen=True)
class _Corpus:
    """The input as the clustering sees it: records, documents, the canonical rank of each record, the TF-IDF
    rows and their terms, and the embedding."""

    records: Sequence[CallRecord]
    request_docs: list[str]
    docs: list[str]
    rank: IntArray
    matrix: sparse.csr_matrix
    terms: list[str]
    points: FloatArray
    total: FloatArray  # the sum of the TF-IDF rows


def _unit(rows: np.ndarray[Any, Any]) -> FloatArray:
    """``rows`` scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


def _canonical_order(records: Sequence[CallRecord], docs: Sequence[str], seed: int) -> list[int]:
    """The records' indices sorted by a seeded hash of id and document: independent of the input order."""

    def key(i: int) -> bytes:
        text = f"{seed}\x00{records[i].id}\x00{docs[i]}".encode()
        return hashlib.blake2b(text, digest_size=8).digest()

    return sorted(range(len(records)), key=lambda i: (key(i), docs[i]))


def _term_space(docs: Sequence[str], sample: Sequence[int]) -> tuple[sparse.csr_matrix, list[str]]:
    """Every document as a TF-IDF row: sublinear tf, vocabulary and idf from the sample, part weights; divided by
    its norm over all its tokens, those outside the vocabulary counted with the idf of a term seen once. So a
    document made mostly of words the sample never used has a short row, and lies far from every task."""
    counter = CountVectorizer(
        analyzer=str.split, min_df=max(2, int(MIN_DF_SHARE * len(sample))), max_features=MAX_FEATURES
    )
    try:
        sampled = counter.fit_transform([docs[i] for i in sample])
    except ValueError:  # no term in min_df documents
        return sparse.csr_matrix((len(docs), 0), dtype=np.float32), []
    terms = [str(t) for t in counter.get_feature_names_out()]
    df = np.bincount(sparse.csr_matrix(sampled).indices, minlength=len(terms))
    idf = np.log((1 + len(sample)) / (1 + df)) + 1
    rare_idf = float(np.log((1 + len(sample)) / 2) + 1)
    counts = sparse.csr_matrix(counter.transform(docs), dtype=np.float32)
    unknown = (
        np.asarray([len(d.split()) for d in docs], dtype=np.float64) - np.asarray(counts.sum(axis=1)).ravel()
    )
    counts.data = 1 + np.log(counts.data)
    weights = np.asarray([weight(t) for t in terms], dtype=np.float64)
    matrix = sparse.csr_matrix(counts @ sparse.diags((idf * weights).astype(np.float32)))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel() + unknown * rare_idf**2)
    matrix = sparse.diags((1 / np.maximum(norms, 1e-12)).astype(np.float32)) @ matrix
    return sparse.csr_matrix(matrix, dtype=np.float32), terms


def _embedding(matrix: sparse.csr_matrix, sample: Sequence[int], seed: int) -> FloatArray:
    """The rows in SVD space (fitted on the sample), or the TF-IDF rows themselves when they are too few. Not
    normalised: a row's length says how much of its document the space explains (see ``_assign``)."""
    dims = min(SVD_DIMS, matrix.shape[1] - 1, len(sample) - 1)
    if dims < 2:  # one or two terms, or one or two calls sampled: nothing to reduce
        return np.asarray(matrix[:, :SVD_DIMS].toarray(), dtype=np.float32)
    svd = TruncatedSVD(n_components=dims, random_state=seed)
    svd.fit(matrix[list(sample)])
    return np.asarray(svd.transform(matrix), dtype=np.float32)


def _hdbscan(points: FloatArray, min_size: int) -> IntArray:
    model = HDBSCAN(min_cluster_size=min_size, cluster_selection_method="leaf", copy=True)
    return np.asarray(model.fit_predict(points), dtype=np.int64)


def _kmeans(points: FloatArray, min_size: int, seed: int) -> IntArray:
    """k-means with the k in 2..``KMEANS_MAX_K`` (at most one cluster per ``min_size`` points, and no more than
    there are distinct points) of the best silhouette on a seeded sub-sample."""
    distinct = len(np.unique(points.round(6), axis=0))
    top = min(KMEANS_MAX_K, len(points) // max(min_size, 1), distinct)
    if top < 2:
        return np.zeros(len(points), dtype=np.int64)
    rng = np.random.default_rng(seed)
    probe = rng.choice(len(points), size=min(SILHOUETTE_SAMPLE, len(points)), replace=False)
    best: tuple[float, IntArray] | None = None
    for k in range(2, top + 1):
        labels = np.asarray(KMeans(n_clusters=k, n_init=2, random_state=seed).fit_predict(points), np.int64)
        if len(set(labels[probe].tolist())) < 2:
            continue
        score = float(silhouette_score(points[probe], labels[probe]))
        if best is None or score > best[0]:
            best = (score, labels)
    return best[1] if best is not None else np.zeros(len(points), dtype=np.int64)


def _centroids(points: FloatArray, labels: IntArray, k: int) -> FloatArray:
    sums = np.zeros((k, points.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[labels >= 0], points[labels >= 0])
    return _unit(sums)


def _merge(points: FloatArray, labels: IntArray) -> IntArray:
    """Labels with clusters whose centroids are ``MERGE_SIMILARITY`` similar (average linkage) joined."""
    k = int(labels.max()) + 1 if labels.size else 0
    if k < 2:
        return labels
    model = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="average", distance_threshold=1 - MERGE_SIMILARITY
    )
    merged = np.asarray(model.fit_predict(_centroids(points, labels, k)), dtype=np.int64)
    return np.where(labels >= 0, merged[np.maximum(labels, 0)], -1)


def _radii(points: FloatArray, labels: IntArray, centroids: FloatArray) -> FloatArray:
    radii = np.zeros(len(centroids), dtype=np.float32)
    for task in range(len(centroids)):
        distances = 1 - points[labels == task] @ centroids[task]
        q = float(np.quantile(distances, ASSIGN_QUANTILE)) if distances.size else 0.0
        radii[task] = min(MAX_RADIUS, max(MIN_RADIUS, RADIUS_FACTOR * q))
    return radii


def _assign(points: FloatArray, centroids: FloatArray, radii: FloatArray) -> tuple[IntArray, FloatArray]:
    """Each point's nearest (unit) centroid, -1 beyond its radius, and its similarity to it (dot product, in
    chunks). A point's length scales its similarity: a call the space explains little of is far from all."""
    nearest = np.full(len(points), -1, dtype=np.int64)
    similarity = np.zeros(len(points), dtype=np.float32)
    if len(centroids) == 0:
        return nearest, similarity
    for start in range(0, len(points), ASSIGN_CHUNK):
        block = points[start : start + ASSIGN_CHUNK] @ centroids.T
        best = block.argmax(axis=1)
        similarity[start : start + len(block)] = block[np.arange(len(block)), best]
        nearest[start : start + len(block)] = best
    nearest[1 - similarity > radii[np.maximum(nearest, 0)]] = -1
    return nearest, similarity


def _cluster(points: FloatArray, sample: Sequence[int], method: Method, min_size: int, seed: int) -> IntArray:
    """Task number per point (-1: noise), from clustering the sample and assigning every point."""
    if len(sample) < 2 * min_size:
        return np.full(len(points), -1, dtype=np.int64)
    sampled = points[list(sample)]
    unit = _unit(sampled)
    labels = _hdbscan(unit, min_size) if method == "hdbscan" else _kmeans(unit, min_size, seed)
    labels = _merge(unit, labels)
    k = int(labels.max()) + 1 if labels.size else 0
    centroids = _centroids(unit, labels, k)
    nearest, _ = _assign(points, centroids, _radii(sampled, labels, centroids))
    return nearest


def _word(term: str) -> str:
    return term.split("_", 1)[1] if "_" in term else term


def _describe(corpus: _Corpus, members: IntArray) -> tuple[list[str], list[str]]:
    """A task's most distinctive words (its mean TF-IDF row above the other calls' mean row), and its tools
    (offered to or called by at least half of its calls)."""
    if not corpus.terms:
        return [], []
    rows = corpus.matrix[members]
    own = np.asarray(rows.sum(axis=0)).ravel()
    others = len(corpus.docs) - members.size
    rest = (corpus.total - own) / others if others else 0.0
    score = np.round(own / members.size - rest, 6)
    share = np.asarray((rows > 0).mean(axis=0)).ravel()
    top: list[str] = []
    for i in sorted(np.flatnonzero(score > 0).tolist(), key=lambda i: (-score[i], corpus.terms[i])):
        word, part = _word(corpus.terms[i]), corpus.terms[i].split("_", 1)[0]
        if part not in ("tool", "call", "turns", "len") and not word.startswith("<") and word not in top:
            top.append(word)
            if len(top) == TOP_TERMS:
                break
    common = [corpus.terms[i] for i in np.flatnonzero(share >= 0.5).tolist()]
    return top, sorted({_word(t) for t in common if t.split("_", 1)[0] in ("tool", "call")})


def _task_id(top_terms: Sequence[str], tools: Sequence[str]) -> str:
    signature = "|".join(sorted(top_terms[:ID_TERMS])) + "#" + ",".join(tools)
    return "t-" + hashlib.blake2b(signature.encode(), digest_size=5).hexdigest()


def _label(top_terms: Sequence[str], tools: Sequence[str]) -> str:
    words = " ".join(top_terms[:4]) or "(no distinctive terms)"
    return f"{words} [{', '.join(tools)}]" if tools else words


def _consistency(texts: Sequence[str]) -> float:
    """Mean cosine of each text's TF-IDF row to the sum of the others' (leave-one-out, so a small cluster is not
    favoured); 1.0 when there are fewer than two texts or no words."""
    if len(texts) < 2:
        return 1.0
    try:
        rows = TfidfVectorizer(analyzer=str.split, sublinear_tf=True, dtype=np.float64).fit_transform(texts)
    except ValueError:  # no word at all
        return 1.0
    total = np.asarray(rows.sum(axis=0)).ravel()
    dots = np.asarray(rows @ total).ravel()
    norms = np.asarray(rows.multiply(rows).sum(axis=1)).ravel()
    rest = np.sqrt(np.maximum(total @ total - 2 * dots + norms, 1e-12))
    return float(np.mean((dots - norms) / rest))


def _form(corpus: _Corpus, members: IntArray) -> tuple[float, float]:
    """Share of structured answers (JSON keys or tool calls) and consistency of user-turn and answer words, on
    the first ``CONSISTENCY_SAMPLE`` members in canonical order."""
    sample = members[np.argsort(corpus.rank[members], kind="stable")][:CONSISTENCY_SAMPLE]
    structured = 0
    texts = []
    for i in sample:
        tokens = corpus.docs[i].split()
        structured += any(t.startswith(("key_", "call_")) for t in tokens)
        user = [t for t in corpus.request_docs[i].split() if t.startswith("usr_")]
        texts.append(" ".join(user + answer_words(corpus.records[i].response)))
    return structured / max(len(sample), 1), _consistency(texts)


def _task(corpus: _Corpus, members: IntArray, task_id: str, top: list[str], tools: list[str]) -> TaskCluster:
    unit = _unit(corpus.points[members])
    centroid = _unit(unit.mean(axis=0, keepdims=True))[0]
    structured, consistency = _form(corpus, members)
    return TaskCluster(
        id=task_id,
        label=_label(top, tools),
        top_terms=top,
        tools=tools,
        size=int(members.size),
        cohesion=round(float((unit @ centroid).mean()), 4),
        structured=round(structured, 4),
        consistency=round(consistency, 4),
        diffuse=structured < DIFFUSE_STRUCTURED and consistency < DIFFUSE_CONSISTENCY,
        members=[int(m) for m in members],
    )


def _tasks(
    corpus: _Corpus, nearest: IntArray, min_task_size: int
) -> tuple[list[TaskCluster], dict[int, str]]:
    """The tasks of at least ``min_task_size`` calls, largest first, and each one's id by task number."""
    found = []
    for task in range(int(nearest.max()) + 1 if nearest.size else 0):
        members = np.flatnonzero(nearest == task)
        if members.size and members.size >= min_task_size:
            found.append((task, members))
    found.sort(key=lambda f: (-f[1].size, int(corpus.rank[f[1]].min())))
    tasks: list[TaskCluster] = []
    ids: dict[int, str] = {}
    for task, members in found:
        top, tools = _describe(corpus, members)
        task_id = base = _task_id(top, tools)
        suffix = 1
        while task_id in ids.values():  # the same terms and tools (rare): numbered by size
            suffix += 1
            task_id = f"{base}-{suffix}"
        ids[task] = task_id
        tasks.append(_task(corpus, members, task_id, top, tools))
    return tasks, ids


def _embedded(embed: Embedder, records: Sequence[CallRecord]) -> FloatArray:
    vectors = np.asarray(embed([readable(r.request, r.response) for r in records]), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ValueError(f"embed returned shape {vectors.shape} for {len(records)} texts: expected (n, d)")
    return _unit(vectors)


def default_min_task_size(n: int) -> int:
    """``min_task_size`` when not given: ``DEFAULT_MIN_SHARE`` of the calls, at least 10."""
    return max(10, int(np.ceil(DEFAULT_MIN_SHARE * n)))


def find_tasks(
    records: Sequence[CallRecord],
    *,
    seed: int = 0,
    method: Method = "hdbscan",
    min_task_size: int | None = None,
    embed: Embedder | None = None,
    sample_size: int = SAMPLE_SIZE,
) -> Clustering:
    """The recurring tasks in ``records`` (the module's docstring says how), one task id or None (noise) per
    record, and the classifier of the tasks. ``min_task_size``: the fewest calls a task has (default
    ``default_min_task_size``); ``embed``: a sentence-embedding callable used instead of TF-IDF + SVD;
    ``sample_size``: how many calls are clustered, the others being assigned. Deterministic for the same
    records and seed, whatever their order."""
    if sample_size < 1:
        raise ValueError("sample_size must be positive")
    n = len(records)
    request_docs = [document(r.request, None) for r in records]
    docs = [
        f"{q} {' '.join(response_tokens(r.response))}" if r.response is not None else q
        for q, r in zip(request_docs, records, strict=True)
    ]
    order = _canonical_order(records, docs, seed)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    sample = order[:sample_size]
    matrix, terms = _term_space(docs, sample)
    points = _embedding(matrix, sample, seed) if embed is None else _embedded(embed, records)
    total = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()
    corpus = _Corpus(records, request_docs, docs, rank, matrix, terms, points, total)
    min_size = min_task_size if min_task_size is not None else default_min_task_size(n)
    sample_min = max(5, round(min_size * len(sample) / max(n, 1)))
    nearest = _cluster(points, sample, method, sample_min, seed) if n else np.zeros(0, np.int64)
    tasks, ids = _tasks(corpus, nearest, min_size)
    assignments = [ids.get(int(t)) for t in nearest]
    fit = order[:CLASSIFIER_SAMPLE]
    classifier = fit_classifier([request_docs[i] for i in fit], [assignments[i] for i in fit])
    return Clustering(
        tasks=tasks, assignments=assignments, classifier=classifier, method=method, sample_size=len(sample)
    )
