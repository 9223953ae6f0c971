"""Scenario tests of the planner: pressure, reservations, stability, node modes, overrides, segments."""

from __future__ import annotations

import random

import pytest

from slm_operator.planner import (
    CurrentPlacement,
    PoolPolicy,
    Reservation,
    Segment,
    ShareRequest,
    check_plan,
    plan_pool,
)
from slm_operator.planner.model import GiB
from test_planner_support import as_json, demand, legal, node, replan, where

POLICY = PoolPolicy(name="pool")


def _placed(plan, key: str) -> int:  # type: ignore[no-untyped-def]
    d = plan.deployment(key)
    assert d is not None
    return d.placed


# ------------------------------------------------------------------------------------------------ pressure


def test_guaranteed_preempts_best_effort_when_the_pool_is_full() -> None:
    nodes = [node("n0", "H100-80GB", 2)]
    be = demand("team/be", "BestEffort", 16, 9)
    plan1 = legal(POLICY, nodes, [be])
    assert _placed(plan1, "team/be") == 16  # 8 time-sliced replicas per GPU
    g = demand("team/g", "Guaranteed", 2, 9, order_key="z")
    _, _cur, plan2 = replan(POLICY, nodes, plan1, [be, g])
    assert _placed(plan2, "team/g") == 2
    assert all(
        r.share.mechanism == "MIG" for gp in plan2.gpus for r in gp.replicas if r.deployment == "team/g"
    )
    be2 = plan2.deployment("team/be")
    assert be2 is not None and be2.placed < 16
    assert {u.reason for u in be2.unplaced} == {"PreemptedByHigherTier"}
    assert all("team/g" in u.message for u in be2.unplaced)
    ev = plan2.pool.evictions
    assert (
        ev and {e.reason for e in ev} == {"PreemptedByHigherTier"} and {e.qos for e in ev} == {"BestEffort"}
    )


def test_lower_tier_never_displaces_higher_tier() -> None:
    nodes = [node("n0", "A100-40GB", 1)]
    g = demand("team/g", "Guaranteed", 1, 30)
    plan1 = legal(POLICY, nodes, [g])
    b = demand("team/b", "Burstable", 1, 30, order_key="0")  # older, but a lower tier
    _, _, plan2 = replan(POLICY, nodes, plan1, [g, b])
    assert where(plan2)[("team/g", 0)] == where(plan1)[("team/g", 0)]
    bd = plan2.deployment("team/b")
    assert bd is not None and bd.placed == 0
    assert bd.unplaced[0].reason == "InsufficientCapacity"
    assert not plan2.pool.evictions


def test_burstable_yields_before_guaranteed_and_best_effort_before_burstable() -> None:
    nodes = [node("n0", "H100-80GB", 1)]
    demands = [
        demand("t/g", "Guaranteed", 3, 35),
        demand("t/b", "Burstable", 2, 35),
        demand("t/e", "BestEffort", 2, 35),
    ]
    plan = legal(POLICY, nodes, demands)
    # one H100 holds two 3g.40gb instances: both go to the Guaranteed deployment
    assert [_placed(plan, k) for k in ("t/g", "t/b", "t/e")] == [2, 0, 0]


# ------------------------------------------------------------------------------------------------ reservations


def test_reserved_gpus_hold_no_guaranteed_or_burstable() -> None:
    policy = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=2, lend_to="BestEffort"),))
    nodes = [node("n0", "H100-80GB", 4)]
    demands = [demand("t/g", "Guaranteed", 10, 30), demand("t/b", "Burstable", 10, 30)]
    plan = legal(policy, nodes, demands)
    reserved = [g for g in plan.gpus if g.reservation == "llm"]
    assert len(reserved) == 2 and all(not g.replicas and g.mode == "Reserved" for g in reserved)
    g_unplaced = plan.deployment("t/g").unplaced  # type: ignore[union-attr]
    assert g_unplaced and all(u.reason == "ReservedCapacity" for u in g_unplaced)


