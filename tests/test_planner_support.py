"""Helpers shared by the planner tests (no tests here)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from slm_operator.planner import (
    CurrentPlacement,
    Demand,
    GpuInventory,
    NodeInventory,
    Plan,
    PoolPolicy,
    apply_plan,
    check_plan,
    plan_pool,
)
from slm_operator.planner.model import GiB


def node(name: str, model: str, n: int, **kw: object) -> NodeInventory:
    return NodeInventory(name=name, gpus=tuple(GpuInventory(index=i, model=model) for i in range(n)), **kw)  # type: ignore[arg-type]


def demand(key: str, tier: str, replicas: int, gib: float, **kw: object) -> Demand:
    return Demand(
        deployment=key,
        tier=tier,  # type: ignore[arg-type]
        replicas=replicas,
        memory_bytes=int(gib * GiB),
        order_key=kw.pop("order_key", key),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def legal(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Sequence[CurrentPlacement] = (),
) -> Plan:
    """plan_pool + the invariant checker."""
    plan = plan_pool(policy, nodes, demands, current)
    violations = check_plan(plan, policy, nodes, demands, current)
    assert not violations, "\n".join(violations)
    return plan


def replan(
    policy: PoolPolicy, nodes: Sequence[NodeInventory], plan: Plan, demands: Sequence[Demand]
) -> tuple[tuple[NodeInventory, ...], tuple[CurrentPlacement, ...], Plan]:
    """Apply ``plan`` to the inventory, then plan again with its placements as the current state."""
    nodes2 = apply_plan(nodes, plan)
    cur = plan.placements()
    return nodes2, cur, legal(policy, nodes2, demands, cur)


def where(plan: Plan) -> dict[tuple[str, int], tuple[str, int, str, str | None]]:
    """(deployment, ordinal) -> (node, gpu, mechanism, profile)."""
    return {
        (r.deployment, r.ordinal): (g.node, g.index, r.share.mechanism, r.share.mig_profile)
        for g in plan.gpus
        for r in g.replicas
    }


def as_json(plan: Plan) -> str:
    return json.dumps(plan.model_dump(mode="json", by_alias=True), sort_keys=True)
