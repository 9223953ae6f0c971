"""Shares that make scaling cheap (issue 14 item 3; docs/autoscaling.md "Which share a new replica gets"):
a scale-up takes a configured free share before one that needs a new MIG layout or sharing mode, a share
released by a scale-down stays warm for its deployment, and a scale-down removes the replica whose removal
frees the most."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slm_operator.planner import (
    CurrentPlacement,
    GpuInventory,
    MigInstance,
    NodeInventory,
    Plan,
    PoolPolicy,
    WarmShare,
    apply_plan,
)
from slm_operator.planner.mig import geometry
from slm_operator.planner.model import GiB, MiB
from test_planner_support import demand, legal, node, replan, where

POLICY = PoolPolicy(name="pool")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mig_gpu(index: int, profile: str, count: int, model: str = "H100-80GB") -> GpuInventory:
    return GpuInventory(
        index=index,
        model=model,
        mig_enabled=True,
        mig_instances=tuple(MigInstance(profile=profile) for _ in range(count)),
    )


def _unchanged(plan: Plan) -> None:
    """No node gets a new MIG config or sharing mode, and no GPU is reconfigured."""
    assert not [n.name for n in plan.nodes if n.mig_changed or n.sharing_changed]
    assert not [(g.node, g.index) for g in plan.gpus if g.reconfigure]


def _cur(dep: str, ordinal: int, where_: str, gpu: int, mech: str = "MIG", prof: str | None = "1g.10gb"):  # type: ignore[no-untyped-def]
    return CurrentPlacement(
        deployment=dep, ordinal=ordinal, node=where_, gpu_index=gpu, mechanism=mech, mig_profile=prof
    )


# ------------------------------------------------------------------------------------ (a) configured first


def test_scale_up_takes_an_idle_configured_mig_gpu_before_a_fresh_one() -> None:
    """Replica 1 lands on the idle GPU that already has 1g.10gb instances, not on an unconfigured GPU of the
    other node (which node spread would otherwise prefer): no node's MIG config changes."""
    nodes = [
        NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7), _mig_gpu(1, "1g.10gb", 7))),
        node("b", "H100-80GB", 2),
    ]
    cur = [_cur("t/s", 0, "a", 0)]
    plan = legal(POLICY, nodes, [demand("t/s", "Burstable", 2, 5)], cur)
    assert where(plan)[("t/s", 1)] == ("a", 1, "MIG", "1g.10gb")
    _unchanged(plan)


def test_scale_up_takes_an_idle_gpu_of_a_node_already_in_mps_mode() -> None:
    """Node b is in MPS mode with nothing on it; node a is unconfigured and comes first: replica 1 goes to b,
    so no node switches its sharing mode."""
    nodes = [
        node("a", "L4", 2),
        node("b", "L4", 2, sharing="MPS", sharing_replicas=4),
        node("c", "L4", 1, sharing="MPS", sharing_replicas=4),
    ]
    cur = [_cur("t/s", 0, "c", 0, "MPS", None)]
    plan = legal(POLICY, nodes, [demand("t/s", "Burstable", 2, 5)], cur)
    assert where(plan)[("t/s", 1)][::2] == ("b", "MPS")
    _unchanged(plan)


def test_a_configured_layout_too_coarse_for_the_replica_is_not_used() -> None:
    """A 7g.80gb instance would hold a 5 GiB replica, but wastes a whole GPU: a new layout is better."""
    nodes = [
        NodeInventory(name="a", gpus=(_mig_gpu(0, "7g.80gb", 1), GpuInventory(index=1, model="H100-80GB")))
    ]
    plan = legal(POLICY, nodes, [demand("t/s", "Guaranteed", 1, 5)])
    assert where(plan)[("t/s", 0)][2:] == ("MIG", "1g.10gb")


