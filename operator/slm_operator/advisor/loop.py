"""S6 as the scheduled advisor sees it: what changed since its last run, and the retrains it starts. Pure.

The last run published its task classifier (the ConfigMap ``slm-task-classifier``, or a file given with
``--previous-classifier``). This run's tasks are matched with the last run's through it (``carry_over``): a task
whose calls the previous classifier tags mostly (at least ``MATCH_SHARE``) with one earlier task keeps that
task's id, so the route's rules, the store's tags and the FineTuneJobs go on naming the same task however its top
terms moved; so does a task whose calls are mostly nearest to an earlier task that nothing else continues,
though beyond its threshold (the same task with rewritten prompts: drift). Then ``changes`` says, per task:

* ``NewTask``: it matches no earlier task (Normal Event: a candidate for an SLM; open-ended chat is not reported,
  nor is its drift);
* ``TaskDrift``: its calls moved away from what the earlier task was fitted on: the median cosine distance of
  its calls to the earlier task's centroid is at least ``drift`` above the median when that classifier was
  fitted (Warning);
* ``FallbackRising``: an SLM serves it (a route rule whose answering backend is an SLMDeployment) and the share
  of its served calls that fell back to the LLM is at least ``fallback_rise`` points higher in the later half of
  the analysed window than in the earlier half, with at least ``MIN_HALF_CALLS`` served calls in each (Warning);
* ``TaskGone``: an earlier task none of this run's tasks matched (the report says so; no Event).

A served call is one the SLM answered or one that fell back (``fallback_reason`` set): the captured record names
the backend that finally answered.

With ``spec.autoRetrain`` on the route, a drift or a rising fallback rate (as ``autoRetrain.on`` says) of a
task an SLM serves starts a FineTuneJob on its newest calls (``retrains``): a copy of the task's last
FineTuneJob with ``dataset.usageStore.since`` set to ``autoRetrain.since`` and a new name, unless one of the
task's FineTuneJobs has not finished (never more than one per task) or the window holds fewer than
``autoRetrain.minCalls`` of its calls.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.advisor.cluster import Clustering
from slm_operator.advisor.features import document
from slm_operator.advisor.records import CallRecord
from slm_operator.api.v1alpha1 import FineTuneJob, RetrainTrigger, SLMRoute
from slm_operator.contract import ADVISOR_TASK_ANNOTATION, API_VERSION
from slm_operator.events import Event
from slm_operator.routing.promotion import answering, rule_phases
from slm_operator.timebound import parse_time_bound

MATCH_SHARE = 0.5  # of a task's (sampled) calls the previous classifier tags with one earlier task
MATCH_SAMPLE = 2000  # calls of a task tagged with the previous classifier (the earliest in canonical order)
DRIFT = 0.1  # rise of the median distance to the earlier centroid that is drift (cosine distance)
FALLBACK_RISE = 5.0  # percentage points
MIN_HALF_CALLS = 20  # served calls in each half of the window for a fallback trend

Kind = Literal["NewTask", "TaskDrift", "FallbackRising", "TaskGone"]
#: the Event type of each finding (``TaskGone`` has none: it is in the report only)
EVENT_TYPE: dict[str, str] = {"NewTask": "Normal", "TaskDrift": "Warning", "FallbackRising": "Warning"}
RETRAIN_STARTED = "RetrainStarted"
#: which finding each ``autoRetrain.on`` value answers
TRIGGER_OF: dict[str, RetrainTrigger] = {
    "TaskDrift": RetrainTrigger.DRIFT,
    "FallbackRising": RetrainTrigger.FALLBACK_RISING,
}


class Finding(BaseModel):
    """One change since the last run."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    task: str
    message: str
    figures: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class Lineage:
    """How this run's tasks relate to the previous run's (``carry_over``)."""

    previous: TaskClassifier | None
    #: this run's task id -> the earlier task it continues (after renaming, the same id)
    matched: dict[str, str] = field(default_factory=dict)
    #: task id -> median distance of its sampled calls to the earlier task's centroid now
    medians: dict[str, float] = field(default_factory=dict)

    @property
    def gone(self) -> list[str]:
        if self.previous is None:
            return []
        kept = set(self.matched.values())
        return [t for t in self.previous.tasks if t not in kept]


