"""Phases 1-3: what the planner needs, read from the World (nodes, deployments' sizes, current replicas)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment
from slm_operator.contract import (
    BORROWED_RESERVATION_LABEL,
    GPU_INVENTORY_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_DISABLED_CONFIG,
    MIG_PENDING_ANNOTATION,
    mig_retry_of,
)
from slm_operator.inventory import (
    DemandError,
    InventoryError,
    Sizing,
    current_placements,
    demand_for,
    deployment_key,
    deployment_tenant,
    node_down_since,
    node_inventory,
    node_name,
    pool_nodes,
    role_nodes,
    size_deployment,
)
from slm_operator.planner.model import ALL_MECHANISMS, CurrentPlacement, Demand, NodeInventory
from slm_operator.reconcile.rollback import (
    Rollback,
    RolledBack,
    node_rollback,
    rolled_back_inventory_node,
    tries_for,
)
from slm_operator.reconcile.scaling import planner_warm
from slm_operator.reconcile.world import World
from slm_operator.timebound import seconds_between
from slm_operator.views import NodeView, PodView


# ------------------------------------------------------------------------------------------ 1. read nodes
@dataclass(frozen=True)
class NodeReading:
    """One node of the pool the core understood: its object, the planner's inventory and where it came from."""

    view: NodeView
    inventory: NodeInventory
    source: str  # Agent | Labels


@dataclass(frozen=True)
class NodeReadings:
    readings: tuple[NodeReading, ...]  # by node name
    by_name: Mapping[str, NodeReading]
    errors: tuple[str, ...]  # nodes the core cannot understand (InventoryError)
    #: pool nodes NotReady for less than ``node_lost_seconds`` (read, but nothing new is placed on them) and
    #: NotReady for longer (left out: their replicas are planned elsewhere), each with when it went down
    not_ready: Mapping[str, str] = field(default_factory=dict)
    lost: Mapping[str, str] = field(default_factory=dict)
    #: nodes held on their last good MIG config after mig-manager failed a new one (read as they are, nothing
    #: new is placed on them; reconcile/rollback.py)
    rolled_back: Mapping[str, RolledBack] = field(default_factory=dict)
    #: names a new MIG config is tried under on each node before it is rolled back (one after a recent rollback)
    mig_tries: Mapping[str, int] = field(default_factory=dict)

    def down(self, node: str) -> str | None:
        """Why a replica on ``node`` does not serve, if the node is down ("" for a node of the pool that is up)."""
        if node in self.lost:
            return f"node {node} is NotReady since {self.lost[node] or 'an unknown time'}: re-planned on another node"
        if node in self.not_ready:
            return f"node {node} is NotReady since {self.not_ready[node] or 'an unknown time'}"
        return None

    @property
    def inventories(self) -> list[NodeInventory]:
        return [r.inventory for r in self.readings]


def read_nodes(world: World) -> NodeReadings:
    """The pool's nodes as planner inventories; a node that cannot be understood becomes an error instead. A
    node held on its last good MIG config is read in that layout, and nothing new is placed on it."""
    readings: list[NodeReading] = []
    errors: list[str] = []
    not_ready: dict[str, str] = {}
    lost: dict[str, str] = {}
    rolled: dict[str, RolledBack] = {}
    tries: dict[str, int] = {}
    for node in pool_nodes(world.pool, world.nodes, world.pools):
        name = node_name(node)
        since = node_down_since(node)
        if since is not None and seconds_between(since, world.now) >= world.cfg.node_lost_seconds:
            lost[name] = since  # as if it had left the pool: its replicas are planned elsewhere
            continue
        view = NodeView(node)
        held = node_rollback(view, world.now, world.cfg.mig_rollback_seconds, world.deployments, world.pods)
        try:
            if held is None:
                pending = pending_layout(view, world.mig_configs)
                inv, source = node_inventory(
                    node if pending is None else pending_layout_node(node, pending), world.mig_configs
                )
            else:
                good = held.last_good
                configs = (
                    {**world.mig_configs, good.config: good.entries} if good.entries else world.mig_configs
                )
                inv, source = node_inventory(rolled_back_inventory_node(node, good), configs)
        except InventoryError as exc:
            errors.append(str(exc))
            continue
        if held is not None:
            rolled[name] = held
        tries[name] = tries_for(Rollback.of(view), world.now, world.cfg.mig_rollback_seconds)
        if since is not None:
            not_ready[name] = since
        if since is not None or held is not None:
            inv = inv.model_copy(
                update={"schedulable": False}
            )  # its replicas stay pinned, nothing new goes there
        readings.append(NodeReading(view, inv, source))
    return NodeReadings(
        readings=tuple(readings),
        by_name={r.inventory.name: r for r in readings},
        errors=tuple(errors),
        not_ready=not_ready,
        lost=lost,
        rolled_back=rolled,
        mig_tries=tries,
    )


def pending_layout(node: NodeView, mig_configs: Mapping[str, Any]) -> str | None:
    """The MIG config the pool planned for ``node`` and holds back until its entry has reached mig-manager
    (``MIG_PENDING_ANNOTATION``), while the node's label still names another and the ConfigMap holds it."""
    name = node.annotations.get(MIG_PENDING_ANNOTATION)
    label = node.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG)
    if not name or mig_retry_of(label)[0] == name or not isinstance(mig_configs.get(name), list):
        return None
    return name


def pending_layout_node(node: Mapping[str, Any], config: str) -> dict[str, Any]:
    """The node as its inventory should read it while its relabel to ``config`` waits: in that layout, so that
    the pass keeps it. The layout was planned with what runs on the node in it (it is only recorded once nothing
    on the node is to be deleted, and no pod goes onto the node before it is relabelled). The agent's inventory,
    which reports the layout the GPUs have now, is set aside meanwhile."""
    meta = dict(node.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), MIG_CONFIG_LABEL: config}
    meta["annotations"] = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != GPU_INVENTORY_ANNOTATION
    }
    return {**node, "metadata": meta}


