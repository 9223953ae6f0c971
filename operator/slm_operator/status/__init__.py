"""Pure status computation: conditions with ``observedGeneration`` and the status blocks of the resources.

``set_condition`` keeps ``lastTransitionTime`` unless the status value changes (as ``meta.SetStatusCondition``
does), so a resync that observes nothing new writes an identical status and the shell can skip the patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from slm_operator.api.base import Condition, ConditionStatus, max_len
from slm_operator.api.quantity import format_bytes
from slm_operator.api.v1alpha1 import (
    GPUPool,
    GPUPoolStatus,
    MemoryEstimateStatus,
    PoolNodeStatus,
    ReplicaPlacementStatus,
    ReservationStatus,
    ResolvedShare,
    SLMDeployment,
    SLMDeploymentStatus,
    TenantStatus,
)
from slm_operator.contract import DEPLOYMENT_LABEL, REPLICA_LABEL
from slm_operator.inventory import Sizing
from slm_operator.planner.model import DeploymentPlan, Plan, PoolPlan, TenantUsage
from slm_operator.timebound import seconds_between
from slm_operator.views import PodView

#: Condition messages are cut here (well under the API's limit): a message is for a person to read.
MAX_MESSAGE = 1024
#: Nodes named in the pool's "Reconfiguring" message; the rest are left out.
MAX_WAITING_NODES_LISTED = 5
_SHARE_SUMMARY_MAX = max_len(SLMDeploymentStatus, "share_summary")
_REASON_MAX = max_len(ReplicaPlacementStatus, "reason")

# Condition types.
READY = "Ready"
PLACED = "Placed"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
#: GPUPool: another pool's node selector matches some of its nodes (reconcile/statuses.py)
OVERLAP = "NodeSelectorOverlap"
#: GPUPool: the pool is within its consolidation threshold of a fresh plan (docs/consolidation.md)
CONSOLIDATED = "Consolidated"

#: Placed/Degraded reason: a Kubernetes ResourceQuota of the namespace holds replicas back
#: (docs/resource-quotas.md).
RESOURCE_QUOTA_EXCEEDED = "ResourceQuotaExceeded"

#: pools with tenants: the guaranteed quotas add up to more GPU-equivalents than the pool's unreserved GPUs
QUOTA_OVERCOMMITTED = "QuotaOvercommitted"
_TENANT_SUMMARY_MAX = max_len(GPUPoolStatus, "tenant_summary")


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return ``conditions`` with one condition set; ``lastTransitionTime`` moves only on a status change."""
    value = (
        ConditionStatus.UNKNOWN
        if status is None
        else (ConditionStatus.TRUE if status else ConditionStatus.FALSE)
    )
    out = [c for c in conditions or [] if c.type != type_]
    old = next((c for c in conditions or [] if c.type == type_), None)
    since = old.last_transition_time if old and old.status == value else now
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    out.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            observed_generation=generation,
            last_transition_time=since,
        )
    )
    order = {READY: 0, PLACED: 1, PROGRESSING: 2, DEGRADED: 3}
    return sorted(out, key=lambda c: (order.get(c.type, 9), c.type))


