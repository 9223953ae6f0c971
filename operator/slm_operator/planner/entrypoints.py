"""The planner's entry points, in one place: what the operator, the CLI, the benchmark and the tests call.

* :func:`plan_pool`: plan one pool (the heuristic; ``optimize=True``: CP-SAT on small pools). The operator
  calls it on every reconcile pass with the running replicas as ``current``.
* :func:`optimize_pool` / :func:`solve_exact`: the exact mode (``exact.py``).
* :func:`portfolio_plan`: what the operator's pass plans with: the heuristic, and on small pools the exact
  solver's plan where it is better and disturbs no more, remembered by input (``portfolio.py``).
* :class:`IncrementalPlanner`: keeps the packer's state and re-plans only what changed (CLI and benchmark).
* :func:`consolidate`: moves that free whole GPUs when the pool drifted from a fresh plan (``consolidate.py``).
* :func:`check_plan`: every rule a plan must respect, as a list of violations.
* :func:`apply_plan`: the inventory after a plan was applied (to simulate the next pass).

Lower modules never import this one, so the import graph has no cycle: ``model`` and ``mig`` at the bottom,
then ``state``, the packer (``capacity``, ``targets``, ``packer``), ``heuristic``, ``assemble``, ``exact``,
``incremental``, ``consolidate``, ``invariants`` and ``portfolio``, then this module; ``slm_operator.planner`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from slm_operator.planner.consolidate import Consolidation, ConsolidationBudget, Move, consolidate
from slm_operator.planner.exact import ExactResult, optimize_pool, solve_exact
from slm_operator.planner.gc_pause import gc_paused
from slm_operator.planner.heuristic import heuristic_plan
from slm_operator.planner.incremental import IncrementalPlanner
from slm_operator.planner.invariants import check_plan
from slm_operator.planner.model import CurrentPlacement, Demand, NodeInventory, Plan, PoolPolicy, apply_plan
from slm_operator.planner.portfolio import ExactLimits, PortfolioOutcome, portfolio_plan


def plan_pool(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
    *,
    optimize: bool = False,
    time_budget_s: float = 10.0,
) -> Plan:
    """Plan one pool. With ``optimize=True`` the exact CP-SAT solver runs on small instances (within
    ``time_budget_s``) and the heuristic plan is returned when the solver finds nothing better in time or the
    instance is too large."""
    if optimize:
        return optimize_pool(policy, nodes, demands, current, time_budget_s=time_budget_s)
    return heuristic_plan(policy, nodes, demands, current)


__all__ = [
    "Consolidation",
    "ConsolidationBudget",
    "ExactLimits",
    "ExactResult",
    "IncrementalPlanner",
    "Move",
    "PortfolioOutcome",
    "apply_plan",
    "check_plan",
    "consolidate",
    "gc_paused",
    "optimize_pool",
    "plan_pool",
    "portfolio_plan",
    "solve_exact",
]
