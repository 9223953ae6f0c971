"""The slm.io/v1alpha1 API: GPUPool (cluster-scoped), SLMDeployment, FineTuneJob and SLMRoute (namespaced).

These pydantic models are the single source of the CRD schemas in ``crds/`` (``make crds``). Each
cross-field rule exists twice: as a CEL ``x-kubernetes-validations`` entry that the API server enforces,
and as a Python validator with the same message that the offline CLI (``slm-operator plan``) enforces.
``tests/test_api_invalid.py`` and the end-to-end suite check both with the same invalid manifests.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from slm_operator.api.base import (
    CONDITIONS_FIELD,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    QUANTITY,
    ApiModel,
    Condition,
    LabelSelector,
    LocalObjectReference,
    ObjectMeta,
    cel,
    duration_seconds,
    k8s,
)
from slm_operator.api.quantity import QuantityError, quantity_bytes
from slm_operator.catalog import VLLM_IMAGE
from slm_operator.contract import TASK_CLASSIFIER_KEY
from slm_operator.sanitize.classes import DEFAULT_REDACT
from slm_operator.sizing import Quantization
from slm_operator.timebound import TIME_BOUND_REGEX, check_time_bound

# ---------------------------------------------------------------------------------------------- enums


class Mechanism(StrEnum):
    """How a replica shares a GPU."""

    MIG = "MIG"  # a MIG slice: hard memory and compute isolation
    MPS = "MPS"  # an MPS client with a pinned-memory cap: memory-capped, compute shared
    TIME_SLICING = "TimeSlicing"  # time-sliced GPU: no isolation
    EXCLUSIVE = "Exclusive"  # a whole GPU


class QoSTier(StrEnum):
    """Quality-of-service tier of an SLMDeployment, highest first."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


class ReservationPurpose(StrEnum):
    LLM_FALLBACK = "LLMFallback"


class LendTo(StrEnum):
    BEST_EFFORT = "BestEffort"
    NONE = "None"


class SegmentPurpose(StrEnum):
    FINE_TUNING = "FineTuning"


class RepartitionPolicy(StrEnum):
    WHEN_IDLE = "WhenIdle"  # change a GPU's MIG layout only when no replica runs on it
    ALLOWED = "Allowed"  # may drain a GPU's replicas to repartition it when that frees a whole GPU


class FineTuneMethod(StrEnum):
    LORA = "LoRA"
    QLORA = "QLoRA"
    FULL = "Full"


# What the sanitiser redacts (docs/sanitization.md says how each is recognised): the same names as
# slm_operator.sanitize.classes.CLASS_NAMES, in the same order (tests/test_sanitize.py keeps them equal).
class PIIClass(StrEnum):
    EMAIL = "Email"
    PHONE_NUMBER = "PhoneNumber"
    CREDIT_CARD = "CreditCard"
    API_KEY = "APIKey"
    IP_ADDRESS = "IPAddress"
    IBAN = "IBAN"
    US_SSN = "USSocialSecurityNumber"
    URL = "URL"
    PERSON = "Person"
    LOCATION = "Location"
    ORGANIZATION = "Organization"
    STREET_ADDRESS = "StreetAddress"
    DATE_OF_BIRTH = "DateOfBirth"
    MAC_ADDRESS = "MACAddress"


MIG_PROFILE_PATTERN = r"^[1-8]g\.[0-9]+gb(\+me|\+me\.all|-me|\+gfx)?$"
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?$"


def _unique(items: list[Any] | None, what: str) -> None:
    names = [i.name for i in items or []]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique; '{dup[0]}' appears more than once")


def _quantity_field(value: str | None, field: str, minimum: int) -> str | None:
    if value is None:
        return value
    try:
        n = quantity_bytes(value)
    except QuantityError as exc:
        raise ValueError(f"`{field}` {exc}") from None
    if n < minimum:
        raise ValueError(f"`{field}` must be at least {minimum >> 20}Mi")
    return value


# ---------------------------------------------------------------------------------------------- GPUPool


class MPSSettings(ApiModel):
    """MPS sharing limits for the pool's GPUs."""

    max_clients_per_gpu: int = Field(
        default=8,
        alias="maxClientsPerGPU",
        ge=2,
        le=48,
        description="Most MPS clients (replicas) on one GPU. Each client gets an equal memory cap of "
        "GPU memory / clients, as the device plugin's MPS daemon sets it; 48 is the hardware limit. The "
        "operator uses fewer when the nodes cannot run that many pods: clients x GPUs within the node's "
        "allocatable pods (less 12 for DaemonSets) and CPU.",
    )


class TimeSlicingSettings(ApiModel):
    """Time-slicing limits for the pool's GPUs (BestEffort replicas only)."""

    max_replicas_per_gpu: int = Field(
        default=8,
        alias="maxReplicasPerGPU",
        ge=2,
        le=64,
        description="Most time-sliced replicas on one GPU; fewer when the nodes cannot run that many pods "
        "(as for MPS clients).",
    )
    memory_oversubscription_percent: int = Field(
        default=100,
        ge=100,
        le=400,
        description="How far the memory estimates of BestEffort replicas on one time-sliced GPU may "
        "add up, in percent of its memory (100 = no oversubscription). Only BestEffort may oversubscribe.",
    )


class MIGSettings(ApiModel):
    repartition: RepartitionPolicy = Field(
        default=RepartitionPolicy.WHEN_IDLE,
        description="`WhenIdle`: change a GPU's MIG layout only when no replica runs on it. `Allowed`: "
        "the operator may drain a GPU's replicas (one deployment's replica at a time) to repartition it "
        "when that frees a whole GPU.",
    )


ALL_MECHANISMS = [Mechanism.MIG, Mechanism.MPS, Mechanism.TIME_SLICING, Mechanism.EXCLUSIVE]


class SharingPolicy(ApiModel):
    """How the pool's GPUs may be shared."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.timeSlicing) || self.timeSlicing.memoryOversubscriptionPercent <= 100 || "
                "self.mechanisms.exists(m, m == 'TimeSlicing')",
                "`timeSlicing.memoryOversubscriptionPercent` may only exceed 100 when `mechanisms` lists 'TimeSlicing'",
                field_path=".timeSlicing.memoryOversubscriptionPercent",
            )
        )
    )

    mechanisms: list[Mechanism] = Field(
        default_factory=lambda: list(ALL_MECHANISMS),
        min_length=1,
        max_length=4,
        json_schema_extra=k8s(list_type="set"),
        description="Sharing mechanisms the planner may use: `MIG` (hard isolation), `MPS` (memory-capped "
        "processes), `TimeSlicing` (no isolation, BestEffort only) and `Exclusive` (whole GPUs).",
    )
    mig: MIGSettings = Field(default_factory=MIGSettings, description="MIG repartitioning policy.")
    mps: MPSSettings = Field(default_factory=MPSSettings, description="MPS limits.")
    time_slicing: TimeSlicingSettings = Field(
        default_factory=TimeSlicingSettings, description="Time-slicing limits."
    )

    @field_validator("mechanisms")
    @classmethod
    def _unique_mechanisms(cls, v: list[Mechanism]) -> list[Mechanism]:
        if len(set(v)) != len(v):
            raise ValueError("`mechanisms` must not list a mechanism twice")
        return v

    @model_validator(mode="after")
    def _oversubscription(self) -> SharingPolicy:
        if (
            self.time_slicing.memory_oversubscription_percent > 100
            and Mechanism.TIME_SLICING not in self.mechanisms
        ):
            raise ValueError(
                "`timeSlicing.memoryOversubscriptionPercent` may only exceed 100 when `mechanisms` lists 'TimeSlicing'"
            )
        return self


class Reservation(ApiModel):
    """Whole GPUs kept free of Guaranteed and Burstable replicas, e.g. for an LLM fallback."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the reservation.")
    purpose: ReservationPurpose = Field(description="What the GPUs are kept for.")
    gpus: int = Field(ge=0, le=100000, description="Number of whole GPUs to keep.")
    lend_to: LendTo = Field(
        default=LendTo.NONE,
        description="`BestEffort`: idle reserved GPUs may hold BestEffort replicas and the trainers of "
        "FineTuneJobs that name the reservation in `borrowFrom`; both are evicted when the reservation's "
        "workload needs the GPU. `None`: never lent.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="PriorityClass of the workload that claims the reservation (default: the chart's "
        "LLM-fallback class). Pods with it preempt lent BestEffort replicas.",
    )


class Segment(ApiModel):
    """Whole GPUs set aside from inference packing, e.g. for fine-tuning jobs."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the segment.")
    purpose: SegmentPurpose = Field(description="What the GPUs are set aside for.")
    gpus: int = Field(ge=0, le=100000, description="Number of whole GPUs in the segment.")


TIME_OF_DAY = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietWindow(ApiModel):
    """A daily UTC window in which consolidation starts no move (a window may cross midnight)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "self.start != self.end",
                "a quiet window's `start` and `end` must differ (use 00:00-23:59 for the whole day)",
                field_path=".end",
            )
        )
    )

    start: str = Field(pattern=TIME_OF_DAY, max_length=5, description="Start, `HH:MM` UTC.")
    end: str = Field(
        pattern=TIME_OF_DAY,
        max_length=5,
        description="End, `HH:MM` UTC (exclusive); earlier than `start` for a window that crosses midnight.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> QuietWindow:
        if self.start == self.end:
            raise ValueError(
                "a quiet window's `start` and `end` must differ (use 00:00-23:59 for the whole day)"
            )
        return self


class ConsolidationPolicy(ApiModel):
    """When and how fast the operator moves running replicas to free whole GPUs (docs/consolidation.md)."""

    enabled: bool = Field(
        default=False,
        description="The off switch: `false` (the default) never moves a replica to defragment the pool; the "
        "status still reports how far the pool is from a fresh plan.",
    )
    threshold_percent: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Act only when the pool uses more than this many percent GPUs above a fresh plan of the "
        "same demand.",
    )
    max_moves_per_hour: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="Replicas that may start a move in any hour (abandoned moves count). At most one replica "
        "of a deployment moves at a time, always, and only while its other replicas are ready.",
    )
    ready_timeout: str = Field(
        default="15m",
        pattern=DURATION,
        max_length=16,
        description="A make-before-break move whose new replica is not Ready within this time is abandoned: "
        "the new pod is deleted and the old one keeps serving.",
    )
    quiet_hours: list[QuietWindow] | None = Field(
        default=None,
        max_length=8,
        json_schema_extra=k8s(list_type="atomic"),
        description="Daily UTC windows in which no move starts (moves in flight finish or time out).",
    )
    best_effort_break_before_make: bool = Field(
        default=True,
        description="A BestEffort replica whose target share is only free once it has left may move "
        "break-before-make (stop, then start on the target). Other tiers always move make-before-break, or "
        "not at all.",
    )

    @property
    def ready_timeout_seconds(self) -> float:
        return duration_seconds(self.ready_timeout)


class DisruptionPolicy(ApiModel):
    """What the operator may do to running replicas on its own initiative (beyond `sharing.mig.repartition`)."""

    consolidation: ConsolidationPolicy = Field(
        default_factory=ConsolidationPolicy,
        description="Defragmentation: move replicas make-before-break, within a budget, to free whole GPUs.",
    )