@dataclass(frozen=True)
class ReservationClaims:
    """Reserved GPUs taken now, per reservation: by its own workload (the LLM fallback) and by the trainers of
    FineTuneJobs that borrow it. The planner lends neither to BestEffort replicas."""

    own: Mapping[str, int]
    training: Mapping[str, int]

    @property
    def claimed(self) -> dict[str, int]:
        """What the planner keeps from BestEffort borrowers (it caps each at the reservation's size)."""
        return {
            name: self.own.get(name, 0) + self.training.get(name, 0) for name in {*self.own, *self.training}
        }


def claimed_reservations(world: World, node_names: set[str]) -> ReservationClaims:
    """Reserved GPUs taken by pods of the reservation's PriorityClass (the LLM fallback) on the pool's nodes,
    and by fine-tuning pods labelled as borrowing the reservation on the nodes that hold its GPUs."""
    live = [p for p in map(PodView, world.foreign_gpu_pods) if p.node_name in node_names and p.live]
    own: dict[str, int] = {}
    training: dict[str, int] = {}
    for r in world.pool.spec.reservations or []:
        cls = r.priority_class_name or world.cfg.llm_fallback_priority_class
        own[r.name] = sum(
            p.whole_gpus
            for p in live
            if p.priority_class == cls and BORROWED_RESERVATION_LABEL not in p.labels
        )
        holders = set(role_nodes(world.pool, world.nodes, r.name)) & node_names  # nodes the pool owns
        training[r.name] = sum(
            p.whole_gpus
            for p in live
            if p.labels.get(BORROWED_RESERVATION_LABEL) == r.name and p.node_name in holders
        )
    return ReservationClaims(own, training)


# ------------------------------------------------------------------------------------------ 2. size deployments
@dataclass(frozen=True)
class Sizings:
    by_deployment: Mapping[str, Sizing]  # "namespace/name" -> memory per replica
    errors: Mapping[str, tuple[str, str]]  # "namespace/name" -> (condition reason, message)
    demands: tuple[Demand, ...]  # in deployment-key order


def size_deployments(
    deployments: Iterable[SLMDeployment],
    now: str = "",
    pool: GPUPool | None = None,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> Sizings:
    """Memory per replica of every SLMDeployment and its demand on the planner (with the shares kept warm for
    it at ``now``, and its tenant of ``pool`` from its Namespace's labels in ``namespaces``); one that cannot
    be sized, or that no tenant covers in a pool that refuses it, gets the reason its Placed condition will
    give."""
    sizings: dict[str, Sizing] = {}
    errors: dict[str, tuple[str, str]] = {}
    demands: list[Demand] = []
    for dep in sorted(deployments, key=deployment_key):
        dkey = deployment_key(dep)
        try:
            sizing = size_deployment(dep)
            labels = (namespaces or {}).get(dep.metadata.namespace or "default")
            tenant = deployment_tenant(pool, dep, labels) if pool is not None else None
        except DemandError as exc:
            errors[dkey] = (exc.reason, str(exc))
            continue
        sizings[dkey] = sizing
        demand = demand_for(dep, sizing, tenant)
        warm = planner_warm(dep, now) if now else ()
        demands.append(Demand.model_validate({**demand.model_dump(), "warm": warm}) if warm else demand)
    return Sizings(sizings, errors, tuple(demands))


# ------------------------------------------------------------------------------------------ 3. current replicas
def current_replicas(
    pods: Iterable[Mapping[str, Any]],
    deployments: Sequence[SLMDeployment],
    caps: Mapping[str, int] | None = None,
) -> list[CurrentPlacement]:
    """Where each replica runs: its pod's placement record, else (the pod is briefly gone: rolling update,
    deleted by hand, evicted) the place its SLMDeployment status remembers, so that the planner does not
    repartition a GPU for a replica that is coming back. ``caps`` (deployment -> replicas a ResourceQuota
    admits) bounds the remembered ones, so the planner never drops a replica with a pod for one without."""
    current = current_placements(pods)
    have = {(c.deployment, c.ordinal) for c in current}
    for dep in deployments:
        current += _remembered(dep, have, (caps or {}).get(deployment_key(dep)))
    current.sort(key=lambda c: (c.deployment, c.ordinal))
    return current


def _remembered(
    dep: SLMDeployment, have: set[tuple[str, int]], cap: int | None = None
) -> list[CurrentPlacement]:
    """The wanted replicas of ``dep`` that have no pod (not in ``have``) but a usable place in its status.

    Ordinals may have gaps (a scale-down removes the replica that frees the most, planner/scaledown.py), so
    "wanted" is a count: the places of the lowest ordinals in the status, as many as the deployment wants
    beyond its replicas with a pod."""
    dkey = deployment_key(dep)
    wanted = dep.effective_replicas() if cap is None else min(cap, dep.effective_replicas())
    room = wanted - sum(1 for d, _ in have if d == dkey)
    out: list[CurrentPlacement] = []
    for pl in sorted(
        dep.status.placements if dep.status and dep.status.placements else [], key=lambda p: p.replica
    ):
        if len(out) >= room:
            break
        if (dkey, pl.replica) in have or not pl.node or pl.gpu < 0 or pl.mechanism not in ALL_MECHANISMS:
            continue
        out.append(
            CurrentPlacement(
                deployment=dkey,
                ordinal=pl.replica,
                node=pl.node,
                gpu_index=pl.gpu,
                mechanism=pl.mechanism,
                mig_profile=pl.mig_profile,
            )
        )
    return out
