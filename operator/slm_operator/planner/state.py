"""Mutable working state shared by the heuristic and the exact solver.

``build_context`` turns the frozen inputs into nodes, GPUs, deployments and replicas (all sorted, so nothing
depends on dict or set iteration order of the caller), chooses the GPUs of reservations and segments, and
classifies the current placements into replicas that stay (pinned) and replicas that must move (evictions).
The solvers then attach replicas to GPUs with :func:`attach` and ``assemble.build_plan`` turns the result into
a :class:`~slm_operator.planner.model.Plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.catalog import GpuModel, gpu_by_key
from slm_operator.planner.mig import Counts, MigGeometry, fitting_profiles, geometry
from slm_operator.planner.model import (
    CurrentPlacement,
    Demand,
    GpuInventory,
    NodeInventory,
    PoolPolicy,
)
from slm_operator.planner.scaledown import replica_ordinals
from slm_operator.planner.vocabulary import (
    BEST_EFFORT,
    DISRUPTION,
    EXCLUSIVE,
    MIG,
    MPS,
    NODE_FREE,
    NODE_MPS,
    NODE_NONE,
    NODE_TIME_SLICING,
    ROLE_POOL,
    ROLE_RESERVED,
    ROLE_SEGMENT,
    TIER_MECHANISMS,
    TIER_RANK,
    TIME_SLICING,
    EvictionReason,
    GpuRole,
    Mechanism,
    NodeMode,
    Tier,
    UnplacedReason,
)

MiB = 1 << 20


class Dep:
    __slots__ = (
        "demand",
        "gib",
        "key",
        "mech",
        "order",
        "profile",
        "rank",
        "replicas",
        "reps",
        "size",
        "tier",
        "uid",
    )

    def __init__(self, uid: int, d: Demand) -> None:
        self.uid = uid
        self.key = d.deployment
        self.tier = Tier(d.tier)
        #: position of the tier in ``TIER_ORDER`` (sort keys and per-tier counters)
        self.rank = TIER_RANK[d.tier]
        self.size = d.memory_bytes
        self.gib = round(d.memory_bytes / (1 << 30), 2)
        self.replicas = d.replicas
        self.mech: Mechanism | None = Mechanism(d.share.mechanism) if d.share and d.share.mechanism else None
        self.profile: str | None = d.share.mig_profile if d.share else None
        if self.profile is not None:
            self.mech = MIG
        self.order = d.order_key
        self.demand = d
        self.reps: list[Rep] = []

    def class_key(self) -> tuple[int, int, str | None, str | None]:
        return (self.rank, self.size, self.mech, self.profile)


class Rep:
    __slots__ = (
        "borrowed",
        "cur",
        "cur_gpu",
        "dep",
        "evict_msg",
        "evicted",
        "gpu",
        "mech",
        "ordinal",
        "out",
        "pinned",
        "prof",
        "tborrow",
        "unplaced",
    )

    def __init__(self, dep: Dep, ordinal: int) -> None:
        self.dep = dep
        self.ordinal = ordinal
        self.gpu: Gpu | None = None
        self.mech: Mechanism | None = None
        self.prof = -1
        self.cur: CurrentPlacement | None = None
        self.cur_gpu: Gpu | None = None
        self.pinned = False
        self.evicted: EvictionReason | None = None
        self.evict_msg = ""
        self.unplaced: tuple[UnplacedReason, str] | None = None
        self.borrowed = False
        #: borrows beyond its tenant's guaranteed quota (pools with tenants; ``tenants.TenantBook.classify``)
        self.tborrow = False
        self.out: tuple[str, str] | None = None  # (share summary, "node/gpu") for the plan output

    def sort_key(self) -> tuple[int, str, str, int]:
        return (self.dep.rank, self.dep.order, self.dep.key, self.ordinal)


class Node:
    __slots__ = (
        "deps",
        "fixed",
        "free",
        "gpus",
        "indexed_as",
        "inv",
        "mode",
        "n",
        "name",
        "pos",
        "schedulable",
        "used",
        "whole",
    )

    def __init__(self, pos: int, inv: NodeInventory) -> None:
        self.name = inv.name
        self.pos = pos
        self.inv = inv
        self.schedulable = inv.schedulable
        self.gpus: list[Gpu] = []
        self.mode: NodeMode = NODE_FREE
        self.n = 0  # MPS clients or time-slicing replicas per GPU
        self.fixed = False  # mode pinned by running replicas
        self.whole = 0  # GPUs that need node sharing None (Exclusive, Reserved, Segment)
        self.used = 0  # GPUs holding replicas
        self.deps: dict[int, int] = {}
        #: free pool GPUs by model key, ascending index (only on schedulable nodes)
        self.free: dict[str, list[Gpu]] = {}
        #: capacity index keys the node is filed under
        self.indexed_as: list[tuple[Any, ...]] = []


class Gpu:
    __slots__ = (
        "claimed",
        "deps",
        "free_inst",
        "frozen",
        "geo",
        "gid",
        "group",
        "index",
        "indexed_as",
        "inv",
        "inv_counts",
        "key",
        "lendable",
        "mem",
        "mem_mib",
        "mig_state",
        "mode",
        "model",
        "node",
        "reps",
        "role",
        "ts_used",
        "warm",
    )

    def __init__(self, gid: int, node: Node, inv_gpu: GpuInventory, model: GpuModel) -> None:
        self.gid = gid
        self.node = node
        self.index = inv_gpu.index
        self.inv = inv_gpu
        self.model = model
        self.key = model.key
        self.geo: MigGeometry | None = geometry(model.key)
        self.mem = model.memory_bytes
        self.mem_mib = model.memory_mib
        self.role: GpuRole = ROLE_POOL
        self.group: str | None = None
        self.lendable = False
        self.claimed = False
        self.mode: Mechanism | None = None  # None: free
        self.reps: list[Rep] = []
        self.mig_state = 0  # MIG layout state of the used instances
        self.frozen: Counts | None = None  # MIG layout that must not change
        self.free_inst: list[int] = []  # free instances per profile of a frozen layout
        self.ts_used = 0
        self.deps: dict[int, int] = {}
        self.inv_counts: Counts | None = None  # inventory MIG layout when legal
        #: the deployment this GPU's configured share is kept warm for (``Demand.warm``), if any
        self.warm: str | None = None
        #: capacity index entry the GPU is filed under
        self.indexed_as: tuple[Any, ...] | None = None

    @property
    def mig_capable(self) -> bool:
        return self.geo is not None


def mps_cap(gpu_mem_mib: int, n: int) -> int:
    """Per-client pinned-memory cap in bytes with ``n`` MPS clients per GPU (whole MiB, as the daemon sets it)."""
    return (gpu_mem_mib // n) * MiB


def mps_nmax(mem_mib: int, size: int, limit: int) -> int:
    """Most MPS clients per GPU whose equal caps each hold ``size`` (0 when fewer than 2)."""
    n = min(limit, (mem_mib * MiB) // size)
    while n >= 2 and mps_cap(mem_mib, n) < size:
        n -= 1
    return n if n >= 2 else 0


@dataclass
class Context:
    policy: PoolPolicy
    nodes: list[Node]
    gpus: list[Gpu]
    deps: list[Dep]
    reps: list[Rep]  # every desired replica, priority order
    node_by_name: dict[str, Node]
    gpu_at: dict[tuple[str, int], Gpu]
    models: dict[str, GpuModel]
    ts_factor: int  # memory oversubscription percent for BestEffort on time-sliced GPUs
    allowed: frozenset[str]
    #: replicas whose current placement could not be kept, with reason; filled by classify_current
    displaced: list[Rep] = field(default_factory=list)
    #: current placements that refer to no desired replica (scaled down or deleted)
    dropped: int = 0
    #: running replicas by the gid of their current GPU
    running: dict[int, list[Rep]] = field(default_factory=dict)
    #: per-class explanation fragments (assemble)
    text_cache: dict[object, list[str]] = field(default_factory=dict)
    #: equal output shares are one object (assemble)
    share_cache: dict[object, Any] = field(default_factory=dict)
    #: idle GPUs whose current configuration already gives a share: (MIG, model, profile), (MPS, model) or
    #: (TimeSlicing, model) -> GPUs by gid; entries may be stale (checked on use)
    configured: dict[tuple[Any, ...], list[Gpu]] = field(default_factory=dict)
    #: some GPU is kept warm for a deployment
    any_warm: bool = False

    def ts_capacity(self, gpu: Gpu) -> int:
        return gpu.mem * self.ts_factor // 100

    def release(self) -> None:
        """Break the state graph's reference cycles (replica <-> GPU <-> node, deployment <-> replica), so that
        reference counting frees a context as soon as it is dropped. Call it when nothing reads the context any
        more. A pass runs with the cyclic collector paused and hands what it leaves to the oldest generation
        (``gc_pause.py``), where a cyclic context would wait for a full collection: in a long-running operator
        that is megabytes per pass, for as long as no full collection comes."""
        for gpu in self.gpus:
            gpu.reps = []
        for node in self.nodes:
            node.gpus = []
            node.free = {}
        for dep in self.deps:
            dep.reps = []
        self.running = {}
        self.configured = {}


def attach(ctx: Context, rep: Rep, gpu: Gpu, mech: Mechanism, prof: int = -1) -> None:
    """Put ``rep`` on ``gpu`` with mechanism ``mech`` (MIG profile index ``prof``). No legality checks."""
    rep.gpu = gpu
    rep.mech = mech
    rep.prof = prof
    node = gpu.node
    if not gpu.reps:
        node.used += 1
    gpu.reps.append(rep)
    uid = rep.dep.uid
    gpu.deps[uid] = gpu.deps.get(uid, 0) + 1
    node.deps[uid] = node.deps.get(uid, 0) + 1
    if gpu.role == ROLE_POOL:
        if mech == MIG:
            gpu.mode = MIG
            assert gpu.geo is not None
            gpu.mig_state = gpu.geo.add[gpu.mig_state][prof]
            if gpu.frozen is not None:
                gpu.free_inst[prof] -= 1
        elif mech == MPS:
            gpu.mode = MPS
        elif mech == TIME_SLICING:
            gpu.mode = TIME_SLICING
            gpu.ts_used += rep.dep.size
        else:
            gpu.mode = EXCLUSIVE
            node.whole += 1
    else:
        gpu.mode = EXCLUSIVE
        rep.borrowed = gpu.role == ROLE_RESERVED


def held_bytes(rep: Rep, gpu: Gpu) -> int:
    """GPU memory the share of a placed replica holds (MIG usable memory, MPS cap, time-slicing estimate, or
    the whole GPU): what its removal frees (``scaledown.py``)."""
    if rep.mech == MIG and gpu.geo is not None and rep.prof >= 0:
        return gpu.geo.profiles[rep.prof].memory_bytes
    if rep.mech == MPS and gpu.node.n >= 2:
        return mps_cap(gpu.mem_mib, gpu.node.n)
    if rep.mech == TIME_SLICING:
        return rep.dep.size
    return gpu.mem


def detach(ctx: Context, rep: Rep) -> Gpu:
    """Take ``rep`` off its GPU (the reverse of :func:`attach`)."""
    gpu = rep.gpu
    assert gpu is not None
    node = gpu.node
    gpu.reps.remove(rep)
    uid = rep.dep.uid
    gpu.deps[uid] -= 1
    if not gpu.deps[uid]:
        del gpu.deps[uid]
    node.deps[uid] -= 1
    if not node.deps[uid]:
        del node.deps[uid]
    if rep.mech == MIG:
        geo = gpu.geo
        assert geo is not None
        counts = list(geo.states[gpu.mig_state])
        counts[rep.prof] -= 1
        gpu.mig_state = geo.state_id[tuple(counts)]
        if gpu.frozen is not None:
            gpu.free_inst[rep.prof] += 1
    elif rep.mech == TIME_SLICING:
        gpu.ts_used -= rep.dep.size
    elif rep.mech == EXCLUSIVE and gpu.role == ROLE_POOL:
        node.whole -= 1
    if not gpu.reps:
        node.used -= 1
        if gpu.role == ROLE_POOL and gpu.frozen is None:
            gpu.mode = None
            gpu.mig_state = 0
        elif gpu.role != ROLE_POOL:
            gpu.mode = None
    rep.gpu = None
    rep.mech = None
    rep.prof = -1
    rep.borrowed = False
    return gpu


# ------------------------------------------------------------------------------------------------ building


def build_context(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
) -> Context:
    models: dict[str, GpuModel] = {}
    node_list: list[Node] = []
    gpu_list: list[Gpu] = []
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError("duplicate node name in the inventory")
    for pos, inv in enumerate(sorted(nodes, key=lambda n: n.name)):
        node = Node(pos, inv)
        node_list.append(node)
        for g in sorted(inv.gpus, key=lambda g: g.index):
            try:
                model = models.get(g.model) or gpu_by_key(g.model)
            except KeyError:
                raise ValueError(f"node {inv.name} GPU {g.index}: unknown GPU model {g.model!r}") from None
            models[g.model] = model
            gpu = Gpu(len(gpu_list), node, g, model)
            gpu_list.append(gpu)
            node.gpus.append(gpu)
            if gpu.geo is not None and g.mig_enabled:
                try:
                    counts = gpu.geo.counts_of([i.profile for i in g.mig_instances])
                except KeyError:
                    counts = None
                if counts is not None and gpu.geo.state_of(counts) >= 0:
                    gpu.inv_counts = counts
    keys = [d.deployment for d in demands]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate deployment key in the demands")
    ordered = sorted(demands, key=lambda d: (TIER_RANK[d.tier], d.order_key, d.deployment))
    deps = [Dep(i, d) for i, d in enumerate(ordered)]
    current_list = sorted(current, key=lambda c: (c.deployment, c.ordinal, c.node, c.gpu_index))
    ordinals = _ordinals(policy, nodes, demands, current_list)
    reps: list[Rep] = []
    for dep in deps:
        for o in ordinals.get(dep.key) or range(dep.replicas):
            r = Rep(dep, o)
            dep.reps.append(r)
            reps.append(r)
    ctx = Context(
        policy=policy,
        nodes=node_list,
        gpus=gpu_list,
        deps=deps,
        reps=reps,
        node_by_name={n.name: n for n in node_list},
        gpu_at={(g.node.name, g.index): g for g in gpu_list},
        models=models,
        ts_factor=policy.memory_oversubscription_percent,
        allowed=frozenset(Mechanism(m) for m in policy.allowed_mechanisms),
    )
    _bind_current(ctx, current_list)
    _select_groups(ctx)
    _classify_current(ctx)
    for node in ctx.nodes:
        _refresh_free(node)
    _mark_warm(ctx)
    _index_configured(ctx)
    return ctx


def _mark_warm(ctx: Context) -> None:
    """Mark the GPUs of each deployment's warm shares (deployments in priority order; the first wins)."""
    for dep in ctx.deps:
        for w in dep.demand.warm:
            g = ctx.gpu_at.get((w.node, w.gpu_index))
            if g is not None and g.role == ROLE_POOL and g.warm is None:
                g.warm = dep.key
                ctx.any_warm = True