GPU_EQUIVALENTS_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,3})?$"
GPU_EQUIVALENTS_HELP = (
    "GPU-equivalents, a decimal string such as `3.5`: a share counts as the fraction of its GPU's memory and "
    "compute it holds, whichever is larger (a `3g.40gb` MIG instance on an H100 counts 0.5, an MPS client "
    "1 / clients per GPU, a time-sliced replica its memory estimate / GPU memory, a whole GPU 1)."
)


def gpu_equivalents(value: str) -> float:
    """The number of GPU-equivalents a quota string gives (``GPU_EQUIVALENTS_PATTERN``)."""
    return float(value)


class NamespaceSelector(LabelSelector):
    """A label selector on Namespace labels (``matchLabels`` and ``matchExpressions`` are ANDed)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "has(self.matchLabels) || has(self.matchExpressions)",
                "a tenant's `namespaces` must set `matchLabels` or `matchExpressions`, e.g. "
                "`matchLabels: {team: search}`; an empty selector would take every namespace",
            )
        )
    )


_CEILING_CEL = cel(
    "!has(self.ceiling) || double(self.ceiling) >= double(self.guaranteed)",
    "`ceiling` must be at least `guaranteed`: raise `ceiling` or lower `guaranteed`",
    field_path=".ceiling",
)


class TenantQuota(ApiModel):
    """What a tenant is entitled to in the pool (docs/tenants.md)."""

    model_config = ConfigDict(json_schema_extra=k8s(_CEILING_CEL))

    guaranteed: str = Field(
        default="0",
        max_length=10,
        pattern=GPU_EQUIVALENTS_PATTERN,
        description="GPU-equivalents the tenant's replicas get by tier order, as in a pool without tenants. "
        "Replicas beyond it only borrow idle capacity and are the first to yield when another tenant claims "
        "its guarantee. " + GPU_EQUIVALENTS_HELP,
    )
    ceiling: str | None = Field(
        default=None,
        max_length=10,
        pattern=GPU_EQUIVALENTS_PATTERN,
        description="Most GPU-equivalents the tenant may hold, borrowed included (unset: no ceiling). At "
        "least `guaranteed`.",
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Share of idle capacity handed out to the tenant's borrowing replicas, relative to the "
        "other tenants' weights.",
    )

    @model_validator(mode="after")
    def _ceiling(self) -> TenantQuota:
        if self.ceiling is not None and gpu_equivalents(self.ceiling) < gpu_equivalents(self.guaranteed):
            raise ValueError("`ceiling` must be at least `guaranteed`: raise `ceiling` or lower `guaranteed`")
        return self


class Tenant(TenantQuota):
    """A team or application sharing the pool: the namespaces it covers and its quota."""

    model_config = ConfigDict(json_schema_extra=k8s(_CEILING_CEL))

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the tenant.")
    namespaces: NamespaceSelector = Field(
        description="Namespaces whose SLMDeployments belong to the tenant, by Namespace labels. A namespace "
        "two tenants select belongs to the first of them in `tenants`."
    )


class DefaultTenant(TenantQuota):
    """The tenant of deployments in namespaces no tenant selects."""

    model_config = ConfigDict(json_schema_extra=k8s(_CEILING_CEL))

    name: str = Field(
        default="default", min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the tenant."
    )


class UnmatchedNamespaces(StrEnum):
    DEFAULT_TENANT = "DefaultTenant"
    REFUSE = "Refuse"


class GPUPoolSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.reservations) || !has(self.segments) || "
                "self.reservations.all(r, !self.segments.exists(s, s.name == r.name))",
                "a reservation and a segment must not share a name: rename one `segments[].name`",
                field_path=".segments",
            ),
            cel(
                "!has(self.tenants) || !has(self.defaultTenant) || "
                "!self.tenants.exists(t, t.name == self.defaultTenant.name)",
                "`defaultTenant.name` must differ from every `tenants[].name`: rename the default tenant",
                field_path=".defaultTenant.name",
            ),
        )
    )

    node_selector: LabelSelector = Field(description="Nodes that belong to the pool.")
    sharing: SharingPolicy = Field(default_factory=SharingPolicy, description="How GPUs may be shared.")
    reservations: list[Reservation] | None = Field(
        default=None,
        max_length=16,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Whole GPUs kept free of Guaranteed and Burstable replicas (LLM fallback).",
    )
    segments: list[Segment] | None = Field(
        default=None,
        max_length=16,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Whole GPUs kept out of inference packing (fine-tuning).",
    )
    disruption: DisruptionPolicy = Field(
        default_factory=DisruptionPolicy,
        description="Moves the operator may make on its own: consolidation and its disruption budget.",
    )
    tenants: list[Tenant] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Teams sharing the pool, each with a guaranteed quota, a ceiling and a weight in "
        "GPU-equivalents (docs/tenants.md). Quotas adding up to more than the pool's GPUs are allowed "
        "(condition `QuotaOvercommitted`). Reserved and segment GPUs are outside tenant quotas. Unset: no "
        "quotas; the pool plans by tier alone.",
    )
    default_tenant: DefaultTenant | None = Field(
        default=None,
        description="With `tenants`: the tenant of SLMDeployments in namespaces no tenant selects (default: "
        "`default`, no guarantee, no ceiling, weight 1).",
    )
    unmatched_namespaces: UnmatchedNamespaces = Field(
        default=UnmatchedNamespaces.DEFAULT_TENANT,
        description="With `tenants`: what happens to an SLMDeployment in a namespace no tenant selects. "
        "`DefaultTenant`: it belongs to `defaultTenant`. `Refuse`: it is not planned (condition "
        "`Placed=False`, reason `NoTenant`).",
    )

    @model_validator(mode="after")
    def _names(self) -> GPUPoolSpec:
        _unique(self.reservations, "`reservations`")
        _unique(self.segments, "`segments`")
        _unique(self.tenants, "`tenants`")
        if (
            self.tenants
            and self.default_tenant
            and self.default_tenant.name in {t.name for t in self.tenants}
        ):
            raise ValueError(
                "`defaultTenant.name` must differ from every `tenants[].name`: rename the default tenant"
            )
        seg = {s.name for s in self.segments or []}
        for r in self.reservations or []:
            if r.name in seg:
                raise ValueError(
                    "a reservation and a segment must not share a name: rename one `segments[].name`"
                )
        return self


class ReservationStatus(ApiModel):
    name: str = Field(max_length=63)
    gpus: int = Field(ge=0, description="GPUs held for the reservation.")
    in_use: int = Field(default=0, ge=0, description="Reserved GPUs used by the reservation's own workload.")
    lent: int = Field(default=0, ge=0, description="Reserved GPUs lent to BestEffort replicas.")
    lent_to_fine_tuning: int = Field(
        default=0,
        ge=0,
        description="Reserved GPUs held by FineTuneJob trainers borrowing them (`borrowFrom`); never also lent "
        "to BestEffort replicas.",
    )


class TenantStatus(ApiModel):
    """One tenant's quota and what its replicas hold in the plan."""

    name: str = Field(max_length=63)
    guaranteed: str = Field(default="0", max_length=16, description="Guaranteed quota (GPU-equivalents).")
    ceiling: str | None = Field(default=None, max_length=16, description="Ceiling (GPU-equivalents).")
    used_guaranteed: str = Field(
        default="0", max_length=16, description="GPU-equivalents held within the guaranteed quota."
    )
    used_borrowed: str = Field(
        default="0",
        max_length=16,
        description="GPU-equivalents borrowed beyond the quota (the first to yield to another tenant).",
    )
    memory_guaranteed: str = Field(default="0", max_length=32, description="Share memory within the quota.")
    memory_borrowed: str = Field(default="0", max_length=32, description="Share memory borrowed.")
    replicas_guaranteed: int = Field(default=0, ge=0)
    replicas_borrowed: int = Field(default=0, ge=0)
    replicas_unplaced: int = Field(default=0, ge=0)


class NodeSource(StrEnum):
    LABELS = "Labels"
    AGENT = "Agent"


class PoolNodeStatus(ApiModel):
    name: str = Field(max_length=253)
    product: str = Field(default="", max_length=128, description="GPU model (catalog key).")
    gpus: int = Field(default=0, ge=0)
    inventory_source: NodeSource = Field(
        default=NodeSource.LABELS,
        description="Where the GPU inventory came from: the node agent's NVML report or GPU feature "
        "discovery labels.",
    )
    sharing: str = Field(default="None", max_length=32, description="Node-wide sharing mode in the plan.")
    mig_config: str = Field(default="", max_length=253, description="mig-parted config the plan selects.")
    mig_config_state: str = Field(default="", max_length=32, description="`nvidia.com/mig.config.state`.")


class MoveOutcome(StrEnum):
    IN_FLIGHT = "InFlight"  # the new replica starts on the target; the old one serves
    COMPLETED = "Completed"  # the new replica was Ready; the old one was deleted
    ABANDONED = "Abandoned"  # the new replica was not Ready in time (or lost its target); the old one kept
    BREAK_BEFORE_MAKE = "BreakBeforeMake"  # BestEffort: the old replica stopped first


class ConsolidationMove(ApiModel):
    """One replica move the operator started within the last hour (the disruption budget's record)."""

    deployment: str = Field(max_length=317, description="`namespace/name` of the SLMDeployment.")
    replica: int = Field(ge=0)
    source: str = Field(max_length=300, description="`node/gpu` it left (or leaves).")
    target: str = Field(max_length=300, description="`node/gpu` it moved (or moves) to.")
    target_mechanism: Mechanism | None = Field(
        default=None, description="The sharing mechanism of the target share."
    )
    target_mig_profile: str | None = Field(
        default=None, max_length=32, description="The MIG profile of the target share, for `MIG`."
    )
    started: str = Field(max_length=64, description="When the move started (RFC 3339).")
    outcome: MoveOutcome
    reason: str = Field(default="", max_length=512, description="Why: the GPUs the moves free.")


class ConsolidationStatus(ApiModel):
    """How far the pool is from a fresh plan, and what consolidation is doing about it."""

    gpus_used: int = Field(default=0, ge=0, description="GPUs the current placement uses.")
    gpus_fresh: int = Field(
        default=0,
        ge=0,
        description="GPUs a fresh plan of the same demand would use (no running replica kept).",
    )
    gpus_freeable: int = Field(
        default=0,
        ge=0,
        description="GPUs consolidation could free at most (`gpusUsed - gpusFresh`); the `Consolidated` "
        "condition says what the moves under way free.",
    )
    fragmentation_ratio: str = Field(
        default="1.000", max_length=16, description="`gpusUsed / gpusFresh` (1.000 when both are equal)."
    )
    moves_in_flight: int = Field(default=0, ge=0, description="Moves whose new replica is not Ready yet.")
    moves_last_hour: int = Field(default=0, ge=0, description="Moves started within the last hour.")
    recent_moves: list[ConsolidationMove] | None = Field(
        default=None,
        max_length=1000,
        json_schema_extra=k8s(list_type="atomic"),
        description="Moves started within the last hour, oldest first.",
    )


