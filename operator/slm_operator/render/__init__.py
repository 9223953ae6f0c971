"""Pure builders of the objects slm-operator creates from a plan (no Kubernetes client here).

* per node: a mig-parted config (``nvidia.com/mig.config``) and a device-plugin sharing config
  (``nvidia.com/device-plugin.config``), both content-addressed so identical nodes share one entry of the
  ConfigMaps the NVIDIA GPU Operator reads;
* per replica: a Pod pinned to the planned node that requests the planned share
  (``nvidia.com/mig-<profile>``, ``nvidia.com/gpu.shared`` or ``nvidia.com/gpu``), with the tier's
  PriorityClass, MPS limits in its environment, and vLLM flags derived from the share;
* per SLMDeployment: a Service.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from slm_operator.api.v1alpha1 import DEFAULT_LORA_RANK, SERVED_LORA_RANKS, QoSTier, SLMDeployment
from slm_operator.catalog import GpuModel, gpu_by_key, serving_flags, slm_by_name
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    API_VERSION,
    APP_COMPONENT_LABEL,
    APP_MANAGED_BY_LABEL,
    APP_NAME_LABEL,
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_RESOURCE,
    GPU_TAINT_KEY,
    MANAGED_BY,
    MIG_CONFIG_LABEL,
    PLACEMENT_ANNOTATION,
    POOL_LABEL,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
    QOS_LABEL,
    REPLICA_LABEL,
    SHARED_GPU_RESOURCE,
    SPEC_HASH_ANNOTATION,
    PlacementRecord,
    mig_resource,
)
from slm_operator.inventory import Sizing, deployment_key
from slm_operator.planner.model import NodePlan, ReplicaPlacement
from slm_operator.sizing import MAX_NUM_BATCHED_TOKENS

NVIDIA_VENDOR = "10de"
EXCLUSIVE_CONFIG = "slm-exclusive"


@dataclass(frozen=True)
class OperatorConfig:
    """Names the operator uses; the Helm chart sets them (see charts/slm-operator/values.yaml)."""

    nvidia_namespace: str = "gpu-operator"
    mig_configmap: str = "slm-mig-parted-config"
    device_plugin_configmap: str = "slm-device-plugin-config"
    priority_classes: Mapping[str, str] = field(
        default_factory=lambda: {
            "Guaranteed": "slm-guaranteed",
            "Burstable": "slm-burstable",
            "BestEffort": "slm-besteffort",
        }
    )
    llm_fallback_priority_class: str = "slm-llm-fallback"
    field_manager: str = "slm-operator"
    replica_cpu: str = "1"
    #: Host memory a replica requests on top of its weights (the server loads the weights through host RAM).
    replica_memory_overhead_bytes: int = 2 << 30
    #: A PVC (ReadWriteMany) replicas share as their model download cache; None: an emptyDir per pod sized from
    #: the checkpoint.
    model_cache_claim: str | None = None
    #: How old a new mig-parted config entry must be before a node is relabelled to it: mig-manager reads the
    #: ConfigMap through a mounted volume, which the kubelet refreshes only on its periodic sync (about a
    #: minute plus its cache TTL by default).
    configmap_sync_seconds: float = 90.0
    #: With a running mig-manager pod on the node (``mig_manager_selector`` in ``nvidia_namespace``): the operator
    #: annotates the pod once the new entry is in the ConfigMap, so that the kubelet remounts its ConfigMap volume
    #: at once, and relabels the node this many seconds later instead of ``configmap_sync_seconds`` after the
    #: write (0: never, always the full wait). reconcile/gates.py ``mig_refresh``.
    mig_manager_refresh_seconds: float = 5.0
    #: Label selector of the GPU Operator's mig-manager pods (its DaemonSet ``nvidia-mig-manager``)
    mig_manager_selector: str = "app=nvidia-mig-manager"
    #: How long a pool node may be NotReady before the operator counts it lost and plans its replicas elsewhere
    #: (while it is shorter, nothing new is placed on the node and its replicas wait for it to come back).
    node_lost_seconds: float = 60.0
    #: How long a node whose new MIG layout mig-manager failed is held on its last good one before the new
    #: layout is tried again (doubled per failure in a row on the node, capped; 0: no rollback, the node
    #: stays failed and the pool Degraded as with an operator before rollbacks).
    mig_rollback_seconds: float = 600.0
    #: The exact solver in the operator's pass (planner/portfolio.py): pools of at most this many GPUs and
    #: replicas, within this many CP-SAT deterministic seconds per solve; 0 s (the default here, and for
    #: ``plan --emit``, which plans with the heuristic as ``plan`` does): the heuristic only. The operator
    #: (``slm-operator run --exact-budget``, the chart's ``operator.exactSolver.budgetSeconds``) defaults to 3
    #: (docs/planner.md §5.1).
    exact_max_gpus: int = 8
    exact_max_replicas: int = 24
    exact_budget_seconds: float = 0.0
    #: Guided packing (planner/guided.py): pools of this many GPUs are also packed from the node-aware
    #: program's incumbent, which the shell solves in a worker process within this many seconds once a pool's
    #: inputs settle; 0 s (the default here and for ``plan --emit``): off. The operator (``slm-operator run
    #: --guided-time-limit``, the chart's ``operator.guidedPacking``) turns it on (docs/planner.md §5.2).
    guided_min_gpus: int = 32
    guided_max_gpus: int = 2048
    guided_time_limit_seconds: float = 0.0

    @classmethod
    def from_flags(cls, flags: Any) -> OperatorConfig:
        """From the command line's flags of the same names (``slm-operator run``, ``plan --emit``; the chart
        sets them); a flag the command does not have keeps its default."""
        default = cls()
        return cls(
            nvidia_namespace=flags.nvidia_namespace,
            mig_configmap=flags.mig_configmap,
            device_plugin_configmap=flags.device_plugin_configmap,
            configmap_sync_seconds=getattr(flags, "configmap_sync_seconds", default.configmap_sync_seconds),
            mig_manager_refresh_seconds=getattr(
                flags, "mig_manager_refresh_seconds", default.mig_manager_refresh_seconds
            ),
            mig_manager_selector=getattr(flags, "mig_manager_selector", default.mig_manager_selector),
            node_lost_seconds=getattr(flags, "node_lost_seconds", default.node_lost_seconds),
            mig_rollback_seconds=getattr(flags, "mig_rollback_seconds", default.mig_rollback_seconds),
            exact_max_gpus=getattr(flags, "exact_max_gpus", default.exact_max_gpus),
            exact_max_replicas=getattr(flags, "exact_max_replicas", default.exact_max_replicas),
            exact_budget_seconds=getattr(flags, "exact_budget", default.exact_budget_seconds),
            guided_min_gpus=getattr(flags, "guided_min_gpus", default.guided_min_gpus),
            guided_max_gpus=getattr(flags, "guided_max_gpus", default.guided_max_gpus),
            guided_time_limit_seconds=getattr(flags, "guided_time_limit", default.guided_time_limit_seconds),
            priority_classes={
                "Guaranteed": flags.priority_class_guaranteed,
                "Burstable": flags.priority_class_burstable,
                "BestEffort": flags.priority_class_besteffort,
            },
            llm_fallback_priority_class=getattr(
                flags, "priority_class_llm_fallback", default.llm_fallback_priority_class
            ),
        )


def _hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------ node configs


def mig_parted_entries(plan: NodePlan, gpu: GpuModel) -> list[dict[str, Any]]:
    """The mig-parted ``mig-configs`` entry for one node: GPUs with the same layout grouped, PCI-filtered."""
    groups: dict[str, list[int]] = {}
    layouts: dict[str, tuple[bool, dict[str, int]]] = {}
    for dev in sorted(plan.mig_layout, key=lambda d: d.index):
        devices = {k: v for k, v in sorted(dev.devices.items()) if v > 0}
        key = json.dumps([dev.mig_enabled, devices], sort_keys=True)
        groups.setdefault(key, []).append(dev.index)
        layouts[key] = (dev.mig_enabled, devices)
    filters = [f"{pci}{NVIDIA_VENDOR}".upper().replace("0X", "0x") for pci in gpu.pci_device_ids]
    out = []
    for key in sorted(groups, key=lambda k: groups[k][0]):
        enabled, devices = layouts[key]
        entry: dict[str, Any] = {"device-filter": filters, "devices": groups[key], "mig-enabled": enabled}
        if enabled:
            entry["mig-devices"] = devices
        out.append(entry)
    return out


def mig_config_name(entries: list[dict[str, Any]]) -> str:
    """Content-addressed config name, so nodes with the same layout share one entry."""
    if all(not e["mig-enabled"] for e in entries):
        return "all-disabled"
    return f"slm-{_hash(entries)}"


def device_plugin_config(plan: NodePlan) -> tuple[str, dict[str, Any]]:
    """(name, config) of the device plugin's per-node sharing config.

    MIG resources use the ``mixed`` strategy (``nvidia.com/mig-<profile>``). Time-slicing and MPS rename the
    shared GPUs to ``nvidia.com/gpu.shared`` and refuse requests above one, so a replica can never take two
    shares by mistake. MPS is never combined with MIG (the device plugin refuses it; the planner never asks).
    """
    if plan.sharing == "None" or not plan.replicas_per_gpu:
        return EXCLUSIVE_CONFIG, {"version": "v1", "flags": {"migStrategy": "mixed"}}
    key = "mps" if plan.sharing == "MPS" else "timeSlicing"
    cfg = {
        "version": "v1",
        "flags": {"migStrategy": "none" if plan.sharing == "MPS" else "mixed"},
        "sharing": {
            key: {
                "renameByDefault": True,
                "failRequestsGreaterThanOne": True,
                "resources": [{"name": GPU_RESOURCE, "replicas": plan.replicas_per_gpu}],
            }
        },
    }
    prefix = "slm-mps" if plan.sharing == "MPS" else "slm-ts"
    return f"{prefix}-{plan.replicas_per_gpu}", cfg


@dataclass(frozen=True)
class NodeConfig:
    """What one node should look like: the two NVIDIA selector labels and the config entries they name."""

    node: str
    mig_config: str
    mig_entries: list[dict[str, Any]] | None  # None for the built-in all-disabled
    device_plugin_config: str
    device_plugin_entry: dict[str, Any]
    mig_capable: bool = True

    @property
    def labels(self) -> dict[str, str]:
        """The selector labels to set; mig-manager only runs on MIG-capable nodes, so others get no MIG label."""
        out = {DEVICE_PLUGIN_CONFIG_LABEL: self.device_plugin_config}
        if self.mig_capable:
            out[MIG_CONFIG_LABEL] = self.mig_config
        return out


def node_config(plan: NodePlan, gpu_model_key: str, mig_capable: bool) -> NodeConfig:
    gpu = gpu_by_key(gpu_model_key)
    dp_name, dp_cfg = device_plugin_config(plan)
    if not mig_capable or not plan.mig_layout:
        return NodeConfig(plan.name, "all-disabled", None, dp_name, dp_cfg, mig_capable)
    entries = mig_parted_entries(plan, gpu)
    name = mig_config_name(entries)
    return NodeConfig(
        plan.name, name, None if name == "all-disabled" else entries, dp_name, dp_cfg, mig_capable
    )


def mig_parted_document(configs: Mapping[str, list[dict[str, Any]]]) -> str:
    """The ``config.yaml`` mig-manager reads: ``version: v1`` and every named config in use."""
    named: dict[str, Any] = {"all-disabled": [{"devices": "all", "mig-enabled": False}]}
    named.update({k: configs[k] for k in sorted(configs)})
    return yaml.safe_dump({"version": "v1", "mig-configs": named}, sort_keys=False)


def device_plugin_documents(configs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """ConfigMap data for the device plugin: one key per config name (always including the exclusive one)."""
    out = {
        EXCLUSIVE_CONFIG: yaml.safe_dump(
            {"version": "v1", "flags": {"migStrategy": "mixed"}}, sort_keys=False
        )
    }
    for name in sorted(configs):
        out[name] = yaml.safe_dump(configs[name], sort_keys=False)
    return out


# ------------------------------------------------------------------------------------------ workloads


def share_resource(p: ReplicaPlacement) -> str:
    """The extended resource a replica requests for its share."""
    return share_resource_of(p.share.mechanism, p.share.mig_profile)


def share_resource_of(mechanism: str, mig_profile: str | None) -> str:
    """The extended resource of a share of ``mechanism`` (and MIG profile); also for a pod's placement record."""
    if mechanism == "MIG":
        assert mig_profile
        return mig_resource(mig_profile)
    if mechanism in ("MPS", "TimeSlicing"):
        return SHARED_GPU_RESOURCE
    return GPU_RESOURCE