def _index_configured(ctx: Context) -> None:
    """Index the idle pool GPUs whose configuration already gives a share (``Context.configured``)."""
    for g in ctx.gpus:
        if g.role != ROLE_POOL or g.reps or g.frozen is not None or not g.node.schedulable:
            continue
        sharing = g.node.inv.sharing
        if g.inv_counts is not None and sharing != "MPS":
            for p, count in enumerate(g.inv_counts):
                if count:
                    ctx.configured.setdefault((MIG, g.key, p), []).append(g)
        elif sharing == "MPS" and not g.inv.mig_enabled:
            ctx.configured.setdefault((MPS, g.key), []).append(g)
        elif sharing == "TimeSlicing" and not g.inv.mig_enabled:
            ctx.configured.setdefault((TIME_SLICING, g.key), []).append(g)


def _refresh_free(node: Node) -> None:
    node.free = {}
    if not node.schedulable:
        return
    for g in node.gpus:
        if g.role == ROLE_POOL and not g.reps and g.frozen is None:
            node.free.setdefault(g.key, []).append(g)


def _ordinals(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: list[CurrentPlacement],
) -> dict[str, tuple[int, ...]]:
    """The ordinals of each deployment's replicas when a running replica has an ordinal beyond the wanted
    count (a scale-down, or a deployment whose ordinals have gaps): ``scaledown.replica_ordinals``; else
    empty (every deployment has ordinals 0..replicas-1)."""
    wanted = {d.deployment: d.replicas for d in demands}
    if all(c.ordinal < wanted.get(c.deployment, 0) for c in current if c.deployment in wanted):
        return {}
    return replica_ordinals(policy, nodes, demands, current)


