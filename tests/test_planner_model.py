"""Planner input/output models: JSON form, validation, helpers, optimise mode."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slm_operator.planner import (
    Plan,
    PoolPolicy,
    Reservation,
    Segment,
    ShareRequest,
    apply_plan,
    check_plan,
    plan_pool,
)
from test_planner_support import demand, node

POLICY = PoolPolicy(name="pool")


def _plan() -> Plan:
    nodes = [node("n0", "H100-80GB", 2), node("n1", "L4", 2)]
    demands = [
        demand("t/g", "Guaranteed", 2, 8),
        demand("t/b", "Burstable", 3, 4),
        demand("t/e", "BestEffort", 2, 3),
    ]
    return plan_pool(POLICY, nodes, demands)


def test_json_uses_camel_case_aliases() -> None:
    data = _plan().model_dump(mode="json", by_alias=True)
    assert {"pool", "nodes", "gpus", "deployments", "solver"} <= set(data)
    assert {"gpusUsed", "gpusTotal", "memoryAllocatedBytes", "memoryStrandedBytes", "evictions"} <= set(
        data["pool"]
    )
    gpu = next(g for g in data["gpus"] if g["replicas"])
    assert {"node", "index", "product", "mode", "migInstances", "replicas", "reconfigure"} <= set(gpu)
    rep = gpu["replicas"][0]
    assert {"deployment", "ordinal", "qos", "memoryGiB", "memoryBytes", "share"} <= set(rep)
    assert {"mechanism", "migProfile", "mpsMemoryLimitBytes", "memoryBytes"} <= set(rep["share"])
    dep = data["deployments"][0]
    assert {"desired", "placed", "unplaced", "moved", "explanation", "shareSummary"} <= set(dep)
    assert {"sharing", "replicasPerGpu", "migLayout"} <= set(data["nodes"][0])
    json.dumps(data)


def test_plan_round_trips_through_validation() -> None:
    plan = _plan()
    data = plan.model_dump(mode="json", by_alias=True)
    again = Plan.model_validate(data)
    assert again == plan
    assert again.model_dump(mode="json", by_alias=True) == data


def test_inputs_accept_camel_case() -> None:
    p = PoolPolicy.model_validate(
        {
            "name": "x",
            "allowedMechanisms": ["MPS", "MIG"],
            "mpsMaxClientsPerGpu": 4,
            "reservations": [{"name": "llm", "gpus": 1, "lendTo": "BestEffort"}],
        }
    )
    assert p.allowed_mechanisms == ("MIG", "MPS")
    assert p.reservations[0].lend_to == "BestEffort"


def test_input_validation() -> None:
    with pytest.raises(ValidationError):
        PoolPolicy(name="x", mps_max_clients_per_gpu=49)
    with pytest.raises(ValidationError):
        PoolPolicy(name="x", memory_oversubscription_percent=99)
    with pytest.raises(ValidationError):
        PoolPolicy(
            name="x", reservations=(Reservation(name="a", gpus=1),), segments=(Segment(name="a", gpus=1),)
        )
    with pytest.raises(ValidationError):
        ShareRequest(mechanism="MPS", mig_profile="1g.10gb")
    with pytest.raises(ValidationError):
        node("n", "L4", 1).model_copy(update={}).model_validate(
            {"name": "n", "gpus": [{"index": 0, "model": "L4"}] * 2}
        )


def test_placements_and_apply_plan_feed_the_next_plan() -> None:
    nodes = [node("n0", "H100-80GB", 2)]
    demands = [demand("t/g", "Guaranteed", 2, 8)]
    plan = plan_pool(POLICY, nodes, demands)
    cur = plan.placements()
    assert [(c.deployment, c.ordinal, c.mechanism) for c in cur] == [("t/g", 0, "MIG"), ("t/g", 1, "MIG")]
    after = apply_plan(nodes, plan)
    used = [g for g in after[0].gpus if g.mig_enabled]
    assert used and all(g.mig_instances for g in used)
    again = plan_pool(POLICY, after, demands, cur)
    assert not any(g.reconfigure for g in again.gpus)


def test_explanation_mentions_the_share_and_the_tier_rule() -> None:
    plan = _plan()
    d = plan.deployment("t/g")
    assert d is not None
    assert "MIG" in d.explanation and "hard isolation" in d.explanation


def test_pool_memory_accounting_adds_up() -> None:
    p = _plan().pool
    assert (
        p.memory_used_gpus_bytes == p.memory_allocated_bytes + p.memory_free_bytes + p.memory_stranded_bytes
    )


def test_optimize_mode_returns_an_exact_plan_on_small_pools() -> None:
    pytest.importorskip("ortools")
    nodes = [node("n0", "H100-80GB", 1), node("n1", "A100-40GB", 1)]
    demands = [demand("t/g", "Guaranteed", 2, 8), demand("t/e", "BestEffort", 2, 3)]
    plan = plan_pool(POLICY, nodes, demands, optimize=True, time_budget_s=20)
    assert plan.solver == "exact" and plan.optimal is True
    assert check_plan(plan, POLICY, nodes, demands) == []


def test_optimize_mode_falls_back_to_the_heuristic_on_large_pools() -> None:
    pytest.importorskip("ortools")
    nodes = [node(f"n{i}", "H100-80GB", 8) for i in range(10)]
    demands = [demand(f"t/d{i}", "Burstable", 4, 5) for i in range(30)]
    plan = plan_pool(POLICY, nodes, demands, optimize=True, time_budget_s=1)
    assert plan.solver == "heuristic"


@pytest.mark.parametrize("enabled", [True, False])
def test_planning_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    """plan_pool pauses the cyclic collector while it runs: the operator's process gets it back as it was,
    and cyclic garbage made during a pass is still collected afterwards."""
    import gc
    import weakref

    from slm_operator.planner import gc_paused

    class Cycle:
        me: object = None

    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with gc_paused():
            c = Cycle()
            c.me = c
            ref = weakref.ref(c)
            del c
            assert not gc.isenabled()
            plan = _plan()
        assert gc.isenabled() is enabled
        assert plan.deployments and ref() is not None  # kept alive by its own cycle only
        gc.collect()
        assert ref() is None
        plan_pool(POLICY, [node("n0", "L4", 1)], [demand("t/x", "Burstable", 1, 2)])
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_pass_leaves_no_cyclic_garbage() -> None:
    """What a pass leaves goes to the oldest generation (gc_pause.py), which a full collection rarely visits in
    a long-running operator: a plan or a consolidation whose working state were cyclic would grow the operator
    by megabytes per pass (2.4 MiB per plan at 1,000 GPUs before ``Context.release``). Reference counting alone
    must free it: a collection right after finds nothing."""
    import gc

    from bench.workloads import agentic_mix, change_demands
    from slm_operator.planner import ConsolidationBudget, apply_plan, consolidate

    w = agentic_mix(100, seed=3)
    first = plan_pool(w.policy, w.nodes, w.demands)  # warm: first-use caches are not garbage
    nodes, cur = apply_plan(w.nodes, first), first.placements()
    changed = change_demands(w.demands, 0.3, seed=7)
    budget = ConsolidationBudget(max_moves=50, threshold_percent=0)
    gc.collect()
    plan = plan_pool(w.policy, nodes, changed, cur)
    assert plan.pool.replicas_placed and gc.collect() == 0
    moved = consolidate(w.policy, apply_plan(nodes, plan), changed, plan.placements(), budget)
    assert moved.gpus_used > 0 and gc.collect() == 0


def test_the_planner_vocabulary_spells_values_as_the_api_does() -> None:
    """A value crosses the planner's boundary unchanged: its enums equal the API's and model.py's literals."""
    from typing import get_args

    from slm_operator.api import v1alpha1 as api
    from slm_operator.planner import model
    from slm_operator.planner.vocabulary import (
        EvictionReason,
        GpuMode,
        Mechanism,
        NodeMode,
        Tier,
        UnplacedReason,
    )

    assert {m.value for m in Mechanism} == {m.value for m in api.Mechanism} == set(get_args(model.Mechanism))
    assert [t.value for t in Tier] == [t.value for t in api.QoSTier] == list(get_args(model.Tier))
    assert {m.value for m in NodeMode} - {"Free"} == set(get_args(model.NodeSharing))
    assert {r.value for r in EvictionReason} == set(get_args(model.EvictionReason))
    assert {r.value for r in UnplacedReason} == set(get_args(model.UnplacedReason))
    assert {m.value for m in GpuMode} == set(get_args(model.GpuMode))
