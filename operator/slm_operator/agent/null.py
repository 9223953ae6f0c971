"""The NVML implementation for a node without an NVIDIA driver: ``init()`` says so, nothing else works."""

from __future__ import annotations

from slm_operator.agent.interface import (
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_UNINITIALIZED,
    MemoryInfo,
    MigDevice,
    NvmlError,
    NvmlUnavailable,
    Utilization,
)


class NullNvml:
    """:class:`~slm_operator.agent.interface.Nvml` with no GPUs and no driver.

    ``reason`` is the message ``init()`` raises :class:`NvmlUnavailable` with (default: what pynvml says when
    ``libnvidia-ml.so.1`` cannot be loaded).
    """

    def __init__(self, reason: str = "NVML Shared Library Not Found") -> None:
        self.reason = reason

    def init(self) -> None:
        raise NvmlUnavailable(NVML_ERROR_LIBRARY_NOT_FOUND, self.reason, "nvmlInit")

    def shutdown(self) -> None:
        return None

    def _no(self, call: str) -> NvmlError:
        return NvmlError(NVML_ERROR_UNINITIALIZED, "Uninitialized", call)

    def driver_version(self) -> str:
        raise self._no("nvmlSystemGetDriverVersion")

    def device_count(self) -> int:
        raise self._no("nvmlDeviceGetCount")

    def name(self, gpu: int) -> str:
        raise self._no("nvmlDeviceGetName")

    def uuid(self, gpu: int) -> str:
        raise self._no("nvmlDeviceGetUUID")

    def pci_device_id(self, gpu: int) -> int:
        raise self._no("nvmlDeviceGetPciInfo")

    def memory(self, gpu: int) -> MemoryInfo:
        raise self._no("nvmlDeviceGetMemoryInfo")

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        raise self._no("nvmlDeviceGetMigMode")

    def utilization(self, gpu: int) -> Utilization:
        raise self._no("nvmlDeviceGetUtilizationRates")

    def process_count(self, gpu: int) -> int:
        raise self._no("nvmlDeviceGetComputeRunningProcesses")

    def mig_devices(self, gpu: int) -> list[MigDevice]:
        raise self._no("nvmlDeviceGetMigDeviceHandleByIndex")