def _renamed(clustering: Clustering, rename: Mapping[str, str]) -> Clustering:
    if all(k == v for k, v in rename.items()):
        return clustering
    tasks = [t.model_copy(update={"id": rename[t.id]}) for t in clustering.tasks]
    assignments = [None if a is None else rename[a] for a in clustering.assignments]
    c = clustering.classifier
    classifier = TaskClassifier.model_validate(
        {**c.model_dump(), "tasks": [rename.get(t, t) for t in c.tasks]}
    )
    return clustering.model_copy(
        update={"tasks": tasks, "assignments": assignments, "classifier": classifier}
    )


def carry_over(
    clustering: Clustering, records: Sequence[CallRecord], previous: TaskClassifier | None
) -> tuple[Clustering, Lineage]:
    """``clustering`` with each task that continues an earlier one renamed to the earlier id (in its tasks, the
    assignments and the classifier), and the ``Lineage``.

    A task continues the earlier task that the previous classifier tags (within its threshold) on at least
    ``MATCH_SHARE`` of its sampled calls; the task with the most such calls wins an earlier task. Then a task
    still unmatched continues an earlier task still unmatched that is nearest to at least ``MATCH_SHARE`` of its
    calls though beyond the threshold: the same task, changed (its prompts were rewritten), which ``changes``
    reports as drift. A task matching none keeps its own id (numbered when that id is an earlier task's)."""
    if previous is None or not previous.tasks:
        return clustering, Lineage(previous)
    thresholds = np.asarray(previous.thresholds, dtype=np.float32)
    strict: list[tuple[int, str, int]] = []  # (calls, task, earlier task index)
    loose: list[tuple[int, str, int]] = []
    distances: dict[str, np.ndarray[Any, Any]] = {}
    for task in clustering.tasks:
        sample = task.members[:MATCH_SAMPLE]
        d = np.stack([previous.distances(document(records[i].request, None)) for i in sample])
        distances[task.id] = d
        nearest = d.argmin(axis=1)
        within = d[np.arange(len(sample)), nearest] <= thresholds[nearest]
        for votes, chosen in ((strict, nearest[within]), (loose, nearest)):
            counts = np.bincount(chosen, minlength=len(previous.tasks))
            best = int(counts.argmax())
            if counts[best] >= MATCH_SHARE * len(sample):
                votes.append((int(counts[best]), task.id, best))
    matched: dict[str, int] = {}
    for votes in (strict, loose):
        for _, task_id, earlier in sorted(votes, key=lambda v: (-v[0], v[1])):
            if task_id not in matched and earlier not in matched.values():
                matched[task_id] = earlier
    rename = {t: previous.tasks[e] for t, e in matched.items()}
    medians = {previous.tasks[e]: round(float(np.median(distances[t][:, e])), 4) for t, e in matched.items()}
    taken = set(rename.values())
    for task in clustering.tasks:
        if task.id not in rename:
            new, suffix = task.id, 1
            while new in taken:
                suffix += 1
                new = f"{task.id}-{suffix}"
            rename[task.id] = new
            taken.add(new)
    continued = {previous.tasks[e]: previous.tasks[e] for e in matched.values()}
    return _renamed(clustering, rename), Lineage(previous, continued, medians)


@dataclass(frozen=True)
class Served:
    """A task an SLM serves through the route: the rule, its answering backend and that backend's deployment."""

    rule: str
    backend: str
    deployment: str


def served_tasks(route: SLMRoute | None) -> dict[str, Served]:
    """The tasks of the route's rules whose answering backend (by the rule's promotion phase, as the route's
    status says) is an SLMDeployment; the first rule of a task wins, as in routing."""
    if route is None:
        return {}
    spec = route.spec
    deployments = {
        b.name: b.slm_deployment_ref.name for b in spec.backends if b.slm_deployment_ref is not None
    }
    phases = rule_phases(spec, route.status)
    out: dict[str, Served] = {}
    for rule in spec.rules or []:
        if rule.backend is None or rule.match is None:
            continue
        backend = answering(rule, phases[rule.name]) if rule.promote is not None else rule.backend
        for task in rule.match.tasks or []:
            if task not in out and backend in deployments:
                out[task] = Served(rule.name, backend, deployments[backend])
    return out


