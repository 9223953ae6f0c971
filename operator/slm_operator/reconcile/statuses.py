"""Phase 10: Services, the SLMDeployment and GPUPool statuses, and the events users care about."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.api.base import Condition
from slm_operator.api.v1alpha1 import GPUPoolStatus, PoolNodeStatus, SLMDeployment, SLMDeploymentStatus
from slm_operator.contract import (
    MIG_CONFIG_LABEL,
    MIG_CONFIG_MAX_TRIES,
    MIG_CONFIG_STATE_LABEL,
    MigConfigState,
)
from slm_operator.events import Event
from slm_operator.inventory import deployment_key, overlapping_nodes
from slm_operator.planner.model import DeploymentPlan, Plan
from slm_operator.reconcile.inputs import NodeReadings, ReservationClaims, Sizings
from slm_operator.reconcile.nodes import NodeConfigs as PoolNodeConfigs
from slm_operator.reconcile.nodes import Relabels as PoolRelabels
from slm_operator.reconcile.podsets import PodSets
from slm_operator.reconcile.quotas import QuotaPlan
from slm_operator.reconcile.rollback import ROLLED_BACK, pool_message
from slm_operator.reconcile.scaling import warm_shares
from slm_operator.reconcile.world import World
from slm_operator.render import endpoint, service
from slm_operator.status import (
    DEGRADED,
    OVERLAP,
    PLACED,
    READY,
    condition,
    deployment_status,
    pool_status,
    set_condition,
)


@dataclass(frozen=True)
class DeploymentReports:
    services: tuple[dict[str, Any], ...]
    statuses: Mapping[str, SLMDeploymentStatus]  # "namespace/name" -> status, in deployment-key order
    events: tuple[Event, ...]  # Placed / Unplaceable on a change of the Placed condition


def report_deployments(
    world: World,
    plan: Plan,
    sizings: Sizings,
    sets: PodSets,
    waiting: Mapping[str, Mapping[int, str]],
    nodes: NodeReadings,
    within: QuotaPlan | None = None,
) -> DeploymentReports:
    """Each SLMDeployment's Service and status (its sizing, its part of the plan, its pods, the replicas
    whose pod waits, with why, or whose node is down, and what a ResourceQuota holds back), and an event when
    its Placed condition changes."""
    plans = {dp.deployment: dp for dp in plan.deployments}
    down_nodes = {n: why for n in (*nodes.not_ready, *nodes.lost) if (why := nodes.down(n))}
    for p in sets.stranded:
        down_nodes.setdefault(
            p.bound_node, f"node {p.bound_node} no longer exists: re-planned on another node"
        )
    services: list[dict[str, Any]] = []
    statuses: dict[str, SLMDeploymentStatus] = {}
    events: list[Event] = []
    for dep in sorted(world.deployments, key=deployment_key):
        dkey = deployment_key(dep)
        services.append(service(dep))
        st = deployment_status(
            dep,
            sizing=sizings.by_deployment.get(dkey),
            sizing_error=sizings.errors.get(dkey),
            plan=plans.get(dkey),
            pods=list(sets.pods_by_deployment.get(dkey, ())),
            waiting=waiting.get(dkey, {}),
            endpoint=endpoint(dep),
            now=world.now,
            down_nodes=down_nodes,
            quota=_quota(dkey, plans.get(dkey), dep.effective_replicas(), within),
        )
        warm = warm_shares(dep, plan, world.now)
        if warm is not None:  # set only when there is something: an unset field is left out of the apply
            st.warm_shares = warm
        statuses[dkey] = st
        events += _transition_events(dep, st)
    return DeploymentReports(tuple(services), statuses, tuple(events))


def _quota(dkey: str, plan: DeploymentPlan | None, desired: int, within: QuotaPlan | None) -> str:
    """The Placed message when a ResourceQuota holds replicas back ("" when none does)."""
    limit = within.limits.get(dkey) if within is not None else None
    if limit is None:
        return ""
    return limit.message(plan.placed if plan is not None else 0, desired)


def _transition_events(dep: SLMDeployment, new: SLMDeploymentStatus) -> list[Event]:
    """Placed / Unplaceable, when the Placed condition's status or reason changes."""
    old = {c.type: c for c in (dep.status.conditions if dep.status and dep.status.conditions else [])}
    before = old.get(PLACED)
    out = []
    for c in new.conditions or []:
        if c.type != PLACED:
            continue
        if before is not None and before.status == c.status and before.reason == c.reason:
            continue
        ns, name = dep.metadata.namespace, dep.metadata.name
        if c.status.value == "True":
            out.append(Event("SLMDeployment", ns, name, "Normal", "Placed", c.message, dep.metadata.uid))
        else:
            message = f"{c.reason}: {c.message}"
            out.append(Event("SLMDeployment", ns, name, "Warning", "Unplaceable", message, dep.metadata.uid))
    return out


