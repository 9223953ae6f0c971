"""Tenant quotas in the planner (docs/tenants.md): GPU-equivalents of shares, borrowing up to the ceiling,
reclaim of borrowed replicas when another tenant claims its guarantee, weighted sharing of idle capacity, and
a pool without tenants planning exactly as before. Property tests on random pools and demands."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slm_operator.planner import Demand, NodeInventory, Plan, PoolPolicy, ShareRequest, check_plan, plan_pool
from slm_operator.planner.invariants import tenant_held
from slm_operator.planner.model import TenantPolicy, TenantUsage
from test_planner_properties import demands, policy, pool
from test_planner_support import as_json, demand, legal, node, replan, where

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
H100 = "H100-80GB"


def usage(plan: Plan, name: str) -> TenantUsage:
    return next(t for t in plan.tenants if t.name == name)


def two_tenants(a: TenantPolicy, b: TenantPolicy) -> PoolPolicy:
    return PoolPolicy(name="p", tenants=(a, b))


# ------------------------------------------------------------------------------------------------ accounting


@pytest.mark.parametrize(
    ("share", "gib", "expected"),
    [
        (ShareRequest(mechanism="MIG", mig_profile="3g.40gb"), 30, 0.5),  # memory 4/8 and compute 3/7
        (ShareRequest(mechanism="MIG", mig_profile="1g.10gb"), 5, 1 / 7),  # compute 1/7 > memory 1/8
        (ShareRequest(mechanism="MIG", mig_profile="4g.40gb"), 30, 4 / 7),  # compute 4/7 > memory 4/8
        (ShareRequest(mechanism="Exclusive"), 30, 1.0),
    ],
)
def test_a_share_counts_the_larger_of_its_memory_and_compute_fractions(
    share: ShareRequest, gib: float, expected: float
) -> None:
    pol = PoolPolicy(name="p", tenants=(TenantPolicy(name="a", guaranteed=1),))
    plan = legal(pol, [node("n0", H100, 1)], [demand("a/x", "Guaranteed", 1, gib, share=share, tenant="a")])
    assert usage(plan, "a").used_guaranteed == pytest.approx(expected, abs=1e-4)


def test_an_mps_client_counts_one_over_the_clients_per_gpu() -> None:
    pol = PoolPolicy(name="p", allowed_mechanisms=("MPS",), tenants=(TenantPolicy(name="a", guaranteed=4),))
    nodes = [node("n0", H100, 1, sharing="MPS", sharing_replicas=4)]
    plan = legal(pol, nodes, [demand("a/x", "Burstable", 4, 15, tenant="a")])
    a = usage(plan, "a")
    clients = {r.share.replicas_per_gpu for g in plan.gpus for r in g.replicas}
    assert a.replicas_guaranteed == 4 and len(clients) == 1
    (n,) = clients
    assert n is not None and a.used_guaranteed == pytest.approx(4 / n, abs=1e-3)


# ------------------------------------------------------------------------------------------------ scenarios


def test_borrowed_replicas_yield_to_another_tenants_guarantee_lowest_priority_first() -> None:
    pol = two_tenants(TenantPolicy(name="a", guaranteed=2, ceiling=8), TenantPolicy(name="b", guaranteed=4))
    nodes = [node("n0", H100, 4), node("n1", H100, 4)]
    a_only = [demand("a/big", "Guaranteed", 8, 60, tenant="a")]
    plan1 = legal(pol, nodes, a_only)
    assert usage(plan1, "a").used_borrowed == pytest.approx(6)  # A fills the pool by borrowing
    assert usage(plan1, "a").borrowed == {"a/big": (2, 3, 4, 5, 6, 7)}
    # B's Burstable deployment within its quota arrives: A's Guaranteed-tier borrowed replicas yield
    both = [*a_only, demand("b/x", "Burstable", 4, 60, tenant="b")]
    _, _, plan2 = replan(pol, nodes, plan1, both)
    assert usage(plan2, "b").used_guaranteed == pytest.approx(4)
    yielded = {(e.deployment, e.ordinal): e for e in plan2.pool.evictions}
    assert set(yielded) == {("a/big", o) for o in (4, 5, 6, 7)}
    assert {e.reason for e in yielded.values()} == {"ReclaimedByTenant"}
    assert all("tenant b" in e.message for e in yielded.values())
    # A's replicas within its own quota never move
    assert where(plan2)[("a/big", 0)] == where(plan1)[("a/big", 0)]
    assert where(plan2)[("a/big", 1)] == where(plan1)[("a/big", 1)]
    unplaced = plan2.deployment("a/big")
    assert unplaced is not None and {u.reason for u in unplaced.unplaced} == {"ReclaimedByTenant"}
    # and the next pass is stable: A's waiting replicas do not take B's guarantee back
    _, _, plan3 = replan(pol, nodes, plan2, both)
    assert plan3.pool.evictions == () and where(plan3) == where(plan2)


def test_no_tenant_holds_more_than_its_ceiling() -> None:
    pol = two_tenants(TenantPolicy(name="a", guaranteed=1, ceiling=3), TenantPolicy(name="b", guaranteed=1))
    plan = legal(pol, [node("n0", H100, 8)], [demand("a/x", "Guaranteed", 6, 60, tenant="a")])
    a = usage(plan, "a")
    assert a.used_guaranteed + a.used_borrowed == pytest.approx(3)
    dp = plan.deployment("a/x")
    assert dp is not None and {u.reason for u in dp.unplaced} == {"TenantQuota"}
    assert "ceiling" in dp.unplaced[0].message


def test_a_lowered_ceiling_makes_the_lowest_priority_replicas_yield() -> None:
    nodes = [node("n0", H100, 4)]
    dem = [demand("a/x", "Guaranteed", 4, 60, tenant="a")]
    before = PoolPolicy(name="p", tenants=(TenantPolicy(name="a", guaranteed=4),))
    plan1 = legal(before, nodes, dem)
    after = PoolPolicy(name="p", tenants=(TenantPolicy(name="a", guaranteed=2, ceiling=2),))
    _, _, plan2 = replan(after, nodes, plan1, dem)
    assert {(e.ordinal, e.reason) for e in plan2.pool.evictions} == {(2, "TenantQuota"), (3, "TenantQuota")}


def test_idle_capacity_is_handed_out_by_weight() -> None:
    pol = two_tenants(
        TenantPolicy(name="a", guaranteed=0, weight=3), TenantPolicy(name="b", guaranteed=0, weight=1)
    )
    dem = [demand("a/x", "Burstable", 8, 60, tenant="a"), demand("b/x", "Burstable", 8, 60, tenant="b")]
    plan = legal(pol, [node("n0", H100, 8)], dem)
    assert (usage(plan, "a").replicas_borrowed, usage(plan, "b").replicas_borrowed) == (6, 2)


def test_deployments_of_no_known_tenant_only_borrow() -> None:
    pol = PoolPolicy(name="p", tenants=(TenantPolicy(name="a", guaranteed=2),))
    nodes = [node("n0", H100, 2)]
    plan1 = legal(pol, nodes, [demand("x/y", "Guaranteed", 2, 60)])
    assert usage(plan1, "(none)").replicas_borrowed == 2
    both = [demand("x/y", "Guaranteed", 2, 60), demand("a/z", "BestEffort", 2, 60, tenant="a")]
    _, _, plan2 = replan(pol, nodes, plan1, both)
    assert usage(plan2, "a").replicas_guaranteed == 2  # even a BestEffort deployment claims its guarantee
    assert {e.reason for e in plan2.pool.evictions} == {"ReclaimedByTenant"}


def test_tenant_policy_refuses_a_ceiling_below_the_guarantee_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="ceiling"):
        TenantPolicy(name="a", guaranteed=2, ceiling=1)
    with pytest.raises(ValueError, match="tenant names"):
        two_tenants(TenantPolicy(name="a"), TenantPolicy(name="a"))


# ------------------------------------------------------------------------------------------------ no tenants


@SETTINGS
@given(pool(), policy(), demands(max_deps=8))
def test_a_pool_without_tenants_plans_exactly_as_before(
    nodes: list[NodeInventory], pol: PoolPolicy, dem: list[Demand]
) -> None:
    """Tenant names on demands change nothing in a pool without tenants, and the plan lists no tenants."""
    named = [d.model_copy(update={"tenant": f"t{i % 2}"}) for i, d in enumerate(dem)]
    plan = plan_pool(pol, nodes, dem)
    assert plan.tenants == ()
    assert as_json(plan_pool(pol, nodes, named)) == as_json(plan)


# ------------------------------------------------------------------------------------------------ properties


@st.composite
def tenant_demands(draw: st.DrawFn, tenant: str, tiers: tuple[str, ...]) -> list[Demand]:
    return [
        d.model_copy(
            update={
                "deployment": f"{tenant}/{d.deployment.split('/')[1]}",
                "tenant": tenant,
                "tier": draw(st.sampled_from(tiers)),
            }
        )
        for d in draw(demands(max_deps=4))
    ]


@st.composite
def tenant_policy(draw: st.DrawFn, name: str, max_guaranteed: float = 6) -> TenantPolicy:
    g = draw(st.floats(0, max_guaranteed))
    ceiling = draw(st.one_of(st.none(), st.floats(g, g + 6)))
    return TenantPolicy(name=name, guaranteed=g, ceiling=ceiling, weight=draw(st.integers(1, 4)))


@SETTINGS
@given(pool(), policy(), tenant_policy("a"), tenant_policy("b"), st.data())
def test_no_tenant_exceeds_its_ceiling_and_every_rule_holds(
    nodes: list[NodeInventory], pol: PoolPolicy, a: TenantPolicy, b: TenantPolicy, data: st.DataObject
) -> None:
    pol = pol.model_copy(update={"tenants": (a, b)})
    dem = data.draw(tenant_demands("a", ("Guaranteed", "Burstable", "BestEffort")))
    dem += data.draw(tenant_demands("b", ("Guaranteed", "Burstable", "BestEffort")))
    plan = plan_pool(pol, nodes, dem)
    assert check_plan(plan, pol, nodes, dem) == []  # ceilings included
    held = tenant_held(plan, pol, {d.deployment: d for d in dem})
    for t in (a, b):
        assert t.ceiling is None or held.get(t.name, 0.0) <= t.ceiling + 1e-6
        u = usage(plan, t.name)
        assert u.used_guaranteed <= t.guaranteed + 1e-6
    _, _, again = replan(pol, nodes, plan, dem)  # replan checks every rule again
    borrowed = {(k, o) for t in plan.tenants for k, ords in t.borrowed.items() for o in ords}
    # planning the same state again never moves a replica within its tenant's quota
    assert [e for e in again.pool.evictions if (e.deployment, e.ordinal) not in borrowed] == []


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(pool(), policy(), st.integers(1, 4), st.data())
def test_a_tenant_within_its_quota_is_never_displaced_by_another_tenants_borrowing(
    nodes: list[NodeInventory], pol: PoolPolicy, weight: int, data: st.DataObject
) -> None:
    """B runs within its quota; A (no guarantee: everything it places borrows) arrives with any tiers."""
    b = TenantPolicy(name="b", guaranteed=10_000, weight=weight)  # everything B runs is within its quota
    pol = pol.model_copy(update={"tenants": (TenantPolicy(name="a"), b)})
    b_dem = data.draw(tenant_demands("b", ("Burstable", "BestEffort")))
    plan1 = plan_pool(pol, nodes, b_dem)
    assume(usage(plan1, "b").replicas_borrowed == 0 and usage(plan1, "b").replicas_guaranteed > 0)
    dem = b_dem + data.draw(tenant_demands("a", ("Guaranteed", "Burstable", "BestEffort")))
    _, _, plan2 = replan(pol, nodes, plan1, dem)
    assert [e for e in plan2.pool.evictions if e.deployment.startswith("b/")] == []
    before, after = where(plan1), where(plan2)
    assert {k: v for k, v in after.items() if k[0].startswith("b/")} == before


@SETTINGS
@given(pool(), policy(), tenant_policy("a"), tenant_policy("b"), st.data())
def test_yielding_is_borrowed_first(
    nodes: list[NodeInventory], pol: PoolPolicy, a: TenantPolicy, b: TenantPolicy, data: st.DataObject
) -> None:
    """A runs (borrowing or not); B arrives at tiers no higher than A's: only A's borrowed replicas yield, and
    A's replicas within its quota stay where they are."""
    pol = pol.model_copy(update={"tenants": (a, b)})
    a_dem = data.draw(tenant_demands("a", ("Guaranteed",)))
    plan1 = plan_pool(pol, nodes, a_dem)
    borrowed = {(k, o) for k, ords in usage(plan1, "a").borrowed.items() for o in ords}
    dem = a_dem + data.draw(tenant_demands("b", ("Guaranteed", "Burstable", "BestEffort")))
    _, _, plan2 = replan(pol, nodes, plan1, dem)
    for e in plan2.pool.evictions:
        if e.deployment.startswith("a/"):
            assert (e.deployment, e.ordinal) in borrowed, e
    before, after = where(plan1), where(plan2)
    for k, v in before.items():
        if k not in borrowed:
            assert after.get(k) == v