def _bind_current(ctx: Context, current: list[CurrentPlacement]) -> None:
    by_rep = {(r.dep.key, r.ordinal): r for r in ctx.reps}
    seen: set[tuple[str, int]] = set()
    for c in current:
        key = (c.deployment, c.ordinal)
        rep = by_rep.get(key)
        if rep is None or key in seen:
            ctx.dropped += 1
            continue
        seen.add(key)
        rep.cur = c
        rep.cur_gpu = ctx.gpu_at.get((c.node, c.gpu_index))
        if rep.cur_gpu is not None:
            ctx.running.setdefault(rep.cur_gpu.gid, []).append(rep)


def _severity(ctx: Context, gpu: Gpu, group: str) -> tuple[int, int]:
    """How disruptive it is to give ``gpu`` to a reservation or segment: (worst tier class, replicas)."""
    worst = 0
    count = 0
    for r in _running_on(ctx, gpu):
        if (
            r.dep.tier is BEST_EFFORT
            and r.cur is not None
            and r.cur.mechanism == "Exclusive"
            and gpu.inv.assigned_to == group
        ):
            continue  # a borrower of this very reservation
        worst = max(worst, DISRUPTION[r.dep.tier])
        count += 1
    node = gpu.node
    if node.inv.sharing != "None":
        for other in node.gpus:
            if other is gpu:
                continue
            for r in _running_on(ctx, other):
                if r.cur is not None and r.cur.mechanism in ("MPS", "TimeSlicing"):
                    worst = max(worst, DISRUPTION[r.dep.tier])
                    count += 1
    return worst, count


