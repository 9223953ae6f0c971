"""The shell (controllers/) against an in-memory API (tests/fake_kube.py): what a user sees in the cluster."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from fake_kube import FakeKube
from slm_operator import metrics
from slm_operator.api.v1alpha1 import GPUPool, SLMDeployment
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    CONFIG_WRITTEN_ANNOTATION,
    DEPLOYMENT_LABEL,
    DEVICE_PLUGIN_CONFIG_LABEL,
    FINETUNE_JOB_LABEL,
    GPU_REPLICAS_LABEL,
    GPU_ROLES_ANNOTATION,
    MIG_CONFIG_LABEL,
    MIG_CONFIG_STATE_LABEL,
    MIG_LAST_GOOD_ANNOTATION,
    MIG_MANAGER_REFRESH_ANNOTATION,
    MIG_PENDING_ANNOTATION,
    MIG_ROLLBACK_ANNOTATION,
    ORIGINAL_LABELS_ANNOTATION,
    POOL_LABEL,
    SHARING_STRATEGY_LABEL,
    SPEC_HASH_ANNOTATION,
)
from slm_operator.controllers import handlers
from slm_operator.controllers.context import OperatorContext, memo_for
from slm_operator.controllers.finetune import FineTuneReconciler
from slm_operator.controllers.pools import CREATE_CONCURRENCY, WAITING_POLL_SECONDS, PoolReconciler
from slm_operator.controllers.shell import strip
from slm_operator.manifests import load_manifests
from slm_operator.render import EXCLUSIVE_CONFIG, OperatorConfig, deployment_spec_hash

ROOT = Path(__file__).resolve().parent.parent
CFG = OperatorConfig(configmap_sync_seconds=0)  # kubelets sync at once (the sync gate has its own tests)
NS = CFG.nvidia_namespace


def _cluster(*extra: dict[str, Any]) -> FakeKube:
    """The examples (pools, deployments, FineTuneJobs, nodes) as the API server would hold them."""
    m = load_manifests([ROOT / "examples"])
    fake = FakeKube(*m.nodes, *[o for o in m.other if o.get("kind") == "Namespace"], *extra)
    for obj in [*m.pools, *m.deployments, *m.finetune_jobs]:
        raw = obj.to_k8s()
        raw["metadata"]["creationTimestamp"] = "2026-11-26T09:00:00Z"
        fake.add(raw)
    return fake


def _dp_configmap(data: dict[str, str]) -> dict[str, Any]:
    meta = {"name": CFG.device_plugin_configmap, "namespace": NS}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _gpu_operator_applies(fake: FakeKube) -> None:
    """What the NVIDIA GPU Operator does with the labels: apply the configs and report them (GFD labels)."""
    cm = fake.peek("ConfigMap", CFG.device_plugin_configmap, NS)
    assert cm is not None
    for node in fake.of_kind("Node"):
        labels = node["metadata"]["labels"]
        if DEVICE_PLUGIN_CONFIG_LABEL not in labels or not node["metadata"]["name"].startswith("gpu-h100"):
            continue
        labels[MIG_CONFIG_STATE_LABEL] = "success"
        sharing = yaml.safe_load(cm["data"][labels[DEVICE_PLUGIN_CONFIG_LABEL]]).get("sharing") or {}
        shared = sharing.get("mps") or sharing.get("timeSlicing")
        labels[SHARING_STRATEGY_LABEL] = (
            "none" if not shared else ("mps" if "mps" in sharing else "time-slicing")
        )
        labels[GPU_REPLICAS_LABEL] = str(shared["resources"][0]["replicas"]) if shared else "1"


def _pods_run(fake: FakeKube) -> None:
    for pod in fake.of_kind("Pod"):
        placement = json.loads(pod["metadata"]["annotations"]["slm.io/placement"])
        pod["spec"]["nodeName"] = placement["node"]
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    assert obj is not None
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


# ------------------------------------------------------------------------------------------- GPUPool


def test_a_pool_configures_its_nodes_then_runs_its_replicas_and_rewrites_nothing_once_settled() -> None:
    # The device plugin ConfigMap already holds an entry an L4 node of the other pool uses, and a stale one.
    fake = _cluster(_dp_configmap({EXCLUSIVE_CONFIG: "x", "slm-ts-3": "other pool's", "slm-ts-7": "stale"}))
    l4 = fake.peek("Node", "gpu-l4-0")
    assert l4 is not None
    l4["metadata"]["labels"][DEVICE_PLUGIN_CONFIG_LABEL] = "slm-ts-3"
    pools = PoolReconciler(fake.as_kube(), CFG)

    assert pools.reconcile("h100") is not None, "waits for the GPU Operator"
    h100 = [n for n in fake.of_kind("Node") if n["metadata"]["name"].startswith("gpu-h100")]
    for node in h100:
        assert {MIG_CONFIG_LABEL, DEVICE_PLUGIN_CONFIG_LABEL} <= set(node["metadata"]["labels"])
        assert ORIGINAL_LABELS_ANNOTATION in node["metadata"]["annotations"]
    dp = fake.peek("ConfigMap", CFG.device_plugin_configmap, NS)
    assert dp is not None and dp["data"]["slm-ts-3"] == "other pool's", "another pool's entry is kept"
    assert "slm-ts-7" not in dp["data"], "an entry no node names is dropped"
    for node in h100:
        assert node["metadata"]["labels"][DEVICE_PLUGIN_CONFIG_LABEL] in dp["data"]
    mig = fake.peek("ConfigMap", CFG.mig_configmap, NS)
    assert mig is not None
    named = yaml.safe_load(mig["data"]["config.yaml"])["mig-configs"]
    assert all(n["metadata"]["labels"][MIG_CONFIG_LABEL] in named for n in h100)
    assert fake.of_kind("Pod") == [], "no pod before the nodes report the new configuration"
    assert _condition(fake.peek("GPUPool", "h100"), "Ready")["reason"] == "Reconfiguring"

    _gpu_operator_applies(fake)
    pools.reconcile("h100")
    pods = fake.of_kind("Pod")
    assert len(pods) == 18 and all(p["metadata"]["labels"][POOL_LABEL] == "h100" for p in pods)
    _pods_run(fake)
    pools.reconcile("h100")
    assert _condition(fake.peek("SLMDeployment", "invoice-extractor", "agents"), "Ready")["status"] == "True"
    assert _condition(fake.peek("GPUPool", "h100"), "Ready")["reason"] == "Planned"

    before = len(fake.writes)
    assert pools.reconcile("h100") is None
    # nothing is written: no status, no node, no ConfigMap, no pod, and no Service (each already holds what the
    # pass would apply)
    assert fake.writes[before:] == []
    fake.objects[("Service", "agents", "invoice-extractor")]["spec"]["ports"][0]["port"] = 9999
    pools.reconcile("h100")
    assert fake.writes[before:] == [("apply", "Service", "invoice-extractor")], "a Service changed by hand"


def test_no_replica_starts_on_a_mig_layout_mig_manager_has_not_reported_for_the_new_config() -> None:
    """The examples' H100 nodes say `mig.config.state=success` for all-disabled. Relabelling them to the planned
    config removes that answer: while mig-manager is down (it never acts here) no pod is created for a MIG
    instance that does not exist, and the replicas say what they wait for."""
    fake = _cluster()
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    for name in ("gpu-h100-0", "gpu-h100-1"):
        node = fake.peek("Node", name)
        assert node is not None
        labels = node["metadata"]["labels"]
        assert labels[MIG_CONFIG_LABEL] != "all-disabled" and MIG_CONFIG_STATE_LABEL not in labels, labels
    for _ in range(2):
        pools.reconcile("h100")
    assert fake.of_kind("Pod") == []
    dep = fake.peek("SLMDeployment", "invoice-extractor", "agents")
    assert dep is not None
    assert any("not applied yet" in (p.get("reason") or "") for p in dep["status"]["placements"]), dep[
        "status"
    ]

    _gpu_operator_applies(fake)  # mig-manager is back: success for the new config
    pools.reconcile("h100")
    assert fake.of_kind("Pod")


@pytest.mark.parametrize(("sync", "again"), [(90.0, WAITING_POLL_SECONDS), (3.0, 3.0)])
def test_a_pass_waiting_for_a_mig_entry_to_age_comes_back_when_it_has_not_every_second(
    sync: float, again: float
) -> None:
    """The first pass writes the MIG layouts' entries; a node is relabelled only once its entry is
    ``configmap_sync_seconds`` old. The daemon's next pass is due when that gate opens, or after
    WAITING_POLL_SECONDS when it opens later (the node and pod watches wake the pool for everything else): with
    a one-second poll a 1,000-deployment pool re-planned about 60 times per new layout (bench-e2e-1000)."""
    fake = _cluster()
    pools = PoolReconciler(fake.as_kube(), OperatorConfig(configmap_sync_seconds=sync))
    assert pools.reconcile("h100") == pytest.approx(again, abs=0.5)
    assert not any(
        n["metadata"]["labels"].get(MIG_CONFIG_LABEL, "all-disabled") != "all-disabled"
        for n in fake.of_kind("Node")
    ), "no node is relabelled before its entry has aged"


def _earlier(text: str, seconds: float) -> str:
    t = datetime.fromisoformat(text.replace("Z", "+00:00")) - timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_pass_annotates_the_mig_manager_pod_of_a_node_waiting_for_its_entry() -> None:
    """With the kubelets' 90 s sync, a MIG node whose mig-manager pod runs (found by --mig-manager-selector in
    the NVIDIA namespace) gets that pod annotated once its new entry is 5 s old, and is relabelled 5 s after
    that; a pod of another selector is left alone."""
    cfg = OperatorConfig(configmap_sync_seconds=90, mig_manager_selector="app=nvidia-mig-manager")

    def mig_manager(node: str, app: str) -> dict[str, Any]:
        meta = {"name": f"mig-manager-{node}", "namespace": NS, "labels": {"app": app}}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"nodeName": node},
                "status": {"phase": "Running"}}  # fmt: skip

    fake = _cluster(mig_manager("gpu-h100-0", "nvidia-mig-manager"), mig_manager("gpu-h100-1", "other"))
    pools = PoolReconciler(fake.as_kube(), cfg)
    pools.reconcile("h100")
    waiting = {
        n["metadata"]["name"]: n["metadata"]["annotations"][MIG_PENDING_ANNOTATION]
        for n in fake.of_kind("Node")
        if MIG_PENDING_ANNOTATION in n["metadata"].get("annotations", {})
    }
    assert {"gpu-h100-0", "gpu-h100-1"} <= set(waiting), waiting

    def age_entries(seconds: float) -> None:
        cm = fake.peek("ConfigMap", cfg.mig_configmap, NS)
        assert cm is not None
        times = json.loads(cm["metadata"]["annotations"][CONFIG_WRITTEN_ANNOTATION])
        cm["metadata"]["annotations"][CONFIG_WRITTEN_ANNOTATION] = json.dumps(
            {k: _earlier(v, seconds) for k, v in times.items()}
        )

    before = metrics.METRICS.mig_manager_refreshes.labels("h100")._value.get()
    age_entries(6)
    pools.reconcile("h100")
    pod = fake.peek("Pod", "mig-manager-gpu-h100-0", NS)
    other = fake.peek("Pod", "mig-manager-gpu-h100-1", NS)
    assert pod is not None and other is not None
    refreshed = pod["metadata"]["annotations"][MIG_MANAGER_REFRESH_ANNOTATION]
    assert "annotations" not in other["metadata"]
    assert metrics.METRICS.mig_manager_refreshes.labels("h100")._value.get() == before + 1
    labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in fake.of_kind("Node")}
    assert labels["gpu-h100-0"].get(MIG_CONFIG_LABEL) != waiting["gpu-h100-0"], "only 5 s after the refresh"
    # 11 s later: the refreshed node is relabelled, the other one still waits for the 90 s sync
    age_entries(11)
    pod["metadata"]["annotations"][MIG_MANAGER_REFRESH_ANNOTATION] = _earlier(refreshed, 11)
    pools.reconcile("h100")
    labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in fake.of_kind("Node")}
    assert labels["gpu-h100-0"][MIG_CONFIG_LABEL] == waiting["gpu-h100-0"]
    assert labels["gpu-h100-1"].get(MIG_CONFIG_LABEL) != waiting["gpu-h100-1"]


def test_plan_emit_shows_what_the_shell_writes_node_patches_configmaps_services_then_pods() -> None:
    """`slm-operator plan --emit` (slm_operator.emit) and the shell share the core: same objects."""
    from slm_operator.emit import emit

    emitted = {
        (o.kind, o.namespace, o.name): o.obj for o in emit(load_manifests([ROOT / "examples"]), CFG).objects
    }
    fake = _cluster()
    pools = PoolReconciler(fake.as_kube(), CFG)
    for pool in ("h100", "l4", "shared-a100"):  # shared-a100: examples/tenants/
        pools.reconcile(pool)
    by_kind: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for (kind, ns, name), obj in emitted.items():
        by_kind.setdefault(kind, {})[(ns, name)] = obj
    for (ns, name), cm in by_kind["ConfigMap"].items():
        written = fake.peek("ConfigMap", name, ns)
        assert written is not None and written["data"] == cm["data"], name
    for (_, name), patch in by_kind["Node"].items():
        node = fake.peek("Node", name)
        assert node is not None
        for part in ("labels", "annotations"):
            wanted = patch["metadata"][part]  # a merge patch: None removes the key
            set_ = {k: v for k, v in wanted.items() if v is not None}
            assert set_.items() <= node["metadata"][part].items(), (name, part)
            assert not {k for k, v in wanted.items() if v is None} & set(node["metadata"][part]), (name, part)
    assert {
        (n["metadata"]["name"])
        for n in fake.of_kind("Node")
        if GPU_ROLES_ANNOTATION in n["metadata"].get("annotations", {})
    } == {name for _, name in by_kind["Node"]}
    for (ns, name), svc in by_kind["Service"].items():
        written = fake.peek("Service", name, ns)
        assert written is not None and written["spec"] == svc["spec"], name
    # Once every node reports its configuration, the operator creates exactly the pods emit showed.
    cm = fake.peek("ConfigMap", CFG.device_plugin_configmap, NS)
    assert cm is not None
    for node in fake.of_kind("Node"):
        labels = node["metadata"]["labels"]
        if DEVICE_PLUGIN_CONFIG_LABEL in labels:
            labels[MIG_CONFIG_STATE_LABEL] = "success"
            sharing = yaml.safe_load(cm["data"][labels[DEVICE_PLUGIN_CONFIG_LABEL]]).get("sharing") or {}
            shared = sharing.get("mps") or sharing.get("timeSlicing")
            labels[SHARING_STRATEGY_LABEL] = (
                "none" if not shared else ("mps" if "mps" in sharing else "time-slicing")
            )
            labels[GPU_REPLICAS_LABEL] = str(shared["resources"][0]["replicas"]) if shared else "1"
    for pool in ("h100", "l4", "shared-a100"):
        pools.reconcile(pool)
    pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in fake.of_kind("Pod")}
    assert set(pods) == set(by_kind["Pod"])
    for key, pod in by_kind["Pod"].items():
        created = pods[key]
        assert created["spec"] == pod["spec"] and created["metadata"]["labels"] == pod["metadata"]["labels"]
        assert created["metadata"]["annotations"] == pod["metadata"]["annotations"]


def test_a_configmap_replace_that_loses_a_race_is_redone_on_a_fresh_read() -> None:
    fake = _cluster(_dp_configmap({EXCLUSIVE_CONFIG: "x"}))
    for node in fake.of_kind("Node"):
        if node["metadata"]["name"] == "gpu-l4-1":
            node["metadata"]["labels"][DEVICE_PLUGIN_CONFIG_LABEL] = "slm-mps-4"

    def other_pool_writes(cm: dict[str, Any]) -> None:
        cm["data"]["slm-mps-4"] = "written by the l4 pool meanwhile"

    fake.after_next_read("ConfigMap", CFG.device_plugin_configmap, NS, other_pool_writes)
    PoolReconciler(fake.as_kube(), CFG).reconcile("h100")

    assert fake.count("replace-conflict", "ConfigMap") == 1 and fake.count("replace", "ConfigMap") == 1
    dp = fake.peek("ConfigMap", CFG.device_plugin_configmap, NS)
    assert dp is not None and dp["data"]["slm-mps-4"] == "written by the l4 pool meanwhile"
    h100 = fake.peek("Node", "gpu-h100-0")
    assert h100 is not None and h100["metadata"]["labels"][DEVICE_PLUGIN_CONFIG_LABEL] in dp["data"]


def test_deleting_a_pool_gives_its_nodes_their_labels_back_and_removes_its_replicas() -> None:
    fake = _cluster()
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)
    pools.reconcile("h100")
    assert fake.of_kind("Pod")
    from_api = fake.peek("GPUPool", "h100")  # the pool as the delete handler gets it
    assert from_api is not None
    fake.objects.pop(("GPUPool", "", "h100"))

    pools.release("h100", GPUPool.model_validate(from_api))

    assert [p for p in fake.of_kind("Pod") if p["metadata"]["labels"][POOL_LABEL] == "h100"] == []
    node = fake.peek("Node", "gpu-h100-0")
    assert node is not None
    assert node["metadata"]["labels"][MIG_CONFIG_LABEL] == "all-disabled"
    assert DEVICE_PLUGIN_CONFIG_LABEL not in node["metadata"]["labels"]
    annotations = node["metadata"].get("annotations") or {}
    assert ORIGINAL_LABELS_ANNOTATION not in annotations and GPU_ROLES_ANNOTATION not in annotations
    assert MIG_LAST_GOOD_ANNOTATION not in annotations and MIG_ROLLBACK_ANNOTATION not in annotations
    placed = _condition(fake.peek("SLMDeployment", "invoice-extractor", "agents"), "Placed")
    assert placed["status"] == "False" and placed["reason"] == "PoolNotFound"


class _BarrierKube(FakeKube):
    """Holds the first CREATE_CONCURRENCY pod creates until all of them are in flight (10 s at most)."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        super().__init__(*objects)
        self.barrier = threading.Barrier(CREATE_CONCURRENCY)
        self.arrived = 0
        self.lock = threading.Lock()

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["kind"] == "Pod":
            with self.lock:
                first, self.arrived = self.arrived < CREATE_CONCURRENCY, self.arrived + 1
            if first:
                self.barrier.wait(timeout=10)  # BrokenBarrierError when the creates go out one at a time
        return super().create(obj)


