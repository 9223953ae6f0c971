"""An in-memory NVML for tests, with builders for typical GPUs and a few named fleets.

Builders take their facts from the GPU catalog (NVML name, packed PCI id, total memory, MIG profile IDs and
usable memory), so a fake H100 looks to the agent exactly as the catalog says a real one does::

    FakeNvml([h100(0, mig=[("3g.40gb", 4), ("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3)]), a100(1), l4(2)])

Any interface call can be made to fail for one GPU: ``gpu.errors["memory"] = NvmlError(15, "GPU is lost")``.

Named fleets (``FLEETS``; the agent picks one with the **test-only** environment variable
``SLM_AGENT_FAKE_FLEET``, see :func:`slm_operator.agent.factory.make_nvml`):

* ``h100-mig`` -- 8x H100 80GB HBM3; GPU 0 in MIG mode with 3g.40gb@4 + 2g.20gb@0 + 1g.10gb@2 + 1g.10gb@3,
  GPUs 1-7 whole (GPU 1 busy);
* ``a100`` -- 8x A100-SXM4-40GB, MIG capable but disabled;
* ``l4`` -- 4x L4 (no MIG);
* ``mixed`` -- the H100 in MIG mode, an A100 without MIG and an L4 (GPU 0, 1, 2);
* ``gpu-error`` -- 2x H100, GPU 1 lost (every call on it fails with NVML error 15);
* ``none`` -- no driver (a :class:`~slm_operator.agent.null.NullNvml`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.agent.interface import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    MemoryInfo,
    MigDevice,
    NvmlError,
    NvmlUnavailable,
    Utilization,
)
from slm_operator.catalog import GpuModel, gpu_by_key

MiB = 1 << 20
GiB = 1 << 30
DRIVER_VERSION = "580.95.05"
NVIDIA_VENDOR = 0x10DE
#: NVML device names of the usual SKU per catalog key (others: the first product label, dashes as spaces)
NVML_NAMES = {
    "H100-80GB": "NVIDIA H100 80GB HBM3",
    "A100-40GB": "NVIDIA A100-SXM4-40GB",
    "A100-80GB": "NVIDIA A100-SXM4-80GB",
    "L4": "NVIDIA L4",
}


def fake_uuid(prefix: str, *parts: object) -> str:
    """A stable UUID-shaped id (``GPU-8-4-4-4-12`` hex) derived from ``parts``."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass
class FakeMig:
    """One MIG device of a fake GPU."""

    profile: str
    start: int
    profile_id: int | None
    slices: int
    memory_slices: int
    total_bytes: int
    used_bytes: int = 0
    processes: int = 0
    gpu_instance_id: int = 0
    uuid: str = ""
    #: what NVML names the profile (None: the agent must derive the name itself)
    nvml_name: str | None = None


@dataclass
class FakeGpu:
    """One fake GPU; change the fields between reads to simulate what happens on the node."""

    name: str
    uuid: str
    pci_device_id: int
    memory_total_bytes: int
    memory_used_bytes: int = 0
    mig_capable: bool = False
    mig_current: bool = False
    mig_pending: bool = False
    migs: list[FakeMig] = field(default_factory=list)
    utilization: Utilization | None = None
    processes: int = 0
    #: interface method name -> error that call raises for this GPU
    errors: dict[str, NvmlError] = field(default_factory=dict)


def _packed_pci(model: GpuModel) -> int:
    return (int(model.pci_device_ids[0], 16) << 16) | NVIDIA_VENDOR