def test_best_effort_borrows_reserved_gpus_only_when_needed_and_allowed() -> None:
    lend = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=2, lend_to="BestEffort"),))
    nodes = [node("n0", "H100-80GB", 4)]
    small = [demand("t/e", "BestEffort", 10, 9)]
    plan = legal(lend, nodes, small)
    assert not any(r.borrowed for g in plan.gpus for r in g.replicas)  # fits without borrowing
    big = [demand("t/e", "BestEffort", 30, 9)]
    plan = legal(lend, nodes, big)
    borrowed = [g for g in plan.gpus if g.reservation == "llm" and g.replicas]
    assert len(borrowed) == 2
    assert all(len(g.replicas) == 1 and g.replicas[0].borrowed for g in borrowed)
    assert all(g.replicas[0].share.mechanism == "Exclusive" for g in borrowed)
    no_lend = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=2),))
    plan = legal(no_lend, nodes, big)
    assert not any(g.replicas for g in plan.gpus if g.reservation == "llm")


def test_claimed_reservation_evicts_borrowers_first() -> None:
    res = Reservation(name="llm", gpus=2, lend_to="BestEffort")
    policy = PoolPolicy(name="p", reservations=(res,))
    nodes = [node("n0", "H100-80GB", 4)]
    demands = [demand("t/b", "Burstable", 4, 9), demand("t/e", "BestEffort", 30, 9)]
    plan1 = legal(policy, nodes, demands)
    assert sum(1 for g in plan1.gpus if g.reservation and g.replicas) == 2
    claimed = PoolPolicy(name="p", reservations=(res.model_copy(update={"claimed": 2}),))
    _nodes2, _cur, plan2 = replan(claimed, nodes, plan1, demands)
    assert not any(g.replicas for g in plan2.gpus if g.reservation)
    reasons = {e.reason for e in plan2.pool.evictions}
    assert reasons == {"ReservationClaimed"}
    before, after = where(plan1), where(plan2)
    assert all(after[k] == v for k, v in before.items() if k[0] == "t/b")  # Burstable untouched


def test_growing_reservation_takes_best_effort_gpus_before_burstable_ones() -> None:
    nodes = [node("a", "H100-80GB", 1), node("b", "H100-80GB", 1), node("c", "H100-80GB", 1)]
    demands = [demand("t/b", "Burstable", 1, 60), demand("t/e", "BestEffort", 1, 60)]
    p1 = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=1),))
    plan1 = legal(p1, nodes, demands)
    p2 = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=2),))
    _, _, plan2 = replan(p2, nodes, plan1, demands)
    assert where(plan2)[("t/b", 0)] == where(plan1)[("t/b", 0)]
    assert [e.reason for e in plan2.pool.evictions] == ["ReservedCapacity"]
    assert plan2.pool.evictions[0].deployment == "t/e"


def test_reservation_choice_is_stable_between_plans() -> None:
    policy = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=2),))
    nodes = [node("n0", "H100-80GB", 4), node("n1", "H100-80GB", 4)]
    demands = [demand("t/b", "Burstable", 6, 20)]
    plan1 = legal(policy, nodes, demands)
    _, _, plan2 = replan(policy, nodes, plan1, demands)
    r1 = sorted((g.node, g.index) for g in plan1.gpus if g.reservation)
    r2 = sorted((g.node, g.index) for g in plan2.gpus if g.reservation)
    assert r1 == r2


# ------------------------------------------------------------------------------------------------ segments


def test_segments_are_kept_out_of_packing() -> None:
    policy = PoolPolicy(
        name="p",
        segments=(Segment(name="ft", gpus=2),),
        reservations=(Reservation(name="llm", gpus=1, lend_to="BestEffort"),),
    )
    nodes = [node("n0", "H100-80GB", 4)]
    demands = [demand("t/e", "BestEffort", 40, 9), demand("t/g", "Guaranteed", 10, 9)]
    plan = legal(policy, nodes, demands)
    seg = [g for g in plan.gpus if g.segment == "ft"]
    assert len(seg) == 2 and all(g.mode == "Segment" and not g.replicas for g in seg)
    layouts = {x.index: x for x in plan.nodes[0].mig_layout}
    assert all(not layouts[g.index].mig_enabled for g in seg)


