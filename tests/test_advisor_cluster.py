"""S3, the recurring tasks in captured calls: features (masking, parts), the clustering scored against the
synthetic traces' ground truth (adjusted Rand index), open-ended chat, stable task ids, and the classifier the
gateway tags calls with (agreement with the clustering, JSON round trip, size, no scikit-learn at tag time)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from slm_operator.advisor.classifier import TaskClassifier, fit_classifier
from slm_operator.advisor.cluster import Clustering, find_tasks
from slm_operator.advisor.features import RESPONSE_PREFIXES, document, mask, prefix_of, readable, words
from slm_operator.advisor.records import CallRecord
from slm_operator.advisor.traces import OPEN_CHAT, TASK_TYPES, generate

N = 3000
SEED = 0
TASK_ID = r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$"


def records(n: int, seed: int, mix: dict[str, float] | None = None) -> list[CallRecord]:
    return [CallRecord.model_validate(r) for r in generate(n, seed=seed, mix=mix)]


@pytest.fixture(scope="module")
def calls() -> list[CallRecord]:
    return records(N, SEED)


@pytest.fixture(scope="module")
def found(calls: list[CallRecord]) -> Clustering:
    return find_tasks(calls, seed=SEED)


def labels(calls: Sequence[CallRecord]) -> list[str]:
    return [c.label or "" for c in calls]


def majority(clustering: Clustering, calls: Sequence[CallRecord]) -> dict[str, str]:
    """Each task's most frequent ground-truth label."""
    return {
        t.id: Counter(calls[i].label for i in t.members).most_common(1)[0][0] or "" for t in clustering.tasks
    }


def chat(system: str, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        **extra,
    }


def answer(content: str | None = None, tool: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool:
        message["tool_calls"] = [
            {"id": "c1", "type": "function", "function": {"name": tool, "arguments": "{}"}}
        ]
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


# --- features ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "placeholder", "gone"),
    [
        ("Order 4711 costs 12.50 and 1,299.00", "<num>", "4711"),
        ("write to anna.mueller@example.co.uk today", "<email>", "anna"),
        ("see https://shop.example.com/o/12?x=1 for it", "<url>", "shop"),
        ("due on 2024-03-05, 5/3/2024, March 3rd, 2024 or 4 Sept 2023", "<date>", "2024"),
        ("ticket ORD-88213 for user_42, id 550e8400-e29b-41d4-a716-446655440000", "<id>", "88213"),
        ('the subject was "Quote for Atlas" today', "<quote>", "Atlas"),
        ("yesterday I met Elena García and Kofi in New York", "<name>", "García"),
        ("call me at 10:30 am", "<time>", "10:30"),
    ],
)
def test_mask_replaces_the_data_with_placeholders(text: str, placeholder: str, gone: str) -> None:
    masked = mask(text)
    assert placeholder in masked and gone not in masked, masked


def test_words_keep_the_instruction_and_drop_the_data() -> None:
    got = words("Please classify the review by Elena García from 2024-03-05: rating 4 of 5, mail elena@x.org")
    assert {"please", "classify", "review", "rating", "<name>", "<date>", "<num>", "<email>"} <= set(got)
    assert not {"elena", "garcía", "the", "by"} & set(got)


def test_document_prefixes_each_part_and_the_response_shape() -> None:
    request = chat(
        "You extract invoice fields.",
        "Invoice INV-2231 from Northwind GmbH",
        tools=[{"type": "function", "function": {"name": "lookup_vendor"}}],
        response_format={"type": "json_object"},
    )
    full = document(request, answer(json.dumps({"vendor": "x", "total": 1})))
    tokens = full.split()
    assert {"sys_extract", "sys_invoice", "usr_invoice", "usr_<id>", "tool_lookup_vendor"} <= set(tokens)
    assert {"fmt_json_object", "key_total", "key_vendor"} <= set(tokens)
    assert "call_lookup_vendor" in document(request, answer(tool="lookup_vendor")).split()
    assert {"len_short", "ans_positive"} <= set(document(request, answer("Positive")).split())
    request_only = document(request)
    assert request_only == document(request, None) and full.startswith(request_only)
    assert not {prefix_of(t) for t in request_only.split()} & RESPONSE_PREFIXES


def test_the_last_user_turn_counts_and_content_parts_are_read() -> None:
    request = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Translate to French."}]},
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": "Good morning"}, {"type": "image_url"}]},
        ]
    }
    tokens = document(request).split()
    # (a capitalised word in mid-sentence is taken for a name: "French" too)
    assert {"sys_translate", "sys_<name>", "usr_good", "usr_morning", "turns_2-3"} <= set(tokens)
    assert "usr_earlier" not in tokens
    assert readable(request).startswith("Translate to  <name> .\nGood morning")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]) | JSON, "content": JSON}
)
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(MESSAGE | JSON, max_size=4) | JSON,
        "tools": st.lists(st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": JSON})}) | JSON)
        | JSON,
        "response_format": st.fixed_dictionaries({"type": JSON, "json_schema": JSON}) | JSON,
        "tool_choice": JSON,
    },
)
RESPONSE = st.none() | st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries({"message": MESSAGE | JSON}) | JSON, max_size=2) | JSON}
)


