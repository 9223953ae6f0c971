"""Phase 6: the replica pods the plan wants and the ones that exist, keyed by replica."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from slm_operator.contract import DEPLOYMENT_LABEL, PLACEMENT_ANNOTATION
from slm_operator.inventory import deployment_key
from slm_operator.planner.model import Plan
from slm_operator.reconcile.inputs import Sizings
from slm_operator.reconcile.world import ReplicaKey, World
from slm_operator.render import replica_pod
from slm_operator.views import PodView


@dataclass(frozen=True)
class DesiredPod:
    """The pod one replica should have, rendered, on the node the plan gives it."""

    key: ReplicaKey
    node: str
    manifest: dict[str, Any]

    @cached_property
    def view(self) -> PodView:
        return PodView(self.manifest)

    @property
    def placement_annotation(self) -> str:
        return self.view.annotations[PLACEMENT_ANNOTATION]


@dataclass(frozen=True)
class ExistingReplica:
    """The pods one replica has now (usually one; more while a replacement is under way)."""

    pods: tuple[PodView, ...]
    names: frozenset[str]
    terminating: bool  # one of its pods has a deletion timestamp
    ready: bool  # one of its pods is ready

    @classmethod
    def of(cls, pods: Sequence[PodView]) -> ExistingReplica:
        return cls(
            pods=tuple(pods),
            names=frozenset(p.name for p in pods),
            terminating=any(p.deleting for p in pods),
            ready=any(p.ready for p in pods),
        )


@dataclass(frozen=True)
class PodSets:
    desired: Mapping[ReplicaKey, DesiredPod]  # in the plan's GPU order
    existing: Mapping[ReplicaKey, ExistingReplica]  # in the order the shell read the pods
    keep: frozenset[tuple[str, str]]  # (namespace, name) of every desired pod
    deployments: frozenset[str]  # deployments with at least one desired pod
    unready: Mapping[str, frozenset[int]]  # per deployment: desired replicas without a ready pod
    pods_by_deployment: Mapping[str, tuple[Mapping[str, Any], ...]]  # every existing pod, for the status
    #: pods bound to a node that is lost or gone (NotReady past ``node_lost_seconds``, or deleted): deleted, but
    #: they hold no share and do not hold back their replica's new pod (such a pod may stay Terminating until
    #: its node comes back or is deleted)
    stranded: tuple[PodView, ...] = ()


def pod_sets(
    world: World,
    plan: Plan,
    sizings: Sizings,
    lost: Iterable[str] = (),
    held: Collection[tuple[str, int]] = (),
) -> PodSets:
    """Desired pods (one per placed replica whose deployment could be sized, and that no ResourceQuota
    holds back: ``held``) against existing ones; pods on ``lost`` nodes or on nodes that no longer exist are
    ``stranded``."""
    desired = {
        k: v for k, v in _desired(world, plan, sizings).items() if (k.deployment, k.ordinal) not in held
    }
    gone = set(lost) | _missing_nodes(world)
    stranded = tuple(v for v in map(PodView, world.pods) if v.bound_node in gone)
    serving = serving_pods(world, lost)
    existing = {key: ExistingReplica.of(pods) for key, pods in _by_replica(serving).items()}
    unready: dict[str, set[int]] = {}
    for key in desired:
        if not (key in existing and existing[key].ready):
            unready.setdefault(key.deployment, set()).add(key.ordinal)
    by_deployment: dict[str, list[Mapping[str, Any]]] = {}
    for key, pods in _by_replica(world.pods).items():
        by_deployment.setdefault(key.deployment, []).extend(p.obj for p in pods)
    return PodSets(
        desired=desired,
        existing=existing,
        keep=frozenset((p.view.namespace, p.view.name) for p in desired.values()),
        deployments=frozenset(key.deployment for key in desired),
        unready={dep: frozenset(ordinals) for dep, ordinals in unready.items()},
        pods_by_deployment={dep: tuple(pods) for dep, pods in by_deployment.items()},
        stranded=stranded,
    )


def serving_pods(world: World, lost: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The replica pods not bound to a ``lost`` node nor to a node that no longer exists."""
    gone = set(lost) | _missing_nodes(world)
    return [p for p in world.pods if PodView(p).bound_node not in gone]


def _missing_nodes(world: World) -> set[str]:
    """Nodes replica pods are bound to that no longer exist (deleted: the pod garbage collector removes such
    pods only after a while)."""
    names = {n["metadata"]["name"] for n in world.nodes}
    return {v.bound_node for v in map(PodView, world.pods) if v.bound_node and v.bound_node not in names}


def keep_pods(sets: PodSets, keep: frozenset[tuple[str, str]]) -> PodSets:
    """The pod sets with more pods kept as they are (the pods of consolidation moves)."""
    return replace(sets, keep=sets.keep | keep) if keep else sets


def _desired(world: World, plan: Plan, sizings: Sizings) -> dict[ReplicaKey, DesiredPod]:
    deployments = {deployment_key(dep): dep for dep in world.deployments}
    out: dict[ReplicaKey, DesiredPod] = {}
    for g in plan.gpus:
        for r in g.replicas:
            owner = deployments.get(r.deployment)
            sizing = sizings.by_deployment.get(r.deployment)
            if owner is None or sizing is None:
                continue
            pod = replica_pod(
                owner, r, g.node, g.index, g.product, world.pool.metadata.name, sizing, world.cfg
            )
            key = ReplicaKey(r.deployment, r.ordinal)
            out[key] = DesiredPod(key, g.node, pod)
    return out


def _by_replica(pods: Iterable[Mapping[str, Any]]) -> dict[ReplicaKey, list[PodView]]:
    """Pods by the replica their placement record names; a pod without one goes under ordinal -1 of the
    deployment its label names (it is never desired, so it is deleted)."""
    out: dict[ReplicaKey, list[PodView]] = {}
    for view in map(PodView, pods):
        rec = view.placement
        key = (
            ReplicaKey(rec.deployment, rec.ordinal)
            if rec
            else ReplicaKey(f"{view.namespace}/{view.labels.get(DEPLOYMENT_LABEL, '')}", -1)
        )
        out.setdefault(key, []).append(view)
    return out
