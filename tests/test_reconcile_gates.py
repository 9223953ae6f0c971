"""The gates that hold a pod creation, an in-place replacement or a node relabel back: one test per predicate,
on the reason a user reads, and on the chain stopping at the first failure."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from slm_operator.contract import (
    DEVICE_PLUGIN_CONFIG_LABEL,
    GPU_REPLICAS_LABEL,
    GPU_RESOURCE,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_MAX_TRIES,
    MIG_CONFIG_STATE_LABEL,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_MANAGER_REFRESH_ANNOTATION,
    MIG_PENDING_ANNOTATION,
    SHARING_STRATEGY_LABEL,
    mig_retry_name,
    mig_retry_of,
)
from slm_operator.reconcile import Decisions, World, decide, node_patches
from slm_operator.reconcile.gates import (
    CONFIGMAP_WATCH_SECONDS,
    CREATE_GATES,
    MOVE_TARGET_GATES,
    NODE_CONFIG_GATES,
    PREVIOUS_POD_STOPPING,
    RELABEL_GATES,
    ROLLING_UPDATE_GATES,
    Chain,
    CreationContext,
    NodeTarget,
    Refresh,
    RelabelContext,
    RolloutContext,
    device_plugin_config_selected,
    mig_config_applied,
    mig_config_selected,
    mig_entry_synced,
    mig_refresh,
    node_not_relabelled,
    one_replica_at_a_time,
    other_replicas_ready,
    pending_configs,
    pods_drained,
    previous_pod_gone,
    previous_pod_terminating,
    sharing_replicas_advertised,
    sharing_strategy_reported,
)
from slm_operator.reconcile.inputs import pending_layout
from slm_operator.reconcile.podsets import DesiredPod, ExistingReplica
from slm_operator.reconcile.world import ReplicaKey
from slm_operator.render import NodeConfig
from slm_operator.views import NodeView, PodView
from tests.test_reconcile import NOW, _apply_node_configs, _world

C = TypeVar("C")
S = TypeVar("S")

NODE = "gpu-0"
KEY = ReplicaKey("agents/chat", 1)
MPS_ENTRY = {"version": "v1", "sharing": {"mps": {"resources": [{"name": GPU_RESOURCE, "replicas": 4}]}}}
APPLIED = {  # what the node reports once the GPU Operator applied the planned configuration
    MIG_CONFIG_LABEL: "slm-abc",
    MIG_CONFIG_STATE_LABEL: "success",
    DEVICE_PLUGIN_CONFIG_LABEL: "slm-mps-4",
    SHARING_STRATEGY_LABEL: "mps",
    GPU_REPLICAS_LABEL: "4",
}


def consulted(chain: Chain[C, S], ctx: C, subject: S) -> tuple[str | None, list[str]]:
    """The chain's reason, and the gates it asked, in order."""
    asked: list[str] = []

    def spy(gate: Callable[[C, S], str | None]) -> Callable[[C, S], str | None]:
        def run(c: C, s: S) -> str | None:
            asked.append(gate.__name__)
            return gate(c, s)

        return run

    return Chain(tuple(spy(g) for g in chain.gates)).first_failure(ctx, subject), asked


def names(chain: Chain[Any, Any], upto: Callable[..., Any]) -> list[str]:
    gates = [g.__name__ for g in chain.gates]
    return gates[: gates.index(upto.__name__) + 1]