@settings(max_examples=300)
@given(request=REQUEST | JSON, response=RESPONSE | JSON)
def test_document_never_raises_on_arbitrary_json(request: Any, response: Any) -> None:
    doc = document(request, response)
    assert isinstance(doc, str)
    assert all(prefix_of(t) for t in doc.split())
    assert isinstance(readable(request, response), str)


# --- the clustering ---------------------------------------------------------------------------------------------


def test_the_tasks_found_match_the_ground_truth(calls: list[CallRecord], found: Clustering) -> None:
    truth = labels(calls)
    assigned = [a or "noise" for a in found.assignments]
    assert adjusted_rand_score(truth, assigned) >= 0.8
    task_labels = set(majority(found, calls).values()) - {OPEN_CHAT}
    assert len(task_labels) >= len(set(truth) - {OPEN_CHAT}) - 1  # each recurring task found (one may merge)


def test_open_chat_is_noise_or_a_diffuse_task(calls: list[CallRecord], found: Clustering) -> None:
    tight = {t.id for t in found.tasks if not t.diffuse}
    chat_calls = [i for i, c in enumerate(calls) if c.label == OPEN_CHAT]
    assert chat_calls
    in_tight = sum(1 for i in chat_calls if found.assignments[i] in tight)
    assert in_tight <= 0.2 * len(chat_calls)
    for task in found.tasks:
        if not task.diffuse:
            share = sum(1 for i in task.members if calls[i].label == OPEN_CHAT) / task.size
            assert share < 0.5, (task.label, share)


def test_tasks_are_ordered_ids_are_labels_and_members_match(
    found: Clustering, calls: list[CallRecord]
) -> None:
    assert len(found.assignments) == len(calls)
    sizes = [t.size for t in found.tasks]
    assert sizes == sorted(sizes, reverse=True) and len({t.id for t in found.tasks}) == len(found.tasks)
    for task in found.tasks:
        assert len(task.id) <= 63 and re.match(TASK_ID, task.id)
        assert task.members == [i for i, a in enumerate(found.assignments) if a == task.id]
        assert task.size == len(task.members) and task.top_terms and task.label
        assert task.diffuse == (task.structured < 0.5 and task.consistency < 0.35)
    assigned = {a for a in found.assignments if a is not None}
    assert assigned == {t.id for t in found.tasks}
    assert found.noise == found.assignments.count(None)


def test_the_same_data_gives_the_same_tasks_in_any_order(calls: list[CallRecord], found: Clustering) -> None:
    again = find_tasks(calls, seed=SEED)
    assert again.assignments == found.assignments
    assert [t.model_dump() for t in again.tasks] == [t.model_dump() for t in found.tasks]
    assert again.classifier.to_json() == found.classifier.to_json()
    shuffled = list(calls)
    random.Random(1).shuffle(shuffled)
    moved = find_tasks(shuffled, seed=SEED)
    by_id = {c.id: a for c, a in zip(shuffled, moved.assignments, strict=True)}
    assert [by_id[c.id] for c in calls] == found.assignments
    assert {t.id: t.label for t in moved.tasks} == {t.id: t.label for t in found.tasks}


def test_a_sample_clusters_and_the_rest_is_assigned(calls: list[CallRecord], found: Clustering) -> None:
    sampled = find_tasks(calls, seed=SEED, sample_size=1500)
    assert sampled.sample_size == 1500
    truth = labels(calls)
    assert adjusted_rand_score(truth, [a or "noise" for a in sampled.assignments]) >= 0.75
    assert len({t.id for t in sampled.tasks} & {t.id for t in found.tasks}) >= len(found.tasks) // 2


def test_kmeans_finds_the_tasks_too(calls: list[CallRecord]) -> None:
    subset = calls[:1500]
    kmeans = find_tasks(subset, seed=SEED, method="kmeans")
    assert kmeans.method == "kmeans"
    assert adjusted_rand_score(labels(subset), [a or "noise" for a in kmeans.assignments]) >= 0.6


def test_min_task_size_dissolves_small_tasks(calls: list[CallRecord], found: Clustering) -> None:
    smallest = min(t.size for t in found.tasks)
    fewer = find_tasks(calls, seed=SEED, min_task_size=smallest + 1)
    assert all(t.size > smallest for t in fewer.tasks)
    assert fewer.noise >= found.noise


def test_calls_like_no_other_are_noise(calls: list[CallRecord]) -> None:
    rng = random.Random(5)

    def gibberish(count: int) -> str:
        return " ".join(
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 9))) for _ in range(count)
        )

    odd = [
        CallRecord(
            id=f"odd-{i}",
            request=chat(gibberish(12), gibberish(20)),
            response=answer(gibberish(30)),
        )
        for i in range(30)
    ]
    mixed = find_tasks(calls[:1500] + odd, seed=SEED)
    assert mixed.assignments[-30:] == [None] * 30
    assert all(mixed.classifier.tag(call.request)[0] is None for call in odd)


