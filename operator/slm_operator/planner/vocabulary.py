"""The planner's vocabulary: mechanisms, tiers, node modes, GPU roles and reasons, spelled as the API spells them.

The values equal the slm.io/v1alpha1 API's (``slm_operator.api.v1alpha1.Mechanism`` and ``QoSTier``,
``NodeSharing`` and the reasons of ``model.py``; ``tests/test_planner_model.py`` checks they stay equal), so a
value crosses the planner's boundary unchanged. The planner defines its own enums rather than importing the
API package: it stays a pure function of ``model.py``'s inputs.
"""

from __future__ import annotations

from enum import StrEnum


class Mechanism(StrEnum):
    """How a replica shares a GPU (also the mode of a pool GPU that holds replicas)."""

    MIG = "MIG"
    MPS = "MPS"
    TIME_SLICING = "TimeSlicing"
    EXCLUSIVE = "Exclusive"


class Tier(StrEnum):
    """QoS tiers, highest priority first (``TIER_ORDER``)."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


#: tiers in priority order; a deployment's ``rank`` is its tier's position here (lower is placed first)
TIER_ORDER: tuple[Tier, ...] = (Tier.GUARANTEED, Tier.BURSTABLE, Tier.BEST_EFFORT)
TIER_RANK: dict[str, int] = {tier: rank for rank, tier in enumerate(TIER_ORDER)}
#: how much it costs to disturb a replica of a tier (giving its GPU to a reservation): Guaranteed most
DISRUPTION: dict[Tier, int] = {Tier.GUARANTEED: 3, Tier.BURSTABLE: 2, Tier.BEST_EFFORT: 1}

#: mechanisms each tier may use
TIER_MECHANISMS: dict[Tier, frozenset[Mechanism]] = {
    Tier.GUARANTEED: frozenset({Mechanism.MIG, Mechanism.EXCLUSIVE}),
    Tier.BURSTABLE: frozenset({Mechanism.MIG, Mechanism.MPS, Mechanism.EXCLUSIVE}),
    Tier.BEST_EFFORT: frozenset({Mechanism.MIG, Mechanism.MPS, Mechanism.TIME_SLICING, Mechanism.EXCLUSIVE}),
}


class NodeMode(StrEnum):
    """A node's device-plugin sharing config (one per node), as the planner decides it."""

    FREE = "Free"  # no constraint yet: the node's first GPU decides
    NONE = "None"  # sharing off: MIG and whole GPUs
    MPS = "MPS"
    TIME_SLICING = "TimeSlicing"


class GpuRole(StrEnum):
    """What a GPU is for: packing, a reservation (LLM fallback) or a segment (fine-tuning)."""

    POOL = "Pool"
    RESERVED = "Reserved"
    SEGMENT = "Segment"


class GpuMode(StrEnum):
    """What a GPU of the plan is used as (``GpuPlan.mode``): its mechanism, its group, or nothing yet."""

    MIG = "MIG"
    MPS = "MPS"
    TIME_SLICING = "TimeSlicing"
    EXCLUSIVE = "Exclusive"
    RESERVED = "Reserved"
    SEGMENT = "Segment"
    FREE = "Free"


class EvictionReason(StrEnum):
    """Why a running replica moves or yields (``Eviction.reason``)."""

    PREEMPTED_BY_HIGHER_TIER = "PreemptedByHigherTier"
    RESERVED_CAPACITY = "ReservedCapacity"
    RESERVATION_CLAIMED = "ReservationClaimed"
    SEGMENT_CAPACITY = "SegmentCapacity"
    SHARE_NO_LONGER_FITS = "ShareNoLongerFits"
    MECHANISM_NOT_ALLOWED = "MechanismNotAllowed"
    DEFRAGMENTATION = "Defragmentation"
    RETURN_BORROWED_GPU = "ReturnBorrowedGPU"
    LAYOUT_CONFLICT = "LayoutConflict"
    DEPLOYMENT_CHANGED = "DeploymentChanged"
    #: the tenant holds more than its ceiling (the ceiling was lowered): its lowest-priority replicas yield
    TENANT_QUOTA = "TenantQuota"
    #: a borrowed replica yielded to another tenant claiming its guaranteed quota
    RECLAIMED_BY_TENANT = "ReclaimedByTenant"


class UnplacedReason(StrEnum):
    """Why a replica has no share (``UnplacedReplica.reason``)."""

    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    NO_SHARE_FITS = "NoShareFits"
    MECHANISM_NOT_ALLOWED = "MechanismNotAllowed"
    PREEMPTED_BY_HIGHER_TIER = "PreemptedByHigherTier"
    RESERVED_CAPACITY = "ReservedCapacity"
    #: the replica would take its tenant beyond its ceiling
    TENANT_QUOTA = "TenantQuota"
    #: was borrowing idle capacity and yielded to another tenant's guaranteed quota
    RECLAIMED_BY_TENANT = "ReclaimedByTenant"


#: unplaced for lack of capacity: the replica is tried again when capacity may have appeared
CAPACITY_REASONS: frozenset[UnplacedReason] = frozenset(
    {
        UnplacedReason.INSUFFICIENT_CAPACITY,
        UnplacedReason.RESERVED_CAPACITY,
        UnplacedReason.PREEMPTED_BY_HIGHER_TIER,
        UnplacedReason.RECLAIMED_BY_TENANT,
    }
)


# Members as module constants, for the packing hot paths: on Python 3.11 reading an attribute of an Enum class
# costs ~80 ns (EnumType's lookup), a module global ~8 ns (both measured with timeit). Hot modules import these
# (``from ...vocabulary import MIG as _MIG``); everything else spells ``Mechanism.MIG``.
MIG = Mechanism.MIG
MPS = Mechanism.MPS
TIME_SLICING = Mechanism.TIME_SLICING
EXCLUSIVE = Mechanism.EXCLUSIVE
NODE_FREE = NodeMode.FREE
NODE_NONE = NodeMode.NONE
NODE_MPS = NodeMode.MPS
NODE_TIME_SLICING = NodeMode.TIME_SLICING
ROLE_POOL = GpuRole.POOL
ROLE_RESERVED = GpuRole.RESERVED
ROLE_SEGMENT = GpuRole.SEGMENT
GUARANTEED = Tier.GUARANTEED
BEST_EFFORT = Tier.BEST_EFFORT