# ------------------------------------------------------------------------------------------------ stability


def test_scale_up_and_down_moves_no_other_replica() -> None:
    nodes = [node("n0", "H100-80GB", 8), node("n1", "A100-40GB", 8), node("n2", "L4", 4)]
    demands = [
        demand("t/g1", "Guaranteed", 3, 8),
        demand("t/g2", "Guaranteed", 2, 18),
        demand("t/b1", "Burstable", 4, 6),
        demand("t/b2", "Burstable", 3, 12),
        demand("t/e1", "BestEffort", 5, 3),
    ]
    plan1 = legal(POLICY, nodes, demands)
    changed = [
        d.model_copy(update={"replicas": d.replicas + 2}) if d.deployment == "t/b1" else d for d in demands
    ]
    changed = [d.model_copy(update={"replicas": 1}) if d.deployment == "t/g1" else d for d in changed]
    _, _, plan2 = replan(POLICY, nodes, plan1, changed)
    before, after = where(plan1), where(plan2)
    for key, loc in before.items():
        if key[0] == "t/g1" and key[1] >= 1:
            continue  # scaled down
        assert after[key] == loc, key
    assert _placed(plan2, "t/b1") == 6
    assert plan2.pool.replicas_moved == 0 and not plan2.pool.evictions


def test_unchanged_inputs_move_nothing_and_keep_layouts() -> None:
    nodes = [node("n0", "H100-80GB", 8), node("n1", "H200-141GB", 8)]
    demands = [
        demand(f"t/d{i}", ("Guaranteed", "Burstable", "BestEffort")[i % 3], 1 + i % 4, 2 + 3 * i)
        for i in range(9)
    ]
    plan1 = legal(POLICY, nodes, demands)
    _nodes2, _, plan2 = replan(POLICY, nodes, plan1, demands)
    assert where(plan1) == where(plan2)
    assert not any(g.reconfigure for g in plan2.gpus)
    assert not any(n.mig_changed or n.sharing_changed for n in plan2.nodes)


def test_reservation_avoids_running_replicas_and_evicts_only_when_it_must() -> None:
    policy = PoolPolicy(name="p", reservations=(Reservation(name="llm", gpus=1),))
    demands = [demand("t/b", "Burstable", 1, 9)]
    cur = [CurrentPlacement(deployment="t/b", ordinal=0, node="n0", gpu_index=1, mechanism="Exclusive")]
    # two GPUs: the reservation takes the idle one, the running replica stays
    plan = legal(policy, [node("n0", "H100-80GB", 2)], demands, cur)
    assert not plan.pool.evictions and where(plan)[("t/b", 0)][:2] == ("n0", 1)
    assert [g.index for g in plan.gpus if g.reservation] == [0]
    # one GPU: the reservation wins, the replica yields with a reason
    cur = [CurrentPlacement(deployment="t/b", ordinal=0, node="n0", gpu_index=0, mechanism="Exclusive")]
    plan = legal(policy, [node("n0", "H100-80GB", 1)], demands, cur)
    assert [e.reason for e in plan.pool.evictions] == ["ReservedCapacity"]
    assert plan.deployment("t/b").unplaced[0].reason == "ReservedCapacity"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ MIG layouts


def _mig_gpus(policy: PoolPolicy, nodes, demands, **packer_kw):  # type: ignore[no-untyped-def]
    from slm_operator.planner.assemble import build_plan
    from slm_operator.planner.packer import Packer, PackerOptions
    from slm_operator.planner.state import build_context

    ctx = build_context(policy, nodes, demands, [])
    Packer(ctx, PackerOptions(**packer_kw)).run()
    plan = build_plan(ctx)
    assert check_plan(plan, policy, nodes, demands) == []
    return plan


