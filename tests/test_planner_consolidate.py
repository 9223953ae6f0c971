"""Consolidation (planner/consolidate.py, docs/planner.md §4.9): moves that free whole GPUs when a churned pool
uses more GPUs than a fresh plan, within a disruption budget, cheapest first, make-before-break; and a node drained
in place whose BestEffort replicas move break-before-make (§4.9 step 7)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slm_operator.planner import (
    Consolidation,
    ConsolidationBudget,
    CurrentPlacement,
    Demand,
    GpuInventory,
    MigInstance,
    Move,
    NodeInventory,
    PoolPolicy,
    ShareRequest,
    apply_plan,
    check_plan,
    consolidate,
    plan_pool,
)
from slm_operator.planner.state import build_context
from test_planner_properties import demands, policy, pool
from test_planner_support import demand

POLICY = PoolPolicy(name="p", mps_max_clients_per_gpu=8, ts_max_replicas_per_gpu=8)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mig_node(name: str, n: int, instances: int = 7) -> NodeInventory:
    inst = tuple(MigInstance(profile="1g.10gb", start=i) for i in range(instances))
    gpus = tuple(
        GpuInventory(index=i, model="H100-80GB", mig_enabled=True, mig_instances=inst) for i in range(n)
    )
    return NodeInventory(name=name, gpus=gpus)


def _ts_node(name: str, n: int) -> NodeInventory:
    gpus = tuple(GpuInventory(index=i, model="H100-80GB") for i in range(n))
    return NodeInventory(name=name, gpus=gpus, sharing="TimeSlicing", sharing_replicas=8)


def _at(
    dep: str, ordinal: int, node: str, gpu: int, mech: str, profile: str | None = None
) -> CurrentPlacement:
    return CurrentPlacement(
        deployment=dep, ordinal=ordinal, node=node, gpu_index=gpu, mechanism=mech, mig_profile=profile
    )


def _fragmented() -> tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]]:
    """Four GPUs in use where a fresh plan needs at most two: one Guaranteed replica on each of two MIG GPUs (their
    layouts have free 1g.10gb instances), one BestEffort replica (too large for 1g.10gb) on each of two
    time-sliced GPUs."""
    nodes = [_mig_node("mig", 2), _ts_node("ts", 3)]
    dem = [
        demand("ns/g0", "Guaranteed", 1, 6),
        demand("ns/g1", "Guaranteed", 1, 6),
        demand("ns/b0", "BestEffort", 1, 14),
        demand("ns/b1", "BestEffort", 1, 14),
    ]
    cur = [
        _at("ns/g0", 0, "mig", 0, "MIG", "1g.10gb"),
        _at("ns/g1", 0, "mig", 1, "MIG", "1g.10gb"),
        _at("ns/b0", 0, "ts", 0, "TimeSlicing"),
        _at("ns/b1", 0, "ts", 1, "TimeSlicing"),
    ]
    return nodes, dem, cur


def _gpus(placements: Sequence[CurrentPlacement]) -> set[tuple[str, int]]:
    return {(p.node, p.gpu_index) for p in placements}


def test_a_fragmented_pool_moves_one_replica_per_freed_gpu_least_memory_first() -> None:
    nodes, dem, cur = _fragmented()
    c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=10))
    assert (c.gpus_used, c.gpus_freed) == (4, 2)
    assert c.gpus_fresh <= 2
    # one move per GPU freed either way: the GPU whose replica holds less memory (6 GiB against 14) goes first
    assert [m.tier for m in c.moves] == ["Guaranteed", "BestEffort"]
    assert all(m.make_before_break for m in c.moves)
    assert len(_gpus(c.placements)) == 2
    guaranteed, best_effort = c.moves
    # the BestEffort replica joins the other one's time-sliced GPU; the Guaranteed one takes a free instance
    # of the other MIG GPU's layout (no reconfiguration)
    assert (best_effort.target.node, best_effort.target.mechanism) == ("ts", "TimeSlicing")
    assert (guaranteed.target.node, guaranteed.target.mechanism, guaranteed.target.mig_profile) == (
        "mig",
        "MIG",
        "1g.10gb",
    )
    assert "frees GPU" in best_effort.reason
    assert c.ratio == 4 / c.gpus_fresh


def test_the_budget_limits_the_moves_and_the_cheapest_go_first() -> None:
    nodes, dem, cur = _fragmented()
    c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=1))
    assert [m.tier for m in c.moves] == ["Guaranteed"]
    assert c.gpus_freed == 1
    none = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=0))
    assert none.moves == () and none.gpus_freed == 0 and "budget" in none.message


def test_busy_deployments_do_not_move() -> None:
    nodes, dem, cur = _fragmented()
    busy = frozenset({"ns/g0", "ns/g1"})
    c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=10, busy=busy))
    assert [m.tier for m in c.moves] == ["BestEffort"]


def test_best_effort_before_burstable_before_guaranteed_at_equal_moves_and_memory() -> None:
    """Four MIG GPUs with one replica of the same size each on a 1g.10gb instance: Guaranteed on GPU 0,
    Burstable on 1, BestEffort on 2, Guaranteed on 3. Every one of them can move into another GPU's free
    instances; with one move allowed the BestEffort replica goes, then (it busy) the Burstable one, and the
    Guaranteed one on GPU 0 only when both are busy."""
    nodes = [_mig_node("mig", 4)]
    tiers = {"ns/g": "Guaranteed", "ns/u": "Burstable", "ns/b": "BestEffort", "ns/x": "Guaranteed"}
    dem = [demand(key, tier, 1, 6) for key, tier in tiers.items()]
    cur = [_at(key, 0, "mig", i, "MIG", "1g.10gb") for i, key in enumerate(tiers)]

    def moved(*busy: str) -> list[tuple[str, int]]:
        budget = ConsolidationBudget(max_moves=1, threshold_percent=0, busy=frozenset(busy))
        return [
            (m.deployment, m.source.gpu_index) for m in consolidate(POLICY, nodes, dem, cur, budget).moves
        ]

    assert moved() == [("ns/b", 2)]
    assert moved("ns/b") == [("ns/u", 1)]
    assert moved("ns/b", "ns/u") == [("ns/g", 0)]


def test_fewest_moves_per_freed_gpu_first() -> None:
    """A time-sliced GPU with one replica empties before one with two."""
    nodes = [_ts_node("ts", 3)]
    dem = [demand(f"ns/b{i}", "BestEffort", 1, 6) for i in range(5)]
    cur = [
        _at("ns/b0", 0, "ts", 0, "TimeSlicing"),
        _at("ns/b1", 0, "ts", 0, "TimeSlicing"),
        _at("ns/b2", 0, "ts", 1, "TimeSlicing"),
        _at("ns/b3", 0, "ts", 1, "TimeSlicing"),
        _at("ns/b4", 0, "ts", 2, "TimeSlicing"),
    ]
    c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=2, threshold_percent=0))
    assert [(m.deployment, m.source.gpu_index) for m in c.moves] == [("ns/b4", 2)]


def test_no_moves_within_the_threshold() -> None:
    nodes, dem, cur = _fragmented()
    c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=10, threshold_percent=300))
    assert (
        c.moves == () and c.gpus_freed == 0 and c.placements == tuple(sorted(cur, key=lambda p: p.deployment))
    )
    assert "within 300% of a fresh plan" in c.message


def test_a_cheaper_replica_makes_room_on_mig_first() -> None:
    """The only 1g.10gb instances left are in use: a BestEffort replica moves out of one into a time-sliced
    GPU's room first, then the Guaranteed replica takes its instance (two moves free one GPU)."""
    nodes = [_mig_node("mig", 2), _ts_node("ts", 1)]
    full = [f"ns/g{i}" for i in range(1, 7)]
    dem = [demand(k, "Guaranteed", 1, 6) for k in ["ns/g0", *full]]
    dem += [
        demand("ns/b", "BestEffort", 1, 6),
        demand("ns/t", "BestEffort", 1, 12),
    ]  # t: too large for 1g.10gb
    cur = [_at(k, 0, "mig", 0, "MIG", "1g.10gb") for k in [*full, "ns/b"]]
    cur += [_at("ns/g0", 0, "mig", 1, "MIG", "1g.10gb"), _at("ns/t", 0, "ts", 0, "TimeSlicing")]
    budget = ConsolidationBudget(max_moves=2, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert [(m.deployment, m.target.node, m.target.gpu_index) for m in c.moves] == [
        ("ns/b", "ts", 0),
        ("ns/g0", "mig", 0),
    ]
    assert c.gpus_freed == 1
    _check(POLICY, nodes, dem, cur, c, budget)
    # with room for one move only, nothing moves: a move that frees nothing is not made
    assert consolidate(POLICY, nodes, dem, cur, budget.model_copy(update={"max_moves": 1})).moves == ()


def test_a_cheaper_replica_makes_room_on_mps_first() -> None:
    """The same with MPS: the only client slot that holds the Burstable replica is a BestEffort replica's, which
    moves to a time-sliced GPU first."""
    mps = NodeInventory(
        name="mps",
        gpus=tuple(GpuInventory(index=i, model="H100-80GB") for i in range(2)),
        sharing="MPS",
        sharing_replicas=2,
    )
    nodes = [mps, _ts_node("ts", 1)]
    dem = [
        demand("ns/u0", "Burstable", 1, 20),
        demand("ns/u1", "Burstable", 1, 20),
        demand("ns/b", "BestEffort", 1, 6),
        demand("ns/t", "BestEffort", 1, 12, share=ShareRequest(mechanism="TimeSlicing")),
    ]
    cur = [
        _at("ns/u1", 0, "mps", 0, "MPS"),
        _at("ns/b", 0, "mps", 0, "MPS"),
        _at("ns/u0", 0, "mps", 1, "MPS"),
        _at("ns/t", 0, "ts", 0, "TimeSlicing"),
    ]
    budget = ConsolidationBudget(max_moves=2, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert [(m.deployment, m.target.node, m.target.gpu_index, m.target.mechanism) for m in c.moves] == [
        ("ns/b", "ts", 0, "TimeSlicing"),
        ("ns/u0", "mps", 0, "MPS"),
    ]
    _check(POLICY, nodes, dem, cur, c, budget)


def test_a_smaller_replica_makes_room_on_a_time_sliced_gpu_first() -> None:
    """A 35 GiB replica fits no time-sliced GPU's room; a 10 GiB replica leaves one for another GPU's room first."""
    nodes = [_ts_node("ts", 3)]
    dem = [
        demand("ns/a", "BestEffort", 1, 40),
        demand("ns/b", "BestEffort", 1, 10),
        demand("ns/c", "BestEffort", 1, 35),
        demand("ns/d", "BestEffort", 1, 60),
    ]
    cur = [
        _at("ns/a", 0, "ts", 0, "TimeSlicing"),
        _at("ns/b", 0, "ts", 0, "TimeSlicing"),
        _at("ns/c", 0, "ts", 1, "TimeSlicing"),
        _at("ns/d", 0, "ts", 2, "TimeSlicing"),
    ]
    budget = ConsolidationBudget(max_moves=2, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert [(m.deployment, m.target.gpu_index) for m in c.moves] == [("ns/b", 2), ("ns/c", 0)]
    _check(POLICY, nodes, dem, cur, c, budget)


def test_repartition_never_moves_only_into_existing_instances() -> None:
    """A MIG GPU whose frozen layout has no free instance of a fitting profile takes no replica: the Guaranteed
    replicas stay where they are (no reconfiguration of a GPU in use)."""
    nodes = [_mig_node("mig", 2, instances=1)]  # one 1g.10gb instance per GPU, each in use
    dem = [demand("ns/g0", "Guaranteed", 1, 6), demand("ns/g1", "Guaranteed", 1, 6)]
    cur = [_at("ns/g0", 0, "mig", 0, "MIG", "1g.10gb"), _at("ns/g1", 0, "mig", 1, "MIG", "1g.10gb")]
    for repartition in ("Never", "Allowed"):
        pol = POLICY.model_copy(update={"repartition": repartition})
        c = consolidate(pol, nodes, dem, cur, ConsolidationBudget(max_moves=10, threshold_percent=0))
        assert c.gpus_fresh == 1
        assert c.moves == (), repartition


def _mps_node(name: str, n: int, clients: int) -> NodeInventory:
    gpus = tuple(GpuInventory(index=i, model="H100-80GB") for i in range(n))
    return NodeInventory(name=name, gpus=gpus, sharing="MPS", sharing_replicas=clients)


def test_a_node_whose_mode_wastes_gpus_is_drained_onto_a_node_configured_anew() -> None:
    """Four 9 GiB MPS replicas fill a node with two clients per GPU (its first replicas were large): no GPU in use
    has room, so no GPU can be emptied. Drained, they fit one GPU of an idle node with eight clients per GPU; the
    pool uses one GPU instead of two, and a re-plan keeps them there (the idle node's old config gives way)."""
    nodes = [_mps_node("mps", 2, clients=2), _mps_node("spare", 2, clients=2)]
    mps = ShareRequest(mechanism="MPS")
    dem = [demand(f"ns/u{i}", "Burstable", 1, 9, share=mps) for i in range(4)]
    cur = [_at(f"ns/u{i}", 0, "mps", i // 2, "MPS") for i in range(4)]
    budget = ConsolidationBudget(max_moves=4, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert (c.gpus_used, c.gpus_fresh, c.gpus_freed) == (2, 1, 1)
    assert c.nodes_freed == ("mps",)
    assert {(m.target.node, m.target.gpu_index, m.target.mechanism) for m in c.moves} == {("spare", 0, "MPS")}
    assert all(m.reason.startswith("empties node mps") for m in c.moves)
    _check(POLICY, nodes, dem, cur, c, budget)
    replanned = plan_pool(POLICY, nodes, dem, c.placements)
    assert [n.replicas_per_gpu for n in replanned.nodes if n.name == "spare"] == [8]
    # a budget too small for the whole node moves nothing (half a drain frees nothing)
    assert consolidate(POLICY, nodes, dem, cur, budget.model_copy(update={"max_moves": 3})).moves == ()


def test_a_drain_moves_two_replicas_of_a_deployment_in_sequence() -> None:
    """A node holding two replicas of one deployment can still be drained: both move, one after the other
    (``startable`` starts the second once the first is done)."""
    nodes = [_mps_node("mps", 3, clients=2), _mps_node("spare", 2, clients=2)]
    mps = ShareRequest(mechanism="MPS")
    dem = [demand("ns/a", "Burstable", 2, 9, share=mps)]
    dem += [demand(f"ns/u{i}", "Burstable", 1, 9, share=mps) for i in range(4)]
    cur = [_at("ns/a", 0, "mps", 0, "MPS"), _at("ns/a", 1, "mps", 1, "MPS")]
    cur += [_at(f"ns/u{i}", 0, "mps", gpu, "MPS") for i, gpu in enumerate((0, 1, 2, 2))]
    budget = ConsolidationBudget(max_moves=6, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert sorted(m.deployment for m in c.moves) == ["ns/a", "ns/a", *(f"ns/u{i}" for i in range(4))]
    assert {m.target.node for m in c.moves} == {"spare"}
    _check(POLICY, nodes, dem, cur, c, budget)
    assert c.gpus_freed >= 1


def _wasteful_mps(tier: str) -> tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]]:
    """Four 9 GiB replicas on an MPS node with two clients per GPU (two GPUs), and no other node: no share is
    free while they run, so make-before-break empties nothing; one GPU with eight clients holds all four."""
    mps = ShareRequest(mechanism="MPS")
    dem = [demand(f"ns/u{i}", tier, 1, 9, share=mps) for i in range(4)]
    cur = [_at(f"ns/u{i}", 0, "mps", i // 2, "MPS") for i in range(4)]
    return [_mps_node("mps", 2, clients=2)], dem, cur


def test_besteffort_replicas_break_first_where_no_share_is_free_while_they_run() -> None:
    """The node is drained in place: its BestEffort replicas stop, the node is configured anew (eight MPS
    clients per GPU) and they start again on one GPU. One GPU freed, each replica moved once, the moves
    break-before-make and saying so, and a re-plan keeps the result."""
    nodes, dem, cur = _wasteful_mps("BestEffort")
    budget = ConsolidationBudget(max_moves=4, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    assert (c.gpus_used, c.gpus_fresh, c.gpus_freed) == (2, 1, 1)
    assert sorted(m.deployment for m in c.moves) == [f"ns/u{i}" for i in range(4)]
    assert {(m.target.node, m.target.gpu_index, m.make_before_break, m.after_node) for m in c.moves} == {
        ("mps", 0, False, "mps")
    }
    assert all("break-before-make" in m.reason for m in c.moves)
    _check(POLICY, nodes, dem, cur, c, budget)
    replanned = plan_pool(POLICY, nodes, dem, c.placements)
    assert [n.replicas_per_gpu for n in replanned.nodes] == [8]


def test_no_break_first_for_other_tiers_nor_when_the_budget_says_no() -> None:
    """Burstable and Guaranteed replicas never break first; nor BestEffort ones when the budget lets no tier
    break first, or has room for part of the node only (half a drain frees nothing)."""
    for tier in ("Burstable", "Guaranteed"):
        nodes, dem, cur = _wasteful_mps(tier)
        c = consolidate(POLICY, nodes, dem, cur, ConsolidationBudget(max_moves=10, threshold_percent=0))
        assert c.moves == () and c.gpus_freed == 0, tier
    nodes, dem, cur = _wasteful_mps("BestEffort")
    for budget in (
        ConsolidationBudget(max_moves=10, threshold_percent=0, break_before_make_tiers=()),
        ConsolidationBudget(max_moves=3, threshold_percent=0),
        ConsolidationBudget(max_moves=10, threshold_percent=0, busy=frozenset({"ns/u2"})),
    ):
        assert consolidate(POLICY, nodes, dem, cur, budget).moves == (), budget


def test_make_before_break_is_preferred_and_comes_first() -> None:
    """Where an idle node can take the replicas, they move there make-before-break (no break-first move); on a
    node drained in place, a Burstable replica moves elsewhere make-before-break before the BestEffort
    replicas stop."""
    nodes, dem, cur = _wasteful_mps("BestEffort")
    spare = [*nodes, _mps_node("spare", 2, clients=2)]
    c = consolidate(POLICY, spare, dem, cur, ConsolidationBudget(max_moves=4, threshold_percent=0))
    assert c.moves and all(m.make_before_break for m in c.moves)

    # no GPU empties into the one free client slot (the other node's); drained in place, the node's Burstable
    # replica v takes that slot make-before-break first, then the BestEffort replicas break first
    mps = ShareRequest(mechanism="MPS")
    nodes = [_mps_node("mps", 2, clients=2), _mps_node("other", 1, clients=2)]
    dem = [demand(f"ns/{k}", "BestEffort", 1, 9, share=mps) for k in "bcd"]
    dem += [demand(f"ns/{k}", "Burstable", 1, 9, share=mps) for k in "vx"]
    cur = [
        _at("ns/b", 0, "mps", 0, "MPS"),
        _at("ns/c", 0, "mps", 0, "MPS"),
        _at("ns/d", 0, "mps", 1, "MPS"),
        _at("ns/v", 0, "mps", 1, "MPS"),
        _at("ns/x", 0, "other", 0, "MPS"),
    ]
    budget = ConsolidationBudget(max_moves=4, threshold_percent=0)
    c = consolidate(POLICY, nodes, dem, cur, budget)
    _check(POLICY, nodes, dem, cur, c, budget)
    got = [(m.deployment, m.target.node, m.target.gpu_index, m.make_before_break) for m in c.moves]
    assert got[0] == ("ns/v", "other", 0, True), got


# ------------------------------------------------------------------------------------------------ properties


def _churned(
    nodes: list[NodeInventory], pol: PoolPolicy, dem: list[Demand], keep: Sequence[bool]
) -> tuple[tuple[NodeInventory, ...], list[Demand], tuple[CurrentPlacement, ...]]:
    """Plan, then delete the deployments ``keep`` says (a churned pool) and re-plan the operator's way."""
    plan = plan_pool(pol, nodes, dem)
    nodes2 = apply_plan(nodes, plan)
    kept = [d for i, d in enumerate(dem) if keep[i % len(keep)]]
    plan2 = plan_pool(pol, nodes2, kept, plan.placements())
    return apply_plan(nodes2, plan2), kept, plan2.placements()


def _held(
    pol: PoolPolicy,
    nodes: Sequence[NodeInventory],
    dem: Sequence[Demand],
    state: Sequence[CurrentPlacement],
) -> list[str]:
    """What is wrong with a state in which every placement runs: a placement a re-plan could not keep (its share
    is not legal where it is, given the others), and the invariants of the plan that keeps them."""
    ctx = build_context(pol, nodes, dem, state)
    problems = [
        f"{r.dep.key}#{r.ordinal}: {r.evict_msg}" for r in ctx.reps if r.cur is not None and not r.pinned
    ]
    plan = plan_pool(pol, nodes, dem, state)
    return problems + check_plan(plan, pol, nodes, dem, state)


def _during(
    dem: Sequence[Demand], state: Sequence[CurrentPlacement], target: CurrentPlacement
) -> tuple[list[Demand], list[CurrentPlacement]]:
    """The state while a make-before-break move runs: the new replica on its target (as one more replica of the
    deployment) and the old one still on its source."""
    running = [p for p in state if p.deployment == target.deployment]
    ordinal = max((p.ordinal for p in running), default=-1) + 1
    extra = target.model_copy(update={"ordinal": ordinal})
    out = [
        d.model_copy(update={"replicas": max(d.replicas, len(running)) + 1})
        if d.deployment == target.deployment
        else d
        for d in dem
    ]
    return out, [*state, extra]


def _check(pol: PoolPolicy, nodes: Sequence[NodeInventory], dem: list[Demand], cur: Sequence[CurrentPlacement], c: Consolidation, budget: ConsolidationBudget) -> None:  # fmt: skip
    assert len(c.moves) <= budget.max_moves
    deployments = [m.deployment for m in c.moves]
    assert not set(deployments) & budget.busy
    # one move per deployment, except in node drains: there, one per deployment in each batch that starts
    # together (reconcile.moves.startable starts a deployment's second move only once its first is done)
    drains = [m for m in c.moves if m.reason.startswith("empties node")]
    once = [m.deployment for m in c.moves if m not in drains]
    assert len(set(once)) == len(once) and not set(once) & {m.deployment for m in drains}
    if c.gpus_used <= c.gpus_fresh * (1 + budget.threshold_percent / 100):
        assert c.moves == ()
    # a target is a share that exists, or one on a node that holds no replica when the move starts (a drain
    # opens GPUs there with any mode or layout): no node config changes under a running replica
    configured = tuple(nodes)
    state = {(p.deployment, p.ordinal): p for p in cur}
    for i, m in enumerate(c.moves):
        if not m.make_before_break:
            _check_break_first(pol, configured, dem, c.moves, i, state, budget)
            continue
        assert state[(m.deployment, m.ordinal)] == m.source
        if m.after_node is not None:
            # onto a node emptied first to take a new config: none of the replicas it ran is left there
            assert m.target.node == m.after_node
            assert not [p for p in cur if p.node == m.after_node and state[(p.deployment, p.ordinal)] == p], m
        during_dem, during = _during(dem, list(state.values()), m.target)
        assert _held(pol, configured, during_dem, during) == [], m
        state[(m.deployment, m.ordinal)] = m.target
    assert tuple(sorted(state.values(), key=lambda p: (p.deployment, p.ordinal))) == c.placements
    # every move frees capacity in the end: its source GPU holds nothing once all moves are done, or (a move
    # that makes room on MIG) another move takes its instance
    after = _gpus(c.placements)
    taken = {(m.target.node, m.target.gpu_index, m.target.mechanism, m.target.mig_profile) for m in c.moves}
    refilled = {m.after_node for m in c.moves}  # drained first, then planned again for a later drain
    for m in c.moves:
        src = (m.source.node, m.source.gpu_index)
        if m in drains:  # a drained node holds no replica in the end, unless it was emptied to be refilled
            assert m.source.node not in {p.node for p in c.placements} or m.source.node in refilled, m
            continue
        assert src not in after or (*src, m.source.mechanism, m.source.mig_profile) in taken, m
    assert len(after) == c.gpus_used - c.gpus_freed
    assert (c.gpus_freed >= 1) == bool(c.moves)
    # re-planning the result moves nothing
    replanned = plan_pool(pol, configured, dem, c.placements)
    assert check_plan(replanned, pol, configured, dem, c.placements) == []
    assert [e for e in replanned.pool.evictions if e.reason != "PreemptedByHigherTier"] == []
    # cheapest first: the GPUs are emptied in order of their replicas (moves per GPU freed; a move that only
    # makes room for another is not the GPU's own)
    counts: dict[str, int] = {}
    for m in c.moves:
        gpu = m.reason.split()[2]  # "frees GPU node/index (...)"
        if f"{m.source.node}/{m.source.gpu_index}" == gpu:
            counts[gpu] = counts.get(gpu, 0) + 1
    assert list(counts.values()) == sorted(counts.values())
    # deterministic
    assert consolidate(pol, nodes, dem, cur, budget) == c


def _check_break_first(
    pol: PoolPolicy,
    nodes: Sequence[NodeInventory],
    dem: list[Demand],
    moves: Sequence[Move],
    i: int,
    state: dict[tuple[str, int], CurrentPlacement],
    budget: ConsolidationBudget,
) -> None:
    """A break-before-make move (``moves[i]``): only of a tier the budget lets break first, back onto its own
    node drained in place, after every make-before-break move off that node. The moves onto the node start
    together (their old pods are deleted in one pass): the state with all of them stopped is legal and leaves
    the node empty (so it may be configured anew), and the state with all of them started on their targets is
    legal. The first move of the group checks and applies the whole group; the others find it done."""
    m = moves[i]
    assert m.tier == "BestEffort" and m.tier in budget.break_before_make_tiers, m
    assert m.after_node == m.source.node == m.target.node, m
    group = [x for x in moves if not x.make_before_break and x.after_node == m.after_node]
    if m is not group[0]:
        assert state[(m.deployment, m.ordinal)] == m.target  # the group's first move applied it
        return
    assert all(state[(x.deployment, x.ordinal)] == x.source for x in group)
    assert moves[i : i + len(group)] == tuple(group), "the moves back onto a node come together"
    assert len({x.deployment for x in group}) == len(group), "one replica of a deployment at a time"
    stopped = {k: p for k, p in state.items() if k not in {(x.deployment, x.ordinal) for x in group}}
    assert not [p for p in stopped.values() if p.node == m.after_node], "the node is empty before it restarts"
    assert _held(pol, nodes, dem, list(stopped.values())) == []
    for x in group:
        state[(x.deployment, x.ordinal)] = x.target
    assert _held(pol, nodes, dem, list(state.values())) == []


@st.composite
def small_demands(draw: st.DrawFn) -> list[Demand]:
    """Many small deployments (they share GPUs), so that deleting some of them fragments the pool."""
    out = []
    for i in range(draw(st.integers(2, 12))):
        out.append(
            demand(
                f"ns-{i % 2}/d{i}",
                draw(st.sampled_from(("Guaranteed", "Burstable", "BestEffort"))),
                draw(st.integers(1, 4)),
                draw(st.floats(0.5, 24)),
                order_key=str(i),
            )
        )
    return out


BUDGETS = st.builds(
    lambda moves, threshold, busy: ConsolidationBudget(
        max_moves=moves, threshold_percent=threshold, busy=frozenset(f"ns-{i % 2}/d{i}" for i in busy)
    ),
    st.integers(0, 12),
    st.sampled_from((0.0, 0.0, 2.0, 50.0)),
    st.sets(st.integers(0, 11), max_size=3),
)


@SETTINGS
@given(
    pool(max_nodes=4, max_gpus=6),
    policy(),
    demands(max_deps=10, max_replicas=4),
    st.lists(st.booleans(), min_size=2, max_size=6),
    BUDGETS,
)
def test_consolidation_keeps_every_guarantee(
    nodes: list[NodeInventory],
    pol: PoolPolicy,
    dem: list[Demand],
    keep: list[bool],
    budget: ConsolidationBudget,
) -> None:
    """On random churned pools, policies and budgets: within the budget, one move per deployment and none of
    a busy one, every target free while its source is held (each intermediate state is a legal placement),
    every move's source GPU empty in the end, nothing under the threshold, a re-plan of the result moves
    nothing."""
    nodes2, kept, cur = _churned(nodes, pol, dem, keep)
    c = consolidate(pol, nodes2, kept, cur, budget)
    event(f"moves: {min(len(c.moves), 3)}")
    _check(pol, nodes2, kept, cur, c, budget)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pool(max_nodes=4, max_gpus=6),
    st.sampled_from(("Never", "Allowed")),
    small_demands(),
    st.lists(st.booleans(), min_size=2, max_size=6),
    BUDGETS,
)
def test_consolidation_keeps_every_guarantee_on_fragmented_pools(
    nodes: list[NodeInventory],
    repartition: str,
    dem: list[Demand],
    keep: list[bool],
    budget: ConsolidationBudget,
) -> None:
    """The same guarantees where moves are common: many small deployments sharing GPUs, some deleted."""
    pol = POLICY.model_copy(update={"repartition": repartition})
    nodes2, kept, cur = _churned(nodes, pol, dem, keep)
    c = consolidate(pol, nodes2, kept, cur, budget)
    event(f"moves: {min(len(c.moves), 3)}")
    _check(pol, nodes2, kept, cur, c, budget)


@st.composite
def wasteful_nodes(draw: st.DrawFn) -> tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]]:
    """Nodes whose MPS clients per GPU waste GPUs (two clients of 4-9 GiB on H100s), some holding two replicas
    of a deployment, and idle nodes of any config (MPS, time-slicing, MIG layouts, none) for drains to use."""
    nodes: list[NodeInventory] = []
    dem: list[Demand] = []
    cur: list[CurrentPlacement] = []
    mps = ShareRequest(mechanism="MPS")
    for k in range(draw(st.integers(1, 3))):
        name = f"w{k}"
        gpus = draw(st.integers(1, 3))
        nodes.append(_mps_node(name, gpus, clients=2))
        slots = [(name, g) for g in range(gpus) for _ in range(draw(st.integers(1, 2)))]
        while slots:
            i = len(dem)
            gib = draw(st.floats(4, 9))
            two = len(slots) >= 2 and slots[0][1] != slots[1][1] and draw(st.booleans())
            dep = demand(f"ns-{i % 2}/d{i}", draw(st.sampled_from(("Burstable", "BestEffort"))), 1 + two, gib)
            dem.append(dep.model_copy(update={"share": mps}) if draw(st.booleans()) else dep)
            for o in range(1 + two):
                node, g = slots.pop(0)
                cur.append(_at(dep.deployment, o, node, g, "MPS"))
    for k in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(("MPS", "TimeSlicing", "MIG", "None")))
        n = draw(st.integers(1, 2))
        if kind == "MIG":
            nodes.append(_mig_node(f"idle{k}", n, instances=draw(st.integers(1, 7))))
        elif kind == "None":
            nodes.append(
                NodeInventory(
                    name=f"idle{k}", gpus=tuple(GpuInventory(index=i, model="H100-80GB") for i in range(n))
                )
            )
        else:
            gpus = tuple(GpuInventory(index=i, model="H100-80GB") for i in range(n))
            nodes.append(
                NodeInventory(
                    name=f"idle{k}", gpus=gpus, sharing=kind, sharing_replicas=draw(st.integers(2, 8))
                )
            )
    return nodes, dem, cur


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wasteful_nodes(), st.integers(2, 12), st.sampled_from(("Never", "Allowed")))
def test_a_chosen_drain_frees_capacity_in_the_end(
    pool_state: tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]], moves: int, repartition: str
) -> None:
    """Where whole nodes are worth draining: every guarantee of ``_check`` (budget, every intermediate state
    legal, a re-plan of the result moves nothing), and a drain that is chosen empties its node (or refills it
    after emptying it) and the pool uses fewer GPUs afterwards; a budget smaller than a node's replicas drains
    no node."""
    nodes, dem, cur = pool_state
    pol = POLICY.model_copy(update={"repartition": repartition})
    budget = ConsolidationBudget(max_moves=moves, threshold_percent=0)
    c = consolidate(pol, nodes, dem, cur, budget)
    drains = [m for m in c.moves if m.reason.startswith("empties node")]
    event(f"drain moves: {min(len(drains), 4)}")
    event(f"a node emptied and refilled: {any(m.after_node for m in c.moves)}")
    _check(pol, nodes, dem, cur, c, budget)
    if drains:
        assert c.gpus_freed >= 1 and len(_gpus(c.placements)) < c.gpus_used
        for name in {m.source.node for m in drains}:
            held = sum(1 for p in cur if p.node == name)
            assert sum(1 for m in c.moves if m.source.node == name) == held <= moves  # all of them move
            assert name in c.nodes_freed or name in {m.after_node for m in c.moves}


def test_consolidation_on_a_churned_benchmark_pool() -> None:
    """A 100-GPU benchmark pool after a round of churn: every guarantee holds on a realistic pool too."""
    from bench.workloads import agentic_mix, change_demands

    w = agentic_mix(100, seed=3)
    plan = plan_pool(w.policy, w.nodes, w.demands)
    nodes = apply_plan(w.nodes, plan)
    dem = list(change_demands(w.demands, 0.3, seed=7))
    plan2 = plan_pool(w.policy, nodes, dem, plan.placements())
    nodes2, cur = apply_plan(nodes, plan2), plan2.placements()
    budget = ConsolidationBudget(max_moves=20, threshold_percent=0)
    c = consolidate(w.policy, nodes2, dem, cur, budget)
    assert c.moves, "a churned pool has GPUs to free"
    _check(w.policy, nodes2, dem, cur, c, budget)


def test_churn_replay_rows() -> None:
    """The benchmark's churn replay (bench/churn.py) at 100 GPUs, 3 rounds: one row per round and method, the
    consolidation moves within the 2 % budget at the replay's threshold (0: whenever the pool is above a fresh
    plan), and a re-plan after them moves nothing."""
    from bench.churn import run_churn

    rows = run_churn(pool=100, seed=3, rounds=3)
    assert [(r["method"], r["round"]) for r in rows] == [
        ("churn", 0),
        ("churn-consolidated", 0),
        *[(m, k) for k in (1, 2, 3) for m in ("churn", "churn-consolidated")],
    ]
    for r in rows:
        assert {"gpusUsed", "gpusFresh", "replicasMoved"} <= set(r)
        if r["method"] == "churn-consolidated" and r["round"]:
            assert r["consolidationMoves"] <= r["maxMoves"] == int(r["runningReplicas"] * 0.02)
            assert r["thresholdPercent"] == 0
            assert r["replanMovedAfterConsolidation"] == 0
            assert r["gpusUsed"] <= r["gpusBeforeConsolidation"]


@st.composite
def crowded_nodes(draw: st.DrawFn) -> tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]]:
    """MPS nodes with two clients per GPU, most GPUs full, of 4-9 GiB Burstable and (mostly) BestEffort
    replicas, some deployments with two replicas on one node, and no idle node: only a node drained in place
    (its BestEffort replicas breaking first) or a time-sliced GPU with room frees a GPU."""
    nodes: list[NodeInventory] = []
    dem: list[Demand] = []
    cur: list[CurrentPlacement] = []
    mps = ShareRequest(mechanism="MPS")
    for k in range(draw(st.integers(1, 3))):
        name = f"w{k}"
        gpus = draw(st.integers(1, 3))
        nodes.append(_mps_node(name, gpus, clients=2))
        slots = [(name, g) for g in range(gpus) for _ in range(draw(st.sampled_from((1, 2, 2))))]
        while slots:
            i = len(dem)
            two = len(slots) >= 2 and slots[0][1] != slots[1][1] and draw(st.integers(0, 3)) == 0
            tier = draw(st.sampled_from(("Burstable", "BestEffort", "BestEffort", "BestEffort")))
            dep = demand(f"ns-{i % 2}/d{i}", tier, 1 + two, draw(st.floats(4, 9)), share=mps)
            dem.append(dep)
            for o in range(1 + two):
                node, g = slots.pop(0)
                cur.append(_at(dep.deployment, o, node, g, "MPS"))
    if draw(st.booleans()):
        nodes.append(_ts_node("ts", 1))
    return nodes, dem, cur


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crowded_nodes(),
    st.integers(0, 12),
    st.sampled_from((("BestEffort",), ("BestEffort",), ("BestEffort",), ())),
    st.sets(st.integers(0, 11), max_size=2),
)
def test_break_first_only_for_besteffort_within_the_budget_and_freeing_capacity(
    pool_state: tuple[list[NodeInventory], list[Demand], list[CurrentPlacement]],
    moves: int,
    tiers: tuple[str, ...],
    busy: set[int],
) -> None:
    """Every guarantee of ``_check`` (never more moves than the budget, every intermediate state legal: for a
    break-first move the state with its old share freed and its new one not started, a re-plan of the result
    moves nothing, the GPUs freed in the end), and: a break-first move only for a BestEffort replica and only
    where the budget lets BestEffort break first; a set of moves with a break-first move frees a GPU."""
    nodes, dem, cur = pool_state
    budget = ConsolidationBudget(
        max_moves=moves,
        threshold_percent=0,
        break_before_make_tiers=tiers,  # type: ignore[arg-type]
        busy=frozenset(f"ns-{i % 2}/d{i}" for i in busy),
    )
    c = consolidate(POLICY, nodes, dem, cur, budget)
    first = [m for m in c.moves if not m.make_before_break]
    event(f"break-first moves: {min(len(first), 3)}")
    _check(POLICY, nodes, dem, cur, c, budget)
    assert all(m.tier == "BestEffort" for m in first)
    assert not first or (tiers and c.gpus_freed >= 1 and len(_gpus(c.placements)) < c.gpus_used)
