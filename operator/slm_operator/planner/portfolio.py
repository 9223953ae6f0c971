"""The operator's planning portfolio: the heuristic on every pass, and CP-SAT on small pools whose inputs changed.

``portfolio_plan(policy, nodes, demands, current, limits, memo)`` is what the operator's pass plans with
(docs/planner.md §5.1). For a pool of at most ``limits.max_gpus`` GPUs and ``limits.max_replicas`` replicas it
runs the exact solver (``solve_exact(..., stable=True)``) within ``limits.budget_s`` of CP-SAT's deterministic
time, hinted by the heuristic plan, and takes the exact plan only when it is better than the heuristic's by
the solver's lexicographic objective (placed replicas by tier first), needs no more GPUs for the same replicas,
and disturbs no running replica, GPU layout or node sharing mode that the heuristic's plan leaves alone. Otherwise, and when the budget
runs out, the heuristic's plan. When CP-SAT proves the heuristic's plan optimal too, the heuristic's plan is
kept (the same objective at every level: no more GPUs).

The solver is not paid on every pass: each answer is remembered (``PortfolioOutcome``) under a fingerprint of
the planner's inputs, the shell keeps the outcomes of the last pass and hands them back (``memo``), and
unchanged inputs get the remembered answer. An exact plan is also reused while the pool moves towards it: the
same policy, demands, nodes and GPUs, and every running replica where that plan puts it (new pods are created
and nodes relabelled over several passes; a re-solve there could pick an equally good, different plan and undo
what the earlier passes started). Pure: no clock, no I/O; CP-SAT's deterministic time makes the answer the same
on any machine and under any load.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from slm_operator.planner.exact import solve_exact
from slm_operator.planner.guided import guided_plan
from slm_operator.planner.heuristic import heuristic_plan
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy
from slm_operator.planner.nodemip import Guide

#: the exact solver's wall-clock cap, as a multiple of the deterministic budget (a safety net only: on this
#: project's 2-core machine one deterministic second took 2-4 wall seconds under load, docs/planner.md §5.1)
WALL_CAP_FACTOR = 10.0


@dataclass(frozen=True)
class ExactLimits:
    """Which pools the operator solves exactly, and for how long (flags ``--exact-max-gpus``,
    ``--exact-max-replicas``, ``--exact-budget``; measured in docs/planner.md §5.1)."""

    max_gpus: int = 8
    max_replicas: int = 24
    #: CP-SAT deterministic seconds per solve; 0 turns the exact solver off
    budget_s: float = 3.0

    def admits(self, nodes: Sequence[NodeInventory], demands: Sequence[Demand]) -> bool:
        """The pool is small enough to solve exactly (and the solver is on)."""
        if self.budget_s <= 0 or self.max_gpus <= 0:
            return False
        gpus = sum(len(n.gpus) for n in nodes)
        return 0 < gpus <= self.max_gpus and sum(d.replicas for d in demands) <= self.max_replicas


@dataclass(frozen=True)
class GuideLimits:
    """Which pools the operator also packs from the node-aware program's incumbent (``guided.py``; flags
    ``--guided-min-gpus``, ``--guided-max-gpus``, ``--guided-time-limit``; measured in docs/planner.md §5.2).
    The program is solved in the shell's worker process, never in a pass."""

    min_gpus: int = 32
    max_gpus: int = 2048
    #: SCIP's wall-clock seconds per solve; 0 turns guided packing off
    time_limit_s: float = 300.0

    def admits(self, policy: PoolPolicy, nodes: Sequence[NodeInventory]) -> bool:
        """The pool is in the size range (and guided packing is on); pools with tenants never are."""
        if self.time_limit_s <= 0 or policy.tenants:
            return False
        return self.min_gpus <= sum(len(n.gpus) for n in nodes) <= self.max_gpus


@dataclass(frozen=True)
class GuideAnswer:
    """The shell's answer to a pool's guide question: the incumbent of the node-aware program for the inputs
    the question fingerprints (None when the solver found none in time)."""

    question: str
    guide: Guide | None
    #: SCIP's status, e.g. "OPTIMAL", "FEASIBLE" (out of time with an incumbent)
    status: str


@dataclass(frozen=True)
class GuideRequest:
    """A pass's request for a guide: the question it would answer and the program's inputs (the shell solves
    it, ``nodemip.solve_node_mip``, in a worker process, and hands the answer back as ``World.plan_guide``)."""

    question: str
    policy: PoolPolicy
    nodes: tuple[NodeInventory, ...]
    demands: tuple[Demand, ...]


def guide_question(policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]) -> str:
    """The fingerprint a guide answers: the policy, the nodes without their configuration, the demands."""
    return _fingerprint(policy, [_structure(n) for n in nodes], demands)


Method = Literal["heuristic", "exact"]