def _fallback_trend(calls: Sequence[CallRecord], backend: str) -> tuple[float, float, int, int] | None:
    """The fallback percentage of the served calls in the earlier and the later half of their time span, and
    the calls in each; None without times or with too few calls in a half."""
    served = sorted(
        (r for r in calls if r.time is not None and (r.backend == backend or r.fallback_reason)),
        key=lambda r: r.time,  # type: ignore[arg-type,return-value]  # filtered: never None
    )
    if len(served) < 2 * MIN_HALF_CALLS:
        return None
    first, last = served[0].time, served[-1].time
    assert first is not None and last is not None
    middle = first + (last - first) / 2
    early = [r for r in served if r.time is not None and r.time < middle]
    late = served[len(early) :]
    if len(early) < MIN_HALF_CALLS or len(late) < MIN_HALF_CALLS:
        return None

    def percent(rs: Sequence[CallRecord]) -> float:
        return 100.0 * sum(1 for r in rs if r.fallback_reason) / len(rs)

    return percent(early), percent(late), len(early), len(late)


def changes(
    clustering: Clustering,
    lineage: Lineage,
    records: Sequence[CallRecord],
    route: SLMRoute | None,
    *,
    drift: float = DRIFT,
    fallback_rise: float = FALLBACK_RISE,
) -> list[Finding]:
    """What changed since the run whose classifier ``lineage.previous`` is (the module's docstring says how);
    the fallback trend needs no earlier run."""
    out: list[Finding] = []
    previous = lineage.previous
    for task in clustering.tasks:
        if previous is not None and task.id not in lineage.matched and not task.diffuse:
            out.append(
                Finding(
                    kind="NewTask",
                    task=task.id,
                    message=f"new task {task.id} ({task.label}): {task.size} calls that no task of the last "
                    "run covers",
                    figures={"calls": task.size},
                )
            )
        earlier = lineage.matched.get(task.id)
        if previous is not None and earlier is not None and previous.medians and not task.diffuse:
            then = previous.medians[previous.tasks.index(earlier)]
            now = lineage.medians[earlier]
            if now - then >= drift:
                out.append(
                    Finding(
                        kind="TaskDrift",
                        task=task.id,
                        message=f"task {task.id} drifted: the median distance of its calls to what it was fitted "
                        f"on rose from {then:.2f} to {now:.2f} (drift at +{drift:.2f})",
                        figures={"median_then": then, "median_now": now},
                    )
                )
    served = served_tasks(route)
    members: dict[str, list[CallRecord]] = {}
    for record, task_id in zip(records, clustering.assignments, strict=True):
        if task_id is not None:
            members.setdefault(task_id, []).append(record)
    for task_id, s in served.items():
        trend = _fallback_trend(members.get(task_id, []), s.backend)
        if trend is None:
            continue
        early, late, n_early, n_late = trend
        if late - early >= fallback_rise:
            out.append(
                Finding(
                    kind="FallbackRising",
                    task=task_id,
                    message=f"task {task_id} on {s.backend}: {late:.1f} % of its calls fell back to the LLM in the "
                    f"later half of the window ({n_late} calls), {early:.1f} % in the earlier half ({n_early})",
                    figures={"early_percent": round(early, 2), "late_percent": round(late, 2)},
                )
            )
    for gone in lineage.gone:
        out.append(
            Finding(
                kind="TaskGone", task=gone, message=f"task {gone} of the last run had no calls in this one"
            )
        )
    return out


def events(findings: Sequence[Finding], route: SLMRoute) -> list[Event]:
    """The Events of the findings, on the route; ``TaskGone`` has none."""
    obj = route.to_k8s()
    return [Event.on(obj, EVENT_TYPE[f.kind], f.kind, f.message) for f in findings if f.kind in EVENT_TYPE]


@dataclass(frozen=True)
class Retrains:
    manifests: list[dict[str, Any]]
    #: one line per task a finding would retrain: what was started, or why not
    notes: list[str]
    events: list[Event]


def _task_jobs(jobs: Sequence[Mapping[str, Any]], task: str, deployment: str) -> list[Mapping[str, Any]]:
    def ours(j: Mapping[str, Any]) -> bool:
        meta = j.get("metadata") or {}
        target = (((j.get("spec") or {}).get("promote") or {}).get("slmDeploymentRef") or {}).get("name")
        return (meta.get("annotations") or {}).get(ADVISOR_TASK_ANNOTATION) == task or target == deployment

    return sorted(
        (j for j in jobs if ours(j)),
        key=lambda j: (str(j["metadata"].get("creationTimestamp") or ""), str(j["metadata"]["name"])),
    )


