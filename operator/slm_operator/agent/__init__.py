"""The GPU node agent (``slm-operator agent``, the chart's DaemonSet).

It reads every GPU of its node through NVML (read-only) behind the :class:`~slm_operator.agent.interface.Nvml`
protocol, publishes a compact inventory on its Node (annotation ``slm.io/gpu-inventory``, only when it
changed) and serves Prometheus metrics. Modules:

* ``interface`` -- the protocol, its value types and errors; ``nvml`` (real, pynvml imported lazily),
  ``null`` (no driver), ``fake`` (test fleets and builders); ``factory.make_nvml`` picks one;
* ``model`` -- the pydantic inventory; ``read.read_inventory(nvml)`` fills it;
* ``pods`` -- which SLMDeployment holds which share (from the replica pods' placement annotation);
* ``metrics`` -- the agent's Prometheus registry; ``kube`` -- Node annotation and pod listing;
* ``run`` -- the loop and the command (exit codes in its docstring).
"""

from slm_operator.agent.interface import MemoryInfo, MigDevice, Nvml, NvmlError, NvmlUnavailable, Utilization
from slm_operator.agent.model import GpuInfo, Inventory, MigInstanceInfo
from slm_operator.agent.read import read_inventory
from slm_operator.agent.run import EXIT_NO_DRIVER

__all__ = [
    "EXIT_NO_DRIVER",
    "GpuInfo",
    "Inventory",
    "MemoryInfo",
    "MigDevice",
    "MigInstanceInfo",
    "Nvml",
    "NvmlError",
    "NvmlUnavailable",
    "Utilization",
    "read_inventory",
]
