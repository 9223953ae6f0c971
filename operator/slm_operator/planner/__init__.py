"""The planner: a pure packing engine (no kopf, kubernetes or pynvml imports).

``plan_pool(policy, nodes, demands, current=())`` returns a deterministic :class:`Plan` for one GPU pool. The
entry points live in ``entrypoints.py`` and are re-exported here; docs/planner.md explains the algorithm and
docs/plan-format.md every output field.
"""

from __future__ import annotations

from slm_operator.planner.entrypoints import (
    Consolidation,
    ConsolidationBudget,
    ExactLimits,
    ExactResult,
    IncrementalPlanner,
    Move,
    PortfolioOutcome,
    apply_plan,
    check_plan,
    consolidate,
    gc_paused,
    optimize_pool,
    plan_pool,
    portfolio_plan,
    solve_exact,
)
from slm_operator.planner.model import (
    CurrentPlacement,
    Demand,
    DeploymentPlan,
    Eviction,
    GpuInventory,
    GpuPlan,
    MigInstance,
    NodeInventory,
    NodePlan,
    Plan,
    PoolPlan,
    PoolPolicy,
    ReplicaPlacement,
    Reservation,
    Segment,
    Share,
    ShareRequest,
    UnplacedReplica,
    WarmShare,
)

__all__ = [
    "Consolidation",
    "ConsolidationBudget",
    "CurrentPlacement",
    "Demand",
    "DeploymentPlan",
    "Eviction",
    "ExactLimits",
    "ExactResult",
    "GpuInventory",
    "GpuPlan",
    "IncrementalPlanner",
    "MigInstance",
    "Move",
    "NodeInventory",
    "NodePlan",
    "Plan",
    "PoolPlan",
    "PoolPolicy",
    "PortfolioOutcome",
    "ReplicaPlacement",
    "Reservation",
    "Segment",
    "Share",
    "ShareRequest",
    "UnplacedReplica",
    "WarmShare",
    "apply_plan",
    "check_plan",
    "consolidate",
    "gc_paused",
    "optimize_pool",
    "plan_pool",
    "portfolio_plan",
    "solve_exact",
]