class GPUPoolStatus(ApiModel):
    observed_generation: int | None = Field(default=None, ge=0)
    nodes: int = Field(default=0, ge=0, description="Nodes selected by the pool.")
    gpus_total: int = Field(default=0, ge=0)
    gpus_used: int = Field(default=0, ge=0, description="GPUs holding at least one replica.")
    gpus_reserved: int = Field(default=0, ge=0)
    gpus_segment: int = Field(default=0, ge=0)
    gpus_by_mode: dict[str, int] | None = Field(
        default=None, json_schema_extra={"maxProperties": 16}, description="GPUs per mode in the plan."
    )
    memory_total: str = Field(default="0", max_length=32, description="Memory of all GPUs (quantity).")
    memory_allocated: str = Field(default="0", max_length=32, description="Memory held by replicas' shares.")
    memory_stranded: str = Field(
        default="0",
        max_length=32,
        description="Memory on used GPUs that no replica can use (see docs/plan-format.md).",
    )
    replicas_placed: int = Field(default=0, ge=0)
    replicas_unplaced: int = Field(default=0, ge=0)
    reservations: list[ReservationStatus] | None = Field(
        default=None, max_length=16, json_schema_extra=k8s(list_type="map", list_map_keys=["name"])
    )
    node_status: list[PoolNodeStatus] | None = Field(
        default=None, max_length=5000, json_schema_extra=k8s(list_type="map", list_map_keys=["name"])
    )
    consolidation: ConsolidationStatus | None = Field(
        default=None,
        description="Distance from a fresh plan and the moves under way (docs/consolidation.md).",
    )
    tenants: list[TenantStatus] | None = Field(
        default=None,
        max_length=33,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Per tenant: quota and usage (guaranteed and borrowed), unplaced replicas.",
    )
    tenant_summary: str = Field(
        default="",
        max_length=256,
        description="Per tenant `name used/guaranteed` in GPU-equivalents, e.g. `search 4.5/4 ads 2/2` (a "
        "printer column).",
    )
    conditions: list[Condition] | None = Field(default=None, **CONDITIONS_FIELD)


# ---------------------------------------------------------------------------------------------- SLMDeployment


class PVCLocation(ApiModel):
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="PVC name.")
    path: str = Field(
        default="",
        max_length=1024,
        pattern=r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$",
        json_schema_extra=k8s(cel("!self.split('/').exists(p, p == '..')", "`path` must not contain '..'")),
        description="Relative path inside the volume.",
    )

    @field_validator("path")
    @classmethod
    def _no_parent(cls, v: str) -> str:
        if ".." in v.split("/"):
            raise ValueError("`path` must not contain '..'")
        return v


class HuggingFaceSource(ApiModel):
    repository: str = Field(
        min_length=3,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Hugging Face repository id (`owner/name`) vLLM loads.",
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Branch, tag or commit of the repository (default: `main`); pin a commit for reproducible pods.",
    )


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    key: str = Field(default="token", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class ModelSource(ApiModel):
    """Where vLLM loads the weights from: a Hugging Face repository or a folder on a PVC."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "[has(self.huggingFace), has(self.pvc)].filter(x, x).size() == 1",
                "exactly one of `huggingFace` or `pvc` must be set",
            ),
            cel(
                "!has(self.tokenSecretRef) || has(self.huggingFace)",
                "`tokenSecretRef` is the Hugging Face token: it may only be set with `huggingFace`",
                field_path=".tokenSecretRef",
            ),
        )
    )

    hugging_face: HuggingFaceSource | None = Field(default=None, description="A Hugging Face repository.")
    pvc: PVCLocation | None = Field(
        default=None, description="A folder on a PVC holding the checkpoint (config.json, safetensors)."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Hugging Face token, passed to vLLM as `HF_TOKEN`."
    )

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.hugging_face is None) == (self.pvc is None):
            raise ValueError("exactly one of `huggingFace` or `pvc` must be set")
        if self.token_secret_ref is not None and self.hugging_face is None:
            raise ValueError(
                "`tokenSecretRef` is the Hugging Face token: it may only be set with `huggingFace`"
            )
        return self


class ModelArchitectureSpec(ApiModel):
    """Architecture facts of a model the built-in catalog does not know (from its config.json)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "self.attentionHeads % self.kvHeads == 0",
                "`kvHeads` must divide `attentionHeads` (grouped-query attention shares each KV head among "
                "attentionHeads / kvHeads query heads)",
                field_path=".kvHeads",
            )
        )
    )

    parameters: int = Field(ge=1_000_000, le=1_000_000_000_000, description="Total parameter count.")
    layers: int = Field(ge=1, le=1024, description="Transformer layers (`num_hidden_layers`).")
    hidden_size: int = Field(ge=64, le=65536, description="`hidden_size`.")
    attention_heads: int = Field(ge=1, le=1024, description="`num_attention_heads`.")
    kv_heads: int = Field(ge=1, le=1024, description="`num_key_value_heads` (KV cache heads).")
    head_dim: int = Field(ge=8, le=1024, description="`head_dim` (often hidden_size / attention_heads).")
    max_context_tokens: int = Field(
        default=131072, ge=256, le=10_485_760, description="`max_position_embeddings`."
    )

    @model_validator(mode="after")
    def _kv(self) -> ModelArchitectureSpec:
        if self.attention_heads % self.kv_heads:
            raise ValueError(
                "`kvHeads` must divide `attentionHeads` (grouped-query attention shares each KV head among "
                "attentionHeads / kvHeads query heads)"
            )
        return self


SOURCE_NEEDED = (
    "a model outside the catalog (`architecture` set) must name where vLLM loads it: set `source` "
    "(`huggingFace.repository` or `pvc`), or make `name` its Hugging Face repository id (`owner/name`)"
)


class ModelSpec(ApiModel):
    """Which model to serve and the load each replica must hold."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.architecture) || self.maxContextTokens <= self.architecture.maxContextTokens",
                "`maxContextTokens` must not exceed `architecture.maxContextTokens`",
                field_path=".maxContextTokens",
            ),
            cel(
                "!has(self.architecture) || has(self.source) || self.name.contains('/')",
                SOURCE_NEEDED,
                field_path=".source",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Catalog name (e.g. `qwen2.5-3b-instruct`) or Hugging Face id of the model; a model "
        "the catalog does not know needs `architecture`.",
    )
    quantization: Quantization = Field(default=Quantization.BF16, description="Weight precision.")
    max_context_tokens: int = Field(
        default=4096, ge=256, le=1_048_576, description="Longest sequence (prompt + output) per request."
    )
    max_concurrent_sequences: int = Field(
        default=8, ge=1, le=1024, description="Sequences each replica serves at once (KV cache for all)."
    )
    architecture: ModelArchitectureSpec | None = Field(
        default=None, description="Architecture of a model the catalog does not know."
    )
    source: ModelSource | None = Field(
        default=None,
        description="Where vLLM loads the weights from. Default: the catalog's checkpoint for `quantization`, or "
        "`name` as a Hugging Face repository. Required with `architecture` unless `name` is the repository id.",
    )

    @model_validator(mode="after")
    def _context(self) -> ModelSpec:
        if self.architecture and self.max_context_tokens > self.architecture.max_context_tokens:
            raise ValueError("`maxContextTokens` must not exceed `architecture.maxContextTokens`")
        if self.architecture and self.source is None and "/" not in self.name:
            raise ValueError(SOURCE_NEEDED)
        return self


class EnvVar(ApiModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=4096)


class RuntimeSpec(ApiModel):
    """The serving container (vLLM's OpenAI-compatible server by default)."""

    image: str = Field(default=VLLM_IMAGE, min_length=1, max_length=512, description="Container image.")
    args: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=k8s(list_type="atomic"),
        description="Extra arguments appended after the ones derived from the share "
        "(`--gpu-memory-utilization`, `--max-model-len`, `--max-num-seqs`).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the server.")
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Extra environment variables.",
    )

    @model_validator(mode="after")
    def _env(self) -> RuntimeSpec:
        _unique(self.env, "`env`")
        return self


class ResourceOverrides(ApiModel):
    gpu_memory: str | None = Field(
        default=None,
        max_length=32,
        pattern=QUANTITY,
        json_schema_extra=k8s(
            cel(
                "isQuantity(self) && quantity(self).compareTo(quantity('256Mi')) >= 0",
                "`gpuMemory` must be a quantity of at least 256Mi, e.g. '20Gi'",
            )
        ),
        description="GPU memory per replica, overriding the estimate from model facts (e.g. `20Gi`).",
    )

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory(cls, v: str | None) -> str | None:
        return _quantity_field(v, "gpuMemory", 256 << 20)