def gpu(
    key: str,
    index: int,
    *,
    name: str | None = None,
    mig: Sequence[tuple[str, int]] | None = None,
    used_bytes: int = 0,
    processes: int = 0,
    utilization: tuple[int, int] | None = (0, 0),
    node: str = "fake",
) -> FakeGpu:
    """A fake GPU of catalog model ``key``; ``mig`` = [(profile, start), ...] puts it in MIG mode.

    ``name`` defaults to the NVML name of the usual SKU (``NVML_NAMES``), else the catalog's first product
    label with dashes as spaces (GFD sanitises "NVIDIA H100 80GB HBM3" to "NVIDIA-H100-80GB-HBM3").
    """
    model = gpu_by_key(key)
    nvml_name = name or NVML_NAMES.get(model.key) or model.products[0].replace("-", " ")
    g = FakeGpu(
        name=nvml_name,
        uuid=fake_uuid("GPU", node, key, index),
        pci_device_id=_packed_pci(model),
        memory_total_bytes=model.memory_bytes,
        memory_used_bytes=used_bytes,
        mig_capable=model.mig_capable,
        processes=processes,
        utilization=Utilization(*utilization) if utilization is not None else None,
    )
    if mig is not None:
        if not model.mig_capable:
            raise ValueError(f"{key} is not MIG capable")
        g.mig_current = g.mig_pending = True
        g.utilization = None  # NVML: not supported on MIG-enabled GPUs
        for gi, (profile_name, start) in enumerate(mig, start=1):
            p = model.profile(profile_name)
            if start not in p.starts:
                raise ValueError(f"{key}: {p.name} cannot start at {start} (legal: {p.starts})")
            g.migs.append(
                FakeMig(
                    profile=p.name,
                    start=start,
                    profile_id=p.profile_id,
                    slices=p.compute_slices,
                    memory_slices=p.memory_slices,
                    total_bytes=p.memory_bytes,
                    gpu_instance_id=gi,
                    uuid=fake_uuid("MIG", node, key, index, gi),
                    nvml_name=f"MIG {p.name}",
                )
            )
        g.memory_used_bytes = used_bytes
    return g


H100_MIG_LAYOUT: tuple[tuple[str, int], ...] = (
    ("3g.40gb", 4),
    ("2g.20gb", 0),
    ("1g.10gb", 2),
    ("1g.10gb", 3),
)


def h100(index: int, **kw: Any) -> FakeGpu:
    """An H100 80GB HBM3 (SXM5, PCI 0x2330), whole GPU unless ``mig=`` is given."""
    return gpu("H100-80GB", index, **kw)


def h100_mig(index: int, layout: Sequence[tuple[str, int]] = H100_MIG_LAYOUT, **kw: Any) -> FakeGpu:
    """An H100 in MIG mode, by default 3g.40gb@4 + 2g.20gb@0 + 1g.10gb@2 + 1g.10gb@3 (all 7 compute slices)."""
    return gpu("H100-80GB", index, mig=layout, **kw)


def a100(index: int, **kw: Any) -> FakeGpu:
    """An A100-SXM4-40GB with MIG disabled."""
    return gpu("A100-40GB", index, **kw)


def l4(index: int, **kw: Any) -> FakeGpu:
    """An L4 (not MIG capable: NVML answers NOT_SUPPORTED to the MIG mode query)."""
    return gpu("L4", index, **kw)