#: Where the model-source PVC, the promoted result's PVC and the download cache are mounted in the server.
MODELS_MOUNT = "/models"
ADAPTERS_MOUNT = "/adapters"
MODEL_CACHE_MOUNT = "/model-cache"


@dataclass(frozen=True)
class Promoted:
    """What a FineTuneJob promoted onto the deployment (``slm.io/promoted-adapter`` = ``pvc://<claim>/<path>``)."""

    claim: str
    path: str  # inside the claim; "" for the claim's root
    full: bool  # a full fine-tune (served as the model) rather than a LoRA adapter
    lora_rank: int | None = None  # the adapter's rank, when the promotion recorded it

    @property
    def mounted_path(self) -> str:
        """The result's path in the server container (the claim is mounted on ``/adapters``)."""
        return f"{ADAPTERS_MOUNT}/{self.path}".rstrip("/")


def promoted(dep: SLMDeployment) -> Promoted | None:
    """What a FineTuneJob promoted onto ``dep``, if anything (a ``pvc://`` result)."""
    return promoted_from(dep.metadata.annotations or {})


def promoted_from(annotations: Mapping[str, str]) -> Promoted | None:
    """The promoted result its annotations name (``slm.io/promoted-adapter`` and the method and rank next to it)."""
    adapter = annotations.get(ADAPTER_ANNOTATION) or ""
    if not adapter.startswith("pvc://"):
        return None
    claim, _, path = adapter[len("pvc://") :].partition("/")
    rank = annotations.get(PROMOTED_LORA_RANK_ANNOTATION) or ""
    full = annotations.get(PROMOTED_METHOD_ANNOTATION) == "Full"
    return Promoted(claim, path.strip("/"), full, int(rank) if rank.isdigit() else None)