def test_a_pass_creates_its_pods_several_at_a_time() -> None:
    fake = _BarrierKube(*_cluster().objects.values())
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)
    pools.reconcile("h100")
    assert len(fake.of_kind("Pod")) == 18 > CREATE_CONCURRENCY


def test_a_pass_still_running_when_its_pool_is_deleted_leaves_no_replica_and_no_label_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf runs the on.delete handler while the pool's daemon may still be in a pass that gathered before the
    deletion: release() waits for that pass, so the pods it creates are deleted and the nodes restored."""
    fake = _cluster()
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)  # the next pass creates the replicas
    from_api = fake.peek("GPUPool", "h100")
    assert from_api is not None
    gathered, go = threading.Event(), threading.Event()
    gather = pools.gather

    def slow_gather(pool: GPUPool) -> Any:
        world = gather(pool)
        gathered.set()
        go.wait(10)
        return world

    monkeypatch.setattr(pools, "gather", slow_gather)
    in_pass = threading.Thread(target=pools.reconcile, args=("h100",))
    in_pass.start()
    assert gathered.wait(10)
    from_api["metadata"]["deletionTimestamp"] = "2026-11-26T09:05:00Z"  # kopf's finalizer holds it
    deleting = threading.Thread(target=pools.release, args=("h100", GPUPool.model_validate(from_api)))
    deleting.start()
    deleting.join(1)  # returns at once when it does not wait for the pass
    go.set()
    in_pass.join(10)
    deleting.join(10)

    assert [p for p in fake.of_kind("Pod") if p["metadata"]["labels"][POOL_LABEL] == "h100"] == []
    for node in (n for n in fake.of_kind("Node") if n["metadata"]["name"].startswith("gpu-h100")):
        assert node["metadata"]["labels"][MIG_CONFIG_LABEL] == "all-disabled"
        assert ORIGINAL_LABELS_ANNOTATION not in (node["metadata"].get("annotations") or {})


# ------------------------------------------------------------------------------------------- FineTuneJob


def _segment_ready(fake: FakeKube) -> None:
    node = fake.peek("Node", "gpu-h100-1")
    assert node is not None
    node["metadata"].setdefault("annotations", {})[GPU_ROLES_ANNOTATION] = json.dumps({"7": "finetune"})


def _ftj_pass(fake: FakeKube, r: FineTuneReconciler) -> dict[str, Any]:
    body = fake.peek("FineTuneJob", "extractor-lora-1", "agents")
    assert body is not None
    r.reconcile(body)
    out = fake.peek("FineTuneJob", "extractor-lora-1", "agents")
    assert out is not None
    return out


def _finished_training_pod(fake: FakeKube) -> None:
    """The Job completed: its pod's two steps reported through their termination messages."""
    job = fake.of_kind("Job")[0]
    job["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}],
        "completionTime": "2026-11-26T10:00:00Z",
    }
    report = {"records": 2, "skipped": 0, "redacted": {"Email": 1, "PhoneNumber": 1}}
    scores = {"evalScorePercent": 90, "baseScorePercent": 12, "incumbentScorePercent": None}
    fake.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "extractor-lora-1-train-x1",
                "namespace": "agents",
                "labels": {FINETUNE_JOB_LABEL: "extractor-lora-1"},
            },
            "spec": {"nodeName": "gpu-h100-1"},
            "status": {
                "phase": "Succeeded",
                "initContainerStatuses": [
                    {
                        "name": "sanitize",
                        "state": {"terminated": {"exitCode": 0, "message": json.dumps(report)}},
                    }
                ],
                "containerStatuses": [
                    {"name": "train", "state": {"terminated": {"exitCode": 0, "message": json.dumps(scores)}}}
                ],
            },
        }
    )


