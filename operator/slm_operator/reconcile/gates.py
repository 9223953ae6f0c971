"""The gates that hold an action back: chains of small predicates, the first failure wins.

A gate is ``(context, subject) -> reason | None``: None lets the action through, a reason holds it back and
says why. A :class:`Chain` evaluates its gates in order and stops at the first reason (the shape of
cert-manager's ``internal/controller/certificates/policies`` chains). Three chains guard the three actions that
could take a share or a device away from something still running:

* :data:`CREATE_GATES` - create a replica pod only once its share is free (the replica's previous pod is
  gone) and its node reports the planned configuration as applied (MIG layout, device-plugin config, GFD
  sharing strategy and replicas), and is not being reconfigured in this pass. The reason is what the
  SLMDeployment status shows for the replica (``status.placements[].reason``, ``Progressing`` message).
* :data:`MOVE_TARGET_GATES` - create the new pod of a consolidation move (make-before-break) while the old
  one still serves: the node gates of :data:`CREATE_GATES`, without the previous-pod ones.
* :data:`ROLLING_UPDATE_GATES` - replace a running pod in place (new model, runtime or adapter) one replica
  at a time, and only while every other replica of the deployment is ready.
* :data:`RELABEL_GATES` - change a node's ``nvidia.com/mig.config`` / ``nvidia.com/device-plugin.config``
  labels only once the pods being deleted on it are gone (drain before repartition), and only once the
  mig-parted config entry the new label names is old enough for every kubelet to have synced it into
  mig-manager's mounted ConfigMap volume (mig-manager marks a name it cannot find ``failed`` and does not
  look again until the label changes), or the node's mig-manager pod was refreshed after the entry was
  written (:func:`mig_refresh`).

A held rolling replacement only makes the pass wait. A held relabel's reason is shown in the pool's ``Ready``
condition message, next to the node whose configuration changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_REPLICAS_LABEL,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_STATE_LABEL,
    MIG_DISABLED_CONFIG,
    SHARING_STRATEGY_LABEL,
    MigConfigState,
    SharingStrategy,
    mig_retry_of,
)
from slm_operator.reconcile.podsets import DesiredPod, ExistingReplica
from slm_operator.reconcile.world import ReplicaKey
from slm_operator.render import NodeConfig
from slm_operator.views import NodeView

C = TypeVar("C")
S = TypeVar("S")


@dataclass(frozen=True)
class Chain(Generic[C, S]):
    """Gates evaluated in order; the first one that gives a reason holds the action back."""

    gates: tuple[Callable[[C, S], str | None], ...]

    def first_failure(self, ctx: C, subject: S) -> str | None:
        for gate in self.gates:
            reason = gate(ctx, subject)
            if reason is not None:
                return reason
        return None


# ------------------------------------------------------------------------------------------ creating a pod
PREVIOUS_POD_STOPPING = "waiting for the previous pod of this replica to stop"


@dataclass(frozen=True)
class NodeTarget:
    """A node and the configuration the plan wants on it."""

    view: NodeView
    config: NodeConfig

    @cached_property
    def sharing_strategy(self) -> SharingStrategy:
        """What GFD reports once the device-plugin config is applied."""
        entry = self.config.device_plugin_entry.get("sharing") or {}
        if "mps" in entry:
            return SharingStrategy.MPS
        return SharingStrategy.TIME_SLICING if "timeSlicing" in entry else SharingStrategy.NONE

    @cached_property
    def replicas_per_gpu(self) -> int:
        """Shares per GPU the device plugin advertises once the config is applied (MPS or time-slicing)."""
        entry = self.config.device_plugin_entry.get("sharing") or {}
        share = entry.get("mps") or entry.get("timeSlicing") or {}
        replicas: int = share["resources"][0]["replicas"]
        return replicas


@dataclass(frozen=True)
class CreationContext:
    existing: Mapping[ReplicaKey, ExistingReplica]  # the pods each replica has now
    targets: Mapping[str, NodeTarget]  # nodes with a planned configuration, by name
    relabelled: frozenset[str]  # nodes whose selector labels change in this pass


def previous_pod_terminating(ctx: CreationContext, want: DesiredPod) -> str | None:
    """The replica's previous pod is terminating: its share is not free yet."""
    prev = ctx.existing.get(want.key)
    return PREVIOUS_POD_STOPPING if prev is not None and prev.terminating else None


