"""The operator's contract with the cluster: every label, annotation and resource name it reads or writes.

Two vocabularies meet on a node and a pod:

* ``slm.io/*``: what slm-operator writes (and its node agent publishes) and reads back on the next pass;
* ``nvidia.com/*``: the NVIDIA GPU Operator's protocol, written by GPU feature discovery (GFD), mig-manager and
  the device plugin, or written by slm-operator for them to act on. ``shared/facts/gpu-sharing.md`` cites the
  upstream source of each one.

Nothing else in the package spells these strings; a new label, annotation or resource name goes here first
(``docs/contributing.md``). The one structured value, the replica's placement, is :class:`PlacementRecord`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

# ------------------------------------------------------------------------------------------ the API group
GROUP: Final = "slm.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
FINALIZER: Final = f"{GROUP}/finalizer"
FIELD_MANAGER: Final = "slm-operator"
#: the field manager of what `slm-operator advise --apply` writes (server-side apply)
ADVISE_FIELD_MANAGER: Final = "slm-operator-advise"
#: the field manager of the autoscaler's part of an SLMDeployment's status (docs/autoscaling.md)
AUTOSCALER_FIELD_MANAGER: Final = "slm-operator-autoscaler"
#: the SLMDeployment status fields the autoscaler owns; the planner's status applies neither send nor compare them
AUTOSCALER_STATUS_FIELDS: Final = ("autoscaling",)
MANAGED_BY: Final = "slm-operator"

# ------------------------------------------------------------------------------------------ slm.io labels
POOL_LABEL: Final = "slm.io/pool"  # on replica pods (and pool-owned objects): the GPUPool
DEPLOYMENT_LABEL: Final = "slm.io/deployment"  # on replica pods: the SLMDeployment's name
REPLICA_LABEL: Final = "slm.io/replica"  # on replica pods: the replica's ordinal
QOS_LABEL: Final = "slm.io/qos"  # on replica pods: the tier
FINETUNE_JOB_LABEL: Final = "slm.io/finetunejob"  # on fine-tuning Jobs and their pods
#: the environment variable `slm-operator usage` reads the store URL from when --store is not given; the
#: FineTuneJob's export step sets it from the Secret of `dataset.usageStore.urlSecretRef`
USAGE_STORE_ENV: Final = "SLM_USAGE_STORE_URL"
#: on the pods of a FineTuneJob with ``borrowFrom``: the pool reservation whose idle GPUs the trainer may borrow.
#: The pool's pass counts the whole GPUs such pods hold on that reservation's nodes as claimed, so it never lends
#: them to BestEffort replicas too (``status.reservations[].lentToFineTuning``).
BORROWED_RESERVATION_LABEL: Final = "slm.io/borrowed-reservation"

# ------------------------------------------------------------------------------------------ slm.io annotations
PLACEMENT_ANNOTATION: Final = "slm.io/placement"  # on replica pods: PlacementRecord as JSON
#: on the new pod of a consolidation move: the move's state (the pod it replaces, when it started, why), so that
#: a restarted operator finishes or abandons the move (reconcile/moves.py)
MOVE_ANNOTATION: Final = "slm.io/move"
SPEC_HASH_ANNOTATION: Final = "slm.io/spec-hash"  # on replica pods: what needs a new pod (model, runtime…)
ADAPTER_ANNOTATION: Final = "slm.io/promoted-adapter"  # on SLMDeployments: the adapter a FineTuneJob promoted
#: on SLMDeployments, written with ADAPTER_ANNOTATION by the FineTuneJob controller, read by render: the
#: FineTuneJob's method (LoRA | QLoRA | Full); a Full result is served as the model, the others as a LoRA adapter.
PROMOTED_METHOD_ANNOTATION: Final = "slm.io/promoted-method"
PROMOTED_LORA_RANK_ANNOTATION: Final = "slm.io/promoted-lora-rank"  # on SLMDeployments: the adapter's rank
#: on what `slm-operator advise` writes (SLMDeployment, its dataset ConfigMap, FineTuneJob): the task it moves
ADVISOR_TASK_ANNOTATION: Final = "slm.io/advisor-task"
#: on SLMDeployments: a call arrived while it has no ready replica (RFC 3339 time of the request). The gateway
#: sets it (merge patch); the operator's watch scales the deployment to at least one replica at once, without
#: waiting for the next metrics poll (scale from zero, docs/autoscaling.md)
ACTIVATION_ANNOTATION: Final = "slm.io/activation-requested"
GPU_INVENTORY_ANNOTATION: Final = "slm.io/gpu-inventory"  # on nodes: the node agent's NVML inventory
GPU_ROLES_ANNOTATION: Final = "slm.io/gpu-roles"  # on nodes: GPU index -> reservation or segment name
ORIGINAL_LABELS_ANNOTATION: Final = "slm.io/original-labels"  # on nodes: NVIDIA labels before take-over
# on the mig-parted ConfigMap: JSON {config name: RFC 3339 time it was first written}. mig-manager reads the
# ConfigMap through a mounted volume the kubelet refreshes only on its periodic sync, so a node is relabelled to
# a config only once its entry is old enough for every kubelet to have it (RELABEL_GATES).
CONFIG_WRITTEN_ANNOTATION: Final = "slm.io/config-written"
#: on nodes: the MIG config the node last reported ``success`` for before the operator relabelled it, JSON
#: ``{"config": name, "entries": mig-parted entries | null (a built-in name)}``; a failed new layout rolls back to it
MIG_LAST_GOOD_ANNOTATION: Final = "slm.io/mig-last-good"
#: on nodes: the last MIG rollback, JSON ``{"failed", "to", "failures", "since", "until", "deployments"}``: the
#: config mig-manager failed (``failures`` times in a row), the last good one the node went back to, and the
#: back-off during which its layout is held (reconcile/rollback.py); a restarted operator keeps it
MIG_ROLLBACK_ANNOTATION: Final = "slm.io/mig-rollback"
#: on nodes: the MIG config the pool planned for the node and waits to relabel it to, until its mig-parted entry
#: has reached mig-manager's mounted ConfigMap (``RELABEL_GATES``). Until then the node is planned in that layout
#: (reconcile/inputs.py ``pending_layout``), so that replicas planned later take its free instances instead of
#: changing it, which would name a new entry and start the wait again.
MIG_PENDING_ANNOTATION: Final = "slm.io/mig-config-pending"
#: on the GPU Operator's mig-manager pods: when the operator last changed it (RFC 3339), so that the node's kubelet
#: remounts the pod's ConfigMap volumes at once (an annotation change makes the pod differ for the kubelet, kubelet
#: ``config.go`` ``podsDifferSemantically``; its ``SyncPod`` calls ``WaitForAttachAndMount``, which remounts
#: ConfigMap volumes, ``volume_manager.go`` ``ReprocessPod``): mig-manager then finds a new mig-parted entry
#: without waiting for the kubelet's periodic sync (reconcile/gates.py ``mig_refresh``)
MIG_MANAGER_REFRESH_ANNOTATION: Final = "slm.io/mig-parted-config-refreshed"

# ------------------------------------------------------------------------------------------ Kubernetes labels
APP_NAME_LABEL: Final = "app.kubernetes.io/name"
APP_MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
APP_COMPONENT_LABEL: Final = "app.kubernetes.io/component"

# ------------------------------------------------------------------------------------------ Kubernetes names
#: on EndpointSlices (written by Kubernetes): the Service they belong to; the gateway watches the slices of the
#: Services the operator renders per SLMDeployment (named after it) to find ready replicas.
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"

# ------------------------------------------------------------------------------------------ the gateway (HTTP)
# The gateway's contract with agents (docs/gateway.md): request and response headers.
TASK_HEADER: Final = (
    "x-slm-task"  # request: the caller's task, matched by SLMRoute rules; echoed on the response
)
ROUTE_HEADER: Final = "x-slm-route"  # response: "namespace/name" of the SLMRoute that served the call
BACKEND_HEADER: Final = "x-slm-backend"  # response: the route's backend that answered
FALLBACK_HEADER: Final = (
    "x-slm-fallback"  # response: why the call fell back (error|timeout|overload|invalid_json|scaled_to_zero)
)
#: values of the route's API-key Secrets (spec.apiKeySecretRefs): this prefix + hex SHA-256 of the key
API_KEY_HASH_PREFIX: Final = "sha256:"
#: RBAC verb a ServiceAccount needs on ``slmroutes/<name>`` to call a route through the gateway
ROUTE_USE_VERB: Final = "use"
ROUTES_RESOURCE: Final = "slmroutes"
#: the gateway merge-patches ``ACTIVATION_ANNOTATION`` on these (scale from zero)
DEPLOYMENTS_RESOURCE: Final = "slmdeployments"

#: the key of the task classifier's JSON in the ConfigMap `advise` writes and the gateway loads
TASK_CLASSIFIER_KEY: Final = "classifier.json"
#: the ConfigMap `advise` publishes the task classifier in (in the route's namespace; the route's
#: spec.taskClassifier names it)
TASK_CLASSIFIER_CONFIGMAP: Final = "slm-task-classifier"
#: the ConfigMap `advise --apply` leaves its report in (report.md, tasks.json), in the namespace it advised
ADVICE_CONFIGMAP: Final = "slm-advice"

# ------------------------------------------------------------------------------------------ nvidia.com
NVIDIA_PREFIX: Final = "nvidia.com/"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"  # GFD
GPU_COUNT_LABEL: Final = "nvidia.com/gpu.count"  # GFD
SHARING_STRATEGY_LABEL: Final = "nvidia.com/gpu.sharing-strategy"  # GFD: none | mps | time-slicing
GPU_REPLICAS_LABEL: Final = "nvidia.com/gpu.replicas"  # GFD: shares advertised per GPU
MIG_CONFIG_LABEL: Final = "nvidia.com/mig.config"  # written by slm-operator, read by mig-manager
MIG_CONFIG_STATE_LABEL: Final = "nvidia.com/mig.config.state"  # mig-manager: see MigConfigState
DEVICE_PLUGIN_CONFIG_LABEL: Final = "nvidia.com/device-plugin.config"  # slm-operator -> device plugin
MIG_DISABLED_CONFIG: Final = "all-disabled"  # mig-parted's config with MIG off: a node without the label
# mig-manager acts only when nvidia.com/mig.config changes, so a ``failed`` config is retried under an alias of
# the same content: ``<name>-retry<N>``; N counts the retries, MIG_CONFIG_MAX_TRIES bounds the tries.
MIG_RETRY_SUFFIX: Final = "-retry"
MIG_CONFIG_MAX_TRIES: Final = 3
#: after a rollback, the failed config is tried again once per back-off; the back-off doubles per failure of the
#: same config, up to this many times the first one (``--mig-rollback-seconds``)
MIG_ROLLBACK_MAX_FACTOR: Final = 8

GPU_RESOURCE: Final = "nvidia.com/gpu"  # a whole GPU (also the taint key GPU nodes carry)
SHARED_GPU_RESOURCE: Final = "nvidia.com/gpu.shared"  # an MPS or time-slicing share (renamed by the plugin)
MIG_RESOURCE_PREFIX: Final = "nvidia.com/mig-"  # + profile, ``mixed`` strategy: nvidia.com/mig-1g.10gb
GPU_TAINT_KEY: Final = GPU_RESOURCE


class MigConfigState(StrEnum):
    """Values of ``nvidia.com/mig.config.state`` (mig-parted ``pkg/mig/reconfigure/reconfigure.go``)."""

    PENDING = "pending"
    REBOOTING = "rebooting"
    SUCCESS = "success"
    FAILED = "failed"


class SharingStrategy(StrEnum):
    """Values of ``nvidia.com/gpu.sharing-strategy`` (GFD)."""

    NONE = "none"
    MPS = "mps"
    TIME_SLICING = "time-slicing"


def mig_retry_name(config: str, retry: int) -> str:
    """The alias of MIG config ``config`` for its ``retry``-th retry (0: the config itself)."""
    return f"{config}{MIG_RETRY_SUFFIX}{retry}" if retry else config


def mig_retry_of(label: str) -> tuple[str, int]:
    """(config, retries so far) of a ``nvidia.com/mig.config`` value (``slm-ab-retry2`` -> ``("slm-ab", 2)``)."""
    base, sep, n = label.rpartition(MIG_RETRY_SUFFIX)
    if sep and base and n.isdigit() and not n.startswith("0"):
        return base, int(n)
    return label, 0


def mig_resource(profile: str) -> str:
    """The extended resource of a MIG profile under the ``mixed`` strategy (``1g.10gb+me`` -> ``…1g.10gb.me``)."""
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


# ------------------------------------------------------------------------------------------ placement record
@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """Where a replica pod's share is: the ``slm.io/placement`` annotation on every replica pod.

    The operator writes it when it renders the pod and reads it back to know what runs where (the planner's
    current placement, the status, the per-GPU view); the node agent reads it to attribute GPU memory. The
    JSON keys are part of the contract: ``deployment`` ("namespace/name"), ``ordinal``, ``node``, ``gpu``,
    ``mechanism``, ``migProfile``, ``memoryBytes``.
    """

    deployment: str
    ordinal: int
    node: str
    gpu: int
    mechanism: str
    mig_profile: str | None = None
    memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "ordinal": self.ordinal,
            "node": self.node,
            "gpu": self.gpu,
            "mechanism": self.mechanism,
            "migProfile": self.mig_profile,
            "memoryBytes": self.memory_bytes,
        }

    def to_annotation(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_annotation(cls, raw: str | None) -> PlacementRecord | None:
        """The record in ``raw``, or None when it is absent or not a record (never raises)."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            memory = data.get("memoryBytes")
            return cls(
                deployment=str(data["deployment"]),
                ordinal=int(data["ordinal"]),
                node=str(data["node"]),
                gpu=int(data["gpu"]),
                mechanism=str(data["mechanism"]),
                mig_profile=data.get("migProfile") or None,
                memory_bytes=int(memory) if memory is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PlacementRecord | None:
        """The record on a pod (a dict in the API's JSON form), or None."""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return cls.from_annotation(annotations.get(PLACEMENT_ANNOTATION))
