"""The GPU node agent, driven by the fake NVML fleets (no GPU, no cluster)."""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from slm_operator.agent import fake
from slm_operator.agent.factory import FAKE_FLEET_ENV, make_nvml
from slm_operator.agent.fake import FakeNvml, GiB, a100, fleet, h100, h100_mig, l4
from slm_operator.agent.interface import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_FOUND,
    MemoryInfo,
    MigDevice,
    NvmlError,
    NvmlUnavailable,
)
from slm_operator.agent.metrics import AgentMetrics
from slm_operator.agent.model import Inventory
from slm_operator.agent.null import NullNvml
from slm_operator.agent.nvml import PynvmlNvml
from slm_operator.agent.read import mig_memory_gb, profile_name, read_inventory
from slm_operator.agent.run import EXIT_NO_DRIVER, Agent, run_daemon, run_once
from slm_operator.catalog import gpu_by_key
from slm_operator.cli import main
from slm_operator.inventory import node_inventory

MiB = 1 << 20
NODE = "gpu-h100-0"
AGENT_DIR = Path(__file__).resolve().parents[1] / "operator" / "slm_operator" / "agent"


# ------------------------------------------------------------------------------------------------ helpers


def ready(nvml: FakeNvml) -> FakeNvml:
    nvml.init()
    return nvml


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition text, parsed back with prometheus-client's parser."""
    text = generate_latest(registry).decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels`` (None if there is none)."""
    found = [v for (n, ls), v in samples(registry).items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


class StubPublisher:
    """The publisher interface without Kubernetes: remembers what was written."""

    def __init__(self, current: str | None = None, fail: int = 0) -> None:
        self.value = current
        self.writes: list[str] = []
        self.fail = fail

    def current(self) -> str | None:
        return self.value

    def publish(self, text: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("apiserver unreachable")
        self.writes.append(text)
        self.value = text


class StubPods:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.items = pods

    def pods(self) -> list[dict[str, Any]]:
        return self.items


def replica_pod(
    name: str,
    deployment: str,
    tier: str,
    gpu: int,
    mechanism: str,
    profile: str | None,
    memory: int,
    node: str = NODE,
) -> dict[str, Any]:
    ns, dep = deployment.split("/")
    placement = {
        "deployment": deployment,
        "ordinal": int(name.rsplit("-", 1)[-1]),
        "node": node,
        "gpu": gpu,
        "mechanism": mechanism,
        "migProfile": profile,
        "memoryBytes": memory,
    }
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "slm.io/deployment": dep,
                "slm.io/qos": tier,
                "slm.io/replica": name.rsplit("-", 1)[-1],
            },
            "annotations": {"slm.io/placement": json.dumps(placement)},
        },
        "spec": {"nodeName": node},
        "status": {"phase": "Running"},
    }


def k8s_node(annotation: str | None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": NODE,
            "labels": {
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": "8",
                "nvidia.com/mig.config": "all-disabled",
            },
            "annotations": {"slm.io/gpu-inventory": annotation} if annotation else {},
        }
    }


# ------------------------------------------------------------------------------------------- read_inventory


def test_mixed_fleet_inventory() -> None:
    inv = read_inventory(ready(fleet("mixed")), NODE)
    assert inv.node == NODE and inv.driver_version == fake.DRIVER_VERSION
    h, a, l4_ = inv.gpus
    catalog = gpu_by_key("H100-80GB")

    assert (h.index, h.name, h.product, h.model, h.pci_device_id) == (
        0,
        "NVIDIA H100 80GB HBM3",
        "NVIDIA-H100-80GB-HBM3",
        "H100-80GB",
        "0x2330",
    )
    assert h.uuid and h.uuid.startswith("GPU-")
    assert h.memory_total_bytes == catalog.memory_bytes
    assert (h.mig_capable, h.mig_enabled, h.mig_pending) == (True, True, True)
    assert h.mig_instances is not None
    assert [(m.profile, m.start, m.size) for m in h.mig_instances] == [
        ("2g.20gb", 0, 2),
        ("1g.10gb", 2, 1),
        ("1g.10gb", 3, 1),
        ("3g.40gb", 4, 4),
    ]
    for m in h.mig_instances:
        p = catalog.profile(m.profile)
        assert m.profile_id == p.profile_id
        assert m.memory_total_bytes == p.memory_bytes
        assert m.uuid and m.uuid.startswith("MIG-") and m.gi_id
    # NVML does not report utilisation of MIG-enabled GPUs: absent, and not an error
    assert h.utilization_gpu_percent is None and h.error is None

    assert (a.model, a.pci_device_id, a.product) == ("A100-40GB", "0x20b0", "NVIDIA-A100-SXM4-40GB")
    assert (a.mig_capable, a.mig_enabled, a.mig_pending, a.mig_instances) == (True, False, False, ())
    assert a.utilization_gpu_percent == 0

    assert (l4_.model, l4_.pci_device_id) == ("L4", "0x27b8")
    # NOT_SUPPORTED for the MIG mode means "no MIG", not an error
    assert (l4_.mig_capable, l4_.mig_enabled, l4_.mig_pending, l4_.mig_instances, l4_.error) == (
        False,
        False,
        None,
        (),
        None,
    )


@pytest.mark.parametrize(
    ("name", "count", "model"), [("h100-mig", 8, "H100-80GB"), ("a100", 8, "A100-40GB"), ("l4", 4, "L4")]
)
def test_named_fleets(name: str, count: int, model: str) -> None:
    inv = read_inventory(ready(fleet(name, NODE)))
    assert len(inv.gpus) == count
    assert {g.model for g in inv.gpus} == {model}
    assert len({g.uuid for g in inv.gpus}) == count
    assert all(g.error is None for g in inv.gpus)


def test_h100_mig_fleet_memory_and_processes() -> None:
    inv = read_inventory(ready(fleet("h100-mig", NODE)))
    g0, g1 = inv.gpus[0], inv.gpus[1]
    assert g0.mig_instances is not None
    big = next(m for m in g0.mig_instances if m.profile == "3g.40gb")
    assert (big.memory_used_bytes, big.process_count) == (30 * GiB, 1)
    assert g0.memory_used_bytes == 36 * GiB and g0.process_count == 2
    assert (g1.memory_used_bytes, g1.process_count, g1.utilization_gpu_percent) == (60 * GiB, 2, 73)


def test_error_on_one_gpu_is_reported_for_that_gpu() -> None:
    inv = read_inventory(ready(fleet("gpu-error")))
    ok, bad = inv.gpus
    assert ok.error is None and ok.model == "H100-80GB"
    assert bad.index == 1 and bad.error and "GPU is lost" in bad.error
    assert (bad.uuid, bad.memory_total_bytes, bad.mig_enabled, bad.mig_instances) == (None, None, None, None)


def test_partial_error_keeps_what_was_read() -> None:
    g = a100(0)
    g.errors["process_count"] = NvmlError(NVML_ERROR_GPU_IS_LOST, "GPU is lost", "process_count")
    g.errors["mig_devices"] = NvmlError(NVML_ERROR_GPU_IS_LOST, "GPU is lost", "mig_devices")  # MIG is off
    (info,) = read_inventory(ready(FakeNvml([g]))).gpus
    assert info.error == "process_count: GPU is lost (NVML error 15)"
    assert info.memory_total_bytes == gpu_by_key("A100-40GB").memory_bytes and info.mig_instances == ()
    assert info.utilization_gpu_percent == 0 and info.process_count is None


def test_optional_figures_we_may_not_see_are_left_out() -> None:
    g = a100(0)
    g.errors["utilization"] = NvmlError(NVML_ERROR_NO_PERMISSION, "Insufficient Permissions", "utilization")
    g.errors["process_count"] = NvmlError(
        NVML_ERROR_NO_PERMISSION, "Insufficient Permissions", "process_count"
    )
    (info,) = read_inventory(ready(FakeNvml([g]))).gpus
    assert (info.error, info.utilization_gpu_percent, info.process_count) == (None, None, None)


def test_failing_mig_enumeration_leaves_instances_unknown() -> None:
    g = h100_mig(0)
    g.errors["mig_devices"] = NvmlError(NVML_ERROR_GPU_IS_LOST, "GPU is lost", "mig_devices")
    (info,) = read_inventory(ready(FakeNvml([g]))).gpus
    assert info.mig_enabled is True and info.mig_instances is None and "mig_devices" in (info.error or "")


def test_device_count_failure_raises() -> None:
    nvml = FakeNvml([h100(0)])
    with pytest.raises(NvmlError):
        read_inventory(nvml)  # not initialised


def test_mig_profile_names_without_nvml_details() -> None:
    h = gpu_by_key("H100-80GB")
    total = h.memory_bytes

    def dev(**kw: Any) -> MigDevice:
        base: dict[str, Any] = dict(
            index=0,
            uuid=None,
            gpu_instance_id=None,
            compute_instance_id=None,
            profile_id=None,
            profile_name=None,
            placement_start=None,
            placement_size=None,
            slices=None,
            memory=None,
            process_count=None,
        )
        return MigDevice(**{**base, **kw})

    assert profile_name(h, dev(profile_name="MIG 1g.10gb+me"), total) == "1g.10gb+me"
    assert profile_name(h, dev(profile_id=15), total) == "1g.20gb"  # catalog by profile ID
    assert profile_name(None, dev(profile_name="MIG 2g.24gb"), total) == "2g.24gb"
    # no privileges to read the GPU instance: derived like go-nvlib from slices and memory
    mem = MemoryInfo(total_bytes=h.profile("3g.40gb").memory_bytes, used_bytes=0)
    assert profile_name(h, dev(slices=3, memory=mem), total) == "3g.40gb"
    assert profile_name(h, dev(), total) == "unknown"


@pytest.mark.parametrize(
    ("key", "profile", "gb"),
    [
        ("H100-80GB", "1g.10gb", 10),
        ("H100-80GB", "3g.40gb", 40),
        ("A100-40GB", "1g.5gb", 5),
        ("A100-40GB", "3g.20gb", 20),
    ],
)
def test_mig_memory_gb_matches_catalog_names(key: str, profile: str, gb: int) -> None:
    g = gpu_by_key(key)
    assert mig_memory_gb(g.memory_bytes, g.profile(profile).memory_bytes) == gb


# ------------------------------------------------------------------------------------ annotation <-> operator


def test_annotation_is_compact_and_read_by_the_operator() -> None:
    nvml = ready(fleet("h100-mig", NODE))
    inv = read_inventory(nvml, NODE)
    text = inv.annotation_json()
    doc = json.loads(text)
    assert " " not in text.replace("NVIDIA H100 80GB HBM3", "")
    assert "utilizationGpuPercent" not in text and "null" not in text
    assert doc["version"] == 1 and len(doc["gpus"]) == 8
    g0 = doc["gpus"][0]
    assert g0["migEnabled"] is True and g0["memoryUsedBytes"] == 36 * GiB
    assert [(m["profile"], m["start"]) for m in g0["migInstances"]] == [
        ("2g.20gb", 0),
        ("1g.10gb", 2),
        ("1g.10gb", 3),
        ("3g.40gb", 4),
    ]
    # the annotation is a superset of what inventory.node_inventory reads
    planner_view, source = node_inventory(k8s_node(text), {})
    assert source == "Agent"
    assert len(planner_view.gpus) == 8
    p0 = planner_view.gpus[0]
    assert p0.mig_enabled and [(m.profile, m.start) for m in p0.mig_instances] == [
        ("2g.20gb", 0),
        ("1g.10gb", 2),
        ("1g.10gb", 3),
        ("3g.40gb", 4),
    ]
    assert p0.used_memory_bytes == 36 * GiB
    assert not planner_view.gpus[1].mig_enabled and planner_view.gpus[1].used_memory_bytes == 60 * GiB
    # the annotation parses back into the model
    assert Inventory.model_validate(doc).gpus[0].mig_instances == inv.gpus[0].mig_instances


def test_operator_falls_back_to_labels_when_a_gpu_has_an_error() -> None:
    inv = read_inventory(ready(fleet("gpu-error")), NODE)
    _, source = node_inventory(k8s_node(inv.annotation_json()), {})
    assert source == "Labels"
    _, source = node_inventory(k8s_node(None), {})
    assert source == "Labels"


# ---------------------------------------------------------------------------------------- publish if changed


def test_annotation_written_only_when_inventory_changed() -> None:
    nvml = ready(fleet("h100-mig", NODE))
    pub = StubPublisher()
    agent = Agent(nvml=nvml, node=NODE, metrics=AgentMetrics(NODE), publisher=pub)
    agent.poll()
    agent.poll()
    assert len(pub.writes) == 1
    # utilisation is volatile: not published, no write
    nvml.gpus[1].utilization = fake.Utilization(5, 5)
    agent.poll()
    assert len(pub.writes) == 1
    # a replica starts: used memory and process count change -> one more write
    nvml.gpus[2].memory_used_bytes = 9 * GiB
    nvml.gpus[2].processes = 1
    agent.poll()
    agent.poll()
    assert len(pub.writes) == 2
    assert json.loads(pub.writes[-1])["gpus"][2]["memoryUsedBytes"] == 9 * GiB
    assert value(agent.metrics.registry, "slm_agent_inventory_publishes_total", result="ok") == 2


def test_no_write_when_node_already_carries_the_same_inventory() -> None:
    nvml = ready(fleet("l4", NODE))
    text = read_inventory(nvml, NODE).annotation_json()
    pub = StubPublisher(current=text)
    Agent(nvml=nvml, node=NODE, metrics=AgentMetrics(NODE), publisher=pub).poll()
    assert pub.writes == []


def test_annotation_removed_by_someone_else_is_written_again() -> None:
    nvml = ready(fleet("l4", NODE))
    pub = StubPublisher()
    agent = Agent(nvml=nvml, node=NODE, metrics=AgentMetrics(NODE), publisher=pub, resync_polls=3)
    agent.poll()
    pub.value = None  # e.g. `kubectl annotate node ... slm.io/gpu-inventory-`
    agent.poll()
    assert len(pub.writes) == 1  # not noticed between resyncs: no read per poll
    agent.poll()  # third poll: re-reads the Node
    assert len(pub.writes) == 2 and pub.value == pub.writes[0]


def test_failed_write_is_counted_and_retried() -> None:
    nvml = ready(fleet("l4", NODE))
    pub = StubPublisher(fail=1)
    agent = Agent(nvml=nvml, node=NODE, metrics=AgentMetrics(NODE), publisher=pub)
    agent.poll()
    assert pub.writes == []
    agent.poll()
    assert len(pub.writes) == 1
    reg = agent.metrics.registry
    assert value(reg, "slm_agent_inventory_publishes_total", result="error") == 1
    assert value(reg, "slm_agent_inventory_publishes_total", result="ok") == 1


# ---------------------------------------------------------------------------------------------- GPU metrics


def test_gpu_metrics_match_the_inventory() -> None:
    nvml = ready(fleet("mixed", NODE))
    metrics = AgentMetrics(NODE)
    inv = Agent(nvml=nvml, node=NODE, metrics=metrics, clock=lambda: 1234.5).poll()
    assert inv is not None
    reg = metrics.registry
    h = inv.gpus[0]
    assert value(reg, "slm_agent_nvml_up", node=NODE) == 1
    assert value(reg, "slm_agent_gpus", node=NODE) == 3
    assert value(reg, "slm_agent_last_read_timestamp_seconds") == 1234.5
    for g in inv.gpus:
        labels = {"node": NODE, "gpu": str(g.index), "uuid": g.uuid or ""}
        assert value(reg, "slm_gpu_memory_total_bytes", **labels) == g.memory_total_bytes
        assert value(reg, "slm_gpu_memory_used_bytes", **labels) == g.memory_used_bytes
        assert value(reg, "slm_gpu_info", **labels, model=g.model or "", product=g.product or "") == 1
        assert value(reg, "slm_gpu_error", **labels) == 0
    assert value(reg, "slm_gpu_mig_mode", gpu="0", state="current") == 1
    assert value(reg, "slm_gpu_mig_mode", gpu="1", state="current") == 0
    assert value(reg, "slm_gpu_mig_mode", gpu="2", state="current") == 0
    # utilisation: a ratio, absent on the MIG GPU
    assert value(reg, "slm_gpu_utilization_ratio", gpu="0") is None
    assert value(reg, "slm_gpu_utilization_ratio", gpu="1") == 0
    assert h.mig_instances is not None
    for m in h.mig_instances:
        assert (
            value(reg, "slm_gpu_mig_memory_total_bytes", mig_uuid=m.uuid or "", profile=m.profile)
            == m.memory_total_bytes
        )
        assert value(reg, "slm_gpu_mig_memory_used_bytes", mig_uuid=m.uuid or "", start=str(m.start)) == 0


def test_utilisation_is_a_ratio() -> None:
    nvml = ready(FakeNvml([l4(0, utilization=(73, 41))]))
    metrics = AgentMetrics(NODE)
    Agent(nvml=nvml, node=NODE, metrics=metrics).poll()
    assert value(metrics.registry, "slm_gpu_utilization_ratio", gpu="0") == pytest.approx(0.73)
    assert value(metrics.registry, "slm_gpu_memory_busy_ratio", gpu="0") == pytest.approx(0.41)


def test_gpu_error_metric_and_counter(caplog: pytest.LogCaptureFixture) -> None:
    nvml = ready(fleet("gpu-error", NODE))
    metrics = AgentMetrics(NODE)
    agent = Agent(nvml=nvml, node=NODE, metrics=metrics)
    with caplog.at_level(logging.WARNING, "slm_operator.agent"):
        agent.poll()
        agent.poll()
    assert [r.getMessage()[:6] for r in caplog.records] == ["GPU 1:"]  # logged once, counted twice
    reg = metrics.registry
    assert value(reg, "slm_gpu_error", gpu="0") == 0
    assert value(reg, "slm_gpu_error", gpu="1") == 1
    assert value(reg, "slm_agent_gpu_read_errors_total", gpu="1") == 2
    assert value(reg, "slm_agent_gpu_read_errors_total", gpu="0") is None
    assert value(reg, "slm_gpu_memory_total_bytes", gpu="1") is None  # unknown, not 0


def test_read_failure_is_counted_not_fatal() -> None:
    nvml = FakeNvml([h100(0)])  # never initialised: the device count fails
    metrics = AgentMetrics(NODE)
    assert Agent(nvml=nvml, node=NODE, metrics=metrics).poll() is None
    assert value(metrics.registry, "slm_agent_read_failures_total") == 1


def test_vanished_mig_instances_lose_their_series() -> None:
    nvml = ready(FakeNvml([h100_mig(0)]))
    metrics = AgentMetrics(NODE)
    agent = Agent(nvml=nvml, node=NODE, metrics=metrics)
    agent.poll()
    assert sum(1 for (n, _) in samples(metrics.registry) if n == "slm_gpu_mig_memory_total_bytes") == 4
    nvml.gpus[0].migs = nvml.gpus[0].migs[:1]
    agent.poll()
    assert sum(1 for (n, _) in samples(metrics.registry) if n == "slm_gpu_mig_memory_total_bytes") == 1


def test_shares_are_labelled_with_deployment_and_tier() -> None:
    nvml = ready(fleet("h100-mig", NODE))
    h = gpu_by_key("H100-80GB")
    pods = StubPods(
        [
            # the only 3g.40gb, busy: its owner is certain
            replica_pod(
                "chat-0", "team-a/chat", "Guaranteed", 0, "MIG", "3g.40gb", h.profile("3g.40gb").memory_bytes
            ),
            # two 1g.10gb instances, one pod of each of two deployments: which is which cannot be told
            replica_pod(
                "emb-0", "team-a/emb", "Burstable", 0, "MIG", "1g.10gb", h.profile("1g.10gb").memory_bytes
            ),
            replica_pod(
                "rr-0", "team-b/rerank", "BestEffort", 0, "MIG", "1g.10gb", h.profile("1g.10gb").memory_bytes
            ),
            # MPS shares on GPU 1
            replica_pod("sum-0", "team-b/sum", "Burstable", 1, "MPS", None, 20 * GiB),
            replica_pod("sum-1", "team-b/sum", "Burstable", 1, "MPS", None, 20 * GiB),
            # another node's pod and a finished pod are ignored
            replica_pod("x-0", "team-b/x", "Burstable", 1, "MPS", None, 20 * GiB, node="elsewhere"),
            {
                **replica_pod("y-0", "team-b/y", "Burstable", 1, "MPS", None, 20 * GiB),
                "status": {"phase": "Succeeded"},
            },
            {"metadata": {"name": "no-annotation", "namespace": "x", "labels": {"slm.io/deployment": "z"}}},
        ]
    )
    metrics = AgentMetrics(NODE)
    Agent(nvml=nvml, node=NODE, metrics=metrics, pods=pods).poll()
    reg = metrics.registry
    assert value(reg, "slm_gpu_mig_memory_used_bytes", profile="3g.40gb") == 30 * GiB
    assert (
        value(reg, "slm_gpu_mig_memory_used_bytes", profile="3g.40gb", deployment="chat", tier="Guaranteed")
        == 30 * GiB
    )
    ambiguous = [
        ls
        for (n, ls) in samples(reg)
        if n == "slm_gpu_mig_memory_total_bytes" and ("profile", "1g.10gb") in ls
    ]
    assert len(ambiguous) == 2 and all(("deployment", "") in ls for ls in ambiguous)
    share = {
        (dict(ls)["deployment"], dict(ls)["replica"]): v
        for (n, ls), v in samples(reg).items()
        if n == "slm_gpu_share_memory_bytes"
    }
    assert share == {
        ("chat", "0"): h.profile("3g.40gb").memory_bytes,
        ("emb", "0"): h.profile("1g.10gb").memory_bytes,
        ("rerank", "0"): h.profile("1g.10gb").memory_bytes,
        ("sum", "0"): 20 * GiB,
        ("sum", "1"): 20 * GiB,
    }
    assert (
        value(
            reg,
            "slm_gpu_share_memory_bytes",
            deployment="sum",
            replica="1",
            tier="Burstable",
            namespace="team-b",
            mechanism="MPS",
            gpu="1",
        )
        == 20 * GiB
    )


def test_one_deployment_owning_every_instance_of_a_profile() -> None:
    nvml = ready(FakeNvml([h100_mig(0, layout=[("1g.10gb", s) for s in range(7)])]))
    mem = gpu_by_key("H100-80GB").profile("1g.10gb").memory_bytes
    nvml.gpus[0].migs[3].processes = 1
    nvml.gpus[0].migs[5].processes = 1
    pods = StubPods(
        [replica_pod(f"emb-{i}", "ns/emb", "Burstable", 0, "MIG", "1g.10gb", mem) for i in range(2)]
    )
    metrics = AgentMetrics(NODE)
    Agent(nvml=nvml, node=NODE, metrics=metrics, pods=pods).poll()
    owned = sorted(
        dict(ls)["start"]
        for (n, ls) in samples(metrics.registry)
        if n == "slm_gpu_mig_memory_total_bytes" and ("deployment", "emb") in ls
    )
    assert owned == ["3", "5"]  # the two busy instances


# --------------------------------------------------------------------------------------- no driver, the loop


def test_run_once_without_driver_exits_3(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "slm_operator.agent"):
        assert run_once(NullNvml(), "n1") == EXIT_NO_DRIVER == 3
    assert len(caplog.records) == 1
    assert "no usable NVIDIA driver on node n1" in caplog.records[0].getMessage()


def test_daemon_without_driver_exits_3_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    nvml = fake.absent()
    connected: list[bool] = []

    def connect() -> tuple[None, None]:
        connected.append(True)
        return None, None

    with caplog.at_level(logging.INFO, "slm_operator.agent"):
        code = run_daemon(nvml, NODE, AgentMetrics(NODE), connect, listen="", interval=0.01, no_driver="exit")
    assert code == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"no usable NVIDIA driver on node {NODE}: nvmlInit: NVML Shared Library Not Found (NVML error 12); "
        "exiting with code 3 (--no-driver=exit)"
    ]
    assert connected == [] and nvml.shutdown_calls == 0


def test_daemon_without_driver_idles_then_starts_when_the_driver_appears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = fake.absent()
    metrics = AgentMetrics(NODE)
    pub = StubPublisher()
    stop = threading.Event()
    served: list[CollectorRegistry] = []

    class Server:
        def shutdown(self) -> None:
            served.append(metrics.registry)

        def server_close(self) -> None:
            pass

    def serve(listen: str, registry: CollectorRegistry) -> tuple[Server, None]:
        assert listen == "127.0.0.1:0"
        return Server(), None

    result: list[int] = []
    with caplog.at_level(logging.ERROR, "slm_operator.agent"):
        t = threading.Thread(
            target=lambda: result.append(
                run_daemon(
                    nvml,
                    NODE,
                    metrics,
                    lambda: (pub, None),
                    listen="127.0.0.1:0",
                    interval=0.01,
                    no_driver="idle",
                    stop=stop,
                    serve=serve,
                )
            )
        )
        t.start()
        deadline = time.monotonic() + 60  # returns once the agent got there; headroom for a loaded machine
        while nvml.init_calls < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert t.is_alive() and nvml.init_calls >= 5  # idling and retrying
        assert value(metrics.registry, "slm_agent_nvml_up") == 0
        assert pub.writes == []
        nvml.gpus = fake.FLEETS["l4"](NODE)
        nvml.init_error = None  # the driver container finished
        while not pub.writes and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        t.join(5)
    assert result == [0]
    assert len(pub.writes) == 1 and len(json.loads(pub.writes[0])["gpus"]) == 4
    assert value(metrics.registry, "slm_agent_nvml_up") == 1
    assert nvml.shutdown_calls == 1 and served  # NVML shut down, server stopped
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "idling" in errors[0].getMessage()  # one line, not one per retry


def test_cli_once_prints_the_inventory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(FAKE_FLEET_ENV, "h100-mig")
    assert main(["agent", "--once", "--node-name", NODE]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["node"] == NODE and len(doc["gpus"]) == 8
    assert doc["gpus"][1]["utilizationGpuPercent"] == 73  # the full document, volatile fields included
    assert Inventory.model_validate(doc) == read_inventory(ready(fleet("h100-mig", NODE)), NODE)


def test_cli_no_driver(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(FAKE_FLEET_ENV, "none")
    assert main(["agent", "--once"]) == 3
    assert main(["agent", "--node-name", NODE, "--no-driver", "exit", "--listen", ""]) == 3
    assert capsys.readouterr().out == ""


def test_cli_needs_a_node_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(FAKE_FLEET_ENV, "l4")
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["agent", "--node-name", ""]) == 2
    assert "--node-name" in capsys.readouterr().err
    assert main(["agent", "--once", "--interval-seconds", "0"]) == 2


def test_factory() -> None:
    assert isinstance(make_nvml("n", {}), PynvmlNvml)
    assert isinstance(make_nvml("n", {FAKE_FLEET_ENV: "none"}), NullNvml)
    f = make_nvml("n", {FAKE_FLEET_ENV: "a100"})
    assert isinstance(f, FakeNvml) and len(f.gpus) == 8
    with pytest.raises(KeyError, match="unknown fake fleet"):
        make_nvml("n", {FAKE_FLEET_ENV: "h300"})


def test_builders_reject_impossible_layouts() -> None:
    with pytest.raises(ValueError, match="cannot start"):
        h100_mig(0, layout=[("2g.20gb", 6)])
    with pytest.raises(ValueError, match="not MIG capable"):
        fake.gpu("L4", 0, mig=[])


# ------------------------------------------------------------------------------- the real implementation


def test_real_nvml_without_driver_is_unavailable() -> None:
    nvml = PynvmlNvml()
    try:
        nvml.init()
    except NvmlUnavailable as exc:
        assert exc.code in (9, 12)  # library not found / driver not loaded
    else:  # pragma: no cover - a machine with a driver
        nvml.shutdown()
        pytest.skip("an NVIDIA driver is present on this machine")


def _fake_pynvml() -> types.SimpleNamespace:
    """Just enough of pynvml's surface for one MIG GPU with sparse MIG device indices."""

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    ns = types.SimpleNamespace()
    gi_info = {
        1: types.SimpleNamespace(profileId=9, placement=types.SimpleNamespace(start=4, size=4)),
        2: types.SimpleNamespace(profileId=19, placement=types.SimpleNamespace(start=0, size=1)),
    }
    migs = {0: ("mig0", 1), 2: ("mig2", 2)}  # index 1 is a hole
    ns.NVMLError = NVMLError
    ns.nvmlInit = lambda: None
    ns.nvmlShutdown = lambda: None
    ns.nvmlSystemGetDriverVersion = lambda: b"580.95.05"
    ns.nvmlDeviceGetCount = lambda: 1
    ns.nvmlDeviceGetHandleByIndex = lambda i: "gpu0"
    ns.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"
    ns.nvmlDeviceGetUUID = lambda h: f"{'GPU' if h == 'gpu0' else 'MIG'}-{h}"
    ns.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(pciDeviceId=0x233010DE)
    ns.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=81559 * MiB if h == "gpu0" else 40448 * MiB, used=5 * GiB
    )
    ns.nvmlDeviceGetMigMode = lambda h: [1, 1]

    def utilization(h: str) -> None:
        raise NVMLError(3)

    ns.nvmlDeviceGetUtilizationRates = utilization
    ns.nvmlDeviceGetComputeRunningProcesses = lambda h: [object()]
    ns.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7

    def mig_handle(h: str, i: int) -> str:
        if i not in migs:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return migs[i][0]

    ns.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    ns.nvmlDeviceGetGpuInstanceId = lambda m: dict(migs.values())[m]
    ns.nvmlDeviceGetComputeInstanceId = lambda m: 0
    ns.nvmlDeviceGetAttributes = lambda m: types.SimpleNamespace(
        gpuInstanceSliceCount=3 if m == "mig0" else 1
    )
    ns.nvmlDeviceGetGpuInstanceById = lambda h, gi: f"gi{gi}"
    ns.nvmlGpuInstanceGetInfo = lambda gi: gi_info[int(gi[2:])]

    def profile_info(h: str, pid: int) -> types.SimpleNamespace:
        if pid == 19:
            raise NVMLError(NVML_ERROR_NO_PERMISSION)
        return types.SimpleNamespace(name=b"MIG 3g.40gb")

    ns.nvmlDeviceGetGpuInstanceProfileInfoById = profile_info
    return ns


