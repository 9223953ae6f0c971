"""The operator's decisions for a pool, without a cluster: what it writes, in which order, and when it waits."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    BORROWED_RESERVATION_LABEL,
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    FINETUNE_JOB_LABEL,
    GPU_REPLICAS_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_STATE_LABEL,
    ORIGINAL_LABELS_ANNOTATION,
    PLACEMENT_ANNOTATION,
    SHARING_STRATEGY_LABEL,
)
from slm_operator.manifests import load_manifests
from slm_operator.reconcile import Decisions, World, decide, pending_mig_entries, restore_labels
from slm_operator.render import OperatorConfig
from slm_operator.render.configmaps import (
    MIG_PARTED_KEY,
    configs_in_use,
    mig_parted_data,
    mig_parted_document,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-26T10:00:00Z"


def _world(
    pool_name: str = "h100",
    pods: list[dict[str, Any]] | None = None,
    nodes: Any = None,
    mig_configs: dict[str, Any] | None = None,
    sync_seconds: float = 0.0,
    now: str = NOW,
    mig_entry_times: dict[str, str] | None = None,
) -> World:
    """The example pool's world; by default kubelets sync ConfigMaps at once (the sync gate has its own tests)."""
    m = load_manifests([ROOT / "examples"])
    pool = next(p for p in m.pools if p.metadata.name == pool_name)
    deps = [d for d in m.deployments if d.spec.pool_ref.name == pool_name]
    for i, d in enumerate(deps):
        d.metadata.uid = f"uid-{i}"
        d.metadata.generation = 1
        d.metadata.creation_timestamp = f"2026-11-26T09:{i:02d}:00Z"
    return World(
        pool=pool,
        nodes=nodes if nodes is not None else copy.deepcopy(m.nodes),
        deployments=deps,
        pods=pods or [],
        foreign_gpu_pods=[],
        mig_configs=mig_configs or {},
        now=now,
        cfg=OperatorConfig(configmap_sync_seconds=sync_seconds),
        mig_entry_times=mig_entry_times or {},
    )


def _apply_node_configs(world: World, d: Decisions) -> list[dict[str, Any]]:
    """What the NVIDIA GPU Operator does with the labels: apply the config and report it (GFD labels)."""
    nodes = copy.deepcopy(world.nodes)
    for n in nodes:
        name = n["metadata"]["name"]
        if name not in d.node_labels:
            continue
        labels = n["metadata"]["labels"]
        labels.update(d.node_labels[name])
        labels[MIG_CONFIG_STATE_LABEL] = "success"
        entry = d.device_plugin_entries[labels[DEVICE_PLUGIN_CONFIG_LABEL]].get("sharing") or {}
        if "mps" in entry or "timeSlicing" in entry:
            res = (entry.get("mps") or entry.get("timeSlicing"))["resources"][0]
            labels[SHARING_STRATEGY_LABEL] = "mps" if "mps" in entry else "time-slicing"
            labels[GPU_REPLICAS_LABEL] = str(res["replicas"])
        else:
            labels[SHARING_STRATEGY_LABEL] = "none"
            labels[GPU_REPLICAS_LABEL] = "1"
        n["metadata"].setdefault("annotations", {}).update(d.node_annotations.get(name, {}))
    return nodes


