"""The exact solver in the operator's pass (``decide``, planner/portfolio.py): a small pool gets the proven optimum
where it beats the heuristic, a pool whose inputs did not change pays no solve, and without OR-Tools the pass plans
as before and the operator says so once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from slm_operator.planner import portfolio as portfolio_mod
from slm_operator.reconcile import World, decide
from slm_operator.render import OperatorConfig
from test_reconcile import _apply_node_configs, _running, _world

pytest.importorskip("ortools")

#: as ``slm-operator run`` and the chart default to
EXACT = OperatorConfig(
    configmap_sync_seconds=0, exact_max_gpus=8, exact_max_replicas=24, exact_budget_seconds=3.0
)


def _small(cfg: OperatorConfig = EXACT, **kw: Any) -> World:
    """The example h100 pool on one node (8 GPUs) with tool-caller, intent-router and summarizer (8 replicas):
    the heuristic uses 5 GPUs, CP-SAT proves that 4 do."""
    w = _world("h100", **kw)
    w.nodes = [n for n in w.nodes if n["metadata"]["name"] != "gpu-h100-1"]
    w.deployments = [
        d for d in w.deployments if d.metadata.name in ("tool-caller", "intent-router", "summarizer")
    ]
    w.cfg = cfg
    return w


def test_a_small_pool_gets_the_proven_optimum_and_pays_no_solve_once_its_inputs_stop_changing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heur = decide(_small(OperatorConfig(configmap_sync_seconds=0)))
    assert heur.plan is not None and heur.plan.solver == "heuristic" and heur.plan_memo == {}
    d1 = decide(_small())
    assert d1.plan is not None and (d1.plan.solver, d1.plan.optimal) == ("exact", True)
    assert d1.plan.pool.replicas_placed == heur.plan.pool.replicas_placed == 8
    assert (d1.plan.pool.gpus_used, heur.plan.pool.gpus_used) == (4, 5)
    assert d1.pool_status is not None and d1.pool_status.gpus_used == 4
    (outcome,) = d1.plan_memo.values()
    assert outcome.method == "exact" and outcome.solve_seconds > 0

    def no_solve(*_a: object, **_k: object) -> None:
        raise AssertionError("the exact solver ran for inputs it has answered")

    monkeypatch.setattr(portfolio_mod, "solve_exact", no_solve)
    # the same inputs again, then the pool converging to the plan: nodes configured, pods created, then running
    w2 = _small(nodes=_apply_node_configs(_small(), d1), mig_configs=dict(d1.mig_entries))
    w2.nodes = [n for n in w2.nodes if n["metadata"]["name"] != "gpu-h100-1"]
    w2.plan_memo = d1.plan_memo
    d2 = decide(w2)
    assert d2.plan is not None and d2.plan.placements() == d1.plan.placements() and d2.plan.solver == "exact"
    assert d2.node_labels == {} and len(d2.pods_create) == 8
    # what the plan says relative to the nodes is as of now: the MIG layouts it asked for are in place
    assert any(g.reconfigure for g in d1.plan.gpus) and not any(g.reconfigure for g in d2.plan.gpus)
    w3 = _small(pods=_running(d2.pods_create), nodes=w2.nodes, mig_configs=dict(d1.mig_entries))
    w3.nodes = w2.nodes
    w3.plan_memo = d2.plan_memo
    d3 = decide(w3)
    assert d3.plan is not None and d3.plan.placements() == d1.plan.placements()
    assert d3.pods_create == [] and d3.pods_delete == [] and d3.node_labels == {} and not d3.waiting
    assert all(o.solve_seconds == 0 for o in d3.plan_memo.values())


def test_pools_over_the_limits_and_the_default_config_plan_with_the_heuristic_alone() -> None:
    big = _world("h100")  # 16 GPUs
    big.cfg = EXACT
    d = decide(big)
    assert d.plan is not None and d.plan.solver == "heuristic" and d.plan_memo == {}
    d = decide(_small(OperatorConfig(configmap_sync_seconds=0)))  # exact_budget_seconds 0: off (plan --emit)
    assert d.plan is not None and d.plan.solver == "heuristic" and d.plan_memo == {}


def test_without_ortools_the_pass_plans_as_before_and_the_operator_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fake_kube import FakeKube
    from slm_operator.controllers import pools

    monkeypatch.setattr(portfolio_mod, "solver_installed", lambda: False)
    monkeypatch.setattr(pools, "solver_installed", lambda: False)
    d = decide(_small())
    assert d.plan is not None and d.plan.solver == "heuristic" and d.plan.pool.gpus_used == 5
    assert d.plan_memo == {}
    # a handler of its own on an enabled logger: another test's logging setup (the CLI's) may have disabled the
    # operator's loggers or stopped them propagating
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("slm_operator.pools")
    level, disabled = logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    try:
        pools.PoolReconciler(FakeKube(), EXACT)  # type: ignore[arg-type]
        pools.PoolReconciler(FakeKube(), OperatorConfig())  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    warned = [m for m in seen if "OR-Tools is not installed" in m]
    assert len(warned) == 1 and "[solver] extra" in warned[0]