def test_mig_profiles_mix_on_a_gpu_instead_of_filling_gpus_one_profile_at_a_time() -> None:
    """4 replicas that need 1g.20gb and 24 that fit 1g.10gb: largest first alone gives one GPU of 4 x 1g.20gb
    (half its compute idle) and 4 GPUs of 1g.10gb (7 per GPU): 5 GPUs. The tier's layout targets mix them as
    1g.20gb + 6 x 1g.10gb: 4 GPUs, every memory and compute slice in use."""
    nodes = [node("n0", "H100-80GB", 8)]
    demands = [demand(f"t/m{i}", "Guaranteed", 1, 15) for i in range(4)]
    demands += [demand(f"t/s{i:02d}", "Guaranteed", 1, 8) for i in range(24)]
    plan = legal(POLICY, nodes, demands)
    assert plan.pool.replicas_unplaced == 0
    assert plan.pool.gpus_used == 4
    for g in plan.gpus:
        if g.replicas:
            assert sorted(i.profile for i in g.mig_instances) == ["1g.10gb"] * 6 + ["1g.20gb"], g
    one_at_a_time = _mig_gpus(POLICY, nodes, demands, mig_targets=False)
    assert one_at_a_time.pool.gpus_used == 5
    assert _mig_gpus(POLICY, nodes, demands).pool.gpus_used == 4


def test_layout_targets_only_guide_the_first_pass() -> None:
    """A GPU whose target is complete takes nothing more while the tier's first pass runs; replicas that find no
    room then (a one-GPU pool: 1g.20gb + 6 x 1g.10gb is the target, a 2-replica deployment cannot share it in
    the first pass) get the second pass without targets, like before."""
    nodes = [node("n0", "H100-80GB", 1)]
    demands = [demand("t/m", "Guaranteed", 1, 15), demand("t/pair", "Guaranteed", 2, 8)]
    demands += [demand(f"t/s{i}", "Guaranteed", 1, 8) for i in range(4)]
    plan = legal(POLICY, nodes, demands)
    assert plan.pool.replicas_unplaced == 0 and plan.pool.gpus_used == 1
    (gpu,) = [g for g in plan.gpus if g.replicas]
    assert sorted(i.profile for i in gpu.mig_instances) == ["1g.10gb"] * 6 + ["1g.20gb"]


def test_a_target_slot_takes_a_smaller_instance_rather_than_none() -> None:
    """A GPU's layout target names instances; a replica that needs less than a free target slot may take it (a
    1g.10gb replica in a 1g.20gb slot), never more, and a GPU whose instances do not match its target takes
    nothing more while the targets apply."""
    from slm_operator.planner.mig import geometry
    from slm_operator.planner.targets import target_room

    geo = geometry("H100-80GB")
    assert geo is not None

    def counts(**names: int) -> tuple[int, ...]:
        return geo.counts_of([n.replace("_", ".") for n, c in names.items() for _ in range(c)])

    def room(want: tuple[int, ...], have: tuple[int, ...]) -> set[str]:
        return {geo.profiles[p].name for p in target_room("H100-80GB", want, have)}

    mixed = counts(**{"1g_20gb": 1, "1g_10gb": 6})
    assert room(mixed, counts()) == {"1g.10gb", "1g.20gb"}
    assert room(mixed, counts(**{"1g_20gb": 1, "1g_10gb": 5})) == {"1g.10gb"}
    assert room(mixed, counts(**{"1g_10gb": 7})) == set(), "the 1g.20gb slot already took a 1g.10gb"
    four = counts(**{"1g_20gb": 4})
    assert room(four, counts(**{"1g_20gb": 3})) == {"1g.10gb", "1g.20gb"}
    assert room(four, counts(**{"3g_40gb": 1})) == set()


# ------------------------------------------------------------------------------------------------ node modes


