"""Pure builder of a FineTuneJob's batch/v1 Job (the decisions and the status are in ``slm_operator.finetune``).

The Job's pod runs two steps (three with ``dataset.usageStore``), all on the trainer image (``--trainer-image``,
or ``spec.image``):

* with ``dataset.usageStore``, first the init container ``export`` (``slm-operator usage export``): it reads the
  calls the SLMRoute captured from the usage store whose URL the kubelet passes from the Secret
  (``USAGE_STORE_ENV``) and writes ``/work/export.jsonl``; its termination message carries the record count;
* the init container ``sanitize`` (``slm-operator sanitize``) reads the dataset from ``/dataset``, replaces the
  configured PII classes (from ``/work/export.jsonl`` with ``usageStore``) and writes ``/work/sanitized.jsonl`` (an emptyDir); its termination message carries
  the records, the lines skipped and the counts per class;
* the container ``train`` (``slm-operator train``) adapts the base model (Hugging Face, or ``/model`` from a
  PVC) on it, evaluates the result, the base model and the incumbent (``/incumbent``: the adapter the target
  SLMDeployment serves now) on held-out examples, and writes the result to ``/output``; its termination
  message carries the scores.

The pod may run on the nodes whose GPUs the plan gave to the segment, or to the reservation it borrows from,
requests whole GPUs (``nvidia.com/gpu``) and has the fine-tuning PriorityClass (below the LLM fallback's, so the
scheduler preempts a borrowing trainer when the reservation's workload arrives). A pod preempted or evicted, or
ended by SIGTERM (exit code 143, the trainer saves a checkpoint first), does not count against the Job's
``backoffLimit``: the next pod resumes from the checkpoint on the output volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slm_operator.api.v1alpha1 import (
    DEFAULT_LORA_RANK,
    DatasetSource,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneMethod,
)
from slm_operator.catalog import slm_by_name
from slm_operator.contract import (
    API_VERSION,
    APP_MANAGED_BY_LABEL,
    BORROWED_RESERVATION_LABEL,
    FINETUNE_JOB_LABEL,
    GPU_RESOURCE,
    MANAGED_BY,
    USAGE_STORE_ENV,
)
from slm_operator.render import Promoted, gpu_tolerations, pin_to_nodes

EXPORT = "export"  # the first init container, with dataset.usageStore
SANITIZE = "sanitize"  # the init container
TRAIN = "train"  # the container
EXPORTED_DATA = "/work/export.jsonl"
SANITIZED_DATA = "/work/sanitized.jsonl"
#: The export step's environment variable holding the store URL (from the Secret; never in the pod spec).
TERMINATION_LOG = "/dev/termination-log"
DATASET_MOUNT = "/dataset"
OUTPUT_MOUNT = "/output"
INCUMBENT_MOUNT = "/incumbent"
MODEL_MOUNT = "/model"
#: The exit code of a trainer stopped by SIGTERM (128 + 15) after it saved a checkpoint.
SIGTERM_EXIT_CODE = 143
#: The pod condition the API server, the scheduler and the kubelet set on a pod they preempt or evict.
DISRUPTION_TARGET = "DisruptionTarget"


def job_name(ftj: FineTuneJob) -> str:
    return f"{ftj.metadata.name[:50]}-train"


def artifact(ftj: FineTuneJob) -> str:
    """Where the trained result lands, as the SLMDeployment's adapter annotation names it."""
    return f"pvc://{ftj.spec.output.pvc.claim_name}/{ftj.spec.output.pvc.path}".rstrip("/")


def base_model_arg(spec: FineTuneJobSpec) -> str:
    """``--base-model``: the folder on ``/model`` with ``modelSource.pvc``; else the Hugging Face repository of
    the BF16 checkpoint when ``baseModel`` is a catalog name; else ``baseModel`` as given (a repository id)."""
    if spec.model_source is not None:
        return f"{MODEL_MOUNT}/{spec.model_source.pvc.path}".rstrip("/")
    known = slm_by_name(spec.base_model)
    return known.repository if known is not None else spec.base_model


