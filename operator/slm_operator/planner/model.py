"""Inputs and outputs of the planner (pure pydantic v2, frozen).

Memory is always an ``int`` number of bytes. Every model uses camelCase aliases for its JSON form
(``plan.model_dump(mode="json", by_alias=True)``) and accepts the snake_case field names in the constructor.
The output format is documented field by field in ``docs/plan-format.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

MiB = 1 << 20
GiB = 1 << 30

Mechanism = Literal["MIG", "MPS", "TimeSlicing", "Exclusive"]
Tier = Literal["Guaranteed", "Burstable", "BestEffort"]
NodeSharing = Literal["None", "MPS", "TimeSlicing"]
GpuMode = Literal["MIG", "MPS", "TimeSlicing", "Exclusive", "Reserved", "Segment", "Free"]
RepartitionPolicy = Literal["Allowed", "Never", "WhenIdle"]
SpreadPolicy = Literal["Preferred", "Required", "Ignored"]
UnplacedReason = Literal[
    "InsufficientCapacity",
    "NoShareFits",
    "MechanismNotAllowed",
    "PreemptedByHigherTier",
    "ReservedCapacity",
    "TenantQuota",
    "ReclaimedByTenant",
]
EvictionReason = Literal[
    "PreemptedByHigherTier",
    "ReservedCapacity",
    "ReservationClaimed",
    "SegmentCapacity",
    "ShareNoLongerFits",
    "MechanismNotAllowed",
    "Defragmentation",
    "ReturnBorrowedGPU",
    "LayoutConflict",
    "DeploymentChanged",
    "TenantQuota",
    "ReclaimedByTenant",
]

ALL_MECHANISMS: tuple[Mechanism, ...] = ("Exclusive", "MIG", "MPS", "TimeSlicing")
TIERS: tuple[Tier, ...] = ("Guaranteed", "Burstable", "BestEffort")


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


# ------------------------------------------------------------------------------------------------ inputs


class Reservation(_Model):
    """Whole GPUs kept free of Guaranteed and Burstable replicas (LLM fallback)."""

    name: str = Field(min_length=1)
    purpose: Literal["LLMFallback"] = "LLMFallback"
    gpus: int = Field(ge=0)
    lend_to: Literal["BestEffort"] | None = None
    #: Reserved GPUs the reservation's own workload needs right now; BestEffort borrowers leave them first.
    claimed: int = Field(default=0, ge=0)


class Segment(_Model):
    """Whole GPUs kept out of inference packing entirely (fine-tuning)."""

    name: str = Field(min_length=1)
    purpose: Literal["FineTuning"] = "FineTuning"
    gpus: int = Field(ge=0)


class TenantPolicy(_Model):
    """One tenant of the pool (docs/tenants.md): what it is entitled to, in GPU-equivalents. A share counts as
    the fraction of its GPU's memory and compute it holds, whichever is larger (``share_gpu_equivalents``)."""

    name: str = Field(min_length=1)
    #: GPU-equivalents the tenant's replicas get by tier order; beyond it they only borrow idle capacity
    guaranteed: float = Field(default=0.0, ge=0)
    #: most GPU-equivalents the tenant may hold, borrowed included (None: no ceiling)
    ceiling: float | None = Field(default=None, ge=0)
    #: share of the idle capacity handed out to borrowers, relative to other tenants' weights
    weight: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _ceiling_above_guarantee(self) -> TenantPolicy:
        if self.ceiling is not None and self.ceiling < self.guaranteed:
            raise ValueError(
                f"tenant {self.name}: ceiling {self.ceiling} is below guaranteed {self.guaranteed}"
            )
        return self


