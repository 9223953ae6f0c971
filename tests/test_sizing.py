"""Sizing: hand-computed estimates, monotonicity, quantisation order and smallest-share selection."""

from __future__ import annotations

import pytest

from slm_operator.catalog import ModelArchitecture, gpu_by_key, gpu_models, slm_by_name, slm_models
from slm_operator.sizing import (
    ACTIVATION_ELEMENT_BYTES,
    ACTIVATION_VECTORS_PER_TOKEN,
    MAX_NUM_BATCHED_TOKENS,
    RUNTIME_OVERHEAD_BYTES,
    GiB,
    MemoryEstimate,
    MiB,
    Quantization,
    ShareOption,
    estimate_memory,
    kv_bytes_per_token,
    mps_max_replicas,
    smallest_mig_profile,
    smallest_shares,
    weights_bytes,
)


def _arch(name: str) -> ModelArchitecture:
    model = slm_by_name(name)
    assert model is not None, name
    return model.architecture


def test_constants() -> None:
    constants = (
        RUNTIME_OVERHEAD_BYTES,
        MAX_NUM_BATCHED_TOKENS,
        ACTIVATION_VECTORS_PER_TOKEN,
        ACTIVATION_ELEMENT_BYTES,
    )
    assert constants == (1 * GiB, 2048, 20, 2)


# ---------------------------------------------------------------------------------------- hand-computed examples


def test_qwen25_3b_bf16_8k_x8() -> None:
    est = estimate_memory(_arch("qwen2.5-3b-instruct"), Quantization.BF16, 8192, 8)
    weights = 3_085_938_688 * 2  # parameters x 2 bytes                      = 6_171_877_376 (5.75 GiB)
    kv_per_token = 2 * 36 * 2 * 128 * 2  # K+V x layers x kv_heads x head_dim x 2 B = 36_864
    kv = kv_per_token * 8192 * 8  # x context x concurrency                 = 2_415_919_104 (2.25 GiB)
    overhead = 1024**3 + 20 * 2048 * 2048 * 2  # 1 GiB + 20 x hidden x 2048 tok x 2 B = 1_241_513_984
    total = weights + kv + overhead  # = 9_829_310_464 (9.15 GiB)
    assert est.kv_bytes_per_token == kv_per_token == 36_864
    assert est.weights_bytes == pytest.approx(weights, rel=0.01)
    assert est.kv_cache_bytes == pytest.approx(kv, rel=0.01)
    assert est.overhead_bytes == pytest.approx(overhead, rel=0.01)
    assert est.total_bytes == pytest.approx(total, rel=0.01)
    assert est.total_bytes == 9_829_310_464  # the integer arithmetic is exact
    assert (est.context_tokens, est.concurrency, est.quantization) == (8192, 8, Quantization.BF16)


def test_llama31_8b_fp8_16k_x4() -> None:
    est = estimate_memory(_arch("llama-3.1-8b-instruct"), Quantization.FP8, 16384, 4)
    embeddings = 128_256 * 4096 * 2  # vocab x hidden x (embedding + untied LM head) = 1_050_673_152
    weights = embeddings * 2 + (8_030_261_248 - embeddings) * 1  # 16-bit embeddings, FP8 rest = 9_080_934_400
    kv_per_token = 2 * 32 * 8 * 128 * 2  # = 131_072
    kv = kv_per_token * 16384 * 4  # = 8_589_934_592 (8 GiB)
    overhead = 1024**3 + 20 * 4096 * 2048 * 2  # = 1_409_286_144
    total = weights + kv + overhead  # = 19_080_155_136 (17.77 GiB)
    assert est.kv_bytes_per_token == kv_per_token
    assert est.weights_bytes == pytest.approx(weights, rel=0.01)
    assert est.kv_cache_bytes == pytest.approx(kv, rel=0.01)
    assert est.total_bytes == pytest.approx(total, rel=0.01)
    assert est.total_bytes == 19_080_155_136


def test_smollm2_17b_int4_4k_x16() -> None:
    est = estimate_memory(_arch("smollm2-1.7b-instruct"), Quantization.INT4, 4096, 16)
    embeddings = 49_152 * 2048  # tied: one vocab x hidden matrix          = 100_663_296
    quantised = 1_711_376_384 - embeddings  # = 1_610_713_088
    # INT4 group 128: 64 B of weights + 2 B FP16 scale + 0.5 B INT4 zero per group = 133/256 B per weight
    weights = embeddings * 2 + quantised * 133 / 256  # = 201_326_592 + 836_815_784 = 1_038_142_376
    kv_per_token = 2 * 24 * 32 * 64 * 2  # no GQA                           = 196_608
    kv = kv_per_token * 4096 * 16  # = 12_884_901_888 (12 GiB)
    overhead = 1024**3 + 20 * 2048 * 2048 * 2  # = 1_241_513_984
    total = weights + kv + overhead  # = 15_164_558_248 (14.12 GiB)
    assert est.weights_bytes == pytest.approx(weights, rel=0.01)
    assert est.kv_cache_bytes == pytest.approx(kv, rel=0.01)
    assert est.total_bytes == pytest.approx(total, rel=0.01)
    assert est.weights_bytes == 1_038_142_376


