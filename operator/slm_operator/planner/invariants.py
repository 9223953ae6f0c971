"""Check a plan against the rules every plan must respect; returns the violations (empty list = legal).

Independent of how the plan was made (heuristic, exact solver, or hand-written): it only reads the plan, the
inputs and the catalog. Used by the property tests and by the benchmark. docs/planner.md lists the rules.

Each rule is a function returning its violations; ``_NODE_RULES``, ``_GPU_RULES``, ``_REPLICA_RULES`` and
``_GPU_COUNT_RULES`` list them in the order their messages appear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from slm_operator.catalog import GpuModel, gpu_by_key
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import (
    CurrentPlacement,
    Demand,
    GpuPlan,
    MigDeviceLayout,
    MigInstancePlan,
    NodeInventory,
    NodePlan,
    Plan,
    PoolPolicy,
    ReplicaPlacement,
)
from slm_operator.planner.state import mps_cap
from slm_operator.planner.vocabulary import (
    TIER_MECHANISMS,
    TIER_RANK,
    GpuMode,
    Mechanism,
    NodeMode,
    Tier,
    UnplacedReason,
)

_UNPLACED = frozenset(UnplacedReason)
#: the mechanism a GPU's replicas use, by the GPU's mode (a reserved GPU: see ``_mechanism_fits_gpu``)
_MODE_MECHANISM: dict[str, Mechanism] = {
    GpuMode.MIG: Mechanism.MIG,
    GpuMode.MPS: Mechanism.MPS,
    GpuMode.TIME_SLICING: Mechanism.TIME_SLICING,
    GpuMode.EXCLUSIVE: Mechanism.EXCLUSIVE,
}
#: modes of a GPU whose node must not enable MIG on it
_NOT_MIG_MODES = frozenset(
    {GpuMode.MPS, GpuMode.TIME_SLICING, GpuMode.EXCLUSIVE, GpuMode.RESERVED, GpuMode.SEGMENT}
)
#: modes of a GPU that LLM and fine-tuning pods request whole (``nvidia.com/gpu``)
_WHOLE_MODES = frozenset({GpuMode.EXCLUSIVE, GpuMode.RESERVED, GpuMode.SEGMENT})


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
    v += _check_tenants(plan, policy, demand)
    return v


def replica_gpu_equivalents(g: GpuPlan, r: ReplicaPlacement) -> float:
    """GPU-equivalents of a planned share, from the plan alone (docs/tenants.md): the larger of its memory and
    compute fractions of the GPU; 0 on a lent reserved GPU (outside tenant quotas)."""
    model = gpu_by_key(g.product)
    mech = Mechanism(r.share.mechanism)
    if r.borrowed:
        return 0.0
    if mech == Mechanism.MIG:
        p = next(p for p in model.mig_profiles if p.name == r.share.mig_profile)
        return max(p.memory_slices / model.memory_slices, p.compute_slices / model.compute_slices)
    if mech == Mechanism.MPS:
        n = r.share.replicas_per_gpu or 2
        return max((r.share.mps_memory_limit_bytes or 0) / model.memory_bytes, 1 / n)
    if mech == Mechanism.TIME_SLICING:
        return min(1.0, r.memory_bytes / model.memory_bytes)
    return 1.0


def tenant_held(plan: Plan, policy: PoolPolicy, demand: dict[str, Demand]) -> dict[str, float]:
    """GPU-equivalents each tenant of the policy holds in the plan (deployments of no known tenant: "")."""
    names = {t.name for t in policy.tenants}
    held: dict[str, float] = {}
    for g in plan.gpus:
        for r in g.replicas:
            d = demand.get(r.deployment)
            t = d.tenant if d is not None and d.tenant in names else ""
            held[t or ""] = held.get(t or "", 0.0) + replica_gpu_equivalents(g, r)
    return held


def _check_tenants(plan: Plan, policy: PoolPolicy, demand: dict[str, Demand]) -> list[str]:
    """No tenant holds more GPU-equivalents than its ceiling."""
    if not policy.tenants:
        return []
    held = tenant_held(plan, policy, demand)
    return [
        f"tenant {t.name} holds {held.get(t.name, 0.0):.3f} GPU-equivalents, above its ceiling {t.ceiling}"
        for t in policy.tenants
        if t.ceiling is not None and held.get(t.name, 0.0) > t.ceiling + 1e-6
    ]


# ------------------------------------------------------------------------------------------------ node-wide modes


def _check_node(np: NodePlan, gpus: list[GpuPlan], policy: PoolPolicy) -> list[str]:
    """The node's sharing config (rule 2), then each GPU against the node's layout and sharing."""
    sharing = NodeMode(np.sharing)
    modes: set[str] = {g.mode for g in gpus}
    mig_on = any(x.mig_enabled for x in np.mig_layout)
    v = [msg for rule in _NODE_RULES for msg in rule(np, sharing, modes, mig_on, policy)]
    layouts = {x.index: x for x in np.mig_layout}
    for g in gpus:
        lay = layouts.get(g.index)
        enabled = bool(lay and lay.mig_enabled)
        for gpu_rule in _NODE_GPU_RULES:
            v += gpu_rule(g, lay, enabled, np)
    return v


def _mps_node(
    np: NodePlan, sharing: NodeMode, modes: set[str], mig_on: bool, policy: PoolPolicy
) -> list[str]:
    """An MPS node: no MIG, only MPS GPUs, clients per GPU in 2..min(48, policy)."""
    if sharing != NodeMode.MPS:
        return []
    v: list[str] = []
    w = f"node {np.name}"
    if mig_on:
        v.append(f"{w}: MPS on a node with a MIG-enabled GPU")
    if not modes <= {GpuMode.MPS, GpuMode.FREE}:
        v.append(f"{w}: MPS node has GPUs in modes {sorted(modes)}")
    n = np.replicas_per_gpu or 0
    if not 2 <= n <= min(48, policy.mps_max_clients_per_gpu):
        v.append(f"{w}: MPS clients per GPU {n} outside 2..{policy.mps_max_clients_per_gpu}")
    return v


def _time_sliced_node(
    np: NodePlan, sharing: NodeMode, modes: set[str], mig_on: bool, policy: PoolPolicy
) -> list[str]:
    """A time-sliced node: MIG or time-sliced GPUs, replicas per GPU in 2..policy."""
    if sharing != NodeMode.TIME_SLICING:
        return []
    v: list[str] = []
    w = f"node {np.name}"
    if not modes <= {GpuMode.MIG, GpuMode.TIME_SLICING, GpuMode.FREE}:
        v.append(f"{w}: time-sliced node has GPUs in modes {sorted(modes)}")
    n = np.replicas_per_gpu or 0
    if not 2 <= n <= policy.ts_max_replicas_per_gpu:
        v.append(f"{w}: time-slicing replicas {n} outside 2..{policy.ts_max_replicas_per_gpu}")
    return v


def _unshared_node(
    np: NodePlan, sharing: NodeMode, modes: set[str], mig_on: bool, policy: PoolPolicy
) -> list[str]:
    """A node without sharing: no MPS or time-sliced GPU, no replicas per GPU."""
    if sharing in (NodeMode.MPS, NodeMode.TIME_SLICING):
        return []
    v: list[str] = []
    w = f"node {np.name}"
    if modes & {GpuMode.MPS, GpuMode.TIME_SLICING}:
        v.append(f"{w}: MPS/time-sliced GPUs on a node without sharing")
    if np.replicas_per_gpu is not None:
        v.append(f"{w}: replicas per GPU set on a node without sharing")
    return v


def _mig_mode_needs_mig_enabled(
    g: GpuPlan, lay: MigDeviceLayout | None, enabled: bool, np: NodePlan
) -> list[str]:
    if GpuMode(g.mode) == GpuMode.MIG and not enabled:
        return [f"GPU {g.node}/{g.index}: MIG mode but MIG disabled in the node layout"]
    return []


def _other_modes_need_mig_disabled(
    g: GpuPlan, lay: MigDeviceLayout | None, enabled: bool, np: NodePlan
) -> list[str]:
    if g.mode in _NOT_MIG_MODES and enabled:
        return [f"GPU {g.node}/{g.index}: {g.mode} GPU with MIG enabled"]
    return []


def _layout_lists_the_instances(
    g: GpuPlan, lay: MigDeviceLayout | None, enabled: bool, np: NodePlan
) -> list[str]:
    """The node's mig-parted layout lists exactly the GPU's instances."""
    if lay is None or not enabled:
        return []
    counts: dict[str, int] = {}
    for i in g.mig_instances:
        counts[i.profile] = counts.get(i.profile, 0) + 1
    if counts != dict(lay.devices):
        return [f"GPU {g.node}/{g.index}: node mig layout {lay.devices} != instances {counts}"]
    return []


def _whole_gpu_needs_no_sharing(
    g: GpuPlan, lay: MigDeviceLayout | None, enabled: bool, np: NodePlan
) -> list[str]:
    if g.mode in _WHOLE_MODES and NodeMode(np.sharing) != NodeMode.NONE:
        return [f"GPU {g.node}/{g.index}: whole GPU ({g.mode}) on a {np.sharing} node"]
    return []


_NODE_RULES: tuple[Callable[[NodePlan, NodeMode, set[str], bool, PoolPolicy], list[str]], ...] = (
    _mps_node,
    _time_sliced_node,
    _unshared_node,
)
_NODE_GPU_RULES: tuple[Callable[[GpuPlan, MigDeviceLayout | None, bool, NodePlan], list[str]], ...] = (
    _mig_mode_needs_mig_enabled,
    _other_modes_need_mig_disabled,
    _layout_lists_the_instances,
    _whole_gpu_needs_no_sharing,
)


# ------------------------------------------------------------------------------------------------ MIG legality


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


# ------------------------------------------------------------------------------------------------ one GPU


@dataclass(frozen=True, slots=True)
class _GpuCheck:
    """What the rules of one GPU read."""

    g: GpuPlan
    mode: GpuMode  # g.mode
    model: GpuModel
    np: NodePlan | None
    sharing: NodeMode | None  # np.sharing
    policy: PoolPolicy
    demand: dict[str, Demand]
    where: str  # "GPU node/index"
    inst_by_owner: dict[tuple[str, int | None], MigInstancePlan]  # (deployment, ordinal) -> its MIG instance

    @property
    def n(self) -> int | None:
        """The node's MPS clients or time-slicing replicas per GPU."""
        return self.np.replicas_per_gpu if self.np is not None else None


