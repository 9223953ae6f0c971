"""Guided packing (planner/guided.py, planner/nodemip.py): a plan packed from the node-aware program's incumbent
places at least as much on fewer GPUs where the heuristic's tier-by-tier greed loses, is legal whatever the guide
says, and never moves a running replica."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.workloads import agentic_mix
from slm_operator.planner import apply_plan, check_plan, plan_pool, portfolio_plan
from slm_operator.planner.guided import guided_plan
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import Demand, NodeInventory, PoolPolicy
from slm_operator.planner.nodemip import Guide, node_groups, solve_node_mip
from slm_operator.planner.portfolio import ExactLimits, GuideLimits
from test_planner_properties import SETTINGS, demands, policy, pool

pytest.importorskip("ortools")

NO_EXACT = ExactLimits(budget_s=0)


def _placed(plan: object) -> tuple[int, int, int]:
    by = {"Guaranteed": 0, "Burstable": 0, "BestEffort": 0}
    for d in plan.deployments:  # type: ignore[attr-defined]
        by[d.qos] += d.placed
    return by["Guaranteed"], by["Burstable"], by["BestEffort"]


def test_a_32_gpu_pool_packed_from_the_programs_solution_places_more_replicas_on_fewer_gpus() -> None:
    w = agentic_mix(32, seed=1, replicas_per_gpu=5.0)
    mip = solve_node_mip(w.policy, w.nodes, w.demands)
    assert mip.optimal and mip.guide is not None and mip.guide.gpus == mip.bound
    heur = plan_pool(w.policy, w.nodes, w.demands)
    guided = guided_plan(w.policy, w.nodes, w.demands, mip.guide)
    assert check_plan(guided, w.policy, w.nodes, w.demands) == []
    assert guided.solver == "guided"
    assert guided.pool.replicas_placed > heur.pool.replicas_placed
    assert guided.pool.gpus_used < heur.pool.gpus_used
    # the bound holds the plan from below
    assert guided.pool.gpus_used >= mip.bound
    # the operator's pass takes it (large pools: the heuristic's plan or the guided one)
    plan, outcome = portfolio_plan(w.policy, w.nodes, w.demands, (), NO_EXACT, {}, mip.guide)
    assert outcome is None and plan.placements() == guided.placements()


def test_running_replicas_stay_where_they_are_and_the_rest_is_packed_from_the_guide() -> None:
    w = agentic_mix(32, seed=1, replicas_per_gpu=5.0)
    first = w.demands[: len(w.demands) // 2]
    running = plan_pool(w.policy, w.nodes, first)
    nodes = apply_plan(w.nodes, running)
    current = running.placements()
    mip = solve_node_mip(w.policy, w.nodes, w.demands)
    assert mip.guide is not None
    guided = guided_plan(w.policy, nodes, w.demands, mip.guide, current)
    assert check_plan(guided, w.policy, nodes, w.demands, current) == []
    assert set(current) <= set(guided.placements())
    # the pass's choice keeps every running replica and is never worse than the heuristic's plan
    heur = plan_pool(w.policy, nodes, w.demands, current)
    plan, _ = portfolio_plan(w.policy, nodes, w.demands, current, NO_EXACT, {}, mip.guide)
    assert set(current) <= set(plan.placements())
    assert _placed(plan) >= _placed(heur)
    assert _placed(plan) > _placed(heur) or plan.pool.gpus_used <= heur.pool.gpus_used


@st.composite
def guides(draw: st.DrawFn, pol: PoolPolicy, nodes: list[NodeInventory], dem: list[Demand]) -> Guide:
    """Any guide at all, also one no solver would give: modes for more nodes than a group has, layouts that
    are not maximal, shares a class may not take (a profile too small, time-slicing for Guaranteed)."""
    groups = node_groups(pol, nodes)
    modes = [("None", 0), ("TimeSlicing", 0)] + [("MPS", n) for n in (2, 3, 4, 7, 16)]
    node_modes = {
        g: {m: draw(st.integers(0, count + 1)) for m in draw(st.lists(st.sampled_from(modes), max_size=3))}
        for g, count in groups.items()
    }
    models = sorted({m for m, _ in groups})
    layouts = {}
    for m in models:
        geo = geometry(m)
        if geo is not None:
            states = st.sampled_from(list(geo.states))
            layouts[m] = {draw(states): draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 3)))}
    kinds = [("Exclusive", m, 0) for m in models] + [("TimeSlicing", m, 0) for m in models]
    kinds += [("MPS", m, n) for m in models for _, n in modes[2:]]
    kinds += [("MIG", m, p) for m in models if (geo := geometry(m)) for p in range(len(geo.profiles))]
    shares = {}
    for d in dem:
        if kinds and draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(kinds), max_size=3))
            shares[(d.tier, d.memory_bytes)] = {k: draw(st.floats(0, d.replicas + 1)) for k in chosen}
    return Guide(
        node_modes=node_modes,
        mig_layouts=layouts,
        mig_on_time_slicing={m: draw(st.integers(0, 2)) for m in models},
        shares=shares,
        gpus=0,
    )


@SETTINGS
@given(st.data(), pool(), policy(), demands(max_deps=8))
def test_whatever_the_guide_says_the_plan_respects_every_invariant(
    data: st.DataObject, nodes: list[NodeInventory], pol: PoolPolicy, dem: list[Demand]
) -> None:
    guide = data.draw(guides(pol, nodes, dem))
    plan = guided_plan(pol, nodes, dem, guide)
    assert check_plan(plan, pol, nodes, dem) == []
    assert plan.pool.replicas_placed + plan.pool.replicas_unplaced == sum(d.replicas for d in dem)
    # and again, from that plan's placements running
    nodes2 = apply_plan(nodes, plan)
    cur = plan.placements()
    again = guided_plan(pol, nodes2, dem, guide, cur)
    assert check_plan(again, pol, nodes2, dem, cur) == []


def test_the_guided_size_range_leaves_out_small_pools_pools_with_tenants_and_a_zero_time_limit() -> None:
    w = agentic_mix(32, seed=1, replicas_per_gpu=5.0)
    assert GuideLimits().admits(w.policy, w.nodes)
    assert not GuideLimits(min_gpus=33).admits(w.policy, w.nodes)
    assert not GuideLimits(max_gpus=31).admits(w.policy, w.nodes)
    assert not GuideLimits(time_limit_s=0).admits(w.policy, w.nodes)
