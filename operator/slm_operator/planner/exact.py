"""Exact planning with OR-Tools CP-SAT for small pools: a test oracle and ``plan_pool(..., optimize=True)``.

The model (docs/planner.md explains the choices):

* per GPU a mode (MIG, MPS, time-slicing, whole GPU, unused); per node at most one of MPS / time-slicing, and
  for MPS one clients-per-GPU value N out of 2..limit (a boolean per candidate);
* MIG: one optional instance per (profile, legal start) with "at most one instance per memory slice",
  compute slices, max counts and one ``+me``; replicas take instances of a profile whose usable memory holds
  them (counts per profile);
* MPS: clients per GPU <= N and no client with an estimate above GPU memory / N;
  time-slicing: replicas per GPU <= the node's replicas, sum of estimates <= memory x oversubscription;
* tiers, allowed mechanisms, explicit shares, reservations (BestEffort may borrow lendable reserved GPUs whole)
  and the current placement (running replicas: frozen layouts under ``repartition: Never``).

Objective, lexicographic through weights: replicas placed by tier (Guaranteed first), running replicas kept
(by tier, interleaved so a move is only worth placing a higher tier), replicas of a deployment sharing a GPU,
whole GPUs for Burstable/BestEffort and borrowed GPUs, GPUs used, then wasted memory (share memory minus
estimate, in GiB). The heuristic plan is the solution hint; ortools is imported only here and only when used.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.planner.assemble import build_plan
from slm_operator.planner.heuristic import run_heuristic
from slm_operator.planner.mig import MigGeometry, fitting_profiles
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.planner.packer import Packer
from slm_operator.planner.state import (
    Context,
    Gpu,
    Node,
    Rep,
    _ts_n,
    attach,
    build_context,
    mps_cap,
)
from slm_operator.planner.vocabulary import (
    TIER_MECHANISMS,
    EvictionReason,
    GpuRole,
    Mechanism,
    NodeMode,
    Tier,
)

GiB = 1 << 30
#: instances larger than this (replicas x candidate GPUs) go to the heuristic
MAX_PAIRS = 2500
MAX_GPUS = 48


@dataclass
class ExactResult:
    plan: Plan
    status: str  # "OPTIMAL", "FEASIBLE", "FALLBACK: <why>"
    objective: int | None
    heuristic_objective: int | None
    #: what the solve cost: wall-clock seconds and CP-SAT's deterministic time (0 when CP-SAT did not run)
    wall_seconds: float = 0.0
    deterministic_seconds: float = 0.0


def optimize_pool(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
    *,
    time_budget_s: float = 10.0,
    workers: int = 1,
) -> Plan:
    """The exact plan when CP-SAT finds one within the budget, else the heuristic plan."""
    return solve_exact(policy, nodes, demands, current, time_budget_s=time_budget_s, workers=workers).plan


def _heuristic(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand], cur: list[CurrentPlacement]
) -> Context:
    return run_heuristic(policy, nodes, demands, cur)


def solve_exact(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
    *,
    time_budget_s: float = 10.0,
    workers: int = 1,
    hint: bool = True,
    stable: bool = False,
    deterministic_budget_s: float | None = None,
) -> ExactResult:
    """CP-SAT on the pool, hinted by the heuristic plan (which it returns when it cannot do better).

    ``stable``: every running replica the heuristic keeps where it is must stay there (the operator's portfolio:
    never more disruption than the heuristic); the result is then optimal among those plans.
    ``deterministic_budget_s``: a limit in CP-SAT's deterministic time, so that the same inputs give the same
    plan on any machine and under any load; ``time_budget_s`` stays the wall-clock cap."""
    cur = list(current)
    hctx = _heuristic(policy, nodes, demands, cur)
    heur_plan = build_plan(hctx)
    if policy.tenants:  # the CP-SAT model has no tenant quotas (docs/tenants.md)
        return ExactResult(heur_plan, "FALLBACK: the pool has tenants", None, None)
    try:
        from ortools.sat.python import cp_model
    except ImportError:  # pragma: no cover - ortools is a dev/solver extra
        return ExactResult(heur_plan, "FALLBACK: ortools is not installed", None, None)
    ctx = build_context(policy, nodes, demands, cur)
    pins, frozen, node_modes = _unpin(ctx)
    gpus = [
        g
        for g in ctx.gpus
        if g.node.schedulable and (g.role == GpuRole.POOL or (g.role == GpuRole.RESERVED and g.lendable))
    ]
    gpus += [
        g
        for g in ctx.gpus
        if not g.node.schedulable and g.role == GpuRole.POOL and g.gid in {p[0].gid for p in pins.values()}
    ]
    reps = ctx.reps
    if len(gpus) > MAX_GPUS or len(gpus) * max(1, len(reps)) > MAX_PAIRS:
        return ExactResult(
            heur_plan, f"FALLBACK: too large ({len(reps)} replicas x {len(gpus)} GPUs)", None, None
        )
    b = _Builder(ctx, gpus, pins, frozen, node_modes, cp_model)
    b.build()
    if stable:
        b.keep_as(hctx)
    h_obj = None
    if hint:
        h_obj = b.hint_from(hctx)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, float(time_budget_s))
    if deterministic_budget_s is not None:
        solver.parameters.max_deterministic_time = max(0.01, float(deterministic_budget_s))
    solver.parameters.num_search_workers = max(1, workers)
    solver.parameters.random_seed = 0
    status = solver.Solve(b.m)
    cost = (solver.WallTime(), solver.ResponseProto().deterministic_time)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ExactResult(heur_plan, "FALLBACK: no solution within the time budget", None, h_obj, *cost)
    obj = round(solver.ObjectiveValue())
    if h_obj is not None and obj > h_obj:
        return ExactResult(heur_plan, "FALLBACK: heuristic plan is better", obj, h_obj, *cost)
    b.apply(solver)
    optimal = status == cp_model.OPTIMAL
    plan = build_plan(ctx, solver="exact", optimal=optimal)
    return ExactResult(plan, "OPTIMAL" if optimal else "FEASIBLE", obj, h_obj, *cost)


Pins = dict[int, tuple[Gpu, Mechanism, int]]
Frozen = dict[int, tuple[int, ...]]
NodeModes = dict[int, tuple[NodeMode, int]]
#: a replica's choice: (replica index, GPU id, mechanism, MIG profile index or -1)
XKey = tuple[int, int, Mechanism, int]


def _unpin(ctx: Context) -> tuple[Pins, Frozen, NodeModes]:
    """Detach the pinned replicas; return their placement by id(rep) (the exact model decides again), the
    frozen MIG layouts by GPU id and the node modes of the pinned state."""
    pins: Pins = {}
    for r in ctx.reps:
        if r.pinned and r.gpu is not None:
            pins[id(r)] = (r.gpu, r.mech or Mechanism.EXCLUSIVE, r.prof)
    frozen = {g.gid: g.frozen for g in ctx.gpus}
    node_n = {n.pos: (n.mode, n.n) for n in ctx.nodes}
    for r in ctx.reps:
        if r.gpu is not None:
            g = r.gpu
            g.reps.remove(r)
            r.gpu = None
            r.mech = None
            r.prof = -1
    for g in ctx.gpus:
        g.reps = []
        g.deps = {}
        g.mig_state = 0
        g.ts_used = 0
        g.free_inst = []
        g.mode = None
        g.frozen = None
    for n in ctx.nodes:
        n.deps = {}
        n.used = 0
        n.whole = sum(1 for g in n.gpus if g.role != GpuRole.POOL)
        n.mode = NodeMode.NONE if n.whole else NodeMode.FREE
        n.n = 0
        n.fixed = False
    return pins, {gid: f for gid, f in frozen.items() if f is not None}, node_n


class _Builder:
    def __init__(
        self, ctx: Context, gpus: list[Gpu], pins: Pins, frozen: Frozen, node_modes: NodeModes, cp_model: Any
    ) -> None:
        self.ctx = ctx
        self.gpus = gpus
        self.pins = pins
        self.cp = cp_model
        self.m: Any = cp_model.CpModel()
        self.frozen = frozen
        self.node_n = node_modes
        # CP-SAT variables and expressions are typed Any (ortools ships no type stubs)
        self.x: dict[XKey, Any] = {}  # (rep idx, gid, mech, prof) -> bool var
        self.y: dict[tuple[int, int, int], Any] = {}  # (gid, prof, start)
        self.mode: dict[tuple[int, Mechanism], Any] = {}
        self.nv: dict[tuple[int, int], Any] = {}  # (node pos, N) MPS clients per GPU
        self.mps_ns: dict[int, list[int]] = {}  # node pos -> the N of its ``nv`` variables, ascending
        self.nmode: dict[tuple[int, NodeMode], Any] = {}
        self.used: dict[int, Any] = {}
        self.placed: dict[int, Any] = {}
        self.stay: dict[int, Any] = {}

    # -------------------------------------------------------------------------------------------- model
    def build(self) -> None:
        """The whole model, step by step (the order of variables and constraints is part of the result: CP-SAT
        with one worker is deterministic for a given model, so a reordering can change the plan found)."""
        node_of = {n.pos: n for n in self.ctx.nodes}
        for p in sorted({g.node.pos for g in self.gpus}):
            self._node_vars(node_of[p])
        for g in self.gpus:
            self._gpu_mode_vars(g)
            if g.role == GpuRole.POOL and g.geo is not None:
                self._mig_instances(g, g.geo)
        for ri, r in enumerate(self.ctx.reps):
            self._rep_vars(ri, r)
        x_by_gpu: dict[int, list[tuple[XKey, Any]]] = {}
        for key, v in self.x.items():
            x_by_gpu.setdefault(key[1], []).append((key, v))
        for g in self.gpus:
            self._capacity(g, x_by_gpu.get(g.gid, []))
        self._frozen_constraints()
        self._symmetry()
        self._objective()

    def _node_vars(self, node: Node) -> None:
        """A node is MPS, time-sliced or neither (reserved/segment GPUs: neither); an MPS node picks one
        clients-per-GPU value."""
        m, p = self.m, node.pos
        for node_mode in (NodeMode.MPS, NodeMode.TIME_SLICING):
            self.nmode[(p, node_mode)] = m.NewBoolVar(f"n{p}_{node_mode}")
        m.Add(self.nmode[(p, NodeMode.MPS)] + self.nmode[(p, NodeMode.TIME_SLICING)] <= 1)
        if node.whole:  # reserved / segment GPUs need sharing None
            m.Add(self.nmode[(p, NodeMode.MPS)] == 0)
            m.Add(self.nmode[(p, NodeMode.TIME_SLICING)] == 0)
        limit = min(self.ctx.policy.mps_max_clients_per_gpu, min(g.model.mps_max_clients for g in node.gpus))
        ks = list(range(2, limit + 1))
        self.mps_ns[p] = ks
        for k in ks:
            self.nv[(p, k)] = m.NewBoolVar(f"nv{p}_{k}")
        m.Add(sum(self.nv[(p, k)] for k in ks) == self.nmode[(p, NodeMode.MPS)])

    def _gpu_mode_vars(self, g: Gpu) -> None:
        """At most one mode per GPU (a reserved GPU: only whole), compatible with its node's sharing."""
        m, p, gid = self.m, g.node.pos, g.gid
        pool = g.role == GpuRole.POOL
        modes: list[Any] = []
        for kind in (Mechanism.MIG, Mechanism.MPS, Mechanism.TIME_SLICING, Mechanism.EXCLUSIVE):
            if not pool and kind != Mechanism.EXCLUSIVE:
                continue
            if kind == Mechanism.MIG and g.geo is None:
                continue
            v = self.mode[(gid, kind)] = m.NewBoolVar(f"g{gid}_{kind}")
            modes.append(v)
        m.Add(sum(modes) <= 1)
        if (gid, Mechanism.MPS) in self.mode:
            m.Add(self.mode[(gid, Mechanism.MPS)] <= self.nmode[(p, NodeMode.MPS)])
        if (gid, Mechanism.TIME_SLICING) in self.mode:
            m.Add(self.mode[(gid, Mechanism.TIME_SLICING)] <= self.nmode[(p, NodeMode.TIME_SLICING)])
        if (gid, Mechanism.MIG) in self.mode:
            m.Add(self.mode[(gid, Mechanism.MIG)] + self.nmode[(p, NodeMode.MPS)] <= 1)
        m.Add(
            self.mode[(gid, Mechanism.EXCLUSIVE)]
            + self.nmode[(p, NodeMode.MPS)]
            + self.nmode[(p, NodeMode.TIME_SLICING)]
            <= 1
        )

    def _mig_instances(self, g: Gpu, geo: MigGeometry) -> None:
        """One optional instance per (profile, legal start): max counts, one instance per memory slice,
        compute slices, at most one ``+me`` instance."""
        m, gid, y = self.m, g.gid, self.y
        for pi, prof in enumerate(geo.profiles):
            for s in prof.starts:
                v = m.NewBoolVar(f"y{gid}_{pi}_{s}")
                y[(gid, pi, s)] = v
                m.Add(v <= self.mode[(gid, Mechanism.MIG)])
            m.Add(sum(y[(gid, pi, s)] for s in prof.starts) <= prof.max_count)
        for sl in range(geo.memory_slices):
            cover = [
                y[(gid, pi, s)]
                for pi, prof in enumerate(geo.profiles)
                for s in prof.starts
                if s <= sl < s + prof.memory_slices
            ]
            m.Add(sum(cover) <= 1)
        m.Add(
            sum(
                prof.compute_slices * y[(gid, pi, s)]
                for pi, prof in enumerate(geo.profiles)
                for s in prof.starts
            )
            <= geo.compute_slices
        )
        m.Add(
            sum(
                y[(gid, pi, s)]
                for pi, prof in enumerate(geo.profiles)
                if prof.media_extensions
                for s in prof.starts
            )
            <= 1
        )

    def _capacity(self, g: Gpu, xs: list[tuple[XKey, Any]]) -> None:
        """Link the replicas' choices on one GPU (``xs``, in creation order) to its instances, mode and use."""
        if g.geo is not None and g.role == GpuRole.POOL:
            self._mig_capacity(g, g.geo, xs)
        mps = [(key, v) for key, v in xs if key[2] == Mechanism.MPS]
        if mps:
            self._mps_capacity(g, mps)
        ts = [(key, v) for key, v in xs if key[2] == Mechanism.TIME_SLICING]
        if ts:
            self._ts_capacity(g, ts)
        ex = [v for key, v in xs if key[2] == Mechanism.EXCLUSIVE]
        if ex:
            self.m.Add(sum(ex) <= self.mode[(g.gid, Mechanism.EXCLUSIVE)])
        self._used(g, xs)

    def _mig_capacity(self, g: Gpu, geo: MigGeometry, xs: list[tuple[XKey, Any]]) -> None:
        """Replicas of a profile <= instances of that profile."""
        for pi, prof in enumerate(geo.profiles):
            use = [v for (_, _, k, p), v in xs if k == Mechanism.MIG and p == pi]
            if use:
                self.m.Add(sum(use) <= sum(self.y[(g.gid, pi, s)] for s in prof.starts))

    def _mps_capacity(self, g: Gpu, mps: list[tuple[XKey, Any]]) -> None:
        """Clients <= the node's clients per GPU N, and no client with an estimate above the cap at N."""
        m, p = self.m, g.node.pos
        for _, v in mps:
            m.Add(v <= self.mode[(g.gid, Mechanism.MPS)])
        ks = self.mps_ns[p]
        m.Add(sum(v for _, v in mps) <= sum(k * self.nv[(p, k)] for k in ks))
        for (ri, _, _, _), v in mps:
            size = self.ctx.reps[ri].dep.size
            for k in ks:
                if mps_cap(g.mem_mib, k) < size:
                    m.Add(v + self.nv[(p, k)] <= 1)

    def _ts_capacity(self, g: Gpu, ts: list[tuple[XKey, Any]]) -> None:
        """Time-sliced replicas <= the node's replicas per GPU; their estimates (MiB) <= the oversubscribed
        memory."""
        ctx, m = self.ctx, self.m
        for _, v in ts:
            m.Add(v <= self.mode[(g.gid, Mechanism.TIME_SLICING)])
        m.Add(sum(v for _, v in ts) <= _ts_n(ctx, g.node))
        cap_mib = (g.mem * ctx.ts_factor // 100) >> 20
        m.Add(sum(((ctx.reps[ri].dep.size + (1 << 20) - 1) >> 20) * v for (ri, _, _, _), v in ts) <= cap_mib)

    def _used(self, g: Gpu, xs: list[tuple[XKey, Any]]) -> None:
        """A GPU is used exactly when some replica is on it."""
        m = self.m
        u = m.NewBoolVar(f"u{g.gid}")
        self.used[g.gid] = u
        for _, v in xs:
            m.Add(v <= u)
        if xs:
            m.Add(u <= sum(v for _, v in xs))
        else:
            m.Add(u == 0)

    def _symmetry(self) -> None:
        """Interchangeable GPUs (same node and model, nothing running) are used in index order, and identical
        nodes (same models, nothing running, no reservation) in name order: cuts symmetric search."""
        ctx, m = self.ctx, self.m
        pinned_gpus = {p[0].gid for p in self.pins.values()}
        sig_nodes: dict[tuple[object, ...], list[int]] = {}
        for node in ctx.nodes:
            free = [
                g
                for g in node.gpus
                if g.gid in self.used and g.gid not in pinned_gpus and g.role == GpuRole.POOL
            ]
            by_model: dict[str, list[Gpu]] = {}
            for g in free:
                by_model.setdefault(g.key, []).append(g)
            for lst in by_model.values():
                for a, b2 in itertools.pairwise(lst):
                    m.Add(self.used[a.gid] >= self.used[b2.gid])
            if len(free) == len(node.gpus) and node.schedulable and not node.whole:
                sig = tuple(g.key for g in node.gpus)
                sig_nodes.setdefault(sig, []).append(node.pos)
        node_of = {n.pos: n for n in ctx.nodes}
        for poss in sig_nodes.values():
            for pa, pb in itertools.pairwise(poss):
                ua = sum(self.used[g.gid] for g in node_of[pa].gpus)
                ub = sum(self.used[g.gid] for g in node_of[pb].gpus)
                m.Add(ua >= ub)

    def _rep_vars(self, ri: int, r: Rep) -> None:
        ctx, m = self.ctx, self.m
        dep = r.dep
        mechs = TIER_MECHANISMS[dep.tier] & ctx.allowed
        if dep.mech is not None:
            mechs = mechs & {dep.mech}
        opts: list[Any] = []
        limit = ctx.policy.mps_max_clients_per_gpu
        for g in self.gpus:
            if g.role != GpuRole.POOL:
                # lendable reserved GPU: BestEffort borrows it whole
                if (
                    dep.rank == 2
                    and dep.mech in (None, Mechanism.EXCLUSIVE)
                    and dep.profile is None
                    and g.mem >= dep.size
                ):
                    self._x(ri, g, Mechanism.EXCLUSIVE, -1, opts)
                continue
            if not g.node.schedulable and not (id(r) in self.pins and self.pins[id(r)][0] is g):
                continue
            if Mechanism.MIG in mechs and g.geo is not None:
                if dep.profile is not None:
                    pis = [g.geo.index[dep.profile]] if dep.profile in g.geo.index else []
                    pis = [p for p in pis if g.geo.profiles[p].memory_bytes >= dep.size]
                else:
                    pis = list(fitting_profiles(g.key, dep.size))
                for pi in pis:
                    self._x(ri, g, Mechanism.MIG, pi, opts)
            if (
                Mechanism.MPS in mechs
                and mps_cap(g.mem_mib, 2) >= dep.size
                and min(limit, g.model.mps_max_clients) >= 2
            ):
                self._x(ri, g, Mechanism.MPS, -1, opts)
            if Mechanism.TIME_SLICING in mechs and dep.size <= g.mem * ctx.ts_factor // 100:
                self._x(ri, g, Mechanism.TIME_SLICING, -1, opts)
            if Mechanism.EXCLUSIVE in mechs and dep.size <= g.mem:
                self._x(ri, g, Mechanism.EXCLUSIVE, -1, opts)
        pl = m.NewBoolVar(f"placed{ri}")
        if opts:
            m.Add(sum(opts) == pl)
        else:
            m.Add(pl == 0)
        self.placed[ri] = pl
        pin = self.pins.get(id(r))
        if pin is not None:
            g, mech, prof = pin
            key = (ri, g.gid, mech, prof)
            if key in self.x:
                self.stay[ri] = self.x[key]

    def _x(self, ri: int, g: Gpu, mech: Mechanism, prof: int, opts: list[Any]) -> None:
        v = self.m.NewBoolVar(f"x{ri}_{g.gid}_{mech}_{prof}")
        self.x[(ri, g.gid, mech, prof)] = v
        opts.append(v)

    def _frozen_constraints(self) -> None:
        """Under ``repartition: Never`` a GPU keeps its layout while any of its running replicas stays there;
        an MPS node keeps its clients per GPU while any MPS client stays."""
        ctx, m = self.ctx, self.m
        if ctx.policy.may_repartition:
            return
        by_gpu: dict[int, list[object]] = {}
        mps_node: dict[int, list[object]] = {}
        for ri, v in self.stay.items():
            r = ctx.reps[ri]
            g, mech, _ = self.pins[id(r)]
            by_gpu.setdefault(g.gid, []).append(v)
            if mech == Mechanism.MPS:
                mps_node.setdefault(g.node.pos, []).append(v)
        for gid, vs in by_gpu.items():
            fz = self.frozen.get(gid)
            g = ctx.gpus[gid]
            if fz is None or g.geo is None:
                continue
            for v in vs:
                for pi, prof in enumerate(g.geo.profiles):
                    m.Add(sum(self.y[(gid, pi, s)] for s in prof.starts) == fz[pi]).OnlyEnforceIf(v)
        for pos, vs in mps_node.items():
            mode, n = self.node_n.get(pos, (NodeMode.FREE, 0))
            if mode == NodeMode.MPS and (pos, n) in self.nv:
                for v in vs:
                    m.Add(self.nv[(pos, n)] == 1).OnlyEnforceIf(v)

    def _weights(self) -> dict[str, int]:
        """Level weights, bottom up, each larger than the most all lower levels can add up to: wasted GiB,
        (repartition Allowed: moved running replicas), GPUs used, whole-GPU/borrow penalties, co-location,
        then (Never: moved BestEffort) placed BestEffort, (moved Burstable) placed Burstable, (moved
        Guaranteed) placed Guaranteed."""
        ctx = self.ctx
        n_rep = len(ctx.reps) + 1
        n_pin = len(self.stay) + 1
        waste_max = sum(math.ceil(g.mem / GiB) for g in self.gpus) + 1
        w: dict[str, int] = {"waste": 1}
        allowed = ctx.policy.may_repartition
        if allowed:
            w["move"] = waste_max
            w["gpu"] = waste_max * n_pin
        else:
            w["gpu"] = waste_max
        w["pen"] = w["gpu"] * (len(self.gpus) + 1)
        w["coloc"] = w["pen"] * n_rep
        top = w["coloc"] * n_rep
        for rank in (2, 1, 0):
            if not allowed:
                w[f"move{rank}"] = top
                top *= n_rep
            w[f"place{rank}"] = top
            top *= n_rep
        if allowed:
            for rank in (0, 1, 2):
                w[f"move{rank}"] = w["move"]
        return w

    def _objective(self) -> None:
        ctx, m = self.ctx, self.m
        w = self._weights()
        terms: list[Any] = []
        for ri, r in enumerate(ctx.reps):
            terms.append(w[f"place{r.dep.rank}"] * (1 - self.placed[ri]))
        for ri, v in self.stay.items():
            terms.append(w[f"move{ctx.reps[ri].dep.rank}"] * (1 - v))
        # co-location of one deployment's replicas
        by_dep_gpu: dict[tuple[int, int], list[Any]] = {}
        for (ri, gid, _, _), v in self.x.items():
            by_dep_gpu.setdefault((ctx.reps[ri].dep.uid, gid), []).append(v)
        for vs in by_dep_gpu.values():
            if len(vs) > 1:
                c = m.NewIntVar(0, len(vs), "")
                m.Add(c >= sum(vs) - 1)
                terms.append(w["coloc"] * c)
        for (ri, gid, mech, prof), v in self.x.items():
            r = ctx.reps[ri]
            g = ctx.gpus[gid]
            if _penalised(ctx, g, r, mech):
                terms.append(w["pen"] * v)
            waste = _waste(g, mech, prof, r.dep.size)
            if waste:
                terms.append(waste * v)
        for u in self.used.values():
            terms.append(w["gpu"] * u)
        m.Minimize(sum(terms))

    def keep_as(self, hctx: Context) -> None:
        """Every running replica the heuristic plan (``hctx``) keeps on its GPU, share and profile stays there
        in this model too (a replica whose place the model cannot express is left free: the caller compares
        the plans)."""
        kept = {
            (r.dep.key, r.ordinal): (r.gpu.gid, r.mech or Mechanism.EXCLUSIVE, r.prof)
            for r in hctx.reps
            if r.gpu is not None
        }
        for ri, v in self.stay.items():
            r = self.ctx.reps[ri]
            g, mech, prof = self.pins[id(r)]
            if kept.get((r.dep.key, r.ordinal)) == (g.gid, mech, prof):
                self.m.Add(v == 1)

    # -------------------------------------------------------------------------------------------- hint / result
    def hint_from(self, hctx: Context) -> int | None:
        """Give the heuristic plan as a solution hint; return its objective value under this model."""
        by_key = {(r.dep.key, r.ordinal): i for i, r in enumerate(self.ctx.reps)}
        chosen: dict[XKey, int] = {}
        choice_of: dict[int, XKey] = {}  # replica index -> its choice
        for r in hctx.reps:
            if r.gpu is None:
                continue
            ri = by_key[(r.dep.key, r.ordinal)]
            key = (ri, r.gpu.gid, r.mech or Mechanism.EXCLUSIVE, r.prof)
            chosen[key] = 1
            choice_of.setdefault(ri, key)
        for key, v in self.x.items():
            self.m.AddHint(v, chosen.get(key, 0))
        # objective of the hint under the same weights
        w = self._weights()
        total = 0
        used: set[int] = set()
        per_dep_gpu: dict[tuple[int, int], int] = {}
        for ri, r in enumerate(self.ctx.reps):
            choice = choice_of.get(ri)
            if choice is None:
                total += w[f"place{r.dep.rank}"]
            else:
                if choice not in self.x:
                    return None  # the heuristic did something this model does not express
                _, gid, mech, prof = choice
                used.add(gid)
                per_dep_gpu[(r.dep.uid, gid)] = per_dep_gpu.get((r.dep.uid, gid), 0) + 1
                g = self.ctx.gpus[gid]
                if _penalised(self.ctx, g, r, mech):
                    total += w["pen"]
                total += _waste(g, mech, prof, r.dep.size)
            if ri in self.stay:
                pin = self.pins[id(r)]
                if (ri, pin[0].gid, pin[1], pin[2]) not in chosen:
                    total += w[f"move{r.dep.rank}"]
        total += sum(w["coloc"] * (c - 1) for c in per_dep_gpu.values() if c > 1)
        total += w["gpu"] * len(used)
        return total

    def apply(self, solver: Any) -> None:
        """Write the solution into the context (node modes, GPU modes, replicas)."""
        ctx = self.ctx
        val = solver.Value
        node_of = {n.pos: n for n in ctx.nodes}
        for (pos, k), v in self.nmode.items():
            if val(v):
                node = node_of[pos]
                if k == NodeMode.MPS:
                    node.mode = NodeMode.MPS
                    node.n = next(n for n in self.mps_ns[pos] if val(self.nv[(pos, n)]))
                else:
                    node.mode = NodeMode.TIME_SLICING
                    node.n = _ts_n(ctx, node)
        # GPUs where a running replica stays: under ``repartition: Never`` they keep their frozen layout
        kept = {self.pins[id(ctx.reps[ri])][0].gid for ri, v in self.stay.items() if val(v)}
        chosen = sorted((key for key, v in self.x.items() if val(v)), key=lambda k: (k[1], k[0]))
        for ri, gid, mech, prof in chosen:
            r = ctx.reps[ri]
            g = ctx.gpus[gid]
            if mech == Mechanism.MIG and g.mode != Mechanism.MIG:
                g.mode = Mechanism.MIG
                g.mig_state = 0
                fz = self.frozen.get(gid)
                if fz is not None and not ctx.policy.may_repartition and gid in kept:
                    g.frozen = fz
                    g.free_inst = list(fz)
            if g.node.mode == NodeMode.FREE:
                g.node.mode = NodeMode.NONE
            attach(ctx, r, g, mech, prof)
        self._evictions_and_reasons()

    def _evictions_and_reasons(self) -> None:
        """A running replica the solution moved gets an eviction record; an unplaced replica its reason."""
        ctx = self.ctx
        for r in ctx.reps:
            pin = self.pins.get(id(r))
            if pin is not None and (r.gpu is not pin[0] or r.mech != pin[1] or r.prof != pin[2]):
                r.evicted = (
                    EvictionReason.DEFRAGMENTATION
                    if (ctx.policy.may_repartition and r.gpu is not None)
                    else EvictionReason.PREEMPTED_BY_HIGHER_TIER
                )
                r.evict_msg = "the exact solver moved it" if r.gpu is not None else "yielded to a higher tier"
        p = Packer(ctx)
        for r in ctx.reps:
            if r.gpu is None and r.unplaced is None:
                o = p.share_options(r.dep)
                r.unplaced = o.reason or p.capacity_reason(r)


def _penalised(ctx: Context, g: Gpu, r: Rep, mech: Mechanism) -> bool:
    """A borrowed reserved GPU, or a whole GPU for Burstable/BestEffort that could share (last resort)."""
    if mech != Mechanism.EXCLUSIVE:
        return False
    if g.role != GpuRole.POOL:
        return True
    dep = r.dep
    if dep.tier is Tier.GUARANTEED:
        return False
    mechs = TIER_MECHANISMS[dep.tier] & ctx.allowed
    if dep.mech is not None:
        mechs &= {dep.mech}
    return bool(mechs & {Mechanism.MIG, Mechanism.MPS, Mechanism.TIME_SLICING})


def _waste(g: Gpu, mech: Mechanism, prof: int, size: int) -> int:
    if mech == Mechanism.MIG and g.geo is not None:
        return max(0, (g.geo.profiles[prof].memory_bytes - size)) // GiB
    if mech == Mechanism.EXCLUSIVE:
        return max(0, g.mem - size) // GiB
    return 0


__all__ = ["ExactResult", "optimize_pool", "solve_exact"]