class PoolPolicy(_Model):
    """The pool's sharing policy (from the GPUPool spec)."""

    name: str = Field(min_length=1)
    allowed_mechanisms: tuple[Mechanism, ...] = ALL_MECHANISMS
    mps_max_clients_per_gpu: int = Field(default=8, ge=2, le=48)
    ts_max_replicas_per_gpu: int = Field(default=8, ge=2, le=64)
    memory_oversubscription_percent: int = Field(default=100, ge=100, le=400)
    reservations: tuple[Reservation, ...] = ()
    segments: tuple[Segment, ...] = ()
    #: ``Never`` (= the API's ``WhenIdle``): a GPU's MIG layout changes only when no replica runs on it.
    repartition: RepartitionPolicy = "Never"
    spread_nodes: SpreadPolicy = "Preferred"
    #: Tenants and their quotas; empty: the pool plans as if it had none (no quota rules at all).
    tenants: tuple[TenantPolicy, ...] = ()

    @field_validator("allowed_mechanisms")
    @classmethod
    def _normalise_mechanisms(cls, v: tuple[Mechanism, ...]) -> tuple[Mechanism, ...]:
        if not v:
            raise ValueError("allowed_mechanisms must name at least one mechanism")
        return tuple(sorted(set(v)))

    @model_validator(mode="after")
    def _unique_names(self) -> PoolPolicy:
        names = [r.name for r in self.reservations] + [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError("reservation and segment names must be unique within a pool")
        tenants = [t.name for t in self.tenants]
        if len(set(tenants)) != len(tenants):
            raise ValueError("tenant names must be unique within a pool")
        return self

    @property
    def may_repartition(self) -> bool:
        return self.repartition == "Allowed"


class MigInstance(_Model):
    """One existing MIG GPU instance on a GPU."""

    profile: str
    start: int | None = Field(default=None, ge=0)


class GpuInventory(_Model):
    """One GPU of a node as observed now."""

    index: int = Field(ge=0)
    model: str = Field(min_length=1, description="catalog GpuModel.key")
    mig_enabled: bool = False
    mig_instances: tuple[MigInstance, ...] = ()
    used_memory_bytes: int | None = Field(default=None, ge=0)
    #: Reservation or segment the previous plan gave this GPU to (keeps the choice stable between plans).
    assigned_to: str | None = None


class NodeInventory(_Model):
    """One node of the pool: its GPUs and its current node-wide sharing configuration."""

    name: str = Field(min_length=1)
    gpus: tuple[GpuInventory, ...] = ()
    sharing: NodeSharing = "None"
    sharing_replicas: int | None = Field(default=None, ge=1)
    schedulable: bool = True

    @model_validator(mode="after")
    def _unique_indices(self) -> NodeInventory:
        idx = [g.index for g in self.gpus]
        if len(set(idx)) != len(idx):
            raise ValueError(f"node {self.name}: duplicate GPU index")
        return self


class ShareRequest(_Model):
    """An explicit share the user pinned; the planner honours it or leaves the replica unplaced."""

    mechanism: Mechanism | None = None
    mig_profile: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ShareRequest:
        if self.mig_profile is not None and self.mechanism not in (None, "MIG"):
            raise ValueError("mig_profile may only be set with mechanism MIG")
        return self


class WarmShare(_Model):
    """A share a deployment released when it scaled down, kept configured for it for a while (the operator
    passes only those still within ``spec.autoscaling.keepWarmFor``): the planner does not give the GPU to
    another deployment's new GPU while any other GPU would do, and a scale-up of the deployment takes it first
    (docs/autoscaling.md, "Which share a new replica gets")."""

    node: str
    gpu_index: int = Field(ge=0)
    mechanism: Mechanism
    mig_profile: str | None = None


class Demand(_Model):
    """What one SLMDeployment asks of the pool."""

    deployment: str = Field(min_length=1, description="namespace/name")
    tier: Tier
    replicas: int = Field(ge=0)
    memory_bytes: int = Field(ge=1, description="sizing estimate (or explicit override) per replica")
    share: ShareRequest | None = None
    #: Deterministic tie-break among equals (creation timestamp string); the deployment key breaks ties.
    order_key: str = ""
    #: Shares kept warm for this deployment since it scaled down (see :class:`WarmShare`).
    warm: tuple[WarmShare, ...] = ()
    #: The pool tenant the deployment belongs to (``PoolPolicy.tenants``); None or an unknown name in a pool
    #: with tenants: a tenant with no guarantee and no ceiling (every replica borrows).
    tenant: str | None = None

    @field_validator("warm")
    @classmethod
    def _sorted_warm(cls, v: tuple[WarmShare, ...]) -> tuple[WarmShare, ...]:
        return tuple(sorted(set(v), key=lambda w: (w.node, w.gpu_index, w.mechanism, w.mig_profile or "")))


class CurrentPlacement(_Model):
    """Where a running replica is now."""

    deployment: str
    ordinal: int = Field(ge=0)
    node: str
    gpu_index: int = Field(ge=0)
    mechanism: Mechanism
    mig_profile: str | None = None


# ------------------------------------------------------------------------------------------------ outputs


class Share(_Model):
    """The share a replica gets."""

    mechanism: Mechanism
    mig_profile: str | None = None
    #: Nominal start slot of the MIG instance (the device plugin picks the actual instance of that profile).
    mig_start: int | None = None
    #: MPS pinned-memory cap (GPU memory / clients, whole MiB, as the device plugin's MPS daemon sets it).
    mps_memory_limit_bytes: int | None = None
    mps_active_thread_percentage: int | None = None
    #: Node-wide MPS clients or time-slicing replicas per GPU.
    replicas_per_gpu: int | None = None
    #: Memory the share provides: MIG usable memory, MPS cap, whole GPU; time-slicing: the GPU's memory.
    memory_bytes: int


class ReplicaPlacement(_Model):
    deployment: str
    ordinal: int
    qos: Tier
    memory_gib: float = Field(alias="memoryGiB")
    memory_bytes: int
    share: Share
    #: On a GPU lent by a reservation (BestEffort only; first to go when the reservation is claimed).
    borrowed: bool = False
    moved: bool = False


class MigInstancePlan(_Model):
    profile: str
    start: int
    deployment: str | None = None
    ordinal: int | None = None


class GpuPlan(_Model):
    node: str
    index: int
    product: str
    mode: GpuMode
    mig_instances: tuple[MigInstancePlan, ...] = ()
    reservation: str | None = None
    segment: str | None = None
    replicas: tuple[ReplicaPlacement, ...] = ()
    memory_bytes: int
    allocated_bytes: int = 0
    free_bytes: int = 0
    stranded_bytes: int = 0
    #: The MIG layout (or MIG mode) differs from the inventory: mig-parted will recreate this GPU's instances.
    reconfigure: bool = False


class MigDeviceLayout(_Model):
    """One GPU's entry of the node's mig-parted config."""

    index: int
    mig_enabled: bool
    devices: dict[str, int] = Field(default_factory=dict)


class NodePlan(_Model):
    name: str
    sharing: NodeSharing
    #: MPS clients or time-slicing replicas per GPU (node-wide; None when sharing is None).
    replicas_per_gpu: int | None = None
    mig_layout: tuple[MigDeviceLayout, ...] = ()
    sharing_changed: bool = False
    mig_changed: bool = False
    gpus_used: int = 0


class UnplacedReplica(_Model):
    ordinal: int
    reason: UnplacedReason
    message: str


class MovedReplica(_Model):
    ordinal: int
    from_node: str
    from_gpu: int
    to_node: str
    to_gpu: int
    reason: str


class DeploymentPlan(_Model):
    deployment: str
    qos: Tier
    memory_bytes: int
    desired: int
    placed: int
    unplaced: tuple[UnplacedReplica, ...] = ()
    moved: tuple[MovedReplica, ...] = ()
    #: Share of the placed replicas, e.g. "MIG 1g.10gb" or "MPS 10.0 GiB cap" (several joined by ", ").
    share_summary: str = ""
    explanation: str = ""


class Eviction(_Model):
    """A running replica that must move (``to_node`` set) or yield (``to_node`` None)."""

    deployment: str
    ordinal: int
    qos: Tier
    node: str
    gpu_index: int
    reason: EvictionReason
    message: str
    to_node: str | None = None
    to_gpu: int | None = None


class TenantUsage(_Model):
    """One tenant's quota and what its placed replicas hold (GPU-equivalents and share memory). Replicas in
    priority order count as guaranteed while their running sum stays within the quota; the rest borrow."""

    name: str
    guaranteed: float
    ceiling: float | None = None
    weight: int = 1
    used_guaranteed: float = 0.0
    used_borrowed: float = 0.0
    memory_guaranteed_bytes: int = 0
    memory_borrowed_bytes: int = 0
    replicas_guaranteed: int = 0
    replicas_borrowed: int = 0
    replicas_unplaced: int = 0
    #: placed replicas per deployment that borrow beyond the quota (first to yield when another tenant
    #: claims its guarantee), "ns/name" -> ordinals
    borrowed: dict[str, tuple[int, ...]] = Field(default_factory=dict)


class PoolPlan(_Model):
    name: str
    gpus_total: int
    gpus_used: int
    gpus_free: int
    gpus_reserved: int
    gpus_segment: int
    gpus_borrowed: int
    gpus_by_mode: dict[str, int] = Field(default_factory=dict)
    memory_total_bytes: int
    memory_used_gpus_bytes: int
    memory_allocated_bytes: int
    memory_share_bytes: int
    memory_free_bytes: int
    memory_stranded_bytes: int
    replicas_desired: int
    replicas_placed: int
    replicas_unplaced: int
    replicas_moved: int
    evictions: tuple[Eviction, ...] = ()


class Plan(_Model):
    pool: PoolPlan
    nodes: tuple[NodePlan, ...] = ()
    gpus: tuple[GpuPlan, ...] = ()
    deployments: tuple[DeploymentPlan, ...] = ()
    #: "heuristic"; "exact" when CP-SAT produced the plan; "guided" when it was packed from the node-aware
    #: program's incumbent (``guided.py``).
    solver: Literal["heuristic", "exact", "guided"] = "heuristic"
    #: For the exact solver: whether CP-SAT proved optimality within the time budget.
    optimal: bool | None = None
    #: Per tenant of the pool (empty when the pool has no tenants).
    tenants: tuple[TenantUsage, ...] = ()

    def deployment(self, key: str) -> DeploymentPlan | None:
        for d in self.deployments:
            if d.deployment == key:
                return d
        return None

    def gpu(self, node: str, index: int) -> GpuPlan | None:
        for g in self.gpus:
            if g.node == node and g.index == index:
                return g
        return None

    def placements(self) -> tuple[CurrentPlacement, ...]:
        """The planned placements as the ``current`` input of the next plan (sorted)."""
        out = [
            CurrentPlacement(
                deployment=r.deployment,
                ordinal=r.ordinal,
                node=g.node,
                gpu_index=g.index,
                mechanism=r.share.mechanism,
                mig_profile=r.share.mig_profile,
            )
            for g in self.gpus
            for r in g.replicas
        ]
        out.sort(key=lambda p: (p.deployment, p.ordinal))
        return tuple(out)


# ------------------------------------------------------------------------------------------------ replay


def apply_plan(nodes: Sequence[NodeInventory], plan: Plan) -> tuple[NodeInventory, ...]:
    """The inventory after the plan's node configs were applied (MIG layouts, sharing mode, reservation and
    segment assignment). Used by tests, the benchmark and ``IncrementalPlanner`` to simulate the next pass."""
    gpu_plans = {(g.node, g.index): g for g in plan.gpus}
    node_plans = {n.name: n for n in plan.nodes}
    return tuple(_applied_node(node, node_plans.get(node.name), gpu_plans) for node in nodes)


def _applied_node(
    node: NodeInventory, node_plan: NodePlan | None, gpu_plans: dict[tuple[str, int], GpuPlan]
) -> NodeInventory:
    if node_plan is None:
        layouts: dict[int, MigDeviceLayout] = {}
        sharing, replicas = node.sharing, node.sharing_replicas
    else:
        layouts = {x.index: x for x in node_plan.mig_layout}
        sharing, replicas = node_plan.sharing, node_plan.replicas_per_gpu
    gpus = tuple(
        _applied_gpu(g, gpu_plans.get((node.name, g.index)), layouts.get(g.index)) for g in node.gpus
    )
    return node.model_copy(update={"gpus": gpus, "sharing": sharing, "sharing_replicas": replicas})


def _applied_gpu(gpu: GpuInventory, gpu_plan: GpuPlan | None, layout: MigDeviceLayout | None) -> GpuInventory:
    if gpu_plan is None:
        return gpu
    enabled = layout.mig_enabled if layout is not None else False
    instances = (
        tuple(MigInstance(profile=i.profile, start=i.start) for i in gpu_plan.mig_instances)
        if enabled
        else ()
    )
    return gpu.model_copy(
        update={
            "mig_enabled": enabled,
            "mig_instances": instances,
            "assigned_to": gpu_plan.reservation or gpu_plan.segment,
        }
    )