class ShareOverride(ApiModel):
    """Pin the share instead of letting the planner choose."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.migProfile) || self.mechanism == 'MIG'",
                "`migProfile` may only be set when `mechanism` is 'MIG'",
                field_path=".migProfile",
            )
        )
    )

    mechanism: Mechanism = Field(description="Sharing mechanism for every replica.")
    mig_profile: str | None = Field(
        default=None,
        max_length=32,
        pattern=MIG_PROFILE_PATTERN,
        description="MIG profile, e.g. `1g.10gb` (must exist on the pool's GPU model).",
    )

    @model_validator(mode="after")
    def _profile(self) -> ShareOverride:
        if self.mig_profile and self.mechanism is not Mechanism.MIG:
            raise ValueError("`migProfile` may only be set when `mechanism` is 'MIG'")
        return self


class AutoscalingMetric(StrEnum):
    """What the autoscaler counts per replica (docs/autoscaling.md)."""

    IN_FLIGHT = "InFlight"  # calls the deployment's replicas answer now plus those waiting in the gateway
    QUEUE = "Queue"  # calls waiting in the gateway for a free slot of a replica


#: Bounds of the autoscaler's windows and delays (docs/autoscaling.md)
MAX_STABLE_WINDOW = "1h"
MIN_STABLE_WINDOW = "6s"
MAX_SCALE_DOWN_DELAY = "1h"
MIN_SCALE_TO_ZERO_AFTER = "30s"
MAX_SCALE_TO_ZERO_AFTER = "24h"
#: ``scaleToZeroAfter`` when ``minReplicas`` is 0 and the field is not set
DEFAULT_SCALE_TO_ZERO_AFTER = "5m"
#: How long a share released by a scale-down stays configured for the deployment (docs/autoscaling.md)
DEFAULT_KEEP_WARM_FOR = "10m"
MAX_KEEP_WARM_FOR = "24h"

AUTOSCALING_MIN_MAX = (
    "`autoscaling.minReplicas` must not exceed `autoscaling.maxReplicas`: raise `maxReplicas` or lower "
    "`minReplicas`"
)
AUTOSCALING_STABLE_WINDOW = (
    f"`autoscaling.stableWindow` must be between {MIN_STABLE_WINDOW} and {MAX_STABLE_WINDOW}, e.g. '60s'"
)
AUTOSCALING_PANIC_WINDOW = (
    "`autoscaling.panicWindow` must be at least 1s and at most `autoscaling.stableWindow`, e.g. '6s' (a tenth "
    "of the stable window)"
)
AUTOSCALING_SCALE_DOWN_DELAY = (
    f"`autoscaling.scaleDownDelay` must be at most {MAX_SCALE_DOWN_DELAY}, e.g. '2m'"
)
AUTOSCALING_ZERO_NEEDS_MIN_ZERO = (
    "`autoscaling.scaleToZeroAfter` may only be set with `autoscaling.minReplicas: 0`: set `minReplicas: 0` or "
    "remove `scaleToZeroAfter`"
)
AUTOSCALING_KEEP_WARM = (
    f"`autoscaling.keepWarmFor` must be at most {MAX_KEEP_WARM_FOR}, e.g. '10m' ('0s' keeps nothing warm)"
)
AUTOSCALING_ZERO_RANGE = (
    f"`autoscaling.scaleToZeroAfter` must be between {MIN_SCALE_TO_ZERO_AFTER} and {MAX_SCALE_TO_ZERO_AFTER}, "
    "e.g. '5m'"
)


class AutoscalingSpec(ApiModel):
    """Replicas from the load the gateway sees, between `minReplicas` and `maxReplicas` (docs/autoscaling.md).
    The decision goes to `status.autoscaling.desiredReplicas`; `spec.replicas` stays as written (GitOps owns
    it) and is only the starting point before the first decision."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel("self.minReplicas <= self.maxReplicas", AUTOSCALING_MIN_MAX, field_path=".minReplicas"),
            cel(
                f"duration(self.stableWindow) >= duration('{MIN_STABLE_WINDOW}') && "
                f"duration(self.stableWindow) <= duration('{MAX_STABLE_WINDOW}')",
                AUTOSCALING_STABLE_WINDOW,
                field_path=".stableWindow",
            ),
            cel(
                "duration(self.panicWindow) >= duration('1s') && "
                "duration(self.panicWindow) <= duration(self.stableWindow)",
                AUTOSCALING_PANIC_WINDOW,
                field_path=".panicWindow",
            ),
            cel(
                f"duration(self.scaleDownDelay) <= duration('{MAX_SCALE_DOWN_DELAY}')",
                AUTOSCALING_SCALE_DOWN_DELAY,
                field_path=".scaleDownDelay",
            ),
            cel(
                f"duration(self.keepWarmFor) <= duration('{MAX_KEEP_WARM_FOR}')",
                AUTOSCALING_KEEP_WARM,
                field_path=".keepWarmFor",
            ),
            cel(
                "!has(self.scaleToZeroAfter) || self.minReplicas == 0",
                AUTOSCALING_ZERO_NEEDS_MIN_ZERO,
                field_path=".scaleToZeroAfter",
            ),
            cel(
                f"!has(self.scaleToZeroAfter) || (duration(self.scaleToZeroAfter) >= "
                f"duration('{MIN_SCALE_TO_ZERO_AFTER}') && duration(self.scaleToZeroAfter) <= "
                f"duration('{MAX_SCALE_TO_ZERO_AFTER}'))",
                AUTOSCALING_ZERO_RANGE,
                field_path=".scaleToZeroAfter",
            ),
        )
    )

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Fewest replicas. 0 lets the deployment scale to zero after `scaleToZeroAfter` without "
        "calls; the gateway then holds the first call while a replica starts.",
    )
    max_replicas: int = Field(ge=1, le=10000, description="Most replicas (at least `minReplicas`).")
    metric: AutoscalingMetric = Field(
        default=AutoscalingMetric.IN_FLIGHT,
        description="`InFlight`: calls being answered plus those waiting in the gateway (as Knative's "
        "concurrency). `Queue`: only the calls waiting in the gateway for a free slot.",
    )
    target: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Calls per replica the autoscaler aims at (desired = ceil(load / target)). Default: "
        "`model.maxConcurrentSequences` for `InFlight`, 1 for `Queue`.",
    )
    stable_window: str = Field(
        default="60s",
        max_length=24,
        pattern=DURATION,
        description=f"The load is averaged over this window for the normal decision ({MIN_STABLE_WINDOW} to "
        f"{MAX_STABLE_WINDOW}); panic mode also lasts at least this long.",
    )
    panic_window: str = Field(
        default="6s",
        max_length=24,
        pattern=DURATION,
        description="The short window for bursts: when its load asks for `panicThresholdPercent` of the ready "
        "replicas or more, the autoscaler scales on it and does not scale down until a stable window passes "
        "without a burst (1s to `stableWindow`).",
    )
    panic_threshold_percent: int = Field(
        default=200,
        ge=110,
        le=1000,
        description="Panic mode starts when the panic window asks for this percentage of the ready replicas.",
    )
    scale_down_delay: str = Field(
        default="1m",
        max_length=24,
        pattern=DURATION,
        description="A scale-down takes effect only after the lower count held for this long (the highest "
        f"decision of the delay counts; at most {MAX_SCALE_DOWN_DELAY}). A new replica on a shared GPU costs a "
        "model load, and sometimes a MIG reconfiguration: do not give it up at the first quiet minute.",
    )
    scale_to_zero_after: str | None = Field(
        default=None,
        max_length=24,
        pattern=DURATION,
        description="With `minReplicas: 0`: remove the last replica after this long without any call "
        f"({MIN_SCALE_TO_ZERO_AFTER} to {MAX_SCALE_TO_ZERO_AFTER}; default {DEFAULT_SCALE_TO_ZERO_AFTER}).",
    )
    keep_warm_for: str = Field(
        default=DEFAULT_KEEP_WARM_FOR,
        max_length=24,
        pattern=DURATION,
        description="A share a scale-down releases (a configured MIG instance, an MPS or time-sliced slot) stays "
        "configured and kept for this deployment this long: the planner gives it to another deployment only when "
        "nothing else fits, so a scale-up within this time starts without a MIG reconfiguration or a drain "
        f"(listed in `status.warmShares`; at most {MAX_KEEP_WARM_FOR}, '0s' keeps nothing).",
    )
    max_scale_up_rate: int = Field(
        default=4,
        ge=2,
        le=1000,
        description="One decision asks for at most this many times the ready replicas (at least 1 more).",
    )
    max_scale_down_rate: int = Field(
        default=2,
        ge=2,
        le=1000,
        description="One decision keeps at least the ready replicas divided by this.",
    )

    @model_validator(mode="after")
    def _rules(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(AUTOSCALING_MIN_MAX)
        stable = duration_seconds(self.stable_window)
        if not duration_seconds(MIN_STABLE_WINDOW) <= stable <= duration_seconds(MAX_STABLE_WINDOW):
            raise ValueError(AUTOSCALING_STABLE_WINDOW)
        if not 1.0 <= duration_seconds(self.panic_window) <= stable:
            raise ValueError(AUTOSCALING_PANIC_WINDOW)
        if duration_seconds(self.scale_down_delay) > duration_seconds(MAX_SCALE_DOWN_DELAY):
            raise ValueError(AUTOSCALING_SCALE_DOWN_DELAY)
        if duration_seconds(self.keep_warm_for) > duration_seconds(MAX_KEEP_WARM_FOR):
            raise ValueError(AUTOSCALING_KEEP_WARM)
        if self.scale_to_zero_after is not None:
            if self.min_replicas != 0:
                raise ValueError(AUTOSCALING_ZERO_NEEDS_MIN_ZERO)
            zero = duration_seconds(self.scale_to_zero_after)
            if (
                not duration_seconds(MIN_SCALE_TO_ZERO_AFTER)
                <= zero
                <= duration_seconds(MAX_SCALE_TO_ZERO_AFTER)
            ):
                raise ValueError(AUTOSCALING_ZERO_RANGE)
        return self


class SLMDeploymentSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "self.qos != 'Guaranteed' || !has(self.share) || "
                "self.share.mechanism == 'MIG' || self.share.mechanism == 'Exclusive'",
                "a Guaranteed deployment needs hard isolation: `share.mechanism` must be 'MIG' or "
                "'Exclusive'",
                field_path=".share.mechanism",
            ),
            cel(
                "self.qos == 'BestEffort' || !has(self.share) || self.share.mechanism != 'TimeSlicing'",
                "only BestEffort deployments may be time-sliced: set `qos: BestEffort` or another "
                "`share.mechanism`",
                field_path=".share.mechanism",
            ),
        )
    )

    pool_ref: LocalObjectReference = Field(description="The GPUPool whose GPUs serve this deployment.")
    model: ModelSpec = Field(description="The model and the load each replica must hold.")
    replicas: int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Desired replicas (`kubectl scale` sets it). With `autoscaling`, only the starting count "
        "before the autoscaler's first decision: the operator plans for `status.desiredReplicas` and never "
        "writes this field.",
    )
    qos: QoSTier = Field(
        default=QoSTier.BURSTABLE,
        description="`Guaranteed`: hard isolation (MIG slice or whole GPU), never preempted by lower tiers. "
        "`Burstable`: MIG or an MPS share with a memory cap. `BestEffort`: may be time-sliced, oversubscribed "
        "and lent reserved GPUs; yields first under pressure.",
    )
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Serving container.")
    resources: ResourceOverrides | None = Field(default=None, description="Overrides of the estimate.")
    share: ShareOverride | None = Field(default=None, description="Pin the share mechanism or MIG profile.")
    suspend: bool = Field(
        default=False,
        description="Scale to zero and free the shares while keeping the object (as `Job.spec.suspend`).",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="Scale on the load the gateway sees, between `minReplicas` and `maxReplicas`, down to zero "
        "when `minReplicas` is 0 (docs/autoscaling.md). The decision is in `status.autoscaling`.",
    )

    @model_validator(mode="after")
    def _tier_rules(self) -> SLMDeploymentSpec:
        if (
            self.qos is QoSTier.GUARANTEED
            and self.share
            and self.share.mechanism not in (Mechanism.MIG, Mechanism.EXCLUSIVE)
        ):
            raise ValueError(
                "a Guaranteed deployment needs hard isolation: `share.mechanism` must be 'MIG' or 'Exclusive'"
            )
        if (
            self.qos is not QoSTier.BEST_EFFORT
            and self.share
            and self.share.mechanism is Mechanism.TIME_SLICING
        ):
            raise ValueError(
                "only BestEffort deployments may be time-sliced: set `qos: BestEffort` or another "
                "`share.mechanism`"
            )
        return self


class ResolvedShare(ApiModel):
    mechanism: Mechanism | None = None
    mig_profile: str | None = Field(default=None, max_length=32)
    memory: str = Field(default="0", max_length=32, description="GPU memory of the share (quantity).")
    mps_memory_limit: str | None = Field(default=None, max_length=32, description="MPS pinned memory cap.")


class MemoryEstimateStatus(ApiModel):
    weights: str = Field(default="0", max_length=32)
    kv_cache: str = Field(default="0", max_length=32)
    overhead: str = Field(default="0", max_length=32)
    total: str = Field(default="0", max_length=32)
    source: str = Field(
        default="Catalog", max_length=32, description="`Catalog`, `Architecture` or `Override`."
    )


class ReplicaPlacementStatus(ApiModel):
    replica: int = Field(ge=0, description="Replica ordinal.")
    node: str = Field(default="", max_length=253)
    gpu: int = Field(default=-1, ge=-1, description="GPU index on the node (-1 when unplaced).")
    mechanism: str = Field(default="", max_length=32)
    mig_profile: str | None = Field(default=None, max_length=32)
    pod: str = Field(default="", max_length=253)
    state: str = Field(default="", max_length=32, description="Placed, Pending, Running, Unplaced, Yielded.")
    reason: str = Field(default="", max_length=128)


class AutoscalingStatus(ApiModel):
    """The autoscaler's last decision (written by the operator's autoscaler, docs/autoscaling.md)."""

    desired_replicas: int = Field(default=0, ge=0, le=10000, description="Replicas the autoscaler wants.")
    reason: str = Field(
        default="",
        max_length=64,
        description="`ScaledUp`, `ScaledDown`, `ScaledToZero`, `Activated` (a call arrived at zero replicas), "
        "`Steady` or `NoMetrics` (no gateway answered: the last decision holds).",
    )
    message: str = Field(default="", max_length=1024, description="The figures behind the decision.")
    panic: bool = Field(default=False, description="True while the burst (panic) mode holds.")
    last_scale_time: str | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="Last change of `desiredReplicas`.",
    )
    last_active_time: str | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="Last time the gateway had a call for the deployment (`scaleToZeroAfter` counts from it).",
    )


