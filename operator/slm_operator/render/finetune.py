"""Pure builders for FineTuneJob: the batch/v1 Job on the pool's fine-tuning segment, and its status.

The Job has two steps: an init container running ``slm-operator sanitize`` (the operator's own image) that
removes the configured PII classes from the dataset into a scratch volume, and the trainer container that
adapts the base model and writes the result to the output PVC. The Job is pinned to the nodes whose GPUs the
plan gave to the segment and requests whole GPUs (``nvidia.com/gpu``), with the fine-tuning PriorityClass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.api.v1alpha1 import (
    DEFAULT_LORA_RANK,
    DatasetSource,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    FineTuneMethod,
)
from slm_operator.contract import (
    API_VERSION,
    APP_MANAGED_BY_LABEL,
    FINETUNE_JOB_LABEL,
    GPU_RESOURCE,
    MANAGED_BY,
)
from slm_operator.render import gpu_tolerations, pin_to_nodes
from slm_operator.status import ConditionResult, apply_condition
from slm_operator.views import ObjectView

SANITIZED = "Sanitized"
TRAINED = "Trained"
EVALUATED = "Evaluated"
PROMOTED = "Promoted"
FAILED = "Failed"


def job_name(ftj: FineTuneJob) -> str:
    return f"{ftj.metadata.name[:50]}-train"


def artifact(ftj: FineTuneJob) -> str:
    """Where the trained result lands, as the SLMDeployment's adapter annotation names it."""
    return f"pvc://{ftj.spec.output.pvc.claim_name}/{ftj.spec.output.pvc.path}".rstrip("/")


SANITIZED_DATA = "/work/sanitized.jsonl"


def dataset_volume(ds: DatasetSource) -> tuple[dict[str, Any], str]:
    """The ``dataset`` volume (a ConfigMap or a PVC) and the path of the data once mounted on /dataset."""
    if ds.config_map_ref is not None:
        cm: dict[str, Any] = {"name": ds.config_map_ref.name}
        if ds.config_map_ref.key:
            cm["items"] = [{"key": ds.config_map_ref.key, "path": ds.config_map_ref.key}]
        return {"name": "dataset", "configMap": cm}, "/dataset"
    assert ds.pvc is not None
    volume = {"name": "dataset", "persistentVolumeClaim": {"claimName": ds.pvc.claim_name, "readOnly": True}}
    return volume, f"/dataset/{ds.pvc.path}".rstrip("/")