@st.composite
def _scaled(draw: st.DrawFn) -> tuple[list[NodeInventory], list, int]:  # type: ignore[type-arg]
    model = draw(st.sampled_from(("H100-80GB", "A100-40GB", "A100-80GB", "H200-141GB")))
    nodes = [node(f"n{i}", model, draw(st.integers(1, 4))) for i in range(draw(st.integers(1, 3)))]
    gpus = sum(len(n.gpus) for n in nodes)
    deps = [
        demand(f"t/d{i}", draw(st.sampled_from(("Guaranteed", "Burstable"))), draw(st.integers(1, 4)), gib)
        for i, gib in enumerate(draw(st.lists(st.sampled_from((3, 5, 9, 15, 30)), min_size=1, max_size=3)))
    ]
    return nodes, deps, draw(st.integers(0, gpus))


@SETTINGS
@given(_scaled())
def test_a_scale_down_then_up_by_one_reconfigures_nothing(case) -> None:  # type: ignore[no-untyped-def]
    """Plan, apply, scale the first deployment down by one, apply, scale it up again: the replica lands on a
    configured share (the one just released, or another), and no node's MIG config or sharing changes."""
    nodes, deps, _ = case
    plan1 = legal(POLICY, nodes, deps)
    assume(all(not d.unplaced for d in plan1.deployments))  # no replica waits for the released share
    first = plan1.deployment(deps[0].deployment)
    assert first is not None
    assume(first.placed >= 2)  # a scale-up keeps a running replica (from zero: warm shares, tested below)
    spots = [(n, g) for (d, _), (n, g, _, _) in where(plan1).items() if d == deps[0].deployment]
    assume(len(set(spots)) == len(spots))  # one replica per GPU, as spread wants it when GPUs are free
    down = [deps[0].model_copy(update={"replicas": deps[0].replicas - 1}), *deps[1:]]
    nodes2, _, plan2 = replan(POLICY, nodes, plan1, down)
    _unchanged(plan2)
    _, _, plan3 = replan(POLICY, nodes2, plan2, deps)
    _unchanged(plan3)
    placed = plan3.deployment(deps[0].deployment)
    assert placed is not None and placed.placed == deps[0].replicas


# ------------------------------------------------------------------------------------------------- (b) warm


def _released() -> tuple[list[NodeInventory], list[CurrentPlacement]]:
    """Node a: GPU 0 configured 7 x 1g.10gb and idle (t/s scaled from 1 to 0), GPU 1 unconfigured."""
    return [
        NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7), GpuInventory(index=1, model="H100-80GB")))
    ], []


def test_a_warm_gpu_is_not_reconfigured_for_another_deployment_while_another_gpu_is_free() -> None:
    nodes, cur = _released()
    warm = (WarmShare(node="a", gpu_index=0, mechanism="MIG", mig_profile="1g.10gb"),)
    s0 = demand("t/s", "Burstable", 0, 5, warm=warm)
    other = demand("t/o", "Guaranteed", 1, 30)  # 3g.40gb: a new layout somewhere
    plan = legal(POLICY, nodes, [s0, other], cur)
    assert where(plan)[("t/o", 0)][:2] == ("a", 1)
    gpu0 = plan.gpu("a", 0)
    assert gpu0 is not None and not gpu0.reconfigure
    # without the warm share the lowest free GPU is taken and reconfigured
    cold = legal(POLICY, nodes, [demand("t/s", "Burstable", 0, 5), other], cur)
    assert where(cold)[("t/o", 0)][:2] == ("a", 0)
    # the deployment scales up again: its replica lands on the warm GPU as configured
    nodes2 = apply_plan(nodes, plan)
    again = legal(POLICY, nodes2, [demand("t/s", "Burstable", 1, 5, warm=warm), other], plan.placements())
    assert where(again)[("t/s", 0)] == ("a", 0, "MIG", "1g.10gb")
    _unchanged(again)