def _running_on(ctx: Context, gpu: Gpu) -> list[Rep]:
    return ctx.running.get(gpu.gid, [])


def _select_groups(ctx: Context) -> None:
    """Choose the GPUs of each reservation, then each segment (policy order), least disruptive first."""
    groups: list[tuple[str, GpuRole, int]] = [
        (r.name, ROLE_RESERVED, r.gpus) for r in ctx.policy.reservations
    ]
    groups += [(s.name, ROLE_SEGMENT, s.gpus) for s in ctx.policy.segments]
    for name, role, want in groups:
        if want <= 0:
            continue
        cands = [g for g in ctx.gpus if g.role == ROLE_POOL and g.node.schedulable]
        cands.sort(
            key=lambda g: (
                *_severity(ctx, g, name),
                0 if g.inv.assigned_to == name else 1,
                -g.mem,
                -g.node.pos,
                -g.index,
            )
        )
        for g in cands[:want]:
            g.role = role
            g.group = name
            g.node.whole += 1
            g.node.mode = NODE_NONE
    for res in ctx.policy.reservations:
        mine = [g for g in ctx.gpus if g.role == ROLE_RESERVED and g.group == res.name]
        # claimed GPUs: those without a borrower first, so that running borrowers stay where they can
        mine.sort(key=lambda g: (1 if ctx.running.get(g.gid) else 0, g.node.pos, g.index))
        for i, g in enumerate(mine):
            g.claimed = i < res.claimed
            g.lendable = res.lend_to == "BestEffort" and not g.claimed