def trainer_args(spec: FineTuneJobSpec) -> list[str]:
    """The trainer's command line: model, method, data, output and hyperparameters."""
    hp = spec.hyperparameters
    rank = hp.lora_rank or DEFAULT_LORA_RANK
    args = [
        "--base-model",
        spec.base_model,
        "--method",
        spec.method.value,
        "--data",
        SANITIZED_DATA,
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
    return args


def sanitize_container(spec: FineTuneJobSpec, operator_image: str, data_path: str) -> dict[str, Any]:
    """The init container: ``slm-operator sanitize`` redacts the configured PII classes into /work."""
    return {
        "name": "sanitize",
        "image": operator_image,
        "args": [
            "sanitize",
            data_path,
            "--output",
            SANITIZED_DATA,
            "--redact",
            ",".join(c.value for c in spec.sanitization.redact),
        ],
        "volumeMounts": [
            {"name": "dataset", "mountPath": "/dataset", "readOnly": True},
            {"name": "work", "mountPath": "/work"},
        ],
    }


def train_container(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The trainer on whole GPUs: reads the sanitised data, writes the result to the output PVC."""
    return {
        "name": "train",
        "image": spec.image,
        "args": trainer_args(spec),
        "resources": {
            "limits": {GPU_RESOURCE: str(spec.gpus)},
            "requests": {GPU_RESOURCE: str(spec.gpus)},
        },
        "volumeMounts": [
            {"name": "work", "mountPath": "/work", "readOnly": True},
            {"name": "output", "mountPath": "/output"},
        ],
    }


def _job_metadata(ftj: FineTuneJob) -> dict[str, Any]:
    return {
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
    }


def finetune_job(
    ftj: FineTuneJob, nodes: Sequence[str], operator_image: str, priority_class: str | None
) -> dict[str, Any]:
    """The batch/v1 Job: sanitise, then train, on the segment's ``nodes``."""
    spec = ftj.spec
    data_volume, data_path = dataset_volume(spec.dataset)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "affinity": pin_to_nodes(sorted(nodes)),
        "tolerations": gpu_tolerations(),
        "initContainers": [sanitize_container(spec, operator_image, data_path)],
        "containers": [train_container(spec)],
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
        "metadata": _job_metadata(ftj),
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


def job_condition(job: Mapping[str, Any] | None, type_: str) -> bool:
    """The Job's condition ``type_`` (``Complete``, ``Failed``) is ``True``."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return True
    return False


@dataclass(frozen=True)
class Training:
    """What the FineTuneJob's conditions are computed from: the Job as observed, and the evaluation."""

    ftj: FineTuneJob
    job_name: str
    complete: bool
    failed: bool
    trainer_running: bool  # a pod of the Job is active and ready
    where: str  # "on segment <name> (<nodes>)"
    score: int | None
    promoted: bool

    @property
    def gate(self) -> int:
        return self.ftj.spec.promote.evaluation.min_score_percent if self.ftj.spec.promote else 0


def sanitized_condition(t: Training) -> ConditionResult:
    # The sanitize init container must finish before training starts: a running or finished trainer means
    # the data was sanitised.
    if t.complete or t.trainer_running:
        redacted = ", ".join(c.value for c in t.ftj.spec.sanitization.redact)
        return ConditionResult(True, "PIIRedacted", "dataset sanitised: " + redacted)
    if t.failed:
        return ConditionResult(None, "JobFailed", "the Job failed; see its pods")
    return ConditionResult(False, "Pending", f"Job {t.job_name} is starting {t.where}")


def trained_condition(t: Training) -> ConditionResult:
    if t.complete:
        return ConditionResult(True, "JobComplete", f"Job {t.job_name} completed")
    if t.failed:
        return ConditionResult(False, "JobFailed", f"Job {t.job_name} failed")
    return ConditionResult(False, "Training", f"Job {t.job_name} is running {t.where}")


def evaluated_condition(t: Training) -> ConditionResult:
    """The evaluation gate (``spec.promote.evaluation.minScorePercent``) against the trainer's score."""
    gate, score = t.gate, t.score
    if not t.complete:
        return ConditionResult(False, "NotTrained", "training has not finished")
    if gate == 0:
        return ConditionResult(True, "NoGate", "no evaluation gate (minScorePercent 0)")
    if score is None:
        return ConditionResult(
            None,
            "AwaitingScore",
            f"the trainer reported no evaluation score (termination message evalScorePercent); "
            f"{gate}% is needed to promote",
        )
    if score >= gate:
        return ConditionResult(True, "GatePassed", f"evaluation score {score}% >= {gate}%")
    return ConditionResult(False, "BelowGate", f"evaluation score {score}% < {gate}%: not promoted")


def promoted_condition(t: Training, artifact_: str | None) -> ConditionResult:
    if t.ftj.spec.promote is None:
        return ConditionResult(False, "NotRequested", "spec.promote is not set")
    if t.promoted:
        target = t.ftj.spec.promote.slm_deployment_ref.name
        return ConditionResult(True, "Promoted", f"SLMDeployment {target} serves {artifact_}")
    return ConditionResult(False, "Waiting", "promotion waits for training and evaluation")


def failed_condition(t: Training) -> ConditionResult:
    if t.failed:
        return ConditionResult(True, "JobFailed", "the training Job failed")
    return ConditionResult(False, "NoFailure", "")


def _problem_status(
    st: FineTuneJobStatus, old: FineTuneJobStatus, problem: tuple[str, str], gen: int | None, now: str
) -> FineTuneJobStatus:
    """Nothing can run (no pool, no segment, no node yet): training is Unknown, the job has not failed."""
    reason, msg = problem
    conds = list(old.conditions or [])
    for t in (SANITIZED, TRAINED):
        conds = apply_condition(conds, t, ConditionResult(None, reason, msg), gen, now)
    st.conditions = apply_condition(conds, FAILED, ConditionResult(False, reason, msg), gen, now)
    return st


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
    st = FineTuneJobStatus(observed_generation=gen, job_name=old.job_name, start_time=old.start_time)
    if problem is not None:
        return _problem_status(st, old, problem, gen, now)
    jst = (job or {}).get("status") or {}
    st.job_name = ObjectView(job or {}).name
    st.start_time = jst.get("startTime") or old.start_time
    st.completion_time = jst.get("completionTime")
    t = Training(
        ftj=ftj,
        job_name=st.job_name,
        complete=job_condition(job, "Complete"),
        failed=job_condition(job, "Failed"),
        trainer_running=bool(int(jst.get("active") or 0) and jst.get("ready")),
        where=f"on segment {ftj.spec.segment} ({', '.join(segment_nodes)})",
        score=score,
        promoted=promoted,
    )
    if t.complete:
        st.artifact = artifact(ftj)
    conds = list(old.conditions or [])
    for type_, result in (
        (SANITIZED, sanitized_condition(t)),
        (TRAINED, trained_condition(t)),
        (EVALUATED, evaluated_condition(t)),
        (PROMOTED, promoted_condition(t, st.artifact)),
        (FAILED, failed_condition(t)),
    ):
        conds = apply_condition(conds, type_, result, gen, now)
    st.conditions = conds
    return st
