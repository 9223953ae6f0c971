"""Two GPUPools whose node selectors overlap (issue: faults and scale, 7): a node belongs to one pool, both say
so in a condition, and no GPU is planned twice."""

from __future__ import annotations

import copy

from slm_operator.api.base import LabelSelector
from slm_operator.api.v1alpha1 import GPUPool
from slm_operator.inventory import node_owner, overlapping_nodes, pool_nodes
from slm_operator.reconcile import decide
from slm_operator.reconcile.world import World
from test_reconcile import _world

H100 = "NVIDIA-H100-80GB-HBM3"


def _pool(w: World, name: str, created: str, selector: dict[str, str]) -> GPUPool:
    pool = copy.deepcopy(w.pool)
    pool.metadata.name = name
    pool.metadata.creation_timestamp = created
    pool.spec.node_selector = LabelSelector(match_labels=selector)
    return pool


def _two_pools() -> tuple[World, World]:
    """`h100` (selects both H100 nodes, created first) and `late` (selects gpu-h100-1 by hostname, later)."""
    w = _world()
    w.pool.metadata.creation_timestamp = "2026-11-26T08:00:00Z"
    late = _pool(w, "late", "2026-11-26T09:00:00Z", {"kubernetes.io/hostname": "gpu-h100-1"})
    for n in w.nodes:
        n["metadata"]["labels"]["kubernetes.io/hostname"] = n["metadata"]["name"]
    w.pools = [late, w.pool]  # the list order the API server returns must not matter
    w2 = copy.deepcopy(w)
    w2.pool = late
    w2.deployments = []
    return w, w2


def _condition(d, type_: str):  # type: ignore[no-untyped-def]
    return next(c for c in d.pool_status.conditions if c.type == type_)


def test_the_older_pool_owns_a_node_both_select_whatever_the_list_order() -> None:
    w, late = _two_pools()
    node = next(n for n in w.nodes if n["metadata"]["name"] == "gpu-h100-1")
    assert node_owner(node, w.pools) == "h100" == node_owner(node, list(reversed(w.pools)))
    assert [n["metadata"]["name"] for n in pool_nodes(w.pool, w.nodes, w.pools)] == [
        "gpu-h100-0",
        "gpu-h100-1",
    ]
    assert pool_nodes(late.pool, late.nodes, late.pools) == []
    assert overlapping_nodes(late.pool, late.nodes, late.pools) == {"gpu-h100-1": ("h100",)}
    # the older pool being deleted gives the node up to the other one at once
    w.pool.metadata.deletion_timestamp = "2026-11-26T10:00:00Z"
    assert node_owner(node, w.pools) == "late"


def test_overlapping_pools_both_say_so_and_only_the_owner_plans_the_node() -> None:
    w, late = _two_pools()
    d_owner, d_late = decide(w), decide(late)
    overlap = _condition(d_owner, "NodeSelectorOverlap")
    assert overlap.status.value == "True" and overlap.reason == "OverlappingNodeSelector"
    assert (
        "GPUPool 'late' also selects nodes of this pool; this pool (the older) plans gpu-h100-1"
        in overlap.message
    )
    assert _condition(d_owner, "Degraded").reason != "NodesInAnotherPool"
    assert d_owner.plan is not None and {g.node for g in d_owner.plan.gpus if g.replicas} <= {
        "gpu-h100-0",
        "gpu-h100-1",
    }

    late_overlap = _condition(d_late, "NodeSelectorOverlap")
    assert late_overlap.status.value == "True"
    assert "this pool does not use gpu-h100-1: an older pool plans them" in late_overlap.message
    assert "make the pools' spec.nodeSelector disjoint" in late_overlap.message
    for type_ in ("Degraded", "Ready"):
        c = _condition(d_late, type_)
        assert c.reason == "NodesInAnotherPool", (type_, c)
    assert (_condition(d_late, "Degraded").status.value, _condition(d_late, "Ready").status.value) == (
        "True",
        "False",
    )
    # the younger pool neither plans nor relabels the node the older one configures
    assert d_late.plan is not None and d_late.plan.pool.gpus_total == 0
    assert not d_late.node_labels and not d_late.node_annotations


def test_the_condition_clears_once_the_selectors_are_disjoint() -> None:
    w, late = _two_pools()
    d = decide(late)
    late.pool = late.pool.model_copy(update={"status": d.pool_status})
    late.pool.spec.node_selector = LabelSelector(match_labels={"kubernetes.io/hostname": "no-such-node"})
    late.pools = [late.pool, w.pool]
    d2 = decide(late)
    overlap = _condition(d2, "NodeSelectorOverlap")
    assert (overlap.status.value, overlap.reason) == ("False", "NoOverlap")
    assert _condition(d2, "Ready").reason == "NoNodes"
    # a pool that never overlapped gets no such condition at all
    alone = _world()
    assert all(c.type != "NodeSelectorOverlap" for c in decide(alone).pool_status.conditions)  # type: ignore[union-attr]
