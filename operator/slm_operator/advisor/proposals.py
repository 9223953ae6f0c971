"""The manifests that move a task to its SLM, for review, GitOps or ``advise --apply``. Pure.

For each task the advisor moves (``select.Recommendation`` with ``decision == "Move"``):

* the **SLMDeployment** it was planned as (model, context, replicas; ``slm.io/advisor-task`` names the task);
* a **FineTuneJob** on the task's calls, from the usage store (the route's calls tagged with the task) when the
  store's Secret is known, else from a **ConfigMap** of them (capture records, at most ``DATASET_BYTES``); it
  adapts the model on the pool's fine-tuning segment (or borrows its LLM-fallback reservation) and
  promotes the adapter onto the deployment when it passes the gate;
* a **rule** in the SLMRoute the calls came through: the task's calls keep going to the backend that answers
  them now, and a share is copied to the SLM in **shadow**; the gateway compares the answers and promotes the
  SLM to serving the task once they agree enough (``promote``, with the API's defaults), and back (S6).

And once per analysis the **task classifier** as a ConfigMap (``classifier.json``), which the gateway loads to tag
each call with its task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from slm_operator.advisor.records import CallRecord
from slm_operator.advisor.select import Recommendation
from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool, SLMRoute
from slm_operator.contract import (
    ADVISOR_TASK_ANNOTATION,
    API_VERSION,
    TASK_CLASSIFIER_CONFIGMAP,
    TASK_CLASSIFIER_KEY,
)

#: A ConfigMap holds at most 1 MiB; the dataset keeps under it with room for the object's metadata.
DATASET_BYTES = 900_000
#: Share of a moved task's calls copied to its SLM in shadow.
SHADOW_PERCENT = 10


def dataset_lines(members: Sequence[CallRecord], limit: int = DATASET_BYTES) -> tuple[str, int]:
    """The task's calls as JSON lines the trainer reads (``request`` and ``response``), newest first, until
    ``limit`` bytes; and how many it kept."""
    ordered = sorted(members, key=lambda r: (r.time is None, r.time), reverse=True)
    lines: list[str] = []
    size = 0
    for r in ordered:
        if r.response is None:
            continue
        line = json.dumps({"request": r.request, "response": r.response}, separators=(",", ":"))
        if size + len(line) + 1 > limit:
            break
        lines.append(line)
        size += len(line) + 1
    return "".join(line + "\n" for line in lines), len(lines)


def trainer_place(pool: GPUPool) -> dict[str, str] | None:
    """Where a FineTuneJob of this pool may train: its first fine-tuning segment, else a reservation that lends
    its GPUs; None when the pool has neither."""
    if pool.spec.segments:
        return {"segment": pool.spec.segments[0].name}
    for r in pool.spec.reservations or []:
        if r.lend_to is not None:
            return {"borrowFrom": r.name}
    return None


def deployment_manifest(rec: Recommendation, pool: str, namespace: str, max_seqs: int) -> dict[str, Any]:
    assert rec.chosen is not None and rec.deployment_name is not None
    return {
        "apiVersion": API_VERSION,
        "kind": "SLMDeployment",
        "metadata": {
            "name": rec.deployment_name,
            "namespace": namespace,
            "annotations": {ADVISOR_TASK_ANNOTATION: rec.task},
        },
        "spec": {
            "poolRef": {"name": pool},
            "model": {
                "name": rec.chosen.model,
                "maxContextTokens": rec.context_tokens,
                "maxConcurrentSequences": max_seqs,
            },
            "replicas": rec.chosen.replicas,
            "qos": "Burstable",
        },
    }


def configmap_dataset(
    rec: Recommendation, namespace: str, data: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ConfigMap holding the task's calls, and the FineTuneJob dataset that reads it."""
    assert rec.deployment_name is not None
    name = f"{rec.deployment_name}-data"
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {ADVISOR_TASK_ANNOTATION: rec.task},
        },
        "data": {"calls.jsonl": data},
    }
    return configmap, {"configMapRef": {"name": name, "key": "calls.jsonl"}}


def store_dataset(rec: Recommendation, secret: tuple[str, str], route: str) -> dict[str, Any]:
    """The FineTuneJob dataset of the task's calls in the usage store: the route's calls tagged with the task
    (``advise --apply`` tags the ones it assigned; the gateway tags new ones with the classifier)."""
    return {
        "usageStore": {
            "urlSecretRef": {"name": secret[0], "key": secret[1]},
            "route": route,
            "task": rec.task,
        }
    }


class TemplateError(ValueError):
    """A FineTuneJob template (``advise --finetune-template``) that cannot make a valid FineTuneJob."""


#: the FineTuneJob spec fields a template may set; ``advise`` sets the others per task (pool, place, base model,
#: dataset, output) and ``promote.slmDeploymentRef``
TEMPLATE_FIELDS = (
    "modelSource",
    "method",
    "sanitization",
    "hyperparameters",
    "promote",
    "gpus",
    "image",
    "backoffLimit",
    "activeDeadlineSeconds",
)


