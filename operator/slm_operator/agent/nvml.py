"""The real NVML implementation (``pynvml`` from PyPI ``nvidia-ml-py``), strictly read-only.

``pynvml`` is imported in :meth:`PynvmlNvml.init`, so importing this module never needs the package or a
driver. Only ``nvmlInit``/``nvmlShutdown`` and ``nvml*Get*``/``nvmlDeviceIs*`` calls are used: the agent
never changes a GPU setting (``tests/test_agent.py`` parses this file and fails on any other NVML call).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from slm_operator.agent.interface import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_UNKNOWN,
    MemoryInfo,
    MigDevice,
    NvmlError,
    NvmlUnavailable,
    Utilization,
)

_NO_DRIVER_CODES = (NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED)
_MIG_ENABLE = 1  # NVML_DEVICE_MIG_ENABLE


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return str(value)


class PynvmlNvml:
    """:class:`~slm_operator.agent.interface.Nvml` over pynvml."""

    def __init__(self) -> None:
        self._n: Any = None
        self._handles: dict[int, Any] = {}

    # ---------------------------------------------------------------------------------------- plumbing

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one pynvml function, turning its exceptions into :class:`NvmlError`."""
        n = self._n
        if n is None:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "NVML is not initialised", what)
        try:
            return fn(*args)
        except n.NVMLError as exc:
            code = int(getattr(exc, "value", NVML_ERROR_UNKNOWN) or NVML_ERROR_UNKNOWN)
            raise NvmlError(code, str(exc), what) from None

    def _handle(self, gpu: int) -> Any:
        if gpu not in self._handles:
            self._handles[gpu] = self._call(
                "nvmlDeviceGetHandleByIndex", self._lib.nvmlDeviceGetHandleByIndex, gpu
            )
        return self._handles[gpu]

    @property
    def _lib(self) -> Any:
        if self._n is None:
            raise NvmlError(NVML_ERROR_UNINITIALIZED, "NVML is not initialised", "init")
        return self._n

    # ------------------------------------------------------------------------------------- interface

    def init(self) -> None:
        try:
            n = importlib.import_module("pynvml")
        except ImportError as exc:
            raise NvmlUnavailable(
                NVML_ERROR_LIBRARY_NOT_FOUND, f"the pynvml module is not installed ({exc})", "init"
            ) from None
        try:
            n.nvmlInit()
        except n.NVMLError as exc:
            code = int(getattr(exc, "value", NVML_ERROR_UNKNOWN) or NVML_ERROR_UNKNOWN)
            cls = NvmlUnavailable if code in _NO_DRIVER_CODES else NvmlError
            raise cls(code, str(exc), "nvmlInit") from None
        self._n = n
        self._handles = {}

    def shutdown(self) -> None:
        n, self._n = self._n, None
        self._handles = {}
        if n is not None:
            with contextlib.suppress(n.NVMLError):
                n.nvmlShutdown()

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion", self._lib.nvmlSystemGetDriverVersion))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount", self._lib.nvmlDeviceGetCount))

    def name(self, gpu: int) -> str:
        return _text(self._call("nvmlDeviceGetName", self._lib.nvmlDeviceGetName, self._handle(gpu)))

    def uuid(self, gpu: int) -> str:
        return _text(self._call("nvmlDeviceGetUUID", self._lib.nvmlDeviceGetUUID, self._handle(gpu)))

    def pci_device_id(self, gpu: int) -> int:
        info = self._call("nvmlDeviceGetPciInfo", self._lib.nvmlDeviceGetPciInfo, self._handle(gpu))
        return int(info.pciDeviceId)

    def memory(self, gpu: int) -> MemoryInfo:
        info = self._call("nvmlDeviceGetMemoryInfo", self._lib.nvmlDeviceGetMemoryInfo, self._handle(gpu))
        return MemoryInfo(total_bytes=int(info.total), used_bytes=int(info.used))

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        current, pending = self._call(
            "nvmlDeviceGetMigMode", self._lib.nvmlDeviceGetMigMode, self._handle(gpu)
        )
        return int(current) == _MIG_ENABLE, int(pending) == _MIG_ENABLE

    def utilization(self, gpu: int) -> Utilization:
        rates = self._call(
            "nvmlDeviceGetUtilizationRates", self._lib.nvmlDeviceGetUtilizationRates, self._handle(gpu)
        )
        return Utilization(gpu_percent=int(rates.gpu), memory_percent=int(rates.memory))

    def process_count(self, gpu: int) -> int:
        procs = self._call(
            "nvmlDeviceGetComputeRunningProcesses",
            self._lib.nvmlDeviceGetComputeRunningProcesses,
            self._handle(gpu),
        )
        return len(procs)

    def mig_devices(self, gpu: int) -> list[MigDevice]:
        n = self._lib
        parent = self._handle(gpu)
        count = int(self._call("nvmlDeviceGetMaxMigDeviceCount", n.nvmlDeviceGetMaxMigDeviceCount, parent))
        out: list[MigDevice] = []
        for i in range(count):
            try:
                mig = self._call(
                    "nvmlDeviceGetMigDeviceHandleByIndex", n.nvmlDeviceGetMigDeviceHandleByIndex, parent, i
                )
            except (
                NvmlError
            ) as exc:  # MIG device indices can be sparse (go-nvlib VisitMigDevices skips these)
                if exc.code in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT):
                    continue
                raise
            out.append(self._mig_device(parent, mig, i))
        return out

    def _optional(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """A read that may be refused (e.g. GPU-instance details need privileges): None instead."""
        try:
            return self._call(what, fn, *args)
        except NvmlError:
            return None

    def _mig_device(self, parent: Any, mig: Any, index: int) -> MigDevice:
        n = self._lib
        uuid = self._optional("nvmlDeviceGetUUID", n.nvmlDeviceGetUUID, mig)
        gi_id = self._optional("nvmlDeviceGetGpuInstanceId", n.nvmlDeviceGetGpuInstanceId, mig)
        ci_id = self._optional("nvmlDeviceGetComputeInstanceId", n.nvmlDeviceGetComputeInstanceId, mig)
        mem = self._optional("nvmlDeviceGetMemoryInfo", n.nvmlDeviceGetMemoryInfo, mig)
        attrs = self._optional("nvmlDeviceGetAttributes", n.nvmlDeviceGetAttributes, mig)
        procs = self._optional(
            "nvmlDeviceGetComputeRunningProcesses", n.nvmlDeviceGetComputeRunningProcesses, mig
        )
        profile_id = start = size = None
        profile_name: str | None = None
        if gi_id is not None:
            gi = self._optional("nvmlDeviceGetGpuInstanceById", n.nvmlDeviceGetGpuInstanceById, parent, gi_id)
            info = (
                self._optional("nvmlGpuInstanceGetInfo", n.nvmlGpuInstanceGetInfo, gi)
                if gi is not None
                else None
            )
            if info is not None:
                profile_id = int(info.profileId)
                start = int(info.placement.start)
                size = int(info.placement.size)
                prof = self._optional(
                    "nvmlDeviceGetGpuInstanceProfileInfoById",
                    n.nvmlDeviceGetGpuInstanceProfileInfoById,
                    parent,
                    profile_id,
                )
                if prof is not None and getattr(prof, "name", None):
                    profile_name = _text(prof.name)
        return MigDevice(
            index=index,
            uuid=_text(uuid) if uuid is not None else None,
            gpu_instance_id=int(gi_id) if gi_id is not None else None,
            compute_instance_id=int(ci_id) if ci_id is not None else None,
            profile_id=profile_id,
            profile_name=profile_name,
            placement_start=start,
            placement_size=size,
            slices=int(attrs.gpuInstanceSliceCount) if attrs is not None else None,
            memory=MemoryInfo(total_bytes=int(mem.total), used_bytes=int(mem.used))
            if mem is not None
            else None,
            process_count=len(procs) if procs is not None else None,
        )