class WarmShareStatus(ApiModel):
    """A share a scale-down released, kept for the deployment until `until` (`spec.autoscaling.keepWarmFor`)."""

    node: str = Field(max_length=253)
    gpu: int = Field(ge=0, description="GPU index on the node.")
    mechanism: str = Field(max_length=32)
    mig_profile: str | None = Field(default=None, max_length=32)
    replica: int = Field(default=0, ge=0, description="The replica that released it.")
    until: str = Field(
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="When the share stops being kept.",
    )


class SLMDeploymentStatus(ApiModel):
    observed_generation: int | None = Field(default=None, ge=0)
    desired_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Replicas the operator plans for: `spec.replicas`, or with `spec.autoscaling` the "
        "autoscaler's decision within its bounds; 0 when suspended.",
    )
    replicas: int = Field(default=0, ge=0, description="Replicas that exist (pods).")
    ready_replicas: int = Field(default=0, ge=0)
    placed_replicas: int = Field(default=0, ge=0)
    selector: str = Field(default="", max_length=1024, description="Label selector of the pods (scale).")
    share: ResolvedShare | None = None
    share_summary: str = Field(default="", max_length=64, description="Short share text, e.g. 'MIG 1g.10gb'.")
    estimate: MemoryEstimateStatus | None = None
    placements: list[ReplicaPlacementStatus] | None = Field(
        default=None, max_length=10000, json_schema_extra=k8s(list_type="map", list_map_keys=["replica"])
    )
    explanation: str = Field(default="", max_length=4096, description="Why the planner chose this share.")
    endpoint: str = Field(default="", max_length=512, description="In-cluster URL of the Service.")
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The autoscaler's last decision (with `spec.autoscaling`)."
    )
    warm_shares: list[WarmShareStatus] | None = Field(
        default=None,
        max_length=10000,
        description="Shares released by scale-downs and kept configured for this deployment "
        "(`spec.autoscaling.keepWarmFor`); a scale-up takes them first. Written by the planner's status.",
    )
    conditions: list[Condition] | None = Field(default=None, **CONDITIONS_FIELD)


# ---------------------------------------------------------------------------------------------- FineTuneJob


class ConfigMapKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str | None = Field(
        default=None, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key (default: every key)."
    )


class SecretKeySelector(ApiModel):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret."
    )


#: A task tag: the `x-slm-task` header or the classifier's tag.
TASK_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$"


USAGE_STORE_SINCE = (
    "`since` must be a duration before now (30m, 24h, 7d, 2w) or an ISO 8601 date or time (2026-05-01, "
    "2026-05-01T12:00:00Z)"
)


class UsageStoreSource(ApiModel):
    """The gateway's usage store (docs/capture.md): the calls one SLMRoute captured, exported by the Job's first
    step (`slm-operator usage export`)."""

    url_secret_ref: SecretKeySelector = Field(
        description="Secret key (in the FineTuneJob's namespace) holding the store URL, e.g. "
        "`postgresql://user:password@host:5432/usage` (it carries credentials, so never the spec). The kubelet "
        "passes it to the export step as an environment variable; the operator does not read Secrets."
    )
    route: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="SLMRoute whose captured calls to learn from, in the FineTuneJob's namespace (a job never "
        "reads another namespace's calls).",
    )
    task: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=TASK_PATTERN,
        description="Only the route's calls of this task: the task the caller sent (`x-slm-task`), the gateway's "
        "classifier tagged, or `slm-operator advise --apply` tagged afterwards (docs/loop.md). Default every "
        "call of the route.",
    )
    since: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        json_schema_extra=k8s(cel(f"self.matches('{TIME_BOUND_REGEX}')", USAGE_STORE_SINCE)),
        description="Only calls at or after this time: a duration before the export runs (`30d`) or an ISO "
        "8601 date or time (`2026-11-01`, UTC without an offset); default every call kept.",
    )

    @field_validator("since")
    @classmethod
    def _since(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return check_time_bound(v)
        except ValueError:
            raise ValueError(USAGE_STORE_SINCE) from None


DATASET_ONE_SOURCE = "exactly one of `configMapRef`, `pvc` or `usageStore` must be set"


class DatasetSource(ApiModel):
    """Where the usage data comes from: JSON lines of chat records in a ConfigMap or on a PVC, or the calls an
    SLMRoute captured into the usage store."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "[has(self.configMapRef), has(self.pvc), has(self.usageStore)].filter(x, x).size() == 1",
                DATASET_ONE_SOURCE,
            )
        )
    )

    config_map_ref: ConfigMapKeyRef | None = Field(default=None, description="A ConfigMap with the records.")
    pvc: PVCLocation | None = Field(default=None, description="A file or folder on a PVC.")
    usage_store: UsageStoreSource | None = Field(
        default=None, description="The calls an SLMRoute captured into the gateway's usage store."
    )

    @model_validator(mode="after")
    def _one(self) -> DatasetSource:
        if [self.config_map_ref, self.pvc, self.usage_store].count(None) != 2:
            raise ValueError(DATASET_ONE_SOURCE)
        return self


class Sanitization(ApiModel):
    redact: list[PIIClass] = Field(
        default_factory=lambda: [PIIClass(c) for c in DEFAULT_REDACT],
        max_length=16,
        json_schema_extra=k8s(list_type="set"),
        description="PII classes replaced by pseudonyms (`<PERSON_1>`, consistent within a record) before any "
        "record reaches training (docs/sanitization.md). Person, Location and Organization are found by the "
        "trainer image's NER model, the others by patterns.",
    )

    @field_validator("redact")
    @classmethod
    def _set(cls, v: list[PIIClass]) -> list[PIIClass]:
        if len(set(v)) != len(v):
            raise ValueError("`redact` must not list a class twice")
        return v


#: The LoRA rank a FineTuneJob trains with when it names none.
DEFAULT_LORA_RANK = 16
#: vLLM's `--max-lora-rank` choices (vllm/config/lora.py `MaxLoRARanks`, v0.33.0); a larger adapter cannot be served.
SERVED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MAX_SERVED_LORA_RANK = SERVED_LORA_RANKS[-1]


class Hyperparameters(ApiModel):
    epochs: int = Field(default=3, ge=1, le=100)
    learning_rate: str = Field(
        default="0.0002",
        max_length=32,
        pattern=DECIMAL_PATTERN,
        description="Learning rate (decimal string).",
    )
    lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SERVED_LORA_RANK,
        description=f"LoRA rank (LoRA and QLoRA; default {DEFAULT_LORA_RANK}). At most {MAX_SERVED_LORA_RANK}: "
        "the largest rank vLLM serves (`--max-lora-rank`).",
    )
    lora_alpha: int | None = Field(
        default=None, ge=1, le=4096, description="LoRA alpha (LoRA and QLoRA; default 2 x rank)."
    )
    batch_size: int = Field(default=8, ge=1, le=4096)
    max_sequence_tokens: int = Field(default=4096, ge=128, le=1_048_576)


class OutputLocation(ApiModel):
    pvc: PVCLocation = Field(description="Where the adapter or weights are written.")


class EvaluationGate(ApiModel):
    """What the trainer's evaluation on the held-out examples must show before anything is promoted."""

    min_score_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Least evaluation score (percent) of the tuned model on the held-out examples; the trainer "
        'reports it in the termination message of its `train` container (`{"evalScorePercent": N}`). 0: no '
        "floor.",
    )
    must_beat_incumbent: bool = Field(
        default=True,
        description="The tuned score must be higher than the score of what the SLMDeployment serves now: the "
        "adapter it serves (`incumbentScorePercent`, evaluated on the same examples), else the base model "
        "(`baseScorePercent`). A trainer that reports no score then promotes nothing.",
    )


#: How long a replica on the new weights may take to become Ready before the promotion is rolled back.
DEFAULT_READINESS_TIMEOUT_SECONDS = 600


class PromoteSpec(ApiModel):
    slm_deployment_ref: LocalObjectReference = Field(description="SLMDeployment rolled onto the new weights.")
    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    readiness_timeout_seconds: int = Field(
        default=DEFAULT_READINESS_TIMEOUT_SECONDS,
        ge=30,
        le=86400,
        description="Seconds a replica pod on the new weights may take, from its start on the node, to become "
        "Ready. A replica that misses it, or crash-loops, rolls the SLMDeployment back to what it served "
        "before (`Promoted=False`, reason `RolledBack`).",
    )


class FineTuneModelSource(ApiModel):
    """Base weights on a PVC instead of the Hugging Face Hub."""

    pvc: PVCLocation = Field(
        description="Folder with the base checkpoint (config.json, tokenizer, safetensors), mounted read-only "
        "on `/model` and passed to the trainer as `--base-model /model/<path>`."
    )


SPEC_IMMUTABLE = (
    "`spec` must not change after creation: a FineTuneJob is one training run; create a new FineTuneJob "
    "(a new name) to train with other settings"
)
NEED_PLACE_TO_RUN = "at least one of `segment` or `borrowFrom` must be set: where the trainer runs"


class FineTuneJobSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "self.method != 'Full' || !has(self.hyperparameters) || "
                "(!has(self.hyperparameters.loraRank) && !has(self.hyperparameters.loraAlpha))",
                "`hyperparameters.loraRank` and `loraAlpha` may only be set when `method` is 'LoRA' or 'QLoRA'",
                field_path=".hyperparameters.loraRank",
            ),
            cel("has(self.segment) || has(self.borrowFrom)", NEED_PLACE_TO_RUN, field_path=".segment"),
            cel("self == oldSelf", SPEC_IMMUTABLE),
        )
    )

    pool_ref: LocalObjectReference = Field(
        description="GPUPool whose fine-tuning segment or reservation the trainer runs on."
    )
    segment: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Fine-tuning segment of the pool (`spec.segments[].name`) whose GPUs the trainer may use.",
    )
    borrow_from: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="LLM-fallback reservation of the pool (`spec.reservations[].name`, with `lendTo: "
        "BestEffort`) whose idle GPUs the trainer may borrow. The reservation's workload preempts the trainer "
        "when it needs the GPU; the Job's next pod resumes from the last checkpoint.",
    )
    base_model: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Model to adapt: a catalog name (trained from its Hugging Face repository) or a Hugging Face "
        "repository id; with `modelSource`, only its name.",
    )
    model_source: FineTuneModelSource | None = Field(
        default=None, description="Base weights on a PVC (default: the Hugging Face Hub)."
    )
    method: FineTuneMethod = Field(default=FineTuneMethod.LORA, description="LoRA, QLoRA or Full.")
    dataset: DatasetSource = Field(description="Usage data to learn from.")
    sanitization: Sanitization = Field(default_factory=Sanitization, description="PII removal.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    output: OutputLocation = Field(description="Where the result goes.")
    promote: PromoteSpec | None = Field(default=None, description="Deployment to roll onto the result.")
    gpus: int = Field(default=1, ge=1, le=64, description="Whole GPUs the trainer uses.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Trainer image of both steps (sanitize, train); default: the operator's `--trainer-image`.",
    )
    backoff_limit: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Retries of the training Job. A pod preempted or evicted (or ended by SIGTERM, exit code "
        "143) does not count: the next one resumes from the last checkpoint.",
    )
    active_deadline_seconds: int = Field(
        default=86400, ge=60, le=2_592_000, description="Seconds the whole Job may run, retries included."
    )

    @model_validator(mode="after")
    def _lora(self) -> FineTuneJobSpec:
        hp = self.hyperparameters
        if self.method is FineTuneMethod.FULL and (hp.lora_rank is not None or hp.lora_alpha is not None):
            raise ValueError(
                "`hyperparameters.loraRank` and `loraAlpha` may only be set when `method` is 'LoRA' or 'QLoRA'"
            )
        if self.segment is None and self.borrow_from is None:
            raise ValueError(NEED_PLACE_TO_RUN)
        return self


class SanitizationStatus(ApiModel):
    """What the `sanitize` step reported (its termination message), and the `export` step before it."""

    records: int = Field(default=0, ge=0, description="Records written to training.")
    skipped: int = Field(default=0, ge=0, description="Lines skipped because they were not JSON.")
    exported: int | None = Field(
        default=None,
        ge=0,
        description="Records the export step read from the usage store (`dataset.usageStore` only).",
    )
    redacted: dict[str, int] | None = Field(
        default=None,
        json_schema_extra={"maxProperties": 64},
        description="Replacements per PII class.",
    )


class EvaluationStatus(ApiModel):
    """The trainer's scores on the held-out examples (its termination message), in percent."""

    score: int | None = Field(default=None, ge=0, le=100, description="The tuned model (`evalScorePercent`).")
    base_score: int | None = Field(
        default=None, ge=0, le=100, description="The base model (`baseScorePercent`)."
    )
    incumbent_score: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="What the SLMDeployment served when the Job started (`incumbentScorePercent`); absent when "
        "it served no adapter.",
    )
    examples: int = Field(default=0, ge=0, description="Held-out examples the scores were computed on.")
    train_examples: int = Field(default=0, ge=0, description="Examples trained on.")


