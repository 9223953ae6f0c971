"""One ``advise`` run as a pure function: the clustering, the profiles, the selection, the report and the files.

``advise_records`` takes what the shell gathered (the call records, the clustering of them, the pool and the
route from the manifests, the settings) and returns ``Outputs``: the ``Advice`` the report renders, the
manifests to write or apply, ``tasks.json`` and ``assignments.jsonl``. The shell (``slm_operator.advisor_run``)
reads the files or the store, runs the clustering, sanitises the examples and writes the results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from slm_operator.advisor.classifier import TaskClassifier
from slm_operator.advisor.cluster import Clustering
from slm_operator.advisor.loop import DRIFT, FALLBACK_RISE, carry_over, changes, events, retrains
from slm_operator.advisor.profile import TaskProfile, TokenPrice, profile_task, tokens_of, window
from slm_operator.advisor.proposals import (
    classifier_configmap,
    configmap_dataset,
    dataset_lines,
    deployment_manifest,
    finetune_manifest,
    members_by_task,
    route_with_shadow,
    store_dataset,
)
from slm_operator.advisor.records import CallRecord
from slm_operator.advisor.report import Advice
from slm_operator.advisor.select import PoolContext, Recommendation, SelectionSettings, select
from slm_operator.api.v1alpha1 import SLMRoute
from slm_operator.contract import TASK_CLASSIFIER_CONFIGMAP
from slm_operator.events import Event

#: a user turn the report shows per task, after the shell's sanitiser
Example = Callable[[CallRecord], str]


@dataclass(frozen=True)
class Inputs:
    records: Sequence[CallRecord]
    skipped: int
    source: str
    clustering: Clustering
    settings: SelectionSettings
    pool: PoolContext | None = None
    route: SLMRoute | None = None
    price: TokenPrice | None = None
    currency: str = "USD"
    adapters_pvc: str = "slm-adapters"
    #: the Secret (name, key) with the usage store's URL in the namespace: the FineTuneJobs read the store
    store_secret: tuple[str, str] | None = None
    #: the route (name) the calls came through, in the namespace
    route_name: str | None = None
    #: FineTuneJob spec fields every FineTuneJob gets (``proposals.TEMPLATE_FIELDS``; ``--finetune-template``)
    finetune_template: Mapping[str, Any] | None = None
    #: the classifier the last run published: this run's tasks continue its tasks' ids (``loop.carry_over``)
    previous: TaskClassifier | None = None
    #: the namespace's FineTuneJobs (JSON form), for ``spec.autoRetrain``
    jobs: Sequence[Mapping[str, Any]] = ()
    drift: float = DRIFT
    fallback_rise: float = FALLBACK_RISE


@dataclass(frozen=True)
class Outputs:
    advice: Advice
    manifests: list[dict[str, Any]]
    tasks_json: str
    assignments_jsonl: str
    #: the clustering with the ids of the tasks it continues (``loop.carry_over``)
    clustering: Clustering
    #: the Events to post on the route with ``--apply`` (findings and retrains)
    events: list[Event] = field(default_factory=list)


def _profiles(inputs: Inputs) -> list[TaskProfile]:
    records = inputs.records
    totals = (len(records), sum(sum(tokens_of(r)) for r in records))
    span = window(records)
    return [
        profile_task(
            t.id,
            t.label,
            [records[i] for i in t.members],
            totals=totals,
            span=span,
            price=inputs.price,
        )
        for t in inputs.clustering.tasks
    ]


def assumptions(inputs: Inputs) -> list[str]:
    s = inputs.settings
    out = [
        "A task is worth moving with at least "
        f"{s.min_calls} calls and {s.min_share:.1%} of the traffic; a diffuse cluster (open-ended chat) stays "
        "on the LLM.",
        "Model sizes: the floors of `capability_floor` (0.5B for short answers, 1B for tool calls and answers up "
        "to 512 tokens, 3B for longer ones); the FineTuneJob's gate checks the chosen model on the task's data.",
        "Context: p99 prompt + p99 completion tokens, plus 25 %, rounded up to 512.",
        "Replicas: the busiest minute's calls per second x the LLM's p95 latency (the SLM assumed no slower) / "
        f"{s.max_concurrent_sequences} sequences per replica, at least {s.min_replicas}.",
        f"GPU cost: {s.gpu_hour_cost:g} {inputs.currency} per GPU-hour; a replica costs its share's memory "
        "over the GPU's memory.",
        "Licences allowed: "
        + (", ".join(sorted(s.licenses)) if s.licenses is not None else "any")
        + " (`--license`).",
    ]
    if inputs.price:
        out.append(
            f"LLM prices: {inputs.price.input_per_million:g} {inputs.currency} per million prompt tokens, "
            f"{inputs.price.output_per_million:g} per million completion tokens; monthly = 30 days over the "
            "analysed window."
        )
    else:
        out.append("No LLM prices given (`--llm-price`): no costs or savings are projected.")
    return out


def _manifests(inputs: Inputs, moves: Sequence[Recommendation]) -> list[dict[str, Any]]:
    ctx = inputs.pool
    out: list[dict[str, Any]] = []
    if ctx is None:
        return out
    members = members_by_task(inputs.records, inputs.clustering.assignments)
    ns = inputs.settings.namespace
    for rec in moves:
        out.append(
            deployment_manifest(rec, ctx.pool.metadata.name, ns, inputs.settings.max_concurrent_sequences)
        )
        extra: list[dict[str, Any]] = []
        if inputs.store_secret and inputs.route_name:
            dataset = store_dataset(rec, inputs.store_secret, inputs.route_name)
        else:
            configmap, dataset = configmap_dataset(rec, ns, dataset_lines(members.get(rec.task, []))[0])
            extra.append(configmap)
        job = finetune_manifest(rec, ctx.pool, ns, dataset, inputs.adapters_pvc, inputs.finetune_template)
        if job is not None:  # the pool has a segment or a lending reservation to train on
            out += [*extra, job]
    if inputs.route is not None and moves:
        out.append(route_with_shadow(inputs.route, moves))
    out.append(classifier_configmap(TASK_CLASSIFIER_CONFIGMAP, ns, inputs.clustering.classifier.to_json()))
    return out


def advise_records(inputs: Inputs, now: datetime, example: Example, notes: Sequence[str] = ()) -> Outputs:
    """Everything an ``advise`` run produces from what the shell gathered; ``notes`` end the assumptions."""
    clustering, lineage = carry_over(inputs.clustering, inputs.records, inputs.previous)
    inputs = replace(inputs, clustering=clustering)
    found = changes(
        clustering,
        lineage,
        inputs.records,
        inputs.route,
        drift=inputs.drift,
        fallback_rise=inputs.fallback_rise,
    )
    store = (inputs.store_secret, inputs.route_name) if inputs.store_secret and inputs.route_name else None
    retrain = retrains(
        found,
        inputs.route,
        inputs.jobs,
        members_by_task(inputs.records, clustering.assignments),
        now,
        store,
    )
    profiles = _profiles(inputs)
    diffuse = {t.id for t in inputs.clustering.tasks if t.diffuse}
    recs: list[Recommendation] = []
    if inputs.pool is not None:
        recs = select(profiles, diffuse, inputs.pool, inputs.settings)
    examples = {
        t.id: [text for i in t.members[:3] if (text := example(inputs.records[i]))]
        for t in inputs.clustering.tasks
    }
    advice = Advice(
        generated=now,
        source=inputs.source,
        calls=len(inputs.records),
        skipped=inputs.skipped,
        window=window(inputs.records),
        noise=sum(1 for a in inputs.clustering.assignments if a is None),
        tasks=profiles,
        recommendations=recs,
        pool=inputs.pool.pool.metadata.name if inputs.pool else None,
        currency=inputs.currency,
        assumptions=[*assumptions(inputs), *notes],
        examples=examples,
        changes=found,
        compared=lineage.previous is not None,
        retrains=retrain.notes,
    )
    moves = advice.moved
    tasks_json = json.dumps(
        {
            "tasks": [
                {
                    **p.model_dump(mode="json"),
                    "cohesion": t.cohesion,
                    "diffuse": t.diffuse,
                    "topTerms": t.top_terms,
                    "recommendation": (
                        r.model_dump(mode="json") if (r := advice.recommendation(p.id)) else None
                    ),
                }
                for p, t in zip(profiles, inputs.clustering.tasks, strict=True)
            ],
            "noise": advice.noise,
            "calls": advice.calls,
            "changes": [f.model_dump(mode="json") for f in found],
            "retrains": retrain.notes,
        },
        indent=2,
    )
    assignments = "".join(
        json.dumps({"id": r.id, "task": a}) + "\n"
        for r, a in zip(inputs.records, inputs.clustering.assignments, strict=True)
    )
    posted = [*(events(found, inputs.route) if inputs.route is not None else []), *retrain.events]
    return Outputs(
        advice, [*_manifests(inputs, moves), *retrain.manifests], tasks_json, assignments, clustering, posted
    )