def pod(name: str, *, deleting: bool = False) -> PodView:
    meta: dict[str, Any] = {"name": name, "namespace": "agents"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    return PodView({"metadata": meta})


def creation(
    labels: dict[str, str | None] | None = None,
    *,
    previous: list[PodView] | None = None,
    relabelled: bool = True,
    mig_capable: bool = True,
    entry: dict[str, Any] | None = None,
) -> tuple[CreationContext, DesiredPod]:
    """A replica planned on NODE (MIG slm-abc, MPS with 4 replicas per GPU). By default the node is also
    being relabelled, so that the last gate fails too: a test sees the first failure win."""
    have = {k: v for k, v in {**APPLIED, **(labels or {})}.items() if v is not None}
    node = NodeView({"metadata": {"name": NODE, "labels": have}})
    entry = MPS_ENTRY if entry is None else entry
    dp_name = "slm-mps-4" if "sharing" in entry else "slm-exclusive"
    config = NodeConfig(NODE, "slm-abc", [], dp_name, entry, mig_capable)
    ctx = CreationContext(
        existing={KEY: ExistingReplica.of(previous)} if previous else {},
        targets={NODE: NodeTarget(node, config)},
        relabelled=frozenset({NODE}) if relabelled else frozenset(),
    )
    return ctx, DesiredPod(KEY, NODE, {"metadata": {"name": "chat-1-new", "namespace": "agents"}})


# ------------------------------------------------------------------------------------------ creating a pod
def test_previous_pod_terminating_holds_the_new_pod() -> None:
    ctx, want = creation({MIG_CONFIG_STATE_LABEL: "pending"}, previous=[pod("chat-1-old", deleting=True)])
    assert previous_pod_terminating(ctx, want) == "waiting for the previous pod of this replica to stop"
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == PREVIOUS_POD_STOPPING
    assert asked == names(CREATE_GATES, previous_pod_terminating)


def test_previous_pod_still_there_holds_the_new_pod() -> None:
    ctx, want = creation({MIG_CONFIG_STATE_LABEL: "pending"}, previous=[pod("chat-1-old")])
    assert previous_pod_terminating(ctx, want) is None
    assert previous_pod_gone(ctx, want) == "waiting for the previous pod of this replica to stop"
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == PREVIOUS_POD_STOPPING
    assert asked == names(CREATE_GATES, previous_pod_gone)


def test_mig_config_label_not_yet_the_planned_one() -> None:
    ctx, want = creation({MIG_CONFIG_LABEL: None})  # no label: mig-manager's all-disabled
    expected = "node gpu-0: waiting for mig-manager to pick up MIG config slm-abc"
    assert mig_config_selected(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == names(CREATE_GATES, mig_config_selected)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            "failed",
            "node gpu-0: mig-manager failed to apply MIG config slm-abc (nvidia.com/mig.config.state=failed)",
        ),
        ("pending", "node gpu-0: MIG config slm-abc is pending"),
        ("rebooting", "node gpu-0: MIG config slm-abc is rebooting"),
        (None, "node gpu-0: MIG config slm-abc is not applied yet"),
    ],
)
def test_mig_config_state_not_success(state: str | None, expected: str) -> None:
    ctx, want = creation({MIG_CONFIG_STATE_LABEL: state, DEVICE_PLUGIN_CONFIG_LABEL: "slm-exclusive"})
    assert mig_config_applied(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == names(CREATE_GATES, mig_config_applied)


def test_device_plugin_config_label_not_yet_the_planned_one() -> None:
    ctx, want = creation({DEVICE_PLUGIN_CONFIG_LABEL: "slm-exclusive", SHARING_STRATEGY_LABEL: "none"})
    expected = "node gpu-0: waiting for the device plugin config slm-mps-4"
    assert device_plugin_config_selected(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == names(CREATE_GATES, device_plugin_config_selected)


def test_gfd_sharing_strategy_not_yet_reported() -> None:
    ctx, want = creation({SHARING_STRATEGY_LABEL: None, GPU_REPLICAS_LABEL: "1"})  # no label: none
    expected = "node gpu-0: waiting for GPU feature discovery to report sharing strategy mps"
    assert sharing_strategy_reported(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == names(CREATE_GATES, sharing_strategy_reported)


def test_gfd_replicas_not_yet_advertised() -> None:
    ctx, want = creation({GPU_REPLICAS_LABEL: "8"})
    expected = "node gpu-0: waiting for the device plugin to advertise 4 replicas per GPU"
    assert sharing_replicas_advertised(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == names(CREATE_GATES, sharing_replicas_advertised)


def test_node_being_relabelled_holds_the_pod() -> None:
    ctx, want = creation()
    expected = "node gpu-0: configuration is being changed"
    assert node_not_relabelled(ctx, want) == expected
    reason, asked = consulted(CREATE_GATES, ctx, want)
    assert reason == expected and asked == [g.__name__ for g in CREATE_GATES.gates]


def test_a_configured_node_lets_the_pod_through() -> None:
    ctx, want = creation(relabelled=False)
    assert CREATE_GATES.first_failure(ctx, want) is None


def test_node_gates_that_do_not_apply() -> None:
    # Not MIG-capable: mig-manager does not run there, so no MIG label nor state is awaited.
    ctx, want = creation({MIG_CONFIG_LABEL: None, MIG_CONFIG_STATE_LABEL: None}, mig_capable=False)
    assert mig_config_selected(ctx, want) is None and mig_config_applied(ctx, want) is None
    # Exclusive GPUs: GFD reports sharing strategy none and no replica count is awaited.
    exclusive = {"version": "v1", "flags": {"migStrategy": "mixed"}}
    labels: dict[str, str | None] = {
        DEVICE_PLUGIN_CONFIG_LABEL: "slm-exclusive",
        SHARING_STRATEGY_LABEL: None,
        GPU_REPLICAS_LABEL: None,
    }
    ctx, want = creation(labels, entry=exclusive, relabelled=False)
    assert CREATE_GATES.first_failure(ctx, want) is None
    # A node without a planned configuration: only the previous-pod gates apply.
    ctx, want = creation({MIG_CONFIG_STATE_LABEL: "failed"})
    elsewhere = DesiredPod(KEY, "gpu-9", want.manifest)
    assert CREATE_GATES.first_failure(ctx, elsewhere) is None


def test_the_status_quotes_the_gate() -> None:
    """End to end: mig-manager failed on a node on every try, and the node has no last good MIG config to go back
    to (taken over failed), so its replicas wait and their status says why (test_reconcile_rollback.py: with one)."""
    w = _world()
    d1 = decide(w)
    nodes = _apply_node_configs(w, d1)
    node = next(
        n for n in nodes if n["metadata"]["labels"].get(MIG_CONFIG_LABEL, "all-disabled") != "all-disabled"
    )
    node["metadata"]["annotations"].pop(MIG_LAST_GOOD_ANNOTATION)
    base = node["metadata"]["labels"][MIG_CONFIG_LABEL]
    last_try = mig_retry_name(base, MIG_CONFIG_MAX_TRIES - 1)
    node["metadata"]["labels"].update({MIG_CONFIG_LABEL: last_try, MIG_CONFIG_STATE_LABEL: "failed"})
    name, config = node["metadata"]["name"], last_try
    configs = {**d1.mig_entries, last_try: d1.mig_entries[base]}
    d2 = decide(_world(nodes=nodes, mig_configs=configs))
    assert name not in d2.node_labels  # tries exhausted: the label stays
    expected = (
        f"node {name}: mig-manager failed to apply MIG config {config} (nvidia.com/mig.config.state=failed)"
    )
    waiting = [
        (st, p) for st in d2.deployment_statuses.values() for p in st.placements or [] if p.state == "Waiting"
    ]
    assert waiting and all(p.reason == expected[:128] for _, p in waiting)
    assert all(PodView(p).placement.node != name for p in d2.pods_create)  # type: ignore[union-attr]
    st, _ = waiting[0]
    progressing = next(c for c in st.conditions or [] if c.type == "Progressing")
    assert progressing.reason == "WaitingForNodeReconfiguration" and progressing.message == expected


# ------------------------------------------------------------------------------------------ rolling update
def test_one_replica_at_a_time() -> None:
    ctx = RolloutContext(unready={"agents/chat": frozenset({2})}, rolling=frozenset({"agents/chat"}))
    expected = "replica 1: another replica of agents/chat is being replaced first (one at a time)"
    assert one_replica_at_a_time(ctx, KEY) == expected
    reason, asked = consulted(ROLLING_UPDATE_GATES, ctx, KEY)
    assert reason == expected and asked == ["one_replica_at_a_time"]


def test_other_replicas_ready_first() -> None:
    ctx = RolloutContext(unready={"agents/chat": frozenset({1, 2, 3})}, rolling=frozenset({"agents/other"}))
    expected = "replica 1: waiting for replica(s) 2, 3 of agents/chat to be ready first"
    assert other_replicas_ready(ctx, KEY) == expected
    assert ROLLING_UPDATE_GATES.first_failure(ctx, KEY) == expected
    # The replica's own readiness does not count: it is the one being replaced.
    alone = RolloutContext(unready={"agents/chat": frozenset({1})}, rolling=frozenset())
    assert ROLLING_UPDATE_GATES.first_failure(alone, KEY) is None


# ------------------------------------------------------------------------------------------ relabelling a node
def test_relabel_waits_for_the_node_to_drain() -> None:
    ctx = RelabelContext(draining=frozenset({NODE}))
    expected = "node gpu-0: waiting for its deleted pods to stop before changing its configuration"
    assert pods_drained(ctx, NODE) == expected
    assert RELABEL_GATES.first_failure(ctx, NODE) == expected
    assert RELABEL_GATES.first_failure(ctx, "gpu-1") is None


# ------------------------------------------------------------------------------------------ relabel: ConfigMap sync
MIG_ENTRY = [{"devices": [0], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}]


def relabel_ctx(age: float | None, label: str = "all-disabled", sync: float = 90) -> RelabelContext:
    target = NodeConfig("gpu-0", "slm-abc", MIG_ENTRY, "slm-exclusive", {"version": "v1"})
    return RelabelContext(
        draining=frozenset(),
        targets={"gpu-0": target},
        mig_labels={"gpu-0": label},
        entry_ages={} if age is None else {"slm-abc": age},
        sync_seconds=sync,
    )


def test_a_new_mig_config_waits_until_every_kubelet_has_synced_it() -> None:
    expected = (
        "node gpu-0: waiting for MIG config slm-abc to reach mig-manager's mounted ConfigMap "
        "(written 12s ago; kubelets refresh it within 90s)"
    )
    assert mig_entry_synced(relabel_ctx(12.4), "gpu-0") == expected
    assert "not written yet" in (mig_entry_synced(relabel_ctx(None), "gpu-0") or "")
    assert RELABEL_GATES.first_failure(relabel_ctx(12.4), "gpu-0") == expected
    assert mig_entry_synced(relabel_ctx(90), "gpu-0") is None
    # the MIG label does not change (only the device-plugin label does): nothing to wait for
    assert mig_entry_synced(relabel_ctx(0, label="slm-abc"), "gpu-0") is None
    # a built-in name (all-disabled) and a node the plan does not cover need no sync
    builtin = RelabelContext(
        draining=frozenset(),
        targets={"gpu-0": NodeConfig("gpu-0", "all-disabled", None, "slm-exclusive", {})},
        sync_seconds=90,
    )
    assert mig_entry_synced(builtin, "gpu-0") is None and mig_entry_synced(relabel_ctx(0), "gpu-9") is None
    # draining comes first
    draining = RelabelContext(draining=frozenset({"gpu-0"}), targets=relabel_ctx(0).targets, sync_seconds=90)
    assert "deleted pods" in (RELABEL_GATES.first_failure(draining, "gpu-0") or "")


def test_decide_writes_the_entry_first_and_relabels_once_it_is_old_enough() -> None:
    w = _world(sync_seconds=90)
    d1 = decide(w)
    mig_nodes = {n: c.mig_config for n, c in d1.node_configs.items() if c.mig_entries}
    assert mig_nodes and d1.mig_entries and d1.waiting
    assert d1.recheck_seconds == 90, (
        "the entries are written now: the gate opens in 90 s, no need to pass sooner"
    )
    assert all(MIG_CONFIG_LABEL not in d1.node_labels.get(n, {}) for n in mig_nodes)  # held
    assert d1.mig_entry_times == dict.fromkeys(d1.mig_entries, w.now)
    ready = next(c for c in d1.pool_status.conditions or [] if c.type == "Ready")  # type: ignore[union-attr]
    assert "reach mig-manager's mounted ConfigMap" in ready.message
    # 30 s later the entry is in the ConfigMap but not old enough; 90 s later the node is relabelled
    later = _world(sync_seconds=90, mig_configs=dict(d1.mig_entries), mig_entry_times=d1.mig_entry_times,
                   now="2026-11-26T10:00:30Z")  # fmt: skip
    d2 = decide(later)
    assert d2.mig_entry_times == d1.mig_entry_times  # the first write's time is kept
    assert all(MIG_CONFIG_LABEL not in d2.node_labels.get(n, {}) for n in mig_nodes)
    assert d2.waiting and d2.recheck_seconds == 60
    synced = _world(sync_seconds=90, mig_configs=dict(d1.mig_entries), mig_entry_times=d1.mig_entry_times,
                    now="2026-11-26T10:01:30Z")  # fmt: skip
    d3 = decide(synced)
    assert all(d3.node_labels[n][MIG_CONFIG_LABEL] == c for n, c in mig_nodes.items())
    # relabelled: what the pass waits for now (the nodes' new configs) comes through the node watch
    assert d3.waiting and d3.recheck_seconds is None


# ------------------------------------------------------------------------------------------ relabel: pod refresh
def refresh_ctx(
    age: float | None, since: float | str | None = "no pod", config: str = "slm-abc", seconds: float = 10
) -> RelabelContext:
    """relabel_ctx's node, with a running mig-manager pod last refreshed ``since`` seconds ago (None: never;
    "no pod": none runs there)."""
    target = NodeConfig("gpu-0", config, MIG_ENTRY, "slm-exclusive", {"version": "v1"})
    return RelabelContext(
        draining=frozenset(),
        targets={"gpu-0": target},
        mig_labels={"gpu-0": "all-disabled"},
        entry_ages={} if age is None else {config: age},
        sync_seconds=90,
        mig_managers={} if since == "no pod" else {"gpu-0": since},  # type: ignore[dict-item]
        refresh_seconds=seconds,
    )


def test_a_refreshed_mig_manager_pod_lets_the_node_be_relabelled_long_before_the_sync() -> None:
    """The entry is in the ConfigMap for CONFIGMAP_WATCH_SECONDS (the kubelet's watch has it), then the pod is
    refreshed (its kubelet remounts the volume), then the node is relabelled refresh_seconds later: about 15 s
    instead of 90."""
    assert CONFIGMAP_WATCH_SECONDS == 5
    # written 2 s ago, never refreshed: the refresh comes in 3 s, the relabel 10 s after it
    assert mig_refresh(refresh_ctx(2, None), "gpu-0") == Refresh(now=False, ready_in=13)
    assert mig_refresh(refresh_ctx(6, None), "gpu-0") == Refresh(now=True, ready_in=10)
    held = mig_entry_synced(refresh_ctx(6, None), "gpu-0") or ""
    assert held.endswith(
        "(written 6s ago; kubelets refresh it within 90s; its mig-manager pod is refreshed for it, about 10s left)"
    )
    # refreshed 6 s ago, 6 s after the write: 4 s left; 11 s ago: relabelled now, at 17 s instead of 90
    assert mig_refresh(refresh_ctx(12, 6), "gpu-0") == Refresh(now=False, ready_in=4)
    assert mig_entry_synced(refresh_ctx(12, 6), "gpu-0") is not None
    assert mig_entry_synced(refresh_ctx(17, 11), "gpu-0") is None
    assert RELABEL_GATES.first_failure(refresh_ctx(17, 11), "gpu-0") is None


def test_a_refresh_counts_only_when_it_came_after_the_entry_reached_the_kubelet() -> None:
    # refreshed before the entry was written (for an older entry), or 3 s after the write: refreshed again
    assert mig_refresh(refresh_ctx(20, 30), "gpu-0") == Refresh(now=True, ready_in=10)
    assert mig_refresh(refresh_ctx(12, 9), "gpu-0") == Refresh(now=True, ready_in=10)
    assert mig_entry_synced(refresh_ctx(20, 30), "gpu-0") is not None


def test_without_a_pod_refreshes_or_on_a_retry_the_node_waits_the_full_sync() -> None:
    for ctx in (
        refresh_ctx(30, "no pod"),  # no running mig-manager pod on the node
        refresh_ctx(30, 20, seconds=0),  # refreshes off (--mig-manager-refresh-seconds 0)
        refresh_ctx(
            30, 20, config="slm-abc-retry1"
        ),  # the retry of a failed config: a refresh may have missed
        refresh_ctx(None, None),  # not written yet
    ):
        assert mig_refresh(ctx, "gpu-0") is None
        assert "within 90s)" in (mig_entry_synced(ctx, "gpu-0") or "")
    assert mig_entry_synced(refresh_ctx(90, "no pod"), "gpu-0") is None


def _mig_manager(node: str, phase: str = "Running", refreshed: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"nvidia-mig-manager-{node}", "namespace": "gpu-operator"}
    if refreshed:
        meta["annotations"] = {MIG_MANAGER_REFRESH_ANNOTATION: refreshed}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def test_decide_refreshes_the_mig_manager_pods_then_relabels_their_nodes_first() -> None:
    """Pass by pass, with the 90 s sync: the entries are written; 5 s later each MIG node with a running
    mig-manager pod gets it annotated; 5 s after that (--mig-manager-refresh-seconds) those nodes are
    relabelled. The node whose pod is not running yet waits the full 90 s."""
    first = decide(_world(sync_seconds=90))
    mig_nodes = sorted(n for n, c in first.node_configs.items() if c.mig_entries)
    assert len(mig_nodes) >= 2, mig_nodes
    fast, slow = mig_nodes[0], mig_nodes[1]
    pods = [_mig_manager(fast), _mig_manager(slow, phase="Pending")]

    def at(now: str, pods: list[dict[str, Any]]) -> Decisions:
        w = _world(sync_seconds=90, mig_configs=dict(first.mig_entries), mig_entry_times=first.mig_entry_times,
                   now=now)  # fmt: skip
        return decide(World(**{**vars(w), "mig_manager_pods": pods}))

    d0 = at(NOW, pods)
    assert d0.pod_patches == [] and d0.recheck_seconds == 10  # 5 s for the kubelet's watch, then 5 s
    # what the waiting deployments say: the refreshed node's reconfiguration is expected sooner
    expected = {
        c.message.split(" (", 1)[1].split(")")[0].split("; ")[1]
        for st in d0.deployment_statuses.values()
        for c in st.conditions or []
        if c.type == "Progressing" and f"MIG reconfiguration of node {fast} " in (c.message or "")
    }
    assert expected == {"about 1-6 min expected"}
    assert any(
        f"MIG reconfiguration of node {slow} (drain of 0 pods; about 2-8 min expected)" in (c.message or "")
        for st in d0.deployment_statuses.values()
        for c in st.conditions or []
    )
    d5 = at("2026-11-26T10:00:05Z", pods)
    assert d5.pod_patches == [
        (
            "gpu-operator",
            f"nvidia-mig-manager-{fast}",
            {"metadata": {"annotations": {MIG_MANAGER_REFRESH_ANNOTATION: "2026-11-26T10:00:05Z"}}},
        )
    ]
    assert all(MIG_CONFIG_LABEL not in d5.node_labels.get(n, {}) for n in mig_nodes)
    assert d5.recheck_seconds == 5
    pods[0] = _mig_manager(fast, refreshed="2026-11-26T10:00:05Z")
    d8 = at("2026-11-26T10:00:08Z", pods)
    assert d8.pod_patches == [] and d8.recheck_seconds == 2  # refreshed once, not on every pass
    assert MIG_CONFIG_LABEL not in d8.node_labels.get(fast, {})
    d10 = at("2026-11-26T10:00:10Z", pods)
    assert d10.node_labels[fast][MIG_CONFIG_LABEL] == first.node_configs[fast].mig_config
    assert all(MIG_CONFIG_LABEL not in d10.node_labels.get(n, {}) for n in mig_nodes[1:])
    assert d10.pod_patches == []
    ready = next(c for c in d10.pool_status.conditions or [] if c.type == "Ready")  # type: ignore[union-attr]
    assert f"node {slow}: waiting for MIG config" in ready.message
    d90 = at("2026-11-26T10:01:30Z", pods)
    assert all(
        d90.node_labels[n][MIG_CONFIG_LABEL] == first.node_configs[n].mig_config for n in mig_nodes[1:]
    )


def _waited(d1: Decisions, extra: tuple[str, int], recorded: bool) -> Decisions:
    """The pass 30 s after ``d1`` (whose nodes wait for their MIG entries), with a deployment added that is a
    copy of ``extra[0]`` with ``extra[1]`` replicas; the nodes carry d1's annotations when ``recorded``."""
    first = _world(sync_seconds=90)
    nodes = copy.deepcopy(first.nodes)
    for n in nodes if recorded else ():
        wrote = d1.node_annotations.get(n["metadata"]["name"], {})
        n["metadata"].setdefault("annotations", {}).update({k: v for k, v in wrote.items() if v is not None})
    w = _world(sync_seconds=90, nodes=nodes, mig_configs=dict(d1.mig_entries), mig_entry_times=d1.mig_entry_times,
               now="2026-11-26T10:00:30Z")  # fmt: skip
    for x in w.deployments:
        x.status = d1.deployment_statuses[f"{x.metadata.namespace}/{x.metadata.name}"]
    new = copy.deepcopy(next(x for x in w.deployments if x.metadata.name == extra[0]))
    new.metadata.name, new.metadata.uid, new.status, new.spec.replicas = (
        "late-arrival",
        "uid-late",
        None,
        extra[1],
    )
    return decide(World(**{**vars(w), "deployments": [*w.deployments, new]}))


def test_a_node_waiting_for_its_mig_entry_keeps_its_planned_layout() -> None:
    """A deployment applied while the nodes wait for their new MIG entries to reach mig-manager goes into the
    layouts already written (the nodes are planned in them: MIG_PENDING_ANNOTATION), instead of changing a
    node's layout, which would name a new entry and start its 90 s wait again."""
    d1 = decide(_world(sync_seconds=90))
    planned = {n: c.mig_config for n, c in d1.node_configs.items() if c.mig_entries}
    assert planned and all(MIG_CONFIG_LABEL not in d1.node_labels.get(n, {}) for n in planned)  # held
    assert {n: d1.node_annotations[n][MIG_PENDING_ANNOTATION] for n in planned} == planned

    unrecorded = _waited(d1, ("doc-qa", 2), recorded=False)
    assert unrecorded.node_configs["gpu-h100-1"].mig_config != planned["gpu-h100-1"], (
        "without the record the late deployment changes the node's layout (what this test guards against)"
    )
    assert unrecorded.recheck_seconds == 90, "a new entry: the wait starts again"

    d2 = _waited(d1, ("doc-qa", 2), recorded=True)
    assert d2.node_configs["gpu-h100-1"].mig_config == planned["gpu-h100-1"]
    assert d2.recheck_seconds == 60, "no new entry on that node: its wait goes on"
    late = d2.deployment_statuses["agents/late-arrival"]
    assert late.placed_replicas == 2, "the late deployment is still placed"


def test_the_pending_record_is_only_kept_while_the_entry_is_what_the_node_waits_for() -> None:
    node = {"metadata": {"name": "gpu-0", "labels": {MIG_CONFIG_LABEL: "all-disabled"},
                         "annotations": {MIG_PENDING_ANNOTATION: "slm-abc"}}}  # fmt: skip
    entries = {"slm-abc": [{"devices": "all", "mig-enabled": False}]}
    assert pending_layout(NodeView(node), entries) == "slm-abc"
    assert pending_layout(NodeView(node), {}) is None, "the entry is gone from the ConfigMap"
    relabelled = copy.deepcopy(node)
    relabelled["metadata"]["labels"][MIG_CONFIG_LABEL] = mig_retry_name("slm-abc", 1)
    assert pending_layout(NodeView(relabelled), entries) is None, "the node is on it (an alias) already"
    # the record is removed once the node no longer waits only for the entry's age
    d = decide(_world())  # kubelets sync at once: relabelled in this pass
    assert all(a[MIG_PENDING_ANNOTATION] is None for a in d.node_annotations.values())
    gone = node_patches([node], {}, {"gpu-0": {MIG_PENDING_ANNOTATION: None}})
    assert gone == {"gpu-0": {"metadata": {"annotations": {MIG_PENDING_ANNOTATION: None}}}}
    assert (
        node_patches([{"metadata": {"name": "gpu-0"}}], {}, {"gpu-0": {MIG_PENDING_ANNOTATION: None}}) == {}
    )


# ------------------------------------------------------------------------------------------ retry after failed
def test_retry_names() -> None:
    assert mig_retry_name("slm-ab", 0) == "slm-ab" and mig_retry_name("slm-ab", 2) == "slm-ab-retry2"
    assert mig_retry_of("slm-ab-retry2") == ("slm-ab", 2) and mig_retry_of("slm-ab") == ("slm-ab", 0)
    assert mig_retry_of("slm-ab-retry0") == ("slm-ab-retry0", 0) and mig_retry_of("-retry1") == ("-retry1", 0)


def _failed_on(label_of: Callable[[str], str]) -> tuple[str, str, Any]:
    """A settled pool, then mig-manager reports failed on one MIG node labelled ``label_of(planned config)``; the
    node has no last good MIG config (taken over failed): no rollback."""
    w = _world()
    d1 = decide(w)
    nodes = _apply_node_configs(w, d1)
    node = next(
        n for n in nodes if n["metadata"]["labels"].get(MIG_CONFIG_LABEL, "all-disabled") != "all-disabled"
    )
    node["metadata"]["annotations"].pop(MIG_LAST_GOOD_ANNOTATION)
    base = node["metadata"]["labels"][MIG_CONFIG_LABEL]
    node["metadata"]["labels"].update({MIG_CONFIG_LABEL: label_of(base), MIG_CONFIG_STATE_LABEL: "failed"})
    configs = {**d1.mig_entries, label_of(base): d1.mig_entries[base]}
    return node["metadata"]["name"], base, decide(_world(nodes=nodes, mig_configs=configs))


def test_a_failed_mig_config_is_retried_under_an_alias_of_the_same_content() -> None:
    name, base, d = _failed_on(lambda b: b)
    assert d.node_labels[name][MIG_CONFIG_LABEL] == f"{base}-retry1"
    assert d.mig_entries[f"{base}-retry1"] == d.mig_entries.get(base, d.mig_entries[f"{base}-retry1"])
    name, base, d = _failed_on(lambda b: f"{b}-retry1")
    assert d.node_labels[name][MIG_CONFIG_LABEL] == f"{base}-retry2"
    degraded = next(c for c in d.pool_status.conditions or [] if c.type == "Degraded")  # type: ignore[union-attr]
    assert degraded.reason != "MigConfigFailed"


def test_a_node_on_an_alias_that_succeeded_keeps_it() -> None:
    w = _world()
    d1 = decide(w)
    nodes = _apply_node_configs(w, d1)
    node = next(
        n for n in nodes if n["metadata"]["labels"].get(MIG_CONFIG_LABEL, "all-disabled") != "all-disabled"
    )
    base = node["metadata"]["labels"][MIG_CONFIG_LABEL]
    node["metadata"]["labels"][MIG_CONFIG_LABEL] = f"{base}-retry1"  # state: success
    d = decide(_world(nodes=nodes, mig_configs={**d1.mig_entries, f"{base}-retry1": d1.mig_entries[base]}))
    assert node["metadata"]["name"] not in d.node_labels and f"{base}-retry1" in d.mig_entries


def test_when_every_try_failed_the_pool_is_degraded_and_names_the_node() -> None:
    name, base, d = _failed_on(lambda b: mig_retry_name(b, MIG_CONFIG_MAX_TRIES - 1))
    assert name not in d.node_labels
    degraded = next(c for c in d.pool_status.conditions or [] if c.type == "Degraded")  # type: ignore[union-attr]
    assert degraded.status == "True" and degraded.reason == "MigConfigFailed"
    assert f"{name} ({base}-retry2)" in degraded.message and "after 3 tries" in degraded.message
    assert d.mig_failed == {name: f"{base}-retry2"}  # slm_node_mig_config_failed (SLMMigConfigFailed alert)
    assert name in d.config_pending and "failed" in d.config_pending[name]


# ------------------------------------------------------------------------------------------ pending configs
def test_pending_configs_names_each_node_not_configured_yet_and_why() -> None:
    """What slm_node_config_pending shows: the first node gate that fails, per node; a configured node is not
    pending, whatever pods do (the previous-pod and relabel gates are not node configuration)."""
    ctx, _ = creation({MIG_CONFIG_STATE_LABEL: "pending"}, previous=[pod("chat-1-old", deleting=True)])
    assert pending_configs(ctx.targets) == {NODE: "node gpu-0: MIG config slm-abc is pending"}
    ctx, _ = creation(previous=[pod("chat-1-old")])  # configured, relabelled in this pass, a pod terminating
    assert pending_configs(ctx.targets) == {}
    assert [g.__name__ for g in NODE_CONFIG_GATES.gates] == [
        g.__name__ for g in MOVE_TARGET_GATES.gates if g is not node_not_relabelled
    ]


def test_decide_reports_pending_nodes_until_they_are_configured() -> None:
    w = _world()
    d1 = decide(w)
    assert d1.config_pending and d1.config_pending.keys() <= d1.node_configs.keys() and not d1.mig_failed
    d2 = decide(_world(nodes=_apply_node_configs(w, d1), mig_configs=dict(d1.mig_entries)))
    assert d2.config_pending == {}
