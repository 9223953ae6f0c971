"""The continuous loop (issue 13, S6): what the scheduled advisor notices between two runs, and the retrains
``spec.autoRetrain`` starts. The traffic is the trace generator's: one agent population over a few hours, split
in an earlier and a later half (the last run and this one)."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.advisor.cluster import Clustering, find_tasks
from slm_operator.advisor.loop import (
    Finding,
    carry_over,
    changes,
    events,
    next_name,
    retrains,
    served_tasks,
)
from slm_operator.advisor.records import CallRecord
from slm_operator.advisor.traces import generate
from slm_operator.api.v1alpha1 import FineTuneJob, SLMRoute
from slm_operator.contract import ADVISOR_TASK_ANNOTATION
from slm_operator.manifests import parse_object

START = datetime(2026, 11, 2, tzinfo=UTC)
REWRITTEN = (
    "Triage assistant v2 for the helpdesk queue. Read the customer's message and reply with a JSON object holding "
    "queue, severity, language, churn_risk and next_action; severity is one of sev1 sev2 sev3, churn_risk a "
    "probability, next_action one of refund escalate reassure close."
)


def _records(raw: list[dict[str, Any]]) -> list[CallRecord]:
    return [CallRecord.model_validate(r) for r in raw]


@pytest.fixture(scope="module")
def traffic() -> tuple[list[CallRecord], list[CallRecord]]:
    """6,000 calls over four hours: the last run saw the first half, this run sees the second."""
    raw = generate(6000, seed=1, route="agents/agent-llm", hours=4, start=START)
    return _records(raw[:3000]), _records(raw[3000:])


@pytest.fixture(scope="module")
def last_run(traffic: tuple[list[CallRecord], list[CallRecord]]) -> Clustering:
    return find_tasks(traffic[0])


def _labels(clustering: Clustering, records: list[CallRecord]) -> dict[str, str]:
    """Each task's majority ground-truth label."""
    out = {}
    for task in clustering.tasks:
        out[task.id] = Counter(records[i].label for i in task.members).most_common(1)[0][0]
    return out


def test_the_same_traffic_later_keeps_every_task_id_and_reports_no_new_task_or_drift(
    traffic: tuple[list[CallRecord], list[CallRecord]], last_run: Clustering
) -> None:
    earlier, later = traffic
    now, lineage = carry_over(find_tasks(later), later, last_run.classifier)
    before, after = _labels(last_run, earlier), _labels(now, later)
    for task_id, label in after.items():
        if label in before.values() and list(before.values()).count(label) == 1:
            assert before.get(task_id) == label, (task_id, label)  # the same task kept its id
    found = changes(now, lineage, later, None)
    assert not [f for f in found if f.kind in ("NewTask", "TaskDrift")], found
    # the classifier the run publishes tags with the ids kept
    assert set(now.classifier.tasks) == {t.id for t in now.tasks}
    assert all(a is None or a in set(now.classifier.tasks) for a in now.assignments)


def test_rewritten_prompts_of_one_task_are_drift_of_that_task_only_and_keep_its_id(
    traffic: tuple[list[CallRecord], list[CallRecord]], last_run: Clustering
) -> None:
    earlier, later = traffic
    changed = []
    for r in later:
        if r.label == "ticket-tagging":
            request = copy.deepcopy(r.request)
            for m in request["messages"]:
                if m["role"] == "system":
                    m["content"] = REWRITTEN
            r = r.model_copy(update={"request": request})
        changed.append(r)
    now, lineage = carry_over(find_tasks(changed), changed, last_run.classifier)
    ticket = next(t for t, label in _labels(last_run, earlier).items() if label == "ticket-tagging")
    assert ticket in {t.id for t in now.tasks}  # the rewritten task still answers to its id
    drift = [f for f in changes(now, lineage, changed, None) if f.kind == "TaskDrift"]
    assert [f.task for f in drift] == [ticket]
    assert drift[0].figures["median_now"] - drift[0].figures["median_then"] >= 0.1
    assert not [f for f in changes(now, lineage, changed, None, drift=1.0) if f.kind == "TaskDrift"]