def _running(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(pods)
    for p in out:
        rec = json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])
        p["spec"]["nodeName"] = rec["node"]
        p["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return out


def _converge(pool: str = "h100") -> tuple[World, Decisions]:
    """Three passes: configure nodes, create pods, observe them running (the ConfigMap holds the configs)."""
    w = _world(pool)
    d1 = decide(w)
    configs = dict(d1.mig_entries)
    w2 = _world(pool, nodes=_apply_node_configs(w, d1), mig_configs=configs)
    d2 = decide(w2)
    w3 = _world(pool, pods=_running(d2.pods_create), nodes=w2.nodes, mig_configs=configs)
    return w3, decide(w3)


def test_first_pass_configures_nodes_and_waits_before_creating_pods() -> None:
    w = _world()
    d = decide(w)
    assert d.plan is not None and d.plan.pool.replicas_unplaced == 0
    assert set(d.node_labels) == {"gpu-h100-0", "gpu-h100-1"}
    for labels in d.node_labels.values():
        assert set(labels) == {MIG_CONFIG_LABEL, DEVICE_PLUGIN_CONFIG_LABEL}
    # MIG entries named by the labels are in the ConfigMap content, legal for mig-parted's schema.
    for labels in d.node_labels.values():
        name = labels[MIG_CONFIG_LABEL]
        if name != "all-disabled":
            for entry in d.mig_entries[name]:
                assert entry["device-filter"] == ["0x233010DE", "0x233110DE", "0x232210DE", "0x232410DE"]
                assert isinstance(entry["devices"], list) and isinstance(entry["mig-enabled"], bool)
    assert d.pods_create == [], "no pod before the node reports the new configuration"
    assert d.waiting
    # The labels the pool found are recorded so that deleting the pool can put them back.
    original = json.loads(d.node_annotations["gpu-h100-0"][ORIGINAL_LABELS_ANNOTATION])
    assert original == {MIG_CONFIG_LABEL: "all-disabled", DEVICE_PLUGIN_CONFIG_LABEL: None}
    st = d.deployment_statuses["agents/invoice-extractor"]
    progressing = next(c for c in st.conditions or [] if c.type == "Progressing")
    assert progressing.status.value == "True" and progressing.reason == "WaitingForNodeReconfiguration"


def test_pods_follow_the_plan_once_nodes_are_configured() -> None:
    w = _world()
    d1 = decide(w)
    w2 = _world(nodes=_apply_node_configs(w, d1), mig_configs=dict(d1.mig_entries))
    d2 = decide(w2)
    assert d2.node_labels == {}
    placed = sum(dp.placed for dp in d2.plan.deployments)  # type: ignore[union-attr]
    assert len(d2.pods_create) == placed == 18
    for pod in d2.pods_create:
        rec = json.loads(pod["metadata"]["annotations"][PLACEMENT_ANNOTATION])
        spec = pod["spec"]
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert term[0]["matchFields"][0]["values"] == [rec["node"]]
        limits = spec["containers"][0]["resources"]["limits"]
        if rec["mechanism"] == "MIG":
            assert limits == {f"nvidia.com/mig-{rec['migProfile']}": "1"}
        elif rec["mechanism"] in ("MPS", "TimeSlicing"):
            assert limits == {"nvidia.com/gpu.shared": "1"}
        else:
            assert limits == {"nvidia.com/gpu": "1"}
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" in env) == (rec["mechanism"] == "MPS")
        assert spec["priorityClassName"].startswith("slm-")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "SLMDeployment"
    qos = {p["metadata"]["labels"]["slm.io/qos"] for p in d2.pods_create}
    assert qos == {"Guaranteed", "Burstable", "BestEffort"}


def test_converged_pool_is_left_alone_and_reports_ready() -> None:
    _, d = _converge()
    assert d.pods_create == [] and d.pods_delete == [] and d.node_labels == {}
    assert not d.waiting
    for key, st in d.deployment_statuses.items():
        ready = next(c for c in st.conditions or [] if c.type == "Ready")
        assert ready.status.value == "True", key
        assert all(c.observed_generation == 1 for c in st.conditions or [])
    assert d.pool_status is not None and d.pool_status.gpus_used >= 1


def test_decisions_are_deterministic() -> None:
    w, _ = _converge()
    a, b = decide(w), decide(copy.deepcopy(w))
    assert a.plan == b.plan and a.pods_create == b.pods_create and a.node_labels == b.node_labels


@pytest.mark.parametrize("stage", ["first pass", "converged"])
def test_a_pass_never_changes_the_objects_it_reads(stage: str) -> None:
    """The shell hands the core the watch caches' own objects (controllers/cache.py): a pass that changed one
    would change what every later pass reads."""
    w = _world("h100") if stage == "first pass" else _converge()[0]
    raw = copy.deepcopy((w.nodes, w.pods, w.foreign_gpu_pods, w.resource_quotas, w.mig_configs))
    decide(w)
    assert (w.nodes, w.pods, w.foreign_gpu_pods, w.resource_quotas, w.mig_configs) == raw


def test_scale_down_deletes_only_that_deployment() -> None:
    w, _ = _converge()
    dep = next(d for d in w.deployments if d.metadata.name == "intent-router")
    dep.spec.replicas = 2
    d = decide(w)
    deleted = {(ns, name) for ns, name, _ in d.pods_delete}
    assert deleted and all(name.startswith("intent-router-") for _, name in deleted)
    assert len(deleted) == 2
    assert d.pods_create == []


def test_suspend_frees_every_share() -> None:
    w, _ = _converge()
    dep = next(d for d in w.deployments if d.metadata.name == "tool-caller")
    dep.spec.suspend = True
    d = decide(w)
    assert {n for _, n, _ in d.pods_delete} == {
        p["metadata"]["name"] for p in w.pods if p["metadata"]["labels"]["slm.io/deployment"] == "tool-caller"
    }
    st = d.deployment_statuses["agents/tool-caller"]
    ready = next(c for c in st.conditions or [] if c.type == "Ready")
    assert ready.reason == "Suspended"


def test_unknown_model_becomes_a_condition() -> None:
    w, _ = _converge()
    dep = next(d for d in w.deployments if d.metadata.name == "summarizer")
    dep.spec.model.name = "acme/secret-model"
    d = decide(w)
    st = d.deployment_statuses["agents/summarizer"]
    placed = next(c for c in st.conditions or [] if c.type == "Placed")
    assert placed.status.value == "False" and placed.reason == "UnknownModel"
    assert "`spec.model.architecture`" in placed.message
    event = next(e for e in d.events if e.reason == "Unplaceable")
    # posted on the deployment itself: `kubectl describe` shows it there
    assert event.involved_object() == {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "summarizer", "namespace": "agents", "uid": dep.metadata.uid},
    }