def test_results_are_integers() -> None:
    est = estimate_memory(_arch("qwen2.5-0.5b-instruct"), Quantization.INT4, 1000, 3)
    for field in ("weights_bytes", "kv_cache_bytes", "overhead_bytes", "total_bytes", "kv_bytes_per_token"):
        assert type(getattr(est, field)) is int, field
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert isinstance(est, MemoryEstimate)


# ---------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("model", slm_models(), ids=lambda m: m.name)
def test_monotone_in_context_and_concurrency(model: object) -> None:
    arch = model.architecture  # type: ignore[attr-defined]
    contexts = [c for c in (1, 512, 2048, 4096, 8192, 32768, 131072) if c <= arch.max_context_tokens]
    for q in Quantization:
        totals = [estimate_memory(arch, q, c, 4).total_bytes for c in contexts]
        assert totals == sorted(totals) and len(set(totals)) == len(totals)
        by_conc = [estimate_memory(arch, q, contexts[-1], n).total_bytes for n in (1, 2, 4, 16, 64)]
        assert by_conc == sorted(by_conc) and len(set(by_conc)) == len(by_conc)
        # KV cache is exactly linear in context x concurrency
        one = estimate_memory(arch, q, 1024, 1).kv_cache_bytes
        assert estimate_memory(arch, q, 1024, 6).kv_cache_bytes == 6 * one
        assert estimate_memory(arch, q, 3072, 1).kv_cache_bytes == 3 * one


@pytest.mark.parametrize("model", slm_models(), ids=lambda m: m.name)
def test_quantisation_order(model: object) -> None:
    arch = model.architecture  # type: ignore[attr-defined]
    w = {q: weights_bytes(arch, q) for q in Quantization}
    assert w[Quantization.INT4] < w[Quantization.FP8] < w[Quantization.BF16]
    assert w[Quantization.FP16] == w[Quantization.BF16] == 2 * arch.parameters
    assert w[Quantization.INT8] == w[Quantization.FP8]
    # INT4 with scales is still a bit more than half a byte per quantised weight
    assert w[Quantization.INT4] > arch.parameters // 2
    # the quantisation never changes the KV cache (16-bit by default)
    kvs = {estimate_memory(arch, q, 1024, 2).kv_cache_bytes for q in Quantization}
    assert len(kvs) == 1


def test_fp8_kv_cache_halves_kv() -> None:
    arch = _arch("llama-3.2-3b-instruct")
    assert kv_bytes_per_token(arch) == 2 * 28 * 8 * 128 * 2
    assert kv_bytes_per_token(arch, Quantization.FP8) * 2 == kv_bytes_per_token(arch)
    default = estimate_memory(arch, Quantization.BF16, 8192, 4)
    fp8 = estimate_memory(arch, Quantization.BF16, 8192, 4, kv_cache_dtype=Quantization.FP8)
    assert fp8.kv_cache_bytes * 2 == default.kv_cache_bytes
    with pytest.raises(ValueError, match="KV-cache dtype"):
        kv_bytes_per_token(arch, Quantization.INT4)


def test_max_batched_tokens_scales_activation() -> None:
    arch = _arch("llama-3.2-1b-instruct")
    small = estimate_memory(arch, Quantization.BF16, 4096, 1, max_batched_tokens=1024)
    big = estimate_memory(arch, Quantization.BF16, 4096, 1, max_batched_tokens=8192)
    assert big.overhead_bytes - small.overhead_bytes == 20 * 2048 * (8192 - 1024) * 2


def test_context_limit_rejected() -> None:
    arch = _arch("qwen2.5-3b-instruct")
    # the maximum itself is fine
    assert estimate_memory(arch, Quantization.BF16, 32768, 1).context_tokens == 32768
    with pytest.raises(ValueError, match="exceeds the model's maximum context of 32768 tokens"):
        estimate_memory(arch, Quantization.BF16, 32769, 1)
    with pytest.raises(ValueError, match="context_tokens"):
        estimate_memory(arch, Quantization.BF16, 0, 1)
    with pytest.raises(ValueError, match="concurrency"):
        estimate_memory(arch, Quantization.BF16, 1024, 0)


def test_quantization_strings() -> None:
    assert [q.value for q in Quantization] == ["BF16", "FP16", "FP8", "INT8", "INT4"]
    assert (
        Quantization("BF16") is Quantization.BF16
    )  # the spelling of the API (and its CRD enum), nothing else
    assert Quantization.FP8 == "FP8"
    with pytest.raises(ValueError):
        Quantization("int3")
    arch = _arch("gemma-2-2b-it")
    by_string = estimate_memory(arch, "FP8", 2048, 2)  # type: ignore[arg-type]
    assert by_string == estimate_memory(arch, Quantization.FP8, 2048, 2)


# ---------------------------------------------------------------------------------------- smallest shares


def _row(rows: list[ShareOption], key: str) -> ShareOption:
    (row,) = [r for r in rows if r.gpu == key]
    return row


