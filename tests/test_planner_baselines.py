"""Baselines and the lower bound used by the benchmark."""

from __future__ import annotations

import pytest

from bench.baselines import (
    layout_bound,
    lower_bound,
    memory_binpack,
    node_bound,
    static_mig_balanced,
    time_slicing,
    whole_gpu,
    whole_gpu_needed,
)
from bench.workloads import agentic_mix
from slm_operator.planner import PoolPolicy, Reservation, plan_pool
from test_planner_support import demand, node

POLICY = PoolPolicy(name="pool")


def test_whole_gpu_uses_one_gpu_per_replica() -> None:
    nodes = [node("n0", "L4", 4)]
    r = whole_gpu(POLICY, nodes, [demand("t/a", "Burstable", 6, 5)])
    assert (r.gpus_used, r.replicas_placed, r.replicas_total) == (4, 4, 6)
    assert (
        whole_gpu_needed([demand("t/a", "Burstable", 6, 5), demand("t/x", "Burstable", 1, 500)], nodes) == 6
    )


def test_static_all_balanced_layout() -> None:
    # H100 all-balanced = 2 x 1g.10gb + 1g... 2g.20gb + 3g.40gb: four instances per GPU
    nodes = [node("n0", "H100-80GB", 1)]
    r = static_mig_balanced(POLICY, nodes, [demand("t/a", "Burstable", 6, 5)])
    assert r.replicas_placed == 4 and r.gpus_used == 1


def test_time_slicing_baseline_counts_failures_and_violations() -> None:
    nodes = [node("n0", "L4", 1)]
    r = time_slicing(POLICY, nodes, [demand("t/g", "Guaranteed", 5, 5)])
    assert r.replicas_placed == 4  # 4 per GPU and 20 GiB <= 22.5 GiB
    assert r.violations == 4  # Guaranteed must not be time-sliced


def test_memory_binpack_ignores_geometry() -> None:
    nodes = [node("n0", "H100-80GB", 1)]
    r = memory_binpack(POLICY, nodes, [demand("t/a", "Guaranteed", 8, 9)])
    assert r.replicas_placed == 8 and r.gpus_used == 1  # 72 GiB of 79.6, no MIG geometry


def test_reserved_gpus_are_excluded_from_baselines() -> None:
    policy = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=3),))
    nodes = [node("n0", "L4", 4)]
    assert whole_gpu(policy, nodes, [demand("t/a", "Burstable", 6, 5)]).replicas_placed == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lower_bound_is_below_the_plan(seed: int) -> None:
    w = agentic_mix(100, seed=seed, replicas_per_gpu=3.5)
    lb = lower_bound(w.policy, w.nodes, w.demands)
    plan = plan_pool(w.policy, w.nodes, w.demands)
    assert lb.feasible
    assert plan.pool.replicas_unplaced == 0
    assert lb.gpus <= plan.pool.gpus_used
    assert max(lb.memory_bound, lb.compute_bound, lb.slot_bound) <= lb.gpus
    # the node-aware bound is valid too, and tighter on a pool of 14 nodes: each MPS client count and each
    # time-sliced node takes whole nodes of the few there are
    nb = node_bound(w.policy, w.nodes, w.demands)
    assert nb.feasible and nb.optimal
    assert layout_bound(w.policy, w.nodes, w.demands).gpus < nb.gpus <= plan.pool.gpus_used


BOUND_CASES = [
    (
        [node("n0", "H100-80GB", 2)],
        [demand("t/g", "Guaranteed", 5, 9), demand("t/e", "BestEffort", 4, 12)],
    ),
    (
        [node("n0", "A100-40GB", 2), node("n1", "L4", 2)],
        [demand("t/b", "Burstable", 3, 6), demand("t/g", "Guaranteed", 2, 4)],
    ),
    # 3 x 1g.20gb + 2 x 1g.10gb: 8 memory and 5 compute slices, but no H100 layout holds them all (1g.10gb
    # cannot start at slice 7); the optimum is 2 GPUs, both LPs say 1 (a fractional mix of layouts fits)
    (
        [node("n0", "H100-80GB", 2)],
        [demand(f"t/m{i}", "Guaranteed", 1, 15) for i in range(3)]
        + [demand(f"t/s{i}", "Guaranteed", 1, 8) for i in range(2)],
    ),
]


@pytest.mark.parametrize("case", range(len(BOUND_CASES)))
def test_bounds_are_below_the_optimum_on_small_pools(case: int) -> None:
    """Both LP bounds never exceed the proven optimum; the MIG-geometry-aware one is never looser."""
    exact = pytest.importorskip("slm_operator.planner.exact")
    nodes, demands = BOUND_CASES[case]
    res = exact.solve_exact(POLICY, nodes, demands, time_budget_s=20)
    assert res.status == "OPTIMAL" and res.plan.pool.replicas_unplaced == 0
    vol = lower_bound(POLICY, nodes, demands)
    lay = layout_bound(POLICY, nodes, demands)
    assert vol.gpus <= res.plan.pool.gpus_used
    assert lay.feasible and lay.gpus <= res.plan.pool.gpus_used
    assert lay.lp_value >= vol.lp_value - 1e-6
    nb = node_bound(POLICY, nodes, demands)
    assert nb.feasible and lay.gpus <= nb.gpus <= res.plan.pool.gpus_used


def test_the_node_aware_bound_knows_one_mps_client_count_per_node() -> None:
    """Three 10 GiB replicas need MPS caps of half an L4 (2 clients), eight 1 GiB ones fit 16 clients. The
    LP bounds put 3 halves and 8 sixteenths on 2 GPUs; a node runs one client count for all its GPUs, so
    the halves take node n0's two GPUs and the sixteenths one GPU of n1: 3, the proven optimum."""
    exact = pytest.importorskip("slm_operator.planner.exact")
    policy = PoolPolicy(name="pool", mps_max_clients_per_gpu=16)
    nodes = [node("n0", "L4", 2), node("n1", "L4", 2)]
    demands = [demand(f"t/a{i}", "Burstable", 1, 10) for i in range(3)]
    demands += [demand(f"t/b{i}", "Burstable", 1, 1) for i in range(8)]
    res = exact.solve_exact(policy, nodes, demands, time_budget_s=20)
    assert res.status == "OPTIMAL" and res.plan.pool.gpus_used == 3
    assert layout_bound(policy, nodes, demands).gpus == 2
    nb = node_bound(policy, nodes, demands)
    assert (nb.gpus, nb.optimal) == (3, True)