def test_labels_wait_for_pods_to_drain() -> None:
    from slm_operator.api.v1alpha1 import Mechanism

    w, _ = _converge()
    # MIG is no longer allowed: the MIG replicas must leave before the nodes' MIG layouts may change.
    w.pool.spec.sharing.mechanisms = [Mechanism.EXCLUSIVE, Mechanism.MPS, Mechanism.TIME_SLICING]
    d = decide(w)
    mig_pods = {
        p["metadata"]["name"]
        for p in w.pods
        if json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])["mechanism"] == "MIG"
    }
    assert mig_pods and mig_pods <= {n for _, n, _ in d.pods_delete}
    nodes_with_mig = {
        json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])["node"]
        for p in w.pods
        if p["metadata"]["name"] in mig_pods
    }
    assert not (nodes_with_mig & set(d.node_labels)), "a node is relabelled while its pods still run"
    assert d.waiting
    # Once the pods are gone, the labels change.
    remaining = [p for p in w.pods if p["metadata"]["name"] not in {n for _, n, _ in d.pods_delete}]
    w2 = _world(pods=remaining, nodes=w.nodes, mig_configs=w.mig_configs)
    w2.pool.spec.sharing.mechanisms = w.pool.spec.sharing.mechanisms
    d2 = decide(w2)
    assert nodes_with_mig & set(d2.node_labels)


def test_restore_labels_gives_back_what_the_pool_found() -> None:
    node = {
        "metadata": {
            "name": "n",
            "annotations": {
                ORIGINAL_LABELS_ANNOTATION: json.dumps(
                    {MIG_CONFIG_LABEL: "all-balanced", DEVICE_PLUGIN_CONFIG_LABEL: None}
                )
            },
        }
    }
    assert restore_labels(node) == {MIG_CONFIG_LABEL: "all-balanced", DEVICE_PLUGIN_CONFIG_LABEL: None}
    assert restore_labels({"metadata": {"name": "n"}}) == {}


@pytest.mark.parametrize("pool", ["l4"])
def test_mps_pods_get_memory_caps(pool: str) -> None:
    w = _world(pool)
    d1 = decide(w)
    d2 = decide(_world(pool, nodes=_apply_node_configs(w, d1)))
    mps = [
        p
        for p in d2.pods_create
        if json.loads(p["metadata"]["annotations"][PLACEMENT_ANNOTATION])["mechanism"] == "MPS"
    ]
    assert mps
    for p in mps:
        env = {e["name"]: e["value"] for e in p["spec"]["containers"][0]["env"]}
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].startswith("0=") and env[
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
        ].endswith("M")