def _replicas_on_the_new_weights(fake: FakeKube) -> None:
    """The pool's pass rolled the deployment: every replica runs the new spec hash and is Ready."""
    raw = fake.peek("SLMDeployment", "invoice-extractor", "agents")
    assert raw is not None
    dep = SLMDeployment.model_validate(strip(raw))
    for i in range(dep.spec.replicas):
        fake.add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"invoice-extractor-{i}",
                    "namespace": "agents",
                    "labels": {DEPLOYMENT_LABEL: "invoice-extractor", POOL_LABEL: "h100"},
                    "annotations": {SPEC_HASH_ANNOTATION: deployment_spec_hash(dep)},
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )


def test_a_finetunejob_creates_its_job_once_mirrors_it_and_promotes_the_adapter() -> None:
    fake = _cluster()
    _segment_ready(fake)
    r = FineTuneReconciler(fake.as_kube(), "registry.example/trainer:7", "slm-finetune")

    ftj = _ftj_pass(fake, r)
    ftj = _ftj_pass(fake, r)
    jobs = fake.of_kind("Job")
    assert len(jobs) == 1 and fake.count("create", "Job") == 1, "one Job across passes"
    job = jobs[0]
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchFields"][0]["values"] == ["gpu-h100-1"]
    assert [c["image"] for c in pod["initContainers"] + pod["containers"]] == [
        "registry.example/trainer:7"
    ] * 2
    assert ftj["status"]["jobName"] == job["metadata"]["name"]
    assert _condition(ftj, "Trained")["reason"] == "Training"
    assert fake.count("apply-status", "FineTuneJob") == 1, "the second pass saw nothing new"

    _finished_training_pod(fake)
    ftj = _ftj_pass(fake, r)
    assert _condition(ftj, "Sanitized")["message"].startswith("2 records sanitised")
    assert _condition(ftj, "Evaluated")["reason"] == "GatePassed"
    assert _condition(ftj, "Promoted")["reason"] == "Rolling"
    assert ftj["status"]["promotion"] == {
        "phase": "Rolling",
        "slmDeployment": "invoice-extractor",
        "message": "",
    }
    dep = fake.peek("SLMDeployment", "invoice-extractor", "agents")
    assert dep is not None
    assert dep["metadata"]["annotations"][ADAPTER_ANNOTATION] == "pvc://adapters/extractor/v1"
    order = [
        (v, k)
        for v, k, _ in fake.writes
        if (v, k) in {("apply-status", "FineTuneJob"), ("patch", "SLMDeployment")}
    ]
    assert order[-2:] == [("apply-status", "FineTuneJob"), ("patch", "SLMDeployment")], (
        "what the deployment served before is recorded before it is patched"
    )

    _replicas_on_the_new_weights(fake)
    ftj = _ftj_pass(fake, r)
    assert _condition(ftj, "Promoted")["status"] == "True"
    assert [(e["kind"], e["reason"]) for e in fake.events] == [
        ("SLMDeployment", "Promoted"),
        ("FineTuneJob", "Promoted"),
    ]
    _ftj_pass(fake, r)
    assert fake.count("patch", "SLMDeployment") == 1 and len(fake.events) == 2, "promoted once"