def test_real_implementation_over_a_fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    nvml = PynvmlNvml()
    nvml.init()
    inv = read_inventory(nvml, NODE)
    nvml.shutdown()
    (g,) = inv.gpus
    assert (g.model, g.pci_device_id, g.mig_enabled, g.utilization_gpu_percent, g.error) == (
        "H100-80GB",
        "0x2330",
        True,
        None,
        None,
    )
    assert inv.driver_version == "580.95.05"
    assert g.mig_instances is not None
    assert [(m.profile, m.start, m.gi_id, m.uuid) for m in g.mig_instances] == [
        (
            "1g.10gb",
            0,
            2,
            "MIG-mig2",
        ),  # name from the catalog by profile ID when NVML refuses the profile info
        ("3g.40gb", 4, 1, "MIG-mig0"),
    ]
    with pytest.raises(NvmlError, match="not initialised"):
        nvml.device_count()


# ------------------------------------------------------------------------------------- read-only guarantee

_READ_ONLY = r"^nvml(Init|Shutdown|SystemGet[A-Za-z_0-9]+|DeviceGet[A-Za-z_0-9]+|DeviceIs[A-Za-z_0-9]+|GpuInstanceGet[A-Za-z_0-9]+)$"
_MUTATING = (
    "Set",
    "Create",
    "Destroy",
    "Reset",
    "Clear",
    "Modify",
    "Register",
    "Remove",
    "Discover",
    "Enable",
    "Disable",
)