def test_a_warm_gpu_goes_to_another_deployment_when_nothing_else_fits() -> None:
    nodes = [NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7),))]
    warm = (WarmShare(node="a", gpu_index=0, mechanism="MIG", mig_profile="1g.10gb"),)
    plan = legal(
        POLICY, nodes, [demand("t/s", "Burstable", 0, 5, warm=warm), demand("t/o", "Guaranteed", 1, 30)]
    )
    assert where(plan)[("t/o", 0)] == ("a", 0, "MIG", "3g.40gb")


def test_a_warm_gpu_is_preferred_by_its_deployment_over_other_configured_gpus() -> None:
    nodes = [NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7), _mig_gpu(1, "1g.10gb", 7)))]
    warm = (WarmShare(node="a", gpu_index=1, mechanism="MIG", mig_profile="1g.10gb"),)
    plan = legal(POLICY, nodes, [demand("t/s", "Burstable", 1, 5, warm=warm)])
    assert where(plan)[("t/s", 0)] == ("a", 1, "MIG", "1g.10gb")


def test_warm_shares_are_an_order_free_input() -> None:
    a = WarmShare(node="a", gpu_index=0, mechanism="MIG", mig_profile="1g.10gb")
    b = WarmShare(node="b", gpu_index=1, mechanism="MPS")
    assert demand("t/s", "Burstable", 1, 5, warm=(b, a, a)) == demand("t/s", "Burstable", 1, 5, warm=(a, b))


# ------------------------------------------------------------------------------------- (c) which replica goes


def test_scale_down_removes_the_replica_that_frees_a_whole_gpu() -> None:
    """Replica 0 is alone on GPU 0, replica 1 shares GPU 1 with another deployment: replica 0 goes (not the
    newest), GPU 0 is wholly free and keeps its layout, and replica 1 keeps its number and place."""
    nodes = [NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7), _mig_gpu(1, "1g.10gb", 7)))]
    cur = [_cur("t/s", 0, "a", 0), _cur("t/s", 1, "a", 1), _cur("t/o", 0, "a", 1)]
    deps = [demand("t/s", "Burstable", 1, 5), demand("t/o", "Burstable", 1, 5)]
    plan = legal(POLICY, nodes, deps, cur)
    assert where(plan) == {("t/s", 1): ("a", 1, "MIG", "1g.10gb"), ("t/o", 0): ("a", 1, "MIG", "1g.10gb")}
    assert not plan.pool.evictions
    gpu0 = plan.gpu("a", 0)
    assert gpu0 is not None and gpu0.mode == "Free" and not gpu0.reconfigure
    # scaling up again takes the lowest free number
    nodes2 = apply_plan(nodes, plan)
    up = legal(POLICY, nodes2, [demand("t/s", "Burstable", 2, 5), deps[1]], plan.placements())
    assert {o for (d, o) in where(up) if d == "t/s"} == {0, 1}


def test_scale_down_frees_a_node_before_a_gpu_of_a_busy_node() -> None:
    """Both replicas are alone on their GPU; replica 0's node holds nothing else, so its node may change
    sharing mode or be drained afterwards: replica 0 goes."""
    nodes = [
        NodeInventory(name="a", gpus=(_mig_gpu(0, "1g.10gb", 7),)),
        NodeInventory(name="b", gpus=(_mig_gpu(0, "1g.10gb", 7), _mig_gpu(1, "1g.10gb", 7))),
    ]
    cur = [_cur("t/s", 0, "a", 0), _cur("t/s", 1, "b", 0), _cur("t/o", 0, "b", 1)]
    deps = [demand("t/s", "Burstable", 1, 5), demand("t/o", "Burstable", 1, 5)]
    plan = legal(POLICY, nodes, deps, cur)
    assert {o for (d, o) in where(plan) if d == "t/s"} == {1}


