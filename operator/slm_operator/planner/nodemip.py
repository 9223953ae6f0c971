"""The node-aware mixed-integer program: a lower bound on GPUs, and the shape of a plan that meets it.

Every node is in one sharing mode for all its GPUs (rule 2, docs/planner.md §2): ``None`` (MIG layouts and
whole GPUs), ``TimeSlicing`` (MIG layouts and time-sliced GPUs) or ``MPS`` with one client count N (the
device plugin's sharing config is per node, and its MPS daemon gives every client of the node memory / N).
Nodes and GPUs are counted in whole numbers per mode; how many replicas of a class take each kind of share is
not (volumes per share kind, as the layout bound). The program:

min (GPUs used) subject to, per GPU model m and node size k, sum over modes of nodes[m,k,mode] <= nodes of
that model and size; MIG + whole GPUs fit the ``None`` nodes' GPUs, MIG + time-sliced GPUs the
``TimeSlicing`` nodes' GPUs, and N-client MPS GPUs the MPS-N nodes' GPUs; MIG layouts counted per maximal
layout, each profile's replicas within the instances the layouts offer; MPS clients of a class on N-client
GPUs only when memory / N holds it, at most N x those GPUs; time-sliced replicas within the GPUs' memory
(times the oversubscription) and replica limit, by volume; every replica of every class served.

Every legal plan is a feasible point, so the optimum, and any bound SCIP proves on it, is a valid lower bound
(``bench/baselines.node_bound`` reports it). The incumbent is the :class:`Guide` that ``guided.py`` packs
from: how many nodes of each model and size take each mode, which MIG layouts, and how many replicas of each
class take each kind of share. ortools (the ``solver`` extra) is imported only when a program is solved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.catalog import gpu_by_key
from slm_operator.planner.mig import Counts, fitting_profiles, geometry
from slm_operator.planner.model import Demand, NodeInventory, PoolPolicy
from slm_operator.planner.state import build_context, mps_cap
from slm_operator.planner.vocabulary import GpuRole

#: a class of replicas: (tier, memory estimate in bytes)
ReplicaClass = tuple[str, int]
#: a kind of share: (mechanism, GPU model, MIG profile index, MPS clients per GPU, or 0 for the others)
ShareKind = tuple[str, str, int]
#: a node group: (GPU model, pool GPUs per node)
NodeGroup = tuple[str, int]
#: a node mode: ("None" | "TimeSlicing" | "MPS", MPS clients per GPU or 0)
NodeModeKey = tuple[str, int]


@dataclass(frozen=True)
class Guide:
    """The incumbent of the node-aware program: what a plan near the bound looks like."""

    #: per node group, how many nodes take each mode
    node_modes: Mapping[NodeGroup, Mapping[NodeModeKey, int]]
    #: per GPU model, how many GPUs take each maximal MIG layout (count vector in catalog profile order)
    mig_layouts: Mapping[str, Mapping[Counts, int]]
    #: per GPU model, how many of its MIG GPUs are on ``TimeSlicing`` nodes (the rest on ``None`` nodes)
    mig_on_time_slicing: Mapping[str, int]
    #: per replica class, how many replicas take each kind of share (fractional: a volume solution)
    shares: Mapping[ReplicaClass, Mapping[ShareKind, float]]
    #: GPUs the incumbent uses
    gpus: int


@dataclass(frozen=True)
class NodeMip:
    """The program's answer: its proven bound, and its incumbent when it found one."""

    #: ceil of the proven bound (the optimum when ``optimal``)
    bound: int
    value: float
    optimal: bool
    feasible: bool
    guide: Guide | None = None
    #: SCIP's status name, e.g. "OPTIMAL", "FEASIBLE" (out of time with an incumbent), "NOT_SOLVED"
    status: str = ""


def pool_gpus(policy: PoolPolicy, nodes: Sequence[NodeInventory]) -> list[tuple[str, int, str, int]]:
    """(node, index, model key, memory bytes) of the GPUs available to inference packing, sorted."""
    ctx = build_context(policy, nodes, ())
    return [
        (g.node.name, g.index, g.key, g.mem)
        for g in ctx.gpus
        if g.role == GpuRole.POOL and g.node.schedulable
    ]


