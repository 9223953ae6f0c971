"""Prometheus metrics of the node agent (one registry per agent; the HTTP server serves only it).

GPU series come from the latest inventory through a custom collector, so a GPU or MIG instance that went away
takes its series with it. Names, types and labels are listed in docs/observability.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from slm_operator.agent.model import Inventory
from slm_operator.agent.pods import PodShare, attribute_mig

GPU_LABELS = ["node", "gpu", "uuid"]
MIG_LABELS = [*GPU_LABELS, "mig_uuid", "profile", "start", "gi", "namespace", "deployment", "tier"]
SHARE_LABELS = [*GPU_LABELS, "namespace", "deployment", "tier", "replica", "mechanism", "profile"]


def _s(value: object) -> str:
    return "" if value is None else str(value)


class GpuCollector(Collector):
    """Gauges of the latest inventory and pod shares of one node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._inventory: Inventory | None = None
        self._shares: tuple[PodShare, ...] = ()
        self._nvml_up = False
        self._last_read: float | None = None

    def update(self, inventory: Inventory, shares: Iterable[PodShare], timestamp: float) -> None:
        with self._lock:
            self._inventory = inventory
            self._shares = tuple(shares)
            self._nvml_up = True
            self._last_read = timestamp

    def set_nvml_up(self, up: bool) -> None:
        with self._lock:
            self._nvml_up = up
            if not up:
                self._inventory, self._shares = None, ()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            inv, shares, up, last = self._inventory, self._shares, self._nvml_up, self._last_read
        node = self.node
        m_up = GaugeMetricFamily(
            "slm_agent_nvml_up", "1 if NVML (the NVIDIA driver) answers on this node", labels=["node"]
        )
        m_up.add_metric([node], 1.0 if up else 0.0)
        yield m_up
        m_gpus = GaugeMetricFamily("slm_agent_gpus", "GPUs NVML reports on this node", labels=["node"])
        m_gpus.add_metric([node], float(len(inv.gpus)) if inv else 0.0)
        yield m_gpus
        if last is not None:
            m_last = GaugeMetricFamily(
                "slm_agent_last_read_timestamp_seconds",
                "Unix time of the last complete NVML read",
                labels=["node"],
            )
            m_last.add_metric([node], last)
            yield m_last
        if inv is None:
            return
        info = GaugeMetricFamily(
            "slm_gpu_info",
            "Always 1: identity of a GPU (NVML name, GFD product label, catalog model, PCI device id, driver)",
            labels=[*GPU_LABELS, "name", "product", "model", "pci_device_id", "driver_version"],
        )
        err = GaugeMetricFamily(
            "slm_gpu_error", "1 if the last NVML read of this GPU failed in part", labels=GPU_LABELS
        )
        mem_total = GaugeMetricFamily(
            "slm_gpu_memory_total_bytes", "GPU framebuffer memory", labels=GPU_LABELS
        )
        mem_used = GaugeMetricFamily(
            "slm_gpu_memory_used_bytes", "GPU framebuffer memory in use", labels=GPU_LABELS
        )
        util = GaugeMetricFamily(
            "slm_gpu_utilization_ratio",
            "Fraction of the last sample period a kernel ran (NVML; absent on MIG-enabled GPUs)",
            labels=GPU_LABELS,
        )
        mem_busy = GaugeMetricFamily(
            "slm_gpu_memory_busy_ratio",
            "Fraction of the last sample period device memory was read or written (absent on MIG GPUs)",
            labels=GPU_LABELS,
        )
        mig_mode = GaugeMetricFamily(
            "slm_gpu_mig_mode",
            "1 if MIG mode is enabled; state=current now, state=pending after the next GPU reset",
            labels=[*GPU_LABELS, "state"],
        )
        procs = GaugeMetricFamily("slm_gpu_processes", "Compute processes on the GPU", labels=GPU_LABELS)
        mig_total = GaugeMetricFamily(
            "slm_gpu_mig_memory_total_bytes", "Memory of a MIG instance", labels=MIG_LABELS
        )
        mig_used = GaugeMetricFamily(
            "slm_gpu_mig_memory_used_bytes", "Memory in use in a MIG instance", labels=MIG_LABELS
        )
        mig_procs = GaugeMetricFamily(
            "slm_gpu_mig_processes", "Compute processes in a MIG instance", labels=MIG_LABELS
        )
        share_mem = GaugeMetricFamily(
            "slm_gpu_share_memory_bytes",
            "GPU memory of the share an SLMDeployment replica holds (from the pod's slm.io/placement)",
            labels=SHARE_LABELS,
        )
        owners = attribute_mig(inv, shares)
        uuids: dict[int, str] = {}
        for g in inv.gpus:
            labels = [node, str(g.index), _s(g.uuid)]
            uuids[g.index] = _s(g.uuid)
            info.add_metric(
                [
                    *labels,
                    _s(g.name),
                    _s(g.product),
                    _s(g.model),
                    _s(g.pci_device_id),
                    _s(inv.driver_version),
                ],
                1.0,
            )
            err.add_metric(labels, 1.0 if g.error else 0.0)
            if g.memory_total_bytes is not None:
                mem_total.add_metric(labels, float(g.memory_total_bytes))
            if g.memory_used_bytes is not None:
                mem_used.add_metric(labels, float(g.memory_used_bytes))
            if g.utilization_gpu_percent is not None:
                util.add_metric(labels, g.utilization_gpu_percent / 100)
            if g.utilization_memory_percent is not None:
                mem_busy.add_metric(labels, g.utilization_memory_percent / 100)
            if g.mig_enabled is not None:
                mig_mode.add_metric([*labels, "current"], 1.0 if g.mig_enabled else 0.0)
                mig_mode.add_metric([*labels, "pending"], 1.0 if (g.mig_pending or False) else 0.0)
            if g.process_count is not None:
                procs.add_metric(labels, float(g.process_count))
            for pos, m in enumerate(g.mig_instances or ()):
                o = owners.get((g.index, pos))
                ml = [
                    *labels,
                    _s(m.uuid),
                    m.profile,
                    _s(m.start),
                    _s(m.gi_id),
                    o.namespace if o else "",
                    o.deployment if o else "",
                    o.tier if o else "",
                ]
                if m.memory_total_bytes is not None:
                    mig_total.add_metric(ml, float(m.memory_total_bytes))
                if m.memory_used_bytes is not None:
                    mig_used.add_metric(ml, float(m.memory_used_bytes))
                if m.process_count is not None:
                    mig_procs.add_metric(ml, float(m.process_count))
        for s in shares:
            if s.memory_bytes is None or s.gpu not in uuids:
                continue
            share_mem.add_metric(
                [
                    node,
                    str(s.gpu),
                    uuids[s.gpu],
                    s.owner.namespace,
                    s.owner.deployment,
                    s.owner.tier,
                    str(s.replica),
                    s.mechanism,
                    _s(s.mig_profile),
                ],
                float(s.memory_bytes),
            )
        yield from (info, err, mem_total, mem_used, util, mem_busy, mig_mode, procs)
        yield from (mig_total, mig_used, mig_procs, share_mem)


class AgentMetrics:
    """The agent's registry: the GPU collector plus counters of what the agent did."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        self.gpus = GpuCollector(node)
        self.registry.register(self.gpus)
        self.gpu_read_errors = Counter(
            "slm_agent_gpu_read_errors",
            "NVML reads of a GPU that failed in part (the GPU's inventory entry carries `error`)",
            ["node", "gpu"],
            registry=self.registry,
        )
        self.read_failures = Counter(
            "slm_agent_read_failures",
            "Inventory passes that failed as a whole (NVML device count)",
            ["node"],
            registry=self.registry,
        )
        self.publishes = Counter(
            "slm_agent_inventory_publishes",
            "Writes of the slm.io/gpu-inventory Node annotation (result=ok|error)",
            ["node", "result"],
            registry=self.registry,
        )
        self.read_failures.labels(node)
        for result in ("ok", "error"):
            self.publishes.labels(node, result)

    def observe_inventory(self, inventory: Inventory, shares: Iterable[PodShare], timestamp: float) -> None:
        for g in inventory.gpus:
            if g.error:
                self.gpu_read_errors.labels(self.node, str(g.index)).inc()
        self.gpus.update(inventory, shares, timestamp)