def test_equal_replicas_remove_the_newest() -> None:
    nodes = [node("a", "H100-80GB", 3)]
    plan1 = legal(POLICY, nodes, [demand("t/s", "Burstable", 3, 5)])
    _, _, plan2 = replan(POLICY, nodes, plan1, [demand("t/s", "Burstable", 2, 5)])
    assert {o for (d, o) in where(plan2)} == {0, 1}


def _free_fraction(plan: Plan, dep: str, ordinal: int) -> float:
    """Free share of the replica's GPU memory once it is gone (memory held by the other shares there)."""
    for g in plan.gpus:
        for r in g.replicas:
            if (r.deployment, r.ordinal) == (dep, ordinal):
                held = sum(
                    o.memory_bytes if o.share.mechanism == "TimeSlicing" else o.share.memory_bytes
                    for o in g.replicas
                    if o is not r
                )
                return max(0.0, (g.memory_bytes - held) / g.memory_bytes)
    raise AssertionError(f"{dep}#{ordinal} not placed")


@st.composite
def _busy_pool(draw: st.DrawFn) -> tuple[list[NodeInventory], list]:  # type: ignore[type-arg]
    model = draw(st.sampled_from(("H100-80GB", "A100-40GB", "L4", "A30")))
    sharing = draw(st.sampled_from(("None", "None", "MPS", "TimeSlicing")))
    reps = draw(st.integers(2, 8)) if sharing != "None" else None
    nodes = [
        node(f"n{i}", model, draw(st.integers(1, 3)), sharing=sharing, sharing_replicas=reps)
        for i in range(draw(st.integers(1, 3)))
    ]
    deps = [
        demand(f"t/d{i}", draw(st.sampled_from(("Guaranteed", "Burstable", "BestEffort"))), n, gib)
        for i, (n, gib) in enumerate(
            draw(
                st.lists(st.tuples(st.integers(1, 6), st.sampled_from((2, 4, 5, 9))), min_size=1, max_size=4)
            )
        )
    ]
    return nodes, deps


@SETTINGS
@given(_busy_pool())
def test_the_removed_replica_leaves_its_gpu_at_least_as_free_as_any_other_choice(case) -> None:  # type: ignore[no-untyped-def]
    nodes, deps = case
    plan1 = legal(POLICY, nodes, deps)
    nodes2 = apply_plan(nodes, plan1)
    plan1 = legal(POLICY, nodes2, deps, plan1.placements())  # the applied state, as the operator sees it
    target = deps[0].deployment
    mine = sorted(o for (d, o) in where(plan1) if d == target)
    assume(len(mine) >= 2)
    down = [deps[0].model_copy(update={"replicas": len(mine) - 1}), *deps[1:]]
    _, _, plan2 = replan(POLICY, nodes2, plan1, down)
    kept = {o for (d, o) in where(plan2) if d == target} | {
        u.ordinal for dp in plan2.deployments if dp.deployment == target for u in dp.unplaced
    }
    removed = set(mine) - kept
    assert len(removed) == 1
    (gone,) = removed
    best = _free_fraction(plan1, target, gone)
    assert all(best >= _free_fraction(plan1, target, o) - 1.0 / MiB for o in mine)
    assert kept <= set(mine)  # no renumbering: the survivors keep their numbers


def test_a_removed_replica_on_a_gpu_no_longer_in_the_pool_goes_first() -> None:
    nodes = [node("a", "H100-80GB", 2)]
    cur = [_cur("t/s", 0, "a", 0, "Exclusive", None), _cur("t/s", 1, "gone", 0, "Exclusive", None)]
    plan = legal(POLICY, nodes, [demand("t/s", "Guaranteed", 1, 60)], cur)
    assert {o for (d, o) in where(plan)} == {0}


def test_mig_geometry_names_used_here_exist() -> None:
    geo = geometry("H100-80GB")
    assert geo is not None and {"1g.10gb", "3g.40gb", "7g.80gb"} <= set(geo.index)
    assert GiB > MiB