def test_mps_and_time_slicing_never_share_a_node() -> None:
    nodes = [node("n0", "H100-80GB", 2), node("n1", "H100-80GB", 2), node("n2", "L4", 4)]
    demands = [demand("t/b", "Burstable", 12, 5), demand("t/e", "BestEffort", 12, 5)]
    plan = legal(POLICY, nodes, demands)
    for n in plan.nodes:
        modes = {g.mode for g in plan.gpus if g.node == n.name and g.replicas}
        assert not ({"MPS", "TimeSlicing"} <= modes)
        if n.sharing == "MPS":
            assert not any(x.mig_enabled for x in n.mig_layout)
            assert modes <= {"MPS"}


def test_mps_caps_hold_every_client() -> None:
    nodes = [node("n0", "A100-40GB", 2)]
    demands = [demand("t/b", "Burstable", 2, 12), demand("t/c", "Burstable", 4, 4)]
    plan = legal(POLICY, nodes, demands)
    for g in plan.gpus:
        for r in g.replicas:
            if r.share.mechanism == "MPS":
                assert r.share.mps_memory_limit_bytes is not None
                assert r.share.mps_memory_limit_bytes >= r.memory_bytes


def test_guaranteed_gets_hard_isolation_only() -> None:
    nodes = [node("n0", "L4", 4)]
    plan = legal(POLICY, nodes, [demand("t/g", "Guaranteed", 2, 5)])
    assert {r.share.mechanism for g in plan.gpus for r in g.replicas} == {"Exclusive"}


def test_oversubscription_only_for_best_effort() -> None:
    policy = PoolPolicy(
        name="p", memory_oversubscription_percent=200, allowed_mechanisms=("TimeSlicing", "MIG")
    )
    nodes = [node("n0", "L4", 1)]
    plan = legal(policy, nodes, [demand("t/e", "BestEffort", 3, 14)])
    assert _placed(plan, "t/e") == 3  # 42 GiB of estimates on a 22.5 GiB GPU at 200 %
    plan = legal(policy, nodes, [demand("t/b", "Burstable", 1, 14)])
    assert plan.deployment("t/b").unplaced[0].reason == "MechanismNotAllowed"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ reasons, overrides


def test_model_larger_than_any_gpu_is_no_share_fits() -> None:
    plan = legal(POLICY, [node("n0", "H100-80GB", 8)], [demand("t/big", "Burstable", 2, 200)])
    d = plan.deployment("t/big")
    assert d is not None and d.placed == 0
    assert {u.reason for u in d.unplaced} == {"NoShareFits"}
    assert "larger than any GPU" in d.unplaced[0].message
    assert "NoShareFits" in d.explanation


def test_mechanism_not_allowed() -> None:
    policy = PoolPolicy(name="p", allowed_mechanisms=("TimeSlicing",))
    plan = legal(policy, [node("n0", "H100-80GB", 1)], [demand("t/g", "Guaranteed", 1, 5)])
    assert plan.deployment("t/g").unplaced[0].reason == "MechanismNotAllowed"  # type: ignore[union-attr]
    share = ShareRequest(mechanism="MPS")
    plan = legal(POLICY, [node("n0", "H100-80GB", 1)], [demand("t/g", "Guaranteed", 1, 5, share=share)])
    assert plan.deployment("t/g").unplaced[0].reason == "MechanismNotAllowed"  # type: ignore[union-attr]


def test_explicit_share_overrides_are_honoured() -> None:
    nodes = [node("n0", "H100-80GB", 3), node("n1", "H100-80GB", 3)]
    demands = [
        demand(
            "t/pinned-mig", "Guaranteed", 2, 5, share=ShareRequest(mechanism="MIG", mig_profile="3g.40gb")
        ),
        demand("t/pinned-mps", "Burstable", 2, 5, share=ShareRequest(mechanism="MPS")),
        demand("t/pinned-ex", "BestEffort", 1, 5, share=ShareRequest(mechanism="Exclusive")),
    ]
    plan = legal(POLICY, nodes, demands)
    got = where(plan)
    assert {got[("t/pinned-mig", i)][2:] for i in range(2)} == {("MIG", "3g.40gb")}
    assert {got[("t/pinned-mps", i)][2] for i in range(2)} == {"MPS"}
    assert got[("t/pinned-ex", 0)][2] == "Exclusive"
    missing = demand("t/x", "Guaranteed", 1, 5, share=ShareRequest(mig_profile="1g.18gb"))
    plan = legal(POLICY, nodes, [missing])
    assert plan.deployment("t/x").unplaced[0].reason == "NoShareFits"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ spread, determinism