@pytest.mark.parametrize(("pool", "reason"), [("nope", "PoolNotFound"), ("h100", "SegmentNotReady")])
def test_a_finetunejob_without_a_segment_to_run_on_creates_no_job_and_says_why(
    pool: str, reason: str
) -> None:
    fake = _cluster()
    ftj = fake.peek("FineTuneJob", "extractor-lora-1", "agents")
    assert ftj is not None
    ftj["spec"]["poolRef"]["name"] = pool
    ftj = _ftj_pass(fake, FineTuneReconciler(fake.as_kube(), "trainer:1", None))
    assert fake.of_kind("Job") == []
    assert _condition(ftj, "Trained")["reason"] == reason


def test_the_kopf_handlers_reach_the_reconcilers_through_the_memo() -> None:
    fake = _cluster()
    _segment_ready(fake)
    kube = fake.as_kube()
    ctx = OperatorContext(
        kube=kube,
        cfg=CFG,
        pools=PoolReconciler(kube, CFG),
        finetune=FineTuneReconciler(kube, "trainer:1", None),
    )
    memo = memo_for(ctx)
    handlers.finetune_reconcile(body=fake.peek("FineTuneJob", "extractor-lora-1", "agents"), memo=memo)
    assert len(fake.of_kind("Job")) == 1
    ev = ctx.pool_trigger("h100")
    ev.clear()
    dep = fake.peek("SLMDeployment", "invoice-extractor", "agents")
    handlers.deployment_event(ctx, "MODIFIED", dep)
    assert ev.is_set(), "a change to a deployment wakes its pool's daemon"
    ev.clear()
    handlers.deployment_event(ctx, "MODIFIED", dep)
    assert not ev.is_set(), "the same deployment seen again changes nothing"


