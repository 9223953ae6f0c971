"""GPU memory sizing for one model server (vLLM-style) and the smallest GPU share that holds it.

Pure module: integer byte arithmetic only, no kopf / kubernetes / pynvml. See docs/sizing.md for the formula,
the justification of every constant and worked examples.

    total = weights + kv_cache + overhead
    weights  = 16-bit embeddings + quantised rest           (see _weights_bytes)
    kv_cache = 2 (K and V) x layers x kv_heads x head_dim x kv_element_bytes x context_tokens x concurrency
    overhead = RUNTIME_OVERHEAD_BYTES
               + ACTIVATION_VECTORS_PER_TOKEN x hidden_size x max_batched_tokens x ACTIVATION_ELEMENT_BYTES
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from slm_operator.catalog import GpuModel, MigProfile, ModelArchitecture, WeightFormat, gpu_models

MiB = 1 << 20
GiB = 1 << 30


class Quantization(StrEnum):
    """Weight precision of the served checkpoint (also used for the KV-cache element type)."""

    BF16 = "BF16"
    FP16 = "FP16"
    FP8 = "FP8"
    INT8 = "INT8"
    INT4 = "INT4"


# --- constants (justified in docs/sizing.md) -------------------------------------------------------------------

#: Bytes per weight for the quantised (linear-layer) parameters, except INT4 (see below).
WEIGHT_BYTES: dict[Quantization, int] = {
    Quantization.BF16: 2,
    Quantization.FP16: 2,
    Quantization.FP8: 1,  # per-tensor / per-channel scales are negligible (one float per output row at most)
    Quantization.INT8: 1,
}
#: Embedding and (untied) LM-head parameters stay 16-bit in AWQ/GPTQ INT4, FP8 and INT8 checkpoints and in vLLM's
#: on-the-fly FP8 quantisation (only the transformer's linear layers are quantised).
EMBEDDING_BYTES = 2
#: INT4 (AWQ / GPTQ) quantises in groups of 128 input weights; each group stores 128 x 4-bit weights, one FP16
#: scale and one packed 4-bit zero point: 64 + 2 + 0.5 bytes per 128 weights = 133/256 bytes per weight.
INT4_GROUP_SIZE = 128
INT4_SCALE_BITS = 16
INT4_ZERO_POINT_BITS = 4
#: Bits per group of ``INT4_GROUP_SIZE`` quantised weights, by checkpoint format (weights + scale + zero point).
#: AWQ and GPTQ store a packed zero point at the weight width (GPTQ also when symmetric); compressed-tensors W4A16
#: is symmetric and stores none. W8A8 and FP8 keep one scale per output channel at most: one byte per weight.
GROUP_BITS: dict[WeightFormat, int] = {
    WeightFormat.AWQ: INT4_GROUP_SIZE * 4 + INT4_SCALE_BITS + INT4_ZERO_POINT_BITS,
    WeightFormat.GPTQ_INT4: INT4_GROUP_SIZE * 4 + INT4_SCALE_BITS + INT4_ZERO_POINT_BITS,
    WeightFormat.W4A16: INT4_GROUP_SIZE * 4 + INT4_SCALE_BITS,
    WeightFormat.GPTQ_INT8: INT4_GROUP_SIZE * 8 + INT4_SCALE_BITS + 8,
    WeightFormat.W8A8: INT4_GROUP_SIZE * 8,
    WeightFormat.FP8: INT4_GROUP_SIZE * 8,
    WeightFormat.FP8_ONLINE: INT4_GROUP_SIZE * 8,
}
#: The format a quantisation is sized with when no checkpoint names one (a model given by its architecture).
DEFAULT_FORMAT: dict[Quantization, WeightFormat] = {
    Quantization.BF16: WeightFormat.BF16,
    Quantization.FP16: WeightFormat.FP16,
    Quantization.FP8: WeightFormat.FP8_ONLINE,
    Quantization.INT8: WeightFormat.W8A8,
    Quantization.INT4: WeightFormat.AWQ,
}
#: KV-cache element size: vLLM's default --kv-cache-dtype=auto stores K/V in the model dtype (BF16/FP16 for every
#: catalog model, also when the weights are quantised); FP8 KV cache is opt-in (kv_cache_dtype=FP8).
KV_CACHE_ELEMENT_BYTES: dict[Quantization, int] = {
    Quantization.BF16: 2,
    Quantization.FP16: 2,
    Quantization.FP8: 1,
}
#: CUDA context + CUDA/cuBLAS/NCCL libraries + PyTorch allocator slack + CUDA-graph pool of one server process.
RUNTIME_OVERHEAD_BYTES = 1 * GiB
#: Token budget of one engine step (vLLM --max-num-batched-tokens); the renderer should pass the same value.
MAX_NUM_BATCHED_TOKENS = 2048
#: Peak live activations per batched token, in hidden-size 16-bit vectors: the fused gate/up MLP output (2 x
#: intermediate, intermediate = 2.7-5.8 x hidden in the catalog), the activated intermediate, residual and
#: norm outputs; 20 covers the widest catalog MLP (Qwen2.5-1.5B, intermediate = 5.83 x hidden -> ~19.5).
ACTIVATION_VECTORS_PER_TOKEN = 20
ACTIVATION_ELEMENT_BYTES = 2


class MemoryEstimate(BaseModel):
    """Device memory one model server needs, in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    kv_bytes_per_token: int
    context_tokens: int
    concurrency: int
    quantization: Quantization


