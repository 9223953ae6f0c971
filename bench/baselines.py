"""Baselines for the packing benchmark (what users do today) and a lower bound on GPUs.

Every baseline works on the same inputs as the planner (policy, nodes, demands), keeps reservations and
segments out of the pool the same way (the planner's choice of GPUs is reused), and returns a small
:class:`BaselineResult`; placements are not legal plans in general (the result says which rules they break).

* ``whole_gpu``: one whole GPU per replica (the smallest GPU that holds it).
* ``static_mig_balanced``: the GPU Operator's static ``all-balanced`` MIG layout on every MIG-capable GPU,
  replicas first-fit by memory onto the smallest instance that holds them; whole GPUs elsewhere.
* ``time_slicing``: uniform time-slicing with 4 replicas per GPU, first-fit; a replica whose memory does
  not fit (sum of estimates above the GPU's memory) is a failure.
* ``memory_binpack``: first-fit decreasing on memory only, ignoring MIG geometry, tiers and node modes.
* ``lower_bound``: a volume bound per dimension (memory, MIG compute slices for replicas that need hard
  isolation, replica slots per GPU), solved as a small LP over the pool's GPU models (heterogeneous pools:
  the LP decides how many GPUs of each model to use and which replicas go to which model). A replica's
  footprint in the memory dimension is the smallest it can have over the shares it may use: memory slices / 8
  for MIG, 1 / (most equal MPS clients that each hold it) for MPS, estimate / (memory x oversubscription) for
  time-slicing, 1 for a whole GPU.
* ``layout_bound`` and ``node_bound``: tighter, still valid bounds reported beside it (MIG geometry as a
  configuration LP; then node-wide modes and whole GPUs and nodes, as a mixed-integer program).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.catalog import gpu_by_key
from slm_operator.planner.mig import fitting_profiles, geometry
from slm_operator.planner.model import Demand, NodeInventory, PoolPolicy
from slm_operator.planner.nodemip import bound_inputs, pool_gpus, solve_node_mip
from slm_operator.planner.state import mps_nmax
from slm_operator.planner.vocabulary import TIER_RANK


@dataclass
class BaselineResult:
    method: str
    gpus_used: int
    replicas_placed: int
    replicas_total: int
    #: placed replicas whose share breaks a rule (tier isolation, memory, mechanism not allowed)
    violations: int = 0
    memory_used_gpus_bytes: int = 0
    memory_allocated_bytes: int = 0
    notes: list[str] = field(default_factory=list)


_pool_gpus = pool_gpus


def _replicas(demands: Sequence[Demand]) -> list[tuple[int, Demand]]:
    """Every replica as (ordinal, demand), largest first (ties: priority order)."""
    reps = [(o, d) for d in demands for o in range(d.replicas)]
    reps.sort(key=lambda t: (-t[1].memory_bytes, TIER_RANK[t[1].tier], t[1].order_key, t[1].deployment, t[0]))
    return reps


class _FirstFit:
    """Leftmost position whose value is >= x, with point updates (a max segment tree): first fit in
    O(log n) per replica."""

    def __init__(self, values: list[int]) -> None:
        n = 1
        while n < max(1, len(values)):
            n *= 2
        self.n = n
        self.t = [-1] * (2 * n)
        for i, v in enumerate(values):
            self.t[n + i] = v
        for i in range(n - 1, 0, -1):
            self.t[i] = max(self.t[2 * i], self.t[2 * i + 1])

    def find(self, x: int) -> int:
        if self.t[1] < x:
            return -1
        i = 1
        while i < self.n:
            i = 2 * i if self.t[2 * i] >= x else 2 * i + 1
        return i - self.n

    def set(self, pos: int, v: int) -> None:
        i = pos + self.n
        self.t[i] = v
        i //= 2
        while i:
            self.t[i] = max(self.t[2 * i], self.t[2 * i + 1])
            i //= 2


def whole_gpu(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> BaselineResult:
    gpus = sorted(_pool_gpus(policy, nodes), key=lambda g: (g[3], g[0], g[1]))
    ff = _FirstFit([g[3] for g in gpus])  # smallest GPU that holds the replica (sorted by memory)
    placed = used_mem = alloc = 0
    reps = _replicas(demands)
    for _, d in reps:
        i = ff.find(d.memory_bytes)
        if i >= 0:
            ff.set(i, -1)
            placed += 1
            used_mem += gpus[i][3]
            alloc += d.memory_bytes
    viol = 0 if "Exclusive" in policy.allowed_mechanisms else placed
    return BaselineResult("whole-gpu", placed, placed, len(reps), viol, used_mem, alloc)


def whole_gpu_needed(demands: Sequence[Demand], nodes: Sequence[NodeInventory]) -> int:
    """GPUs the whole-GPU baseline needs to place every replica that fits some GPU of the pool."""
    biggest = max((gpu_by_key(g.model).memory_bytes for n in nodes for g in n.gpus), default=0)
    return sum(d.replicas for d in demands if d.memory_bytes <= biggest)


def static_mig_balanced(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> BaselineResult:
    # instances: (usable bytes, gpu id); whole GPUs for non-MIG parts
    slots: list[tuple[int, int, str]] = []
    gpu_mem: dict[int, int] = {}
    for gid, (_, _, key, mem) in enumerate(_pool_gpus(policy, nodes)):
        gpu_mem[gid] = mem
        model = gpu_by_key(key)
        if model.mig_capable and model.all_balanced:
            for name, count in sorted(model.all_balanced.items()):
                p = model.profile(name)
                slots.extend([(p.memory_bytes, gid, "MIG")] * count)
        else:
            slots.append((mem, gid, "Exclusive"))
    slots.sort(key=lambda s: (s[0], s[1]))
    ff = _FirstFit([s[0] for s in slots])  # the smallest free instance that holds the replica
    used: set[int] = set()
    placed = viol = alloc = 0
    reps = _replicas(demands)
    for _, d in reps:
        i = ff.find(d.memory_bytes)
        if i >= 0:
            ff.set(i, -1)
            used.add(slots[i][1])
            placed += 1
            alloc += d.memory_bytes
            if slots[i][2] not in policy.allowed_mechanisms:
                viol += 1
    return BaselineResult(
        "static-mig-balanced", len(used), placed, len(reps), viol, sum(gpu_mem[g] for g in used), alloc
    )


def time_slicing(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand], replicas_per_gpu: int = 4
) -> BaselineResult:
    """Uniform time-slicing: every GPU shared by ``replicas_per_gpu``; replicas arrive in creation order and
    take the first GPU with a free slot and room for their memory."""
    gpus = _pool_gpus(policy, nodes)
    count = [0] * len(gpus)
    left = [g[3] for g in gpus]
    ff = _FirstFit(list(left))
    placed = viol = alloc = 0
    reps = [
        (o, d) for d in sorted(demands, key=lambda d: (d.order_key, d.deployment)) for o in range(d.replicas)
    ]
    for _, d in reps:
        i = ff.find(d.memory_bytes)
        if i < 0:
            continue
        count[i] += 1
        left[i] -= d.memory_bytes
        ff.set(i, left[i] if count[i] < replicas_per_gpu else -1)
        placed += 1
        alloc += d.memory_bytes
        if d.tier != "BestEffort" or "TimeSlicing" not in policy.allowed_mechanisms:
            viol += 1
    used = [i for i in range(len(gpus)) if count[i]]
    return BaselineResult(
        f"time-slicing-{replicas_per_gpu}",
        len(used),
        placed,
        len(reps),
        viol,
        sum(gpus[i][3] for i in used),
        alloc,
    )


def memory_binpack(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> BaselineResult:
    """First-fit decreasing on memory only; GPUs opened largest first."""
    gpus = sorted(_pool_gpus(policy, nodes), key=lambda g: (-g[3], g[0], g[1]))
    ff = _FirstFit([0] * len(gpus))  # room of opened GPUs, in opening order
    left = [0] * len(gpus)
    opened = 0
    placed = viol = alloc = 0
    reps = _replicas(demands)
    nxt = 0
    for _, d in reps:
        s = d.memory_bytes
        i = ff.find(s)
        if i < 0:
            while nxt < len(gpus) and gpus[nxt][3] < s:
                nxt += 1  # skipped GPUs stay unused (too small for the largest remaining replicas)
            if nxt >= len(gpus):
                continue
            i = opened
            left[i] = gpus[nxt][3]
            opened += 1
            nxt += 1
        left[i] -= s
        ff.set(i, left[i])
        placed += 1
        alloc += s
        if d.tier != "BestEffort":
            viol += 1  # shares memory without isolation or caps
    return BaselineResult("memory-binpack", opened, placed, len(reps), viol, 0, alloc)


_bound_inputs = bound_inputs


@dataclass
class LowerBound:
    gpus: int
    lp_value: float
    #: simple single-dimension bounds (largest GPUs first), for reference
    memory_bound: int
    compute_bound: int
    slot_bound: int
    feasible: bool


def lower_bound(policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]) -> LowerBound:
    """LP volume bound: min sum_m x_m subject to, for every GPU model m and dimension d,
    sum_c y[c,m] * f[c,m,d] <= x_m, sum_m y[c,m] = count_c, x_m <= available_m. f is the smallest footprint of
    one replica of class c on one GPU of model m in dimension d over the shares it may use (memory: estimate /
    GPU memory, or memory slices / slices for Guaranteed; compute: MIG compute slices / 7 for Guaranteed;
    slots: 1 / most replicas a GPU can hold). ceil(LP optimum) is a valid lower bound on GPUs used."""
    avail, allowed, classes = _bound_inputs(policy, nodes, demands)
    models = sorted(avail)
    slot_cap = max(
        7 if "MIG" in allowed else 1,
        policy.mps_max_clients_per_gpu if "MPS" in allowed else 1,
        policy.ts_max_replicas_per_gpu if "TimeSlicing" in allowed else 1,
    )
    foot: dict[tuple[tuple[str, int], str], tuple[float, float, float]] = {}
    for c in sorted(classes):
        tier, size = c
        for m in models:
            model = gpu_by_key(m)
            geo = geometry(m)
            f = _footprint(tier, size, model.memory_bytes, m, geo is not None, allowed, policy, slot_cap)
            if f is not None:
                foot[(c, m)] = f
    simple_mem = _simple_bound(classes, foot, avail, 0)
    simple_cmp = _simple_bound(classes, foot, avail, 1)
    simple_slot = _simple_bound(classes, foot, avail, 2)
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:  # pragma: no cover - ortools is a dev dependency
        b = max(simple_mem, simple_cmp, simple_slot)
        return LowerBound(b, float(b), simple_mem, simple_cmp, simple_slot, True)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    x = {m: solver.NumVar(0, avail[m], f"x_{m}") for m in models}
    y = {}
    cons: dict[tuple[str, int], list[object]] = {}
    unplaceable = 0
    for c, cnt in sorted(classes.items()):
        ms = [m for m in models if (c, m) in foot]
        if not ms:
            unplaceable += cnt
            continue
        for m in ms:
            y[(c, m)] = solver.NumVar(0, cnt, "")
        solver.Add(sum(y[(c, m)] for m in ms) == cnt)
    for m in models:
        for dim in range(3):
            terms = [
                y[(c, m)] * foot[(c, m)][dim]
                for c in sorted(classes)
                if (c, m) in y and foot[(c, m)][dim] > 0
            ]
            if terms:
                solver.Add(sum(terms) <= x[m])
    solver.Minimize(sum(x.values()))
    status = solver.Solve()
    if status != pywraplp.Solver.OPTIMAL:
        total = sum(avail.values())
        return LowerBound(total, float(total), simple_mem, simple_cmp, simple_slot, False)
    val = solver.Objective().Value()
    del cons
    return LowerBound(
        max(math.ceil(val - 1e-6), simple_mem, simple_cmp, simple_slot),
        val,
        simple_mem,
        simple_cmp,
        simple_slot,
        True,
    )


@dataclass
class LayoutBound:
    gpus: int
    lp_value: float
    feasible: bool


def layout_bound(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> LayoutBound:
    """A tighter LP bound that knows MIG geometry (a configuration LP): a GPU in MIG mode holds one legal
    layout, so it is counted as one of the *maximal* legal layouts of its model (every legal layout is part of
    a maximal one) and offers that layout's instances; replicas on MIG use instances of profiles that hold
    them. GPUs not in MIG mode are counted by volume as in :func:`lower_bound`, with each replica taking one
    kind of share (an MPS client: 1 / n_max of the memory and 1 / the client limit of the slots; a time-sliced
    replica: its estimate / (memory x oversubscription) and 1 / the replica limit; a whole GPU: all of it).

    min sum_m (sum_L z[m,L] + w[m]) subject to
      sum_{m,share} y[c,m,share] = count_c                          (every replica gets a share)
      sum_c y[c,m,p] <= sum_L z[m,L] * L[p]                         (MIG instances of profile p on model m)
      sum_{c,o} y[c,m,o] * f[c,m,o,d] <= w[m]   for each dimension d  (non-MIG GPUs by volume)
      sum_L z[m,L] + w[m] <= GPUs of model m

    Every legal plan is a feasible point, so ceil(LP optimum) is a valid lower bound. It is at least as tight
    as the volume bound: a layout bounds memory and compute slices together, and the volume bound charges
    compute slices to Guaranteed replicas only (it lets eight Burstable 1g.10gb instances share an H100, where
    no layout holds more than seven)."""
    avail, allowed, classes = _bound_inputs(policy, nodes, demands)
    models = sorted(avail)
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:  # pragma: no cover - ortools is a dev dependency
        return LayoutBound(0, 0.0, False)
    solver = pywraplp.Solver.CreateSolver("GLOP")
    w = {m: solver.NumVar(0, avail[m], f"w_{m}") for m in models}
    z: dict[str, list[tuple[tuple[int, ...], Any]]] = {}
    for m in models:
        geo = geometry(m)
        if geo is None or "MIG" not in allowed:
            continue
        z[m] = [(st, solver.NumVar(0, avail[m], "")) for i, st in enumerate(geo.states) if geo.maximal[i]]
        solver.Add(w[m] + sum(v for _, v in z[m]) <= avail[m])
    mig_load: dict[tuple[str, int], list[Any]] = {}
    vol_load: dict[tuple[str, int], list[Any]] = {}
    for c, cnt in sorted(classes.items()):
        tier, size = c
        mechs = {"Guaranteed": {"MIG", "Exclusive"}, "Burstable": {"MIG", "MPS", "Exclusive"}}.get(
            tier, {"MIG", "MPS", "TimeSlicing", "Exclusive"}
        ) & allowed
        ys = []
        for m in models:
            if "MIG" in mechs and m in z:
                for pi in fitting_profiles(m, size):
                    y = solver.NumVar(0, cnt, "")
                    ys.append(y)
                    mig_load.setdefault((m, pi), []).append(y)
            for f in _shares(size, m, mechs, policy):
                y = solver.NumVar(0, cnt, "")
                ys.append(y)
                for dim in range(3):
                    if f[dim] > 0:
                        vol_load.setdefault((m, dim), []).append(y * f[dim])
        if ys:
            solver.Add(sum(ys) == cnt)
    for (m, pi), terms in mig_load.items():
        solver.Add(sum(terms) <= sum(v * st[pi] for st, v in z[m] if st[pi]))
    for (m, _), terms in vol_load.items():
        solver.Add(sum(terms) <= w[m])
    solver.Minimize(sum(w.values()) + sum(v for lst in z.values() for _, v in lst))
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return LayoutBound(sum(avail.values()), float(sum(avail.values())), False)
    val = solver.Objective().Value()
    return LayoutBound(math.ceil(val - 1e-6), val, True)


def _shares(size: int, key: str, mechs: set[str], policy: PoolPolicy) -> list[tuple[float, float, float]]:
    """(memory, compute, slot) fractions of one non-MIG GPU of model ``key`` for each kind of share a replica
    of ``size`` may take there (see :func:`layout_bound`)."""
    model = gpu_by_key(key)
    mem = model.memory_bytes
    out: list[tuple[float, float, float]] = []
    if "MPS" in mechs:
        limit = min(policy.mps_max_clients_per_gpu, model.mps_max_clients)
        n = mps_nmax(model.memory_mib, size, limit)
        if n >= 2:
            out.append((1 / n, 0.0, 1 / limit))
    oversub = policy.memory_oversubscription_percent
    if "TimeSlicing" in mechs and size * 100 <= mem * oversub:
        out.append((size * 100 / (mem * oversub), 0.0, 1 / policy.ts_max_replicas_per_gpu))
    if "Exclusive" in mechs and size <= mem:
        out.append((1.0, 1.0, 1.0))
    return out


def _footprint(
    tier: str,
    size: int,
    mem: int,
    key: str,
    mig_capable: bool,
    allowed: set[str],
    policy: PoolPolicy,
    slot_cap: int,
) -> tuple[float, float, float] | None:
    """Smallest (memory, compute, slot) fraction of one GPU a replica can occupy, or None if it cannot go there."""
    mechs = {"Guaranteed": {"MIG", "Exclusive"}, "Burstable": {"MIG", "MPS", "Exclusive"}}.get(
        tier, {"MIG", "MPS", "TimeSlicing", "Exclusive"}
    ) & allowed
    model = gpu_by_key(key)
    options: list[tuple[float, float, float]] = []
    if "MIG" in mechs and mig_capable:
        for pi in fitting_profiles(key, size):
            p = model.mig_profiles[pi]
            options.append(
                (
                    p.memory_slices / model.memory_slices,
                    p.compute_slices / model.compute_slices if tier == "Guaranteed" else 0.0,
                    1 / slot_cap,
                )
            )
    if "MPS" in mechs:
        # N clients per GPU each need size <= mem / N, so N <= n_max(size): a client occupies >= 1 / n_max
        n = mps_nmax(model.memory_mib, size, min(policy.mps_max_clients_per_gpu, model.mps_max_clients))
        if n >= 2:
            options.append((1 / n, 0.0, 1 / slot_cap))
    if "TimeSlicing" in mechs and size <= mem * policy.memory_oversubscription_percent // 100:
        options.append((size / (mem * policy.memory_oversubscription_percent / 100), 0.0, 1 / slot_cap))
    if "Exclusive" in mechs and size <= mem:
        options.append((1.0, 1.0, 1.0))
    if not options:
        return None
    return (min(o[0] for o in options), min(o[1] for o in options), min(o[2] for o in options))


def _simple_bound(
    classes: dict[tuple[str, int], int],
    foot: dict[tuple[tuple[str, int], str], tuple[float, float, float]],
    avail: dict[str, int],
    dim: int,
) -> int:
    """One dimension, every replica at its smallest footprint over the models, GPUs counted largest first."""
    need = 0.0
    for c, cnt in classes.items():
        fs = [f[dim] for (cc, _), f in foot.items() if cc == c]
        if fs:
            need += cnt * min(fs)
    return math.ceil(need - 1e-6)


@dataclass
class NodeBound:
    gpus: int
    #: the MIP's proven dual bound (its optimum when ``optimal``)
    value: float
    optimal: bool
    feasible: bool


def node_bound(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand], time_limit_s: float = 60.0
) -> NodeBound:
    """The node-aware program's bound (``planner/nodemip.py``, docs/planner.md §6): every node in one mode
    for all its GPUs, one MPS client count per node, GPUs and nodes counted whole. Every legal plan is a
    feasible point, so the optimum, and any bound SCIP proves on it out of time, is a valid lower bound. Time
    slicing stays by volume: a configuration LP over time-sliced GPUs (patterns of replicas that fit memory
    and the replica limit together, generated column by column) measured no tighter on the benchmark pools."""
    mip = solve_node_mip(policy, nodes, demands, time_limit_s)
    return NodeBound(mip.bound, mip.value, mip.optimal, mip.feasible)