def _classify_current(ctx: Context) -> None:
    """Pin the running replicas that can stay; the others become displaced (re-placed by the solver)."""
    repartition = ctx.policy.may_repartition
    running = [r for r in ctx.reps if r.cur is not None]
    running.sort(key=Rep.sort_key)
    mps_n = _running_mps_clients(ctx, running)
    for r in running:
        c = r.cur
        gpu = r.cur_gpu
        assert c is not None
        if gpu is None:
            _displace(ctx, r, None, f"GPU {c.node}/{c.gpu_index} is no longer in the pool")
            continue
        mech = Mechanism(c.mechanism)
        if _leaves_for_group(ctx, r, gpu, mech) or not _mechanism_still_allowed(ctx, r, mech):
            continue
        prof = -1
        if mech == MIG:
            kept = _kept_mig_profile(ctx, r, gpu)
            if kept is None:
                continue
            prof = kept
        if _can_pin(ctx, r, gpu, mech, prof, mps_n, repartition):
            _pin(ctx, r, gpu, mech, prof, mps_n, repartition)


def _running_mps_clients(ctx: Context, running: list[Rep]) -> dict[int, int]:
    """Per node position: the MPS clients per GPU the running replicas keep (the node's current value, or the
    most clients whose cap still holds the largest running MPS client). The current value gives way to the
    latter when the replicas counted there do not fit it (more clients on a GPU, or one larger than its cap)
    and the latter does: they are not running under that config but on their way to the node, which gets a
    new one (a consolidation move onto a node that was emptied for it, docs/planner.md §4.9)."""
    mps_sizes: dict[int, list[int]] = {}  # node position -> estimates of its running MPS clients
    clients: dict[int, int] = {}  # gid -> running MPS clients
    for r in running:
        if r.cur_gpu is not None and r.cur is not None and r.cur.mechanism == "MPS":
            mps_sizes.setdefault(r.cur_gpu.node.pos, []).append(r.dep.size)
            clients[r.cur_gpu.gid] = clients.get(r.cur_gpu.gid, 0) + 1
    mps_n: dict[int, int] = {}
    for node in ctx.nodes:
        inv = node.inv
        limit = min([ctx.policy.mps_max_clients_per_gpu] + [g.model.mps_max_clients for g in node.gpus])
        sizes = mps_sizes.get(node.pos)
        fitted = min(mps_nmax(g.mem_mib, max(sizes), limit) for g in node.gpus) if sizes else 0
        if inv.sharing == "MPS" and inv.sharing_replicas and inv.sharing_replicas >= 2:
            n = min(inv.sharing_replicas, limit)
            most = max((clients.get(g.gid, 0) for g in node.gpus), default=0)
            fits = not sizes or (most <= n and all(mps_cap(g.mem_mib, n) >= max(sizes) for g in node.gpus))
            mps_n[node.pos] = n if fits or fitted < most else fitted
        elif sizes:
            mps_n[node.pos] = fitted or 2
    return mps_n


