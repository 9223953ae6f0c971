"""Check a plan against the rules every plan must respect; returns the violations (empty list = legal).

Independent of how the plan was made (heuristic, exact solver, or hand-written): it only reads the plan, the
inputs and the catalog. Used by the property tests and by the benchmark. docs/planner.md lists the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slm_operator.catalog import GpuModel, gpu_by_key
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import (
    TIER_RANK,
    CurrentPlacement,
    Demand,
    GpuPlan,
    NodeInventory,
    NodePlan,
    Plan,
    PoolPolicy,
    ReplicaPlacement,
)
from slm_operator.planner.state import mps_cap

_TIER_MECHS = {
    "Guaranteed": {"MIG", "Exclusive"},
    "Burstable": {"MIG", "MPS", "Exclusive"},
    "BestEffort": {"MIG", "MPS", "TimeSlicing", "Exclusive"},
}
_UNPLACED = {
    "InsufficientCapacity",
    "NoShareFits",
    "MechanismNotAllowed",
    "PreemptedByHigherTier",
    "ReservedCapacity",
}


def check_plan(
    plan: Plan,
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
) -> list[str]:
    v: list[str] = []
    demand = {d.deployment: d for d in demands}
    inv_gpu = {(n.name, g.index): g for n in nodes for g in n.gpus}
    inv_node = {n.name: n for n in nodes}
    node_plan = {n.name: n for n in plan.nodes}
    seen: set[tuple[str, int]] = set()
    for g in plan.gpus:
        key = (g.node, g.index)
        if key in seen:
            v.append(f"GPU {g.node}/{g.index} appears twice")
        seen.add(key)
        if key not in inv_gpu:
            v.append(f"GPU {g.node}/{g.index} is not in the inventory")
        elif inv_gpu[key].model != g.product:
            v.append(f"GPU {g.node}/{g.index} product {g.product} != inventory {inv_gpu[key].model}")
    for key in inv_gpu:
        if key not in seen:
            v.append(f"GPU {key[0]}/{key[1]} is missing from the plan")
    if set(node_plan) != set(inv_node):
        v.append("plan nodes differ from the inventory nodes")
    by_node: dict[str, list[GpuPlan]] = {}
    for g in plan.gpus:
        by_node.setdefault(g.node, []).append(g)
    for name, gl in by_node.items():
        np = node_plan.get(name)
        if np is None:
            continue
        v += _check_node(np, gl, policy)
    placed: dict[tuple[str, int], tuple[GpuPlan, ReplicaPlacement]] = {}
    for g in plan.gpus:
        model = gpu_by_key(g.product)
        v += _check_mig(g, model, node_plan.get(g.node))
        v += _check_gpu(g, model, node_plan.get(g.node), policy, demand)
        for r in g.replicas:
            k = (r.deployment, r.ordinal)
            if k in placed:
                v.append(f"replica {r.deployment}#{r.ordinal} placed twice")
            placed[k] = (g, r)
    v += _check_deployments(plan, demand, placed)
    v += _check_groups(plan, policy)
    cur_list = list(current)
    v += _check_needed(plan, policy, demand, inv_node, cur_list)
    v += _check_pressure(plan, demand, policy)
    v += _check_moves(plan, cur_list, placed, demand)
    return v


def _check_node(np: NodePlan, gpus: list[GpuPlan], policy: PoolPolicy) -> list[str]:
    v: list[str] = []
    w = f"node {np.name}"
    modes = {g.mode for g in gpus}
    layouts = {x.index: x for x in np.mig_layout}
    mig_on = any(x.mig_enabled for x in np.mig_layout)
    if np.sharing == "MPS":
        if mig_on:
            v.append(f"{w}: MPS on a node with a MIG-enabled GPU")
        if not modes <= {"MPS", "Free"}:
            v.append(f"{w}: MPS node has GPUs in modes {sorted(modes)}")
        n = np.replicas_per_gpu or 0
        if not 2 <= n <= min(48, policy.mps_max_clients_per_gpu):
            v.append(f"{w}: MPS clients per GPU {n} outside 2..{policy.mps_max_clients_per_gpu}")
    elif np.sharing == "TimeSlicing":
        if not modes <= {"MIG", "TimeSlicing", "Free"}:
            v.append(f"{w}: time-sliced node has GPUs in modes {sorted(modes)}")
        n = np.replicas_per_gpu or 0
        if not 2 <= n <= policy.ts_max_replicas_per_gpu:
            v.append(f"{w}: time-slicing replicas {n} outside 2..{policy.ts_max_replicas_per_gpu}")
    else:
        if modes & {"MPS", "TimeSlicing"}:
            v.append(f"{w}: MPS/time-sliced GPUs on a node without sharing")
        if np.replicas_per_gpu is not None:
            v.append(f"{w}: replicas per GPU set on a node without sharing")
    for g in gpus:
        lay = layouts.get(g.index)
        enabled = bool(lay and lay.mig_enabled)
        if g.mode == "MIG" and not enabled:
            v.append(f"GPU {g.node}/{g.index}: MIG mode but MIG disabled in the node layout")
        if g.mode in ("MPS", "TimeSlicing", "Exclusive", "Reserved", "Segment") and enabled:
            v.append(f"GPU {g.node}/{g.index}: {g.mode} GPU with MIG enabled")
        if lay is not None and enabled:
            counts: dict[str, int] = {}
            for i in g.mig_instances:
                counts[i.profile] = counts.get(i.profile, 0) + 1
            if counts != dict(lay.devices):
                v.append(f"GPU {g.node}/{g.index}: node mig layout {lay.devices} != instances {counts}")
        if g.mode in ("Exclusive", "Reserved", "Segment") and np.sharing != "None":
            v.append(f"GPU {g.node}/{g.index}: whole GPU ({g.mode}) on a {np.sharing} node")
    return v


def _check_mig(g: GpuPlan, model: GpuModel, np: NodePlan | None) -> list[str]:
    v: list[str] = []
    w = f"GPU {g.node}/{g.index}"
    if not g.mig_instances:
        return v
    geo = geometry(model.key)
    if geo is None:
        return [f"{w}: MIG instances on a GPU that is not MIG-capable"]
    used = 0
    counts = [0] * len(geo.profiles)
    for inst in g.mig_instances:
        if inst.profile not in geo.index:
            v.append(f"{w}: profile {inst.profile} does not exist on {model.key}")
            continue
        pi = geo.index[inst.profile]
        p = geo.profiles[pi]
        if inst.start not in p.starts:
            v.append(f"{w}: {inst.profile} at illegal start {inst.start}")
            continue
        mask = ((1 << p.memory_slices) - 1) << inst.start
        if used & mask:
            v.append(f"{w}: {inst.profile}@{inst.start} overlaps another instance")
        used |= mask
        counts[pi] += 1
    for pi, c in enumerate(counts):
        if c > geo.profiles[pi].max_count:
            v.append(f"{w}: {c} x {geo.profiles[pi].name} exceeds max count")
    if sum(c for pi, c in enumerate(counts) if geo.profiles[pi].media_extensions) > 1:
        v.append(f"{w}: more than one +me instance")
    if sum(c * geo.profiles[pi].compute_slices for pi, c in enumerate(counts)) > geo.compute_slices:
        v.append(f"{w}: compute slices exceed {geo.compute_slices}")
    return v


def _check_gpu(
    g: GpuPlan, model: GpuModel, np: NodePlan | None, policy: PoolPolicy, demand: dict[str, Demand]
) -> list[str]:
    v: list[str] = []
    w = f"GPU {g.node}/{g.index}"
    allowed = set(policy.allowed_mechanisms)
    ts_sum = 0
    inst_by_owner = {(i.deployment, i.ordinal): i for i in g.mig_instances if i.deployment is not None}
    mode_mech = {"MIG": "MIG", "MPS": "MPS", "TimeSlicing": "TimeSlicing", "Exclusive": "Exclusive"}
    if g.mode == "Segment" and g.replicas:
        v.append(f"{w}: segment GPU holds replicas")
    if g.mode == "Free" and g.replicas:
        v.append(f"{w}: Free GPU holds replicas")
    if g.mode in ("Exclusive", "Reserved") and len(g.replicas) > 1:
        v.append(f"{w}: whole GPU with {len(g.replicas)} replicas")
    for r in g.replicas:
        rw = f"replica {r.deployment}#{r.ordinal} on {w}"
        d = demand.get(r.deployment)
        if d is None:
            v.append(f"{rw}: unknown deployment")
            continue
        if r.memory_bytes != d.memory_bytes or r.qos != d.tier:
            v.append(f"{rw}: memory/qos differ from the demand")
        mech = r.share.mechanism
        if g.mode == "Reserved":
            if mech != "Exclusive" or not r.borrowed:
                v.append(f"{rw}: a reserved GPU may only be lent whole (borrowed Exclusive)")
        elif mode_mech.get(g.mode) != mech:
            v.append(f"{rw}: {mech} replica on a {g.mode} GPU")
        if mech not in _TIER_MECHS[d.tier]:
            v.append(f"{rw}: {d.tier} may not use {mech}")
        if mech not in allowed and not r.borrowed:
            v.append(f"{rw}: pool does not allow {mech}")
        if d.share is not None:
            if (d.share.mechanism and d.share.mechanism != mech) or (d.share.mig_profile and mech != "MIG"):
                v.append(f"{rw}: explicit share {d.share.mechanism or 'MIG'} not honoured")
            if d.share.mig_profile and r.share.mig_profile != d.share.mig_profile:
                v.append(f"{rw}: explicit MIG profile {d.share.mig_profile} not honoured")
        est = d.memory_bytes
        if mech == "MIG":
            try:
                p = model.profile(r.share.mig_profile or "")
            except KeyError:
                v.append(f"{rw}: unknown MIG profile {r.share.mig_profile}")
                continue
            if p.memory_bytes < est:
                v.append(f"{rw}: MIG {p.name} ({p.memory_mib} MiB usable) does not hold {est} bytes")
            if (r.deployment, r.ordinal) not in inst_by_owner:
                v.append(f"{rw}: no MIG instance assigned")
            elif inst_by_owner[(r.deployment, r.ordinal)].profile != p.name:
                v.append(f"{rw}: assigned instance has another profile")
        elif mech == "MPS":
            n = np.replicas_per_gpu if np is not None else None
            if np is None or np.sharing != "MPS" or not n:
                v.append(f"{rw}: MPS replica on a node without MPS")
                continue
            cap = mps_cap(model.memory_mib, n)
            if r.share.mps_memory_limit_bytes != cap:
                v.append(f"{rw}: MPS cap {r.share.mps_memory_limit_bytes} != GPU memory / {n}")
            if cap < est:
                v.append(f"{rw}: MPS cap {cap} does not hold {est}")
            if n > model.mps_max_clients:
                v.append(f"{rw}: {n} MPS clients exceed the GPU's {model.mps_max_clients}")
        elif mech == "TimeSlicing":
            if np is None or np.sharing != "TimeSlicing":
                v.append(f"{rw}: time-sliced replica on a node without time-slicing")
            ts_sum += est
        elif mech == "Exclusive" and model.memory_bytes < est:
            v.append(f"{rw}: whole GPU does not hold {est}")
    n = np.replicas_per_gpu if np is not None else None
    if g.mode == "MPS" and n and len(g.replicas) > n:
        v.append(f"{w}: {len(g.replicas)} MPS clients > {n}")
    if g.mode == "TimeSlicing":
        if n and len(g.replicas) > n:
            v.append(f"{w}: {len(g.replicas)} time-sliced replicas > {n}")
        limit = model.memory_bytes * policy.memory_oversubscription_percent // 100
        if any(r.qos != "BestEffort" for r in g.replicas):
            v.append(f"{w}: non-BestEffort replica on a time-sliced GPU")
        if ts_sum > limit:
            v.append(f"{w}: time-sliced estimates {ts_sum} exceed {limit}")
    if g.mode == "MIG":
        owners = [(i.deployment, i.ordinal) for i in g.mig_instances if i.deployment is not None]
        if len(owners) != len(set(owners)):
            v.append(f"{w}: a MIG instance owner appears twice")
        names = {(r.deployment, r.ordinal) for r in g.replicas}
        if set(owners) != names:
            v.append(f"{w}: MIG instance owners differ from the GPU's replicas")
    return v


def _check_deployments(
    plan: Plan, demand: dict[str, Demand], placed: dict[tuple[str, int], tuple[GpuPlan, ReplicaPlacement]]
) -> list[str]:
    v: list[str] = []
    seen = set()
    for dp in plan.deployments:
        seen.add(dp.deployment)
        d = demand.get(dp.deployment)
        if d is None:
            v.append(f"deployment {dp.deployment} is not a demand")
            continue
        if dp.desired != d.replicas:
            v.append(f"deployment {dp.deployment}: desired {dp.desired} != {d.replicas}")
        ords = {o for (k, o) in placed if k == dp.deployment}
        un = {u.ordinal for u in dp.unplaced}
        if ords & un or (ords | un) != set(range(d.replicas)) or len(dp.unplaced) != len(un):
            v.append(
                f"deployment {dp.deployment}: placed {sorted(ords)} / unplaced {sorted(un)} inconsistent"
            )
        if dp.placed != len(ords):
            v.append(f"deployment {dp.deployment}: placed {dp.placed} != {len(ords)}")
        for u in dp.unplaced:
            if u.reason not in _UNPLACED or not u.message:
                v.append(f"deployment {dp.deployment}#{u.ordinal}: unplaced without a reason")
        if not dp.explanation:
            v.append(f"deployment {dp.deployment}: no explanation")
    if seen != set(demand):
        v.append("plan deployments differ from the demands")
    return v


def _check_groups(plan: Plan, policy: PoolPolicy) -> list[str]:
    v: list[str] = []
    for res in policy.reservations:
        gl = [g for g in plan.gpus if g.reservation == res.name]
        if any(g.mode != "Reserved" for g in gl):
            v.append(f"reservation {res.name}: a GPU is not in Reserved mode")
        if len(gl) > res.gpus:
            v.append(f"reservation {res.name}: {len(gl)} GPUs > {res.gpus}")
        borrowed = [g for g in gl if g.replicas]
        if borrowed and res.lend_to != "BestEffort":
            v.append(f"reservation {res.name}: lent although lendTo is not BestEffort")
        if len(borrowed) > max(0, res.gpus - res.claimed):
            v.append(f"reservation {res.name}: {len(borrowed)} GPUs lent although {res.claimed} are claimed")
        for g in borrowed:
            for r in g.replicas:
                if r.qos != "BestEffort":
                    v.append(f"reservation {res.name}: {r.qos} replica {r.deployment}#{r.ordinal} on it")
    for seg in policy.segments:
        gl = [g for g in plan.gpus if g.segment == seg.name]
        if len(gl) > seg.gpus:
            v.append(f"segment {seg.name}: {len(gl)} GPUs > {seg.gpus}")
        for g in gl:
            if g.replicas or g.mode != "Segment":
                v.append(f"segment {seg.name}: GPU {g.node}/{g.index} is used for inference")
    n_pool = sum(1 for g in plan.gpus if g.reservation is None and g.segment is None)
    want = sum(r.gpus for r in policy.reservations) + sum(s.gpus for s in policy.segments)
    have = len(plan.gpus) - n_pool
    if have < want and n_pool > 0:
        # only legal when the remaining GPUs are on unschedulable nodes
        pass
    return v


def _could_host(g: GpuPlan, np: NodePlan, node_all_free: bool, d: Demand, policy: PoolPolicy) -> bool:
    """Whether a Free pool GPU could legally take one replica of ``d`` without changing anything else."""
    model = gpu_by_key(g.product)
    allowed = set(policy.allowed_mechanisms) & _TIER_MECHS[d.tier]
    if d.share is not None and d.share.mechanism:
        allowed &= {d.share.mechanism}
    if d.share is not None and d.share.mig_profile:
        allowed &= {"MIG"}
    est = d.memory_bytes
    geo = geometry(model.key)
    mig_fit = geo is not None and any(
        (p.memory_bytes >= est and not p.media_extensions and (not d.share or not d.share.mig_profile))
        or (d.share is not None and d.share.mig_profile == p.name and p.memory_bytes >= est)
        for p in model.mig_profiles
    )
    sharing = "None" if node_all_free else np.sharing
    if "MIG" in allowed and mig_fit and sharing != "MPS":
        return True
    if "Exclusive" in allowed and est <= model.memory_bytes and sharing == "None":
        return True
    if "MPS" in allowed and sharing == "MPS" and np.replicas_per_gpu:
        return mps_cap(model.memory_mib, np.replicas_per_gpu) >= est
    if "MPS" in allowed and node_all_free:
        n = min(policy.mps_max_clients_per_gpu, model.mps_max_clients)
        if any(mps_cap(model.memory_mib, k) >= est for k in range(2, n + 1)):
            return True
    if "TimeSlicing" in allowed and (sharing == "TimeSlicing" or node_all_free):
        return est <= model.memory_bytes * policy.memory_oversubscription_percent // 100
    return False


def _check_needed(
    plan: Plan,
    policy: PoolPolicy,
    demand: dict[str, Demand],
    inv_node: dict[str, NodeInventory],
    current: list[CurrentPlacement],
) -> list[str]:
    """Spread and borrowing are relaxed only when no free GPU could take the replica instead. A running
    replica that stays where it is (stability) is not judged again."""
    v: list[str] = []
    running = {(c.deployment, c.ordinal, c.node, c.gpu_index, c.mechanism) for c in current}
    node_plan = {n.name: n for n in plan.nodes}
    all_free = {n.name: all(g.mode == "Free" for g in plan.gpus if g.node == n.name) for n in plan.nodes}
    free = [
        g
        for g in plan.gpus
        if g.mode == "Free" and inv_node.get(g.node) is not None and inv_node[g.node].schedulable
    ]
    if not free:
        return v
    for g in plan.gpus:
        deps: dict[str, int] = {}
        for r in g.replicas:
            deps[r.deployment] = deps.get(r.deployment, 0) + 1
        for r in g.replicas:
            d = demand.get(r.deployment)
            if d is None:
                continue
            why = None
            if deps[r.deployment] > 1:
                why = "shares a GPU with another replica of its deployment"
            elif r.borrowed:
                why = "borrows a reserved GPU"
            if why is None or (r.deployment, r.ordinal, g.node, g.index, r.share.mechanism) in running:
                continue
            for f in free:
                if _could_host(f, node_plan[f.node], all_free[f.node], d, policy):
                    v.append(
                        f"replica {r.deployment}#{r.ordinal} {why} although GPU {f.node}/{f.index} is free"
                    )
                    break
    return v


def _check_pressure(plan: Plan, demand: dict[str, Demand], policy: PoolPolicy) -> list[str]:
    """A higher-tier replica left unplaced for capacity while a lower tier holds a share it could take."""
    v: list[str] = []
    waiting = [
        (dp, u)
        for dp in plan.deployments
        for u in dp.unplaced
        if u.reason in ("InsufficientCapacity", "ReservedCapacity") and dp.qos != "BestEffort"
    ]
    if not waiting:
        return v
    for dp, u in waiting:
        d = demand[dp.deployment]
        rank = TIER_RANK[d.tier]
        mechs = _TIER_MECHS[d.tier] & set(policy.allowed_mechanisms)
        for g in plan.gpus:
            if g.mode in ("Reserved", "Segment"):
                continue
            if any(r.deployment == d.deployment for r in g.replicas):
                continue
            model = gpu_by_key(g.product)
            for r in g.replicas:
                if TIER_RANK[r.qos] <= rank:
                    continue
                s = r.share
                ok = False
                if s.mechanism == "MIG" and s.memory_bytes >= d.memory_bytes:
                    ok = "MIG" in mechs and (d.share is None or d.share.mechanism in (None, "MIG"))
                    if d.share is not None and d.share.mig_profile and d.share.mig_profile != s.mig_profile:
                        ok = False
                elif s.mechanism == "MPS" and s.memory_bytes >= d.memory_bytes:
                    ok = "MPS" in mechs and (d.share is None or d.share.mechanism in (None, "MPS"))
                elif s.mechanism == "Exclusive" and model.memory_bytes >= d.memory_bytes and not r.borrowed:
                    ok = "Exclusive" in mechs and (
                        d.share is None or d.share.mechanism in (None, "Exclusive")
                    )
                if ok:
                    v.append(
                        f"{d.tier} {dp.deployment}#{u.ordinal} unplaced while {r.qos} "
                        f"{r.deployment}#{r.ordinal} holds a share it could use on {g.node}/{g.index}"
                    )
                    break
    return v


def _check_moves(
    plan: Plan,
    current: Iterable[CurrentPlacement],
    placed: dict[tuple[str, int], tuple[GpuPlan, ReplicaPlacement]],
    demand: dict[str, Demand],
) -> list[str]:
    v: list[str] = []
    evicted = {(e.deployment, e.ordinal) for e in plan.pool.evictions}
    gpus = {(g.node, g.index) for g in plan.gpus}
    for c in current:
        d = demand.get(c.deployment)
        if d is None or c.ordinal >= d.replicas or (c.node, c.gpu_index) not in gpus:
            continue
        k = (c.deployment, c.ordinal)
        now = placed.get(k)
        same = (
            now is not None
            and now[0].node == c.node
            and now[0].index == c.gpu_index
            and now[1].share.mechanism == c.mechanism
            and (c.mechanism != "MIG" or now[1].share.mig_profile == c.mig_profile)
        )
        if not same and k not in evicted:
            v.append(
                f"running replica {c.deployment}#{c.ordinal} moved or yielded without an eviction record"
            )
        if now is not None and now[1].moved == same:
            v.append(f"replica {c.deployment}#{c.ordinal}: moved flag wrong")
    return v