@pytest.mark.parametrize(("spread", "min_nodes"), [("Preferred", 2), ("Required", 3), ("Ignored", 1)])
def test_replicas_spread_over_gpus_and_nodes(spread: str, min_nodes: int) -> None:
    policy = PoolPolicy(name="p", spread_nodes=spread)  # type: ignore[arg-type]
    nodes = [node(f"n{i}", "H100-80GB", 2) for i in range(3)]
    plan = legal(policy, nodes, [demand("t/b", "Burstable", 3, 5), demand("t/c", "Burstable", 9, 5)])
    locs = [v for k, v in where(plan).items() if k[0] == "t/b"]
    assert len({(n, g) for n, g, *_ in locs}) == 3  # always different GPUs
    assert len({n for n, *_ in locs}) >= min_nodes


def test_colocation_only_when_nothing_else_fits() -> None:
    plan = legal(POLICY, [node("n0", "H100-80GB", 1)], [demand("t/b", "Burstable", 3, 5)])
    assert _placed(plan, "t/b") == 3  # one GPU: the replicas must share it


def test_plan_is_deterministic_and_independent_of_input_order() -> None:
    rng = random.Random(7)
    nodes = [node(f"n{i}", m, 4) for i, m in enumerate(["H100-80GB", "A100-40GB", "H200-141GB", "L4"])]
    tiers = ["Guaranteed", "Burstable", "BestEffort"]
    demands = [demand(f"t/d{i}", tiers[i % 3], 1 + i % 3, rng.uniform(1, 30)) for i in range(12)]
    a = as_json(plan_pool(POLICY, nodes, demands))
    b = as_json(plan_pool(POLICY, nodes, demands))
    shuffled_nodes = [n.model_copy(update={"gpus": tuple(reversed(n.gpus))}) for n in reversed(nodes)]
    c = as_json(plan_pool(POLICY, shuffled_nodes, list(reversed(demands))))
    assert a == b == c


def test_unschedulable_node_gets_no_new_replicas() -> None:
    nodes = [node("n0", "H100-80GB", 2, schedulable=False), node("n1", "H100-80GB", 1)]
    plan = legal(POLICY, nodes, [demand("t/b", "Burstable", 4, 30)])
    assert all(g.node == "n1" for g in plan.gpus if g.replicas)


def test_duplicate_deployment_is_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate deployment"):
        plan_pool(POLICY, [node("n0", "L4", 1)], [demand("t/a", "Burstable", 1, 1)] * 2)


def test_unknown_gpu_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown GPU model"):
        plan_pool(POLICY, [node("n0", "RTX-9999", 1)], [])


def test_check_plan_catches_a_broken_plan() -> None:
    nodes = [node("n0", "H100-80GB", 1)]
    demands = [demand("t/g", "Guaranteed", 1, 5)]
    plan = plan_pool(POLICY, nodes, demands)
    gpu = plan.gpus[0]
    bad_share = gpu.replicas[0].share.model_copy(update={"mechanism": "MPS", "mig_profile": None})
    bad = plan.model_copy(
        update={
            "gpus": (
                gpu.model_copy(
                    update={"replicas": (gpu.replicas[0].model_copy(update={"share": bad_share}),)}
                ),
            )
        }
    )
    v = check_plan(bad, POLICY, nodes, demands)
    assert any("Guaranteed may not use MPS" in x for x in v)
    assert plan.pool.memory_allocated_bytes == int(5 * GiB)
