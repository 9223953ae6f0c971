"""The local cluster is a real one: real kube-apiserver/scheduler/controller-manager, kwok GPU nodes, loopback only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from .conftest import GPU_NODES, Cluster, wait_for

pytestmark = pytest.mark.e2e


def test_server_version(cluster: Cluster) -> None:
    version = client.VersionApi(cluster.api).get_code()
    assert version.git_version == "v1.36.3"
    assert (version.major, version.minor) == ("1", "36")


def test_gpu_nodes_ready_with_capacity(cluster: Cluster) -> None:
    nodes = {n.metadata.name: n for n in cluster.core.list_node().items}
    assert set(GPU_NODES) <= set(nodes)
    for name, (gpus, mig) in GPU_NODES.items():
        node = nodes[name]
        ready = {c.type: c.status for c in node.status.conditions or []}.get("Ready")
        assert ready == "True", f"{name} not Ready"
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        labels = node.metadata.labels
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["nvidia.com/gpu.count"] == str(gpus)
        assert labels["nvidia.com/mig.capable"] == str(mig).lower()
        assert node.status.capacity["nvidia.com/gpu"] == str(gpus)
        assert node.status.allocatable["nvidia.com/gpu"] == str(gpus)
        assert node.status.allocatable["pods"] == "110"


def test_gpu_pod_is_scheduled_and_runs(cluster: Cluster, ns: str) -> None:
    cluster.pod(ns, "one-gpu", {"nvidia.com/gpu": "1"})
    pod = cluster.wait_pod_running(ns, "one-gpu")
    assert pod.spec.node_name in GPU_NODES
    scheduled = {c.type: c.status for c in pod.status.conditions}
    assert scheduled["PodScheduled"] == "True"
    assert pod.status.pod_ip  # kwok's pod-ready stage assigns one


def test_too_many_gpus_stay_pending(cluster: Cluster, ns: str) -> None:
    cluster.pod(ns, "nine-gpus", {"nvidia.com/gpu": "9"})

    def unschedulable() -> bool:
        pod = cluster.core.read_namespaced_pod("nine-gpus", ns)
        cond = {c.type: c for c in pod.status.conditions or []}.get("PodScheduled")
        return pod.status.phase == "Pending" and cond is not None and cond.reason == "Unschedulable"

    wait_for(unschedulable, 90, "PodScheduled=False/Unschedulable")

    def failed_scheduling() -> str | None:
        for ev in cluster.core.list_namespaced_event(ns).items:
            if ev.reason == "FailedScheduling" and ev.involved_object.name == "nine-gpus":
                return ev.message
        return None

    message = wait_for(failed_scheduling, 90, "FailedScheduling event")
    assert "nvidia.com/gpu" in message
    assert cluster.core.read_namespaced_pod("nine-gpus", ns).spec.node_name is None


def test_controllers_run(cluster: Cluster, ns: str) -> None:
    """kube-controller-manager: a ReplicaSet makes pods, and deleting it garbage-collects them."""
    labels = {"app": "rs-gpu"}
    rs = client.V1ReplicaSet(
        metadata=client.V1ObjectMeta(name="rs-gpu"),
        spec=client.V1ReplicaSetSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="main",
                            image="registry.invalid/slm/never-pulled:1",
                            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
                        )
                    ],
                    termination_grace_period_seconds=0,
                ),
            ),
        ),
    )
    cluster.apps.create_namespaced_replica_set(ns, rs)

    def two_running() -> bool:
        pods = cluster.core.list_namespaced_pod(ns, label_selector="app=rs-gpu").items
        return len(pods) == 2 and all(p.status.phase == "Running" for p in pods)

    wait_for(two_running, 90, "2 ReplicaSet pods Running")
    cluster.apps.delete_namespaced_replica_set("rs-gpu", ns, propagation_policy="Background")
    wait_for(
        lambda: not cluster.core.list_namespaced_pod(ns, label_selector="app=rs-gpu").items,
        90,
        "garbage collection of the ReplicaSet's pods",
    )


def _cluster_pids(cluster: Cluster) -> set[int]:
    """Pids kwokctl recorded for the cluster's components (etcd, apiserver, KCM, scheduler, kwok)."""
    kwok_dir = Path(cluster.kubeconfig).parent / "kwok" / "clusters" / cluster.name / "pids"
    pids = set()
    for f in kwok_dir.glob("*.pid"):
        text = f.read_text().strip()
        if text.isdigit() and Path(f"/proc/{text}").exists():
            pids.add(int(text))
    return pids


def test_every_listener_is_on_loopback(cluster: Cluster) -> None:
    pids = _cluster_pids(cluster)
    assert len(pids) >= 5, f"expected etcd, apiserver, KCM, scheduler and kwok pids, got {pids}"
    out = subprocess.run(["ss", "-ltnpH"], check=True, capture_output=True, text=True).stdout
    listeners: dict[int, list[str]] = {}
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                listeners.setdefault(pid, []).append(local)
    assert set(listeners) == pids, f"components without a listener: {pids - set(listeners)}"
    outside = {
        pid: addrs for pid, addrs in listeners.items() if any(not a.startswith("127.0.0.1:") for a in addrs)
    }
    assert not outside, f"listening outside 127.0.0.1: {outside}"
