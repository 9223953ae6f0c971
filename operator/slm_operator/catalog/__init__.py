"""GPU and SLM facts (``gpus.yaml``, ``models.yaml``), validated when this package is imported."""

from slm_operator.catalog.gpus import (
    GpuModel,
    MigProfile,
    find_layout,
    gpu_by_key,
    gpu_by_pci_device_id,
    gpu_by_product,
    gpu_models,
    max_non_overlapping,
    sanitize_product_name,
)
from slm_operator.catalog.models import ModelArchitecture, SlmModel, slm_by_name, slm_models

__all__ = [
    "GpuModel",
    "MigProfile",
    "ModelArchitecture",
    "SlmModel",
    "find_layout",
    "gpu_by_key",
    "gpu_by_pci_device_id",
    "gpu_by_product",
    "gpu_models",
    "max_non_overlapping",
    "sanitize_product_name",
    "slm_by_name",
    "slm_models",
]