def condition(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


def _unschedulable(pod: PodView) -> str:
    """The scheduler's message when it could not place the pod (``PodScheduled=False``, reason
    ``Unschedulable``: a taint, host CPU or memory, a cordoned node), else ""."""
    if pod.bound_node:
        return ""
    c = pod.condition("PodScheduled")
    if c is not None and c.get("status") == "False" and c.get("reason") == "Unschedulable":
        return str(c.get("message") or "the scheduler found no node for the pod")
    return ""


class ConditionResult(NamedTuple):
    """What one condition should say: its status (None for Unknown), reason and message."""

    status: bool | None
    reason: str
    message: str


def apply_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    result: ConditionResult,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """:func:`set_condition` with a :class:`ConditionResult`."""
    return set_condition(conditions, type_, result.status, result.reason, result.message, generation, now)


# ------------------------------------------------------------------------------------------ SLMDeployment


@dataclass(frozen=True)
class Rollout:
    """What the SLMDeployment's conditions are computed from: the wish, the plan and the pods observed."""

    suspend: bool
    desired: int  # replicas wanted (0 when suspended)
    live: int  # pods not being deleted
    ready: int  # of them, Ready
    placed: int  # replicas the plan gave a share
    plan: DeploymentPlan | None  # None: the pool does not exist
    pool_name: str
    waiting: Mapping[int, str]  # replica ordinal -> why its pod is held back
    unschedulable: Mapping[int, str]  # replica ordinal -> the scheduler's message
    previous_placed: Condition | None  # the Placed condition before this pass
    #: Ready replicas that keep the deployment Ready while an autoscaler's scale-up starts its replicas
    #: (``scale_up_floor``); None without one, when every desired replica must be Ready.
    scale_up_floor: int | None = None
    #: replica ordinal -> why it does not serve: its pod is on a node that is NotReady, lost or deleted
    down: Mapping[int, str] = field(default_factory=dict)
    quota: str = ""  # why a ResourceQuota holds replicas back ("": it does not)


#: How long after the autoscaler raised the replicas the deployment stays Ready with only its floor ready: the
#: new replicas' start, a node's MIG reconfiguration included ("about 2-8 min", reconcile/scaling.py).
SCALE_UP_GRACE_SECONDS = 600


def scale_up_floor(dep: SLMDeployment, now: str) -> int | None:
    """With ``spec.autoscaling``, within ``SCALE_UP_GRACE_SECONDS`` of the autoscaler's last change of the
    replicas: the Ready replicas the deployment needs to stay Ready (``minReplicas``, at most the replicas
    desired). A scale-up adds capacity to a deployment that serves; it is not a rollout, and Argo CD (which
    reads Ready, docs/gitops.md) keeps it Healthy. None otherwise, and once the grace is over: then every
    desired replica must be Ready, so a replica that never starts shows."""
    auto = dep.spec.autoscaling
    decided = dep.status.autoscaling if dep.status is not None else None
    if auto is None or decided is None or not decided.last_scale_time:
        return None
    since = seconds_between(decided.last_scale_time, now)
    if not -60 <= since < SCALE_UP_GRACE_SECONDS:  # a pass's `now` may be taken just before the decision
        return None
    return min(auto.min_replicas, dep.effective_replicas())


def placed_condition(r: Rollout) -> ConditionResult:
    """Placed: does every wanted replica have a share in the plan?"""
    if r.desired == 0:
        if r.suspend:
            return ConditionResult(
                True, "Suspended", "spec.suspend is true: no replica runs and no share is held"
            )
        return ConditionResult(True, "ScaledToZero", "replicas is 0")
    if r.plan is None:
        return ConditionResult(False, "PoolNotFound", f"GPUPool {r.pool_name!r} does not exist")
    if r.quota:
        return ConditionResult(False, RESOURCE_QUOTA_EXCEEDED, r.quota)
    if r.plan.unplaced:
        first = r.plan.unplaced[0]
        reason, detail = first.reason, first.message
        before = r.previous_placed
        if (
            reason == "InsufficientCapacity"
            and before is not None
            and before.reason == "PreemptedByHigherTier"
        ):
            # Once yielded, the replicas are simply "not placed" for the planner; keep telling the user why.
            reason = "PreemptedByHigherTier"
            detail = f"yielded to a higher tier earlier and still no room: {detail}"
        elif reason == "InsufficientCapacity" and before is not None and before.reason == "ReclaimedByTenant":
            # its tenant's borrowed capacity went to another tenant's guarantee: keep naming that tenant
            reason = "ReclaimedByTenant"
            prev = (before.message or "").split(" unplaced: ", 1)[-1]
            detail = prev if prev.endswith("(still no room)") else f"{prev} (still no room)"
        msg = f"{r.placed}/{r.desired} replicas placed; {len(r.plan.unplaced)} unplaced: {detail}"
        return ConditionResult(False, reason, msg)
    return ConditionResult(
        True, "AllReplicasPlaced", f"{r.placed}/{r.desired} replicas placed ({r.plan.share_summary})"
    )


def progressing_condition(r: Rollout) -> ConditionResult:
    """Progressing: are pods still being created, started, moved or held back for a node?"""
    moving = r.plan is not None and bool(r.plan.moved)
    target = min(r.desired, r.placed)
    pending = r.live != target or r.ready < r.live or bool(r.waiting) or moving
    if not pending or r.desired <= 0:
        return ConditionResult(False, "Complete", f"{r.ready} replicas ready")
    if r.waiting:
        return ConditionResult(True, "WaitingForNodeReconfiguration", next(iter(r.waiting.values()), ""))
    if r.unschedulable:
        # The plan gave the replica a share, but the scheduler cannot put its pod on the planned node (a
        # taint, host CPU or memory): say so in the scheduler's words, it is for the user to act on.
        ordinal, sched_msg = min(r.unschedulable.items())
        more = f" and {len(r.unschedulable) - 1} more" if len(r.unschedulable) > 1 else ""
        msg = (
            f"{r.ready}/{target} replicas ready; the pod of replica {ordinal}{more}"
            f" cannot be scheduled on its planned node: {sched_msg}"
        )
        return ConditionResult(True, "PodUnschedulable", msg)
    return ConditionResult(
        True, "MovingReplicas" if moving else "RollingOut", f"{r.ready}/{target} replicas ready"
    )


def ready_condition(r: Rollout) -> ConditionResult:
    """Ready: do enough replicas serve?"""
    if r.suspend:
        return ConditionResult(False, "Suspended", "the deployment is suspended")
    if r.desired == 0:
        return ConditionResult(True, "ScaledToZero", "no replica is wanted")
    if r.ready >= r.desired:
        return ConditionResult(True, "ReplicasReady", f"{r.ready}/{r.desired} replicas ready")
    unplaced = r.plan is not None and bool(r.plan.unplaced)
    if r.scale_up_floor is not None and r.ready >= r.scale_up_floor and not unplaced:  # Degraded shows
        return ConditionResult(
            True,
            "ScalingUp",
            f"{r.ready}/{r.desired} replicas ready: the autoscaler added replicas, which are starting "
            f"(the deployment stays Ready while at least minReplicas={r.scale_up_floor} are ready, for up to "
            f"{SCALE_UP_GRACE_SECONDS // 60} min after the scale-up)",
        )
    if r.ready > 0:
        return ConditionResult(False, "PartiallyReady", f"{r.ready}/{r.desired} replicas ready")
    return ConditionResult(False, "NoReplicaReady", f"0/{r.desired} replicas ready")


def degraded_condition(r: Rollout, placed: ConditionResult) -> ConditionResult:
    """Degraded: something the user must act on (capacity), not a rollout in progress; says what Placed says."""
    if r.desired > 0 and r.plan is not None and (r.plan.unplaced or r.quota):
        return ConditionResult(True, placed.reason, placed.message)
    if r.desired > 0 and r.down:
        listed = "; ".join(f"replica {o}: {why}" for o, why in sorted(r.down.items())[:3])
        more = f" and {len(r.down) - 3} more" if len(r.down) > 3 else ""
        return ConditionResult(True, "NodeNotReady", f"{listed}{more}")
    return ConditionResult(False, "AsPlanned", "every wanted replica has a share")


def _estimate(sizing: Sizing) -> MemoryEstimateStatus:
    est = sizing.estimate
    return MemoryEstimateStatus(
        weights=format_bytes(est.weights_bytes) if est else "0",
        kv_cache=format_bytes(est.kv_cache_bytes) if est else "0",
        overhead=format_bytes(est.overhead_bytes) if est else "0",
        total=format_bytes(sizing.memory_bytes),
        source=sizing.source,
    )


def _pod_placement(pod: PodView, ordinal: int, why: str) -> ReplicaPlacementStatus:
    rec = pod.placement
    return ReplicaPlacementStatus(
        replica=ordinal,
        node=rec.node if rec else "",
        gpu=rec.gpu if rec else -1,
        mechanism=rec.mechanism if rec else "",
        mig_profile=rec.mig_profile if rec else None,
        pod=pod.name,
        state="Running" if pod.ready else (pod.phase or "Pending"),
        reason=f"unschedulable: {why}"[:_REASON_MAX] if why else "",
    )


def _placements(
    plan: DeploymentPlan | None, live: Sequence[PodView], waiting: Mapping[int, str]
) -> tuple[list[ReplicaPlacementStatus], dict[int, str]]:
    """Per replica: unplaced (from the plan), where its pod is (what is really there), or why it waits; and
    the scheduler's message for each replica whose pod it cannot place."""
    placements = [
        ReplicaPlacementStatus(replica=u.ordinal, state="Unplaced", reason=u.reason)
        for u in (plan.unplaced if plan is not None else ())
    ]
    unschedulable: dict[int, str] = {}
    for pod in live:
        ordinal = int(pod.labels.get(REPLICA_LABEL, "-1"))
        if ordinal < 0 or any(x.replica == ordinal for x in placements):
            continue
        why = _unschedulable(pod)
        if why:
            unschedulable.setdefault(ordinal, why)
        placements.append(_pod_placement(pod, ordinal, why))
    for ordinal, why in waiting.items():
        if not any(x.replica == ordinal for x in placements):
            placements.append(
                ReplicaPlacementStatus(replica=ordinal, state="Waiting", reason=why[:_REASON_MAX])
            )
    return sorted(placements, key=lambda x: x.replica), unschedulable


def _down(pods: Sequence[PodView], down_nodes: Mapping[str, str]) -> dict[int, str]:
    """Replicas with a pod on a down node (NotReady, lost or deleted) and no ready pod elsewhere, with why."""
    serving = {
        p.labels.get(REPLICA_LABEL)
        for p in pods
        if p.ready and not p.deleting and p.bound_node not in down_nodes
    }
    out: dict[int, str] = {}
    for p in pods:
        ordinal = p.labels.get(REPLICA_LABEL, "")
        if p.bound_node in down_nodes and ordinal not in serving and ordinal.isdigit():
            out.setdefault(int(ordinal), down_nodes[p.bound_node])
    return out


def _with_conditions(
    conds: Sequence[Condition], results: Mapping[str, ConditionResult], gen: int | None, now: str
) -> list[Condition]:
    out = list(conds)
    for type_, result in results.items():
        out = apply_condition(out, type_, result, gen, now)
    return out


def deployment_status(
    dep: SLMDeployment,
    *,
    sizing: Sizing | None,
    sizing_error: tuple[str, str] | None,
    plan: DeploymentPlan | None,
    pods: Sequence[Mapping[str, Any]],
    waiting: Mapping[int, str],
    endpoint: str,
    now: str,
    down_nodes: Mapping[str, str] | None = None,
    quota: str = "",
) -> SLMDeploymentStatus:
    """Status of one SLMDeployment from its sizing, its part of the plan and its pods.

    ``waiting`` maps replica ordinals whose pod is held back to why (e.g. the node's MIG reconfiguration);
    ``quota`` is why a ResourceQuota holds replicas back ("" when none does).
    """
    old = dep.status or SLMDeploymentStatus()
    gen = dep.metadata.generation
    name = dep.metadata.name
    live = [v for v in map(PodView, pods) if v.labels.get(DEPLOYMENT_LABEL) == name and not v.deleting]
    ready = sum(1 for p in live if p.ready)
    st = SLMDeploymentStatus(
        observed_generation=gen,
        desired_replicas=dep.effective_replicas(),
        replicas=len(live),
        ready_replicas=ready,
        selector=f"{DEPLOYMENT_LABEL}={name}",
        endpoint=endpoint,
    )
    if sizing is not None:
        st.estimate = _estimate(sizing)
    if sizing_error is not None:
        reason, message = sizing_error
        failed = ConditionResult(False, reason, message)
        results = {PLACED: failed, READY: failed, PROGRESSING: failed, DEGRADED: failed._replace(status=True)}
        st.conditions = _with_conditions(old.conditions or [], results, gen, now)
        st.explanation = message
        return st
    if plan is not None:
        st.explanation = plan.explanation
        st.share_summary = plan.share_summary[:_SHARE_SUMMARY_MAX]
    st.placed_replicas = plan.placed if plan is not None else 0
    placements, unschedulable = _placements(plan, live, waiting)
    st.placements = placements or None
    shares = [x for x in placements if x.mechanism]
    if plan is not None and plan.placed and shares:
        st.share = ResolvedShare(mechanism=shares[0].mechanism or None, mig_profile=shares[0].mig_profile)
    r = Rollout(
        suspend=dep.spec.suspend,
        desired=dep.effective_replicas(),
        live=len(live),
        ready=ready,
        placed=st.placed_replicas,
        plan=plan,
        pool_name=dep.spec.pool_ref.name,
        waiting=waiting,
        unschedulable=unschedulable,
        previous_placed=condition(old.conditions, PLACED),
        scale_up_floor=scale_up_floor(dep, now),
        down=_down(
            [v for v in map(PodView, pods) if v.labels.get(DEPLOYMENT_LABEL) == name], down_nodes or {}
        ),
        quota=quota,
    )
    placed = placed_condition(r)
    results = {
        PLACED: placed,
        PROGRESSING: progressing_condition(r),
        READY: ready_condition(r),
        DEGRADED: degraded_condition(r, placed),
    }
    st.conditions = _with_conditions(old.conditions or [], results, gen, now)
    return st


def quota_refused(
    old: SLMDeploymentStatus | None,
    new: SLMDeploymentStatus,
    message: str,
    generation: int | None,
    now: str,
) -> SLMDeploymentStatus:
    """``new`` with Placed=False and Degraded=True, reason ResourceQuotaExceeded: the API server refused a replica
    pod for a ResourceQuota (one the core does not plan within, e.g. ``requests.memory``, or usage it read before
    another writer took it). The transition time is the one ``old`` had for the same state, so a pass that is
    refused again writes nothing new."""
    conds = [c for c in new.conditions or [] if c.type not in (PLACED, DEGRADED)]
    conds += [c for c in (old.conditions if old and old.conditions else []) if c.type in (PLACED, DEGRADED)]
    conds = set_condition(conds, PLACED, False, RESOURCE_QUOTA_EXCEEDED, message, generation, now)
    conds = set_condition(conds, DEGRADED, True, RESOURCE_QUOTA_EXCEEDED, message, generation, now)
    return new.model_copy(update={"conditions": conds})


# ------------------------------------------------------------------------------------------ GPUPool


def pool_ready_condition(
    pp: PoolPlan, nodes: Sequence[PoolNodeStatus], waiting_nodes: Sequence[str]
) -> ConditionResult:
    """Ready: the pool has nodes and none of them waits for the GPU Operator."""
    if not nodes:
        return ConditionResult(False, "NoNodes", "the node selector matches no node")
    if waiting_nodes:
        listed = ", ".join(waiting_nodes[:MAX_WAITING_NODES_LISTED])
        return ConditionResult(
            False,
            "Reconfiguring",
            f"waiting for the NVIDIA GPU Operator to apply the new configuration on {listed}",
        )
    return ConditionResult(
        True, "Planned", f"{pp.gpus_used}/{pp.gpus_total} GPUs used, {pp.replicas_placed} replicas placed"
    )


def _eq(x: float) -> str:
    """GPU-equivalents as a short decimal string ("2", "0.571")."""
    return f"{round(x, 3):g}"


def tenant_status(t: TenantUsage) -> TenantStatus:
    return TenantStatus(
        name=t.name,
        guaranteed=_eq(t.guaranteed),
        ceiling=_eq(t.ceiling) if t.ceiling is not None else None,
        used_guaranteed=_eq(t.used_guaranteed),
        used_borrowed=_eq(t.used_borrowed),
        memory_guaranteed=format_bytes(t.memory_guaranteed_bytes),
        memory_borrowed=format_bytes(t.memory_borrowed_bytes),
        replicas_guaranteed=t.replicas_guaranteed,
        replicas_borrowed=t.replicas_borrowed,
        replicas_unplaced=t.replicas_unplaced,
    )


def tenant_summary(tenants: Sequence[TenantUsage]) -> str:
    """``name used/guaranteed`` per tenant in GPU-equivalents (the ``Tenants`` printer column)."""
    text = " ".join(
        f"{t.name} {_eq(t.used_guaranteed + t.used_borrowed)}/{_eq(t.guaranteed)}" for t in tenants
    )
    return text if len(text) <= _TENANT_SUMMARY_MAX else text[: _TENANT_SUMMARY_MAX - 3] + "..."


def quota_overcommitted_condition(plan: Plan) -> ConditionResult:
    """True (a warning, not an error) when the tenants' guaranteed quotas add up to more GPU-equivalents than
    the pool's GPUs outside reservations and segments: then not every guarantee can hold at once, and tier
    order decides between tenants within their quotas."""
    pp = plan.pool
    capacity = pp.gpus_total - pp.gpus_reserved - pp.gpus_segment
    quota = sum(t.guaranteed for t in plan.tenants)
    if quota > capacity + 1e-9:
        return ConditionResult(
            True,
            "QuotaExceedsCapacity",
            f"guaranteed quotas add up to {_eq(quota)} GPU-equivalents, more than the pool's {capacity} "
            "unreserved GPUs: not every tenant can have its guarantee at once (tier order decides); lower a "
            "`tenants[].guaranteed` or add GPUs if that is not intended",
        )
    return ConditionResult(
        False, "WithinCapacity", f"guaranteed quotas add up to {_eq(quota)} of {capacity} unreserved GPUs"
    )


def pool_degraded_condition(pp: PoolPlan) -> ConditionResult:
    """Degraded: some replica of the pool has no share."""
    if pp.replicas_unplaced:
        return ConditionResult(
            True, "ReplicasUnplaced", f"{pp.replicas_unplaced} replicas could not be placed"
        )
    return ConditionResult(False, "AsPlanned", "every wanted replica has a share")


def _reservations(
    pool: GPUPool,
    plan: Plan,
    reservations_in_use: Mapping[str, int],
    lent_to_training: Mapping[str, int],
) -> list[ReservationStatus] | None:
    """Per reservation: the GPUs it holds, how many are in use by their owners, how many are lent out (to
    BestEffort replicas, and to borrowing trainers)."""
    lent: dict[str, int] = {}
    held: dict[str, int] = {}
    for g in plan.gpus:
        if g.reservation:
            held[g.reservation] = held.get(g.reservation, 0) + 1
            if any(r.borrowed for r in g.replicas):
                lent[g.reservation] = lent.get(g.reservation, 0) + 1
    out = []
    for r in pool.spec.reservations or []:
        in_use = min(r.gpus, reservations_in_use.get(r.name, 0))
        out.append(
            ReservationStatus(
                name=r.name,
                gpus=held.get(r.name, 0),
                in_use=in_use,
                lent=lent.get(r.name, 0),
                lent_to_fine_tuning=min(r.gpus - in_use, lent_to_training.get(r.name, 0)),
            )
        )
    return out or None


def _capacity(st: GPUPoolStatus, pp: PoolPlan) -> None:
    """Copy the plan's pool-wide counts into the status."""
    st.gpus_total = pp.gpus_total
    st.gpus_used = pp.gpus_used
    st.gpus_reserved = pp.gpus_reserved
    st.gpus_segment = pp.gpus_segment
    st.gpus_by_mode = dict(sorted(pp.gpus_by_mode.items())) or None
    st.memory_total = format_bytes(pp.memory_total_bytes)
    st.memory_allocated = format_bytes(pp.memory_allocated_bytes)
    st.memory_stranded = format_bytes(pp.memory_stranded_bytes)
    st.replicas_placed = pp.replicas_placed
    st.replicas_unplaced = pp.replicas_unplaced


def pool_status(
    pool: GPUPool,
    *,
    plan: Plan | None,
    error: tuple[str, str] | None,
    nodes: Sequence[PoolNodeStatus],
    reservations_in_use: Mapping[str, int],
    waiting_nodes: Sequence[str],
    now: str,
    reservations_lent_to_training: Mapping[str, int] | None = None,
) -> GPUPoolStatus:
    old = pool.status or GPUPoolStatus()
    gen = pool.metadata.generation
    st = GPUPoolStatus(observed_generation=gen, nodes=len(nodes), node_status=list(nodes) or None)
    if error is not None:
        reason, message = error
        results = {
            READY: ConditionResult(False, reason, message),
            DEGRADED: ConditionResult(True, reason, message),
        }
        st.conditions = _with_conditions(old.conditions or [], results, gen, now)
        return st
    assert plan is not None
    _capacity(st, plan.pool)
    st.reservations = _reservations(pool, plan, reservations_in_use, reservations_lent_to_training or {})
    results = {
        READY: pool_ready_condition(plan.pool, nodes, waiting_nodes),
        DEGRADED: pool_degraded_condition(plan.pool),
    }
    if plan.tenants:
        st.tenants = [tenant_status(t) for t in plan.tenants]
        st.tenant_summary = tenant_summary(plan.tenants)
        results[QUOTA_OVERCOMMITTED] = quota_overcommitted_condition(plan)
    st.conditions = _with_conditions(old.conditions or [], results, gen, now)
    return st