class ShareOption(BaseModel):
    """The smallest share of one catalog GPU that holds an estimate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str  # GpuModel.key
    mig_profile: str | None  # smallest MIG profile that holds the estimate (None if none / not MIG)
    whole_gpu_fits: bool
    mps_max_replicas_per_gpu: int  # how many copies fit as MPS clients with equal memory caps (0 = none)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def weights_bytes(
    arch: ModelArchitecture, quantization: Quantization, weight_format: WeightFormat | None = None
) -> int:
    """Bytes of the weights of ``arch`` in GPU memory, stored at ``quantization`` in ``weight_format`` (the
    loaded checkpoint's format; by default the usual one for the quantisation, see ``DEFAULT_FORMAT``)."""
    q = Quantization(quantization)
    fmt = weight_format or DEFAULT_FORMAT[q]
    if fmt in (WeightFormat.BF16, WeightFormat.FP16):
        return arch.parameters * 2
    quantised = arch.parameters - arch.embedding_parameters
    embeddings = arch.embedding_parameters * EMBEDDING_BYTES
    return embeddings + _ceil_div(quantised * GROUP_BITS[fmt], INT4_GROUP_SIZE * 8)


def checkpoint_bytes(
    arch: ModelArchitecture, quantization: Quantization, weight_format: WeightFormat | None
) -> int:
    """Bytes a replica downloads and reads from disk: the checkpoint's weights. vLLM's on-the-fly FP8 loads the
    16-bit checkpoint and quantises it on the GPU, so it reads twice what it keeps."""
    fmt = weight_format or DEFAULT_FORMAT[Quantization(quantization)]
    if fmt is WeightFormat.FP8_ONLINE:
        return arch.parameters * 2
    return weights_bytes(arch, quantization, fmt)


def kv_bytes_per_token(arch: ModelArchitecture, kv_cache_dtype: Quantization = Quantization.BF16) -> int:
    """KV-cache bytes one token of one sequence occupies (all layers, K and V)."""
    kv = Quantization(kv_cache_dtype)
    if kv not in KV_CACHE_ELEMENT_BYTES:
        raise ValueError(f"unsupported KV-cache dtype {kv.value}; use BF16, FP16 or FP8")
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * KV_CACHE_ELEMENT_BYTES[kv]


def estimate_memory(
    arch: ModelArchitecture,
    quantization: Quantization,
    context_tokens: int,
    concurrency: int,
    *,
    kv_cache_dtype: Quantization = Quantization.BF16,
    max_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
    weight_format: WeightFormat | None = None,
) -> MemoryEstimate:
    """Memory for serving ``arch`` with ``concurrency`` sequences of up to ``context_tokens`` tokens each.

    ``weight_format`` is the format of the checkpoint actually loaded (``SlmModel.checkpoint``); by default the
    usual one for ``quantization``. Raises ValueError when ``context_tokens`` exceeds ``arch.max_context_tokens`` (the context is not clamped:
    the caller asked for something the model can not serve) or when an argument is not positive.
    """
    q = Quantization(quantization)
    if context_tokens < 1:
        raise ValueError(f"context_tokens must be at least 1, got {context_tokens}")
    if context_tokens > arch.max_context_tokens:
        raise ValueError(
            f"context_tokens {context_tokens} exceeds the model's maximum context of "
            f"{arch.max_context_tokens} tokens"
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if max_batched_tokens < 1:
        raise ValueError(f"max_batched_tokens must be at least 1, got {max_batched_tokens}")
    per_token = kv_bytes_per_token(arch, kv_cache_dtype)
    weights = weights_bytes(arch, q, weight_format)
    kv_cache = per_token * context_tokens * concurrency
    activations = (
        ACTIVATION_VECTORS_PER_TOKEN * arch.hidden_size * max_batched_tokens * ACTIVATION_ELEMENT_BYTES
    )
    overhead = RUNTIME_OVERHEAD_BYTES + activations
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead,
        total_bytes=weights + kv_cache + overhead,
        kv_bytes_per_token=per_token,
        context_tokens=context_tokens,
        concurrency=concurrency,
        quantization=q,
    )


def smallest_mig_profile(gpu: GpuModel, total_bytes: int) -> MigProfile | None:
    """The smallest non-+me MIG profile of ``gpu`` whose usable memory holds ``total_bytes``.

    "Smallest" = fewest memory slices, then fewest compute slices (keeps SMs for others), then least memory.
    """
    fitting = [p for p in gpu.mig_profiles if not p.media_extensions and p.memory_bytes >= total_bytes]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (p.memory_slices, p.compute_slices, p.memory_mib, p.name))


def mps_max_replicas(gpu: GpuModel, total_bytes: int) -> int:
    """How many MPS clients with equal pinned-memory caps (total / N, as the device plugin's MPS daemon sets
    them, in whole MiB) can each hold ``total_bytes``; at most ``gpu.mps_max_clients``, 0 if not even one."""
    n = min(gpu.mps_max_clients, gpu.memory_bytes // total_bytes)
    while n > 0 and (gpu.memory_mib // n) * MiB < total_bytes:
        n -= 1
    return n


def smallest_shares(total_bytes: int) -> list[ShareOption]:
    """For every catalog GPU (catalog order): the smallest MIG profile holding ``total_bytes``, whether the whole
    GPU holds it, and how many equal MPS shares of it could each hold it."""
    if total_bytes < 1:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    options: list[ShareOption] = []
    for gpu in gpu_models():
        profile = smallest_mig_profile(gpu, total_bytes)
        options.append(
            ShareOption(
                gpu=gpu.key,
                mig_profile=profile.name if profile else None,
                whole_gpu_fits=total_bytes <= gpu.memory_bytes,
                mps_max_replicas_per_gpu=mps_max_replicas(gpu, total_bytes),
            )
        )
    return options