def bound_inputs(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> tuple[dict[str, int], set[str], dict[ReplicaClass, int]]:
    """What the bounds start from: pool GPUs per model, allowed mechanisms, replicas per (tier, size)."""
    avail: dict[str, int] = {}
    for _, _, key, _ in pool_gpus(policy, nodes):
        avail[key] = avail.get(key, 0) + 1
    classes: dict[ReplicaClass, int] = {}
    for d in demands:
        if d.replicas:
            k = (d.tier, d.memory_bytes)
            classes[k] = classes.get(k, 0) + d.replicas
    return avail, set(policy.allowed_mechanisms), classes


def node_groups(policy: PoolPolicy, nodes: Sequence[NodeInventory]) -> dict[NodeGroup, int]:
    """Nodes per (GPU model, pool GPUs per node)."""
    per_node: dict[str, int] = {}
    node_model: dict[str, str] = {}
    for name, _, key, _ in pool_gpus(policy, nodes):
        per_node[name] = per_node.get(name, 0) + 1
        node_model[name] = key
    groups: dict[NodeGroup, int] = {}
    for name, k in per_node.items():
        groups[(node_model[name], k)] = groups.get((node_model[name], k), 0) + 1
    return groups


class _Program:
    """The program's variables as it is built, kept to read the incumbent back."""

    def __init__(self, solver: Any, classes: dict[ReplicaClass, int]) -> None:
        self.solver = solver
        self.classes = classes
        self.used: list[Any] = []
        self.flows: dict[ReplicaClass, list[tuple[ShareKind, Any]]] = {c: [] for c in sorted(classes)}
        self.modes: dict[NodeGroup, dict[NodeModeKey, Any]] = {}
        self.layouts: dict[str, list[tuple[Counts, Any]]] = {}
        self.mig_ts: dict[str, Any] = {}

    def gpus(self, ub: int) -> Any:
        v = self.solver.IntVar(0, ub, "")
        self.used.append(v)
        return v

    def serve(self, users: list[ReplicaClass], kind: ShareKind) -> list[Any]:
        """One variable per class: how many of its replicas take this kind of share."""
        out = []
        for c in users:
            y = self.solver.NumVar(0, self.classes[c], "")
            self.flows[c].append((kind, y))
            out.append(y)
        return out

    def model(  # long: one GPU model's constraints, in the order the module docstring gives them
        self, policy: PoolPolicy, m: str, avail: int, groups: dict[NodeGroup, int], allowed: set[str]
    ) -> None:
        solver = self.solver
        cls = list(self.flows)
        gpu = gpu_by_key(m)
        geo = geometry(m)
        modes: list[NodeModeKey] = [("None", 0)] + ([("TimeSlicing", 0)] if "TimeSlicing" in allowed else [])
        limit = min(policy.mps_max_clients_per_gpu, gpu.mps_max_clients)
        mps_n = list(range(2, limit + 1)) if "MPS" in allowed else []
        cap: dict[NodeModeKey, Any] = {}  # GPUs of the nodes in each mode
        for (gm, k), count in sorted(groups.items()):
            if gm != m:
                continue
            in_mode = {mode: solver.IntVar(0, count, "") for mode in modes + [("MPS", n) for n in mps_n]}
            self.modes[(gm, k)] = in_mode
            solver.Add(sum(in_mode.values()) <= count)
            for mode, v in in_mode.items():
                cap[mode] = cap.get(mode, 0) + k * v
        mig_none = self.gpus(avail) if geo is not None and "MIG" in allowed else None
        mig_ts = self.gpus(avail) if mig_none is not None and len(modes) > 1 else None
        whole = self.gpus(avail) if "Exclusive" in allowed else None
        ts = self.gpus(avail) if len(modes) > 1 else None
        solver.Add(sum(v for v in (mig_none, whole) if v is not None) <= cap[("None", 0)])
        if ts is not None:
            solver.Add(sum(v for v in (mig_ts, ts) if v is not None) <= cap[("TimeSlicing", 0)])
        if mig_ts is not None:
            self.mig_ts[m] = mig_ts
        if mig_none is not None:
            assert geo is not None
            layouts = [(st, solver.IntVar(0, avail, "")) for i, st in enumerate(geo.states) if geo.maximal[i]]
            self.layouts[m] = layouts
            solver.Add(sum(v for _, v in layouts) == mig_none + (mig_ts if mig_ts is not None else 0))
            for pi in range(len(geo.profiles)):
                users = [c for c in cls if pi in fitting_profiles(m, c[1])]
                offered = [(st[pi], v) for st, v in layouts if st[pi]]
                if users and offered:
                    solver.Add(sum(self.serve(users, ("MIG", m, pi))) <= sum(k * v for k, v in offered))
        for n in mps_n:
            users = [c for c in cls if c[0] != "Guaranteed" and mps_cap(gpu.memory_mib, n) >= c[1]]
            if users:
                g = self.gpus(avail)
                solver.Add(g <= cap[("MPS", n)])
                solver.Add(sum(self.serve(users, ("MPS", m, n))) <= n * g)
        if whole is not None:
            users = [c for c in cls if c[1] <= gpu.memory_bytes]
            if users:
                solver.Add(sum(self.serve(users, ("Exclusive", m, 0))) <= whole)
        if ts is not None:
            budget = gpu.memory_bytes * policy.memory_oversubscription_percent / 100
            users = [c for c in cls if c[0] == "BestEffort" and c[1] <= budget]
            if users:
                ys = self.serve(users, ("TimeSlicing", m, 0))
                solver.Add(sum(y * (c[1] / budget) for c, y in zip(users, ys, strict=True)) <= ts)
                solver.Add(sum(ys) <= policy.ts_max_replicas_per_gpu * ts)

    def incumbent(self) -> Guide:
        def val(v: Any) -> int:
            value: float = v.solution_value()
            return round(value)

        node_modes = {g: {mode: val(v) for mode, v in d.items() if val(v)} for g, d in self.modes.items()}
        layouts = {m: {st: val(v) for st, v in ls if val(v)} for m, ls in self.layouts.items()}
        shares = {
            c: {kind: y.solution_value() for kind, y in flows if y.solution_value() > 1e-6}
            for c, flows in self.flows.items()
        }
        return Guide(
            node_modes=node_modes,
            mig_layouts=layouts,
            mig_on_time_slicing={m: val(v) for m, v in self.mig_ts.items()},
            shares=shares,
            gpus=sum(val(v) for v in self.used),
        )


def solve_node_mip(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    time_limit_s: float = 60.0,
) -> NodeMip:
    """Build and solve the program with SCIP (single-threaded), within ``time_limit_s`` of wall-clock time.
    Out of time, the proven bound is still valid and the incumbent, if any, still a guide."""
    avail, allowed, classes = bound_inputs(policy, nodes, demands)
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:  # the solver extra is not installed
        return NodeMip(0, 0.0, False, False, status="NOT_INSTALLED")
    solver = pywraplp.Solver.CreateSolver("SCIP")
    program = _Program(solver, classes)
    groups = node_groups(policy, nodes)
    for m in sorted(avail):
        program.model(policy, m, avail[m], groups, allowed)
    for c, flows in program.flows.items():
        if flows:
            solver.Add(sum(y for _, y in flows) == classes[c])
    solver.Minimize(sum(program.used))
    solver.SetTimeLimit(int(time_limit_s * 1000))
    status = solver.Solve()
    names = {
        pywraplp.Solver.OPTIMAL: "OPTIMAL",
        pywraplp.Solver.FEASIBLE: "FEASIBLE",
        pywraplp.Solver.INFEASIBLE: "INFEASIBLE",
    }
    name = names.get(status, "NOT_SOLVED")
    if status == pywraplp.Solver.INFEASIBLE:
        total = sum(avail.values())
        return NodeMip(total, float(total), False, False, status=name)
    best = max(0.0, solver.Objective().BestBound())
    guide = program.incumbent() if status in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE) else None
    return NodeMip(math.ceil(best - 1e-6), best, status == pywraplp.Solver.OPTIMAL, True, guide, name)