def _leaves_for_group(ctx: Context, r: Rep, gpu: Gpu, mech: Mechanism) -> bool:
    """True when the replica's GPU now belongs to a reservation or segment: the replica is displaced, or, as a
    borrower of a lendable reserved GPU, left to be re-decided after packing (it prefers to stay)."""
    role = gpu.role
    if role == ROLE_POOL:
        return False
    where = f"{gpu.node.name}/{gpu.index}"
    if role == ROLE_SEGMENT:
        _displace(ctx, r, EvictionReason.SEGMENT_CAPACITY, f"GPU {where} now belongs to segment {gpu.group}")
        return True
    best_effort = r.dep.tier is BEST_EFFORT
    if best_effort and mech == EXCLUSIVE and gpu.lendable:
        return True  # a borrower: re-decided after packing
    if gpu.claimed and best_effort:
        _displace(ctx, r, EvictionReason.RESERVATION_CLAIMED, f"reservation {gpu.group} claimed GPU {where}")
    else:
        _displace(ctx, r, EvictionReason.RESERVED_CAPACITY, f"GPU {where} is reserved for {gpu.group}")
    return True


def _mechanism_still_allowed(ctx: Context, r: Rep, mech: Mechanism) -> bool:
    """The pool, the tier and the share override still allow the running mechanism; if not, displaced."""
    dep = r.dep
    if mech in ctx.allowed and mech in TIER_MECHANISMS[dep.tier] and not (dep.mech and dep.mech != mech):
        return True
    _displace(ctx, r, EvictionReason.MECHANISM_NOT_ALLOWED, f"{mech} is no longer allowed for this replica")
    return False


def _kept_mig_profile(ctx: Context, r: Rep, gpu: Gpu) -> int | None:
    """The index of the running MIG profile when the GPU has it, the override asks for it and it still holds
    the estimate; else None (displaced)."""
    c = r.cur
    assert c is not None
    dep = r.dep
    geo = gpu.geo
    if geo is None or c.mig_profile is None or c.mig_profile not in geo.index:
        _displace(
            ctx,
            r,
            EvictionReason.LAYOUT_CONFLICT,
            f"GPU {gpu.node.name}/{gpu.index} has no MIG profile {c.mig_profile}",
        )
        return None
    prof = geo.index[c.mig_profile]
    if dep.profile is not None and dep.profile != c.mig_profile:
        _displace(
            ctx, r, EvictionReason.MECHANISM_NOT_ALLOWED, f"the share override asks for MIG {dep.profile}"
        )
        return None
    if geo.profiles[prof].memory_bytes < dep.size:
        _displace(
            ctx, r, EvictionReason.SHARE_NO_LONGER_FITS, f"MIG {c.mig_profile} no longer holds the estimate"
        )
        return None
    return prof


def _displace(ctx: Context, r: Rep, reason: EvictionReason | None, msg: str) -> None:
    r.evicted = reason
    r.evict_msg = msg
    ctx.displaced.append(r)


def _can_pin(
    ctx: Context, r: Rep, gpu: Gpu, mech: Mechanism, prof: int, mps_n: dict[int, int], repartition: bool
) -> bool:
    """Whether the running replica can stay on its GPU given what was pinned before it; if not, displaced."""
    if mech == EXCLUSIVE:
        return _can_stay_whole(ctx, r, gpu)
    if mech == MIG:
        return _can_keep_mig(ctx, r, gpu, prof, repartition)
    if mech == MPS:
        return _can_keep_mps(ctx, r, gpu, mps_n.get(gpu.node.pos, 0))
    return _can_keep_time_slicing(ctx, r, gpu)


def _can_stay_whole(ctx: Context, r: Rep, gpu: Gpu) -> bool:
    if gpu.reps or gpu.node.mode in (NODE_MPS, NODE_TIME_SLICING) or gpu.frozen is not None:
        _displace(
            ctx,
            r,
            EvictionReason.LAYOUT_CONFLICT,
            f"GPU {gpu.node.name}/{gpu.index} can not stay a whole GPU",
        )
        return False
    if r.dep.size > gpu.mem:
        _displace(
            ctx,
            r,
            EvictionReason.SHARE_NO_LONGER_FITS,
            f"GPU {gpu.node.name}/{gpu.index} no longer holds the estimate",
        )
        return False
    return True