def next_name(deployment: str, jobs: Sequence[Mapping[str, Any]]) -> str:
    """``<deployment>-<n>``, n one more than the highest of the FineTuneJobs so named (1 with none)."""
    pattern = re.compile(re.escape(deployment) + r"-(\d+)$")
    numbers = [int(m.group(1)) for j in jobs if (m := pattern.match(str(j["metadata"]["name"])))]
    suffix = f"-{max(numbers, default=0) + 1}"
    return deployment[: 63 - len(suffix)] + suffix


def _newest(
    dataset: Mapping[str, Any], task: str, since: str, store: tuple[tuple[str, str], str] | None
) -> dict[str, Any] | None:
    """A retrain's dataset: the task's calls of the last ``since`` in the usage store the last job read, else in
    ``store`` (Secret, route); None when neither is known (the last job read a ConfigMap)."""
    if "usageStore" in dataset:
        return {"usageStore": {**dataset["usageStore"], "task": task, "since": since}}
    if store is None:
        return None
    secret, route_name = store
    return {
        "usageStore": {
            "urlSecretRef": {"name": secret[0], "key": secret[1]},
            "route": route_name,
            "task": task,
            "since": since,
        }
    }


def retrains(
    findings: Sequence[Finding],
    route: SLMRoute | None,
    jobs: Sequence[Mapping[str, Any]],
    members: Mapping[str, Sequence[CallRecord]],
    now: datetime,
    store: tuple[tuple[str, str], str] | None = None,
) -> Retrains:
    """The FineTuneJobs ``spec.autoRetrain`` starts for the findings (the module's docstring says when), with a
    note for each task it does or does not retrain, and a ``RetrainStarted`` Event per job. ``jobs``: the
    namespace's FineTuneJobs (JSON form); ``store``: the usage store's Secret (name, key) and the route's name,
    for a task whose last FineTuneJob read a ConfigMap."""
    auto = route.spec.auto_retrain if route is not None else None
    out = Retrains([], [], [])
    if route is None or auto is None:
        return out
    served = served_tasks(route)
    since = parse_time_bound(auto.since, now)
    done: set[str] = set()
    for f in findings:
        trigger = TRIGGER_OF.get(f.kind)
        if trigger is None or trigger not in auto.on or f.task not in served or f.task in done:
            continue
        done.add(f.task)
        deployment = served[f.task].deployment
        task_jobs = _task_jobs(jobs, f.task, deployment)
        running = [
            str(j["metadata"]["name"]) for j in task_jobs if not FineTuneJob.model_validate(j).finished()
        ]
        fresh = sum(1 for r in members.get(f.task, []) if r.time is not None and r.time >= since)
        why = f"autoRetrain of task {f.task} ({f.kind})"
        if running:
            out.notes.append(f"{why} waits: FineTuneJob {running[-1]} has not finished")
            continue
        if fresh < auto.min_calls:
            out.notes.append(
                f"{why} waits: {fresh} of its calls in the last {auto.since}, {auto.min_calls} needed (minCalls)"
            )
            continue
        if not task_jobs:
            out.notes.append(
                f"{why}: no earlier FineTuneJob of the task to copy (advise proposes one when it moves)"
            )
            continue
        spec = copy.deepcopy(dict(task_jobs[-1]["spec"]))
        dataset = _newest(spec.get("dataset") or {}, f.task, auto.since, store)
        if dataset is None:
            out.notes.append(
                f"{why}: its last FineTuneJob read a ConfigMap; give --usage-store-secret so a retrain reads the "
                "newest calls from the store"
            )
            continue
        spec["dataset"] = dataset
        name = next_name(deployment, jobs)
        pvc = (spec.get("output") or {}).get("pvc")
        if pvc is not None:
            spec["output"] = {"pvc": {**pvc, "path": f"{deployment}/{name}"}}
        namespace = route.metadata.namespace
        out.manifests.append(
            {
                "apiVersion": API_VERSION,
                "kind": "FineTuneJob",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "annotations": {ADVISOR_TASK_ANNOTATION: f.task},
                },
                "spec": spec,
            }
        )
        message = (
            f"started FineTuneJob {name} for task {f.task} on its calls of the last {auto.since} ({fresh}): "
            f"{f.message}"
        )
        out.notes.append(message)
        out.events.append(Event.on(route.to_k8s(), "Normal", RETRAIN_STARTED, message))
    return out