def test_a_task_the_last_run_never_saw_is_new_and_open_chat_is_not(
    traffic: tuple[list[CallRecord], list[CallRecord]],
) -> None:
    earlier = _records(generate(3000, seed=1, route="agents/agent-llm", hours=2, start=START,
                                mix={"sql-generation": 0}))  # fmt: skip
    later = traffic[1]
    before = find_tasks(earlier)
    now, lineage = carry_over(find_tasks(later), later, before.classifier)
    new = [f for f in changes(now, lineage, later, None) if f.kind == "NewTask"]
    labels = _labels(now, later)
    assert [labels[f.task] for f in new] == ["sql-generation"]
    assert "no task of the last run covers" in new[0].message


def test_a_previous_task_id_is_taken_over_even_when_the_terms_that_named_it_moved(
    traffic: tuple[list[CallRecord], list[CallRecord]], last_run: Clustering
) -> None:
    """Ids are hashes of top terms; a route rule names a task by id. A classifier whose tasks have other names
    (an older release, or terms that moved) passes its names on."""
    renamed = TaskClassifier.model_validate(
        {**last_run.classifier.model_dump(), "tasks": [f"task-{i}" for i in range(len(last_run.tasks))]}
    )
    later = traffic[1]
    now, lineage = carry_over(find_tasks(later), later, renamed)
    kept = {t.id for t in now.tasks if t.id.startswith("task-")}
    assert len(kept) >= len(now.tasks) - 2 and set(lineage.matched) == kept
    assert {a for a in now.assignments if a} <= {t.id for t in now.tasks}


# ---------------------------------------------------------------------------------------------- served tasks


def _route(rule: dict[str, Any], status: dict[str, Any] | None = None, **spec: Any) -> SLMRoute:
    obj = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMRoute",
        "metadata": {"name": "agent-llm", "namespace": "agents", "uid": "u-1"},
        "spec": {
            "model": "gpt-4o",
            "backends": [
                {"name": "llm", "external": {"url": "https://llm.example/v1", "model": "gpt-4o"}},
                {"name": "tagger", "slmDeploymentRef": {"name": "tagger"}},
            ],
            "rules": [rule],
            "defaultBackend": "llm",
            **spec,
        },
    }
    if status:
        obj["status"] = status
    route = parse_object(obj)
    assert isinstance(route, SLMRoute)
    return route


SHADOW_RULE = {
    "name": "task-t",
    "match": {"tasks": ["t-1"]},
    "backend": "llm",
    "shadow": {"backends": ["tagger"], "percent": 10},
    "promote": {"backend": "tagger"},
}
SERVING = {"rules": [{"name": "task-t", "phase": "Serving", "backend": "tagger"}]}


def test_a_task_is_served_by_an_slm_only_while_its_rule_answers_with_a_deployment() -> None:
    assert served_tasks(_route(SHADOW_RULE)) == {}
    [(task, s)] = served_tasks(_route(SHADOW_RULE, SERVING)).items()
    assert (task, s.backend, s.deployment) == ("t-1", "tagger", "tagger")
    plain = {"name": "direct", "match": {"tasks": ["t-2"]}, "backend": "tagger"}
    assert list(served_tasks(_route(plain))) == ["t-2"]