def incumbent_path(spec: FineTuneJobSpec, incumbent: Promoted | None) -> str | None:
    """The incumbent the trainer evaluates (``--incumbent``): what the target serves now, unless it is nothing
    or the very folder this run writes to."""
    if incumbent is None:
        return None
    out = spec.output.pvc
    if (incumbent.claim, incumbent.path) == (out.claim_name, out.path.strip("/")):
        return None
    return f"{INCUMBENT_MOUNT}/{incumbent.path}".rstrip("/")


def trainer_args(spec: FineTuneJobSpec, incumbent: str | None = None) -> list[str]:
    """The ``train`` container's command line (the interface of ``slm-operator train``)."""
    hp = spec.hyperparameters
    rank = hp.lora_rank or DEFAULT_LORA_RANK
    args = [
        "train",
        "--base-model",
        base_model_arg(spec),
        "--data",
        SANITIZED_DATA,
        "--output",
        f"{OUTPUT_MOUNT}/{spec.output.pvc.path}".rstrip("/"),
        "--method",
        spec.method.value,
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
    if incumbent is not None:
        args += ["--incumbent", incumbent]
    return [*args, "--termination-log", TERMINATION_LOG]


def dataset_path(ds: DatasetSource) -> str:
    """The data once mounted on /dataset: the ConfigMap's key (a file) or all its keys (a folder of *.jsonl),
    or the file or folder on the PVC; or what the export step wrote from the usage store."""
    if ds.usage_store is not None:
        return EXPORTED_DATA
    if ds.config_map_ref is not None:
        key = ds.config_map_ref.key
        return f"{DATASET_MOUNT}/{key}" if key else DATASET_MOUNT
    assert ds.pvc is not None
    return f"{DATASET_MOUNT}/{ds.pvc.path}".rstrip("/")


def export_args(ftj: FineTuneJob) -> list[str]:
    """The ``export`` init container's command line (the interface of ``slm-operator usage export``): the calls
    of the SLMRoute in the FineTuneJob's own namespace (of one task when it names one). The store URL (with its password) is not on the command
    line: ``usage export`` reads it from ``USAGE_STORE_ENV``, which the kubelet sets from the Secret."""
    source = ftj.spec.dataset.usage_store
    assert source is not None
    args = ["usage", "export"]
    args += ["--route", f"{ftj.metadata.namespace or 'default'}/{source.route}"]
    if source.task:
        args += ["--task", source.task]
    if source.since:
        args += ["--since", source.since]
    return [*args, "--output", EXPORTED_DATA, "--termination-log", TERMINATION_LOG]


def sanitize_args(spec: FineTuneJobSpec) -> list[str]:
    """The ``sanitize`` init container's command line (the interface of ``slm-operator sanitize``)."""
    return [
        SANITIZE,
        dataset_path(spec.dataset),
        "--output",
        SANITIZED_DATA,
        "--redact",
        ",".join(c.value for c in spec.sanitization.redact),
        "--termination-log",
        TERMINATION_LOG,
    ]


@dataclass
class _Volumes:
    """The pod's volumes: one per PVC however many mounts use it (read-only unless one mount writes)."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    by_claim: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pvc(self, name: str, claim: str, path: str, *, read_only: bool) -> dict[str, Any]:
        """The mount of PVC ``claim`` on ``path``; its volume is named ``name`` unless the claim has one."""
        vol = self.by_claim.get(claim)
        if vol is None:
            vol = {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
            self.by_claim[claim] = vol
            self.volumes.append(vol)
        if not read_only:
            vol["persistentVolumeClaim"].pop("readOnly", None)
        return _mount(vol["name"], path, read_only)

    def other(self, volume: dict[str, Any], path: str, *, read_only: bool) -> dict[str, Any]:
        if volume not in self.volumes:
            self.volumes.append(volume)
        return _mount(volume["name"], path, read_only)


def _mount(name: str, path: str, read_only: bool) -> dict[str, Any]:
    return (
        {"name": name, "mountPath": path, "readOnly": True}
        if read_only
        else {"name": name, "mountPath": path}
    )


def _dataset_mounts(ds: DatasetSource, vols: _Volumes) -> list[dict[str, Any]]:
    """The sanitize step's read-only /dataset (none with ``usageStore``: it reads the export from /work)."""
    if ds.usage_store is not None:
        return []
    if ds.config_map_ref is not None:
        cm: dict[str, Any] = {"name": ds.config_map_ref.name}
        if ds.config_map_ref.key:
            cm["items"] = [{"key": ds.config_map_ref.key, "path": ds.config_map_ref.key}]
        return [vols.other({"name": "dataset", "configMap": cm}, DATASET_MOUNT, read_only=True)]
    assert ds.pvc is not None
    return [vols.pvc("dataset", ds.pvc.claim_name, DATASET_MOUNT, read_only=True)]


def _container(name: str, image: str, args: list[str], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "args": args,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def _export(ftj: FineTuneJob, image: str, work: dict[str, Any], vols: _Volumes) -> dict[str, Any]:
    """The export step: the store URL comes from the Secret through the kubelet (``secretKeyRef``), so the
    operator never reads the Secret and the URL's credentials never appear in the Job."""
    source = ftj.spec.dataset.usage_store
    assert source is not None
    c = _container(EXPORT, image, export_args(ftj), [vols.other(work, "/work", read_only=False)])
    ref = source.url_secret_ref
    c["env"] = [{"name": USAGE_STORE_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
    return c


def _containers(
    ftj: FineTuneJob, image: str, incumbent: Promoted | None
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """The init steps (export, sanitize), the train step and the volumes they mount."""
    spec = ftj.spec
    vols = _Volumes()
    work = {"name": "work", "emptyDir": {}}
    init = [_export(ftj, image, work, vols)] if spec.dataset.usage_store is not None else []
    sanitize = _container(
        SANITIZE,
        image,
        sanitize_args(spec),
        [*_dataset_mounts(spec.dataset, vols), vols.other(work, "/work", read_only=False)],
    )
    mounts = [
        vols.other(work, "/work", read_only=True),
        vols.pvc("output", spec.output.pvc.claim_name, OUTPUT_MOUNT, read_only=False),
    ]
    served = incumbent_path(spec, incumbent)
    if served is not None and incumbent is not None:
        mounts.append(vols.pvc("incumbent", incumbent.claim, INCUMBENT_MOUNT, read_only=True))
    if spec.model_source is not None:
        mounts.append(vols.pvc("model", spec.model_source.pvc.claim_name, MODEL_MOUNT, read_only=True))
    train = _container(TRAIN, image, trainer_args(spec, served), mounts)
    train["resources"] = {
        "limits": {GPU_RESOURCE: str(spec.gpus)},
        "requests": {GPU_RESOURCE: str(spec.gpus)},
    }
    return [*init, sanitize], train, vols.volumes


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


#: Preemption, eviction and a SIGTERM the trainer answered with a checkpoint do not count as failures: the Job
#: starts the next pod (once the stopped one is gone), which resumes from the checkpoint.
POD_FAILURE_POLICY: dict[str, Any] = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": DISRUPTION_TARGET, "status": "True"}]},
        {
            "action": "Ignore",
            "onExitCodes": {"containerName": TRAIN, "operator": "In", "values": [SIGTERM_EXIT_CODE]},
        },
    ]
}


def finetune_job(
    ftj: FineTuneJob,
    nodes: list[str],
    image: str,
    priority_class: str | None,
    incumbent: Promoted | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job: (export,) sanitise, then train, on one of ``nodes``. ``image`` is the trainer image
    (``spec.image`` overrides it); ``incumbent`` is what the target SLMDeployment serves now."""
    spec = ftj.spec
    init, train, volumes = _containers(ftj, spec.image or image, incumbent)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "affinity": pin_to_nodes(sorted(nodes)),
        "tolerations": gpu_tolerations(),
        "enableServiceLinks": False,
        "initContainers": init,
        "containers": [train],
        "volumes": volumes,
    }
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    labels = {FINETUNE_JOB_LABEL: ftj.metadata.name}
    if spec.borrow_from:
        labels[BORROWED_RESERVATION_LABEL] = spec.borrow_from
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _job_metadata(ftj),
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "podFailurePolicy": POD_FAILURE_POLICY,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
