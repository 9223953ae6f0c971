"""The node agent against the local control plane: Node annotation and metrics endpoint.

The agent runs as a subprocess on a fake NVML fleet (the test-only ``SLM_AGENT_FAKE_FLEET``) for the kwok node
``gpu-h100-0``, as the chart's DaemonSet pod would on a real node.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from slm_operator.agent.fake import fleet
from slm_operator.agent.read import read_inventory
from slm_operator.catalog import gpu_by_key
from slm_operator.inventory import node_inventory

from .conftest import REPO, Cluster, wait_for

pytestmark = pytest.mark.e2e

NODE = "gpu-h100-0"
ANNOTATION = "slm.io/gpu-inventory"
FLEET = "h100-mig"
INTERVAL = 0.5

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _find(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls}


def _remove_annotation(cluster: Cluster) -> None:
    with contextlib.suppress(client.exceptions.ApiException):
        cluster.core.patch_node(NODE, {"metadata": {"annotations": {ANNOTATION: None}}})


def _agent(cluster: Cluster, log: Path, port: int, fleet_name: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SLM_AGENT_FAKE_FLEET": fleet_name,  # test only: read a fake fleet instead of NVML
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable, "-m", "slm_operator", "agent", "--kubeconfig", cluster.kubeconfig, "--node-name", NODE,
        "--listen", f"127.0.0.1:{port}", "--interval-seconds", str(INTERVAL), *extra,
    ]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


@pytest.fixture
def clean_node(cluster: Cluster) -> Iterator[Cluster]:
    _remove_annotation(cluster)
    yield cluster
    _remove_annotation(cluster)  # the operator e2e tests must see the GFD labels of this node again


def _replica_pod(
    ns: str, name: str, dep: str, gpu: int, mechanism: str, profile: str | None, memory: int
) -> dict[str, Any]:
    placement = {
        "deployment": f"{ns}/{dep}",
        "ordinal": 0,
        "node": NODE,
        "gpu": gpu,
        "mechanism": mechanism,
        "migProfile": profile,
        "memoryBytes": memory,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"slm.io/deployment": dep, "slm.io/qos": "Guaranteed", "slm.io/replica": "0"},
            "annotations": {"slm.io/placement": json.dumps(placement)},
        },
        "spec": {
            "nodeName": NODE,  # bound directly, as the scheduler would after the operator pinned it
            "containers": [{"name": "server", "image": "registry.invalid/slm/never-pulled:1"}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def test_agent_annotates_its_node_and_serves_matching_metrics(
    clean_node: Cluster, ns: str, tmp_path: Path
) -> None:
    cluster = clean_node
    h100 = gpu_by_key("H100-80GB")
    big = h100.profile("3g.40gb")
    cluster.core.create_namespaced_pod(
        ns, _replica_pod(ns, "chat-0", "chat", 0, "MIG", big.name, big.memory_bytes)
    )
    cluster.core.create_namespaced_pod(
        ns, _replica_pod(ns, "sum-0", "sum", 1, "Exclusive", None, h100.memory_bytes)
    )

    nvml = fleet(FLEET, NODE)
    nvml.init()
    expected = read_inventory(nvml, NODE)

    port = _free_port()
    log = tmp_path / "agent.log"
    proc = _agent(cluster, log, port, FLEET)
    try:
        raw = wait_for(lambda: cluster.annotations(NODE).get(ANNOTATION), 90, f"{ANNOTATION} on {NODE}")
        assert raw == expected.annotation_json()
        doc = json.loads(raw)
        assert len(doc["gpus"]) == 8 and doc["node"] == NODE

        # the operator reads it: source Agent, the real MIG layout and used memory
        node = cluster.api.sanitize_for_serialization(cluster.node(NODE))
        inv, source = node_inventory(node, {})
        assert source == "Agent"
        assert [(m.profile, m.start) for m in inv.gpus[0].mig_instances] == [
            ("2g.20gb", 0),
            ("1g.10gb", 2),
            ("1g.10gb", 3),
            ("3g.40gb", 4),
        ]
        assert inv.gpus[1].used_memory_bytes == expected.gpus[1].memory_used_bytes

        # the metrics endpoint: values match the inventory, shares carry the deployment
        def scraped() -> Samples | None:
            s = _scrape(port)
            return s if len(_find(s, "slm_gpu_share_memory_bytes")) == 2 else None

        samples = wait_for(scraped, 90, "metrics with both replica shares")
        assert _find(samples, "slm_agent_nvml_up", node=NODE) == {frozenset({("node", NODE)}): 1.0}
        assert list(_find(samples, "slm_agent_gpus", node=NODE).values()) == [8.0]
        for g in expected.gpus:
            labels = {"node": NODE, "gpu": str(g.index), "uuid": g.uuid or ""}
            assert list(_find(samples, "slm_gpu_memory_total_bytes", **labels).values()) == [
                g.memory_total_bytes
            ]
            assert list(_find(samples, "slm_gpu_memory_used_bytes", **labels).values()) == [
                g.memory_used_bytes
            ]
            mode = _find(samples, "slm_gpu_mig_mode", **labels, state="current")
            assert list(mode.values()) == [1.0 if g.mig_enabled else 0.0]
            info = _find(samples, "slm_gpu_info", **labels)
            assert [dict(ls)["product"] for ls in info] == ["NVIDIA-H100-80GB-HBM3"]
        assert _find(samples, "slm_gpu_utilization_ratio", gpu="0") == {}  # MIG GPU
        assert list(_find(samples, "slm_gpu_utilization_ratio", gpu="1").values()) == [0.73]
        for m in expected.gpus[0].mig_instances or ():
            found = _find(
                samples, "slm_gpu_mig_memory_used_bytes", gpu="0", profile=m.profile, start=str(m.start)
            )
            assert list(found.values()) == [m.memory_used_bytes]
        owned = _find(
            samples, "slm_gpu_mig_memory_used_bytes", deployment="chat", tier="Guaranteed", namespace=ns
        )
        assert [dict(ls)["profile"] for ls in owned] == ["3g.40gb"]
        shares = {
            dict(ls)["deployment"]: v
            for ls, v in _find(samples, "slm_gpu_share_memory_bytes", namespace=ns).items()
        }
        assert shares == {"chat": big.memory_bytes, "sum": h100.memory_bytes}

        # nothing changed: after three more inventory reads, no further writes of the annotation (the agent's
        # own count; the Node's resourceVersion also moves with writes by kwok, the simulator or the KCM)
        def last_read() -> float:
            found = _find(_scrape(port), "slm_agent_last_read_timestamp_seconds", node=NODE)
            return max(found.values(), default=0.0)

        seen = last_read()
        for _ in range(3):
            seen = wait_for(lambda s=seen: (t := last_read()) > s and t, 60, "another inventory read")
        assert cluster.annotations(NODE)[ANNOTATION] == raw
        ok = _find(_scrape(port), "slm_agent_inventory_publishes_total", node=NODE, result="ok")
        assert list(ok.values()) == [1.0]
        assert log.read_text().count("published the GPU inventory") == 1

        assert _stop(proc) == 0, log.read_text()
    finally:
        _stop(proc)
        if not log.exists() or "Traceback" in log.read_text():
            print(log.read_text() if log.exists() else "no agent log")


def test_agent_without_driver_exits_3_and_leaves_the_node_alone(clean_node: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    proc = _agent(clean_node, log, _free_port(), "none", "--no-driver", "exit")
    try:
        assert proc.wait(30) == 3
    finally:
        _stop(proc)
    text = log.read_text()
    assert "no usable NVIDIA driver on node gpu-h100-0" in text and "Traceback" not in text
    assert ANNOTATION not in clean_node.annotations(NODE)