def _check_gpu(
    g: GpuPlan, model: GpuModel, np: NodePlan | None, policy: PoolPolicy, demand: dict[str, Demand]
) -> list[str]:
    """The GPU's use, each of its replicas (tiers, mechanisms, memory: rules 2 to 4), then its counts."""
    inst_by_owner = {(i.deployment, i.ordinal): i for i in g.mig_instances if i.deployment is not None}
    sharing = NodeMode(np.sharing) if np is not None else None
    c = _GpuCheck(
        g, GpuMode(g.mode), model, np, sharing, policy, demand, f"GPU {g.node}/{g.index}", inst_by_owner
    )
    v = [msg for rule in _GPU_RULES for msg in rule(c)]
    for r in g.replicas:
        rw = f"replica {r.deployment}#{r.ordinal} on {c.where}"
        d = demand.get(r.deployment)
        if d is None:
            v.append(f"{rw}: unknown deployment")
            continue
        for replica_rule in _REPLICA_RULES:
            v += replica_rule(c, r, d, rw)
    for rule in _GPU_COUNT_RULES:
        v += rule(c)
    return v


def _segment_holds_nothing(c: _GpuCheck) -> list[str]:
    return [f"{c.where}: segment GPU holds replicas"] if c.mode == GpuMode.SEGMENT and c.g.replicas else []


