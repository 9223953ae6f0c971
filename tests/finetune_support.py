"""Builders for the FineTuneJob tests: the objects a pass reads, in the API's JSON form."""

from __future__ import annotations

import copy
import json
from typing import Any

from slm_operator.api.v1alpha1 import FineTuneJob, GPUPool, SLMDeployment
from slm_operator.contract import FINETUNE_JOB_LABEL, GPU_ROLES_ANNOTATION, SPEC_HASH_ANNOTATION
from slm_operator.finetune import FineTuneWorld
from slm_operator.render import deployment_spec_hash

NOW = "2026-11-26T10:00:00Z"
NS = "agents"


def ftj(name: str = "lora", gate: int = 0, created: str = "2026-11-26T09:00:00Z", **spec: Any) -> FineTuneJob:
    raw: dict[str, Any] = {
        "poolRef": {"name": "h100"},
        "segment": "finetune",
        "baseModel": "qwen2.5-3b-instruct",
        "dataset": {"configMapRef": {"name": "calls"}},
        "sanitization": {"redact": ["Email", "APIKey"]},
        "output": {"pvc": {"claimName": "adapters", "path": f"extractor/{name}"}},
        "promote": {"slmDeploymentRef": {"name": "extractor"}, "evaluation": {"minScorePercent": gate}},
    }
    raw.update(spec)
    raw = {k: v for k, v in raw.items() if v is not None}
    return FineTuneJob.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": created,
            },
            "spec": raw,
        }
    )


def pool(name: str = "h100", selector: str = "h100", lend: str = "BestEffort") -> GPUPool:
    return GPUPool.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"matchLabels": {"example.com/pool": selector}},
                "reservations": [
                    {"name": "llm-fallback", "purpose": "LLMFallback", "gpus": 2, "lendTo": lend}
                ],
                "segments": [{"name": "finetune", "purpose": "FineTuning", "gpus": 1}],
            },
        }
    )


def node(name: str, selector: str, roles: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"example.com/pool": selector},
            "annotations": {GPU_ROLES_ANNOTATION: json.dumps(roles)},
        },
    }


NODES = [
    node("gpu-1", "h100", {"7": "finetune"}),
    node("gpu-2", "h100", {"6": "llm-fallback", "7": "llm-fallback"}),
    node("gpu-3", "h100", {}),
]


def target(
    replicas: int = 2, annotations: dict[str, str] | None = None, placed: int | None = None
) -> SLMDeployment:
    raw: dict[str, Any] = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {
            "name": "extractor",
            "namespace": NS,
            "uid": "dep-uid",
            "annotations": annotations or {},
        },
        "spec": {"poolRef": {"name": "h100"}, "model": {"name": "qwen2.5-3b-instruct"}, "replicas": replicas},
    }
    if placed is not None:
        raw["status"] = {"placedReplicas": placed}
    return SLMDeployment.model_validate(raw)


def step(
    state: str, exit_code: int | None = None, message: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """One container status (``state``: waiting, running, terminated)."""
    if state == "terminated":
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        }
        if message is not None:
            term["message"] = message
        return {"state": {"terminated": term}}
    if state == "waiting":
        return {"state": {"waiting": {"reason": reason, **({"message": message} if message else {})}}}
    return {"state": {"running": {"startedAt": NOW}}}


def job_pod(
    name: str,
    *,
    sanitize: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    created: str = "2026-11-26T09:10:00Z",
    phase: str = "Running",
    node_name: str = "gpu-1",
    disruption: str | None = None,
    export: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pod of the training Job as the kubelet reports it; ``export``: it has the usage store's export step
    (``dataset.usageStore``), in this state."""
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    inits = ["export", "sanitize"] if export is not None else ["sanitize"]
    if export is not None:
        status["initContainerStatuses"] = [{"name": "export", **export}]
    if sanitize is not None:
        status.setdefault("initContainerStatuses", []).append({"name": "sanitize", **sanitize})
    if train is not None:
        status["containerStatuses"] = [{"name": "train", **train}]
    if disruption is not None:
        status["conditions"].append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "message": "preempted by llm-0",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "creationTimestamp": created,
            "labels": {FINETUNE_JOB_LABEL: "lora"},
        },
        "spec": {"nodeName": node_name, "initContainers": [{"name": n} for n in inits]},
        "status": status,
    }


SANITIZED = json.dumps({"records": 120, "skipped": 2, "redacted": {"Email": 10, "Person": 7, "APIKey": 0}})


def scores(score: int | None, base: int | None = 12, incumbent: int | None = None) -> str:
    return json.dumps(
        {
            "evalScorePercent": score,
            "baseScorePercent": base,
            "incumbentScorePercent": incumbent,
            "examples": {"train": 900, "eval": 100},
            "steps": 300,
            "resumedFromStep": None,
        }
    )


def job(
    name: str = "lora-train",
    *,
    complete: bool = False,
    failed: tuple[str, str] | None = None,
    completion: str = "2026-11-26T09:30:00Z",
    incumbent: bool = False,
) -> dict[str, Any]:
    conds = []
    status: dict[str, Any] = {"startTime": "2026-11-26T09:05:00Z", "conditions": conds}
    if complete:
        conds.append({"type": "Complete", "status": "True"})
        status["completionTime"] = completion
    if failed is not None:
        conds.append({"type": "Failed", "status": "True", "reason": failed[0], "message": failed[1]})
    args = ["train", "--base-model", "x", *(["--incumbent", "/incumbent/x"] if incumbent else [])]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": {"spec": {"containers": [{"name": "train", "args": args}]}}},
        "status": status,
    }


def completed_pods(
    score: int | None = 90, base: int | None = 12, incumbent: int | None = None
) -> list[dict[str, Any]]:
    return [
        job_pod(
            "lora-train-a",
            sanitize=step("terminated", 0, SANITIZED),
            train=step("terminated", 0, scores(score, base, incumbent)),
            phase="Succeeded",
        )
    ]


def world(f: FineTuneJob, **kw: Any) -> FineTuneWorld:
    args: dict[str, Any] = {
        "ftj": f,
        "pool": pool(),
        "nodes": copy.deepcopy(NODES),
        "job": None,
        "job_pods": [],
        "target": target(),
        "now": NOW,
        "trainer_image": "trainer:1",
        "priority_class": "slm-finetune",
    }
    args.update(kw)
    return FineTuneWorld(**args)


def replica(
    dep: SLMDeployment, ordinal: int, *, ready: bool, started: str = NOW, restarts: int = 0, **status: Any
) -> dict[str, Any]:
    """A replica pod of ``dep`` on the weights its annotations name now."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"extractor-{ordinal}-{deployment_spec_hash(dep)[:5]}",
            "namespace": NS,
            "annotations": {SPEC_HASH_ANNOTATION: deployment_spec_hash(dep)},
        },
        "spec": {"nodeName": "gpu-3"},
        "status": {
            "phase": "Running",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "server", "restartCount": restarts, **status}],
        },
    }


def condition(st: Any, type_: str) -> Any:
    return next(c for c in st.conditions or [] if c.type == type_)