def previous_pod_gone(ctx: CreationContext, want: DesiredPod) -> str | None:
    """An older pod of the replica (another placement or spec) still exists: it holds the share until it is
    deleted (in this pass, or once the rolling update reaches it)."""
    return PREVIOUS_POD_STOPPING if want.key in ctx.existing else None


def mig_config_selected(ctx: CreationContext, want: DesiredPod) -> str | None:
    """The node's ``nvidia.com/mig.config`` label names the planned MIG config (mig-manager picks it up)."""
    t = ctx.targets.get(want.node)
    if t is None or not t.config.mig_capable:
        return None
    if t.view.labels.get(MIG_CONFIG_LABEL, MIG_DISABLED_CONFIG) != t.config.mig_config:
        return f"node {t.view.name}: waiting for mig-manager to pick up MIG config {t.config.mig_config}"
    return None


def mig_config_applied(ctx: CreationContext, want: DesiredPod) -> str | None:
    """mig-manager reports the MIG config as applied (``nvidia.com/mig.config.state=success``)."""
    t = ctx.targets.get(want.node)
    if t is None or not t.config.mig_capable:
        return None
    state = t.view.labels.get(MIG_CONFIG_STATE_LABEL)
    if state == MigConfigState.FAILED:
        return (
            f"node {t.view.name}: mig-manager failed to apply MIG config {t.config.mig_config} "
            f"({MIG_CONFIG_STATE_LABEL}={MigConfigState.FAILED})"
        )
    if state != MigConfigState.SUCCESS:
        return f"node {t.view.name}: MIG config {t.config.mig_config} is {state or 'not applied yet'}"
    return None


def device_plugin_config_selected(ctx: CreationContext, want: DesiredPod) -> str | None:
    """The node's ``nvidia.com/device-plugin.config`` label names the planned device-plugin config."""
    t = ctx.targets.get(want.node)
    if t is None or t.view.labels.get(DEVICE_PLUGIN_CONFIG_LABEL) == t.config.device_plugin_config:
        return None
    return f"node {t.view.name}: waiting for the device plugin config {t.config.device_plugin_config}"


def sharing_strategy_reported(ctx: CreationContext, want: DesiredPod) -> str | None:
    """GFD reports the planned sharing strategy (``nvidia.com/gpu.sharing-strategy``)."""
    t = ctx.targets.get(want.node)
    if t is None or t.view.labels.get(SHARING_STRATEGY_LABEL, SharingStrategy.NONE) == t.sharing_strategy:
        return None
    return f"node {t.view.name}: waiting for GPU feature discovery to report sharing strategy {t.sharing_strategy}"


def sharing_replicas_advertised(ctx: CreationContext, want: DesiredPod) -> str | None:
    """For MPS and time-slicing, GFD reports the planned shares per GPU (``nvidia.com/gpu.replicas``)."""
    t = ctx.targets.get(want.node)
    if t is None or t.sharing_strategy == SharingStrategy.NONE:
        return None
    if t.view.labels.get(GPU_REPLICAS_LABEL) == str(t.replicas_per_gpu):
        return None
    return f"node {t.view.name}: waiting for the device plugin to advertise {t.replicas_per_gpu} replicas per GPU"


def node_not_relabelled(ctx: CreationContext, want: DesiredPod) -> str | None:
    """The node's configuration is not being changed in this pass."""
    if want.node in ctx.targets and want.node in ctx.relabelled:
        return f"node {want.node}: configuration is being changed"
    return None