def _can_keep_mig(ctx: Context, r: Rep, gpu: Gpu, prof: int, repartition: bool) -> bool:
    """A free instance of the frozen layout or, without one, room in the layout built so far."""
    if gpu.node.mode == NODE_MPS or (gpu.mode not in (None, MIG)):
        _displace(ctx, r, EvictionReason.LAYOUT_CONFLICT, f"GPU {gpu.node.name}/{gpu.index} can not keep MIG")
        return False
    geo = gpu.geo
    assert geo is not None
    if gpu.frozen is None and not repartition:
        _freeze_running_layout(ctx, gpu, geo)
    if gpu.frozen is not None:
        if gpu.free_inst[prof] <= 0:
            _displace(
                ctx,
                r,
                EvictionReason.LAYOUT_CONFLICT,
                f"GPU {gpu.node.name}/{gpu.index}: no free MIG {geo.profiles[prof].name} instance",
            )
            return False
        return True
    if geo.add[gpu.mig_state][prof] < 0:
        _displace(
            ctx,
            r,
            EvictionReason.LAYOUT_CONFLICT,
            f"GPU {gpu.node.name}/{gpu.index}: MIG {geo.profiles[prof].name} does not fit the layout",
        )
        return False
    return True


def _freeze_running_layout(ctx: Context, gpu: Gpu, geo: MigGeometry) -> None:
    """Freeze the running layout: the inventory layout when it holds every running profile here, else the
    running profiles alone when they form a legal layout (if not, none is frozen: the higher-priority
    replicas are kept by the layout checks)."""
    want = [0] * len(geo.profiles)
    for o in _running_on(ctx, gpu):
        prof_name = o.cur.mig_profile if o.cur is not None and o.cur.mechanism == "MIG" else None
        if prof_name is not None and prof_name in geo.index:
            want[geo.index[prof_name]] += 1
    inv = gpu.inv_counts
    frozen: Counts | None
    if inv is not None and all(a <= b for a, b in zip(want, inv, strict=True)):
        frozen = inv
    else:
        frozen = tuple(want)
        if geo.state_of(frozen) < 0:
            frozen = None  # conflicting running profiles: keep the higher-priority ones
    if frozen is not None:
        gpu.frozen = frozen
        gpu.free_inst = list(frozen)
        gpu.mode = MIG
        # used instances are added by attach()


def _can_keep_mps(ctx: Context, r: Rep, gpu: Gpu, n: int) -> bool:
    """An MPS node (no whole GPU, no MIG) whose ``n`` clients per GPU hold the replica and have a free slot."""
    node = gpu.node
    if node.whole or gpu.mode not in (None, MPS) or node.mode in (NODE_TIME_SLICING, NODE_NONE) or n < 2:
        _displace(ctx, r, EvictionReason.LAYOUT_CONFLICT, f"node {node.name} can not keep MPS")
        return False
    if any(g.mode == MIG for g in node.gpus):
        _displace(
            ctx, r, EvictionReason.LAYOUT_CONFLICT, f"node {node.name} has MIG GPUs; MPS is impossible there"
        )
        return False
    if mps_cap(gpu.mem_mib, n) < r.dep.size:
        _displace(
            ctx,
            r,
            EvictionReason.SHARE_NO_LONGER_FITS,
            f"the MPS cap on node {node.name} no longer holds the estimate",
        )
        return False
    if len(gpu.reps) >= n:
        where = f"{node.name}/{gpu.index}"
        _displace(ctx, r, EvictionReason.LAYOUT_CONFLICT, f"GPU {where} has no free MPS client")
        return False
    return True


def _can_keep_time_slicing(ctx: Context, r: Rep, gpu: Gpu) -> bool:
    """A node that may time-slice and a GPU with a free slot and room in its memory budget."""
    node = gpu.node
    if (
        node.mode in (NODE_MPS,)
        or gpu.mode not in (None, TIME_SLICING)
        or (node.mode == NODE_NONE and node.whole)
    ):
        _displace(ctx, r, EvictionReason.LAYOUT_CONFLICT, f"node {node.name} can not keep time-slicing")
        return False
    n = _ts_n(ctx, node)
    if len(gpu.reps) >= n or gpu.ts_used + r.dep.size > ctx.ts_capacity(gpu):
        where = f"{node.name}/{gpu.index}"
        _displace(
            ctx, r, EvictionReason.LAYOUT_CONFLICT, f"GPU {where} has no room for another time-sliced replica"
        )
        return False
    return True


def _ts_n(ctx: Context, node: Node) -> int:
    """Time-slicing replicas per GPU of a node: as planned, else as configured, else the policy's limit. The
    configured value gives way to the limit when a GPU of the node counts more running time-sliced replicas
    than it: they are on their way to a node that gets a new config (as in ``_running_mps_clients``)."""
    if node.mode == NODE_TIME_SLICING and node.n:
        return node.n
    inv = node.inv
    limit = ctx.policy.ts_max_replicas_per_gpu
    if inv.sharing == "TimeSlicing" and inv.sharing_replicas and inv.sharing_replicas >= 2:
        n = min(inv.sharing_replicas, limit)
        most = max(
            (
                sum(
                    1
                    for r in ctx.running.get(g.gid, ())
                    if r.cur is not None and r.cur.mechanism == "TimeSlicing"
                )
                for g in node.gpus
            ),
            default=0,
        )
        return n if most <= n else limit
    return limit