def check_template(template: Mapping[str, Any]) -> None:
    """Refuses a template that sets a field ``advise`` sets per task, naming the fields it may set."""
    promote = template.get("promote")
    owned = [k for k in template if k not in TEMPLATE_FIELDS]
    if isinstance(promote, Mapping) and "slmDeploymentRef" in promote:
        owned.append("promote.slmDeploymentRef")
    if owned:
        raise TemplateError(
            f"spec.{owned[0]} is set per task by advise; a FineTuneJob template sets only "
            f"{', '.join(TEMPLATE_FIELDS)} (without promote.slmDeploymentRef)"
        )


def _filled(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in values.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, Mapping):
        return {k: _filled(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_filled(v, values) for v in value]
    return value


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s fields, objects merged field by field, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def finetune_manifest(
    rec: Recommendation,
    pool: GPUPool,
    namespace: str,
    dataset: Mapping[str, Any],
    adapters_pvc: str,
    template: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any] | None:
    """The task's FineTuneJob (None when the pool has nowhere to train): the advisor's defaults, then the
    ``template``'s spec fields (``{model}``, ``{deployment}`` and ``{task}`` in its strings filled in), named
    ``name`` (default ``<deployment>-1``) with its adapter under ``<deployment>/<name>``. ``TemplateError``
    when the template sets a field the advisor owns or the result is not a valid FineTuneJob."""
    assert rec.chosen is not None and rec.deployment_name is not None
    place = trainer_place(pool)
    if place is None:
        return None
    name = name or f"{rec.deployment_name}-1"[:63]
    spec: dict[str, Any] = {
        "poolRef": {"name": pool.metadata.name},
        **place,
        "baseModel": rec.chosen.model,
        "method": "LoRA",
        "dataset": dict(dataset),
        "output": {"pvc": {"claimName": adapters_pvc, "path": f"{rec.deployment_name}/{name}"}},
        "promote": {
            "slmDeploymentRef": {"name": rec.deployment_name},
            "evaluation": {"minScorePercent": 80},
        },
    }
    if template:
        check_template(template)
        values = {"model": rec.chosen.model, "deployment": rec.deployment_name, "task": rec.task}
        spec = merged(spec, _filled(template, values))
    doc = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {ADVISOR_TASK_ANNOTATION: rec.task},
        },
        "spec": spec,
    }
    try:
        FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TemplateError(f"the FineTuneJob template makes an invalid {where}: {first['msg']}") from None
    return doc


def llm_backend(spec: Mapping[str, Any]) -> str:
    """The backend that answers a task's calls before it moves: the route's default, else its fallback, else
    its first external endpoint, else its first backend."""
    external = [b["name"] for b in spec["backends"] if "external" in b]
    fallback = (spec.get("fallback") or {}).get("backend")
    return str(spec.get("defaultBackend") or fallback or (external or [spec["backends"][0]["name"]])[0])


def route_with_shadow(route: SLMRoute, moves: Sequence[Recommendation]) -> dict[str, Any]:
    """The route with a backend per moved task and, ahead of its rules, one rule per task that keeps the task
    on the backend that answers it now (``llm_backend``) and copies ``SHADOW_PERCENT`` % of its calls to the SLM; and, unless it names
    one already, the task classifier ``advise`` publishes. A task the route already has a rule for is left as
    it is."""
    dumped = route.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    spec = dumped["spec"]
    names = {b["name"] for b in spec["backends"]}
    llm = llm_backend(spec)
    rules: list[dict[str, Any]] = spec.get("rules") or []
    ruled = {t for r in rules for t in (r.get("match") or {}).get("tasks") or []}
    new_rules = []
    for rec in moves:
        if rec.deployment_name is None or rec.task in ruled:
            continue
        backend = rec.deployment_name
        if backend not in names:
            spec["backends"].append({"name": backend, "slmDeploymentRef": {"name": backend}})
            names.add(backend)
        new_rules.append(
            {
                "name": f"task-{rec.task}"[:63].rstrip("-."),
                "match": {"tasks": [rec.task]},
                "backend": llm,
                "shadow": {"backends": [backend], "percent": SHADOW_PERCENT},
                # serves once its shadow answers agree enough, back to the LLM when it falls back too often
                "promote": {"backend": backend},
            }
        )
    spec["rules"] = new_rules + rules
    # the gateway tags calls without `x-slm-task` with the classifier this run publishes
    spec.setdefault("taskClassifier", {"configMapRef": {"name": TASK_CLASSIFIER_CONFIGMAP}})
    meta = dumped["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "SLMRoute",
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
        "spec": spec,
    }


def classifier_configmap(name: str, namespace: str, classifier_json: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {TASK_CLASSIFIER_KEY: classifier_json},
    }


def members_by_task(
    records: Sequence[CallRecord], assignments: Sequence[str | None]
) -> Mapping[str, list[CallRecord]]:
    out: dict[str, list[CallRecord]] = {}
    for record, task in zip(records, assignments, strict=True):
        if task is not None:
            out.setdefault(task, []).append(record)
    return out
