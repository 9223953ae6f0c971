"""IncrementalPlanner: same rules as plan_pool, only the delta changes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slm_operator.planner import (
    Demand,
    IncrementalPlanner,
    NodeInventory,
    PoolPolicy,
    check_plan,
    plan_pool,
)
from test_planner_properties import demands, policy, pool
from test_planner_support import demand, node, where


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool(), policy(), demands(), st.lists(st.tuples(st.integers(0, 5), st.integers(-3, 3)), max_size=4))
def test_updates_keep_every_invariant_and_move_only_what_they_must(
    nodes: list[NodeInventory], pol: PoolPolicy, dem: list[Demand], changes: list[tuple[int, int]]
) -> None:
    planner = IncrementalPlanner(pol, nodes, dem)
    current = list(dem)
    for which, delta in changes:
        if not current:
            break
        prev = planner.plan
        k = which % len(current)
        current[k] = current[k].model_copy(update={"replicas": max(0, current[k].replicas + delta)})
        plan = planner.update(current)
        cur = prev.placements()
        assert check_plan(plan, pol, planner.nodes, current, cur) == []
        before, after = where(prev), where(plan)
        evicted = {(e.deployment, e.ordinal) for e in plan.pool.evictions}
        for key, loc in before.items():
            if key[0] != current[k].deployment:
                assert after.get(key) == loc or key in evicted


def test_update_matches_the_stateless_replan_for_a_scale_up() -> None:
    pol = PoolPolicy(name="p")
    nodes = [node("n0", "H100-80GB", 8), node("n1", "A100-40GB", 8)]
    dem = [
        demand(f"t/d{i}", ("Guaranteed", "Burstable", "BestEffort")[i % 3], 2, 3 + 2 * i) for i in range(8)
    ]
    planner = IncrementalPlanner(pol, nodes, dem)
    first = planner.plan
    changed = [d.model_copy(update={"replicas": 4}) if d.deployment == "t/d3" else d for d in dem]
    inc = planner.update(changed)
    full = plan_pool(pol, planner.nodes, changed, first.placements())
    assert where(inc) == where(full)
    assert inc.pool.gpus_used == full.pool.gpus_used


def test_deleted_added_and_resized_deployments() -> None:
    pol = PoolPolicy(name="p")
    nodes = [node("n0", "H100-80GB", 4)]
    dem = [demand("t/a", "Burstable", 2, 5), demand("t/b", "Guaranteed", 1, 9)]
    planner = IncrementalPlanner(pol, nodes, dem)
    first = planner.plan
    new = [
        demand("t/b", "Guaranteed", 1, 30),
        demand("t/c", "BestEffort", 3, 4),
    ]  # a deleted, b resized, c new
    plan = planner.update(new)
    assert {d.deployment for d in plan.deployments} == {"t/b", "t/c"}
    assert plan.deployment("t/c").placed == 3  # type: ignore[union-attr]
    b = plan.deployment("t/b")
    assert b is not None and b.placed == 1
    assert check_plan(plan, pol, planner.nodes, new, first.placements()) == []
    assert {e.reason for e in plan.pool.evictions} <= {"DeploymentChanged"}
