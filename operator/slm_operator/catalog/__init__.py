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
from slm_operator.catalog.models import (
    Checkpoint,
    ModelArchitecture,
    ServingFlags,
    SlmModel,
    WeightFormat,
    serving_flags,
    slm_by_name,
    slm_models,
)

#: The vLLM release the operator renders command lines for (default image tag ``vllm/vllm-openai:v<VERSION>``);
#: the flags, tool-call and reasoning parser names in ``models.yaml`` were read from this release's sources.
VLLM_VERSION = "0.33.0"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"

__all__ = [
    "VLLM_IMAGE",
    "VLLM_VERSION",
    "Checkpoint",
    "GpuModel",
    "MigProfile",
    "ModelArchitecture",
    "ServingFlags",
    "SlmModel",
    "WeightFormat",
    "find_layout",
    "gpu_by_key",
    "gpu_by_pci_device_id",
    "gpu_by_product",
    "gpu_models",
    "max_non_overlapping",
    "sanitize_product_name",
    "serving_flags",
    "slm_by_name",
    "slm_models",
]