def test_the_mig_configmap_records_when_each_entry_was_first_written() -> None:
    from slm_operator.contract import CONFIG_WRITTEN_ANNOTATION
    from slm_operator.render.configmaps import entry_times, written_annotations

    have = {"other": "x", CONFIG_WRITTEN_ANNOTATION: '{"slm-a":"t1","slm-gone":"t0"}'}
    out = written_annotations(have, {"slm-a", "slm-b"}, {"slm-b": "t2"})
    assert out["other"] == "x" and entry_times(out) == {"slm-a": "t1", "slm-b": "t2"}
    assert entry_times({CONFIG_WRITTEN_ANNOTATION: "not json"}) == {} and entry_times(None) == {}


class _ServiceRangeFull(FakeKube):
    """The API server refuses one deployment's Service (its ClusterIP range is full), as kube-apiserver's
    default 10.0.0.0/24 did at the 255th Service of the 1,000-deployment bench-e2e."""

    def apply(
        self, obj: dict[str, Any], *, status: bool = False, field_manager: str = "slm-operator"
    ) -> dict[str, Any]:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "invoice-extractor":
            exc = ApiException(status=500, reason="Internal Server Error")
            exc.body = json.dumps(
                {
                    "message": 'Internal error occurred: failed to allocate a serviceIP for Service "x": range is full'
                }
            )
            raise exc
        return super().apply(obj, status=status, field_manager=field_manager)


