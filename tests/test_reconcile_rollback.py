"""mig-manager fails a node's new MIG layout on every try (issue 15, fault 4): the node goes back to its last good
layout, its replicas that waited are planned again and say so, and the new layout is tried again only once per
back-off (fake time through ``World.now``; all state on the node, so a restarted operator decides the same)."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_REPLICAS_LABEL,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_MAX_TRIES,
    MIG_CONFIG_STATE_LABEL,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_ROLLBACK_ANNOTATION,
    PLACEMENT_ANNOTATION,
    SHARING_STRATEGY_LABEL,
    mig_retry_name,
    mig_retry_of,
)
from slm_operator.reconcile import Decisions, decide
from slm_operator.reconcile.rollback import LastGood, Rollback, backoff_seconds, later
from slm_operator.reconcile.world import World
from slm_operator.render import OperatorConfig
from slm_operator.views import NodeView
from test_reconcile import NOW, _apply_node_configs, _converge, _world

MIG_NODE = "gpu-h100-1"
BACKOFF = 600.0


def _node(w: World, name: str = MIG_NODE) -> dict[str, Any]:
    return next(n for n in w.nodes if n["metadata"]["name"] == name)


def _carry(w: World, d: Decisions) -> None:
    """The statuses the pass wrote, as the next pass reads them back."""
    for dep in w.deployments:
        dep.status = d.deployment_statuses[f"{dep.metadata.namespace}/{dep.metadata.name}"]


def _failed_every_try() -> tuple[World, str]:
    """The first pass gives MIG_NODE (all-disabled) a MIG layout; mig-manager failed it under every name."""
    w = _world()
    d1 = decide(w)
    nodes = _apply_node_configs(w, d1)
    w2 = _world(nodes=nodes, mig_configs=dict(d1.mig_entries))
    _carry(w2, d1)
    labels = _node(w2)["metadata"]["labels"]
    base = labels[MIG_CONFIG_LABEL]
    assert base != "all-disabled", "the example pool gives the node a MIG layout"
    last = mig_retry_name(base, MIG_CONFIG_MAX_TRIES - 1)
    labels.update({MIG_CONFIG_LABEL: last, MIG_CONFIG_STATE_LABEL: "failed"})
    w2.mig_configs[last] = d1.mig_entries[base]
    return w2, base


def broken(config: str) -> bool:
    """A node whose GPUs cannot leave their layout (a device held by something the operator does not see)."""
    return config != "all-disabled"


def fixed(config: str) -> bool:
    return False


def _next(w: World, d: Decisions, now: str, fails: Callable[[str], bool]) -> World:
    """The next pass's world at ``now``: what the pass wrote, applied by a mig-manager that fails the configs
    ``fails`` says (by base name, under any alias) and applies the others."""
    w2 = copy.deepcopy(w)
    w2.now = now
    w2.mig_configs = {**w.mig_configs, **d.mig_entries}
    for n in w2.nodes:
        name = n["metadata"]["name"]
        n["metadata"].setdefault("annotations", {}).update(d.node_annotations.get(name, {}))
        if name in d.node_labels:
            labels = n["metadata"]["labels"]
            labels.update(d.node_labels[name])
            failed = fails(mig_retry_of(labels.get(MIG_CONFIG_LABEL, "all-disabled"))[0])
            labels[MIG_CONFIG_STATE_LABEL] = "failed" if failed else "success"
            sharing = d.device_plugin_entries[labels[DEVICE_PLUGIN_CONFIG_LABEL]].get("sharing") or {}
            share = sharing.get("mps") or sharing.get("timeSlicing")
            labels[SHARING_STRATEGY_LABEL] = (
                "mps" if "mps" in sharing else ("time-slicing" if share else "none")
            )
            labels[GPU_REPLICAS_LABEL] = str(share["resources"][0]["replicas"]) if share else "1"
    _carry(w2, d)
    return w2


def _condition(d: Decisions, type_: str, owner: str | None = None) -> Any:
    if owner is None:
        assert d.pool_status is not None
        return next(c for c in d.pool_status.conditions or [] if c.type == type_)
    return next((c for c in d.deployment_statuses[owner].conditions or [] if c.type == type_), None)


def test_when_every_try_failed_the_node_goes_back_to_its_last_good_layout_and_says_until_when() -> None:
    w, base = _failed_every_try()
    assert LastGood.of(NodeView(_node(w))) == LastGood("all-disabled", None), (
        "recorded when it was relabelled"
    )
    d = decide(w)
    assert d.node_labels[MIG_NODE][MIG_CONFIG_LABEL] == "all-disabled", "relabelled to its last good config"
    assert d.mig_rollbacks == {MIG_NODE: True}, "counted once (slm_mig_rollbacks_total)"
    record = Rollback.of(NodeView({"metadata": {"annotations": d.node_annotations[MIG_NODE]}}))
    until = later(NOW, BACKOFF)
    assert record is not None and (record.failed, record.to, record.failures, record.until) == (
        base,
        "all-disabled",
        1,
        until,
    )
    assert record.replicas, "the replicas that waited for the new layout are recorded"
    degraded = _condition(d, "Degraded")
    assert degraded.status == "True" and degraded.reason == "MigLayoutRolledBack"
    assert f"node {MIG_NODE}: mig-manager failed to apply MIG config {base} (once)" in degraded.message
    assert f"held until {until}" in degraded.message
    assert all(p["spec"]["affinity"]["nodeAffinity"] for p in d.pods_create)
    assert not [p for p in d.pods_create if MIG_NODE in json.dumps(p["spec"]["affinity"])], (
        "nothing new there"
    )
    assert d.plan is not None and not [g for g in d.plan.gpus if g.node == MIG_NODE and g.replicas]
    node_events = [e for e in d.events if e.kind == "Node"]
    assert [(e.name, e.type, e.reason) for e in node_events] == [(MIG_NODE, "Warning", "MigLayoutRolledBack")]
    for dkey, ordinals in record.replicas:
        c = _condition(d, "MigLayoutRolledBack", dkey)
        assert c is not None and c.status == "True", dkey
        for o in ordinals:
            assert f"replica {o} planned again on node " in c.message or f"replica {o} waits: " in c.message
        assert any(e.kind == "SLMDeployment" and f"{e.namespace}/{e.name}" == dkey for e in d.events)


def test_the_replicas_are_planned_again_and_the_next_pass_is_quiet() -> None:
    w, _base = _failed_every_try()
    d = decide(w)
    w2 = _next(w, d, later(NOW, 30), fails=broken)
    d2 = decide(w2)
    assert MIG_NODE not in d2.node_labels, "held on its last good config"
    assert d2.mig_rollbacks == {MIG_NODE: False}
    assert not [e for e in d2.events if e.reason == "MigLayoutRolledBack"], "events only when it starts"
    assert _condition(d2, "Degraded").reason == "MigLayoutRolledBack"
    assert d2.plan is not None
    assert all(p["spec"]["affinity"] for p in d2.pods_create)
    record = Rollback.of(NodeView(_node(w2)))
    assert record is not None
    for dkey, _ in record.replicas:
        c = _condition(d2, "MigLayoutRolledBack", dkey)
        assert c is not None and c.status == "True"


@settings(max_examples=15, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=int(BACKOFF) - 1))
def test_no_try_before_the_back_off_ends(seconds: int) -> None:
    """Whatever the time within the back-off, and with no memory but the node's (a restarted operator), the
    failed layout is not tried again."""
    w, _base = _failed_every_try()
    d = decide(w)
    w2 = _next(w, d, later(NOW, seconds), fails=broken)
    d2 = decide(w2)
    assert MIG_NODE not in d2.node_labels


def test_after_the_back_off_one_try_then_a_doubled_back_off() -> None:
    w, _base = _failed_every_try()
    d = decide(w)
    w = _next(w, d, later(NOW, BACKOFF), fails=broken)
    d = decide(w)
    again = d.node_labels[MIG_NODE][MIG_CONFIG_LABEL]  # the layout the plan wants now (the replicas moved)
    assert again != "all-disabled" and mig_retry_of(again) == (again, 0), "one try, under its own name"
    at = later(NOW, BACKOFF + 30)
    w = _next(w, d, at, fails=broken)  # it fails again
    d = decide(w)
    assert d.node_labels[MIG_NODE][MIG_CONFIG_LABEL] == "all-disabled", "no alias: straight back"
    record = Rollback.of(NodeView({"metadata": {"annotations": d.node_annotations[MIG_NODE]}}))
    assert record is not None and record.failures == 2 and record.until == later(at, 2 * BACKOFF)
    assert "(2 times in a row)" in _condition(d, "Degraded").message


def test_a_try_after_the_back_off_that_succeeds_ends_the_rollback() -> None:
    w, _base = _failed_every_try()
    d = decide(w)
    w = _next(w, d, later(NOW, BACKOFF), fails=broken)
    d = decide(w)
    w = _next(w, d, later(NOW, BACKOFF + 30), fails=fixed)  # the node was fixed meanwhile
    d = decide(w)
    assert MIG_NODE not in d.node_labels
    assert _condition(d, "Degraded").reason != "MigLayoutRolledBack"
    assert any(p["spec"]["affinity"] and MIG_NODE in json.dumps(p["spec"]["affinity"]) for p in d.pods_create)
    w = _next(w, d, later(NOW, BACKOFF + 60), fails=fixed)
    d = decide(w)
    for dkey in d.deployment_statuses:
        c = _condition(d, "MigLayoutRolledBack", dkey)
        assert c is None or c.status == "False"


def test_tries_in_a_day_of_failures_are_bounded_and_spaced_by_doubling_back_offs() -> None:
    """A mig-manager that always fails the layout, one pass a minute for six hours: the tries are the first
    MIG_CONFIG_MAX_TRIES, then one per back-off (10, 20, 40, 80, 80... min), never a tight loop."""
    w, _base = _failed_every_try()
    tries: list[int] = []
    for minute in range(0, 6 * 60):
        d = decide(w)
        label = d.node_labels.get(MIG_NODE, {}).get(MIG_CONFIG_LABEL)
        if label is not None and label != "all-disabled":
            tries.append(minute)
        w = _next(w, d, later(NOW, 60 * (minute + 1)), fails=broken)
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    # rolled back at minute 0 (relabel to all-disabled), tried at 10; each failure is seen one pass later
    assert tries[0] == 10 and gaps == [21, 41, 81, 81, 81], (tries, gaps)


def test_without_a_last_good_config_or_with_rollbacks_off_the_pool_is_degraded_as_before() -> None:
    w, _ = _failed_every_try()
    w.cfg = OperatorConfig(configmap_sync_seconds=0, mig_rollback_seconds=0)
    d = decide(w)
    assert MIG_NODE not in d.node_labels and _condition(d, "Degraded").reason == "MigConfigFailed"
    w, _base = _failed_every_try()
    del _node(w)["metadata"]["annotations"][MIG_LAST_GOOD_ANNOTATION]
    d = decide(w)
    assert MIG_NODE not in d.node_labels and _condition(d, "Degraded").reason == "MigConfigFailed"
    assert MIG_ROLLBACK_ANNOTATION not in d.node_annotations[MIG_NODE]


def test_records_on_the_node_are_read_safely_and_back_offs_double_up_to_a_cap() -> None:
    for raw in ("", "{", "[]", '{"config": 3, "entries": 4}', '{"entries": []}'):
        assert LastGood.of(NodeView({"metadata": {"annotations": {MIG_LAST_GOOD_ANNOTATION: raw}}})) is None
        assert Rollback.of(NodeView({"metadata": {"annotations": {MIG_ROLLBACK_ANNOTATION: raw}}})) is None
    good = LastGood("slm-abc", [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}])
    assert (
        LastGood.of(NodeView({"metadata": {"annotations": {MIG_LAST_GOOD_ANNOTATION: good.to_annotation()}}}))
        == good
    )
    r = Rollback("slm-x", "slm-abc", 2, NOW, later(NOW, 1200), (("agents/chat", (0, 2)),))
    assert (
        Rollback.of(NodeView({"metadata": {"annotations": {MIG_ROLLBACK_ANNOTATION: r.to_annotation()}}}))
        == r
    )
    assert [backoff_seconds(600, n) for n in (1, 2, 3, 4, 5, 9)] == [600, 1200, 2400, 4800, 4800, 4800]
    assert later("2026-11-26T23:59:30Z", 45) == "2026-11-27T00:00:15Z"


def test_replicas_running_on_the_node_keep_their_pods_through_the_rollback() -> None:
    """A converged pool; the operator then tried a new layout on MIG_NODE (its running replicas' layout is the
    last good one) and mig-manager failed it every time: the node goes back to that layout, and the replicas that
    run there keep their pods and shares."""
    w, d0 = _converge()
    node = _node(w)
    labels = node["metadata"]["labels"]
    good = labels[MIG_CONFIG_LABEL]
    assert good != "all-disabled" and labels[MIG_CONFIG_STATE_LABEL] == "success"
    running = [p for p in w.pods if p["spec"]["nodeName"] == MIG_NODE]
    assert running, "the example pool runs replicas on the node"
    node["metadata"]["annotations"][MIG_LAST_GOOD_ANNOTATION] = LastGood(
        good, w.mig_configs[good]
    ).to_annotation()
    failed = mig_retry_name("slm-elsewhere", MIG_CONFIG_MAX_TRIES - 1)
    labels.update({MIG_CONFIG_LABEL: failed, MIG_CONFIG_STATE_LABEL: "failed"})
    w.mig_configs[failed] = [{"devices": "all", "mig-enabled": True, "mig-devices": {"7g.80gb": 1}}]
    d = decide(w)
    assert d.node_labels[MIG_NODE][MIG_CONFIG_LABEL] == good
    assert d.mig_entries[good] == w.mig_configs[good], "the last good entry stays in the ConfigMap"
    names = {p["metadata"]["name"] for p in running}
    assert not [n for _, n, _ in d.pods_delete if n in names], "no replica of the node is deleted"
    assert d.plan is not None and {
        (r.deployment, r.ordinal) for g in d.plan.gpus if g.node == MIG_NODE for r in g.replicas
    } == {
        (rec["deployment"], rec["ordinal"])
        for rec in (json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION]) for p in running)
    }
    assert _condition(d, "Degraded").reason == "MigLayoutRolledBack"
    assert d0.node_labels == {}
