"""The node agent's inventory (pydantic v2): what ``--once`` prints and, compacted, what the Node carries.

JSON uses camelCase. The Node annotation ``slm.io/gpu-inventory`` holds :meth:`Inventory.annotation_json`:
the same document without ``null`` fields and without the utilisation rates (they change on every poll and
the operator does not plan with them; they are Prometheus metrics). The operator reads ``index``,
``migEnabled``, ``migInstances[].profile``/``start`` and ``memoryUsedBytes`` of each GPU
(``slm_operator.inventory._agent_gpus``); a GPU whose entry has ``error`` makes it fall back to the GFD labels
for that node. Bump ``INVENTORY_VERSION`` on an incompatible change.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

INVENTORY_VERSION = 1
#: fields left out of the Node annotation (volatile; exported as metrics instead)
VOLATILE_GPU_FIELDS = frozenset({"utilization_gpu_percent", "utilization_memory_percent"})


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


class MigInstanceInfo(_Model):
    """One MIG device (GPU instance) of a MIG-enabled GPU."""

    profile: str = Field(description='catalog profile name, e.g. "3g.40gb" ("unknown" if it cannot be told)')
    profile_id: int | None = Field(default=None, description="GPU-instance profile ID (nvidia-smi), e.g. 9")
    start: int | None = Field(default=None, ge=0, description="placement start (first memory slice)")
    size: int | None = Field(default=None, ge=0, description="memory slices occupied")
    gi_id: int | None = Field(default=None, ge=0, description="GPU instance id")
    uuid: str | None = None
    memory_total_bytes: int | None = Field(default=None, ge=0)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    process_count: int | None = Field(default=None, ge=0)


class GpuInfo(_Model):
    """One physical GPU as NVML reports it."""

    index: int = Field(ge=0, description="NVML device index")
    uuid: str | None = None
    name: str | None = Field(default=None, description='NVML name, e.g. "NVIDIA H100 80GB HBM3"')
    product: str | None = Field(default=None, description="GFD-style nvidia.com/gpu.product value")
    model: str | None = Field(default=None, description='catalog GPU key, e.g. "H100-80GB" (None if unknown)')
    pci_device_id: str | None = Field(default=None, description='PCI device id, e.g. "0x2330"')
    memory_total_bytes: int | None = Field(default=None, ge=0)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    mig_capable: bool | None = None
    mig_enabled: bool | None = Field(default=None, description="current MIG mode")
    mig_pending: bool | None = Field(default=None, description="pending MIG mode (after the next GPU reset)")
    mig_instances: tuple[MigInstanceInfo, ...] | None = None
    utilization_gpu_percent: int | None = Field(default=None, ge=0, le=100)
    utilization_memory_percent: int | None = Field(default=None, ge=0, le=100)
    process_count: int | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, description="NVML failures while reading this GPU")


class Inventory(_Model):
    """Every GPU of one node."""

    version: int = INVENTORY_VERSION
    node: str | None = None
    driver_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The full document (JSON types, camelCase, ``null`` fields kept)."""
        return self.model_dump(mode="json", by_alias=True)

    def annotation_dict(self) -> dict[str, Any]:
        """The document published on the Node: no ``null`` fields, no volatile fields."""
        return self.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude={"gpus": {"__all__": set(VOLATILE_GPU_FIELDS)}},
        )

    def annotation_json(self) -> str:
        return json.dumps(self.annotation_dict(), separators=(",", ":"), sort_keys=True)
