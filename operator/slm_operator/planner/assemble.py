"""Turn the solved working state into a :class:`Plan` (shared by the heuristic and the exact solver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from slm_operator.planner.mig import Counts, MigGeometry, complete, place, starts_legal
from slm_operator.planner.model import (
    DeploymentPlan,
    Eviction,
    GiB,
    GpuPlan,
    MigDeviceLayout,
    MigInstancePlan,
    MovedReplica,
    NodePlan,
    NodeSharing,
    Plan,
    PoolPlan,
    ReplicaPlacement,
    Share,
    UnplacedReplica,
)
from slm_operator.planner.state import (
    Context,
    Dep,
    Gpu,
    Node,
    Rep,
    class_fits,
    mps_cap,
)
from slm_operator.planner.tenants import tenant_usage
from slm_operator.planner.vocabulary import (
    EXCLUSIVE,
    MIG,
    MPS,
    ROLE_POOL,
    ROLE_RESERVED,
    ROLE_SEGMENT,
    TIER_MECHANISMS,
    TIME_SLICING,
    EvictionReason,
    Tier,
    UnplacedReason,
)

_DEFAULTS: dict[type[BaseModel], tuple[dict[str, Any], tuple[str, ...], set[str]]] = {}

M = TypeVar("M", bound=BaseModel)


def _new(cls: type[M], **kw: Any) -> M:
    """Build an output model from already-checked values without re-validating them (plans have ~10^5
    objects at 10,000 GPUs; validation would dominate the planning time). Defaults are filled in like
    pydantic does (outputs are frozen, so a shared default is never mutated); tests check that
    ``Plan.model_validate(plan.model_dump())`` round-trips."""
    hit = _DEFAULTS.get(cls)
    if hit is None:
        fields = cls.model_fields
        defaults = {
            n: f.get_default(call_default_factory=True) for n, f in fields.items() if not f.is_required()
        }
        hit = _DEFAULTS[cls] = (defaults, tuple(fields), set(fields))
    defaults, names, all_set = hit
    if len(kw) != len(names) or next(iter(kw)) != names[0]:
        # fields in declaration order, as validation would store them (the JSON keeps that order)
        kw = {n: kw[n] if n in kw else defaults[n] for n in names}
    values = kw
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    # every field has a value (defaults filled in); the set is shared and never mutated (frozen models)
    _set(obj, "__pydantic_fields_set__", all_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_set = object.__setattr__


_TIER_RULE: dict[Tier, str] = {
    Tier.GUARANTEED: "Guaranteed replicas get hard isolation only: a MIG slice or a whole GPU.",
    Tier.BURSTABLE: "Burstable replicas get a MIG slice or an MPS client whose memory cap holds the estimate "
    "(a whole GPU only when nothing smaller fits).",
    Tier.BEST_EFFORT: "BestEffort replicas may also be time-sliced, may borrow lendable reserved GPUs, and yield first "
    "under pressure.",
}


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def node_sharing(ctx: Context, node: Node) -> tuple[NodeSharing, int | None]:
    pool = [g for g in node.gpus if g.role == ROLE_POOL]
    if any(g.mode == TIME_SLICING for g in pool):
        return "TimeSlicing", node.n
    if any(g.mode == MPS for g in pool):
        return "MPS", node.n
    whole = any(g.role != ROLE_POOL or g.mode == EXCLUSIVE for g in node.gpus)
    mig = any(g.mode == MIG for g in pool)
    inv = node.inv
    if inv.sharing == "TimeSlicing" and not whole:
        n = inv.sharing_replicas or ctx.policy.ts_max_replicas_per_gpu
        return "TimeSlicing", max(2, min(n, ctx.policy.ts_max_replicas_per_gpu))
    if inv.sharing == "MPS" and not whole and not mig:
        n = inv.sharing_replicas or ctx.policy.mps_max_clients_per_gpu
        return "MPS", max(2, min(n, ctx.policy.mps_max_clients_per_gpu))
    return "None", None


def mig_counts(gpu: Gpu, sharing: NodeSharing) -> Counts | None:
    """The planned MIG layout of a GPU, or None when MIG is disabled on it."""
    geo = gpu.geo
    if geo is None or gpu.role != ROLE_POOL:
        return None
    if gpu.mode == MIG:
        if gpu.frozen is not None:
            return gpu.frozen
        used = geo.states[gpu.mig_state]
        inv = gpu.inv_counts
        if inv is not None and all(u <= i for u, i in zip(used, inv, strict=True)):
            return inv
        return complete(geo.model_key, used)
    if gpu.mode is None and sharing != "MPS":
        if gpu.inv_counts is not None:
            return gpu.inv_counts
        if gpu.inv.mig_enabled:
            return tuple(0 for _ in geo.profiles)
    return None


def _starts(gpu: Gpu, counts: Counts) -> list[tuple[int, int]]:
    geo = gpu.geo
    assert geo is not None
    inv = gpu.inv
    if inv.mig_enabled and gpu.inv_counts == counts and all(i.start is not None for i in inv.mig_instances):
        pairs = [(geo.index[i.profile], int(i.start or 0)) for i in inv.mig_instances]
        if starts_legal(geo.model_key, pairs):
            return sorted(pairs, key=lambda t: (t[1], t[0]))
    placed = place(geo.model_key, counts)
    assert placed is not None, f"illegal MIG layout {counts} on {geo.model_key}"
    return list(placed)


def _share(ctx: Context, gpu: Gpu, r: Rep, sharing_n: int | None, start: int | None) -> Share:
    """The replica's share (equal shares are one shared frozen object)."""
    mech = r.mech
    if mech == MIG:
        key: tuple[object, ...] = (gpu.key, mech, r.prof, start)
    elif mech == EXCLUSIVE:
        key = (gpu.key, mech)
    else:
        key = (gpu.key, mech, sharing_n or gpu.node.n)
    hit = ctx.share_cache.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    if mech == MIG:
        assert gpu.geo is not None
        prof = gpu.geo.profiles[r.prof]
        share = _new(
            Share, mechanism="MIG", mig_profile=prof.name, mig_start=start, memory_bytes=prof.memory_bytes
        )
    elif mech == MPS:
        n = sharing_n or gpu.node.n
        cap = mps_cap(gpu.mem_mib, n)
        share = _new(
            Share,
            mechanism="MPS",
            mps_memory_limit_bytes=cap,
            mps_active_thread_percentage=max(1, 100 // n),
            replicas_per_gpu=n,
            memory_bytes=cap,
        )
    elif mech == TIME_SLICING:
        share = _new(
            Share, mechanism="TimeSlicing", replicas_per_gpu=sharing_n or gpu.node.n, memory_bytes=gpu.mem
        )
    else:
        share = _new(Share, mechanism="Exclusive", memory_bytes=gpu.mem)
    ctx.share_cache[key] = share
    return share


def _mig_plan(
    ctx: Context, gpu: Gpu, geo: MigGeometry, counts: Counts
) -> tuple[list[MigInstancePlan], dict[int, int], MigDeviceLayout]:
    """The GPU's MIG instances (each replica on an instance of its profile, by profile, deployment and
    ordinal; spare instances shared), the start of each replica's instance by id, and the node layout entry."""
    inst_plans: list[MigInstancePlan] = []
    rep_start: dict[int, int] = {}
    pairs = _starts(gpu, counts)
    pool_by_prof: dict[int, list[Rep]] = {}
    for r in sorted((r for r in gpu.reps if r.mech == MIG), key=lambda r: (r.prof, r.dep.key, r.ordinal)):
        pool_by_prof.setdefault(r.prof, []).append(r)
    for pi, s in pairs:
        lst = pool_by_prof.get(pi)
        if lst:
            r = lst.pop(0)
            rep_start[id(r)] = s
            inst_plans.append(
                _new(
                    MigInstancePlan,
                    profile=geo.profiles[pi].name,
                    start=s,
                    deployment=r.dep.key,
                    ordinal=r.ordinal,
                )
            )
        else:  # a spare instance: equal ones are one shared frozen object
            key = ("spare", geo.model_key, pi, s)
            spare = ctx.share_cache.get(key)
            if spare is None:
                spare = ctx.share_cache[key] = _new(MigInstancePlan, profile=geo.profiles[pi].name, start=s)
            inst_plans.append(spare)
    lay_key = ("layout", geo.model_key, gpu.index, counts)
    lay = ctx.share_cache.get(lay_key)
    if lay is None:
        lay = ctx.share_cache[lay_key] = _new(
            MigDeviceLayout, index=gpu.index, mig_enabled=True, devices=geo.names(counts)
        )
    return inst_plans, rep_start, lay


def _gpu_mode(gpu: Gpu) -> str:
    """``GpuPlan.mode``: the GPU's group, Free when nothing runs on it, else its mechanism."""
    if gpu.role == ROLE_SEGMENT:
        return "Segment"
    if gpu.role == ROLE_RESERVED:
        return "Reserved"
    if not gpu.reps:
        return "Free"
    return gpu.mode or EXCLUSIVE


def _summary(share: Share, borrowed: bool) -> str:
    if share.mechanism == "MIG":
        return f"MIG {share.mig_profile}"
    if share.mechanism == "MPS":
        return f"MPS {_gib(share.memory_bytes)} cap"
    if share.mechanism == "TimeSlicing":
        return f"TimeSlicing x{share.replicas_per_gpu}"
    return "Exclusive (borrowed)" if borrowed else "Exclusive"


@dataclass(slots=True)
class _GpuStats:
    used: bool
    mem: int
    allocated: int
    share: int
    free: int
    stranded: int
    mode: str


class PlanBuilder:
    """Builds the plan from the working state, node by node and deployment by deployment, and keeps the parts:
    an incremental re-plan rebuilds only the nodes and deployments it touched and reuses the rest (all output
    objects are frozen)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.summaries: dict[int, str] = {}
        self.node_plans: dict[int, NodePlan] = {}
        self.gpu_plans: dict[int, GpuPlan] = {}
        self.gpu_stats: dict[int, _GpuStats] = {}
        self.dep_plans: dict[str, tuple[DeploymentPlan, list[Eviction], int]] = {}

    def build_all(self) -> None:
        for node in self.ctx.nodes:
            self.build_node(node)
        for dep in self.ctx.deps:
            self.build_dep(dep)

    def build_node(self, node: Node) -> None:
        ctx = self.ctx
        sharing, n = node_sharing(ctx, node)
        layout: list[MigDeviceLayout] = []
        mig_changed = False
        node_used = 0
        for gpu in node.gpus:
            plan, lay, stats = self._gpu(gpu, sharing, n)
            self.gpu_plans[gpu.gid] = plan
            self.gpu_stats[gpu.gid] = stats
            if lay is not None:
                layout.append(lay)
            mig_changed = mig_changed or plan.reconfigure
            node_used += stats.used
        inv = node.inv
        inv_n = inv.sharing_replicas if inv.sharing != "None" else None
        self.node_plans[node.pos] = _new(
            NodePlan,
            name=node.name,
            sharing=sharing,
            replicas_per_gpu=n,
            mig_layout=tuple(layout),
            sharing_changed=(sharing != inv.sharing) or (sharing != "None" and n != inv_n),
            mig_changed=mig_changed,
            gpus_used=node_used,
        )

    def _gpu(
        self, gpu: Gpu, sharing: NodeSharing, n: int | None
    ) -> tuple[GpuPlan, MigDeviceLayout | None, _GpuStats]:
        ctx = self.ctx
        counts = mig_counts(gpu, sharing)
        inst_plans: list[MigInstancePlan] = []
        rep_start: dict[int, int] = {}
        geo = gpu.geo
        lay: MigDeviceLayout | None = None
        if counts is not None:
            assert geo is not None
            inst_plans, rep_start, lay = _mig_plan(ctx, gpu, geo, counts)
        elif geo is not None:
            lay = _new(MigDeviceLayout, index=gpu.index, mig_enabled=False)
        inv_enabled = gpu.inv.mig_enabled
        reconf = inv_enabled if counts is None else (not inv_enabled or gpu.inv_counts != counts)
        mode = _gpu_mode(gpu)
        replicas, g_alloc, g_share = self._replicas(gpu, n, rep_start)
        g_free = g_strand = 0
        if gpu.reps:
            g_free, g_strand = _free_stranded(ctx, gpu, counts, n)
        plan = _new(
            GpuPlan,
            node=gpu.node.name,
            index=gpu.index,
            product=gpu.key,
            mode=mode,
            mig_instances=tuple(inst_plans),
            reservation=gpu.group if gpu.role == ROLE_RESERVED else None,
            segment=gpu.group if gpu.role == ROLE_SEGMENT else None,
            replicas=tuple(replicas),
            memory_bytes=gpu.mem,
            allocated_bytes=g_alloc,
            free_bytes=g_free if gpu.reps else (gpu.mem if gpu.role == ROLE_POOL else 0),
            stranded_bytes=g_strand,
            reconfigure=reconf,
        )
        stats = _GpuStats(bool(gpu.reps), gpu.mem, g_alloc, g_share, g_free, g_strand, mode)
        return plan, lay, stats

    def _replicas(
        self, gpu: Gpu, n: int | None, rep_start: dict[int, int]
    ) -> tuple[list[ReplicaPlacement], int, int]:
        """The GPU's replica placements (and each replica's summary for its deployment's explanation), the
        memory they are allocated and the memory of their shares."""
        ctx = self.ctx
        replicas: list[ReplicaPlacement] = []
        where = f"{gpu.node.name}/{gpu.index}"
        g_alloc = g_share = 0
        summaries = self.summaries
        reps_sorted = gpu.reps if len(gpu.reps) < 2 else sorted(gpu.reps, key=_rep_order)
        for r in reps_sorted:
            dep = r.dep
            share = _share(ctx, gpu, r, n, rep_start.get(id(r)) if rep_start else None)
            replicas.append(
                _new(
                    ReplicaPlacement,
                    deployment=dep.key,
                    ordinal=r.ordinal,
                    qos=dep.tier,
                    memory_gib=dep.gib,
                    memory_bytes=dep.size,
                    share=share,
                    borrowed=r.borrowed,
                    moved=r.cur is not None and _moved(r),
                )
            )
            summ = summaries.get(id(share))
            if summ is None or r.borrowed:
                summ = _summary(share, r.borrowed)
                if not r.borrowed:
                    summaries[id(share)] = summ
            r.out = (summ, where)
            g_alloc += dep.size
            g_share += dep.size if share.mechanism == "TimeSlicing" else share.memory_bytes
        return replicas, g_alloc, g_share

    def build_dep(self, dep: Dep) -> None:
        self.dep_plans[dep.key] = _deployment(self.ctx, dep)

    def drop_dep(self, key: str) -> None:
        self.dep_plans.pop(key, None)

    def plan(self, solver: str = "heuristic", optimal: bool | None = None) -> Plan:
        ctx = self.ctx
        gpus_used = mem_total = mem_used = allocated = share_mem = free_mem = stranded = 0
        by_mode: dict[str, int] = {}
        for st in self.gpu_stats.values():
            mem_total += st.mem
            by_mode[st.mode] = by_mode.get(st.mode, 0) + 1
            if st.used:
                gpus_used += 1
                mem_used += st.mem
                allocated += st.allocated
                share_mem += st.share
                free_mem += st.free
                stranded += st.stranded
        deployments: list[DeploymentPlan] = []
        evictions: list[Eviction] = []
        moved_total = 0
        for key in sorted(self.dep_plans):
            dp, ev, mv = self.dep_plans[key]
            deployments.append(dp)
            evictions.extend(ev)
            moved_total += mv
        desired = sum(d.replicas for d in ctx.deps)
        placed = sum(dp.placed for dp in deployments)
        pool = _new(
            PoolPlan,
            name=ctx.policy.name,
            gpus_total=len(ctx.gpus),
            gpus_used=gpus_used,
            gpus_free=sum(1 for g in ctx.gpus if g.role == ROLE_POOL and not g.reps),
            gpus_reserved=sum(1 for g in ctx.gpus if g.role == ROLE_RESERVED),
            gpus_segment=sum(1 for g in ctx.gpus if g.role == ROLE_SEGMENT),
            gpus_borrowed=sum(1 for g in ctx.gpus if g.role == ROLE_RESERVED and g.reps),
            gpus_by_mode=dict(sorted(by_mode.items())),
            memory_total_bytes=mem_total,
            memory_used_gpus_bytes=mem_used,
            memory_allocated_bytes=allocated,
            memory_share_bytes=share_mem,
            memory_free_bytes=free_mem,
            memory_stranded_bytes=stranded,
            replicas_desired=desired,
            replicas_placed=placed,
            replicas_unplaced=desired - placed,
            replicas_moved=moved_total,
            evictions=tuple(evictions),
        )
        return _new(
            Plan,
            pool=pool,
            nodes=tuple(self.node_plans[n.pos] for n in ctx.nodes),
            gpus=tuple(self.gpu_plans[g.gid] for g in ctx.gpus),
            deployments=tuple(deployments),
            solver=solver,
            optimal=optimal,
            tenants=tenant_usage(ctx),
        )


def build_plan(ctx: Context, solver: str = "heuristic", optimal: bool | None = None) -> Plan:
    """The plan of a solved context."""
    b = PlanBuilder(ctx)
    b.build_all()
    return b.plan(solver, optimal)


def _free_stranded(ctx: Context, gpu: Gpu, counts: Counts | None, n: int | None) -> tuple[int, int]:
    """(free, stranded) bytes of a used GPU; see docs/plan-format.md for the definitions."""
    mem = gpu.mem
    if gpu.role != ROLE_POOL or gpu.mode == EXCLUSIVE:
        return 0, sum(mem - r.dep.size for r in gpu.reps)
    if gpu.mode == MIG and counts is not None:
        geo = gpu.geo
        assert geo is not None
        used = list(geo.states[gpu.mig_state])
        all_usable = sum(c * geo.profiles[i].memory_bytes for i, c in enumerate(counts))
        spare = sum((c - used[i]) * geo.profiles[i].memory_bytes for i, c in enumerate(counts))
        slice_bytes = mem // geo.memory_slices
        free_slices = geo.memory_slices - sum(c * geo.profiles[i].memory_slices for i, c in enumerate(counts))
        free = spare + free_slices * slice_bytes
        internal = sum(geo.profiles[r.prof].memory_bytes - r.dep.size for r in gpu.reps)
        overhead = max(0, mem - all_usable - free_slices * slice_bytes)
        return free, internal + overhead
    if gpu.mode == MPS:
        nn = n or gpu.node.n
        cap = mps_cap(gpu.mem_mib, nn)
        free = (nn - len(gpu.reps)) * cap
        return free, sum(cap - r.dep.size for r in gpu.reps) + (mem - nn * cap)
    # time-slicing
    nn = n or gpu.node.n
    left = max(0, mem - gpu.ts_used)
    free = left if len(gpu.reps) < nn else 0
    return free, left - free


def _moved(r: Rep) -> bool:
    c = r.cur
    if c is None or r.gpu is None:
        return False
    g = r.gpu
    if c.node != g.node.name or c.gpu_index != g.index or c.mechanism != r.mech:
        return True
    if r.mech == MIG:
        assert g.geo is not None
        return c.mig_profile != g.geo.profiles[r.prof].name
    return False


def _move_reason(r: Rep) -> EvictionReason:
    if r.evicted:
        return r.evicted
    if r.cur_gpu is not None and r.cur_gpu.role == ROLE_RESERVED:
        return EvictionReason.RETURN_BORROWED_GPU
    return EvictionReason.LAYOUT_CONFLICT


def _rep_order(r: Rep) -> tuple[str, int]:
    return (r.dep.key, r.ordinal)


def _deployment(ctx: Context, dep: Dep) -> tuple[DeploymentPlan, list[Eviction], int]:
    """One deployment's plan, its evictions and how many of its replicas moved."""
    unplaced: list[UnplacedReplica] = []
    moved: list[MovedReplica] = []
    evictions: list[Eviction] = []
    shares: dict[str, int] = {}
    where: set[str] = set()
    nodes: set[str] = set()
    for r in dep.reps:
        if r.gpu is None:
            code, msg = r.unplaced or (UnplacedReason.INSUFFICIENT_CAPACITY, "no GPU has room")
            unplaced.append(_new(UnplacedReplica, ordinal=r.ordinal, reason=code, message=msg))
        else:
            assert r.out is not None
            s, w = r.out
            shares[s] = shares.get(s, 0) + 1
            where.add(w)
            nodes.add(r.gpu.node.name)
        c = r.cur
        if c is None:
            continue
        is_moved = r.gpu is not None and _moved(r)
        if is_moved and r.gpu is not None:
            moved.append(
                _new(
                    MovedReplica,
                    ordinal=r.ordinal,
                    from_node=c.node,
                    from_gpu=c.gpu_index,
                    to_node=r.gpu.node.name,
                    to_gpu=r.gpu.index,
                    reason=_move_reason(r),
                )
            )
        if r.cur_gpu is not None and (r.gpu is None or is_moved):
            reason = _move_reason(r)
            evictions.append(
                _new(
                    Eviction,
                    deployment=dep.key,
                    ordinal=r.ordinal,
                    qos=dep.tier,
                    node=c.node,
                    gpu_index=c.gpu_index,
                    reason=reason,
                    message=r.evict_msg or _default_msg(reason),
                    to_node=r.gpu.node.name if r.gpu is not None else None,
                    to_gpu=r.gpu.index if r.gpu is not None else None,
                )
            )
    placed = dep.replicas - len(unplaced)
    summary = ", ".join(k if v == placed else f"{k} x{v}" for k, v in sorted(shares.items()))
    plan = _new(
        DeploymentPlan,
        deployment=dep.key,
        qos=dep.tier,
        memory_bytes=dep.size,
        desired=dep.replicas,
        placed=placed,
        unplaced=tuple(unplaced),
        moved=tuple(moved),
        share_summary=summary,
        explanation=explain(ctx, dep, placed, shares, len(where), len(nodes), unplaced),
    )
    return plan, evictions, len(moved)


_DEFAULT_MESSAGES: dict[str, str] = {
    EvictionReason.RETURN_BORROWED_GPU: "a BestEffort replica on a lent reserved GPU moves back into the pool",
    EvictionReason.LAYOUT_CONFLICT: "the GPU's layout can not keep this replica",
}


def _default_msg(reason: EvictionReason) -> str:
    return _DEFAULT_MESSAGES.get(reason, reason)


def explain(
    ctx: Context,
    dep: Dep,
    placed: int,
    shares: dict[str, int],
    n_gpus: int,
    n_nodes: int,
    unplaced: list[UnplacedReplica],
) -> str:
    """One paragraph: which share, why that mechanism, what was not possible."""
    parts: list[str] = []
    est = _gib(dep.size)
    if dep.replicas == 0:
        return f"Scaled to zero; nothing to place ({dep.tier}, estimate {est})."
    if placed:
        on = ", ".join(sorted(shares))
        parts.append(
            f"{placed} of {dep.replicas} replicas placed as {on} on {n_gpus} GPU{'s' if n_gpus != 1 else ''} "
            f"across {n_nodes} node{'s' if n_nodes != 1 else ''} (estimate {est} per replica)."
        )
    else:
        parts.append(f"No replica placed (estimate {est} per replica).")
    parts.append(_class_text(ctx, dep))
    if unplaced:
        reasons: dict[str, list[int]] = {}
        msgs: dict[str, str] = {}
        for u in unplaced:
            reasons.setdefault(u.reason, []).append(u.ordinal)
            msgs.setdefault(u.reason, u.message)
        for code, ords in sorted(reasons.items()):
            parts.append(
                f"{len(ords)} replica{'s' if len(ords) != 1 else ''} not placed ({code}): {msgs[code]}."
            )
    return " ".join(parts)


def _class_text(ctx: Context, dep: Dep) -> str:
    """The part of the explanation that only depends on the replica class (cached): the tier's rule, the
    pinned share, the shares that hold the estimate per GPU model, mechanisms the pool does not allow."""
    key = ("text", *dep.class_key())
    hit = ctx.text_cache.get(key)
    if hit is not None:
        return hit[0]
    parts = [_TIER_RULE[dep.tier]]
    if dep.mech is not None:
        what = f"MIG {dep.profile}" if dep.profile else dep.mech
        parts.append(f"The deployment pins its share to {what}, so no other share was considered.")
    alts = _alternatives(ctx, dep)
    if alts and dep.mech is None:
        parts.append(
            "Shares that hold it: "
            + "; ".join(alts)
            + ". The planner fills free capacity on GPUs already in use first, then opens the share with the "
            "most replicas per GPU, so that whole GPUs stay free."
        )
    missing = sorted(k for k in TIER_MECHANISMS[dep.tier] - ctx.allowed)
    if missing:
        parts.append(f"The pool does not allow {', '.join(missing)}.")
    text = " ".join(parts)
    ctx.text_cache[key] = [text]
    return text


def _alternatives(ctx: Context, dep: Dep) -> list[str]:
    key = dep.class_key()
    hit = ctx.text_cache.get(key)
    if hit is not None:
        return hit
    mig, mps, ts, ex = class_fits(ctx, dep)
    alts: list[str] = []
    for m in sorted(ctx.models):
        bits: list[str] = []
        if m in mig:
            geo = ctx.models[m]
            p = geo.mig_profiles[mig[m][0]]
            bits.append(f"MIG {p.name} ({p.max_count}/GPU)")
        if m in mps:
            bits.append(f"MPS ({mps[m]} clients/GPU, cap {_gib(mps_cap(ctx.models[m].memory_mib, mps[m]))})")
        if m in ts:
            cap = ctx.models[m].memory_bytes * ctx.ts_factor // 100
            bits.append(f"time-slicing ({min(ctx.policy.ts_max_replicas_per_gpu, cap // dep.size)}/GPU)")
        if m in ex and not bits:
            bits.append("a whole GPU")
        if bits:
            alts.append(f"{m}: " + ", ".join(bits))
    ctx.text_cache[key] = alts
    return alts
