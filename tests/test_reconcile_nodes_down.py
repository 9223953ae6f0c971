"""A pool node goes NotReady, then is lost or deleted (issue: faults and scale, 3): nothing new goes there, its
replicas wait for it for ``node_lost_seconds``, then are planned on other nodes, and ``Degraded`` says why
while a replica has no ready pod."""

from __future__ import annotations

import copy
from typing import Any

from slm_operator.reconcile import Decisions, decide
from slm_operator.reconcile.world import World
from test_reconcile import NOW, _apply_node_configs, _converge, _running
from test_reconcile_shares import _later

DOWN = "gpu-h100-1"


def _not_ready(w: World, since: str = NOW) -> World:
    w2 = copy.deepcopy(w)
    node = next(n for n in w2.nodes if n["metadata"]["name"] == DOWN)
    node.setdefault("status", {})["conditions"] = [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "lastTransitionTime": since}
    ]
    node.setdefault("spec", {})["taints"] = [
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": since}
    ]
    return w2


def _on(pods: list[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    return [p for p in pods if p["spec"].get("nodeName") == node]


def _replicas_on(d: Decisions, node: str) -> set[tuple[str, int]]:
    assert d.plan is not None
    return {(r.deployment, r.ordinal) for g in d.plan.gpus if g.node == node for r in g.replicas}


def _degraded(d: Decisions) -> dict[str, tuple[str, str, str]]:
    out = {}
    for key, st in d.deployment_statuses.items():
        c = next(c for c in st.conditions or [] if c.type == "Degraded")
        out[key] = (c.status.value, c.reason, c.message)
    return out


def test_a_not_ready_node_keeps_its_replicas_takes_nothing_new_and_the_pass_checks_again() -> None:
    w, _ = _converge()
    stranded = {p["metadata"]["name"] for p in _on(w.pods, DOWN)}
    assert stranded, "the example pool runs replicas on the node"
    w = _not_ready(w, since=NOW)
    w.now = _later(0.5)  # 30 s NotReady, under the default 60 s
    d = decide(w)
    down_pods = {p["metadata"]["name"] for p in _on(w.pods, DOWN)}
    assert not down_pods & {name for _, name, _ in d.pods_delete}, "its replicas wait for it: none moves yet"
    assert all(p["spec"]["nodeName"] != DOWN for p in d.pods_create), "nothing new goes there"
    assert d.plan is not None
    held = {g.index for g in d.plan.gpus if g.node == DOWN and g.mode in ("Reserved", "Segment")}
    assert not held, "the reserved GPUs (the LLM fallback's) move to a node where it can start"
    assert d.waiting, "the pool is checked again soon, so the node is counted lost in time"
    assert d.recheck_seconds == 30, "when the node is lost: 30 s NotReady of the 60 s grace"
    hit = {k: v for k, v in _degraded(d).items() if v[0] == "True"}
    assert hit and all(reason == "NodeNotReady" for _, reason, _ in hit.values()), hit
    assert all(f"node {DOWN} is NotReady since {NOW}" in message for _, _, message in hit.values())
    # a deployment scaled up meanwhile gets its new replica elsewhere
    dep = next(x for x in w.deployments if x.metadata.name == "invoice-extractor")
    dep.spec.replicas += 1
    d2 = decide(w)
    new = [p for p in d2.pods_create if p["metadata"]["labels"]["slm.io/deployment"] == "invoice-extractor"]
    assert d2.plan is not None and len(new) <= 1
    placed_on = {g.node for g in d2.plan.gpus for r in g.replicas if r.deployment == "agents/invoice-extractor"
                 and r.ordinal == dep.spec.replicas - 1}  # fmt: skip
    assert placed_on and DOWN not in placed_on


def test_a_node_lost_for_longer_than_the_grace_has_its_replicas_planned_elsewhere() -> None:
    w, d0 = _converge()
    before = _replicas_on(d0, DOWN)
    w = _not_ready(w, since=NOW)
    w.now = _later(1.5)  # 90 s NotReady, past the default 60 s
    d = decide(w)
    assert not _replicas_on(d, DOWN), "nothing is planned on a lost node"
    assert d.plan is not None and d.plan.pool.replicas_unplaced == 0
    moved = {(r.deployment, r.ordinal) for g in d.plan.gpus for r in g.replicas}
    assert before <= moved, "every replica of the lost node has a share on another node"
    deleted = {(name, reason) for _, name, reason in d.pods_delete}
    assert {p["metadata"]["name"] for p in _on(w.pods, DOWN)} == {n for n, r in deleted if r == "NodeLost"}
    # the old pods stay Terminating (their kubelet is silent): they do not hold back the new ones
    w, d = _passes(w, d)
    running = {(p["metadata"]["labels"]["slm.io/deployment"], int(p["metadata"]["labels"]["slm.io/replica"]))
               for p in w.pods if p["spec"].get("nodeName") != DOWN and "deletionTimestamp" not in p["metadata"]}  # fmt: skip
    assert {(dep.split("/")[1], o) for dep, o in before} <= running
    assert all("deletionTimestamp" in p["metadata"] for p in _on(w.pods, DOWN)), "still Terminating there"
    assert all(v[0] == "False" for v in _degraded(d).values()), _degraded(d)


def _passes(w: World, d: Decisions, limit: int = 8) -> tuple[World, Decisions]:
    """Passes until nothing changes: deletions finish except on the lost node (its kubelet is silent, so its
    pods stay Terminating), the GPU Operator applies the labels, created pods run and are ready."""
    for _ in range(limit):
        if not (d.pods_create or d.pods_delete or d.node_labels):
            return w, d
        w = copy.deepcopy(w)
        deleted = {name for _, name, _ in d.pods_delete}
        kept = []
        for p in w.pods:
            if p["metadata"]["name"] in deleted or "deletionTimestamp" in p["metadata"]:
                if p["spec"].get("nodeName") != DOWN:
                    continue
                p["metadata"]["deletionTimestamp"] = w.now
            kept.append(p)
        w.pods = kept + _running(d.pods_create)
        w.nodes = _apply_node_configs(w, d)
        w.mig_configs = {**w.mig_configs, **d.mig_entries}
        d = decide(w)
    raise AssertionError(f"no convergence in {limit} passes: {d.pods_create} {d.pods_delete} {d.node_labels}")


def test_a_deleted_node_has_its_replicas_planned_elsewhere_at_once() -> None:
    w, d0 = _converge()
    before = _replicas_on(d0, DOWN)
    w.nodes = [n for n in w.nodes if n["metadata"]["name"] != DOWN]
    d = decide(w)
    assert d.plan is not None and d.plan.pool.replicas_unplaced == 0
    assert before <= {(r.deployment, r.ordinal) for g in d.plan.gpus for r in g.replicas}
    assert {name for _, name, reason in d.pods_delete if reason == "NodeLost"} == {
        p["metadata"]["name"] for p in _on(w.pods, DOWN)
    }
    hit = {k: v for k, v in _degraded(d).items() if v[0] == "True"}
    assert hit and all(f"node {DOWN} no longer exists" in m for _, _, m in hit.values()), hit