def test_new_adapter_rolls_one_replica_at_a_time() -> None:
    w, _ = _converge()
    dep = next(d for d in w.deployments if d.metadata.name == "invoice-extractor")
    dep.metadata.annotations = {"slm.io/promoted-adapter": "pvc://adapters/extractor/v1"}
    d = decide(w)
    rolled = [(n, r) for _, n, r in d.pods_delete if n.startswith("invoice-extractor-")]
    assert len(rolled) == 1 and rolled[0][1] == "RollingUpdate"
    assert d.waiting
    # While the replacement is not ready, nothing else of that deployment is touched.
    gone = rolled[0][0]
    pods = [p for p in w.pods if p["metadata"]["name"] != gone]
    w2 = _world(pods=pods, nodes=w.nodes, mig_configs=w.mig_configs)
    for x in w2.deployments:  # the status the previous pass wrote
        x.status = d.deployment_statuses[f"{x.metadata.namespace}/{x.metadata.name}"]
    next(
        x for x in w2.deployments if x.metadata.name == "invoice-extractor"
    ).metadata.annotations = dep.metadata.annotations
    d2 = decide(w2)
    new = [p for p in d2.pods_create if p["metadata"]["labels"]["slm.io/deployment"] == "invoice-extractor"]
    assert len(new) == 1
    assert not [n for _, n, _ in d2.pods_delete if n.startswith("invoice-extractor-")]


def test_a_rollback_replaces_the_unready_replica_first_and_leaves_the_others() -> None:
    """A FineTuneJob rolls back when the one replica on the new adapter never becomes Ready: restoring the
    annotations must replace that replica at once (the others are Ready), not wait behind it."""
    w, _ = _converge()
    dep = next(d for d in w.deployments if d.metadata.name == "invoice-extractor")
    dep.metadata.annotations = {ADAPTER_ANNOTATION: "pvc://adapters/extractor/v2"}
    gone = next(n for _, n, r in decide(w).pods_delete if r == "RollingUpdate")
    w2 = _world(
        pods=[p for p in w.pods if p["metadata"]["name"] != gone], nodes=w.nodes, mig_configs=w.mig_configs
    )
    for x in w2.deployments:
        x.metadata.annotations = dep.metadata.annotations if x.metadata.name == dep.metadata.name else None
    (new_pod,) = [
        p for p in decide(w2).pods_create if p["metadata"]["labels"][DEPLOYMENT_LABEL] == dep.metadata.name
    ]
    new_pod = copy.deepcopy(new_pod)
    new_pod["spec"]["nodeName"] = json.loads(new_pod["metadata"]["annotations"][PLACEMENT_ANNOTATION])["node"]
    new_pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    # rolled back: the annotation is gone again, and the new replica is not Ready
    w3 = _world(pods=[*w2.pods, new_pod], nodes=w.nodes, mig_configs=w.mig_configs)
    d3 = decide(w3)
    rolled = [(n, r) for _, n, r in d3.pods_delete if n.startswith("invoice-extractor-")]
    assert rolled == [(new_pod["metadata"]["name"], "RollingUpdate")], (
        "only the replica on the failed weights"
    )


def test_a_pod_the_scheduler_cannot_place_is_explained_in_the_status() -> None:
    """The plan gave the replica a share, but a taint (or host memory) keeps its pod Pending: the status says
    which replica and quotes the scheduler, instead of a bare "RollingOut"."""
    w, _ = _converge()
    message = "0/5 nodes are available: 1 node(s) had untolerated taint {maintenance: true}."
    victim = next(p for p in w.pods if p["metadata"]["labels"]["slm.io/deployment"] == "invoice-extractor")
    ordinal = int(victim["metadata"]["labels"]["slm.io/replica"])
    victim["spec"].pop("nodeName")
    victim["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ],
    }
    d = decide(w)
    assert d.pods_create == [] and d.pods_delete == [], "the operator does not fight the scheduler"
    st = d.deployment_statuses["agents/invoice-extractor"]
    progressing = next(c for c in st.conditions or [] if c.type == "Progressing")
    assert progressing.status.value == "True" and progressing.reason == "PodUnschedulable"
    assert f"the pod of replica {ordinal} cannot be scheduled on its planned node" in progressing.message
    assert message in progressing.message
    placement = next(p for p in st.placements or [] if p.replica == ordinal)
    assert placement.state == "Pending" and placement.reason.startswith("unschedulable: 0/5 nodes")
    ready = next(c for c in st.conditions or [] if c.type == "Ready")
    assert ready.status.value == "False" and ready.reason == "PartiallyReady"
    others = d.deployment_statuses["agents/tool-caller"]
    assert next(c for c in others.conditions or [] if c.type == "Progressing").reason == "Complete"