class PromotionPhase(StrEnum):
    ROLLING = "Rolling"  # the SLMDeployment was pointed at the result; its replicas are rolling
    PROMOTED = "Promoted"  # every replica serves the result and is Ready
    ROLLED_BACK = "RolledBack"  # a replica on the result failed; the previous weights were restored (final)
    SUPERSEDED = "Superseded"  # a newer successful FineTuneJob promotes onto the same SLMDeployment


class PromotionStatus(ApiModel):
    """This FineTuneJob's promotion: where it stands and what the SLMDeployment served before it."""

    phase: PromotionPhase = Field(description="Rolling, Promoted, RolledBack or Superseded.")
    slm_deployment: str = Field(max_length=253, description="The SLMDeployment.")
    previous_adapter: str | None = Field(
        default=None,
        max_length=1024,
        description="What it served before (`pvc://claim/path`); absent: the base model. Restored on rollback.",
    )
    previous_method: str | None = Field(default=None, max_length=16, description="Its training method.")
    previous_lora_rank: str | None = Field(default=None, max_length=8, description="Its LoRA rank.")
    message: str = Field(default="", max_length=1024, description="Why it rolled back, or who superseded it.")


class FineTuneJobStatus(ApiModel):
    observed_generation: int | None = Field(default=None, ge=0)
    job_name: str = Field(default="", max_length=253)
    start_time: str | None = Field(default=None, max_length=64, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(
        default=None, max_length=64, json_schema_extra={"format": "date-time"}
    )
    artifact: str = Field(default="", max_length=1024, description="`pvc://claim/path` of the result.")
    sanitization: SanitizationStatus | None = Field(default=None, description="What the sanitize step did.")
    evaluation: EvaluationStatus | None = Field(default=None, description="The trainer's scores.")
    preemptions: int = Field(
        default=0, ge=0, description="Pods of the Job that were preempted or evicted (each resumed)."
    )
    promotion: PromotionStatus | None = Field(default=None, description="The promotion, once it started.")
    conditions: list[Condition] | None = Field(default=None, **CONDITIONS_FIELD)


# ---------------------------------------------------------------------------------------------- SLMRoute


class ToolsMatch(StrEnum):
    """Whether a call offers the model tools (a non-empty `tools` list)."""

    PRESENT = "Present"
    ABSENT = "Absent"


class FallbackTrigger(StrEnum):
    """What makes the gateway send a call to the route's fallback backend (docs/gateway.md)."""

    ERROR = "Error"  # no answer: connection refused or reset after the retries, or a 5xx other than 503
    TIMEOUT = (
        "Timeout"  # no first byte within `timeouts.firstByte`, or the answer not complete within `total`
    )
    OVERLOAD = "Overload"  # the backend answered 429 or 503, or its gateway queue is full
    INVALID_JSON = (
        "InvalidJSON"  # the answer is not the JSON the call asked for (response_format, tool calls)
    )


ALL_FALLBACK_TRIGGERS = [
    FallbackTrigger.ERROR,
    FallbackTrigger.TIMEOUT,
    FallbackTrigger.OVERLOAD,
    FallbackTrigger.INVALID_JSON,
]
#: The name agents send as `model` (what they sent to the LLM before, e.g. `gpt-4o-mini`).
MODEL_STRING = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
#: A sampling rate between 0 and 1 as a decimal string (`1`, `0.25`, `0.001`).
SAMPLE_RATE_PATTERN = r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?|\.[0-9]{1,6})$"


class ExternalBackend(ApiModel):
    """An OpenAI-compatible endpoint outside the cluster's SLMDeployments (e.g. the LLM the agents used before)."""

    url: str = Field(
        min_length=8,
        max_length=2048,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="Base URL of the OpenAI-compatible API, with its version path, as agents set "
        "`OPENAI_BASE_URL` (e.g. `https://api.openai.com/v1`); the gateway appends `/chat/completions`, "
        "`/completions`.",
    )
    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=MODEL_STRING,
        description="Model name sent to this endpoint in place of the one the caller sent.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key (same namespace) holding the endpoint's API key, sent as "
        "`Authorization: Bearer`. Omit for an endpoint without authentication.",
    )


class RouteBackend(ApiModel):
    """A place the route can send calls to: an SLMDeployment of the same namespace or an external endpoint."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "[has(self.slmDeploymentRef), has(self.external)].filter(x, x).size() == 1",
                "a backend must set exactly one of `slmDeploymentRef` or `external`",
            )
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Name of the backend in this route (rules, `fallback` and the `x-slm-backend` header use it).",
    )
    slm_deployment_ref: LocalObjectReference | None = Field(
        default=None,
        description="An SLMDeployment in the route's namespace; the gateway balances over its ready replicas "
        "and sends the deployment's name as the model (the name vLLM serves it under).",
    )
    external: ExternalBackend | None = Field(
        default=None, description="An external OpenAI-compatible endpoint."
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="Calls in flight per endpoint (replica) before further calls wait in the gateway's queue. "
        "Default: the SLMDeployment's `maxConcurrentSequences`; unlimited for an external backend.",
    )
    max_queue: int = Field(
        default=100,
        ge=0,
        le=100000,
        description="Calls that may wait for a free slot (per gateway replica); a call beyond it is an "
        "`Overload`.",
    )

    @model_validator(mode="after")
    def _one(self) -> RouteBackend:
        if (self.slm_deployment_ref is None) == (self.external is None):
            raise ValueError("a backend must set exactly one of `slmDeploymentRef` or `external`")
        return self


class RuleMatch(ApiModel):
    """What a call must have for its rule to apply; every field set must hold (an empty match takes every call)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.minPromptTokens) || !has(self.maxPromptTokens) || "
                "self.minPromptTokens <= self.maxPromptTokens",
                "`minPromptTokens` must not exceed `maxPromptTokens`",
                field_path=".minPromptTokens",
            )
        )
    )

    tasks: list[Annotated[str, Field(min_length=1, max_length=63, pattern=TASK_PATTERN)]] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=k8s(list_type="set"),
        description="The call's task is one of these: the `x-slm-task` header the agent sends, or else the tag "
        "of the route's `taskClassifier`. A call without a task matches no rule that lists tasks.",
    )
    tools: ToolsMatch | None = Field(
        default=None, description="`Present`: the call offers tools; `Absent`: it offers none."
    )
    min_prompt_tokens: int | None = Field(
        default=None,
        ge=0,
        le=10_000_000,
        description="Least estimated prompt length in tokens (characters of messages and tools / 4).",
    )
    max_prompt_tokens: int | None = Field(
        default=None, ge=0, le=10_000_000, description="Largest estimated prompt length in tokens."
    )

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("`tasks` must not list a task twice")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> RuleMatch:
        if (
            self.min_prompt_tokens is not None
            and self.max_prompt_tokens is not None
            and self.min_prompt_tokens > self.max_prompt_tokens
        ):
            raise ValueError("`minPromptTokens` must not exceed `maxPromptTokens`")
        return self


class WeightedBackend(ApiModel):
    backend: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="A backend of the route."
    )
    weight: int = Field(
        ge=0, le=1000, description="Share of the rule's calls: weight / sum of the split's weights."
    )