def model_args(dep: SLMDeployment, sizing: Sizing) -> list[str]:
    """``--model`` and what loading it needs: the promoted full fine-tune, ``spec.model.source``, the catalog
    checkpoint of the quantisation (pre-quantised ones name their method in config.json) or the name itself."""
    model = dep.spec.model
    result = promoted(dep)
    online_fp8 = ["--quantization", "fp8"] if model.quantization.value == "FP8" else []
    if result is not None and result.full:
        args = ["--model", result.mounted_path, *online_fp8]
    elif model.source is not None and model.source.pvc is not None:
        args = ["--model", f"{MODELS_MOUNT}/{model.source.pvc.path}".rstrip("/"), *online_fp8]
    elif model.source is not None and model.source.hugging_face is not None:
        hf = model.source.hugging_face
        args = ["--model", hf.repository, *(["--revision", hf.revision] if hf.revision else []), *online_fp8]
    elif sizing.checkpoint is not None:
        ckpt = sizing.checkpoint
        args = ["--model", ckpt.repository]
        args += ["--quantization", ckpt.vllm_quantization] if ckpt.vllm_quantization else []
    else:
        args = ["--model", model.name, *online_fp8]
    if model.quantization.value == "FP16":
        args += ["--dtype", "float16"]
    return args


def served_args(dep: SLMDeployment) -> list[str]:
    """Callers of the deployment's name get the promoted weights: a LoRA adapter is served under that name and
    the base model under ``<name>-base``; a full fine-tune is the model itself."""
    name = dep.metadata.name
    result = promoted(dep)
    if result is None or result.full:
        return ["--served-model-name", name]
    args = [
        "--served-model-name",
        f"{name}-base",
        "--enable-lora",
        "--lora-modules",
        f"{name}={result.mounted_path}",
    ]
    if result.lora_rank is not None and result.lora_rank > DEFAULT_LORA_RANK:
        # vLLM allocates LoRA slots for --max-lora-rank (default 16) and refuses a larger adapter
        args += ["--max-lora-rank", str(min(r for r in SERVED_LORA_RANKS if r >= result.lora_rank))]
    return args


