"""The narrow NVML interface the node agent reads GPUs through, with its value types and errors.

Three implementations (as NVIDIA's k8s-device-plugin does with its resource managers):

* :class:`slm_operator.agent.nvml.PynvmlNvml` -- the real one (``pynvml`` from ``nvidia-ml-py``, imported
  lazily, read-only: no ``Set*``/``Create*``/``Destroy*`` call, a unit test checks the source);
* :class:`slm_operator.agent.null.NullNvml` -- no driver on this node: ``init()`` raises
  :class:`NvmlUnavailable`;
* :class:`slm_operator.agent.fake.FakeNvml` -- an in-memory fleet for tests, built with the builders of
  :mod:`slm_operator.agent.fake`.

GPUs are addressed by their NVML index. Every method may raise :class:`NvmlError`; ``code`` carries NVML's
return code (``NVML_ERROR_*``) so callers can tell "not supported" from a real failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# NVML return codes (nvml.h / pynvml ``NVML_ERROR_*``) the agent distinguishes.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999


class NvmlError(Exception):
    """An NVML call failed. ``code`` is NVML's return code, ``call`` the interface method."""

    def __init__(self, code: int, message: str, call: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.call = call

    @property
    def not_supported(self) -> bool:
        return self.code == NVML_ERROR_NOT_SUPPORTED

    def __str__(self) -> str:
        where = f"{self.call}: " if self.call else ""
        return f"{where}{self.message} (NVML error {self.code})"


class NvmlUnavailable(NvmlError):
    """There is no usable NVIDIA driver here (library not found, kernel module not loaded, no pynvml)."""


@dataclass(frozen=True)
class MemoryInfo:
    """Framebuffer memory of a GPU or a MIG device, in bytes."""

    total_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class Utilization:
    """``nvmlDeviceGetUtilizationRates``: percent of time a kernel ran / device memory was read or written."""

    gpu_percent: int
    memory_percent: int


@dataclass(frozen=True)
class MigDevice:
    """One MIG device (a GPU instance with its compute instance) of a MIG-enabled GPU.

    ``profile_id`` is the GPU-instance profile ID nvidia-smi prints (19 = 1g, 9 = 3g, ...) and
    ``profile_name`` the name NVML gives it (e.g. "MIG 3g.40gb" or "3g.40gb"); both may be unknown when the
    driver does not let an unprivileged process read the GPU instance, in which case ``slices`` and
    ``memory`` still describe it.
    """

    index: int
    uuid: str | None
    gpu_instance_id: int | None
    compute_instance_id: int | None
    profile_id: int | None
    profile_name: str | None
    placement_start: int | None
    placement_size: int | None
    slices: int | None
    memory: MemoryInfo | None
    process_count: int | None


@runtime_checkable
class Nvml(Protocol):
    """Read-only view of the GPUs of one node."""

    def init(self) -> None:
        """Load and initialise NVML. Raises :class:`NvmlUnavailable` when there is no driver."""
        ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def device_count(self) -> int: ...

    def name(self, gpu: int) -> str:
        """NVML device name, e.g. "NVIDIA H100 80GB HBM3"."""
        ...

    def uuid(self, gpu: int) -> str: ...

    def pci_device_id(self, gpu: int) -> int:
        """NVML's packed ``pciDeviceId`` (0xDDDDVVVV: device id, vendor id), e.g. 0x233010DE."""
        ...

    def memory(self, gpu: int) -> MemoryInfo: ...

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        """(current, pending) MIG mode. Raises NvmlError NOT_SUPPORTED on a GPU without MIG."""
        ...

    def utilization(self, gpu: int) -> Utilization:
        """Raises NvmlError NOT_SUPPORTED on MIG-enabled GPUs (NVML does not attribute it to MIG devices)."""
        ...

    def process_count(self, gpu: int) -> int:
        """Compute processes running on the GPU (all of its MIG devices when MIG is enabled)."""
        ...

    def mig_devices(self, gpu: int) -> list[MigDevice]:
        """The MIG devices of a MIG-enabled GPU, by MIG device index."""
        ...