CREATE_GATES: Chain[CreationContext, DesiredPod] = Chain(
    (
        previous_pod_terminating,
        previous_pod_gone,
        mig_config_selected,
        mig_config_applied,
        device_plugin_config_selected,
        sharing_strategy_reported,
        sharing_replicas_advertised,
        node_not_relabelled,
    )
)

#: The gates that check a node reports the configuration the plan wants on it (MIG layout, device-plugin config,
#: GFD sharing strategy and replicas); they read only ``want.node``.
NODE_CONFIG_GATES: Chain[CreationContext, DesiredPod] = Chain(
    (
        mig_config_selected,
        mig_config_applied,
        device_plugin_config_selected,
        sharing_strategy_reported,
        sharing_replicas_advertised,
    )
)


def pending_configs(targets: Mapping[str, NodeTarget]) -> dict[str, str]:
    """Node -> why it does not report its planned configuration yet (:data:`NODE_CONFIG_GATES`), for every node
    with a planned configuration. What the ``slm_node_config_pending`` metric shows: a node that stays here is
    stuck (mig-manager, the device plugin or GFD does not act), and no replica is created on it meanwhile."""
    ctx = CreationContext(existing={}, targets=targets, relabelled=frozenset())
    out: dict[str, str] = {}
    for name in targets:
        why = NODE_CONFIG_GATES.first_failure(ctx, DesiredPod(ReplicaKey("", -1), name, {}))
        if why is not None:
            out[name] = why
    return out


#: The new pod of a make-before-break move: its replica's old pod keeps serving (the previous-pod gates do not
#: apply), but its node must report the planned configuration like any other.
MOVE_TARGET_GATES: Chain[CreationContext, DesiredPod] = Chain(
    tuple(g for g in CREATE_GATES.gates if g not in (previous_pod_terminating, previous_pod_gone))
)


# ------------------------------------------------------------------------------------------ rolling update
@dataclass(frozen=True)
class RolloutContext:
    unready: Mapping[str, frozenset[int]]  # per deployment: desired replicas without a ready pod
    rolling: frozenset[str]  # deployments already replacing a replica (or with a pod terminating)


def one_replica_at_a_time(ctx: RolloutContext, key: ReplicaKey) -> str | None:
    """No other replica of the deployment is being replaced or terminating."""
    if key.deployment in ctx.rolling:
        return f"replica {key.ordinal}: another replica of {key.deployment} is being replaced first (one at a time)"
    return None


def other_replicas_ready(ctx: RolloutContext, key: ReplicaKey) -> str | None:
    """Every other desired replica of the deployment is ready: a rollout never takes a deployment down."""
    others = ctx.unready.get(key.deployment, frozenset()) - {key.ordinal}
    if others:
        which = ", ".join(str(o) for o in sorted(others))
        return f"replica {key.ordinal}: waiting for replica(s) {which} of {key.deployment} to be ready first"
    return None


ROLLING_UPDATE_GATES: Chain[RolloutContext, ReplicaKey] = Chain((one_replica_at_a_time, other_replicas_ready))


# ------------------------------------------------------------------------------------------ relabelling a node
@dataclass(frozen=True)
class RelabelContext:
    draining: frozenset[str]  # nodes where a pod is being deleted or is terminating
    targets: Mapping[str, NodeConfig] = field(default_factory=dict)  # planned configuration, by node
    mig_labels: Mapping[str, str] = field(default_factory=dict)  # node -> its nvidia.com/mig.config now
    entry_ages: Mapping[str, float] = field(default_factory=dict)  # mig-parted entry -> seconds since written
    sync_seconds: float = 0.0  # how old an entry must be before a node is relabelled to it
    #: node -> seconds since the operator last refreshed its running mig-manager pod (None: never); a node
    #: without a running mig-manager pod is not here
    mig_managers: Mapping[str, float | None] = field(default_factory=dict)
    refresh_seconds: float = 0.0  # relabel this long after a refresh (0: no refreshes, the full sync_seconds)