def test_one_task_alone_is_found() -> None:
    only = records(600, SEED, {label: 0.0 for label in TASK_TYPES} | {"invoice-extraction": 1.0})
    alone = find_tasks(only, seed=SEED)
    assert len(alone.tasks) == 1 and alone.tasks[0].size >= 0.95 * len(only)
    assert "invoice" in alone.tasks[0].top_terms or "invoice_date" in alone.tasks[0].top_terms


def test_few_or_no_calls_give_no_task() -> None:
    empty = find_tasks([], seed=SEED)
    assert (
        empty.tasks == [] and empty.assignments == [] and empty.classifier.tag(chat("a", "b")) == (None, 1.0)
    )
    few = find_tasks(records(8, SEED), seed=SEED)
    assert few.tasks == [] and few.assignments == [None] * 8


def test_an_embedding_hook_replaces_tfidf(calls: list[CallRecord]) -> None:
    seen: list[int] = []

    def by_system_prompt(texts: list[str]) -> np.ndarray[Any, Any]:
        seen.append(len(texts))
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            vectors[row, zlib.crc32(text.split("\n", 1)[0].encode()) % 64] = 1.0
        return vectors

    hooked = find_tasks(calls[:600], seed=SEED, embed=by_system_prompt)
    assert seen == [600] and len(hooked.assignments) == 600


# --- the classifier ---------------------------------------------------------------------------------------------


def test_the_classifier_agrees_with_the_clustering_from_the_request_alone(
    calls: list[CallRecord], found: Clustering
) -> None:
    tagged = [found.classifier.tag(c.request)[0] for c in calls]
    agree = sum(t == a for t, a in zip(tagged, found.assignments, strict=True)) / len(calls)
    assert agree >= 0.9


def test_the_classifier_agrees_on_held_out_calls(calls: list[CallRecord], found: Clustering) -> None:
    """Fitted on two thirds of the calls, it tags the last third as the clustering assigned them."""
    docs = [document(c.request) for c in calls]
    cut = 2 * len(calls) // 3
    classifier = fit_classifier(docs[:cut], found.assignments[:cut])
    held_out = range(cut, len(calls))
    agree = sum(classifier.tag(calls[i].request)[0] == found.assignments[i] for i in held_out) / len(held_out)
    assert agree >= 0.9
    # and new calls, generated with another seed, get the task of their kind
    task_of = {label: task for task, label in majority(found, calls).items()}
    fresh = records(600, SEED + 1)
    expected = [task_of.get(c.label or "") for c in fresh]
    right = sum(found.classifier.tag(c.request)[0] == e for c, e in zip(fresh, expected, strict=True))
    assert right / len(fresh) >= 0.85


def test_the_classifier_round_trips_through_json_and_fits_in_a_configmap(
    calls: list[CallRecord], found: Clustering
) -> None:
    text = found.classifier.to_json()
    assert len(text.encode()) < 900 * 1024
    loaded = TaskClassifier.from_json(text)
    assert loaded == found.classifier
    for call in calls[:300]:
        assert loaded.tag(call.request) == found.classifier.tag(call.request)
    assert set(loaded.tasks) == {t.id for t in found.tasks}


def test_the_classifier_of_many_tasks_stays_small() -> None:
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(20000)]
    docs, tasks = [], []
    for task in range(40):
        own = rng.sample(vocabulary, 400)
        for _ in range(30):
            docs.append(" ".join(f"usr_{w}" for w in rng.sample(own, 60)))
            tasks.append(f"t-{task}")
    classifier = fit_classifier(docs, tasks)
    assert len(classifier.tasks) == 40 and len(classifier.to_json().encode()) < 900 * 1024
    right = sum(classifier.tag_document(d)[0] == t for d, t in zip(docs, tasks, strict=True))
    assert right / len(docs) >= 0.95


def test_the_classifier_rejects_inconsistent_json(found: Clustering) -> None:
    data = json.loads(found.classifier.to_json())
    with pytest.raises(ValueError):
        TaskClassifier.model_validate({**data, "thresholds": data["thresholds"][1:]})
    with pytest.raises(ValueError):
        TaskClassifier.model_validate({**data, "terms": data["terms"][1:]})
    with pytest.raises(ValueError):
        TaskClassifier.model_validate({**data, "version": 2})


def test_tagging_loads_no_scikit_learn(found: Clustering, calls: list[CallRecord]) -> None:
    code = (
        "import json, sys\n"
        "from slm_operator.advisor.classifier import TaskClassifier\n"
        "c = TaskClassifier.from_json(sys.stdin.read())\n"
        f"print(json.dumps([c.tag(r) for r in {[c.request for c in calls[:20]]!r}]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=found.classifier.to_json(),
        capture_output=True,
        text=True,
        check=True,
    )
    tags, modules = out.stdout.strip().splitlines()
    assert modules == "[]"
    assert [tuple(t) for t in json.loads(tags)] == [found.classifier.tag(c.request) for c in calls[:20]]


def test_a_request_far_from_every_task_is_no_task(found: Clustering) -> None:
    task, distance = found.classifier.tag(chat("Zyx qwv.", "plorf blandish quux frobnicate wibble"))
    assert task is None and distance > 0.5
    assert found.classifier.tag({})[0] is None
