r"""What the shell hands the core (:class:`World`) and what it gets back (:class:`Decisions`, with
:class:`~slm_operator.events.Event`\ s)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from slm_operator.api.v1alpha1 import (
    ConsolidationStatus,
    GPUPool,
    GPUPoolStatus,
    SLMDeployment,
    SLMDeploymentStatus,
)
from slm_operator.events import Event
from slm_operator.planner.model import Plan
from slm_operator.planner.portfolio import GuideAnswer, GuideRequest, PortfolioOutcome
from slm_operator.render import NodeConfig, OperatorConfig


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
    # when each entry of the mig-parted ConfigMap was first written (its slm.io/config-written annotation)
    mig_entry_times: dict[str, str] = field(default_factory=dict)
    # every GPUPool (this one included): a node several pools select is planned by one of them (node_owner)
    pools: list[GPUPool] = field(default_factory=list)
    # ResourceQuotas of the namespaces of the pool's deployments (the core plans within them)
    resource_quotas: list[dict[str, Any]] = field(default_factory=list)

    # Namespace name -> its labels (read only for a pool with tenants: they map deployments to tenants)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    # the exact solver's answers of this pool's last pass (``Decisions.plan_memo``), kept by the shell: unchanged
    # inputs get the remembered answer instead of a new solve (planner/portfolio.py)
    plan_memo: Mapping[str, PortfolioOutcome] = field(default_factory=dict)
    # the GPU Operator's mig-manager pods (``cfg.mig_manager_selector`` in ``cfg.nvidia_namespace``): refreshing
    # one lets its node's mig-manager see a new mig-parted entry sooner (reconcile/gates.py ``mig_refresh``)
    mig_manager_pods: list[dict[str, Any]] = field(default_factory=list)
    # the shell's latest answer to this pool's guide request (``Decisions.guide_request``): the node-aware
    # program's incumbent the pass also packs from, even for an older question (planner/guided.py)
    plan_guide: GuideAnswer | None = None


@dataclass(frozen=True)
class MoveActions:
    """What the moves need from this pass: pods to keep, create and delete, events, and the status."""

    keep: frozenset[tuple[str, str]]  # (namespace, name): pods of moves the plan would otherwise delete
    create: tuple[dict[str, Any], ...]  # new pods of moves that start (pass the node gates first)
    delete: tuple[tuple[str, str, str], ...]  # namespace, name, reason
    events: tuple[Event, ...] = ()
    status: ConsolidationStatus | None = None
    outcomes: Mapping[str, int] = field(default_factory=dict)  # moves by outcome in this pass (metrics)
    gpus_freed: int = 0  # GPUs left empty by a move completed in this pass
    waiting: bool = False  # a move is under way: re-check soon


@dataclass
class Decisions:
    plan: Plan | None = None
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    node_annotations: dict[str, dict[str, str | None]] = field(default_factory=dict)
    node_configs: dict[str, NodeConfig] = field(default_factory=dict)
    mig_entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    mig_entry_times: dict[str, str] = field(default_factory=dict)  # entry name -> first written (RFC 3339)
    device_plugin_entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods_create: list[dict[str, Any]] = field(default_factory=list)
    pods_delete: list[tuple[str, str, str]] = field(default_factory=list)  # namespace, name, reason
    services: list[dict[str, Any]] = field(default_factory=list)
    deployment_statuses: dict[str, SLMDeploymentStatus] = field(default_factory=dict)
    pool_status: GPUPoolStatus | None = None
    events: list[Event] = field(default_factory=list)
    waiting: bool = False  # something is in flight: re-check soon
    #: while waiting, seconds until a gate opens with time alone (a MIG config entry old enough, a NotReady
    #: node lost); None: what the pass waits for arrives through the watches (pods stopped or Ready, a node's
    #: new config)
    recheck_seconds: float | None = None
    consolidation: MoveActions | None = None  # what the pass's consolidation moves did (metrics)
    #: nodes held on their last good MIG layout -> whether the rollback started in this pass (metrics)
    mig_rollbacks: dict[str, bool] = field(default_factory=dict)
    config_pending: dict[str, str] = field(
        default_factory=dict
    )  # node -> why its planned config is not applied
    mig_failed: dict[str, str] = field(
        default_factory=dict
    )  # node -> MIG config mig-manager failed every try
    # the exact solver's answers of this pass by input fingerprint (empty: no pool it may take on): the shell
    # hands them back as the next pass's ``World.plan_memo``
    plan_memo: dict[str, PortfolioOutcome] = field(default_factory=dict)
    #: mig-manager pods to refresh (namespace, name, merge patch): their kubelets remount the mig-parted
    #: ConfigMap, so that the new entries reach mig-manager before the periodic sync
    pod_patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: the guide this pass would pack from, when ``World.plan_guide`` answers another question or none (a pool
    #: in ``cfg``'s guided size range): the shell solves it once the question has settled
    guide_request: GuideRequest | None = None


class ReplicaKey(NamedTuple):
    """One replica of one SLMDeployment ("namespace/name", ordinal); ordinal -1 for a pod without a placement."""

    deployment: str
    ordinal: int