def test_smallest_shares_6gib() -> None:
    rows = smallest_shares(6 * GiB)
    assert [r.gpu for r in rows] == [g.key for g in gpu_models()]  # one row per catalog GPU, catalog order
    h100 = _row(rows, "H100-80GB")
    assert h100.mig_profile == "1g.10gb"
    assert h100.whole_gpu_fits
    assert h100.mps_max_replicas_per_gpu == 13  # 81559 // 13 = 6273 MiB >= 6144; 81559 // 14 = 5825 < 6144
    # A100-40GB: 1g.10gb and 2g.10gb both use 2 memory slices; fewer compute slices wins
    assert _row(rows, "A100-40GB").mig_profile == "1g.10gb"
    assert _row(rows, "A100-80GB").mig_profile == "1g.10gb"
    assert _row(rows, "A30").mig_profile == "2g.12gb"
    assert _row(rows, "H200-141GB").mig_profile == "1g.18gb"
    assert _row(rows, "B200").mig_profile == "1g.23gb"
    l4 = _row(rows, "L4")
    assert l4.mig_profile is None and l4.whole_gpu_fits
    assert l4.mps_max_replicas_per_gpu == 3  # 23034 // 3 = 7678 MiB >= 6144; 23034 // 4 = 5758 < 6144


def test_smallest_shares_prefers_fewer_memory_slices() -> None:
    # 15 GiB on H100-80GB: 1g.20gb and 2g.20gb both fit (2 memory slices), 1g.20gb has fewer compute slices
    assert _row(smallest_shares(15 * GiB), "H100-80GB").mig_profile == "1g.20gb"
    # 25 GiB on H100-80GB: the next size is 4 memory slices: 3g.40gb before 4g.40gb
    assert _row(smallest_shares(25 * GiB), "H100-80GB").mig_profile == "3g.40gb"
    # exactly the usable memory of a profile fits; one byte more does not
    assert _row(smallest_shares(9984 * MiB), "H100-80GB").mig_profile == "1g.10gb"
    assert _row(smallest_shares(9984 * MiB + 1), "H100-80GB").mig_profile == "1g.20gb"


def test_smallest_shares_never_media_extensions() -> None:
    for total in (1 * MiB, 3 * GiB, 6 * GiB, 12 * GiB, 30 * GiB, 70 * GiB, 150 * GiB):
        for row in smallest_shares(total):
            if row.mig_profile is not None:
                assert "+me" not in row.mig_profile
                gpu = gpu_by_key(row.gpu)
                chosen = gpu.profile(row.mig_profile)
                assert chosen.memory_bytes >= total
                smaller = [
                    p
                    for p in gpu.mig_profiles
                    if p.memory_bytes >= total
                    and (p.memory_slices, p.compute_slices) < (chosen.memory_slices, chosen.compute_slices)
                    and not p.media_extensions
                ]
                assert smaller == []


def test_smallest_shares_nothing_fits() -> None:
    for row in smallest_shares(1 << 40):  # 1 TiB
        assert row.mig_profile is None
        assert not row.whole_gpu_fits
        assert row.mps_max_replicas_per_gpu == 0
    # 50 GiB: no MIG profile of an 80 GB H100 short of the full 7g.80gb
    assert _row(smallest_shares(50 * GiB), "H100-80GB").mig_profile == "7g.80gb"
    assert _row(smallest_shares(80 * GiB), "H100-80GB").mig_profile is None
    assert not _row(smallest_shares(80 * GiB), "H100-80GB").whole_gpu_fits


def test_mps_replicas() -> None:
    h100 = gpu_by_key("H100-80GB")
    assert mps_max_replicas(h100, 1) == 48  # capped at the MPS client limit
    assert mps_max_replicas(h100, h100.memory_bytes) == 1
    assert mps_max_replicas(h100, h100.memory_bytes + 1) == 0
    for n in range(1, 49):
        cap = (h100.memory_mib // n) * MiB
        assert mps_max_replicas(h100, cap) >= n
        assert mps_max_replicas(h100, cap + 1) < n


def test_smallest_mig_profile_non_mig_gpu() -> None:
    assert smallest_mig_profile(gpu_by_key("L40S"), 1) is None


def test_smallest_shares_rejects_non_positive() -> None:
    with pytest.raises(ValueError):
        smallest_shares(0)


def test_worked_examples_shares() -> None:
    """The rows quoted in docs/sizing.md."""
    est = estimate_memory(_arch("qwen2.5-3b-instruct"), Quantization.BF16, 8192, 8)
    rows = smallest_shares(est.total_bytes)
    assert _row(rows, "H100-80GB").mig_profile == "1g.10gb"
    assert _row(rows, "A100-40GB").mig_profile == "1g.10gb"
    est = estimate_memory(_arch("llama-3.1-8b-instruct"), Quantization.FP8, 16384, 4)
    rows = smallest_shares(est.total_bytes)
    assert _row(rows, "H100-80GB").mig_profile == "1g.20gb"
    assert _row(rows, "A100-40GB").mig_profile == "3g.20gb"
    assert not _row(rows, "T4").whole_gpu_fits