class ShadowSpec(ApiModel):
    """Copies of calls sent to other backends to compare their answers; callers never see them."""

    backends: list[Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]] = Field(
        min_length=1,
        max_length=4,
        json_schema_extra=k8s(list_type="set"),
        description="Backends that get a copy of the call (fire and forget, off the call's path).",
    )
    percent: int = Field(default=100, ge=0, le=100, description="Percent of the rule's calls copied.")

    @field_validator("backends")
    @classmethod
    def _set(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("`shadow.backends` must not list a backend twice")
        return v


PROMOTE_NEEDS_SHADOW = (
    "a rule with `promote` must have a `shadow` that lists `promote.backend`: it is promoted on the agreement "
    "of its shadow answers; add `shadow: {backends: [<promote.backend>]}` or remove `promote`"
)
PROMOTE_NEEDS_BACKEND = (
    "a rule with `promote` must have a single `backend`, not a `split`: the promoted backend takes all of the "
    "rule's calls and falls back to that `backend`; replace the `split` with `backend` or remove `promote`"
)
PROMOTE_NOT_SHADOWED = (
    "`promote.backend` must be one of the rule's `shadow.backends`: add it there or fix the name"
)


#: The longest wait before a demoted rule may be promoted again (``promote.backoff`` doubled per demotion).
MAX_PROMOTION_BACKOFF = "24h"
PROMOTE_BACKOFF_RANGE = "`promote.backoff` must be at most 24h, e.g. '10m' (0s: no wait after a demotion)"


class RulePromotion(ApiModel):
    """Automatic promotion of a shadow backend to serving the rule's calls, and back (docs/gateway.md, S6 of
    docs/loop.md)."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                f"!has(self.backoff) || duration(self.backoff) <= duration('{MAX_PROMOTION_BACKOFF}')",
                PROMOTE_BACKOFF_RANGE,
                field_path=".backoff",
            )
        )
    )

    backend: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="The shadow backend to promote: one of the rule's `shadow.backends`. While it serves, the "
        "rule's `backend` is its fallback.",
    )
    min_agreement_percent: int = Field(
        default=90,
        ge=1,
        le=100,
        description="Least share of compared shadow answers that agree with the caller's answer, in percent, "
        "for the backend to be promoted.",
    )
    min_samples: int = Field(
        default=200,
        ge=1,
        le=1_000_000,
        description="Compared shadow answers needed before promoting (counted by the gateway replica that "
        "writes the route's status, since the last change of phase or of the model `backend` serves).",
    )
    max_fallback_percent: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Once serving: the share of its calls that fell back to the rule's `backend`, in percent, "
        "above which it goes back to shadow (judged after at least min(`minSamples`, 50) calls).",
    )
    backoff: str = Field(
        default="10m",
        max_length=24,
        pattern=DURATION,
        description="After a demotion, how long the rule stays in shadow before it may be promoted again, "
        "whatever the agreement (`status.rules[].retryAfter`); each further demotion in a row doubles the wait, "
        f"up to {MAX_PROMOTION_BACKOFF}. A rule that served for {MAX_PROMOTION_BACKOFF} starts again from this "
        f"wait. 0s to {MAX_PROMOTION_BACKOFF} (`0s`: promoted again as soon as the samples agree).",
    )

    @model_validator(mode="after")
    def _backoff(self) -> RulePromotion:
        if duration_seconds(self.backoff) > duration_seconds(MAX_PROMOTION_BACKOFF):
            raise ValueError(PROMOTE_BACKOFF_RANGE)
        return self


class RouteRule(ApiModel):
    """The first rule whose `match` holds picks the backend of a call."""

    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "[has(self.backend), has(self.split)].filter(x, x).size() == 1",
                "a rule must set exactly one of `backend` or `split`",
            ),
            cel(
                "!has(self.split) || self.split.exists(s, s.weight > 0)",
                "a `split` must give at least one backend a `weight` above 0",
                field_path=".split",
            ),
            cel(
                "!has(self.shadow) || !has(self.backend) || !self.shadow.backends.exists(b, b == self.backend)",
                "`shadow.backends` must not name the rule's own `backend`: its answer is already the real one",
                field_path=".shadow.backends",
            ),
            cel("!has(self.promote) || has(self.shadow)", PROMOTE_NEEDS_SHADOW, field_path=".promote"),
            cel("!has(self.promote) || has(self.backend)", PROMOTE_NEEDS_BACKEND, field_path=".promote"),
            cel(
                "!has(self.promote) || !has(self.shadow) || "
                "self.shadow.backends.exists(b, b == self.promote.backend)",
                PROMOTE_NOT_SHADOWED,
                field_path=".promote.backend",
            ),
        )
    )

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_LABEL, description="Name of the rule (unique in the route)."
    )
    match: RuleMatch = Field(
        default_factory=RuleMatch, description="Calls the rule applies to (default: all)."
    )
    backend: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL, description="Backend of the calls."
    )
    split: list[WeightedBackend] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        json_schema_extra=k8s(list_type="map", list_map_keys=["backend"]),
        description="Backends sharing the calls by weight (canary), instead of `backend`.",
    )
    shadow: ShadowSpec | None = Field(default=None, description="Copies of the calls to compare backends.")
    promote: RulePromotion | None = Field(
        default=None,
        description="Promote a shadow backend to serve the rule's calls once its answers agree with the "
        "caller's often enough, and send it back to shadow when too many of its calls fall back; the phase is "
        "in `status.rules` (docs/gateway.md). Needs `shadow` and a single `backend`.",
    )

    @model_validator(mode="after")
    def _target(self) -> RouteRule:
        if (self.backend is None) == (self.split is None):
            raise ValueError("a rule must set exactly one of `backend` or `split`")
        if self.split is not None:
            names = [s.backend for s in self.split]
            if len(set(names)) != len(names):
                raise ValueError("`split` must not list a backend twice")
            if not any(s.weight > 0 for s in self.split):
                raise ValueError("a `split` must give at least one backend a `weight` above 0")
        if self.shadow and self.backend and self.backend in self.shadow.backends:
            raise ValueError(
                "`shadow.backends` must not name the rule's own `backend`: its answer is already the real one"
            )
        if self.promote is not None:
            if self.shadow is None:
                raise ValueError(PROMOTE_NEEDS_SHADOW)
            if self.backend is None:
                raise ValueError(PROMOTE_NEEDS_BACKEND)
            if self.promote.backend not in self.shadow.backends:
                raise ValueError(PROMOTE_NOT_SHADOWED)
        return self


class FallbackSpec(ApiModel):
    backend: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Backend that answers when the chosen one fails (typically the external LLM).",
    )
    when: list[FallbackTrigger] = Field(
        default_factory=lambda: list(ALL_FALLBACK_TRIGGERS),
        min_length=1,
        max_length=4,
        json_schema_extra=k8s(list_type="set"),
        description="What sends a call to the fallback: `Error`, `Timeout`, `Overload`, `InvalidJSON` "
        "(docs/gateway.md). Named `when`, not `on`: YAML 1.1 parsers, kubectl's included, read a bare `on` key as "
        "the boolean true.",
    )

    @field_validator("when")
    @classmethod
    def _set(cls, v: list[FallbackTrigger]) -> list[FallbackTrigger]:
        if len(set(v)) != len(v):
            raise ValueError("`fallback.when` must not list a trigger twice")
        return v


#: the longest ``timeouts.activation`` (a held call must not hold a connection for ever)
MAX_ACTIVATION_SECONDS = 15 * 60


class RouteTimeouts(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.firstByte) || !has(self.total) || duration(self.firstByte) <= duration(self.total)",
                "`timeouts.firstByte` must not exceed `timeouts.total`",
                field_path=".firstByte",
            ),
            cel(
                "!has(self.firstByte) || duration(self.firstByte) > duration('0s')",
                "`timeouts.firstByte` must be above 0, e.g. '30s'",
                field_path=".firstByte",
            ),
            cel(
                "!has(self.activation) || (duration(self.activation) > duration('0s') && "
                "duration(self.activation) <= duration('15m'))",
                "`timeouts.activation` must be above 0 and at most 15m, e.g. '2m'",
                field_path=".activation",
            ),
        )
    )

    first_byte: str = Field(
        default="30s",
        max_length=24,
        pattern=DURATION,
        description="Longest wait for the backend's first byte (e.g. `30s`, `1m`, `500ms`); the wait in the "
        "gateway's queue counts.",
    )
    total: str = Field(
        default="300s", max_length=24, pattern=DURATION, description="Longest time for the whole answer."
    )
    activation: str = Field(
        default="2m",
        max_length=24,
        pattern=DURATION,
        description="Longest wait for the first ready replica of an SLMDeployment backend that autoscales "
        "from zero (`autoscaling.minReplicas: 0`) and has none: the gateway holds the call meanwhile, then "
        "uses the route's fallback (on `Timeout`) or answers 503 with `Retry-After` (docs/autoscaling.md). "
        "`firstByte` and `total` count from the end of this wait. At most 15m.",
    )

    @model_validator(mode="after")
    def _order(self) -> RouteTimeouts:
        activation = duration_seconds(self.activation)
        if activation <= 0 or activation > MAX_ACTIVATION_SECONDS:
            raise ValueError("`timeouts.activation` must be above 0 and at most 15m, e.g. '2m'")
        if duration_seconds(self.first_byte) <= 0:
            raise ValueError("`timeouts.firstByte` must be above 0, e.g. '30s'")
        if duration_seconds(self.first_byte) > duration_seconds(self.total):
            raise ValueError("`timeouts.firstByte` must not exceed `timeouts.total`")
        return self


class CaptureSpec(ApiModel):
    """Recording of calls into the usage store (the gateway's `--store`; docs/capture.md)."""

    sample_rate: str = Field(
        default="1",
        max_length=8,
        pattern=SAMPLE_RATE_PATTERN,
        description="Share of calls recorded, a decimal between 0 and 1 (`1`: every call, `0.05`: one in 20).",
    )
    redact: list[PIIClass] = Field(
        default_factory=lambda: [PIIClass(c) for c in DEFAULT_REDACT],
        max_length=16,
        json_schema_extra=k8s(list_type="set"),
        description="PII classes replaced by placeholders before a record is stored.",
    )

    @field_validator("redact")
    @classmethod
    def _set(cls, v: list[PIIClass]) -> list[PIIClass]:
        if len(set(v)) != len(v):
            raise ValueError("`capture.redact` must not list a class twice")
        return v


class CallerLimits(ApiModel):
    """Limits per caller (per API key or ServiceAccount) and per gateway replica."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Calls per minute; a burst of a minute's worth is allowed.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Prompt + completion tokens per minute: the estimate is taken when a call starts, corrected "
        "by the backend's usage when it ends.",
    )
    max_request_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=1 << 30,
        description="Largest request body in bytes (413 above it); at most the gateway's `--max-request-bytes`.",
    )


class TaskClassifierConfigMapRef(ApiModel):
    """A key of a ConfigMap in the route's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="ConfigMap name, in the route's namespace (`slm-operator advise` writes "
        "`slm-task-classifier`).",
    )
    key: str = Field(
        default=TASK_CLASSIFIER_KEY,
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the ConfigMap holding the classifier's JSON.",
    )


class TaskClassifierRef(ApiModel):
    """The task classifier `slm-operator advise` publishes (docs/loop.md): it tags a call with its task from the
    request alone, so rules can match `tasks` for agents that send no `x-slm-task` header."""

    config_map_ref: TaskClassifierConfigMapRef = Field(
        description="The ConfigMap key holding the classifier's JSON."
    )


class RetrainTrigger(StrEnum):
    """What makes the scheduled advisor retrain a served task's SLM (docs/loop.md, S6)."""

    DRIFT = "Drift"
    FALLBACK_RISING = "FallbackRising"


RETRAIN_SINCE_REGEX = "^[0-9]+[mhdw]$"
RETRAIN_SINCE = (
    "`autoRetrain.since` must be a duration before the advisor runs: a number and m, h, d or w (7d)"
)


class AutoRetrain(ApiModel):
    """The scheduled advisor (`slm-operator advise --cluster --apply`, the chart's `advisor`) starts a FineTuneJob
    on the newest calls of a task an SLM serves through this route when the task drifted or its fallback rate
    rose (docs/loop.md): a copy of the task's last FineTuneJob with `dataset.usageStore.since` set to `since`.
    Never while another FineTuneJob of the task has not finished."""

    on: list[RetrainTrigger] = Field(
        default_factory=lambda: [RetrainTrigger.DRIFT, RetrainTrigger.FALLBACK_RISING],
        min_length=1,
        max_length=2,
        json_schema_extra=k8s(list_type="set"),
        description="Findings that start a retrain: `Drift` (the task's calls moved away from what it was "
        "trained on) and `FallbackRising` (more of its calls fall back to the LLM than before).",
    )
    since: str = Field(
        default="7d",
        min_length=2,
        max_length=16,
        json_schema_extra=k8s(cel(f"self.matches('{RETRAIN_SINCE_REGEX}')", RETRAIN_SINCE)),
        description="How far back the newest calls the retrain learns from go.",
    )
    min_calls: int = Field(
        default=200,
        ge=1,
        le=1_000_000,
        description="Fewest calls of the task in `since` for a retrain; with fewer the advisor says so and "
        "waits.",
    )

    @field_validator("since")
    @classmethod
    def _since(cls, v: str) -> str:
        if not re.fullmatch(RETRAIN_SINCE_REGEX, v):
            raise ValueError(RETRAIN_SINCE)
        return v


class SLMRouteSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=k8s(
            cel(
                "!has(self.rules) || self.rules.all(r, !has(r.backend) || "
                "self.backends.exists(b, b.name == r.backend))",
                "every `rules[].backend` must name one of `backends[].name`",
                field_path=".rules",
            ),
            cel(
                "!has(self.rules) || self.rules.all(r, !has(r.split) || "
                "r.split.all(s, self.backends.exists(b, b.name == s.backend)))",
                "every `rules[].split[].backend` must name one of `backends[].name`",
                field_path=".rules",
            ),
            cel(
                "!has(self.rules) || self.rules.all(r, !has(r.shadow) || "
                "r.shadow.backends.all(s, self.backends.exists(b, b.name == s)))",
                "every `rules[].shadow.backends[]` must name one of `backends[].name`",
                field_path=".rules",
            ),
            cel(
                "!has(self.fallback) || self.backends.exists(b, b.name == self.fallback.backend)",
                "`fallback.backend` must name one of `backends[].name`",
                field_path=".fallback.backend",
            ),
            cel(
                "!has(self.defaultBackend) || self.backends.exists(b, b.name == self.defaultBackend)",
                "`defaultBackend` must name one of `backends[].name`",
                field_path=".defaultBackend",
            ),
        )
    )

    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=MODEL_STRING,
        description="The model name agents send (`model` of the request), e.g. what they sent to the LLM before.",
    )
    backends: list[RouteBackend] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Where calls can go: SLMDeployments of this namespace and external endpoints.",
    )
    rules: list[RouteRule] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Ordered rules: the first whose `match` holds picks the backend.",
    )
    task_classifier: TaskClassifierRef | None = Field(
        default=None,
        description="Tags each call that has no `x-slm-task` header with the task of this classifier (a "
        "ConfigMap of the route's namespace, which the gateway watches), for `rules[].match.tasks`, the "
        "metrics and capture; the header wins when a call has one. A call far from every task of the "
        "classifier has no task. When the ConfigMap is missing or does not hold a classifier, calls without "
        "the header have no task and the `Accepted` condition says why (docs/gateway.md). Default: only the "
        "header gives a call its task.",
    )
    default_backend: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Backend of calls no rule matches (default: the first of `backends`).",
    )
    fallback: FallbackSpec | None = Field(
        default=None,
        description="Where a call goes when its backend fails (default: nowhere; the error is returned).",
    )
    timeouts: RouteTimeouts = Field(
        default_factory=RouteTimeouts, description="Time limits per backend attempt."
    )
    capture: CaptureSpec | None = Field(
        default=None, description="Record calls for fine-tuning (default: nothing is recorded)."
    )
    limits: CallerLimits | None = Field(default=None, description="Limits per caller (default: none).")
    auto_retrain: AutoRetrain | None = Field(
        default=None,
        description="Retrain the SLM of a served task on its newest calls when the scheduled advisor finds "
        "it drifted or falling back more (default: the advisor only says so, as Events and in its report).",
    )
    api_key_secret_refs: list[LocalObjectReference] | None = Field(
        default=None,
        max_length=8,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Secrets (same namespace) holding the API keys that may use the route: each data entry is "
        "one caller, its key the caller's name and its value `sha256:<hex of the SHA-256 of the API key>` "
        "(docs/gateway.md). ServiceAccounts are authorised by RBAC (verb `use` on `slmroutes`) instead.",
    )

    def backend_names(self) -> set[str]:
        return {b.name for b in self.backends}

    @model_validator(mode="after")
    def _references(self) -> SLMRouteSpec:
        _unique(self.backends, "`backends`")
        _unique(self.rules, "`rules`")
        _unique(self.api_key_secret_refs, "`apiKeySecretRefs`")
        names = self.backend_names()
        for rule in self.rules or []:
            if rule.backend is not None and rule.backend not in names:
                raise ValueError("every `rules[].backend` must name one of `backends[].name`")
            if any(s.backend not in names for s in rule.split or []):
                raise ValueError("every `rules[].split[].backend` must name one of `backends[].name`")
            if rule.shadow and any(b not in names for b in rule.shadow.backends):
                raise ValueError("every `rules[].shadow.backends[]` must name one of `backends[].name`")
        if self.fallback and self.fallback.backend not in names:
            raise ValueError("`fallback.backend` must name one of `backends[].name`")
        if self.default_backend is not None and self.default_backend not in names:
            raise ValueError("`defaultBackend` must name one of `backends[].name`")
        return self


