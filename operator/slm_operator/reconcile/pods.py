"""Phases 7 and 9: which replica pods to delete, and which to create."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.contract import PLACEMENT_ANNOTATION
from slm_operator.planner.model import Plan
from slm_operator.reconcile.gates import (
    CREATE_GATES,
    MOVE_TARGET_GATES,
    ROLLING_UPDATE_GATES,
    CreationContext,
    NodeTarget,
    RolloutContext,
)
from slm_operator.reconcile.inputs import NodeReadings
from slm_operator.reconcile.nodes import NodeConfigs, Relabels
from slm_operator.reconcile.podsets import DesiredPod, PodSets
from slm_operator.reconcile.world import ReplicaKey
from slm_operator.views import PodView

ROLLING_UPDATE = "RollingUpdate"
NODE_LOST = "NodeLost"  # the pod's node is NotReady past node_lost_seconds, or deleted


# ------------------------------------------------------------------------------------------ 7. deletions
@dataclass(frozen=True)
class Deletions:
    pods: tuple[tuple[str, str, str], ...]  # namespace, name, reason
    held: Mapping[ReplicaKey, str]  # replicas whose in-place replacement waits (ROLLING_UPDATE_GATES)
    draining_nodes: frozenset[str]  # nodes where a pod is being deleted now or is terminating


def delete_pods(sets: PodSets, plan: Plan) -> Deletions:
    """Delete pods that are not wanted as they are: scale-down, yield or move (the planner's evictions), a new
    placement, or a new spec on the same placement (new model, runtime or adapter), which rolls one replica
    at a time while the others are ready. The nodes of deleted and terminating pods are draining."""
    evictions = {ReplicaKey(e.deployment, e.ordinal): e.reason for e in plan.pool.evictions}
    rolling: set[str] = set()
    deletes: list[tuple[str, str, str]] = []
    held: dict[ReplicaKey, str] = {}
    draining: set[str] = set()
    for key, replica in sorted(sets.existing.items()):
        for pod in replica.pods:
            if (pod.namespace, pod.name) in sets.keep:
                continue
            if pod.deleting:
                if (
                    key.deployment in sets.deployments
                ):  # a terminating pod is the deployment's one replacement
                    rolling.add(key.deployment)
            else:
                reason = evictions.get(key) or _unwanted(key, pod, sets)
                if reason == ROLLING_UPDATE:
                    why = ROLLING_UPDATE_GATES.first_failure(
                        RolloutContext(sets.unready, frozenset(rolling)), key
                    )
                    if why is not None:
                        held[key] = why
                        continue
                    rolling.add(key.deployment)
                deletes.append((pod.namespace, pod.name, reason))
            node = pod.bound_node or (pod.placement.node if pod.placement else "")
            if node:
                draining.add(node)
    deletes += [(p.namespace, p.name, NODE_LOST) for p in sets.stranded if not p.deleting]
    return Deletions(tuple(deletes), held, frozenset(draining))


def _unwanted(key: ReplicaKey, pod: PodView, sets: PodSets) -> str:
    """Why a pod the plan does not want goes: its replica is no longer wanted, or it is replaced (elsewhere,
    or in place by a rolling update)."""
    want = sets.desired.get(key)
    if want is None:
        return "ScaledDown"
    same_placement = pod.annotations.get(PLACEMENT_ANNOTATION) == want.placement_annotation
    return ROLLING_UPDATE if same_placement else "Replaced"


# ------------------------------------------------------------------------------------------ 9. creations
@dataclass(frozen=True)
class Creations:
    pods: tuple[dict[str, Any], ...]
    waiting: Mapping[
        str, Mapping[int, str]
    ]  # deployment -> replica ordinal -> why its pod waits (CREATE_GATES)


def create_pods(sets: PodSets, nodes: NodeReadings, configs: NodeConfigs, relabels: Relabels) -> Creations:
    """Create the desired pods that do not exist yet and that every gate lets through."""
    ctx = CreationContext(
        existing=sets.existing,
        targets={name: NodeTarget(nodes.by_name[name].view, nc) for name, nc in configs.by_node.items()},
        relabelled=frozenset(relabels.labels),
    )
    pods: list[dict[str, Any]] = []
    waiting: dict[str, dict[int, str]] = {}
    for key, want in sorted(sets.desired.items()):
        prev = sets.existing.get(key)
        if prev is not None and want.view.name in prev.names:
            continue
        why = CREATE_GATES.first_failure(ctx, want)
        if why is None:
            pods.append(want.manifest)
        else:
            waiting.setdefault(key.deployment, {})[key.ordinal] = why
    return Creations(tuple(pods), waiting)


def with_move_deletes(
    deletions: Deletions, moves: tuple[tuple[str, str, str], ...], sets: PodSets
) -> Deletions:
    """Phase 7 plus the pods consolidation moves delete (an old pod whose new one is Ready, a new pod that
    missed its deadline): their nodes drain too."""
    if not moves:
        return deletions
    names = {(ns, name) for ns, name, _ in moves}
    nodes = {
        pod.bound_node or (pod.placement.node if pod.placement else "")
        for replica in sets.existing.values()
        for pod in replica.pods
        if (pod.namespace, pod.name) in names
    }
    return Deletions(
        (*deletions.pods, *moves), deletions.held, deletions.draining_nodes | {n for n in nodes if n}
    )


def create_move_targets(
    targets: Mapping[ReplicaKey, DesiredPod],
    sets: PodSets,
    nodes: NodeReadings,
    configs: NodeConfigs,
    relabels: Relabels,
) -> dict[ReplicaKey, dict[str, Any]]:
    """The new pods of make-before-break moves that pass :data:`MOVE_TARGET_GATES` (and whose name is not
    taken by a pod still terminating)."""
    ctx = CreationContext(
        existing=sets.existing,
        targets={name: NodeTarget(nodes.by_name[name].view, nc) for name, nc in configs.by_node.items()},
        relabelled=frozenset(relabels.labels),
    )
    out: dict[ReplicaKey, dict[str, Any]] = {}
    for key, want in sorted(targets.items()):
        prev = sets.existing.get(key)
        if prev is not None and want.view.name in prev.names:
            continue
        if MOVE_TARGET_GATES.first_failure(ctx, want) is None:
            out[key] = want.manifest
    return out