@dataclass(frozen=True)
class PortfolioOutcome:
    """One planning question's answer: which method's plan the pass takes, and why."""

    #: fingerprint of every input the planner reads
    key: str
    #: fingerprint of the policy, the demands and the pool's nodes and GPUs (not their configuration, nor what
    #: runs where): an exact plan is reused for these while the running replicas are where it puts them
    question: str
    method: Method
    #: CP-SAT's status and what the portfolio made of it, e.g. "OPTIMAL: the exact plan uses fewer GPUs"
    status: str
    #: the exact plan taken (None: the heuristic's plan, computed again on each pass: milliseconds)
    plan: Plan | None = None
    #: CP-SAT's deterministic seconds for this answer (0 when remembered or not run)
    solve_seconds: float = 0.0


#: the outcomes of the last pass by ``key``, which the shell keeps for the next pass of the same pool
PortfolioMemo = Mapping[str, PortfolioOutcome]


@functools.cache
def solver_installed() -> bool:
    """OR-Tools is installed (the ``solver`` extra): without it the operator plans with the heuristic only."""
    return importlib.util.find_spec("ortools") is not None


def portfolio_plan(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement],
    limits: ExactLimits,
    memo: PortfolioMemo,
    guide: Guide | None = None,
) -> tuple[Plan, PortfolioOutcome | None]:
    """The pass's plan and, for a pool the exact solver may take on, the outcome to remember (None: a pool
    over the limits, with tenants, or no OR-Tools: the heuristic's plan, as before the portfolio, or the plan
    packed from ``guide`` where that one is better: :func:`better_guided`)."""
    if policy.tenants or not limits.admits(nodes, demands) or not solver_installed():
        if guide is None or policy.tenants:
            return heuristic_plan(policy, nodes, demands, current), None  # large pools: not even a sort more
        cur = list(current)
        heur = heuristic_plan(policy, nodes, demands, cur)
        guided = guided_plan(policy, nodes, demands, guide, cur)
        return (guided if better_guided(guided, heur, cur) else heur), None
    cur = sorted(current, key=lambda c: (c.deployment, c.ordinal))
    key = _fingerprint(policy, [_planned(n) for n in nodes], demands, cur, limits)
    question = _fingerprint(policy, [_structure(n) for n in nodes], demands, limits)
    same = memo.get(key)
    if same is not None:
        outcome = replace(same, solve_seconds=0.0)
        return outcome.plan or heuristic_plan(policy, nodes, demands, cur), outcome
    towards = _towards(memo, question, cur)
    if towards is not None and towards.plan is not None:
        outcome = replace(towards, key=key, solve_seconds=0.0)
        return _refreshed(towards.plan, policy, nodes, demands), outcome
    res = solve_exact(
        policy,
        nodes,
        demands,
        cur,
        time_budget_s=limits.budget_s * WALL_CAP_FACTOR,
        stable=True,
        deterministic_budget_s=limits.budget_s,
    )
    heur = heuristic_plan(policy, nodes, demands, cur)
    method, why = _choose(res.plan, heur, res.status, res.objective, res.heuristic_objective, cur)
    outcome = PortfolioOutcome(
        key, question, method, why, res.plan if method == "exact" else None, res.deterministic_seconds
    )
    return (res.plan if method == "exact" else heur), outcome


def _choose(
    exact: Plan,
    heur: Plan,
    status: str,
    objective: int | None,
    heuristic_objective: int | None,
    current: Sequence[CurrentPlacement],
) -> tuple[Method, str]:
    """Which plan the pass takes, and the status that says why."""
    if status.startswith("FALLBACK") or exact.solver != "exact":
        return "heuristic", status
    if heuristic_objective is None:  # the heuristic did something the model does not express: compare nothing
        if status != "OPTIMAL":
            return "heuristic", f"{status}: not comparable with the heuristic's plan, not proven"
    elif objective is None or objective >= heuristic_objective:
        return "heuristic", f"{status}: the heuristic's plan is as good"
    if _placed(exact) == _placed(heur) and exact.pool.gpus_used > heur.pool.gpus_used:
        # better by co-location or whole-GPU penalties, which the objective ranks above GPUs: not worth a GPU
        return "heuristic", f"{status}: the exact plan needs more GPUs for the same replicas"
    moved = more_disruption(exact, heur, current)
    if moved:
        return "heuristic", f"{status}: the exact plan disturbs {moved} the heuristic's leaves alone"
    return "exact", f"{status}: the exact plan is better"


def better_guided(guided: Plan, heur: Plan, current: Sequence[CurrentPlacement]) -> bool:
    """The guided plan is taken when it places more replicas (by tier, Guaranteed first) or as many on fewer
    GPUs, and disturbs nothing the heuristic's plan leaves alone."""
    placed_g, placed_h = _placed(guided), _placed(heur)
    if placed_g < placed_h or (placed_g == placed_h and guided.pool.gpus_used >= heur.pool.gpus_used):
        return False
    return not more_disruption(guided, heur, current)


