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

from slm_operator.agent.model import GpuInfo, Inventory, MigInstanceInfo
from slm_operator.agent.pods import Owner, PodShare, attribute_mig

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
        yield from _agent_families(self.node, inv, up, last)
        if inv is None:
            return
        families = _GpuFamilies()
        owners = attribute_mig(inv, shares)
        uuids: dict[int, str] = {}
        for g in inv.gpus:
            uuids[g.index] = _s(g.uuid)
            labels = [self.node, str(g.index), _s(g.uuid)]
            families.add_gpu(labels, g, _s(inv.driver_version))
            for pos, m in enumerate(g.mig_instances or ()):
                families.add_mig(labels, m, owners.get((g.index, pos)))
        for share in shares:
            if share.memory_bytes is not None and share.gpu in uuids:
                families.add_share(self.node, uuids[share.gpu], share)
        yield from families.all()


def _agent_families(node: str, inv: Inventory | None, up: bool, last: float | None) -> Iterator[Metric]:
    """The agent's own state: NVML up, GPUs seen, time of the last complete read (once there was one)."""
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


def _add(family: GaugeMetricFamily, labels: list[str], value: float | None, scale: float = 1.0) -> None:
    """One sample, unless NVML did not report the value (a missing series, not a made-up 0)."""
    if value is not None:
        family.add_metric(labels, float(value) / scale)


class _GpuFamilies:
    """The per-GPU, per-MIG-instance and per-share gauges of one scrape, filled GPU by GPU."""

    def __init__(self) -> None:
        self.info = GaugeMetricFamily(
            "slm_gpu_info",
            "Always 1: identity of a GPU (NVML name, GFD product label, catalog model, PCI device id, driver)",
            labels=[*GPU_LABELS, "name", "product", "model", "pci_device_id", "driver_version"],
        )
        self.err = GaugeMetricFamily(
            "slm_gpu_error", "1 if the last NVML read of this GPU failed in part", labels=GPU_LABELS
        )
        self.mem_total = GaugeMetricFamily(
            "slm_gpu_memory_total_bytes", "GPU framebuffer memory", labels=GPU_LABELS
        )
        self.mem_used = GaugeMetricFamily(
            "slm_gpu_memory_used_bytes", "GPU framebuffer memory in use", labels=GPU_LABELS
        )
        self.util = GaugeMetricFamily(
            "slm_gpu_utilization_ratio",
            "Fraction of the last sample period a kernel ran (NVML; absent on MIG-enabled GPUs)",
            labels=GPU_LABELS,
        )
        self.mem_busy = GaugeMetricFamily(
            "slm_gpu_memory_busy_ratio",
            "Fraction of the last sample period device memory was read or written (absent on MIG GPUs)",
            labels=GPU_LABELS,
        )
        self.mig_mode = GaugeMetricFamily(
            "slm_gpu_mig_mode",
            "1 if MIG mode is enabled; state=current now, state=pending after the next GPU reset",
            labels=[*GPU_LABELS, "state"],
        )
        self.procs = GaugeMetricFamily("slm_gpu_processes", "Compute processes on the GPU", labels=GPU_LABELS)
        self.mig_total = GaugeMetricFamily(
            "slm_gpu_mig_memory_total_bytes", "Memory of a MIG instance", labels=MIG_LABELS
        )
        self.mig_used = GaugeMetricFamily(
            "slm_gpu_mig_memory_used_bytes", "Memory in use in a MIG instance", labels=MIG_LABELS
        )
        self.mig_procs = GaugeMetricFamily(
            "slm_gpu_mig_processes", "Compute processes in a MIG instance", labels=MIG_LABELS
        )
        self.share_mem = GaugeMetricFamily(
            "slm_gpu_share_memory_bytes",
            "GPU memory of the share an SLMDeployment replica holds (from the pod's slm.io/placement)",
            labels=SHARE_LABELS,
        )

    def add_gpu(self, labels: list[str], g: GpuInfo, driver_version: str) -> None:
        identity = [_s(g.name), _s(g.product), _s(g.model), _s(g.pci_device_id), driver_version]
        self.info.add_metric([*labels, *identity], 1.0)
        self.err.add_metric(labels, 1.0 if g.error else 0.0)
        _add(self.mem_total, labels, g.memory_total_bytes)
        _add(self.mem_used, labels, g.memory_used_bytes)
        _add(self.util, labels, g.utilization_gpu_percent, scale=100)
        _add(self.mem_busy, labels, g.utilization_memory_percent, scale=100)
        if g.mig_enabled is not None:
            self.mig_mode.add_metric([*labels, "current"], 1.0 if g.mig_enabled else 0.0)
            self.mig_mode.add_metric([*labels, "pending"], 1.0 if (g.mig_pending or False) else 0.0)
        _add(self.procs, labels, g.process_count)

    def add_mig(self, labels: list[str], m: MigInstanceInfo, owner: Owner | None) -> None:
        ml = [*labels, _s(m.uuid), m.profile, _s(m.start), _s(m.gi_id)]
        ml += [owner.namespace, owner.deployment, owner.tier] if owner else ["", "", ""]
        _add(self.mig_total, ml, m.memory_total_bytes)
        _add(self.mig_used, ml, m.memory_used_bytes)
        _add(self.mig_procs, ml, m.process_count)

    def add_share(self, node: str, gpu_uuid: str, s: PodShare) -> None:
        o = s.owner
        labels = [node, str(s.gpu), gpu_uuid, o.namespace, o.deployment, o.tier, str(s.replica), s.mechanism]
        _add(self.share_mem, [*labels, _s(s.mig_profile)], s.memory_bytes)

    def all(self) -> Iterator[Metric]:
        yield from (self.info, self.err, self.mem_total, self.mem_used, self.util, self.mem_busy)
        yield from (self.mig_mode, self.procs, self.mig_total, self.mig_used, self.mig_procs, self.share_mem)


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