def _free_holds_nothing(c: _GpuCheck) -> list[str]:
    return [f"{c.where}: Free GPU holds replicas"] if c.mode == GpuMode.FREE and c.g.replicas else []


def _whole_gpu_holds_one(c: _GpuCheck) -> list[str]:
    if c.mode in (GpuMode.EXCLUSIVE, GpuMode.RESERVED) and len(c.g.replicas) > 1:
        return [f"{c.where}: whole GPU with {len(c.g.replicas)} replicas"]
    return []


def _matches_demand(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    if r.memory_bytes != d.memory_bytes or r.qos != d.tier:
        return [f"{rw}: memory/qos differ from the demand"]
    return []


def _mechanism_fits_gpu(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    """The replica uses the GPU's mechanism; a reserved GPU is only lent whole."""
    mech, mode = Mechanism(r.share.mechanism), c.mode
    if mode == GpuMode.RESERVED:
        if mech != Mechanism.EXCLUSIVE or not r.borrowed:
            return [f"{rw}: a reserved GPU may only be lent whole (borrowed Exclusive)"]
    elif _MODE_MECHANISM.get(mode) != mech:
        return [f"{rw}: {r.share.mechanism} replica on a {c.g.mode} GPU"]
    return []


def _tier_may_use(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    mech = r.share.mechanism
    return [f"{rw}: {d.tier} may not use {mech}"] if mech not in TIER_MECHANISMS[Tier(d.tier)] else []


def _pool_allows(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    mech = r.share.mechanism
    if mech not in c.policy.allowed_mechanisms and not r.borrowed:
        return [f"{rw}: pool does not allow {mech}"]
    return []


def _explicit_share_honoured(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    if d.share is None:
        return []
    v: list[str] = []
    mech = r.share.mechanism
    if (d.share.mechanism and d.share.mechanism != mech) or (
        d.share.mig_profile and Mechanism(mech) != Mechanism.MIG
    ):
        v.append(f"{rw}: explicit share {d.share.mechanism or 'MIG'} not honoured")
    if d.share.mig_profile and r.share.mig_profile != d.share.mig_profile:
        v.append(f"{rw}: explicit MIG profile {d.share.mig_profile} not honoured")
    return v


def _share_holds_estimate(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    """Rule 4, by mechanism (time-slicing: the GPU's sum, in ``_time_slicing_within_limits``)."""
    rule = _SHARE_RULES.get(r.share.mechanism)
    return rule(c, r, d, rw) if rule is not None else []


def _mig_share(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    """A known profile whose usable memory holds the estimate, on an instance assigned to the replica."""
    try:
        p = c.model.profile(r.share.mig_profile or "")
    except KeyError:
        return [f"{rw}: unknown MIG profile {r.share.mig_profile}"]
    v: list[str] = []
    est = d.memory_bytes
    if p.memory_bytes < est:
        v.append(f"{rw}: MIG {p.name} ({p.memory_mib} MiB usable) does not hold {est} bytes")
    inst = c.inst_by_owner.get((r.deployment, r.ordinal))
    if inst is None:
        v.append(f"{rw}: no MIG instance assigned")
    elif inst.profile != p.name:
        v.append(f"{rw}: assigned instance has another profile")
    return v


def _mps_share(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    """An MPS node; the cap is GPU memory / clients per GPU and holds the estimate."""
    n = c.n
    if c.np is None or c.sharing != NodeMode.MPS or not n:
        return [f"{rw}: MPS replica on a node without MPS"]
    v: list[str] = []
    est = d.memory_bytes
    cap = mps_cap(c.model.memory_mib, n)
    if r.share.mps_memory_limit_bytes != cap:
        v.append(f"{rw}: MPS cap {r.share.mps_memory_limit_bytes} != GPU memory / {n}")
    if cap < est:
        v.append(f"{rw}: MPS cap {cap} does not hold {est}")
    if n > c.model.mps_max_clients:
        v.append(f"{rw}: {n} MPS clients exceed the GPU's {c.model.mps_max_clients}")
    return v


def _time_sliced_share(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    if c.sharing != NodeMode.TIME_SLICING:
        return [f"{rw}: time-sliced replica on a node without time-slicing"]
    return []


def _whole_share(c: _GpuCheck, r: ReplicaPlacement, d: Demand, rw: str) -> list[str]:
    return (
        [f"{rw}: whole GPU does not hold {d.memory_bytes}"] if c.model.memory_bytes < d.memory_bytes else []
    )


def _mps_clients_within_n(c: _GpuCheck) -> list[str]:
    n = c.n
    if c.mode == GpuMode.MPS and n and len(c.g.replicas) > n:
        return [f"{c.where}: {len(c.g.replicas)} MPS clients > {n}"]
    return []


def _time_slicing_within_limits(c: _GpuCheck) -> list[str]:
    """Replicas per GPU, BestEffort only, estimates within memory x oversubscription (rule 3)."""
    g = c.g
    if c.mode != GpuMode.TIME_SLICING:
        return []
    v: list[str] = []
    n = c.n
    if n and len(g.replicas) > n:
        v.append(f"{c.where}: {len(g.replicas)} time-sliced replicas > {n}")
    limit = c.model.memory_bytes * c.policy.memory_oversubscription_percent // 100
    if any(Tier(r.qos) != Tier.BEST_EFFORT for r in g.replicas):
        v.append(f"{c.where}: non-BestEffort replica on a time-sliced GPU")
    ts_sum = sum(
        c.demand[r.deployment].memory_bytes
        for r in g.replicas
        if Mechanism(r.share.mechanism) == Mechanism.TIME_SLICING and r.deployment in c.demand
    )
    if ts_sum > limit:
        v.append(f"{c.where}: time-sliced estimates {ts_sum} exceed {limit}")
    return v


def _mig_owners_match(c: _GpuCheck) -> list[str]:
    """Every MIG instance owner once, and exactly the GPU's replicas."""
    g = c.g
    if c.mode != GpuMode.MIG:
        return []
    v: list[str] = []
    owners = [(i.deployment, i.ordinal) for i in g.mig_instances if i.deployment is not None]
    if len(owners) != len(set(owners)):
        v.append(f"{c.where}: a MIG instance owner appears twice")
    names = {(r.deployment, r.ordinal) for r in g.replicas}
    if set(owners) != names:
        v.append(f"{c.where}: MIG instance owners differ from the GPU's replicas")
    return v


_GpuRule = Callable[[_GpuCheck], list[str]]
_ReplicaRule = Callable[[_GpuCheck, ReplicaPlacement, Demand, str], list[str]]
_GPU_RULES: tuple[_GpuRule, ...] = (_segment_holds_nothing, _free_holds_nothing, _whole_gpu_holds_one)
_REPLICA_RULES: tuple[_ReplicaRule, ...] = (
    _matches_demand,
    _mechanism_fits_gpu,
    _tier_may_use,
    _pool_allows,
    _explicit_share_honoured,
    _share_holds_estimate,
)
_SHARE_RULES: dict[str, _ReplicaRule] = {
    Mechanism.MIG: _mig_share,
    Mechanism.MPS: _mps_share,
    Mechanism.TIME_SLICING: _time_sliced_share,
    Mechanism.EXCLUSIVE: _whole_share,
}
_GPU_COUNT_RULES: tuple[_GpuRule, ...] = (
    _mps_clients_within_n,
    _time_slicing_within_limits,
    _mig_owners_match,
)


# ------------------------------------------------------------------------------------------------ the whole plan


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
        if ords & un or len(ords | un) != d.replicas or len(dp.unplaced) != len(un):
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
        if any(GpuMode(g.mode) != GpuMode.RESERVED for g in gl):
            v.append(f"reservation {res.name}: a GPU is not in Reserved mode")
        if len(gl) > res.gpus:
            v.append(f"reservation {res.name}: {len(gl)} GPUs > {res.gpus}")
        borrowed = [g for g in gl if g.replicas]
        if borrowed and res.lend_to != Tier.BEST_EFFORT.value:
            v.append(f"reservation {res.name}: lent although lendTo is not BestEffort")
        if len(borrowed) > max(0, res.gpus - res.claimed):
            v.append(f"reservation {res.name}: {len(borrowed)} GPUs lent although {res.claimed} are claimed")
        for g in borrowed:
            for r in g.replicas:
                if Tier(r.qos) != Tier.BEST_EFFORT:
                    v.append(f"reservation {res.name}: {r.qos} replica {r.deployment}#{r.ordinal} on it")
    for seg in policy.segments:
        gl = [g for g in plan.gpus if g.segment == seg.name]
        if len(gl) > seg.gpus:
            v.append(f"segment {seg.name}: {len(gl)} GPUs > {seg.gpus}")
        for g in gl:
            if g.replicas or GpuMode(g.mode) != GpuMode.SEGMENT:
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
    allowed = set(policy.allowed_mechanisms) & TIER_MECHANISMS[Tier(d.tier)]
    if d.share is not None and d.share.mechanism:
        allowed &= {d.share.mechanism}
    if d.share is not None and d.share.mig_profile:
        allowed &= {Mechanism.MIG}
    est = d.memory_bytes
    geo = geometry(model.key)
    mig_fit = geo is not None and any(
        (p.memory_bytes >= est and not p.media_extensions and (not d.share or not d.share.mig_profile))
        or (d.share is not None and d.share.mig_profile == p.name and p.memory_bytes >= est)
        for p in model.mig_profiles
    )
    sharing = NodeMode.NONE if node_all_free else NodeMode(np.sharing)
    if Mechanism.MIG in allowed and mig_fit and sharing != NodeMode.MPS:
        return True
    if Mechanism.EXCLUSIVE in allowed and est <= model.memory_bytes and sharing == NodeMode.NONE:
        return True
    if Mechanism.MPS in allowed and sharing == NodeMode.MPS and np.replicas_per_gpu:
        return mps_cap(model.memory_mib, np.replicas_per_gpu) >= est
    if Mechanism.MPS in allowed and node_all_free:
        n = min(policy.mps_max_clients_per_gpu, model.mps_max_clients)
        if any(mps_cap(model.memory_mib, k) >= est for k in range(2, n + 1)):
            return True
    if Mechanism.TIME_SLICING in allowed and (sharing == NodeMode.TIME_SLICING or node_all_free):
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
    replica that stays where it is (stability) is not judged again. Not checked in a pool with tenants, where
    a tenant's ceiling may keep a replica off a free GPU."""
    v: list[str] = []
    if policy.tenants:  # a tenant's ceiling can forbid the free GPU (reserved GPUs are outside quotas)
        return v
    running = {(c.deployment, c.ordinal, c.node, c.gpu_index, c.mechanism) for c in current}
    node_plan = {n.name: n for n in plan.nodes}
    busy_nodes = {g.node for g in plan.gpus if GpuMode(g.mode) != GpuMode.FREE}
    all_free = {n.name: n.name not in busy_nodes for n in plan.nodes}
    free = [
        g
        for g in plan.gpus
        if GpuMode(g.mode) == GpuMode.FREE
        and inv_node.get(g.node) is not None
        and inv_node[g.node].schedulable
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
    """A higher-tier replica left unplaced for capacity while a lower tier (of the same tenant, in a pool with
    tenants) holds a share it could take."""
    v: list[str] = []
    waiting = [
        (dp, u)
        for dp in plan.deployments
        for u in dp.unplaced
        if u.reason in (UnplacedReason.INSUFFICIENT_CAPACITY, UnplacedReason.RESERVED_CAPACITY)
        and Tier(dp.qos) != Tier.BEST_EFFORT
    ]
    if not waiting:
        return v
    for dp, u in waiting:
        d = demand[dp.deployment]
        rank = TIER_RANK[d.tier]
        mechs = TIER_MECHANISMS[Tier(d.tier)] & set(policy.allowed_mechanisms)
        for g in plan.gpus:
            if g.mode in (GpuMode.RESERVED, GpuMode.SEGMENT):
                continue
            if any(r.deployment == d.deployment for r in g.replicas):
                continue
            model = gpu_by_key(g.product)
            for r in g.replicas:
                if policy.tenants and demand[r.deployment].tenant != d.tenant:
                    continue  # across tenants, quotas decide (docs/tenants.md); tier order within a tenant
                if TIER_RANK[r.qos] > rank and _could_take(r, model, d, mechs):
                    v.append(
                        f"{d.tier} {dp.deployment}#{u.ordinal} unplaced while {r.qos} "
                        f"{r.deployment}#{r.ordinal} holds a share it could use on {g.node}/{g.index}"
                    )
                    break
    return v


def _could_take(r: ReplicaPlacement, model: GpuModel, d: Demand, mechs: AbstractSet[str]) -> bool:
    """Whether a replica of ``d`` could use the share ``r`` holds (not a time-sliced one): it holds the
    estimate, its mechanism is allowed for ``d`` and honours ``d``'s explicit share."""
    mech = Mechanism(r.share.mechanism)
    if mech == Mechanism.TIME_SLICING:
        return False
    if mech == Mechanism.EXCLUSIVE:
        holds = model.memory_bytes >= d.memory_bytes and not r.borrowed
    else:
        holds = r.share.memory_bytes >= d.memory_bytes
    if not holds or mech not in mechs:
        return False
    if d.share is None:
        return True
    if d.share.mechanism not in (None, mech):
        return False
    return mech != Mechanism.MIG or not d.share.mig_profile or d.share.mig_profile == r.share.mig_profile


def _check_moves(
    plan: Plan,
    current: Iterable[CurrentPlacement],
    placed: dict[tuple[str, int], tuple[GpuPlan, ReplicaPlacement]],
    demand: dict[str, Demand],
) -> list[str]:
    v: list[str] = []
    evicted = {(e.deployment, e.ordinal) for e in plan.pool.evictions}
    gpus = {(g.node, g.index) for g in plan.gpus}
    wanted = set(placed) | {(dp.deployment, u.ordinal) for dp in plan.deployments for u in dp.unplaced}
    v += _check_kept(current, wanted, demand)
    for c in current:
        d = demand.get(c.deployment)
        k = (c.deployment, c.ordinal)
        if d is None or k not in wanted or (c.node, c.gpu_index) not in gpus:
            continue
        now = placed.get(k)
        same = (
            now is not None
            and now[0].node == c.node
            and now[0].index == c.gpu_index
            and now[1].share.mechanism == c.mechanism
            and (c.mechanism != Mechanism.MIG or now[1].share.mig_profile == c.mig_profile)
        )
        if not same and k not in evicted:
            v.append(
                f"running replica {c.deployment}#{c.ordinal} moved or yielded without an eviction record"
            )
        if now is not None and now[1].moved == same:
            v.append(f"replica {c.deployment}#{c.ordinal}: moved flag wrong")
    return v


def _check_kept(
    current: Iterable[CurrentPlacement], wanted: set[tuple[str, int]], demand: dict[str, Demand]
) -> list[str]:
    """A deployment keeps the ordinals of its running replicas (as many as it still wants): a scale-down
    removes running replicas, it never renumbers them (``scaledown.py``)."""
    running: dict[str, set[int]] = {}
    for c in current:
        if c.deployment in demand:
            running.setdefault(c.deployment, set()).add(c.ordinal)
    v: list[str] = []
    for dep, ordinals in sorted(running.items()):
        kept = sum(1 for o in ordinals if (dep, o) in wanted)
        if kept < min(len(ordinals), demand[dep].replicas):
            v.append(f"deployment {dep}: keeps {kept} of its {len(ordinals)} running ordinals")
    return v
