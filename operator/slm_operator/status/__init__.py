"""Pure status computation: conditions with ``observedGeneration`` and the status blocks of the resources.

``set_condition`` keeps ``lastTransitionTime`` unless the status value changes (as ``meta.SetStatusCondition``
does), so a resync that observes nothing new writes an identical status and the shell can skip the patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from slm_operator.api.base import Condition, ConditionStatus
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
)
from slm_operator.contract import DEPLOYMENT_LABEL, REPLICA_LABEL
from slm_operator.inventory import Sizing
from slm_operator.planner.model import DeploymentPlan, Plan
from slm_operator.views import PodView

MAX_MESSAGE = 1024

# Condition types.
READY = "Ready"
PLACED = "Placed"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"


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


def _unschedulable(pod: Mapping[str, Any]) -> str:
    """The scheduler's message when it could not place the pod (``PodScheduled=False``, reason
    ``Unschedulable``: a taint, host CPU or memory, a cordoned node), else ""."""
    if (pod.get("spec") or {}).get("nodeName"):
        return ""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return str(c.get("message") or "the scheduler found no node for the pod")
    return ""


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
) -> SLMDeploymentStatus:
    """Status of one SLMDeployment from its sizing, its part of the plan and its pods.

    ``waiting`` maps replica ordinals whose pod is held back to why (e.g. the node's MIG reconfiguration).
    """
    old = dep.status or SLMDeploymentStatus()
    gen = dep.metadata.generation
    conds: list[Condition] = list(old.conditions or [])
    desired = 0 if dep.spec.suspend else dep.spec.replicas
    mine = [
        p
        for p in pods
        if (p.get("metadata") or {}).get("labels", {}).get(DEPLOYMENT_LABEL) == dep.metadata.name
    ]
    live = [p for p in mine if not (p.get("metadata") or {}).get("deletionTimestamp")]
    ready = sum(1 for p in live if PodView(p).ready)
    st = SLMDeploymentStatus(
        observed_generation=gen,
        replicas=len(live),
        ready_replicas=ready,
        selector=f"{DEPLOYMENT_LABEL}={dep.metadata.name}",
        endpoint=endpoint,
    )
    if sizing is not None:
        est = sizing.estimate
        st.estimate = MemoryEstimateStatus(
            weights=format_bytes(est.weights_bytes) if est else "0",
            kv_cache=format_bytes(est.kv_cache_bytes) if est else "0",
            overhead=format_bytes(est.overhead_bytes) if est else "0",
            total=format_bytes(sizing.memory_bytes),
            source=sizing.source,
        )
    if sizing_error is not None:
        reason, message = sizing_error
        conds = set_condition(conds, PLACED, False, reason, message, gen, now)
        conds = set_condition(conds, READY, False, reason, message, gen, now)
        conds = set_condition(conds, PROGRESSING, False, reason, message, gen, now)
        conds = set_condition(conds, DEGRADED, True, reason, message, gen, now)
        st.conditions = conds
        st.explanation = message
        return st

    placements: list[ReplicaPlacementStatus] = []
    placed = 0
    if plan is not None:
        placed = plan.placed
        st.explanation = plan.explanation
        st.share_summary = plan.share_summary[:64]
        for u in plan.unplaced:
            placements.append(ReplicaPlacementStatus(replica=u.ordinal, state="Unplaced", reason=u.reason))
    st.placed_replicas = placed
    # Per-replica placement from the pods (what is really there), or the wait reason.
    unschedulable: dict[int, str] = {}
    for pod in map(PodView, live):
        ordinal = int(pod.labels.get(REPLICA_LABEL, "-1"))
        if ordinal < 0 or any(x.replica == ordinal for x in placements):
            continue
        rec = pod.placement
        why = _unschedulable(pod.obj)
        if why:
            unschedulable.setdefault(ordinal, why)
        placements.append(
            ReplicaPlacementStatus(
                replica=ordinal,
                node=rec.node if rec else "",
                gpu=rec.gpu if rec else -1,
                mechanism=rec.mechanism if rec else "",
                mig_profile=rec.mig_profile if rec else None,
                pod=pod.name,
                state="Running" if pod.ready else (pod.phase or "Pending"),
                reason=f"unschedulable: {why}"[:128] if why else "",
            )
        )
    for ordinal, why in waiting.items():
        if not any(x.replica == ordinal for x in placements):
            placements.append(ReplicaPlacementStatus(replica=ordinal, state="Waiting", reason=why[:128]))
    st.placements = sorted(placements, key=lambda x: x.replica) or None
    if plan is not None and plan.placed:
        shares = [x for x in placements if x.mechanism]
        if shares:
            st.share = ResolvedShare(mechanism=shares[0].mechanism or None, mig_profile=shares[0].mig_profile)

    # Placed
    if desired == 0:
        reason = "Suspended" if dep.spec.suspend else "ScaledToZero"
        msg = (
            "spec.suspend is true: no replica runs and no share is held"
            if dep.spec.suspend
            else "replicas is 0"
        )
        conds = set_condition(conds, PLACED, True, reason, msg, gen, now)
    elif plan is None:
        conds = set_condition(
            conds,
            PLACED,
            False,
            "PoolNotFound",
            f"GPUPool {dep.spec.pool_ref.name!r} does not exist",
            gen,
            now,
        )
    elif plan.unplaced:
        first = plan.unplaced[0]
        reason, detail = first.reason, first.message
        before = condition(old.conditions, PLACED)
        if (
            reason == "InsufficientCapacity"
            and before is not None
            and before.reason == "PreemptedByHigherTier"
        ):
            # Once yielded, the replicas are simply "not placed" for the planner; keep telling the user why.
            reason = "PreemptedByHigherTier"
            detail = f"yielded to a higher tier earlier and still no room: {detail}"
        msg = f"{placed}/{desired} replicas placed; {len(plan.unplaced)} unplaced: {detail}"
        conds = set_condition(conds, PLACED, False, reason, msg, gen, now)
    else:
        conds = set_condition(
            conds,
            PLACED,
            True,
            "AllReplicasPlaced",
            f"{placed}/{desired} replicas placed ({plan.share_summary})",
            gen,
            now,
        )
    # Progressing
    moving = plan is not None and bool(plan.moved)
    pending = len(live) != min(desired, placed) or ready < len(live) or bool(waiting) or moving
    if pending and desired > 0:
        why = "WaitingForNodeReconfiguration" if waiting else ("MovingReplicas" if moving else "RollingOut")
        msg = (
            next(iter(waiting.values()), "") if waiting else f"{ready}/{min(desired, placed)} replicas ready"
        )
        if unschedulable and not waiting:
            # The plan gave the replica a share, but the scheduler cannot put its pod on the planned node (a
            # taint, host CPU or memory): say so in the scheduler's words, it is for the user to act on.
            ordinal, sched_msg = min(unschedulable.items())
            why = "PodUnschedulable"
            msg = (
                f"{ready}/{min(desired, placed)} replicas ready; the pod of replica {ordinal}"
                + (f" and {len(unschedulable) - 1} more" if len(unschedulable) > 1 else "")
                + f" cannot be scheduled on its planned node: {sched_msg}"
            )
        conds = set_condition(conds, PROGRESSING, True, why, msg, gen, now)
    else:
        conds = set_condition(conds, PROGRESSING, False, "Complete", f"{ready} replicas ready", gen, now)
    # Ready
    if dep.spec.suspend:
        conds = set_condition(conds, READY, False, "Suspended", "the deployment is suspended", gen, now)
    elif desired == 0:
        conds = set_condition(conds, READY, True, "ScaledToZero", "no replica is wanted", gen, now)
    elif ready >= desired:
        conds = set_condition(
            conds, READY, True, "ReplicasReady", f"{ready}/{desired} replicas ready", gen, now
        )
    elif ready > 0:
        conds = set_condition(
            conds, READY, False, "PartiallyReady", f"{ready}/{desired} replicas ready", gen, now
        )
    else:
        conds = set_condition(conds, READY, False, "NoReplicaReady", f"0/{desired} replicas ready", gen, now)
    # Degraded: something the user must act on (capacity), not a rollout in progress.
    if desired > 0 and plan is not None and plan.unplaced:
        placed_cond = condition(conds, PLACED)
        assert placed_cond is not None
        conds = set_condition(conds, DEGRADED, True, placed_cond.reason, placed_cond.message, gen, now)
    else:
        conds = set_condition(
            conds, DEGRADED, False, "AsPlanned", "every wanted replica has a share", gen, now
        )
    st.conditions = conds
    return st


def pool_status(
    pool: GPUPool,
    *,
    plan: Plan | None,
    error: tuple[str, str] | None,
    nodes: Sequence[PoolNodeStatus],
    reservations_in_use: Mapping[str, int],
    waiting_nodes: Sequence[str],
    now: str,
) -> GPUPoolStatus:
    old = pool.status or GPUPoolStatus()
    gen = pool.metadata.generation
    conds = list(old.conditions or [])
    st = GPUPoolStatus(observed_generation=gen, nodes=len(nodes), node_status=list(nodes) or None)
    if error is not None:
        reason, message = error
        conds = set_condition(conds, READY, False, reason, message, gen, now)
        conds = set_condition(conds, DEGRADED, True, reason, message, gen, now)
        st.conditions = conds
        return st
    assert plan is not None
    pp = plan.pool
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
    lent: dict[str, int] = {}
    held: dict[str, int] = {}
    for g in plan.gpus:
        if g.reservation:
            held[g.reservation] = held.get(g.reservation, 0) + 1
            if any(r.borrowed for r in g.replicas):
                lent[g.reservation] = lent.get(g.reservation, 0) + 1
    st.reservations = [
        ReservationStatus(
            name=r.name,
            gpus=held.get(r.name, 0),
            in_use=reservations_in_use.get(r.name, 0),
            lent=lent.get(r.name, 0),
        )
        for r in pool.spec.reservations or []
    ] or None
    if not nodes:
        conds = set_condition(conds, READY, False, "NoNodes", "the node selector matches no node", gen, now)
    elif waiting_nodes:
        msg = "waiting for the NVIDIA GPU Operator to apply the new configuration on " + ", ".join(
            waiting_nodes[:5]
        )
        conds = set_condition(conds, READY, False, "Reconfiguring", msg, gen, now)
    else:
        conds = set_condition(
            conds,
            READY,
            True,
            "Planned",
            f"{pp.gpus_used}/{pp.gpus_total} GPUs used, {pp.replicas_placed} replicas placed",
            gen,
            now,
        )
    if pp.replicas_unplaced:
        conds = set_condition(
            conds,
            DEGRADED,
            True,
            "ReplicasUnplaced",
            f"{pp.replicas_unplaced} replicas could not be placed",
            gen,
            now,
        )
    else:
        conds = set_condition(
            conds, DEGRADED, False, "AsPlanned", "every wanted replica has a share", gen, now
        )
    st.conditions = conds
    return st
