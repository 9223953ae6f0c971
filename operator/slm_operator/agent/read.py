"""``read_inventory(nvml)``: one pass over every GPU through the :class:`Nvml` interface.

Pure apart from the NVML calls: no Kubernetes, no clock, no global state, so the tests drive it with
:class:`~slm_operator.agent.fake.FakeNvml`. A failing call on one GPU is written into that GPU's ``error``
field and the pass goes on; "not supported" answers that NVML gives by design (utilisation of a MIG-enabled
GPU, the MIG mode of a GPU without MIG) are not errors, and neither are "not supported"/"no permission" for
the optional figures (utilisation, process count): those are just left out. Only a failing device count
raises. The operator ignores the agent's inventory of a node with an ``error`` on any GPU, so an error means
that something the planner needs (identity, memory, MIG mode or MIG devices) could not be read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

from slm_operator.agent.interface import (
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    MigDevice,
    Nvml,
    NvmlError,
)
from slm_operator.agent.model import GpuInfo, Inventory, MigInstanceInfo
from slm_operator.catalog import GpuModel, gpu_by_pci_device_id, gpu_by_product, sanitize_product_name

T = TypeVar("T")
MiB = 1 << 20
GiB = 1 << 30
_OPTIONAL = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION)
_PROFILE = re.compile(r"^[1-9][0-9]*g\.[1-9][0-9]*gb(\+[a-z.]+|-me)?$")


def _try(errors: list[str], call: Callable[[], T], quiet: tuple[int, ...] = ()) -> T | None:
    """``call()``, or None; NVML errors are appended to ``errors`` unless their code is in ``quiet``."""
    try:
        return call()
    except NvmlError as exc:
        if exc.code not in quiet:
            errors.append(str(exc))
        return None


def pci_device_id_text(packed: int) -> str:
    """NVML's packed 0xDDDDVVVV as the catalog's "0xdddd"."""
    return f"0x{(packed >> 16) & 0xFFFF:04x}"


def mig_memory_gb(gpu_total_bytes: int, mig_memory_bytes: int) -> int:
    """The ``<GB>`` of a MIG profile name, as go-nvlib ``getMigMemorySizeGB`` computes it."""
    fraction = math.ceil(mig_memory_bytes / gpu_total_bytes * 8) / 8
    return round(fraction * math.ceil(gpu_total_bytes / GiB))


def profile_name(model: GpuModel | None, dev: MigDevice, gpu_total_bytes: int | None) -> str:
    """Catalog name of a MIG device's profile: NVML's name if the catalog knows it, else the catalog name of its
    profile ID, else NVML's name, else one derived from slices and memory ("unknown" if nothing is known)."""
    nvml_name = (dev.profile_name or "").strip().removeprefix("MIG ").strip() or None
    known = {p.name for p in model.mig_profiles} if model else set()
    if nvml_name in known:
        return nvml_name
    if model is not None and dev.profile_id is not None:
        for p in model.mig_profiles:
            if p.profile_id == dev.profile_id:
                return p.name
    if nvml_name and _PROFILE.match(nvml_name):
        return nvml_name
    if dev.slices and dev.memory and gpu_total_bytes:
        return f"{dev.slices}g.{mig_memory_gb(gpu_total_bytes, dev.memory.total_bytes)}gb"
    return "unknown"


def _mig_instance(model: GpuModel | None, dev: MigDevice, gpu_total: int | None) -> MigInstanceInfo:
    return MigInstanceInfo(
        profile=profile_name(model, dev, gpu_total),
        profile_id=dev.profile_id,
        start=dev.placement_start,
        size=dev.placement_size,
        gi_id=dev.gpu_instance_id,
        uuid=dev.uuid,
        memory_total_bytes=dev.memory.total_bytes if dev.memory else None,
        memory_used_bytes=dev.memory.used_bytes if dev.memory else None,
        process_count=dev.process_count,
    )


def read_gpu(nvml: Nvml, index: int) -> GpuInfo:
    """Everything the agent reports about GPU ``index``; failures end up in ``error``."""
    errors: list[str] = []
    uuid = _try(errors, lambda: nvml.uuid(index))
    name = _try(errors, lambda: nvml.name(index))
    packed = _try(errors, lambda: nvml.pci_device_id(index))
    memory = _try(errors, lambda: nvml.memory(index))
    pci = pci_device_id_text(packed) if packed is not None else None
    product = sanitize_product_name(name) if name else None
    model = (gpu_by_pci_device_id(pci) if pci else None) or (gpu_by_product(product) if product else None)

    mig_capable: bool | None = None
    mig_enabled: bool | None = None
    mig_pending: bool | None = None
    mig_errors: list[str] = []
    mode = _try(mig_errors, lambda: nvml.mig_mode(index), quiet=(NVML_ERROR_NOT_SUPPORTED,))
    if mode is not None:
        mig_capable, (mig_enabled, mig_pending) = True, mode
    elif not mig_errors:  # NOT_SUPPORTED: a GPU without MIG
        mig_capable, mig_enabled = False, False
    errors += mig_errors

    instances: tuple[MigInstanceInfo, ...] | None = None
    if mig_enabled:
        devices = _try(errors, lambda: nvml.mig_devices(index))
        if devices is not None:
            total = memory.total_bytes if memory else None
            instances = tuple(
                sorted(
                    (_mig_instance(model, d, total) for d in devices),
                    key=lambda m: (m.start is None, m.start or 0, m.gi_id or 0, m.profile),
                )
            )
    elif mig_enabled is False:
        instances = ()

    # nice-to-have figures: absent (not an error) where NVML does not support them or does not let us see them
    util = _try(errors, lambda: nvml.utilization(index), quiet=_OPTIONAL)
    processes = _try(errors, lambda: nvml.process_count(index), quiet=_OPTIONAL)
    return GpuInfo(
        index=index,
        uuid=uuid,
        name=name,
        product=product,
        model=model.key if model else None,
        pci_device_id=pci,
        memory_total_bytes=memory.total_bytes if memory else None,
        memory_used_bytes=memory.used_bytes if memory else None,
        mig_capable=mig_capable,
        mig_enabled=mig_enabled,
        mig_pending=mig_pending,
        mig_instances=instances,
        utilization_gpu_percent=util.gpu_percent if util else None,
        utilization_memory_percent=util.memory_percent if util else None,
        process_count=processes,
        error="; ".join(errors) or None,
    )


def read_inventory(nvml: Nvml, node: str | None = None) -> Inventory:
    """Read every GPU of an initialised ``nvml``. Raises :class:`NvmlError` only if the device count fails."""
    count = nvml.device_count()
    driver = _try([], nvml.driver_version)
    return Inventory(node=node, driver_version=driver, gpus=tuple(read_gpu(nvml, i) for i in range(count)))