def more_disruption(candidate: Plan, reference: Plan, current: Sequence[CurrentPlacement]) -> str:
    """What ``candidate`` disturbs that ``reference`` leaves alone ('' when nothing): a running replica moved
    or removed, a GPU with a running replica reconfigured, a node with one whose sharing mode changes."""
    placed_c, placed_r = _where(candidate), _where(reference)
    for c in current:
        here = (c.node, c.gpu_index, c.mechanism, c.mig_profile)
        k = (c.deployment, c.ordinal)
        if placed_c.get(k) != here and placed_r.get(k) == here:
            return f"replica {c.deployment}#{c.ordinal}"
    busy = {(c.node, c.gpu_index) for c in current}
    ref_gpus = {(g.node, g.index): g.reconfigure for g in reference.gpus}
    for g in candidate.gpus:
        if g.reconfigure and (g.node, g.index) in busy and not ref_gpus.get((g.node, g.index), False):
            return f"GPU {g.node}/{g.index}"
    ref_nodes = {n.name: n.sharing_changed for n in reference.nodes}
    for n in candidate.nodes:
        if n.sharing_changed and n.name in {c.node for c in current} and not ref_nodes.get(n.name, False):
            return f"node {n.name}'s sharing"
    return ""


def _placed(plan: Plan) -> tuple[int, int, int]:
    """Placed replicas by tier, Guaranteed first."""
    by_tier = {"Guaranteed": 0, "Burstable": 0, "BestEffort": 0}
    for d in plan.deployments:
        by_tier[d.qos] += d.placed
    return (by_tier["Guaranteed"], by_tier["Burstable"], by_tier["BestEffort"])


def _where(plan: Plan) -> dict[tuple[str, int], tuple[str, int, str, str | None]]:
    return {
        (p.deployment, p.ordinal): (p.node, p.gpu_index, p.mechanism, p.mig_profile)
        for p in plan.placements()
    }


def _towards(
    memo: PortfolioMemo, question: str, current: Sequence[CurrentPlacement]
) -> PortfolioOutcome | None:
    """A remembered exact plan for the same question that the running replicas are on their way to: each one
    where it puts it, and none of its evictions still to happen (its evictions were relative to its pass)."""
    for o in memo.values():
        if o.plan is None or o.question != question or o.plan.pool.evictions:
            continue
        planned = set(o.plan.placements())
        if all(c in planned for c in current):
            return o
    return None


def _refreshed(
    plan: Plan, policy: PoolPolicy, nodes: Sequence[NodeInventory], demands: Sequence[Demand]
) -> Plan:
    """A remembered exact plan with the fields it states relative to the inventory (``GpuPlan.reconfigure``,
    ``NodePlan.mig_changed`` / ``sharing_changed``) as of the inventory now: the heuristic holding every one of its
    placements, where that gives the same placements and node configurations; else the plan as it was."""
    held = heuristic_plan(policy, nodes, demands, plan.placements())
    if held.placements() != plan.placements() or held.pool.evictions or _configs(held) != _configs(plan):
        return plan
    return held.model_copy(update={"solver": plan.solver, "optimal": plan.optimal})


def _configs(plan: Plan) -> tuple[object, ...]:
    """What the plan configures: node sharing and MIG layouts, GPU modes and their reservations or segments."""
    nodes = tuple((n.name, n.sharing, n.replicas_per_gpu, n.mig_layout) for n in plan.nodes)
    return nodes, tuple((g.node, g.index, g.mode, g.reservation, g.segment) for g in plan.gpus)


def _planned(node: NodeInventory) -> NodeInventory:
    """The node as the planner reads it: GPU memory in use is reported, never planned with."""
    return node.model_copy(
        update={"gpus": tuple(g.model_copy(update={"used_memory_bytes": None}) for g in node.gpus)}
    )


def _structure(node: NodeInventory) -> dict[str, Any]:
    """The node without its configuration: name, schedulable, GPU indices and models."""
    return {
        "name": node.name,
        "schedulable": node.schedulable,
        "gpus": [(g.index, g.model) for g in node.gpus],
    }


def _fingerprint(policy: PoolPolicy, nodes: Sequence[Any], *rest: Any) -> str:
    """SHA-256 of the inputs' JSON (pydantic models dumped by alias, the limits as a tuple)."""

    def plain(x: Any) -> Any:
        if hasattr(x, "model_dump"):
            return x.model_dump(mode="json", by_alias=True)
        if isinstance(x, ExactLimits):
            return [x.max_gpus, x.max_replicas, x.budget_s]
        if isinstance(x, (list, tuple)):
            return [plain(y) for y in x]
        return x

    doc = json.dumps(
        [plain(policy), plain(list(nodes)), *map(plain, rest)], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(doc.encode()).hexdigest()


__all__ = [
    "ExactLimits",
    "GuideAnswer",
    "GuideLimits",
    "GuideRequest",
    "PortfolioMemo",
    "PortfolioOutcome",
    "better_guided",
    "guide_question",
    "more_disruption",
    "portfolio_plan",
    "solver_installed",
]
