"""The planner: a pure packing engine (no kopf, kubernetes or pynvml imports).

``plan_pool(policy, nodes, demands, current=())`` returns a deterministic :class:`Plan` for one GPU pool. See
docs/planner.md for the algorithm and docs/plan-format.md for every output field.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from slm_operator.planner.assemble import build_plan
from slm_operator.planner.heuristic import run_heuristic
from slm_operator.planner.incremental import IncrementalPlanner
from slm_operator.planner.invariants import check_plan
from slm_operator.planner.model import (
    CurrentPlacement,
    Demand,
    DeploymentPlan,
    Eviction,
    GpuInventory,
    GpuPlan,
    MigInstance,
    NodeInventory,
    NodePlan,
    Plan,
    PoolPlan,
    PoolPolicy,
    ReplicaPlacement,
    Reservation,
    Segment,
    Share,
    ShareRequest,
    UnplacedReplica,
)


def plan_pool(
    policy: PoolPolicy,
    nodes: Sequence[NodeInventory],
    demands: Sequence[Demand],
    current: Iterable[CurrentPlacement] = (),
    *,
    optimize: bool = False,
    time_budget_s: float = 10.0,
) -> Plan:
    """Plan one pool. With ``optimize=True`` the exact CP-SAT solver runs on small instances (within
    ``time_budget_s``) and the heuristic plan is returned when the solver finds nothing better in time or the
    instance is too large."""
    if optimize:
        from slm_operator.planner.exact import optimize_pool

        return optimize_pool(policy, nodes, demands, current, time_budget_s=time_budget_s)
    with gc_paused():
        return build_plan(run_heuristic(policy, nodes, demands, current))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one planning pass.

    A pass allocates ~10^5-10^6 small objects; every few hundred allocations the collector would scan all
    of them again (at 10,000 GPUs that was a third of the planning time). Nothing a pass allocates needs the
    collector while it runs; it is re-enabled (if it was enabled) afterwards and collects later as usual.

    On the way out, ``gc.freeze()`` then ``gc.unfreeze()`` moves every tracked object into the oldest
    generation and zeroes the young generation's count, in constant time. Otherwise the first allocation
    after the pass would scan the ~4x10^5 objects it left in the young generation (0.26 s at 10,000 GPUs),
    although they are either the plan, which lives on, or garbage that reference counting already freed.
    Cyclic garbage among them is found by the next full collection, as for any long-lived object."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def apply_plan(nodes: Sequence[NodeInventory], plan: Plan) -> tuple[NodeInventory, ...]:
    """The inventory after the plan's node configs were applied (MIG layouts, sharing mode, reservation and
    segment assignment). Used by tests and the benchmark to simulate the next planning pass."""
    by_gpu = {(g.node, g.index): g for g in plan.gpus}
    by_node = {n.name: n for n in plan.nodes}
    out: list[NodeInventory] = []
    for node in nodes:
        np = by_node.get(node.name)
        gpus: list[GpuInventory] = []
        for g in node.gpus:
            gp = by_gpu.get((node.name, g.index))
            layout = None
            if np is not None:
                layout = next((x for x in np.mig_layout if x.index == g.index), None)
            if gp is None:
                gpus.append(g)
                continue
            enabled = layout.mig_enabled if layout is not None else False
            inst = (
                tuple(MigInstance(profile=i.profile, start=i.start) for i in gp.mig_instances)
                if enabled
                else ()
            )
            gpus.append(
                g.model_copy(
                    update={
                        "mig_enabled": enabled,
                        "mig_instances": inst,
                        "assigned_to": gp.reservation or gp.segment,
                    }
                )
            )
        sharing = np.sharing if np is not None else node.sharing
        reps = np.replicas_per_gpu if np is not None else node.sharing_replicas
        out.append(
            node.model_copy(update={"gpus": tuple(gpus), "sharing": sharing, "sharing_replicas": reps})
        )
    return tuple(out)


__all__ = [
    "CurrentPlacement",
    "Demand",
    "DeploymentPlan",
    "Eviction",
    "GpuInventory",
    "GpuPlan",
    "IncrementalPlanner",
    "MigInstance",
    "NodeInventory",
    "NodePlan",
    "Plan",
    "PoolPlan",
    "PoolPolicy",
    "ReplicaPlacement",
    "Reservation",
    "Segment",
    "Share",
    "ShareRequest",
    "UnplacedReplica",
    "apply_plan",
    "check_plan",
    "plan_pool",
]
