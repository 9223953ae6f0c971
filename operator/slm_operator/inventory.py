"""Turn Kubernetes objects into planner inputs (pure: plain dicts and API models in, planner models out).

* Nodes describe their GPUs through GPU feature discovery labels (``nvidia.com/gpu.product``,
  ``nvidia.com/gpu.count``), their MIG layout through the mig-parted config named by ``nvidia.com/mig.config``
  and their sharing mode through ``nvidia.com/gpu.sharing-strategy`` / ``nvidia.com/gpu.replicas``. When the
  node agent has published an NVML inventory (annotation ``slm.io/gpu-inventory``), it wins.
* GPUPools become a :class:`PoolPolicy`; SLMDeployments become :class:`Demand` (sized from the catalog, the
  given architecture or the explicit ``resources.gpuMemory``); replica pods become :class:`CurrentPlacement`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.api.quantity import QuantityError, parse_quantity, quantity_bytes
from slm_operator.api.v1alpha1 import (
    DefaultTenant,
    GPUPool,
    LendTo,
    RepartitionPolicy,
    SLMDeployment,
    TenantQuota,
    UnmatchedNamespaces,
    gpu_equivalents,
)
from slm_operator.catalog import (
    Checkpoint,
    GpuModel,
    ModelArchitecture,
    SlmModel,
    gpu_by_product,
    slm_by_name,
)
from slm_operator.contract import (
    GPU_COUNT_LABEL,
    GPU_INVENTORY_ANNOTATION,
    GPU_PRODUCT_LABEL,
    GPU_REPLICAS_LABEL,
    GPU_RESOURCE,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    SHARING_STRATEGY_LABEL,
    PlacementRecord,
)
from slm_operator.planner.model import (
    CurrentPlacement,
    Demand,
    GpuInventory,
    MigInstance,
    NodeInventory,
    PoolPolicy,
    Reservation,
    Segment,
    ShareRequest,
    TenantPolicy,
)
from slm_operator.sizing import MemoryEstimate, Quantization, checkpoint_bytes, estimate_memory
from slm_operator.views import PodView

# Labels and annotations of NVIDIA's protocol and of slm-operator.


class InventoryError(ValueError):
    """A node selected by a pool cannot be understood (e.g. a GPU product the catalog does not know)."""


class DemandError(ValueError):
    """An SLMDeployment cannot be sized; ``reason`` is the condition reason to report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _labels(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def node_name(node: Mapping[str, Any]) -> str:
    return str(node["metadata"]["name"])


def node_gpu_model(node: Mapping[str, Any]) -> GpuModel:
    product = _labels(node).get(GPU_PRODUCT_LABEL)
    if not product:
        raise InventoryError(
            f"node {node_name(node)} has no `{GPU_PRODUCT_LABEL}` label (is GPU feature discovery running?)"
        )
    gpu = gpu_by_product(product)
    if gpu is None:
        raise InventoryError(
            f"node {node_name(node)}: GPU product {product!r} is not in the catalog "
            "(see `slm-operator estimate --help` for the GPUs it knows)"
        )
    return gpu


def node_gpu_count(node: Mapping[str, Any]) -> int:
    labels = _labels(node)
    if labels.get(GPU_COUNT_LABEL, "").isdigit():
        return int(labels[GPU_COUNT_LABEL])
    cap = (node.get("status") or {}).get("capacity") or {}
    if str(cap.get(GPU_RESOURCE, "")).isdigit():
        return int(cap[GPU_RESOURCE])
    raise InventoryError(
        f"node {node_name(node)}: cannot tell how many GPUs it has (no `{GPU_COUNT_LABEL}` label)"
    )


#: Pods a GPU node keeps for pods that are not replicas: the GPU Operator's DaemonSets (driver, container
#: toolkit, device plugin, GFD, DCGM exporter, MIG manager, validator, NFD worker), kube-proxy, the CNI and
#: slm-operator's node agent.
NODE_PODS_RESERVED = 12


def node_replica_slots(node: Mapping[str, Any], replica_cpu: str = "1") -> int | None:
    """How many replica pods the node can run: its allocatable pods less ``NODE_PODS_RESERVED``, and no more
    than its allocatable CPU over a replica's CPU request. None when it reports neither."""
    alloc = (node.get("status") or {}).get("allocatable") or {}
    slots = []
    try:
        if "pods" in alloc:
            slots.append(max(0, int(parse_quantity(alloc["pods"])) - NODE_PODS_RESERVED))
        cpu = parse_quantity(replica_cpu)
        if "cpu" in alloc and cpu > 0:
            slots.append(int(parse_quantity(alloc["cpu"]) // cpu))
    except QuantityError:
        return None
    return min(slots) if slots else None


def shares_per_gpu_limit(nodes: Iterable[Mapping[str, Any]], replica_cpu: str = "1") -> int | None:
    """The most MPS clients or time-slicing replicas per GPU that each of ``nodes`` can run as pods, at least 2;
    None when no node says. The device plugin advertises that many shares of every GPU of a node, and each
    replica on a share is one pod: past the node's pod capacity (110 by default) or CPU, the scheduler leaves
    the extra pods Pending ("Too many pods") although the plan counts them placed. One limit for the pool (the
    smallest), since the planner's sharing limits are the pool's; a pool's nodes are alike as a rule."""
    per_gpu = []
    for node in nodes:
        slots = node_replica_slots(node, replica_cpu)
        try:
            gpus = node_gpu_count(node)
        except InventoryError:
            continue
        if slots is not None and gpus > 0:
            per_gpu.append(slots // gpus)
    return max(2, min(per_gpu)) if per_gpu else None


def builtin_mig_layout(gpu: GpuModel, name: str) -> dict[str, int] | None:
    """The per-GPU layout of mig-manager's generated named configs, or None for an unknown name."""
    if name in ("all-disabled", ""):
        return None
    if name == "all-enabled":
        return {}
    if name == "all-balanced":
        return dict(gpu.all_balanced)
    if name.startswith("all-"):
        wanted = name[4:]
        for p in gpu.mig_profiles:
            if p.name.replace("+", ".") == wanted:
                return {p.name: p.max_count}
    raise KeyError(name)


def mig_layout_from_config(
    gpu: GpuModel, count: int, config_name: str, mig_configs: Mapping[str, Any]
) -> list[dict[str, int] | None]:
    """Per GPU index: None (MIG disabled) or the profile counts, as the named mig-parted config sets them."""
    if config_name in mig_configs:
        layout: list[dict[str, int] | None] = [None] * count
        for entry in mig_configs[config_name] or []:
            devices = entry.get("devices", "all")
            indices = range(count) if devices == "all" else [int(i) for i in devices if int(i) < count]
            for i in indices:
                layout[i] = dict(entry.get("mig-devices") or {}) if entry.get("mig-enabled") else None
        return layout
    try:
        one = builtin_mig_layout(gpu, config_name)
    except KeyError:
        return [None] * count
    return [dict(one) if one is not None else None for _ in range(count)]


def _agent_gpus(node: Mapping[str, Any], gpu: GpuModel) -> list[GpuInventory] | None:
    raw = _annotations(node).get(GPU_INVENTORY_ANNOTATION)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        if doc.get("version", 1) != 1:  # a newer agent's format: trust the labels instead
            return None
        out = []
        for g in doc.get("gpus", []):
            if g.get("error") or "migEnabled" not in g:  # the agent could not read this GPU completely
                return None
            instances = tuple(
                MigInstance(profile=m["profile"], start=m.get("start")) for m in g.get("migInstances", [])
            )
            out.append(
                GpuInventory(
                    index=int(g["index"]),
                    model=gpu.key,
                    mig_enabled=bool(g.get("migEnabled")),
                    mig_instances=instances,
                    used_memory_bytes=g.get("memoryUsedBytes"),
                )
            )
        return out or None
    except (ValueError, KeyError, TypeError):
        return None


def node_inventory(node: Mapping[str, Any], mig_configs: Mapping[str, Any]) -> tuple[NodeInventory, str]:
    """The planner's view of one node and where it came from (``Agent`` or ``Labels``)."""
    gpu = node_gpu_model(node)
    labels = _labels(node)
    roles = gpu_roles(node)
    source = "Agent"
    gpus = _agent_gpus(node, gpu)
    if gpus is None:
        source = "Labels"
        count = node_gpu_count(node)
        layout = mig_layout_from_config(gpu, count, labels.get(MIG_CONFIG_LABEL, "all-disabled"), mig_configs)
        gpus = []
        for i, lay in enumerate(layout):
            instances: list[MigInstance] = []
            for profile, n in sorted((lay or {}).items()):
                instances += [MigInstance(profile=profile)] * int(n)
            gpus.append(
                GpuInventory(
                    index=i, model=gpu.key, mig_enabled=lay is not None, mig_instances=tuple(instances)
                )
            )
    gpus = [g.model_copy(update={"assigned_to": roles.get(str(g.index))}) for g in gpus]
    strategy = labels.get(SHARING_STRATEGY_LABEL, "none")
    sharing = {"mps": "MPS", "time-slicing": "TimeSlicing"}.get(strategy, "None")
    replicas = int(labels[GPU_REPLICAS_LABEL]) if labels.get(GPU_REPLICAS_LABEL, "").isdigit() else None
    schedulable = not (node.get("spec") or {}).get("unschedulable", False)
    inv = NodeInventory(
        name=node_name(node),
        gpus=tuple(gpus),
        sharing=sharing,
        sharing_replicas=replicas if sharing != "None" and replicas and replicas >= 2 else None,
        schedulable=schedulable,
    )
    return inv, source


def pool_nodes(
    pool: GPUPool, nodes: Iterable[Mapping[str, Any]], pools: Iterable[GPUPool] = ()
) -> list[Mapping[str, Any]]:
    """The nodes a pool selects, sorted by name. With ``pools`` (every GPUPool), only those it owns: a node
    that several pools select belongs to one of them (``node_owner``), so no two pools plan its GPUs."""
    others = [p for p in pools if p.metadata.name != pool.metadata.name]
    return sorted(
        (
            n
            for n in nodes
            if pool.spec.node_selector.matches(_labels(n))
            and node_owner(n, [pool, *others]) == pool.metadata.name
        ),
        key=lambda n: node_name(n),
    )


#: Taints the node lifecycle controller puts on a node whose kubelet stopped reporting (or reports NotReady).
NODE_DOWN_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def node_down_since(node: Mapping[str, Any]) -> str | None:
    """When a node stopped being Ready (RFC 3339; "" when unknown), or None while it is Ready.

    The node lifecycle controller sets ``Ready`` to ``Unknown`` once the kubelet's heartbeat is older than
    ``--node-monitor-grace-period`` (and to ``False`` when the kubelet says so), and taints the node
    ``node.kubernetes.io/unreachable`` / ``not-ready``. A node without a Ready condition yet (just registered)
    counts as Ready: the scheduler and the node's own taints decide about it."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        return str(ready.get("lastTransitionTime") or "")
    taints = (node.get("spec") or {}).get("taints") or []
    down = [t for t in taints if t.get("key") in NODE_DOWN_TAINTS and t.get("effect") == "NoExecute"]
    if down:
        return str(min(str(t.get("timeAdded") or "") for t in down))
    return None


def _seniority(pool: GPUPool) -> tuple[bool, str, str]:
    """Older first: a pool being deleted last, then by creation time (RFC 3339 sorts as text), then name."""
    meta = pool.metadata
    return (meta.deletion_timestamp is not None, meta.creation_timestamp or "~", meta.name)


def node_owner(node: Mapping[str, Any], pools: Iterable[GPUPool]) -> str | None:
    """The pool that plans a node: of the pools whose node selector matches it, the oldest (a pool being
    deleted only when no other selects it). Every pool's pass computes the same owner from the same list, so
    two overlapping pools never both write a node's sharing labels or place replicas on its GPUs."""
    matching = [p for p in pools if p.spec.node_selector.matches(_labels(node))]
    return min(matching, key=_seniority).metadata.name if matching else None


def overlapping_nodes(
    pool: GPUPool, nodes: Iterable[Mapping[str, Any]], pools: Iterable[GPUPool]
) -> dict[str, tuple[str, ...]]:
    """Node name -> the other pools that select it too, for the nodes the pool selects (sorted names)."""
    others = [p for p in pools if p.metadata.name != pool.metadata.name]
    out: dict[str, tuple[str, ...]] = {}
    for n in nodes:
        labels = _labels(n)
        if not pool.spec.node_selector.matches(labels):
            continue
        also = sorted(p.metadata.name for p in others if p.spec.node_selector.matches(labels))
        if also:
            out[node_name(n)] = tuple(also)
    return dict(sorted(out.items()))


def gpu_roles(node: Mapping[str, Any]) -> dict[str, str]:
    """GPU index -> the reservation or segment the pool's last plan set that GPU aside for (the node's
    ``slm.io/gpu-roles`` annotation); empty when it has none or cannot be read."""
    try:
        roles = json.loads(_annotations(node).get(GPU_ROLES_ANNOTATION) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in roles.items()} if isinstance(roles, dict) else {}


def role_nodes(pool: GPUPool, nodes: Iterable[Mapping[str, Any]], role: str) -> list[str]:
    """Names of the pool's nodes (its node selector, as the pool's pass selects them) with a GPU set aside for
    the reservation or segment ``role``, sorted. Another pool's segment of the same name never counts."""
    return [node_name(n) for n in pool_nodes(pool, nodes) if role in gpu_roles(n).values()]


def pool_policy(
    pool: GPUPool, claimed: Mapping[str, int] | None = None, shares_limit: int | None = None
) -> PoolPolicy:
    """The planner's policy of a pool: ``spec.sharing`` (its per-GPU sharing limits no higher than
    ``shares_limit``, what the nodes can run as pods: ``shares_per_gpu_limit``), the reservations with what
    is ``claimed`` of them, segments and tenants."""
    spec = pool.spec
    mps, ts = spec.sharing.mps.max_clients_per_gpu, spec.sharing.time_slicing.max_replicas_per_gpu
    if shares_limit is not None:
        mps, ts = min(mps, shares_limit), min(ts, shares_limit)
    return PoolPolicy(
        name=pool.metadata.name,
        allowed_mechanisms=tuple(m.value for m in spec.sharing.mechanisms),
        mps_max_clients_per_gpu=mps,
        ts_max_replicas_per_gpu=ts,
        memory_oversubscription_percent=spec.sharing.time_slicing.memory_oversubscription_percent,
        reservations=tuple(
            Reservation(
                name=r.name,
                gpus=r.gpus,
                lend_to="BestEffort" if r.lend_to is LendTo.BEST_EFFORT else None,
                claimed=min(r.gpus, (claimed or {}).get(r.name, 0)),
            )
            for r in spec.reservations or []
        ),
        segments=tuple(Segment(name=s.name, gpus=s.gpus) for s in spec.segments or []),
        repartition="Allowed" if spec.sharing.mig.repartition is RepartitionPolicy.ALLOWED else "Never",
        tenants=pool_tenants(pool),
    )


def _tenant_policy(name: str, q: TenantQuota) -> TenantPolicy:
    return TenantPolicy(
        name=name,
        guaranteed=gpu_equivalents(q.guaranteed),
        ceiling=gpu_equivalents(q.ceiling) if q.ceiling is not None else None,
        weight=q.weight,
    )


def pool_tenants(pool: GPUPool) -> tuple[TenantPolicy, ...]:
    """The planner's tenants of a pool: ``spec.tenants``, then the default tenant unless the pool refuses
    deployments of namespaces no tenant selects (docs/tenants.md). Empty without ``spec.tenants``."""
    spec = pool.spec
    if not spec.tenants:
        return ()
    out = [_tenant_policy(t.name, t) for t in spec.tenants]
    if spec.unmatched_namespaces is UnmatchedNamespaces.DEFAULT_TENANT:
        d = spec.default_tenant or DefaultTenant()
        out.append(_tenant_policy(d.name, d))
    return tuple(out)


#: the label Kubernetes sets on every Namespace to its name (selects a namespace by name)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def tenant_of(pool: GPUPool, namespace: str, labels: Mapping[str, str] | None) -> str | None:
    """The tenant of a deployment in ``namespace`` (with those Namespace labels; None: the Namespace was not
    read, only its name label is known): the first of ``spec.tenants`` whose selector matches, else the
    default tenant, or None when the pool refuses unmatched namespaces or has no tenants."""
    spec = pool.spec
    if not spec.tenants:
        return None
    have = {NAMESPACE_NAME_LABEL: namespace, **(labels or {})}
    for t in spec.tenants:
        if t.namespaces.matches(have):
            return t.name
    if spec.unmatched_namespaces is UnmatchedNamespaces.REFUSE:
        return None
    return (spec.default_tenant or DefaultTenant()).name


def deployment_key(dep: SLMDeployment) -> str:
    return f"{dep.metadata.namespace or 'default'}/{dep.metadata.name}"


@dataclass(frozen=True)
class Sizing:
    """How much GPU memory one replica needs, and where the figure comes from."""

    memory_bytes: int
    source: str  # Catalog | Architecture | Override
    estimate: MemoryEstimate | None
    model_name: str
    #: The catalog checkpoint vLLM loads (None when ``spec.model.source`` or the name says where the weights are).
    checkpoint: Checkpoint | None = None
    #: Bytes of the checkpoint a replica downloads and reads (sizes the model cache and the startup probe).
    download_bytes: int = 0


def _architecture(dep: SLMDeployment, model: SlmModel | None) -> tuple[ModelArchitecture | None, str]:
    a = dep.spec.model.architecture
    if a is None:
        return (model.architecture if model else None), "Catalog"
    try:
        arch = ModelArchitecture(
            parameters=a.parameters,
            layers=a.layers,
            hidden_size=a.hidden_size,
            attention_heads=a.attention_heads,
            kv_heads=a.kv_heads,
            head_dim=a.head_dim,
            max_context_tokens=a.max_context_tokens,
        )
    except ValueError as exc:
        raise DemandError("InvalidArchitecture", f"`spec.model.architecture`: {exc}") from None
    return arch, "Architecture"


def catalog_checkpoint(dep: SLMDeployment, model: SlmModel | None) -> Checkpoint | None:
    """The catalog checkpoint vLLM loads for the deployment's quantisation; None when the deployment names its
    own source (or is not a catalog model). Raises QuantizationUnavailable when the catalog has none."""
    spec = dep.spec.model
    if model is None or spec.source is not None or spec.architecture is not None:
        return None
    ckpt = model.checkpoint(spec.quantization.value)
    if ckpt is None:
        raise DemandError(
            "QuantizationUnavailable",
            f"model {model.name!r} has no {spec.quantization.value} checkpoint in the catalog; it can be served as "
            f"{', '.join(model.quantizations())}. Choose one of those for `spec.model.quantization`, or name a "
            f"{spec.quantization.value} checkpoint in `spec.model.source`",
        )
    return ckpt


def size_deployment(dep: SLMDeployment) -> Sizing:
    """Memory per replica: ``resources.gpuMemory`` if given, else the estimate from model facts and the format of
    the checkpoint vLLM loads."""
    spec = dep.spec
    model = slm_by_name(spec.model.name)
    ckpt = catalog_checkpoint(dep, model)
    arch, source = _architecture(dep, model)
    override = spec.resources.gpu_memory if spec.resources else None
    quant = Quantization(spec.model.quantization.value)
    fmt = ckpt.format if ckpt else None
    estimate: MemoryEstimate | None = None
    if arch is not None:
        try:
            estimate = estimate_memory(
                arch,
                quant,
                spec.model.max_context_tokens,
                spec.model.max_concurrent_sequences,
                weight_format=fmt,
            )
        except ValueError as exc:
            if override is None:
                raise DemandError("InvalidModelSettings", f"`spec.model`: {exc}") from None
    name = model.name if model else spec.model.name
    download = checkpoint_bytes(arch, quant, fmt) if arch is not None else 0
    if override is not None:
        memory = quantity_bytes(override)
        return Sizing(memory, "Override", estimate, name, ckpt, download or memory // 2)
    if estimate is None:
        raise DemandError(
            "UnknownModel",
            f"model {spec.model.name!r} is not in the catalog: give `spec.model.architecture` (from the model's "
            "config.json) or `spec.resources.gpuMemory`",
        )
    return Sizing(estimate.total_bytes, source, estimate, name, ckpt, download)


def deployment_tenant(pool: GPUPool, dep: SLMDeployment, labels: Mapping[str, str] | None) -> str | None:
    """The deployment's tenant in ``pool`` (None in a pool without tenants); ``DemandError`` (reason
    ``NoTenant``) when no tenant selects its namespace and the pool refuses unmatched namespaces."""
    ns = dep.metadata.namespace or "default"
    tenant = tenant_of(pool, ns, labels)
    if tenant is None and pool.spec.tenants:
        raise DemandError(
            "NoTenant",
            f"no tenant of GPUPool {pool.metadata.name} selects namespace {ns} and the pool refuses "
            "unmatched namespaces (`unmatchedNamespaces: Refuse`): label the namespace for a tenant's "
            "`namespaces` selector",
        )
    return tenant


def demand_for(dep: SLMDeployment, sizing: Sizing, tenant: str | None = None) -> Demand:
    spec = dep.spec
    share = None
    if spec.share is not None:
        share = ShareRequest(mechanism=spec.share.mechanism.value, mig_profile=spec.share.mig_profile)
    return Demand(
        deployment=deployment_key(dep),
        tier=spec.qos.value,
        replicas=dep.effective_replicas(),
        memory_bytes=sizing.memory_bytes,
        share=share,
        order_key=dep.metadata.creation_timestamp or "",
        tenant=tenant,
    )


def current_placements(pods: Iterable[Mapping[str, Any]]) -> list[CurrentPlacement]:
    """Running replicas of the pool, from the placement annotation slm-operator puts on every replica pod.

    Pods that are terminating, finished or not yet bound by the scheduler still hold their share: the plan
    must count them until they are gone.
    """
    out: dict[tuple[str, int], CurrentPlacement] = {}
    for pod in map(PodView, pods):
        rec = pod.placement
        if pod.finished or rec is None:
            continue
        out.setdefault((rec.deployment, rec.ordinal), placement_of(rec))
    return [out[k] for k in sorted(out)]


def placement_of(rec: PlacementRecord) -> CurrentPlacement:
    """The planner's view of a pod's placement record (ValueError when the record names no valid share)."""
    return CurrentPlacement(
        deployment=rec.deployment,
        ordinal=rec.ordinal,
        node=rec.node,
        gpu_index=rec.gpu,
        mechanism=rec.mechanism,
        mig_profile=rec.mig_profile,
    )


class PoolNodeError(InventoryError):
    """A node the pool selects cannot be read as GPU inventory; ``node`` is its name."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True)
class PoolInputs:
    """What planning one pool from manifests needs (``plan -f``, ``advise -f``)."""

    policy: PoolPolicy
    nodes: list[NodeInventory]
    demands: list[Demand]
    #: "namespace/name: Reason: message" of each deployment of the pool that cannot be sized
    problems: list[str]


def pool_inputs(
    pool: GPUPool,
    nodes: Iterable[Mapping[str, Any]],
    deployments: Iterable[SLMDeployment],
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> PoolInputs:
    """The pool's policy, the inventories of the nodes it selects (``PoolNodeError`` names a node it cannot
    read) and the demands of its deployments, in name order, each with its tenant (``namespaces``: the
    labels of the Namespaces given, by name)."""
    inventories = []
    selected = pool_nodes(pool, nodes)
    for node in selected:
        try:
            inventories.append(node_inventory(node, {})[0])
        except InventoryError as exc:
            raise PoolNodeError(
                node_name(node), f"GPUPool {pool.metadata.name} selects this node, but {exc}"
            ) from None
    demands, problems = [], []
    for dep in sorted(deployments, key=lambda d: (d.metadata.namespace or "", d.metadata.name)):
        if dep.spec.pool_ref.name != pool.metadata.name:
            continue
        try:
            tenant = deployment_tenant(pool, dep, (namespaces or {}).get(dep.metadata.namespace or "default"))
            demands.append(demand_for(dep, size_deployment(dep), tenant))
        except DemandError as exc:
            problems.append(f"{dep.metadata.namespace}/{dep.metadata.name}: {exc.reason}: {exc}")
    return PoolInputs(
        pool_policy(pool, shares_limit=shares_per_gpu_limit(selected)), inventories, demands, problems
    )
