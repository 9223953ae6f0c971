"""Tenant quotas of a pool (docs/tenants.md): what a share counts in GPU-equivalents, which replicas of a
tenant are within its guaranteed quota and which borrow, who may yield to whom, and the per-tenant usage of a
plan.

A share counts as the fraction of its GPU's memory and compute it holds, whichever is larger: a MIG instance
``max(memory slices / GPU memory slices, compute slices / GPU compute slices)`` (``3g.40gb`` on an H100: 0.5),
an MPS client ``max(cap / GPU memory, 1 / clients per GPU)``, a time-sliced replica its estimate / GPU memory
(a time-sliced replica has no memory or compute of its own, so its estimate is what it takes), a whole GPU 1.

The rules the packer applies with a :class:`TenantBook` (only when the pool has tenants; a pool without
tenants never builds one, so it plans exactly as before):

* a tenant's replicas in priority order (tier, creation, ordinal) are *within quota* while their running sum
  of GPU-equivalents stays within ``guaranteed``; the others *borrow*;
* replicas within quota are placed first, tier by tier, as in a pool without tenants; borrowers after them,
  handing out what is left by weight (the tenant with the least borrowed per unit of weight goes next);
* no tenant holds more than its ceiling (``TenantQuota``);
* a replica within quota that finds no room first takes the place of another tenant's borrowed replica
  (``ReclaimedByTenant``), of any tier, before tier order applies; a borrowing replica never displaces
  another tenant's replica within quota.

Reservations and segments are outside tenant quotas: their GPUs are chosen before packing, and a replica on a
lent reserved GPU counts towards nobody's quota.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from slm_operator.planner.model import PoolPolicy, TenantPolicy, TenantUsage
from slm_operator.planner.state import Context, Dep, Gpu, Rep, held_bytes, mps_cap
from slm_operator.planner.vocabulary import MIG, MPS, ROLE_POOL, TIME_SLICING, Mechanism

#: tolerance of quota comparisons (sums of fractions such as 1/7)
EPS = 1e-9
#: the tenant of deployments that name none (or an unknown one): no guarantee, no ceiling
UNNAMED = "(none)"


def share_gpu_equivalents(gpu: Gpu, mech: Mechanism | None, prof: int, size: int) -> float:
    """GPU-equivalents of a share on ``gpu``: the larger of its memory and compute fractions."""
    if mech == MIG and gpu.geo is not None and prof >= 0:
        p = gpu.model.mig_profiles[prof]
        return max(p.memory_slices / gpu.model.memory_slices, p.compute_slices / gpu.model.compute_slices)
    if mech == MPS:
        n = gpu.node.n if gpu.node.n >= 2 else 2
        return max(mps_cap(gpu.mem_mib, n) / gpu.mem, 1 / n)
    if mech == TIME_SLICING:
        return min(1.0, size / gpu.mem)
    return 1.0


def replica_gpu_equivalents(r: Rep) -> float:
    """GPU-equivalents of a placed replica; 0 on a lent reserved GPU (outside tenant quotas) or unplaced."""
    g = r.gpu
    if g is None or g.role != ROLE_POOL:
        return 0.0
    return share_gpu_equivalents(g, r.mech, r.prof, r.dep.size)


class TenantState:
    """One tenant during a planning pass: its quota and the GPU-equivalents its placed replicas hold."""

    __slots__ = ("ceiling", "guaranteed", "name", "used", "weight")

    def __init__(self, t: TenantPolicy) -> None:
        self.name = t.name
        self.guaranteed = t.guaranteed
        self.ceiling = t.ceiling
        self.weight = t.weight
        self.used = 0.0

    def room(self) -> float:
        """GPU-equivalents the tenant may still take before its ceiling."""
        return float("inf") if self.ceiling is None else self.ceiling - self.used


class TenantBook:
    """The tenants of one pass and the replica -> GPU-equivalents it counted (the packer keeps it current)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tenants: dict[str, TenantState] = {t.name: TenantState(t) for t in ctx.policy.tenants}
        self.tenants.setdefault(UNNAMED, TenantState(TenantPolicy(name=UNNAMED)))
        self.counted: dict[int, float] = {}  # id(rep) -> GPU-equivalents counted for it
        #: id(rep) -> its position in priority order (preemption evicts the lowest-priority replicas first)
        self.pos: dict[int, int] = {id(r): i for i, r in enumerate(sorted(ctx.reps, key=Rep.sort_key))}
        for r in ctx.reps:
            if r.gpu is not None:
                self.on_put(r)

    def of(self, dep: Dep) -> TenantState:
        t = dep.demand.tenant
        return self.tenants.get(t, self.tenants[UNNAMED]) if t else self.tenants[UNNAMED]

    def on_put(self, r: Rep) -> None:
        eq = replica_gpu_equivalents(r)
        self.counted[id(r)] = eq
        self.of(r.dep).used += eq

    def on_remove(self, r: Rep) -> None:
        self.of(r.dep).used -= self.counted.pop(id(r), 0.0)

    # -------------------------------------------------------------------------------------- classification

    def classify(self, estimate: dict[int, float]) -> None:
        """Mark each replica within its tenant's quota or borrowing (``Rep.tborrow``), walking each tenant's
        running (pinned) replicas in priority order, then its others in priority order: a running replica
        within quota stays within quota when more replicas of its tenant arrive (they may still preempt it by
        tier order, as in a pool without tenants). A placed replica counts what it holds, an unplaced one
        ``estimate`` (by deployment uid: the share a new GPU would give it)."""
        running: dict[str, float] = {}
        ordered = sorted(self.ctx.reps, key=Rep.sort_key)
        for r in [r for r in ordered if r.gpu is not None] + [r for r in ordered if r.gpu is None]:
            t = self.of(r.dep)
            eq = self.counted.get(id(r), 0.0) if r.gpu is not None else estimate.get(r.dep.uid, 1.0)
            total = running.get(t.name, 0.0) + eq
            running[t.name] = total
            r.tborrow = total > t.guaranteed + EPS

    def borrow_order(self, waiting: list[Rep], estimate: dict[int, float]) -> list[Rep]:
        """Borrowers in the order idle capacity is handed out: repeatedly the tenant with the least borrowed
        per unit of weight (counting what it is handed in this order), its next replica by priority."""
        queues: dict[str, list[Rep]] = {}
        for r in waiting:
            queues.setdefault(self.of(r.dep).name, []).append(r)
        heap: list[tuple[float, str, int]] = []
        borrowed: dict[str, float] = {}
        for name in sorted(queues):
            t = self.tenants[name]
            borrowed[name] = max(0.0, t.used - t.guaranteed)
            heapq.heappush(heap, (borrowed[name] / t.weight, name, 0))
        out: list[Rep] = []
        while heap:
            _, name, i = heapq.heappop(heap)
            q = queues[name]
            r = q[i]
            out.append(r)
            borrowed[name] += estimate.get(r.dep.uid, 1.0)
            if i + 1 < len(q):
                heapq.heappush(heap, (borrowed[name] / self.tenants[name].weight, name, i + 1))
        return out

    # -------------------------------------------------------------------------------------- preemption

    def claims(self, r: Rep) -> bool:
        """Whether ``r`` is within its tenant's quota (it may reclaim other tenants' borrowed capacity)."""
        return not r.tborrow

    def reclaimable(self, r: Rep, q: Rep) -> bool:
        """Whether ``q`` yields to ``r`` as another tenant's borrowed replica, whatever their tiers."""
        return not r.tborrow and q.tborrow and self.of(q.dep) is not self.of(r.dep)

    def victims(self, r: Rep, reps: Iterable[Rep]) -> list[Rep]:
        """Replicas on one GPU that may yield to ``r``: other tenants' borrowed replicas when ``r`` claims
        its quota (first), then lower tiers, except that a borrowing ``r`` never displaces another tenant's
        replica within quota. Sorted first to yield first."""
        mine = self.of(r.dep)
        out: list[Rep] = []
        for q in reps:
            other = self.of(q.dep) is not mine
            if (other and q.tborrow and not r.tborrow) or (
                q.dep.rank > r.dep.rank and (not other or q.tborrow or not r.tborrow)
            ):
                out.append(q)
        out.sort(key=lambda q: (self.reclaimable(r, q), q.sort_key()), reverse=True)
        return out