def _pin(
    ctx: Context, r: Rep, gpu: Gpu, mech: Mechanism, prof: int, mps_n: dict[int, int], repartition: bool
) -> None:
    node = gpu.node
    if mech == MPS:
        node.mode = NODE_MPS
        node.n = mps_n[node.pos]
    elif mech == TIME_SLICING:
        node.n = _ts_n(ctx, node)
        node.mode = NODE_TIME_SLICING
    elif node.mode == NODE_FREE:
        node.mode = NODE_NONE
    node.fixed = True
    r.pinned = True
    attach(ctx, r, gpu, mech, prof)


def class_fits(
    ctx: Context, dep: Dep
) -> tuple[dict[str, tuple[int, ...]], dict[str, int], set[str], set[str]]:
    """Share options of a deployment per GPU model present in the pool:
    (MIG fitting profile indices, MPS max clients, time-slicing models, whole-GPU models)."""
    size = dep.size
    mechs = TIER_MECHANISMS[dep.tier] & ctx.allowed
    if dep.mech is not None:
        mechs = mechs & {dep.mech}
    mig: dict[str, tuple[int, ...]] = {}
    mps: dict[str, int] = {}
    ts: set[str] = set()
    ex: set[str] = set()
    for key, model in sorted(ctx.models.items()):
        geo = geometry(key)
        if MIG in mechs and geo is not None:
            if dep.profile is not None:
                if dep.profile in geo.index:
                    pi = geo.index[dep.profile]
                    if geo.profiles[pi].memory_bytes >= size:
                        mig[key] = (pi,)
            else:
                fits = fitting_profiles(key, size)
                if fits:
                    mig[key] = fits
        if MPS in mechs:
            n = mps_nmax(
                model.memory_mib, size, min(ctx.policy.mps_max_clients_per_gpu, model.mps_max_clients)
            )
            if n >= 2:
                mps[key] = n
        if TIME_SLICING in mechs and size <= model.memory_bytes * ctx.ts_factor // 100:
            ts.add(key)
        if EXCLUSIVE in mechs and size <= model.memory_bytes:
            ex.add(key)
    return mig, mps, ts, ex


def unfit_reason(ctx: Context, dep: Dep) -> tuple[UnplacedReason, str]:
    """Why a deployment has no share option at all in this pool."""
    tier_m = TIER_MECHANISMS[dep.tier]
    gib = dep.size / (1 << 30)
    if dep.mech is not None and dep.mech not in tier_m:
        return (
            UnplacedReason.MECHANISM_NOT_ALLOWED,
            f"the share override asks for {dep.mech}, which the {dep.tier} tier may not use",
        )
    if dep.mech is not None and dep.mech not in ctx.allowed:
        return (UnplacedReason.MECHANISM_NOT_ALLOWED, f"the pool does not allow {dep.mech}")
    if not (tier_m & ctx.allowed):
        return (
            UnplacedReason.MECHANISM_NOT_ALLOWED,
            f"the pool allows none of the mechanisms the {dep.tier} tier may use",
        )
    usable = tier_m & ctx.allowed
    if dep.mech is not None:
        usable &= {dep.mech}
    if not any(m.mig_capable for m in ctx.models.values()):
        usable -= {MIG}
    if not usable:
        names = ", ".join(sorted(k for k in tier_m & ctx.allowed))
        return (
            UnplacedReason.MECHANISM_NOT_ALLOWED,
            f"the only mechanisms the pool allows for {dep.tier} ({names}) need MIG, and no GPU in the pool is MIG-capable",
        )
    biggest = max((m.memory_bytes for m in ctx.models.values()), default=0)
    if dep.size > biggest:
        return (
            UnplacedReason.NO_SHARE_FITS,
            f"the {gib:.1f} GiB estimate is larger than any GPU in the pool "
            f"(largest {biggest / (1 << 30):.1f} GiB)",
        )
    if dep.profile is not None:
        return (
            UnplacedReason.NO_SHARE_FITS,
            f"no GPU in the pool has a MIG {dep.profile} profile that holds the {gib:.1f} GiB estimate",
        )
    return (
        UnplacedReason.NO_SHARE_FITS,
        f"no share the pool allows for {dep.tier} holds the {gib:.1f} GiB estimate",
    )
