"""Turn the solved working state into a :class:`Plan` (shared by the heuristic and the exact solver)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from slm_operator.planner.mig import Counts, complete, place, starts_legal
from slm_operator.planner.model import (
    GiB,
    DeploymentPlan,
    Eviction,
    GpuMode,
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
    K_EX,
    K_MIG,
    K_MPS,
    K_TS,
    MECH_IN,
    MECH_OUT,
    ROLE_POOL,
    ROLE_RESERVED,
    ROLE_SEGMENT,
    TIER_MECHS,
    Context,
    Dep,
    Gpu,
    Node,
    Rep,
    class_fits,
    mps_cap,
)

_DEFAULTS: dict[type[BaseModel], tuple[dict[str, Any], int]] = {}

M = TypeVar("M", bound=BaseModel)


def _new(cls: type[M], **kw: Any) -> M:
    """Build an output model from already-checked values without re-validating them (plans have ~10^5
    objects at 10,000 GPUs; validation would dominate the planning time). Defaults are filled in like
    pydantic does (outputs are frozen, so a shared default is never mutated); tests check that
    ``Plan.model_validate(plan.model_dump())`` round-trips."""
    hit = _DEFAULTS.get(cls)
    if hit is None:
        fields = cls.model_fields
        defaults = {n: f.get_default(call_default_factory=True) for n, f in fields.items() if not f.is_required()}
        hit = _DEFAULTS[cls] = (defaults, len(fields))
    defaults, n_fields = hit
    values = kw if len(kw) == n_fields else {**defaults, **kw}
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(kw))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_set = object.__setattr__


_TIER_RULE = {
    0: "Guaranteed replicas get hard isolation only: a MIG slice or a whole GPU.",
    1: "Burstable replicas get a MIG slice or an MPS client whose memory cap holds the estimate "
    "(a whole GPU only when nothing smaller fits).",
    2: "BestEffort replicas may also be time-sliced, may borrow lendable reserved GPUs, and yield first "
    "under pressure.",
}


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _node_sharing(ctx: Context, node: Node) -> tuple[NodeSharing, int | None]:
    pool = [g for g in node.gpus if g.role == ROLE_POOL]
    if any(g.mode == K_TS for g in pool):
        return "TimeSlicing", node.n
    if any(g.mode == K_MPS for g in pool):
        return "MPS", node.n
    whole = any(g.role != ROLE_POOL or g.mode == K_EX for g in node.gpus)
    mig = any(g.mode == K_MIG for g in pool)
    inv = node.inv
    if inv.sharing == "TimeSlicing" and not whole:
        n = inv.sharing_replicas or ctx.policy.ts_max_replicas_per_gpu
        return "TimeSlicing", max(2, min(n, ctx.policy.ts_max_replicas_per_gpu))
    if inv.sharing == "MPS" and not whole and not mig:
        n = inv.sharing_replicas or ctx.policy.mps_max_clients_per_gpu
        return "MPS", max(2, min(n, ctx.policy.mps_max_clients_per_gpu))
    return "None", None


def _mig_counts(gpu: Gpu, sharing: NodeSharing) -> Counts | None:
    """The planned MIG layout of a GPU, or None when MIG is disabled on it."""
    geo = gpu.geo
    if geo is None or gpu.role != ROLE_POOL:
        return None
    if gpu.mode == K_MIG:
        if gpu.frozen is not None:
            return gpu.frozen
        used = geo.states[gpu.st]
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
    if mech == K_MIG:
        key: tuple[object, ...] = (gpu.key, mech, r.prof, start)
    elif mech == K_EX:
        key = (gpu.key, mech)
    else:
        key = (gpu.key, mech, sharing_n or gpu.node.n)
    hit = ctx.share_cache.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    if mech == K_MIG:
        assert gpu.geo is not None
        prof = gpu.geo.profiles[r.prof]
        share = _new(Share, mechanism="MIG", mig_profile=prof.name, mig_start=start, memory_bytes=prof.memory_bytes)
    elif mech == K_MPS:
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
    elif mech == K_TS:
        share = _new(Share, mechanism="TimeSlicing", replicas_per_gpu=sharing_n or gpu.node.n, memory_bytes=gpu.mem)
    else:
        share = _new(Share, mechanism="Exclusive", memory_bytes=gpu.mem)
    ctx.share_cache[key] = share
    return share


def _summary(share: Share, borrowed: bool) -> str:
    if share.mechanism == "MIG":
        return f"MIG {share.mig_profile}"
    if share.mechanism == "MPS":
        return f"MPS {_gib(share.memory_bytes)} cap"
    if share.mechanism == "TimeSlicing":
        return f"TimeSlicing x{share.replicas_per_gpu}"
    return "Exclusive (borrowed)" if borrowed else "Exclusive"


def build_plan(ctx: Context, solver: str = "heuristic", optimal: bool | None = None) -> Plan:
    node_plans: list[NodePlan] = []
    gpu_plans: list[GpuPlan] = []
    summaries: dict[int, str] = {}
    mem_total = mem_used = allocated = share_mem = free_mem = stranded = 0
    by_mode: dict[str, int] = {}
    gpus_used = 0
    for node in ctx.nodes:
        sharing, n = _node_sharing(ctx, node)
        layout: list[MigDeviceLayout] = []
        mig_changed = False
        node_used = 0
        for gpu in node.gpus:
            counts = _mig_counts(gpu, sharing)
            inst_plans: list[MigInstancePlan] = []
            rep_start: dict[int, int] = {}
            geo = gpu.geo
            if counts is not None:
                assert geo is not None
                pairs = _starts(gpu, counts)
                mig_reps = sorted(
                    (r for r in gpu.reps if r.mech == K_MIG), key=lambda r: (r.prof, r.dep.key, r.ordinal)
                )
                pool_by_prof: dict[int, list[Rep]] = {}
                for r in mig_reps:
                    pool_by_prof.setdefault(r.prof, []).append(r)
                for pi, s in pairs:
                    lst = pool_by_prof.get(pi)
                    if lst:
                        r = lst.pop(0)
                        rep_start[id(r)] = s
                        inst_plans.append(
                            _new(MigInstancePlan, 
                                profile=geo.profiles[pi].name, start=s, deployment=r.dep.key, ordinal=r.ordinal
                            )
                        )
                    else:
                        inst_plans.append(_new(MigInstancePlan, profile=geo.profiles[pi].name, start=s))
                layout.append(_new(MigDeviceLayout, index=gpu.index, mig_enabled=True, devices=geo.names(counts)))
            elif geo is not None:
                layout.append(_new(MigDeviceLayout, index=gpu.index, mig_enabled=False))
            inv_enabled = gpu.inv.mig_enabled
            if counts is None:
                reconf = inv_enabled
            else:
                reconf = not inv_enabled or gpu.inv_counts != counts
            mig_changed = mig_changed or reconf
            # mode
            mode: GpuMode
            if gpu.role == ROLE_SEGMENT:
                mode = "Segment"
            elif gpu.role == ROLE_RESERVED:
                mode = "Reserved"
            elif not gpu.reps:
                mode = "Free"
            else:
                mode = {K_MIG: "MIG", K_MPS: "MPS", K_TS: "TimeSlicing", K_EX: "Exclusive"}[gpu.mode or K_EX]  # type: ignore[assignment]
            replicas: list[ReplicaPlacement] = []
            where = f"{node.name}/{gpu.index}"
            g_alloc = g_free = g_strand = g_share = 0
            reps_sorted = gpu.reps if len(gpu.reps) < 2 else sorted(gpu.reps, key=_rep_order)
            for r in reps_sorted:
                dep = r.dep
                share = _share(ctx, gpu, r, n, rep_start.get(id(r)) if rep_start else None)
                rp = _new(
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
                replicas.append(rp)
                summ = summaries.get(id(share))
                if summ is None or r.borrowed:
                    summ = _summary(share, r.borrowed)
                    if not r.borrowed:
                        summaries[id(share)] = summ
                r.out = (summ, where)
                g_alloc += dep.size
                g_share += dep.size if share.mechanism == "TimeSlicing" else share.memory_bytes
            if gpu.reps:
                g_free, g_strand = _free_stranded(ctx, gpu, counts, n)
                gpus_used += 1
                node_used += 1
                mem_used += gpu.mem
                allocated += g_alloc
                share_mem += g_share
                free_mem += g_free
                stranded += g_strand
            mem_total += gpu.mem
            by_mode[mode] = by_mode.get(mode, 0) + 1
            gpu_plans.append(
                _new(GpuPlan, 
                    node=node.name,
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
            )
        inv = node.inv
        inv_n = inv.sharing_replicas if inv.sharing != "None" else None
        node_plans.append(
            _new(NodePlan, 
                name=node.name,
                sharing=sharing,
                replicas_per_gpu=n,
                mig_layout=tuple(layout),
                sharing_changed=(sharing != inv.sharing) or (sharing != "None" and n != inv_n),
                mig_changed=mig_changed,
                gpus_used=node_used,
            )
        )
    deployments, evictions, moved_total = _deployments(ctx)
    desired = sum(d.replicas for d in ctx.deps)
    placed = sum(1 for r in ctx.reps if r.gpu is not None)
    pool = _new(PoolPlan, 
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
    return _new(Plan, 
        pool=pool,
        nodes=tuple(node_plans),
        gpus=tuple(gpu_plans),
        deployments=tuple(deployments),
        solver=solver,  # type: ignore[arg-type]
        optimal=optimal,
    )


def _free_stranded(ctx: Context, gpu: Gpu, counts: Counts | None, n: int | None) -> tuple[int, int]:
    """(free, stranded) bytes of a used GPU; see docs/plan-format.md for the definitions."""
    mem = gpu.mem
    if gpu.role != ROLE_POOL or gpu.mode == K_EX:
        return 0, sum(mem - r.dep.size for r in gpu.reps)
    if gpu.mode == K_MIG and counts is not None:
        geo = gpu.geo
        assert geo is not None
        used = list(geo.states[gpu.st])
        all_usable = sum(c * geo.profiles[i].memory_bytes for i, c in enumerate(counts))
        spare = sum((c - used[i]) * geo.profiles[i].memory_bytes for i, c in enumerate(counts))
        slice_bytes = mem // geo.memory_slices
        free_slices = geo.memory_slices - sum(c * geo.profiles[i].memory_slices for i, c in enumerate(counts))
        free = spare + free_slices * slice_bytes
        internal = sum(geo.profiles[r.prof].memory_bytes - r.dep.size for r in gpu.reps)
        overhead = max(0, mem - all_usable - free_slices * slice_bytes)
        return free, internal + overhead
    if gpu.mode == K_MPS:
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
    if c.node != g.node.name or c.gpu_index != g.index or MECH_IN[c.mechanism] != r.mech:
        return True
    if r.mech == K_MIG:
        assert g.geo is not None
        return c.mig_profile != g.geo.profiles[r.prof].name
    return False


def _move_reason(r: Rep) -> str:
    if r.evicted:
        return r.evicted
    if r.cur_gpu is not None and r.cur_gpu.role == ROLE_RESERVED:
        return "ReturnBorrowedGPU"
    return "LayoutConflict"


def _rep_order(r: Rep) -> tuple[str, int]:
    return (r.dep.key, r.ordinal)


def _deployments(ctx: Context) -> tuple[list[DeploymentPlan], list[Eviction], int]:
    out: list[DeploymentPlan] = []
    evictions: list[Eviction] = []
    moved_total = 0
    for dep in sorted(ctx.deps, key=lambda d: d.key):
        unplaced: list[UnplacedReplica] = []
        moved: list[MovedReplica] = []
        shares: dict[str, int] = {}
        where: set[str] = set()
        nodes: set[str] = set()
        for r in dep.reps:
            if r.gpu is None:
                code, msg = r.unplaced or ("InsufficientCapacity", "no GPU has room")
                unplaced.append(_new(UnplacedReplica, ordinal=r.ordinal, reason=code, message=msg))  # type: ignore[arg-type]
            else:
                assert r.out is not None
                s, w = r.out
                shares[s] = shares.get(s, 0) + 1
                where.add(w)
                nodes.add(r.gpu.node.name)
            c = r.cur
            if c is None:
                continue
            if r.gpu is not None and _moved(r):
                reason = _move_reason(r)
                moved.append(
                    _new(MovedReplica, 
                        ordinal=r.ordinal,
                        from_node=c.node,
                        from_gpu=c.gpu_index,
                        to_node=r.gpu.node.name,
                        to_gpu=r.gpu.index,
                        reason=reason,
                    )
                )
                moved_total += 1
            if r.cur_gpu is not None and (r.gpu is None or _moved(r)):
                reason = _move_reason(r)
                evictions.append(
                    _new(Eviction, 
                        deployment=dep.key,
                        ordinal=r.ordinal,
                        qos=dep.tier,  # type: ignore[arg-type]
                        node=c.node,
                        gpu_index=c.gpu_index,
                        reason=reason,  # type: ignore[arg-type]
                        message=r.evict_msg or _default_msg(reason),
                        to_node=r.gpu.node.name if r.gpu is not None else None,
                        to_gpu=r.gpu.index if r.gpu is not None else None,
                    )
                )
        placed = dep.replicas - len(unplaced)
        summary = ", ".join(k if v == placed else f"{k} x{v}" for k, v in sorted(shares.items()))
        out.append(
            _new(DeploymentPlan, 
                deployment=dep.key,
                qos=dep.tier,  # type: ignore[arg-type]
                memory_bytes=dep.size,
                desired=dep.replicas,
                placed=placed,
                unplaced=tuple(unplaced),
                moved=tuple(moved),
                share_summary=summary,
                explanation=explain(ctx, dep, placed, shares, len(where), len(nodes), unplaced),
            )
        )
    evictions.sort(key=lambda e: (e.deployment, e.ordinal))
    return out, evictions, moved_total


def _default_msg(reason: str) -> str:
    return {
        "ReturnBorrowedGPU": "a BestEffort replica on a lent reserved GPU moves back into the pool",
        "LayoutConflict": "the GPU's layout can not keep this replica",
    }.get(reason, reason)


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
    parts.append(_TIER_RULE[dep.rank])
    if dep.mech is not None:
        what = f"MIG {dep.profile}" if dep.profile else MECH_OUT[dep.mech]
        parts.append(f"The deployment pins its share to {what}, so no other share was considered.")
    alts = _alternatives(ctx, dep)
    if alts and dep.mech is None:
        parts.append(
            "Shares that hold it: "
            + "; ".join(alts)
            + ". The planner fills free capacity on GPUs already in use first, then opens the share with the "
            "most replicas per GPU, so that whole GPUs stay free."
        )
    missing = sorted(MECH_OUT[k] for k in TIER_MECHS[dep.rank] - ctx.allowed)
    if missing:
        parts.append(f"The pool does not allow {', '.join(missing)}.")
    if unplaced:
        reasons: dict[str, list[int]] = {}
        msgs: dict[str, str] = {}
        for u in unplaced:
            reasons.setdefault(u.reason, []).append(u.ordinal)
            msgs.setdefault(u.reason, u.message)
        for code, ords in sorted(reasons.items()):
            parts.append(f"{len(ords)} replica{'s' if len(ords) != 1 else ''} not placed ({code}): {msgs[code]}.")
    return " ".join(parts)


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