def agent_args(sizing: Sizing) -> list[str]:
    """The family's tool-call parser, reasoning parser and chat template (catalog data, ``models.yaml``)."""
    model = slm_by_name(sizing.model_name)
    flags = serving_flags(model.family) if model else None
    return flags.args() if flags else []


def vllm_args(dep: SLMDeployment, p: ReplicaPlacement, sizing: Sizing, gpu_memory_bytes: int) -> list[str]:
    """vLLM flags: what to load, under which names, the family's agent flags, and the memory fraction vLLM may
    take (what the plan gave it)."""
    spec = dep.spec
    if p.share.mechanism == "TimeSlicing":
        # No isolation: vLLM sees the whole GPU; let it take only the memory the plan counted for it.
        util = max(0.05, min(0.95, sizing.memory_bytes / gpu_memory_bytes))
    else:
        # A MIG slice, an MPS cap (cudaMemGetInfo reports the cap) or a whole GPU: the estimate may nearly
        # fill a slice, so allow at least the estimate plus 2% (vLLM's default 0.9 would be too tight).
        share = p.share.memory_bytes or gpu_memory_bytes
        util = min(0.98, max(0.9, sizing.memory_bytes / share + 0.02))
    args = [
        *model_args(dep, sizing),
        *served_args(dep),
        "--port",
        str(spec.runtime.port),
        "--max-model-len",
        str(spec.model.max_context_tokens),
        "--max-num-seqs",
        str(spec.model.max_concurrent_sequences),
        "--gpu-memory-utilization",
        f"{util:.2f}",
        "--max-num-batched-tokens",
        str(MAX_NUM_BATCHED_TOKENS),  # the token budget the sizing assumed for activations
        *agent_args(sizing),
    ]
    return args + list(spec.runtime.args or [])


