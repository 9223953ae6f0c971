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
from slm_operator.planner.state import build_context, mps_cap, mps_nmax
from slm_operator.planner.vocabulary import TIER_RANK, GpuRole


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


def _pool_gpus(policy: PoolPolicy, nodes: Sequence[NodeInventory]) -> list[tuple[str, int, str, int]]:
    """(node, index, model key, memory bytes) of the GPUs available to inference packing, sorted."""
    ctx = build_context(policy, nodes, ())
    return [
        (g.node.name, g.index, g.key, g.mem)
        for g in ctx.gpus
        if g.role == GpuRole.POOL and g.node.schedulable
    ]


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


def _bound_inputs(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> tuple[dict[str, int], set[str], dict[tuple[str, int], int]]:
    """What both LP bounds start from: pool GPUs per model, allowed mechanisms, replicas per (tier, size)."""
    avail: dict[str, int] = {}
    for _, _, key, _ in _pool_gpus(policy, nodes):
        avail[key] = avail.get(key, 0) + 1
    classes: dict[tuple[str, int], int] = {}
    for d in demands:
        if d.replicas:
            k = (d.tier, d.memory_bytes)
            classes[k] = classes.get(k, 0) + d.replicas
    return avail, set(policy.allowed_mechanisms), classes


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


def node_bound(  # long: one MIP, its constraints per GPU model in the order the docstring gives them
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand], time_limit_s: float = 60.0
) -> NodeBound:
    """:func:`layout_bound` with the node-wide modes of rule 2 (docs/planner.md §2): every node is in one mode
    for all its GPUs, ``None`` (MIG layouts and whole GPUs), ``TimeSlicing`` (MIG layouts and time-sliced
    GPUs) or ``MPS`` with one client count N (the device plugin's sharing config is per node, and its MPS
    daemon gives every client of the node memory / N). Nodes are counted in whole numbers per mode, GPUs and
    replicas are not, so it is a small mixed-integer program:

    min (GPUs used) subject to the constraints of :func:`layout_bound`, with MPS split by N (clients of a
    class on N-client GPUs only when memory / N holds it, at most N x those GPUs), and for each GPU model m
    and node size k, sum over modes of nodes[m,k,mode] <= nodes of that model and size, where MIG + whole
    GPUs fit the ``None`` nodes' and ``TimeSlicing`` nodes' GPUs, MIG + time-sliced GPUs the
    ``TimeSlicing`` nodes' GPUs, and N-client MPS GPUs the MPS-N nodes' GPUs.

    Every legal plan is a feasible point (its nodes' modes, with GPUs and replicas as in
    :func:`layout_bound`), so the MIP's optimum, and any proven bound on it, is a valid lower bound. Time
    slicing stays by volume: a configuration LP over time-sliced GPUs (patterns of replicas that fit memory
    and the replica limit together, generated column by column) measured no tighter on the benchmark
    pools."""
    avail, allowed, classes = _bound_inputs(policy, nodes, demands)
    models = sorted(avail)
    per_node: dict[str, int] = {}
    node_model: dict[str, str] = {}
    for name, _, key, _ in _pool_gpus(policy, nodes):
        per_node[name] = per_node.get(name, 0) + 1
        node_model[name] = key
    groups: dict[tuple[str, int], int] = {}
    for name, k in per_node.items():
        groups[(node_model[name], k)] = groups.get((node_model[name], k), 0) + 1
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:  # pragma: no cover - ortools is a dev dependency
        return NodeBound(0, 0.0, False, False)
    solver = pywraplp.Solver.CreateSolver("SCIP")
    cls = sorted(classes)
    used = []
    flows: dict[tuple[str, int], list[Any]] = {c: [] for c in cls}

    def gpus(ub: float, name: str) -> Any:
        v = solver.IntVar(0, ub, name)
        used.append(v)
        return v

    def serve(users: list[tuple[str, int]]) -> list[Any]:
        """One variable per class: how many of its replicas take this kind of share."""
        out = []
        for c in users:
            y = solver.NumVar(0, classes[c], "")
            flows[c].append(y)
            out.append(y)
        return out

    for m in models:
        model = gpu_by_key(m)
        geo = geometry(m)
        modes = ["None", "TimeSlicing"] if "TimeSlicing" in allowed else ["None"]
        limit = min(policy.mps_max_clients_per_gpu, model.mps_max_clients)
        mps_n = list(range(2, limit + 1)) if "MPS" in allowed else []
        cap: dict[str, Any] = {}  # GPUs of the nodes in each mode
        for (gm, k), count in groups.items():
            if gm != m:
                continue
            in_mode = {mode: solver.IntVar(0, count, "") for mode in modes + [f"MPS{n}" for n in mps_n]}
            solver.Add(sum(in_mode.values()) <= count)
            for mode, v in in_mode.items():
                cap[mode] = cap.get(mode, 0) + k * v
        mig_none = gpus(avail[m], f"{m} MIG on None nodes") if geo is not None and "MIG" in allowed else None
        mig_ts = None
        if mig_none is not None and "TimeSlicing" in modes:
            mig_ts = gpus(avail[m], f"{m} MIG on TimeSlicing nodes")
        whole = gpus(avail[m], f"{m} whole") if "Exclusive" in allowed else None
        ts = gpus(avail[m], f"{m} time-sliced") if "TimeSlicing" in modes else None
        solver.Add(sum(v for v in (mig_none, whole) if v is not None) <= cap["None"])
        if "TimeSlicing" in modes:
            solver.Add(sum(v for v in (mig_ts, ts) if v is not None) <= cap["TimeSlicing"])
        if mig_none is not None:
            assert geo is not None
            layouts = [
                (st, solver.IntVar(0, avail[m], "")) for i, st in enumerate(geo.states) if geo.maximal[i]
            ]
            solver.Add(sum(v for _, v in layouts) == mig_none + (mig_ts if mig_ts is not None else 0))
            for pi in range(len(geo.profiles)):
                users = [c for c in cls if pi in fitting_profiles(m, c[1])]
                offered = [(st[pi], v) for st, v in layouts if st[pi]]
                if users and offered:
                    solver.Add(sum(serve(users)) <= sum(k * v for k, v in offered))
        for n in mps_n:
            users = [c for c in cls if c[0] != "Guaranteed" and mps_cap(model.memory_mib, n) >= c[1]]
            if users:
                g = gpus(avail[m], f"{m} MPS{n}")
                solver.Add(g <= cap[f"MPS{n}"])
                solver.Add(sum(serve(users)) <= n * g)
        if whole is not None:
            users = [c for c in cls if c[1] <= model.memory_bytes]
            if users:
                solver.Add(sum(serve(users)) <= whole)
        if ts is not None:
            budget = model.memory_bytes * policy.memory_oversubscription_percent / 100
            users = [c for c in cls if c[0] == "BestEffort" and c[1] <= budget]
            if users:
                ys = serve(users)
                solver.Add(sum(y * (c[1] / budget) for c, y in zip(users, ys, strict=True)) <= ts)
                solver.Add(sum(ys) <= policy.ts_max_replicas_per_gpu * ts)
    for c in cls:
        if flows[c]:
            solver.Add(sum(flows[c]) == classes[c])
    solver.Minimize(sum(used))
    solver.SetTimeLimit(int(time_limit_s * 1000))
    status = solver.Solve()
    if status == pywraplp.Solver.INFEASIBLE:
        total = sum(avail.values())
        return NodeBound(total, float(total), False, False)
    # out of time: SCIP's proven bound is still valid (0 if it proved nothing)
    best = max(0.0, solver.Objective().BestBound())
    return NodeBound(math.ceil(best - 1e-6), best, status == pywraplp.Solver.OPTIMAL, True)