def test_a_service_the_api_server_refuses_stops_nothing_else_and_its_deployment_gets_an_event() -> None:
    m = load_manifests([ROOT / "examples"])
    fake = _ServiceRangeFull(*m.nodes, *[o for o in m.other if o.get("kind") == "Namespace"])
    for obj in [*m.pools, *m.deployments]:
        raw = obj.to_k8s()
        raw["metadata"]["creationTimestamp"] = "2026-11-26T09:00:00Z"
        fake.add(raw)
    pools = PoolReconciler(fake.as_kube(), CFG)
    pools.reconcile("h100")
    _gpu_operator_applies(fake)
    pools.reconcile("h100")  # raised on the refused Service before: no status, no later Service written
    _pods_run(fake)
    pools.reconcile("h100")
    h100 = [d for d in m.deployments if d.spec.pool_ref.name == "h100"]
    services = {s["metadata"]["name"] for s in fake.of_kind("Service")}
    assert services == {d.metadata.name for d in h100} - {"invoice-extractor"}
    for d in h100:  # every deployment's status is written, the refused one's too
        assert (
            _condition(fake.peek("SLMDeployment", d.metadata.name, d.metadata.namespace), "Ready")["status"]
            == "True"
        )
    refused = [e for e in fake.events if e["reason"] == "ServiceApplyFailed"]
    assert refused and {e["involved"] for e in refused} == {"invoice-extractor"}
    assert "range is full" in refused[0]["message"] and refused[0]["type"] == "Warning"
