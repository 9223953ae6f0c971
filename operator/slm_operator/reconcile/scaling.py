"""Shares that make scaling cheap, the operator's side (docs/autoscaling.md, "Which share a new replica gets").

* **Warm shares.** When a deployment with ``spec.autoscaling`` scales down, the shares its removed replicas
  held (their last place in ``status.placements``) are listed in ``status.warmShares`` until
  ``keepWarmFor`` has passed; every pass hands the ones still valid to the planner (``Demand.warm``), which
  keeps them for the deployment. The list lives in the status, so a restarted operator keeps it.
* **Reconfiguration estimates.** A replica that waits for its node's new MIG config or sharing mode is told
  so, with the pods still to drain there and the time it is expected to take.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from slm_operator.api.base import duration_seconds
from slm_operator.api.v1alpha1 import SLMDeployment, WarmShareStatus
from slm_operator.inventory import deployment_key
from slm_operator.planner.model import ALL_MECHANISMS, GpuPlan, Plan, WarmShare
from slm_operator.views import PodView

#: mig-manager waits up to 5 minutes for the device plugin, GFD and DCGM pods it paused to stop before it
#: re-creates the instances (mig-parted ``pkg/mig/reconfigure/reconfigure.go``; /work/shared/facts/gpu-sharing.md
#: section 3.2): the upper end of the estimate.
MIG_MANAGER_MAX_WAIT_SECONDS = 300.0
#: Applying the layout and restarting the validator and the paused operands afterwards (an allowance, not a
#: measured figure: with a fake mig-manager the e2e cluster cannot time it).
MIG_APPLY_ALLOWANCE_SECONDS = 60.0


def _time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keep_warm_seconds(dep: SLMDeployment) -> float:
    """``spec.autoscaling.keepWarmFor`` in seconds; 0 without autoscaling."""
    auto = dep.spec.autoscaling
    return duration_seconds(auto.keep_warm_for) if auto is not None else 0.0


def live_warm_shares(dep: SLMDeployment, now: str) -> list[WarmShareStatus]:
    """The deployment's warm shares whose time has not run out."""
    t_now = _time(now)
    if keep_warm_seconds(dep) <= 0 or t_now is None or dep.status is None:
        return []
    out = []
    for w in dep.status.warm_shares or []:
        until = _time(w.until)
        if until is not None and until > t_now and w.mechanism in ALL_MECHANISMS:
            out.append(w)
    return out


def planner_warm(dep: SLMDeployment, now: str) -> tuple[WarmShare, ...]:
    """The live warm shares as the planner's ``Demand.warm``."""
    return tuple(
        WarmShare(node=w.node, gpu_index=w.gpu, mechanism=w.mechanism, mig_profile=w.mig_profile)
        for w in live_warm_shares(dep, now)
    )


def _still_there(w: WarmShareStatus, gpu: GpuPlan | None, sharing: Mapping[str, str], key: str) -> bool:
    """The share is still configured as it was and no replica holds it (MIG: a free instance of its
    profile; MPS / time-slicing: the node keeps that mode); the deployment did not take the GPU again."""
    if gpu is None or gpu.reconfigure or any(r.deployment == key for r in gpu.replicas):
        return False
    if w.mechanism == "MIG":
        return any(i.profile == w.mig_profile and i.deployment is None for i in gpu.mig_instances)
    if w.mechanism in ("MPS", "TimeSlicing"):
        return sharing.get(gpu.node) == w.mechanism
    return not gpu.replicas