class FakeNvml:
    """:class:`~slm_operator.agent.interface.Nvml` over a list of :class:`FakeGpu` (index = position)."""

    def __init__(
        self,
        gpus: Sequence[FakeGpu],
        driver: str = DRIVER_VERSION,
        init_error: NvmlError | None = None,
    ) -> None:
        self.gpus = list(gpus)
        self.driver = driver
        self.init_error = init_error
        self.initialised = False
        self.init_calls = 0
        self.shutdown_calls = 0

    def init(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def shutdown(self) -> None:
        self.shutdown_calls += 1
        self.initialised = False

    def _gpu(self, index: int, call: str) -> FakeGpu:
        if not self.initialised:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "Uninitialized", call)
        if not 0 <= index < len(self.gpus):
            raise NvmlError(NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument", call)
        g = self.gpus[index]
        if call in g.errors:
            raise g.errors[call]
        return g

    def driver_version(self) -> str:
        if not self.initialised:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "Uninitialized", "driver_version")
        return self.driver

    def device_count(self) -> int:
        if not self.initialised:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "Uninitialized", "device_count")
        return len(self.gpus)

    def name(self, gpu: int) -> str:
        return self._gpu(gpu, "name").name

    def uuid(self, gpu: int) -> str:
        return self._gpu(gpu, "uuid").uuid

    def pci_device_id(self, gpu: int) -> int:
        return self._gpu(gpu, "pci_device_id").pci_device_id

    def memory(self, gpu: int) -> MemoryInfo:
        g = self._gpu(gpu, "memory")
        used = (
            g.memory_used_bytes + sum(m.used_bytes for m in g.migs) if g.mig_current else g.memory_used_bytes
        )
        return MemoryInfo(total_bytes=g.memory_total_bytes, used_bytes=used)

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        g = self._gpu(gpu, "mig_mode")
        if not g.mig_capable:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, "Not Supported", "mig_mode")
        return g.mig_current, g.mig_pending

    def utilization(self, gpu: int) -> Utilization:
        g = self._gpu(gpu, "utilization")
        if g.mig_current or g.utilization is None:
            raise NvmlError(NVML_ERROR_NOT_SUPPORTED, "Not Supported", "utilization")
        return g.utilization

    def process_count(self, gpu: int) -> int:
        g = self._gpu(gpu, "process_count")
        return g.processes + sum(m.processes for m in g.migs) if g.mig_current else g.processes

    def mig_devices(self, gpu: int) -> list[MigDevice]:
        g = self._gpu(gpu, "mig_devices")
        if not g.mig_current:
            return []
        return [
            MigDevice(
                index=i,
                uuid=m.uuid,
                gpu_instance_id=m.gpu_instance_id,
                compute_instance_id=0,
                profile_id=m.profile_id,
                profile_name=m.nvml_name,
                placement_start=m.start,
                placement_size=m.memory_slices,
                slices=m.slices,
                memory=MemoryInfo(total_bytes=m.total_bytes, used_bytes=m.used_bytes),
                process_count=m.processes,
            )
            for i, m in enumerate(sorted(g.migs, key=lambda m: m.gpu_instance_id))
        ]


def lost(g: FakeGpu) -> FakeGpu:
    """Make every call on ``g`` fail as a GPU that fell off the bus does."""
    err = NvmlError(NVML_ERROR_GPU_IS_LOST, "GPU is lost")
    for call in (
        "name",
        "uuid",
        "pci_device_id",
        "memory",
        "mig_mode",
        "utilization",
        "process_count",
        "mig_devices",
    ):
        g.errors[call] = NvmlError(err.code, err.message, call)
    return g


def _h100_mig_fleet(node: str) -> list[FakeGpu]:
    gpus = [h100_mig(0, node=node)]
    gpus[0].migs[0].used_bytes = 30 * GiB  # the 3g.40gb serves a model
    gpus[0].migs[0].processes = 1
    gpus[0].migs[2].used_bytes = 6 * GiB
    gpus[0].migs[2].processes = 1
    gpus.append(h100(1, node=node, used_bytes=60 * GiB, processes=2, utilization=(73, 41)))
    gpus += [h100(i, node=node) for i in range(2, 8)]
    return gpus


FLEETS: dict[str, Callable[[str], list[FakeGpu]]] = {
    "h100-mig": _h100_mig_fleet,
    "a100": lambda node: [a100(i, node=node) for i in range(8)],
    "l4": lambda node: [
        l4(i, node=node, used_bytes=2 * GiB, processes=1, utilization=(12, 5)) for i in range(4)
    ],
    "mixed": lambda node: [h100_mig(0, node=node), a100(1, node=node), l4(2, node=node)],
    "gpu-error": lambda node: [h100(0, node=node), lost(h100(1, node=node))],
}


def fleet(name: str, node: str = "fake") -> FakeNvml:
    """A named fleet (see the module docstring). Raises KeyError for an unknown name."""
    if name not in FLEETS:
        raise KeyError(f"unknown fake fleet {name!r}; known: {', '.join([*sorted(FLEETS), 'none'])}")
    return FakeNvml(FLEETS[name](node))


def absent(reason: str = "NVML Shared Library Not Found") -> FakeNvml:
    """A fake whose ``init()`` fails like a node without a driver (same as NullNvml, but countable)."""
    return FakeNvml([], init_error=NvmlUnavailable(NVML_ERROR_LIBRARY_NOT_FOUND, reason, "nvmlInit"))