def host_memory(sizing: Sizing, cfg: OperatorConfig) -> str:
    """Host RAM a replica requests: its weights (loaded through host memory) plus a fixed overhead, in Mi."""
    weights = sizing.estimate.weights_bytes if sizing.estimate else sizing.memory_bytes // 2
    return f"{-(-(weights + cfg.replica_memory_overhead_bytes) // (1 << 20))}Mi"


def placement_record(p: ReplicaPlacement, node: str, gpu_index: int) -> PlacementRecord:
    return PlacementRecord(
        deployment=p.deployment,
        ordinal=p.ordinal,
        node=node,
        gpu=gpu_index,
        mechanism=p.share.mechanism,
        mig_profile=p.share.mig_profile,
        memory_bytes=p.share.memory_bytes,
    )


def owner_reference(dep: SLMDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SLMDeployment",
        "name": dep.metadata.name,
        "uid": dep.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_name(dep: SLMDeployment, ordinal: int, record: PlacementRecord, spec_hash: str) -> str:
    suffix = _hash([record.to_dict(), spec_hash], 5)
    return f"{dep.metadata.name[:45]}-{ordinal}-{suffix}"


def deployment_spec_hash(dep: SLMDeployment) -> str:
    """Changes when something that needs a new pod changes (model, runtime, promoted adapter)."""
    spec = dep.spec
    return _hash(
        [
            spec.model.model_dump(mode="json"),
            spec.runtime.model_dump(mode="json"),
            (dep.metadata.annotations or {}).get(ADAPTER_ANNOTATION),
            (dep.metadata.annotations or {}).get(PROMOTED_METHOD_ANNOTATION),
            (dep.metadata.annotations or {}).get(PROMOTED_LORA_RANK_ANNOTATION),
        ],
        8,
    )


def pin_to_nodes(nodes: Sequence[str]) -> dict[str, Any]:
    """A pod ``affinity`` that allows only the named nodes (by ``metadata.name``)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": list(nodes)}]}
                ]
            }
        }
    }


def gpu_tolerations() -> list[dict[str, Any]]:
    """Tolerate the taint GPU nodes carry (``nvidia.com/gpu``)."""
    return [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]


def replica_env(dep: SLMDeployment, p: ReplicaPlacement) -> list[dict[str, Any]]:
    """The server's environment: who it is, the download cache, the Hugging Face token, the MPS limits of its
    share, then the user's ``runtime.env``."""
    env: list[dict[str, Any]] = [
        {"name": "SLM_DEPLOYMENT", "value": deployment_key(dep)},
        {"name": "SLM_REPLICA", "value": str(p.ordinal)},
        {"name": "HF_HOME", "value": MODEL_CACHE_MOUNT},
    ]
    source = dep.spec.model.source
    if source is not None and source.token_secret_ref is not None:
        ref = source.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if p.share.mechanism == "MPS" and p.share.mps_memory_limit_bytes:
        env.append(
            {
                "name": "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
                "value": f"0={p.share.mps_memory_limit_bytes >> 20}M",
            }
        )
        if p.share.mps_active_thread_percentage:
            env.append(
                {
                    "name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
                    "value": str(p.share.mps_active_thread_percentage),
                }
            )
    return env + [e.model_dump(mode="json") for e in dep.spec.runtime.env or []]


def replica_labels(dep: SLMDeployment, p: ReplicaPlacement, pool: str) -> dict[str, str]:
    return {
        APP_NAME_LABEL: dep.metadata.name,
        APP_MANAGED_BY_LABEL: MANAGED_BY,
        APP_COMPONENT_LABEL: "slm-server",
        DEPLOYMENT_LABEL: dep.metadata.name,
        REPLICA_LABEL: str(p.ordinal),
        POOL_LABEL: pool,
        QOS_LABEL: dep.spec.qos.value,
    }


#: Startup probe: a replica downloads its checkpoint, reads it onto the GPU, then profiles memory, compiles and
#: captures CUDA graphs before /health answers. Sized as weights / LOAD_RATE + STARTUP_MARGIN (docs/sizing.md).
MODEL_LOAD_BYTES_PER_SECOND = 50 << 20
STARTUP_MARGIN_SECONDS = 300
PROBE_PERIOD_SECONDS = 10
#: The model cache holds the checkpoint plus 10 % and 1 GiB (tokenizer, config, partial downloads).
MODEL_CACHE_SLACK_BYTES = 1 << 30
#: Pods are removed from the Service's endpoints before vLLM gets SIGTERM (preStop), then vLLM finishes the
#: requests in flight; the grace period covers both.
PRESTOP_SLEEP_SECONDS = 10
TERMINATION_GRACE_SECONDS = 60


def startup_failure_threshold(download_bytes: int) -> int:
    """Probe failures (every PROBE_PERIOD_SECONDS) the startup probe allows: download + load + margin."""
    seconds = STARTUP_MARGIN_SECONDS + -(-download_bytes // MODEL_LOAD_BYTES_PER_SECOND)
    return -(-seconds // PROBE_PERIOD_SECONDS)


def model_cache_size(download_bytes: int) -> str:
    """``sizeLimit`` of the model cache emptyDir, in Mi."""
    return f"{-(-(download_bytes * 11 // 10 + MODEL_CACHE_SLACK_BYTES) // (1 << 20))}Mi"


def replica_volumes(
    dep: SLMDeployment, sizing: Sizing, cfg: OperatorConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the model cache (``HF_HOME``), the source PVC on /models and the promoted result's
    PVC on /adapters."""
    if cfg.model_cache_claim:
        cache: dict[str, Any] = {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": cfg.model_cache_claim},
        }
    else:
        cache = {"name": "model-cache", "emptyDir": {"sizeLimit": model_cache_size(sizing.download_bytes)}}
    volumes = [cache]
    mounts: list[dict[str, Any]] = [{"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT}]
    source = dep.spec.model.source
    if source is not None and source.pvc is not None:
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True}}
        )
        mounts.append({"name": "model", "mountPath": MODELS_MOUNT, "readOnly": True})
    result = promoted(dep)
    if result is not None:
        volumes.append(
            {"name": "adapters", "persistentVolumeClaim": {"claimName": result.claim, "readOnly": True}}
        )
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_MOUNT, "readOnly": True})
    return volumes, mounts


def probes(sizing: Sizing) -> dict[str, Any]:
    """Startup, readiness and liveness probes on vLLM's ``/health``; the startup probe scales with the weights."""
    health = {"path": "/health", "port": "http"}
    return {
        "startupProbe": {
            "httpGet": health,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": startup_failure_threshold(sizing.download_bytes),
        },
        "readinessProbe": {"httpGet": health, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"httpGet": health, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def server_container(
    dep: SLMDeployment,
    p: ReplicaPlacement,
    gpu_memory_bytes: int,
    sizing: Sizing,
    cfg: OperatorConfig,
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The vLLM container, requesting exactly its share."""
    spec = dep.spec
    container: dict[str, Any] = {
        "name": "server",
        "image": spec.runtime.image,
        "args": vllm_args(dep, p, sizing, gpu_memory_bytes),
        "ports": [{"name": "http", "containerPort": spec.runtime.port, "protocol": "TCP"}],
        "env": replica_env(dep, p),
        "resources": {
            "requests": {"cpu": cfg.replica_cpu, "memory": host_memory(sizing, cfg), share_resource(p): "1"},
            "limits": {share_resource(p): "1"},
        },
        **probes(sizing),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
        "volumeMounts": mounts,
    }
    return container


def replica_pod(
    dep: SLMDeployment,
    p: ReplicaPlacement,
    node: str,
    gpu_index: int,
    gpu_model_key: str,
    pool: str,
    sizing: Sizing,
    cfg: OperatorConfig,
) -> dict[str, Any]:
    """The Pod of one replica, pinned to its node and share."""
    spec = dep.spec
    record = placement_record(p, node, gpu_index)
    spec_hash = deployment_spec_hash(dep)
    volumes, mounts = replica_volumes(dep, sizing, cfg)
    container = server_container(dep, p, gpu_by_key(gpu_model_key).memory_bytes, sizing, cfg, mounts)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(dep, p.ordinal, record, spec_hash),
            "namespace": dep.metadata.namespace or "default",
            "labels": replica_labels(dep, p, pool),
            "annotations": {
                PLACEMENT_ANNOTATION: record.to_annotation(),
                SPEC_HASH_ANNOTATION: spec_hash,
            },
            "ownerReferences": [owner_reference(dep)],
        },
        "spec": {
            "priorityClassName": cfg.priority_classes[spec.qos.value],
            "affinity": pin_to_nodes([node]),
            "tolerations": gpu_tolerations(),
            "containers": [container],
            "enableServiceLinks": False,
            "volumes": volumes,
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "restartPolicy": "Always",
        },
    }
    if spec.qos is QoSTier.GUARANTEED:
        pod["spec"]["preemptionPolicy"] = "PreemptLowerPriority"
    return pod


def service(dep: SLMDeployment) -> dict[str, Any]:
    """ClusterIP Service in front of the replicas (OpenAI-compatible HTTP on the runtime port)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": dep.metadata.name,
            "namespace": dep.metadata.namespace or "default",
            "labels": {
                APP_NAME_LABEL: dep.metadata.name,
                APP_MANAGED_BY_LABEL: MANAGED_BY,
            },
            "ownerReferences": [owner_reference(dep)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {DEPLOYMENT_LABEL: dep.metadata.name},
            "ports": [
                {"name": "http", "port": dep.spec.runtime.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def endpoint(dep: SLMDeployment) -> str:
    return f"http://{dep.metadata.name}.{dep.metadata.namespace or 'default'}.svc:{dep.spec.runtime.port}/v1"