def warm_shares(dep: SLMDeployment, plan: Plan, now: str) -> list[WarmShareStatus] | None:
    """``status.warmShares`` after this pass: the live ones still configured and free, and the places of the
    replicas this plan no longer wants (removed by a scale-down), kept until now + ``keepWarmFor``."""
    keep = keep_warm_seconds(dep)
    t_now = _time(now)
    if keep <= 0 or t_now is None:
        return None
    key = deployment_key(dep)
    gpus = {(g.node, g.index): g for g in plan.gpus}
    sharing = {n.name: n.sharing for n in plan.nodes}
    kept = [w for w in live_warm_shares(dep, now) if _still_there(w, gpus.get((w.node, w.gpu)), sharing, key)]
    dp = plan.deployment(key)
    wanted = {r.ordinal for g in plan.gpus for r in g.replicas if r.deployment == key}
    wanted |= {u.ordinal for u in (dp.unplaced if dp is not None else ())}
    until = _rfc3339(t_now + timedelta(seconds=keep))
    # released once: a place already listed (even run out) is not listed again while the status still shows
    # the removed replica's terminating pod
    st = dep.status
    have = {(w.node, w.gpu, w.replica) for w in (st.warm_shares if st and st.warm_shares else [])}
    for p in st.placements if st and st.placements else []:
        if p.replica in wanted or not p.node or p.gpu < 0 or p.mechanism not in ALL_MECHANISMS:
            continue
        if (p.node, p.gpu, p.replica) in have:
            continue
        w = WarmShareStatus(
            node=p.node,
            gpu=p.gpu,
            mechanism=p.mechanism,
            mig_profile=p.mig_profile,
            replica=p.replica,
            until=until,
        )
        if _still_there(w, gpus.get((p.node, p.gpu)), sharing, key):
            kept.append(w)
    kept.sort(key=lambda w: (w.node, w.gpu, w.replica))
    return kept or None


def drain_counts(pods: Iterable[PodView], deleted: Iterable[tuple[str, str, str]]) -> dict[str, int]:
    """Replica pods still to go per node: ``deleted`` in this pass (namespace, name, reason) or terminating."""
    deleting = {(ns, name) for ns, name, _ in deleted}
    out: dict[str, int] = {}
    for pod in pods:
        if pod.node_name and (pod.deleting or (pod.namespace, pod.name) in deleting):
            out[pod.node_name] = out.get(pod.node_name, 0) + 1
    return out


def reconfiguration_estimate(configmap_sync_seconds: float) -> tuple[float, float]:
    """Expected seconds from a node's new MIG config to its instances being usable: at least the kubelet's
    sync of mig-manager's mounted ConfigMap (facts section 3.3), at most that plus mig-manager's wait for the
    paused operands and the apply allowance."""
    low = configmap_sync_seconds
    return low, low + MIG_MANAGER_MAX_WAIT_SECONDS + MIG_APPLY_ALLOWANCE_SECONDS


def explain_reconfigurations(
    plan: Plan,
    waiting: Mapping[str, Mapping[int, str]],
    drains: Mapping[str, int],
    configmap_sync_seconds: float,
    sooner: Mapping[str, float] | None = None,
) -> dict[str, dict[int, str]]:
    """``waiting`` with each replica that waits for its node's new MIG config or sharing mode explained:
    "replica 3 needs a MIG reconfiguration of node X (drain of N pods; about 2-8 min expected): <why>".
    ``sooner``: node -> the shorter wait for a new entry where its mig-manager pod is refreshed (mig_refresh)."""
    nodes = {n.name: n for n in plan.nodes}
    where = {(r.deployment, r.ordinal): g for g in plan.gpus for r in g.replicas}

    def span(node: str) -> str:
        low, high = reconfiguration_estimate(min(configmap_sync_seconds, (sooner or {}).get(node, math.inf)))
        return f"about {max(1, round(low / 60))}-{max(1, round(high / 60))} min expected"

    out: dict[str, dict[int, str]] = {}
    for dep, per_replica in waiting.items():
        out[dep] = dict(per_replica)
        for ordinal, why in per_replica.items():
            g = where.get((dep, ordinal))
            node = nodes.get(g.node) if g is not None else None
            if g is None or node is None:
                continue
            if g.reconfigure:
                what = f"a MIG reconfiguration of node {g.node}"
            elif node.sharing_changed:
                what = f"node {g.node} to switch its sharing to {node.sharing}"
            else:
                continue
            drain = drains.get(g.node, 0)
            pods = f"drain of {drain} pod{'s' if drain != 1 else ''}"
            out[dep][ordinal] = f"replica {ordinal} needs {what} ({pods}; {span(g.node)}): {why}"
    return out
