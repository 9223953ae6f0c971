"""The operator's decision for one GPUPool, as a pure function of what the shell gathered.

``decide(world)`` plans the pool and returns every change the shell must make: node labels and the config
entries they name, replica pods to create and delete, Services, statuses and events. Ordering rules that keep
the cluster safe live here too, so they are unit-tested without a cluster:

* a node's ``nvidia.com/mig.config`` / ``nvidia.com/device-plugin.config`` label changes only after every pod
  that the new configuration would take a share from is gone (drain before repartition);
* a replica pod is created only when its node reports the planned configuration as applied
  (``nvidia.com/mig.config.state=success`` for MIG, the GFD sharing labels for MPS and time-slicing);
* a replica that moves gets its new pod only after the old pod is gone (its share is freed first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slm_operator.api.v1alpha1 import (
    GPUPool,
    GPUPoolStatus,
    PoolNodeStatus,
    SLMDeployment,
    SLMDeploymentStatus,
)
from slm_operator.catalog import gpu_by_key
from slm_operator.contract import (
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_REPLICAS_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_STATE_LABEL,
    ORIGINAL_LABELS_ANNOTATION,
    PLACEMENT_ANNOTATION,
    SHARING_STRATEGY_LABEL,
)
from slm_operator.inventory import (
    DemandError,
    InventoryError,
    Sizing,
    current_placements,
    demand_for,
    deployment_key,
    node_inventory,
    pool_nodes,
    pool_policy,
    size_deployment,
)
from slm_operator.planner import plan_pool
from slm_operator.planner.model import ALL_MECHANISMS, CurrentPlacement, Demand, NodeInventory, Plan
from slm_operator.render import (
    NodeConfig,
    OperatorConfig,
    endpoint,
    node_config,
    replica_pod,
    service,
)
from slm_operator.status import deployment_status, pool_status
from slm_operator.views import PodView


@dataclass
class World:
    """Everything the shell read for one pool."""

    pool: GPUPool
    nodes: list[dict[str, Any]]
    deployments: list[SLMDeployment]
    pods: list[dict[str, Any]]  # replica pods of this pool (label slm.io/pool)
    foreign_gpu_pods: list[dict[str, Any]]  # other pods on the pool's nodes that hold nvidia.com/gpu
    mig_configs: dict[str, Any]  # current `mig-configs` of the mig-parted ConfigMap
    now: str
    cfg: OperatorConfig = field(default_factory=OperatorConfig)


@dataclass
class Event:
    kind: str  # SLMDeployment | GPUPool
    namespace: str | None
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decisions:
    plan: Plan | None = None
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    node_annotations: dict[str, dict[str, str]] = field(default_factory=dict)
    node_configs: dict[str, NodeConfig] = field(default_factory=dict)
    mig_entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    device_plugin_entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods_create: list[dict[str, Any]] = field(default_factory=list)
    pods_delete: list[tuple[str, str, str]] = field(default_factory=list)  # namespace, name, reason
    services: list[dict[str, Any]] = field(default_factory=list)
    deployment_statuses: dict[str, SLMDeploymentStatus] = field(default_factory=dict)
    pool_status: GPUPoolStatus | None = None
    events: list[Event] = field(default_factory=list)
    waiting: bool = False  # something is in flight: re-check soon


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def claimed_reservations(world: World, node_names: set[str]) -> dict[str, int]:
    """Reserved GPUs taken by pods of the reservation's PriorityClass (the LLM fallback) on the pool's nodes."""
    out: dict[str, int] = {}
    for r in world.pool.spec.reservations or []:
        cls = r.priority_class_name or world.cfg.llm_fallback_priority_class
        n = sum(
            p.whole_gpus
            for p in map(PodView, world.foreign_gpu_pods)
            if p.node_name in node_names and p.priority_class == cls and p.live
        )
        out[r.name] = n
    return out


def _node_ready_for(node: Mapping[str, Any], cfg: NodeConfig) -> str | None:
    """None when the node reports ``cfg`` as applied (its MIG layout and its sharing mode); otherwise why a
    replica planned there must wait."""
    labels = _meta(node).get("labels") or {}
    name = _meta(node).get("name")
    if cfg.mig_capable:
        if labels.get(MIG_CONFIG_LABEL, "all-disabled") != cfg.mig_config:
            return f"node {name}: waiting for mig-manager to pick up MIG config {cfg.mig_config}"
        state = labels.get(MIG_CONFIG_STATE_LABEL)
        if state == "failed":
            return f"node {name}: mig-manager failed to apply MIG config {cfg.mig_config} (nvidia.com/mig.config.state=failed)"
        if state != "success":
            return f"node {name}: MIG config {cfg.mig_config} is {state or 'not applied yet'}"
    if labels.get(DEVICE_PLUGIN_CONFIG_LABEL) != cfg.device_plugin_config:
        return f"node {name}: waiting for the device plugin config {cfg.device_plugin_config}"
    entry = cfg.device_plugin_entry.get("sharing") or {}
    want = "mps" if "mps" in entry else ("time-slicing" if "timeSlicing" in entry else "none")
    if labels.get(SHARING_STRATEGY_LABEL, "none") != want:
        return f"node {name}: waiting for GPU feature discovery to report sharing strategy {want}"
    if want != "none":
        share_cfg = entry.get("mps") or entry.get("timeSlicing") or {}
        replicas = share_cfg["resources"][0]["replicas"]
        if labels.get(GPU_REPLICAS_LABEL) != str(replicas):
            return f"node {name}: waiting for the device plugin to advertise {replicas} replicas per GPU"
    return None


def decide(world: World) -> Decisions:
    d = Decisions()
    pool = world.pool
    cfg = world.cfg
    now = world.now
    nodes = pool_nodes(pool, world.nodes)
    inventories: list[NodeInventory] = []
    node_status: list[PoolNodeStatus] = []
    errors: list[str] = []
    node_by_name: dict[str, Mapping[str, Any]] = {}
    for n in nodes:
        try:
            inv, source = node_inventory(n, world.mig_configs)
        except InventoryError as exc:
            errors.append(str(exc))
            continue
        inventories.append(inv)
        node_by_name[inv.name] = n
        labels = _meta(n).get("labels") or {}
        node_status.append(
            PoolNodeStatus(
                name=inv.name,
                product=inv.gpus[0].model if inv.gpus else "",
                gpus=len(inv.gpus),
                inventory_source=source,
                mig_config=labels.get(MIG_CONFIG_LABEL, ""),
                mig_config_state=labels.get(MIG_CONFIG_STATE_LABEL, ""),
            )
        )
    # Demands
    sizings: dict[str, Sizing] = {}
    sizing_errors: dict[str, tuple[str, str]] = {}
    demands: list[Demand] = []
    for dep in sorted(world.deployments, key=deployment_key):
        dkey = deployment_key(dep)
        try:
            sizing = size_deployment(dep)
        except DemandError as exc:
            sizing_errors[dkey] = (exc.reason, str(exc))
            continue
        sizings[dkey] = sizing
        demands.append(demand_for(dep, sizing))
    current = current_placements(p for p in world.pods)
    # A replica whose pod is briefly gone (rolling update, deleted by hand, evicted) keeps its place: the
    # status remembers it, so the planner does not repartition a GPU for a replica that is coming back.
    have = {(c.deployment, c.ordinal) for c in current}
    for dep in world.deployments:
        dkey = deployment_key(dep)
        for pl in dep.status.placements if dep.status and dep.status.placements else []:
            if (dkey, pl.replica) in have or not pl.node or pl.gpu < 0 or pl.mechanism not in ALL_MECHANISMS:
                continue
            if pl.replica >= (0 if dep.spec.suspend else dep.spec.replicas):
                continue
            current.append(
                CurrentPlacement(
                    deployment=dkey,
                    ordinal=pl.replica,
                    node=pl.node,
                    gpu_index=pl.gpu,
                    mechanism=pl.mechanism,
                    mig_profile=pl.mig_profile,
                )
            )
    current.sort(key=lambda c: (c.deployment, c.ordinal))
    claimed = claimed_reservations(world, set(node_by_name))
    plan = plan_pool(pool_policy(pool, claimed), inventories, demands, current)
    d.plan = plan

    # Node configurations and the stable choice of reserved/segment GPUs.
    nplans = {np.name: np for np in plan.nodes}
    for inv in inventories:
        np_ = nplans.get(inv.name)
        if np_ is None:
            continue
        gpu_key = inv.gpus[0].model if inv.gpus else ""
        nc = node_config(np_, gpu_key, bool(gpu_key) and gpu_by_key(gpu_key).mig_capable)
        d.node_configs[inv.name] = nc
        if nc.mig_entries:
            d.mig_entries[nc.mig_config] = nc.mig_entries
        d.device_plugin_entries[nc.device_plugin_config] = nc.device_plugin_entry
        roles = {
            str(g.index): (g.reservation or g.segment)
            for g in plan.gpus
            if g.node == inv.name and (g.reservation or g.segment)
        }
        d.node_annotations[inv.name] = {GPU_ROLES_ANNOTATION: json.dumps(roles, sort_keys=True)}
        for s in node_status:
            if s.name == inv.name:
                s.sharing = np_.sharing
        node = node_by_name[inv.name]
        annotations = _meta(node).get("annotations") or {}
        if ORIGINAL_LABELS_ANNOTATION not in annotations:
            labels = _meta(node).get("labels") or {}
            original = {k: labels.get(k) for k in (MIG_CONFIG_LABEL, DEVICE_PLUGIN_CONFIG_LABEL)}
            d.node_annotations[inv.name][ORIGINAL_LABELS_ANNOTATION] = json.dumps(original, sort_keys=True)

    # Replica pods: what should exist.
    deps = {deployment_key(dep): dep for dep in world.deployments}
    desired: dict[tuple[str, int], dict[str, Any]] = {}
    for g in plan.gpus:
        for r in g.replicas:
            owner = deps.get(r.deployment)
            if owner is None or r.deployment not in sizings:
                continue
            desired[(r.deployment, r.ordinal)] = replica_pod(
                owner, r, g.node, g.index, g.product, pool.metadata.name, sizings[r.deployment], cfg
            )
    existing: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for pod in world.pods:
        view = PodView(pod)
        rec = view.placement
        rkey = (
            (rec.deployment, rec.ordinal)
            if rec
            else (f"{view.namespace}/{view.labels.get(DEPLOYMENT_LABEL, '')}", -1)
        )
        existing.setdefault(rkey, []).append(pod)

    # Delete pods that are not wanted as they are (scale-down, yield, move, changed spec).
    keep_names = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in desired.values()}
    eviction_reasons = {(e.deployment, e.ordinal): e for e in plan.pool.evictions}
    draining_nodes: set[str] = set()
    # A new model/runtime/adapter (same placement, new spec hash) rolls one replica at a time, and only
    # while every other replica of the deployment is ready: a rollout never takes a deployment down.
    rolling: set[str] = set()
    for rkey, pods in sorted(existing.items()):
        for pod in pods:
            meta = _meta(pod)
            ident = (meta.get("namespace"), meta.get("name"))
            if ident in keep_names:
                continue
            if not meta.get("deletionTimestamp"):
                ev = eviction_reasons.get(rkey)
                reason: str = ev.reason if ev else ("ScaledDown" if rkey not in desired else "Replaced")
                if reason == "Replaced" and _same_placement(pod, desired[rkey]):
                    others = [k for k in desired if k[0] == rkey[0] and k != rkey]
                    ready_others = [k for k in others if any(PodView(p).ready for p in existing.get(k, []))]
                    if rkey[0] in rolling or len(ready_others) < len(others):
                        d.waiting = True
                        continue
                    rolling.add(rkey[0])
                    reason = "RollingUpdate"
                d.pods_delete.append((str(ident[0]), str(ident[1]), reason))
            elif rkey[0] in desired_deployments(desired):
                rolling.add(rkey[0])
            view = PodView(pod)
            pod_node = view.bound_node or (view.placement.node if view.placement else "")
            if pod_node:
                draining_nodes.add(pod_node)

    # Node labels: change a node's configuration only once nothing it would take away is still running.
    waiting_nodes: list[str] = []
    for name, nc in sorted(d.node_configs.items()):
        labels = _meta(node_by_name[name]).get("labels") or {}
        changed = any(labels.get(k) != v for k, v in nc.labels.items())
        if changed and name in draining_nodes:
            waiting_nodes.append(name)
            d.waiting = True
            continue
        if changed:
            d.node_labels[name] = nc.labels
            waiting_nodes.append(name)
            d.waiting = True

    # Create missing pods where the node is ready and no older pod of the same replica remains.
    waiting_by_dep: dict[str, dict[int, str]] = {}
    for rkey, pod in sorted(desired.items()):
        olds = existing.get(rkey, [])
        if any(_meta(o).get("name") == pod["metadata"]["name"] for o in olds):
            continue
        if olds:  # the previous pod of this replica still holds its share
            waiting_by_dep.setdefault(rkey[0], {})[rkey[1]] = (
                "waiting for the previous pod of this replica to stop"
            )
            d.waiting = True
            continue
        node_name = PodView(pod).placement.node  # type: ignore[union-attr]  # rendered by replica_pod
        target = d.node_configs.get(node_name)
        why = None if target is None else _node_ready_for(node_by_name[node_name], target)
        if target is not None and node_name in d.node_labels:
            why = why or f"node {node_name}: configuration is being changed"
        if why:
            waiting_by_dep.setdefault(rkey[0], {})[rkey[1]] = why
            d.waiting = True
            continue
        d.pods_create.append(pod)

    # Services and statuses.
    plans_by_dep = {dp.deployment: dp for dp in plan.deployments}
    for dep in sorted(world.deployments, key=deployment_key):
        dkey = deployment_key(dep)
        d.services.append(service(dep))
        dep_pods = [p for k, ps in existing.items() if k[0] == dkey for p in ps]
        st = deployment_status(
            dep,
            sizing=sizings.get(dkey),
            sizing_error=sizing_errors.get(dkey),
            plan=plans_by_dep.get(dkey),
            pods=dep_pods,
            waiting=waiting_by_dep.get(dkey, {}),
            endpoint=endpoint(dep),
            now=now,
        )
        d.deployment_statuses[dkey] = st
        d.events += _transition_events(dep, st)
    error = ("UnknownGPU", "; ".join(errors)) if errors and not inventories else None
    d.pool_status = pool_status(
        pool,
        plan=None if error else plan,
        error=error,
        nodes=node_status,
        reservations_in_use=claimed,
        waiting_nodes=waiting_nodes,
        now=now,
    )
    if errors and inventories and d.pool_status.conditions:
        from slm_operator.status import DEGRADED, set_condition

        d.pool_status.conditions = set_condition(
            d.pool_status.conditions,
            DEGRADED,
            True,
            "UnknownGPU",
            "; ".join(errors),
            pool.metadata.generation,
            now,
        )
    for e in plan.pool.evictions:
        ns, _, name = e.deployment.partition("/")
        d.events.append(
            Event(
                "SLMDeployment",
                ns,
                name,
                "Warning" if e.to_node is None else "Normal",
                "Yielded" if e.to_node is None else "Moved",
                f"replica {e.ordinal}: {e.message}",
            )
        )
    return d


def _same_placement(pod: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    return bool(
        (_meta(pod).get("annotations") or {}).get(PLACEMENT_ANNOTATION)
        == want["metadata"]["annotations"][PLACEMENT_ANNOTATION]
    )


def desired_deployments(desired: Mapping[tuple[str, int], Any]) -> set[str]:
    return {k[0] for k in desired}


def _transition_events(dep: SLMDeployment, new: SLMDeploymentStatus) -> list[Event]:
    """Events for decisions users care about: placed, unplaceable (on a change of the Placed condition)."""
    old = {c.type: c for c in (dep.status.conditions if dep.status and dep.status.conditions else [])}
    out = []
    for c in new.conditions or []:
        if c.type != "Placed":
            continue
        before = old.get("Placed")
        if before is not None and before.status == c.status and before.reason == c.reason:
            continue
        ns = dep.metadata.namespace
        if c.status.value == "True":
            out.append(Event("SLMDeployment", ns, dep.metadata.name, "Normal", "Placed", c.message))
        else:
            out.append(
                Event(
                    "SLMDeployment",
                    ns,
                    dep.metadata.name,
                    "Warning",
                    "Unplaceable",
                    f"{c.reason}: {c.message}",
                )
            )
    return out


def restore_labels(node: Mapping[str, Any]) -> dict[str, str | None]:
    """Labels to put back on a node the pool releases (None = remove), from what was recorded on take-over."""
    raw = (_meta(node).get("annotations") or {}).get(ORIGINAL_LABELS_ANNOTATION)
    if not raw:
        return {}
    try:
        original: dict[str, str | None] = json.loads(raw)
    except ValueError:
        return {}
    return original