def _trainer_pod(node: str, borrows: str | None, phase: str = "Running") -> dict[str, Any]:
    labels = {FINETUNE_JOB_LABEL: "lora"} | ({BORROWED_RESERVATION_LABEL: borrows} if borrows else {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"lora-train-{node}", "namespace": "agents", "labels": labels},
        "spec": {
            "nodeName": node,
            "priorityClassName": "slm-finetune",
            "containers": [{"name": "train", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {"phase": phase},
    }


def test_reserved_gpus_a_trainer_borrows_are_not_also_lent_to_besteffort() -> None:
    """A BestEffort deployment too big for the pool borrows both idle reserved GPUs; once a FineTuneJob's
    trainer runs on one of them, the pool lends only the other, and the status says who holds which."""
    first = decide(_world())
    nodes = _apply_node_configs(_world(), first)  # the nodes carry the reservation's GPUs (slm.io/gpu-roles)
    holder = next(
        n["metadata"]["name"]
        for n in nodes
        if "llm-fallback" in n["metadata"].get("annotations", {}).get(GPU_ROLES_ANNOTATION, "")
    )

    def with_pods(*foreign: dict[str, Any]) -> Any:
        w = _world(nodes=nodes)
        next(d for d in w.deployments if d.metadata.name == "json-repair").spec.replicas = 64
        w.foreign_gpu_pods = list(foreign)
        return decide(w).pool_status.reservations[0]

    assert (with_pods().lent, with_pods().lent_to_fine_tuning) == (2, 0)
    borrowed = with_pods(_trainer_pod(holder, "llm-fallback"))
    assert (borrowed.lent, borrowed.lent_to_fine_tuning, borrowed.in_use) == (1, 1, 0)
    # a trainer on its segment, one that finished, one borrowing another pool's reservation: nothing is held
    for pod in (
        _trainer_pod(holder, None),
        _trainer_pod(holder, "llm-fallback", phase="Failed"),
        _trainer_pod("gpu-h100-0", "llm-fallback"),
        _trainer_pod(holder, "other-reservation"),
    ):
        st = with_pods(pod)
        assert (st.lent, st.lent_to_fine_tuning) == (2, 0), pod


def test_another_pools_pass_keeps_the_mig_entries_a_pool_waits_on_until_it_names_them() -> None:
    """Both pools merge into mig-manager's one ConfigMap. The h100 pool writes its entries, then waits
    configmap_sync_seconds before it labels its nodes; an l4 pass in between must not drop them as unused (it
    did: each l4 pass removed them with their written time, so the h100 wait restarted and MIG never came)."""
    sync = 90
    h100 = decide(_world("h100", sync_seconds=sync))
    assert h100.mig_entries and not any(
        n["metadata"]["labels"].get(MIG_CONFIG_LABEL) in h100.mig_entries for n in _world("h100").nodes
    ), "the entries are written before any node names them"
    written = dict(h100.mig_entry_times)
    for seconds_later, kept in ((30, True), (200, True), (2 * sync + 121, False)):  # the margin is 120 s
        now = f"2026-11-26T10:{seconds_later // 60:02d}:{seconds_later % 60:02d}Z"
        l4 = _world(
            "l4", sync_seconds=sync, now=now, mig_configs=dict(h100.mig_entries), mig_entry_times=written
        )
        d = decide(l4)
        in_use = configs_in_use(l4.nodes, MIG_CONFIG_LABEL, d.mig_entries) | pending_mig_entries(l4)
        current = {MIG_PARTED_KEY: mig_parted_document(h100.mig_entries)}
        merged = yaml.safe_load((mig_parted_data(current, in_use, d.mig_entries) or current)[MIG_PARTED_KEY])[
            "mig-configs"
        ]
        assert (set(h100.mig_entries) <= set(merged)) is kept, (seconds_later, sorted(merged))
        assert set(d.mig_entries) <= set(merged)  # the l4 pool's own entries, always