def _served_calls(task: str, early: float, late: float, n: int = 200) -> tuple[list[CallRecord], Clustering]:
    """``n`` calls of one task over two hours answered by ``tagger``; ``early`` and ``late`` of them (shares)
    fell back to the LLM in each hour."""
    records = []
    for i in range(n):
        late_half = i >= n // 2
        share = late if late_half else early
        fell = (i % (n // 2)) < share * (n // 2)
        records.append(
            CallRecord(
                id=f"c{i}",
                request={"messages": [{"role": "user", "content": f"tag ticket {i}"}]},
                time=START + timedelta(minutes=i * 120 / n),
                backend="llm" if fell else "tagger",
                fallback_reason="error" if fell else None,
            )
        )
    clustering = Clustering(
        tasks=[], assignments=[task] * n, classifier=TaskClassifier(), method="hdbscan", sample_size=n
    )
    return records, clustering


def test_a_served_task_whose_fallbacks_rose_is_reported_and_a_steady_one_is_not() -> None:
    route = _route(SHADOW_RULE, SERVING)
    records, clustering = _served_calls("t-1", early=0.02, late=0.2)
    lineage = carry_over(clustering, records, None)[1]
    [found] = changes(clustering, lineage, records, route)
    assert found.kind == "FallbackRising" and found.task == "t-1"
    assert found.figures == {"early_percent": 2.0, "late_percent": 20.0}
    assert "20.0 % of its calls fell back" in found.message
    [event] = events([found], route)
    assert (event.type, event.reason, event.kind, event.name, event.uid) == (
        "Warning", "FallbackRising", "SLMRoute", "agent-llm", "u-1"
    )  # fmt: skip
    steady, clustering = _served_calls("t-1", early=0.05, late=0.08)
    assert changes(clustering, lineage, steady, route) == []  # +3 points: under the 5 that are reported
    assert changes(clustering, lineage, records, _route(SHADOW_RULE)) == []  # the LLM answers it: not served


# ---------------------------------------------------------------------------------------------- autoRetrain


def _job(
    name: str, created: str, conditions: list[dict[str, Any]], dataset: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": "agents",
            "creationTimestamp": created,
            "annotations": {ADVISOR_TASK_ANNOTATION: "t-1"},
        },
        "spec": {
            "poolRef": {"name": "h100"},
            "segment": "finetune",
            "baseModel": "qwen2.5-0.5b-instruct",
            "modelSource": {"pvc": {"claimName": "models", "path": "qwen"}},
            "dataset": dataset,
            "hyperparameters": {"epochs": 9},
            "output": {"pvc": {"claimName": "slm-adapters", "path": f"tagger/{name}"}},
            "promote": {"slmDeploymentRef": {"name": "tagger"}},
        },
        "status": {"conditions": [_condition(c) for c in conditions]},
    }


def _condition(c: dict[str, Any]) -> dict[str, Any]:
    """A condition as the API server stores it: the fields ``metav1.Condition`` requires filled."""
    return {"reason": "Test", "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z", **c}


STORE = {
    "usageStore": {"urlSecretRef": {"name": "usage-store", "key": "url"}, "route": "agent-llm", "task": "t-1"}
}
PROMOTED = [{"type": "Promoted", "status": "True", "reason": "Promoted"}]
TRAINING = [{"type": "Trained", "status": "False", "reason": "Training"}]
DRIFT = Finding(kind="TaskDrift", task="t-1", message="task t-1 drifted")


def test_auto_retrain_copies_the_task_s_last_job_onto_its_newest_calls_once() -> None:
    route = _route(SHADOW_RULE, SERVING, autoRetrain={"since": "1h", "minCalls": 50})
    records, _ = _served_calls("t-1", 0.0, 0.0)
    members = {"t-1": records}
    now = START + timedelta(hours=2)
    jobs = [
        _job(
            "tagger-1",
            "2026-11-01T00:00:00Z",
            [{"type": "Failed", "status": "True", "reason": "Failed"}],
            STORE,
        ),
        _job("tagger-2", "2026-11-01T10:00:00Z", PROMOTED, STORE),
    ]
    r = retrains([DRIFT, DRIFT], route, jobs, members, now)
    [job] = r.manifests
    assert job["metadata"]["name"] == "tagger-3"
    assert job["spec"]["dataset"]["usageStore"] == {**STORE["usageStore"], "since": "1h"}
    assert job["spec"]["output"]["pvc"] == {"claimName": "slm-adapters", "path": "tagger/tagger-3"}
    assert (
        job["spec"]["hyperparameters"] == {"epochs": 9}
        and job["spec"]["modelSource"]["pvc"]["path"] == "qwen"
    )
    parse_object(job)
    [event] = r.events
    assert event.reason == "RetrainStarted" and "started FineTuneJob tagger-3 for task t-1" in event.message
    # one of the task's jobs still running: no second one
    running = retrains([DRIFT], route, [*jobs, _job("tagger-3", "2026-11-02T01:00:00Z", TRAINING, STORE)],
                       members, now)  # fmt: skip
    assert running.manifests == [] and "waits: FineTuneJob tagger-3 has not finished" in running.notes[0]
    # too few calls in the window
    few = retrains([DRIFT], route, jobs, {"t-1": records[:10]}, now)
    assert few.manifests == [] and "calls in the last 1h, 50 needed" in few.notes[0]


def test_auto_retrain_follows_its_triggers_and_reads_the_store_when_the_last_job_read_a_configmap() -> None:
    records, _ = _served_calls("t-1", 0.0, 0.0)
    now = START + timedelta(hours=2)
    configmap = [
        _job("tagger-1", "2026-11-01T00:00:00Z", PROMOTED, {"configMapRef": {"name": "tagger-data"}})
    ]
    rising = Finding(kind="FallbackRising", task="t-1", message="rising")
    only_drift = _route(SHADOW_RULE, SERVING, autoRetrain={"on": ["Drift"], "since": "1h", "minCalls": 50})
    assert retrains([rising], only_drift, configmap, {"t-1": records}, now).manifests == []
    assert retrains([DRIFT], _route(SHADOW_RULE, SERVING), configmap, {"t-1": records}, now).notes == []
    on = _route(SHADOW_RULE, SERVING, autoRetrain={"since": "1h", "minCalls": 50})
    stuck = retrains([rising], on, configmap, {"t-1": records}, now)
    assert stuck.manifests == [] and "give --usage-store-secret" in stuck.notes[0]
    [job] = retrains(
        [rising], on, configmap, {"t-1": records}, now, (("usage-store", "url"), "agent-llm")
    ).manifests
    assert job["spec"]["dataset"] == {
        "usageStore": {
            "urlSecretRef": {"name": "usage-store", "key": "url"},
            "route": "agent-llm",
            "task": "t-1",
            "since": "1h",
        }
    }
    assert (
        retrains([DRIFT], _route(SHADOW_RULE, autoRetrain={}), configmap, {"t-1": records}, now).notes == []
    )


def test_next_name_counts_on_from_the_highest_and_stays_a_valid_name() -> None:
    jobs = [{"metadata": {"name": n}} for n in ("tagger-1", "tagger-7", "tagger-x", "other-9")]
    assert next_name("tagger", jobs) == "tagger-8"
    assert next_name("tagger", []) == "tagger-1"
    assert len(next_name("d" * 70, [])) == 63


@pytest.mark.parametrize(
    ("conditions", "promote", "done"),
    [
        ([], True, False),
        (TRAINING, True, False),
        ([{"type": "Failed", "status": "True"}], True, True),
        (PROMOTED, True, True),
        ([{"type": "Trained", "status": "True"}], False, True),
        ([{"type": "Trained", "status": "True"}], True, False),
        ([{"type": "Promoted", "status": "False", "reason": "GateNotMet"}], True, True),
        ([{"type": "Promoted", "status": "False", "reason": "Rolling"}], True, False),
    ],
)
def test_a_finetunejob_is_finished_as_the_argo_cd_health_check_says(
    conditions: list[dict[str, Any]], promote: bool, done: bool
) -> None:
    job = _job("j", "", conditions, STORE)
    if not promote:
        del job["spec"]["promote"]
    assert FineTuneJob.model_validate(job).finished() is done