def pods_drained(ctx: RelabelContext, node: str) -> str | None:
    """No pod on the node is being deleted: the new configuration could take its share (drain first)."""
    if node in ctx.draining:
        return f"node {node}: waiting for its deleted pods to stop before changing its configuration"
    return None


#: How old a mig-parted entry must be before a refresh of a mig-manager pod counts for it: the refresh remounts
#: the volume from the kubelet's watch of the ConfigMap (kubelet ``util/manager/watch_based_manager.go``), which
#: must have delivered the write first.
CONFIGMAP_WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class Refresh:
    """Where a node's mig-manager pod stands for the new entry its label will name."""

    now: bool  # refresh the pod in this pass
    ready_in: float  # seconds until the node may be relabelled (0: now)


def mig_refresh(ctx: RelabelContext, node: str) -> Refresh | None:
    """The shorter way for a new mig-parted entry to reach mig-manager: the operator changes an annotation of
    the node's mig-manager pod, the kubelet syncs the pod and remounts its ConfigMap volume with what its watch
    of the ConfigMap holds (kubelet ``config.go`` ``podsDifferSemantically``, ``volume_manager.go``
    ``WaitForAttachAndMount``/``ReprocessPod``). A refresh counts for an entry when it came at least
    CONFIGMAP_WATCH_SECONDS after the write, and the node is relabelled ``refresh_seconds`` after it.

    None when it does not apply: refreshes off, no running mig-manager pod on the node, no new entry to name, or
    a retry alias (after a failure the node waits the full ``sync_seconds``: a refresh that did not reach
    mig-manager does not cost a second try)."""
    t = ctx.targets.get(node)
    if ctx.refresh_seconds <= 0 or node not in ctx.mig_managers or t is None or t.mig_entries is None:
        return None
    age = ctx.entry_ages.get(t.mig_config)
    if age is None or mig_retry_of(t.mig_config)[1] > 0:
        return None
    since = ctx.mig_managers[node]
    if since is not None and age - since >= CONFIGMAP_WATCH_SECONDS:
        return Refresh(now=False, ready_in=max(0.0, ctx.refresh_seconds - since))
    if age >= CONFIGMAP_WATCH_SECONDS:
        return Refresh(now=True, ready_in=ctx.refresh_seconds)
    return Refresh(now=False, ready_in=CONFIGMAP_WATCH_SECONDS - age + ctx.refresh_seconds)


def mig_entry_synced(ctx: RelabelContext, node: str) -> str | None:
    """The mig-parted entry the new ``nvidia.com/mig.config`` names has been in the ConfigMap long enough for
    the kubelet to have refreshed mig-manager's mounted copy, or the node's mig-manager pod was refreshed for it
    (:func:`mig_refresh`); else mig-manager would not find it, mark the node ``failed`` and wait for the next
    label change."""
    t = ctx.targets.get(node)
    if t is None or not t.mig_capable or t.mig_entries is None:
        return None  # no MIG label, or a built-in name (all-disabled) every mig-manager knows
    if ctx.mig_labels.get(node, MIG_DISABLED_CONFIG) == t.mig_config:
        return None  # the MIG label does not change
    age = ctx.entry_ages.get(t.mig_config)
    if age is not None and age >= ctx.sync_seconds:
        return None
    refresh = mig_refresh(ctx, node)
    if refresh is not None and not refresh.now and refresh.ready_in <= 0:
        return None
    written = "not written yet" if age is None else f"written {int(age)}s ago"
    sooner = ""
    if refresh is not None:
        sooner = f"; its mig-manager pod is refreshed for it, about {math.ceil(refresh.ready_in)}s left"
    return (
        f"node {node}: waiting for MIG config {t.mig_config} to reach mig-manager's mounted ConfigMap "
        f"({written}; kubelets refresh it within {int(ctx.sync_seconds)}s{sooner})"
    )


RELABEL_GATES: Chain[RelabelContext, str] = Chain((pods_drained, mig_entry_synced))