def report_pool(
    world: World,
    plan: Plan,
    nodes: NodeReadings,
    configs: PoolNodeConfigs,
    claims: ReservationClaims,
    relabels: PoolRelabels,
) -> GPUPoolStatus:
    """The GPUPool status: the plan's figures, each node, ``Degraded`` when a node cannot be understood
    (``Ready=False`` too when no node can), mig-manager failed a node's MIG config on every try (the node went
    back to its last good one: ``MigLayoutRolledBack``; it has none: ``MigConfigFailed``), and why a node's new
    configuration waits (``Ready`` message)."""
    errors = "; ".join(nodes.errors)
    error = ("UnknownGPU", errors) if nodes.errors and not nodes.readings else None
    st = pool_status(
        world.pool,
        plan=None if error else plan,
        error=error,
        nodes=_node_statuses(nodes, configs.sharing),
        reservations_in_use=claims.own,
        reservations_lent_to_training=claims.training,
        waiting_nodes=list(relabels.waiting_nodes),
        now=world.now,
    )
    if not st.conditions:
        return st
    generation = world.pool.metadata.generation
    if nodes.errors and nodes.readings:
        st.conditions = set_condition(
            st.conditions, DEGRADED, True, "UnknownGPU", errors, generation, world.now
        )
    if nodes.rolled_back and not error:
        message = pool_message(nodes.rolled_back)
        st.conditions = set_condition(
            st.conditions, DEGRADED, True, ROLLED_BACK, message, generation, world.now
        )
    if configs.mig_failed and not error:
        message = _mig_failed(configs.mig_failed)
        if nodes.rolled_back:
            message = f"{message}; {pool_message(nodes.rolled_back)}"
        st.conditions = set_condition(
            st.conditions, DEGRADED, True, "MigConfigFailed", message, generation, world.now
        )
    st.conditions = _overlap_conditions(st.conditions, world, set(nodes.by_name))
    if relabels.held and not error:
        ready = next((c for c in st.conditions if c.type == READY), None)
        why = "; ".join(relabels.held[n] for n in sorted(relabels.held)[:MAX_HELD_LISTED])
        if ready is not None and ready.status == "False":
            st.conditions = set_condition(
                st.conditions, READY, False, ready.reason, f"{ready.message}; {why}", generation, world.now
            )
    return st


MAX_HELD_LISTED = 3


def _overlap_conditions(conditions: list[Condition], world: World, owned: set[str]) -> list[Condition]:
    """``NodeSelectorOverlap`` on every pool whose nodes another pool selects too; the pool that does not plan
    some of its nodes (a younger one) is also ``Degraded`` (and not ``Ready`` when it plans none)."""
    generation, now = world.pool.metadata.generation, world.now
    overlap = overlapping_nodes(world.pool, world.nodes, world.pools)
    if not overlap:
        if condition(conditions, OVERLAP) is None:
            return conditions
        return set_condition(
            conditions,
            OVERLAP,
            False,
            "NoOverlap",
            "no other GPUPool selects this pool's nodes",
            generation,
            now,
        )
    message = _overlap(overlap, owned)
    conditions = set_condition(conditions, OVERLAP, True, "OverlappingNodeSelector", message, generation, now)
    if set(overlap) - owned:
        conditions = set_condition(conditions, DEGRADED, True, "NodesInAnotherPool", message, generation, now)
        if not owned:
            conditions = set_condition(
                conditions, READY, False, "NodesInAnotherPool", message, generation, now
            )
    return conditions


MAX_OVERLAP_LISTED = 5


def _overlap(overlap: Mapping[str, tuple[str, ...]], owned: set[str]) -> str:
    """Which nodes another pool selects too, and which pool plans them (the older one, inventory.node_owner)."""

    def listed(names: list[str]) -> str:
        more = f" and {len(names) - MAX_OVERLAP_LISTED} more" if len(names) > MAX_OVERLAP_LISTED else ""
        return ", ".join(names[:MAX_OVERLAP_LISTED]) + more

    kept = sorted(n for n in overlap if n in owned)
    lost = sorted(n for n in overlap if n not in owned)
    others = sorted({p for pools in overlap.values() for p in pools})
    parts = []
    if kept:
        parts.append(f"this pool (the older) plans {listed(kept)}")
    if lost:
        parts.append(f"this pool does not use {listed(lost)}: an older pool plans them")
    return (
        f"GPUPool {', '.join(repr(o) for o in others)} also select{'s' if len(others) == 1 else ''} nodes of this "
        f"pool; {'; '.join(parts)}. A node belongs to one pool: make the pools' spec.nodeSelector disjoint"
    )


def _mig_failed(failed: Mapping[str, str]) -> str:
    nodes = ", ".join(f"{n} ({c})" for n, c in sorted(failed.items()))
    return (
        f"mig-manager failed to apply the MIG config on {nodes} after {MIG_CONFIG_MAX_TRIES} tries "
        f"({MIG_CONFIG_STATE_LABEL}={MigConfigState.FAILED}); see the node's events and docs/operations.md"
    )


def _node_statuses(nodes: NodeReadings, sharing: Mapping[str, str]) -> list[PoolNodeStatus]:
    out: list[PoolNodeStatus] = []
    for r in nodes.readings:
        inv = r.inventory
        st = PoolNodeStatus(
            name=inv.name,
            product=inv.gpus[0].model if inv.gpus else "",
            gpus=len(inv.gpus),
            inventory_source=r.source,
            mig_config=r.view.labels.get(MIG_CONFIG_LABEL, ""),
            mig_config_state=r.view.labels.get(MIG_CONFIG_STATE_LABEL, ""),
        )
        if inv.name in sharing:  # set after construction, as before: the field then counts as set
            st.sharing = sharing[inv.name]
        out.append(st)
    return out


def eviction_events(world: World, plan: Plan) -> tuple[Event, ...]:
    """Moved (Normal) or Yielded (Warning) for every replica the planner evicts."""
    uids = {deployment_key(d): d.metadata.uid for d in world.deployments}
    out: list[Event] = []
    for e in plan.pool.evictions:
        ns, _, name = e.deployment.partition("/")
        moved = e.to_node is not None
        out.append(
            Event(
                "SLMDeployment",
                ns,
                name,
                "Normal" if moved else "Warning",
                "Moved" if moved else "Yielded",
                f"replica {e.ordinal}: {e.message}",
                uids.get(e.deployment),
            )
        )
    return tuple(out)
