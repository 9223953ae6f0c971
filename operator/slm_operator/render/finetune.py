"""Pure builders for FineTuneJob: the batch/v1 Job on the pool's fine-tuning segment, and its status.

The Job has two steps: an init container running ``slm-operator sanitize`` (the operator's own image) that
removes the configured PII classes from the dataset into a scratch volume, and the trainer container that
adapts the base model and writes the result to the output PVC. The Job is pinned to the nodes whose GPUs the
plan gave to the segment and requests whole GPUs (``nvidia.com/gpu``), with the fine-tuning PriorityClass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from slm_operator.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, FineTuneMethod
from slm_operator.contract import (
    API_VERSION,
    APP_MANAGED_BY_LABEL,
    FINETUNE_JOB_LABEL,
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    MANAGED_BY,
)
from slm_operator.status import set_condition

SANITIZED = "Sanitized"
TRAINED = "Trained"
EVALUATED = "Evaluated"
PROMOTED = "Promoted"
FAILED = "Failed"


def job_name(ftj: FineTuneJob) -> str:
    return f"{ftj.metadata.name[:50]}-train"


def finetune_job(
    ftj: FineTuneJob, nodes: Sequence[str], operator_image: str, priority_class: str | None
) -> dict[str, Any]:
    spec = ftj.spec
    ds = spec.dataset
    data_volume: dict[str, Any]
    if ds.config_map_ref is not None:
        cm: dict[str, Any] = {"name": ds.config_map_ref.name}
        if ds.config_map_ref.key:
            cm["items"] = [{"key": ds.config_map_ref.key, "path": ds.config_map_ref.key}]
        data_volume = {"name": "dataset", "configMap": cm}
        data_path = "/dataset"
    else:
        assert ds.pvc is not None
        data_volume = {
            "name": "dataset",
            "persistentVolumeClaim": {"claimName": ds.pvc.claim_name, "readOnly": True},
        }
        data_path = f"/dataset/{ds.pvc.path}".rstrip("/")
    hp = spec.hyperparameters
    rank = hp.lora_rank or 16
    args = [
        "--base-model",
        spec.base_model,
        "--method",
        spec.method.value,
        "--data",
        "/work/sanitized.jsonl",
        "--output",
        f"/output/{spec.output.pvc.path}".rstrip("/"),
        "--epochs",
        str(hp.epochs),
        "--learning-rate",
        hp.learning_rate,
        "--batch-size",
        str(hp.batch_size),
        "--max-seq-len",
        str(hp.max_sequence_tokens),
    ]
    if spec.method is not FineTuneMethod.FULL:
        args += ["--lora-rank", str(rank), "--lora-alpha", str(hp.lora_alpha or 2 * rank)]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": sorted(nodes)}]}
                ]
            }
        }
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "affinity": affinity,
        "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        "initContainers": [
            {
                "name": "sanitize",
                "image": operator_image,
                "args": [
                    "sanitize",
                    "--input",
                    data_path,
                    "--output",
                    "/work/sanitized.jsonl",
                    "--redact",
                    ",".join(c.value for c in spec.sanitization.redact),
                ],
                "volumeMounts": [
                    {"name": "dataset", "mountPath": "/dataset", "readOnly": True},
                    {"name": "work", "mountPath": "/work"},
                ],
            }
        ],
        "containers": [
            {
                "name": "train",
                "image": spec.image,
                "args": args,
                "resources": {
                    "limits": {GPU_RESOURCE: str(spec.gpus)},
                    "requests": {GPU_RESOURCE: str(spec.gpus)},
                },
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work", "readOnly": True},
                    {"name": "output", "mountPath": "/output"},
                ],
            }
        ],
        "volumes": [
            data_volume,
            {"name": "work", "emptyDir": {}},
            {"name": "output", "persistentVolumeClaim": {"claimName": spec.output.pvc.claim_name}},
        ],
    }
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(ftj),
            "namespace": ftj.metadata.namespace or "default",
            "labels": {FINETUNE_JOB_LABEL: ftj.metadata.name, APP_MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "FineTuneJob",
                    "name": ftj.metadata.name,
                    "uid": ftj.metadata.uid or "",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "template": {"metadata": {"labels": {FINETUNE_JOB_LABEL: ftj.metadata.name}}, "spec": pod_spec},
        },
    }


def evaluation_score(pods: Sequence[Mapping[str, Any]]) -> int | None:
    """The trainer's evaluation score, from its termination message (``{"evalScorePercent": N}``, written to
    ``/dev/termination-log`` by the trainer image when it finishes); None when no finished pod reports one."""
    best: int | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != "train":
                continue
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") != 0 or not term.get("message"):
                continue
            try:
                score = json.loads(term["message"]).get("evalScorePercent")
            except (ValueError, AttributeError):
                continue
            if isinstance(score, int | float) and not isinstance(score, bool):
                best = int(score) if best is None else max(best, int(score))
    return best


def promotion_allowed(ftj: FineTuneJob, complete: bool, score: int | None) -> bool:
    """Promote once training completed and the evaluation gate (if any) is met."""
    if ftj.spec.promote is None or not complete:
        return False
    gate = ftj.spec.promote.evaluation.min_score_percent
    return gate == 0 or (score is not None and score >= gate)


def _job_condition(job: Mapping[str, Any] | None, type_: str) -> bool:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return True
    return False


def finetune_status(
    ftj: FineTuneJob,
    *,
    job: Mapping[str, Any] | None,
    segment_nodes: Sequence[str],
    problem: tuple[str, str] | None,
    promoted: bool,
    now: str,
    score: int | None = None,
) -> FineTuneJobStatus:
    """Mirror the Job into the FineTuneJob's conditions (Sanitized, Trained, Evaluated, Promoted, Failed)."""
    old = ftj.status or FineTuneJobStatus()
    gen = ftj.metadata.generation
    conds = list(old.conditions or [])
    st = FineTuneJobStatus(observed_generation=gen, job_name=old.job_name, start_time=old.start_time)
    if problem is not None:
        reason, msg = problem
        for t in (SANITIZED, TRAINED):
            conds = set_condition(conds, t, None, reason, msg, gen, now)
        conds = set_condition(conds, FAILED, False, reason, msg, gen, now)
        st.conditions = conds
        return st
    jst = (job or {}).get("status") or {}
    st.job_name = (job or {}).get("metadata", {}).get("name", "")
    st.start_time = jst.get("startTime") or old.start_time
    st.completion_time = jst.get("completionTime")
    failed = _job_condition(job, "Failed")
    complete = _job_condition(job, "Complete")
    active = int(jst.get("active") or 0)
    where = f"on segment {ftj.spec.segment} ({', '.join(segment_nodes)})"
    # The sanitize init container must finish before training starts: a running or finished trainer means
    # the data was sanitised.
    if complete or (active and jst.get("ready")):
        conds = set_condition(
            conds,
            SANITIZED,
            True,
            "PIIRedacted",
            "dataset sanitised: " + ", ".join(c.value for c in ftj.spec.sanitization.redact),
            gen,
            now,
        )
    elif failed:
        conds = set_condition(conds, SANITIZED, None, "JobFailed", "the Job failed; see its pods", gen, now)
    else:
        conds = set_condition(
            conds, SANITIZED, False, "Pending", f"Job {st.job_name} is starting {where}", gen, now
        )
    if complete:
        conds = set_condition(conds, TRAINED, True, "JobComplete", f"Job {st.job_name} completed", gen, now)
        st.artifact = f"pvc://{ftj.spec.output.pvc.claim_name}/{ftj.spec.output.pvc.path}".rstrip("/")
    elif failed:
        conds = set_condition(conds, TRAINED, False, "JobFailed", f"Job {st.job_name} failed", gen, now)
    else:
        conds = set_condition(
            conds, TRAINED, False, "Training", f"Job {st.job_name} is running {where}", gen, now
        )
    gate = ftj.spec.promote.evaluation.min_score_percent if ftj.spec.promote else 0
    if complete:
        if gate == 0:
            conds = set_condition(
                conds, EVALUATED, True, "NoGate", "no evaluation gate (minScorePercent 0)", gen, now
            )
        elif score is None:
            conds = set_condition(
                conds,
                EVALUATED,
                None,
                "AwaitingScore",
                f"the trainer reported no evaluation score (termination message evalScorePercent); "
                f"{gate}% is needed to promote",
                gen,
                now,
            )
        elif score >= gate:
            conds = set_condition(
                conds, EVALUATED, True, "GatePassed", f"evaluation score {score}% >= {gate}%", gen, now
            )
        else:
            conds = set_condition(
                conds,
                EVALUATED,
                False,
                "BelowGate",
                f"evaluation score {score}% < {gate}%: not promoted",
                gen,
                now,
            )
    else:
        conds = set_condition(conds, EVALUATED, False, "NotTrained", "training has not finished", gen, now)
    if ftj.spec.promote is None:
        conds = set_condition(conds, PROMOTED, False, "NotRequested", "spec.promote is not set", gen, now)
    elif promoted:
        target = ftj.spec.promote.slm_deployment_ref.name
        conds = set_condition(
            conds, PROMOTED, True, "Promoted", f"SLMDeployment {target} serves {st.artifact}", gen, now
        )
    else:
        conds = set_condition(
            conds, PROMOTED, False, "Waiting", "promotion waits for training and evaluation", gen, now
        )
    conds = set_condition(
        conds,
        FAILED,
        failed,
        "JobFailed" if failed else "NoFailure",
        "the training Job failed" if failed else "",
        gen,
        now,
    )
    st.conditions = conds
    return st