class BackendKind(StrEnum):
    SLM_DEPLOYMENT = "SLMDeployment"
    EXTERNAL = "External"


class RouteBackendStatus(ApiModel):
    name: str = Field(max_length=63, description="Backend name.")
    kind: BackendKind = Field(description="`SLMDeployment` or `External`.")
    endpoints: int = Field(
        default=0, ge=0, description="Endpoints the gateway knows (replicas, or 1 for external)."
    )
    ready_endpoints: int = Field(default=0, ge=0, description="Endpoints ready to take calls.")
    message: str = Field(
        default="", max_length=1024, description="Why the backend is not ready, if it is not."
    )


class RulePhase(StrEnum):
    """Who answers a rule with `promote`: its `backend` with the promoted one in shadow, or the promoted one."""

    SHADOW = "Shadow"
    SERVING = "Serving"


class RouteRuleStatus(ApiModel):
    """The promotion of one rule with `promote` (docs/gateway.md). The figures are those of the gateway replica
    that writes the status, since its counts last started: a change of phase, a change of the model `promote.backend`
    serves (`measuredModel`), or the end of a FineTuneJob training it."""

    name: str = Field(max_length=63, description="Rule name.")
    phase: RulePhase = Field(
        description="`Shadow`: the rule's `backend` answers and `promote.backend` gets copies; `Serving`: "
        "`promote.backend` answers and falls back to the rule's `backend`. Every gateway replica routes by it."
    )
    backend: str = Field(
        default="", max_length=63, description="The backend that answers the rule's calls now."
    )
    samples: int = Field(
        default=0,
        ge=0,
        description="Shadow answers compared with the caller's since the counts last started.",
    )
    agreement_percent: int = Field(
        default=0, ge=0, le=100, description="Share of those that agreed, in percent (rounded down)."
    )
    served: int = Field(default=0, ge=0, description="While serving: calls sent to `promote.backend`.")
    fallback_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="While serving: share of those calls that fell back, in percent (rounded up).",
    )
    last_transition_time: str | None = Field(
        default=None, max_length=64, description="When the phase last changed."
    )
    demotions: int = Field(
        default=0,
        ge=0,
        description="Demotions in a row: each doubles the wait before the next promotion (`promote.backoff`); "
        "back to 0 once the rule has served for 24h.",
    )
    retry_after: str | None = Field(
        default=None,
        max_length=64,
        description="After a demotion: the time (RFC 3339) before which the rule is not promoted again, whatever "
        "the agreement.",
    )
    measured_model: str = Field(
        default="",
        max_length=1400,
        description="What `promote.backend` serves, that the figures were measured on: the SLMDeployment's model "
        "and the adapter a FineTuneJob promoted onto it (`model + adapter`), or an external backend's model. "
        "When it changes, the figures start again from zero.",
    )
    message: str = Field(default="", max_length=1024, description="Why the rule is in its phase.")


class SLMRouteStatus(ApiModel):
    observed_generation: int | None = Field(default=None, ge=0)
    backends: list[RouteBackendStatus] | None = Field(
        default=None, max_length=16, json_schema_extra=k8s(list_type="map", list_map_keys=["name"])
    )
    rules: list[RouteRuleStatus] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="The promotion phase of each rule with `promote`.",
    )
    ready_backends: str = Field(
        default="", max_length=16, description="Ready backends / backends, e.g. '2/3' (a printer column)."
    )
    conditions: list[Condition] | None = Field(default=None, **CONDITIONS_FIELD)


# ---------------------------------------------------------------------------------------------- kinds


class Resource(ApiModel):
    """A top-level custom resource: apiVersion, kind, metadata, spec, status."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SCOPE: ClassVar[str] = "Namespaced"

    api_version: Literal["slm.io/v1alpha1"] = "slm.io/v1alpha1"
    metadata: ObjectMeta


class GPUPool(Resource):
    """A set of GPU nodes, how their GPUs may be shared, and what is reserved."""

    KIND = "GPUPool"
    PLURAL = "gpupools"
    SCOPE = "Cluster"
    kind: Literal["GPUPool"] = "GPUPool"
    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None


class SLMDeployment(Resource):
    """A small language model served by N replicas on shares of a pool's GPUs."""

    KIND = "SLMDeployment"
    PLURAL = "slmdeployments"
    kind: Literal["SLMDeployment"] = "SLMDeployment"
    spec: SLMDeploymentSpec
    status: SLMDeploymentStatus | None = None

    def effective_replicas(self) -> int:
        """The replicas the operator plans for (the one place planning reads): 0 when suspended;
        ``spec.replicas`` without autoscaling; with it the autoscaler's decision
        (``status.autoscaling.desiredReplicas``), or ``spec.replicas`` before the first decision, within
        ``minReplicas`` and ``maxReplicas``."""
        if self.spec.suspend:
            return 0
        auto = self.spec.autoscaling
        if auto is None:
            return self.spec.replicas
        decided = self.status.autoscaling if self.status is not None else None
        want = decided.desired_replicas if decided is not None else self.spec.replicas
        return min(max(want, auto.min_replicas), auto.max_replicas)


#: ``Promoted`` reasons (``finetune/promotion.py``) after which a FineTuneJob changes nothing any more
FINAL_PROMOTED_REASONS = frozenset(
    {"Promoted", "RolledBack", "GateNotMet", "Superseded", "Replaced", "TrainingFailed", "NotRequested"}
)
#: ``Promoted`` reasons of a FineTuneJob on its way: it trains, or rolls its result onto the SLMDeployment
PENDING_PROMOTED_REASONS = frozenset({"Waiting", "Rolling", "TargetNotFound"})


class FineTuneJob(Resource):
    """Adapt an SLM on sanitised usage data, gate it against what serves now, then roll an SLMDeployment onto it."""

    KIND = "FineTuneJob"
    PLURAL = "finetunejobs"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    def finished(self) -> bool:
        """It will do nothing more: failed (``Failed=True``), promoted, stopped for good (``Promoted=False``
        with a reason in ``FINAL_PROMOTED_REASONS``: rolled back, gate not met, superseded, replaced, training
        failed), or trained with nothing to promote. A job the operator has not reported on yet, or with a reason
        this version does not know, has not finished (the safe side). The Argo CD health check reads the same."""
        conditions = {c.type: c for c in (self.status.conditions if self.status else None) or []}
        failed = conditions.get("Failed")
        if failed is not None and failed.status == "True":
            return True
        if self.spec.promote is None:
            trained = conditions.get("Trained")
            return trained is not None and trained.status == "True"
        promoted = conditions.get("Promoted")
        if promoted is None:
            return False
        return promoted.status == "True" or (promoted.reason or "") in FINAL_PROMOTED_REASONS


class SLMRoute(Resource):
    """What agents call and who answers: a model name routed to SLMDeployments and external endpoints."""

    KIND = "SLMRoute"
    PLURAL = "slmroutes"
    kind: Literal["SLMRoute"] = "SLMRoute"
    spec: SLMRouteSpec
    status: SLMRouteStatus | None = None


KINDS: dict[str, type[Resource]] = {k.KIND: k for k in (GPUPool, SLMDeployment, FineTuneJob, SLMRoute)}