def test_real_implementation_never_changes_gpu_settings() -> None:
    import re

    source = (AGENT_DIR / "nvml.py").read_text()
    tree = ast.parse(source)
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.lower().startswith("nvml"):
            used.add(node.attr)
        elif isinstance(node, ast.Name) and node.id.lower().startswith("nvml"):
            used.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("nvml"):
            used.add(node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "eval", "exec")
        ):
            dynamic = node.func.id != "getattr" or not (
                len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            )
            assert not dynamic, f"nvml.py:{node.lineno}: dynamic {node.func.id}() could hide an NVML call"
    calls = {u for u in used if u.startswith("nvml")}
    assert "nvmlDeviceGetMigMode" in calls and "nvmlInit" in calls  # the scan sees the calls
    for name in sorted(calls):
        assert re.match(_READ_ONLY, name), f"nvml.py uses {name}, which is not a read-only NVML call"
        assert not any(verb in name for verb in _MUTATING), f"nvml.py uses {name}"
    # pynvml is only reached through the module object bound in init(): no `from pynvml import ...`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "pynvml"
        if isinstance(node, ast.Import):
            assert all(a.name != "pynvml" for a in node.names)


def test_agent_imports_pynvml_and_kubernetes_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import slm_operator.agent.run, slm_operator.agent.nvml, slm_operator.agent.fake, sys; "
        "print(sorted(m for m in ('pynvml', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