def estimate_of(ctx: Context, dep: Dep, kind: Mechanism, model: str, param: int) -> float:
    """GPU-equivalents of the share a new GPU option gives ``dep`` (before it is placed)."""
    m = ctx.models[model]
    if kind == MIG:
        p = m.mig_profiles[param]
        return max(p.memory_slices / m.memory_slices, p.compute_slices / m.compute_slices)
    if kind == MPS:
        return 1 / max(param, 2)
    if kind == TIME_SLICING:
        return min(1.0, dep.size / m.memory_bytes)
    return 1.0


def tenant_usage(ctx: Context) -> tuple[TenantUsage, ...]:
    """Per tenant of the policy (and "(none)" when some deployment names no known tenant): its quota, what its
    placed replicas hold within quota and borrowed (priority order, final shares), and its unplaced replicas."""
    policy: PoolPolicy = ctx.policy
    if not policy.tenants:
        return ()
    by_name = {t.name: t for t in policy.tenants}
    acc: dict[str, dict[str, float]] = {}
    borrowed: dict[str, dict[str, list[int]]] = {}
    for r in sorted(ctx.reps, key=Rep.sort_key):
        name = r.dep.demand.tenant if r.dep.demand.tenant in by_name else UNNAMED
        a = acc.setdefault(name, dict.fromkeys(("eq_g", "eq_b", "mem_g", "mem_b", "n_g", "n_b", "n_u"), 0.0))
        if r.gpu is None:
            a["n_u"] += 1
            continue
        eq = replica_gpu_equivalents(r)
        held = held_bytes(r, r.gpu) if r.gpu.role == ROLE_POOL else 0
        quota = by_name[name].guaranteed if name in by_name else 0.0
        if a["eq_g"] + eq <= quota + EPS and not a["eq_b"]:
            a["eq_g"] += eq
            a["mem_g"] += held
            a["n_g"] += 1
        else:
            a["eq_b"] += eq
            a["mem_b"] += held
            a["n_b"] += 1
            borrowed.setdefault(name, {}).setdefault(r.dep.key, []).append(r.ordinal)
    names = [t.name for t in policy.tenants] + ([UNNAMED] if UNNAMED in acc else [])
    out = []
    for name in names:
        t = by_name.get(name) or TenantPolicy(name=name)
        a = acc.get(name) or {}
        out.append(
            TenantUsage(
                name=name,
                guaranteed=t.guaranteed,
                ceiling=t.ceiling,
                weight=t.weight,
                used_guaranteed=round(a.get("eq_g", 0.0), 4),
                used_borrowed=round(a.get("eq_b", 0.0), 4),
                memory_guaranteed_bytes=int(a.get("mem_g", 0)),
                memory_borrowed_bytes=int(a.get("mem_b", 0)),
                replicas_guaranteed=int(a.get("n_g", 0)),
                replicas_borrowed=int(a.get("n_b", 0)),
                replicas_unplaced=int(a.get("n_u", 0)),
                borrowed={k: tuple(sorted(v)) for k, v in sorted(borrowed.get(name, {}).items())},
            )
        )
    return tuple(out)


__all__ = [
    "EPS",
    "TenantBook",
    "TenantState",
    "estimate_of",
    "replica_gpu_equivalents",
    "share_gpu_equivalents",
    "tenant_usage",
]
