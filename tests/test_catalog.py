"""Invariants of the GPU catalog (gpus.yaml) and the SLM catalog (models.yaml)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from slm_operator.catalog import (
    GpuModel,
    MigProfile,
    ModelArchitecture,
    find_layout,
    gpu_by_key,
    gpu_by_pci_device_id,
    gpu_by_product,
    gpu_models,
    sanitize_product_name,
    slm_by_name,
    slm_models,
)

CATALOG_DIR = Path(__file__).resolve().parents[1] / "operator" / "slm_operator" / "catalog"

REQUIRED_GPUS = {
    "A100-40GB",
    "A100-80GB",
    "A30",
    "H100-80GB",
    "H100-NVL-94GB",
    "H200-141GB",
    "GH200-96GB",
    "B200",
    "L4",
    "L40S",
    "T4",
}
MIG_GPUS = [g for g in gpu_models() if g.mig_capable]


def _ids(gpus: list[GpuModel]) -> list[str]:
    return [g.key for g in gpus]


# ------------------------------------------------------------------------------------------------ helpers
# Independent of the catalog code on purpose: brute force over the placements.


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    (sa, na), (sb, nb) = a, b
    return sa < sb + nb and sb < sa + na


def _max_placements(profile: MigProfile) -> int:
    """Largest k such that k placements of the profile exist with no memory slice used twice."""
    spans = [(s, profile.memory_slices) for s in profile.starts]
    for k in range(len(spans), 0, -1):
        for combo in itertools.combinations(spans, k):
            if not any(_overlaps(a, b) for a, b in itertools.combinations(combo, 2)):
                return k
    return 0


def _legal_layout(gpu: GpuModel, counts: dict[str, int]) -> list[tuple[str, int]] | None:
    """Any assignment of start slots to the instances in ``counts`` without overlap, or None."""
    instances = [gpu.profile(name) for name, n in counts.items() for _ in range(n)]
    if sum(p.compute_slices for p in instances) > gpu.compute_slices:
        return None
    for starts in itertools.product(*(p.starts for p in instances)):
        spans = [(s, p.memory_slices) for s, p in zip(starts, instances, strict=True)]
        if not any(_overlaps(a, b) for a, b in itertools.combinations(spans, 2)):
            return [(p.name, s) for p, s in zip(instances, starts, strict=True)]
    return None


# ------------------------------------------------------------------------------------------------ GPU catalog


def test_required_gpus_present() -> None:
    keys = {g.key for g in gpu_models()}
    assert keys >= REQUIRED_GPUS
    assert len(keys) == len(gpu_models())


def test_mig_capable_parts() -> None:
    for key in (
        "A100-40GB",
        "A100-80GB",
        "A30",
        "H100-80GB",
        "H100-NVL-94GB",
        "H200-141GB",
        "GH200-96GB",
        "B200",
    ):
        gpu = gpu_by_key(key)
        assert gpu.mig_capable
        assert (gpu.memory_slices, gpu.compute_slices) == ((4, 4) if key == "A30" else (8, 7))
    for key in ("L4", "L40S", "T4"):
        gpu = gpu_by_key(key)
        assert not gpu.mig_capable
        assert gpu.mig_profiles == ()
        assert gpu.all_balanced == {}
        assert gpu.memory_slices == gpu.compute_slices == 0


def test_non_mig_memory() -> None:
    # 24 GB, 48 GB and 16 GB boards: the framebuffer nvidia-smi prints is a bit below the marketing size.
    assert 22 * 1024 < gpu_by_key("L4").memory_mib <= 24 * 1024
    assert 44 * 1024 < gpu_by_key("L40S").memory_mib <= 48 * 1024
    assert 14 * 1024 < gpu_by_key("T4").memory_mib <= 16 * 1024


@pytest.mark.parametrize("gpu", MIG_GPUS, ids=_ids(MIG_GPUS))
def test_placements_within_gpu(gpu: GpuModel) -> None:
    for p in gpu.mig_profiles:
        assert p.starts, p.name
        for start in p.starts:
            assert start >= 0
            assert start + p.memory_slices <= gpu.memory_slices, (p.name, start)
            assert start % p.memory_slices == 0, (p.name, start)  # aligned to the profile's size
        assert p.compute_slices <= gpu.compute_slices


@pytest.mark.parametrize("gpu", MIG_GPUS, ids=_ids(MIG_GPUS))
def test_max_count_matches_placements(gpu: GpuModel) -> None:
    for p in gpu.mig_profiles:
        placements = _max_placements(p)
        if p.media_extensions:
            assert p.max_count == 1, p.name
        else:
            assert p.max_count == placements, p.name
        assert p.max_count * p.compute_slices <= gpu.compute_slices, p.name
        # "+me" are exactly the profiles held to one instance although more placements would fit.
        assert p.media_extensions == (p.max_count == 1 and placements > 1), p.name


@pytest.mark.parametrize("gpu", MIG_GPUS, ids=_ids(MIG_GPUS))
def test_profile_memory(gpu: GpuModel) -> None:
    for p in gpu.mig_profiles:
        assert 0 < p.memory_mib < gpu.memory_mib, p.name
        assert p.memory_bytes == p.memory_mib * (1 << 20)
        # the name's "<GB>gb" is rounded up from the memory fraction: usable GiB is a bit below it
        gb = int(p.name.split(".")[1].split("gb")[0])
        assert 0.80 * gb * (1 << 30) <= p.memory_bytes <= gb * (1 << 30), p.name
    for a, b in itertools.product(gpu.mig_profiles, repeat=2):
        if a.memory_slices < b.memory_slices:
            assert a.memory_mib < b.memory_mib, (a.name, b.name)
        if a.memory_slices == b.memory_slices:
            assert a.memory_mib == b.memory_mib, (a.name, b.name)
    # the full-GPU profile exists and uses every slice
    full = [p for p in gpu.mig_profiles if p.memory_slices == gpu.memory_slices]
    assert len(full) == 1 and full[0].compute_slices == gpu.compute_slices


@pytest.mark.parametrize("gpu", MIG_GPUS, ids=_ids(MIG_GPUS))
def test_all_balanced_is_legal(gpu: GpuModel) -> None:
    assert gpu.all_balanced
    for name, count in gpu.all_balanced.items():
        assert not gpu.profile(name).media_extensions
        assert 1 <= count <= gpu.profile(name).max_count
    assert _legal_layout(gpu, gpu.all_balanced) is not None
    layout = find_layout(gpu, gpu.all_balanced)
    assert layout is not None
    assert {name: len(starts) for name, starts in layout.items()} == gpu.all_balanced
    used: list[int] = []
    for name, starts in layout.items():
        for s in starts:
            assert s in gpu.profile(name).starts
            used.extend(range(s, s + gpu.profile(name).memory_slices))
    assert len(used) == len(set(used))


def test_all_balanced_shapes() -> None:
    assert gpu_by_key("A100-40GB").all_balanced == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
    assert gpu_by_key("H100-80GB").all_balanced == {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
    assert gpu_by_key("A30").all_balanced == {"1g.6gb": 2, "2g.12gb": 1}
    assert gpu_by_key("H200-141GB").all_balanced == {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}


def test_find_layout() -> None:
    h100 = gpu_by_key("H100-80GB")
    assert find_layout(h100, {"1g.10gb": 7}) == {"1g.10gb": (0, 1, 2, 3, 4, 5, 6)}
    assert find_layout(h100, {"4g.40gb": 1, "3g.40gb": 1}) == {"4g.40gb": (0,), "3g.40gb": (4,)}
    assert find_layout(h100, {"1g.10gb": 8}) is None  # more than max_count
    assert find_layout(h100, {"3g.40gb": 2, "1g.10gb": 1}) is None  # 7 compute slices, 8 memory slices used
    assert find_layout(h100, {"1g.20gb": 4}) == {"1g.20gb": (0, 2, 4, 6)}
    assert find_layout(h100, {"1g.20gb": 4, "1g.10gb": 1}) is None  # every memory slice taken
    assert find_layout(h100, {"1g.10gb+me": 1, "1g.10gb": 6}) is not None
    assert find_layout(h100, {}) == {}


def test_profile_lookup_and_resource_name() -> None:
    h100 = gpu_by_key("H100-80GB")
    p = h100.profile("1g.10gb")
    assert (p.profile_id, p.compute_slices, p.memory_slices, p.memory_mib, p.max_count) == (19, 1, 1, 9984, 7)
    assert p.resource_name == "nvidia.com/mig-1g.10gb"
    me = h100.profile("1g.10gb+me")
    assert me.media_extensions and me.resource_name == "nvidia.com/mig-1g.10gb.me"
    assert h100.profile("nvidia.com/mig-1g.10gb.me") is me
    assert h100.profile("mig-3g.40gb").memory_slices == 4
    for gpu in MIG_GPUS:
        for prof in gpu.mig_profiles:
            assert prof.resource_name == "nvidia.com/mig-" + prof.name.replace("+", ".")
            assert "+" not in prof.resource_name
    with pytest.raises(KeyError):
        h100.profile("1g.5gb")
    with pytest.raises(KeyError):
        gpu_by_key("H100-80GB").profile("9g.99gb")


def test_same_name_different_geometry() -> None:
    # "1g.10gb" is the 2-memory-slice profile on A100-40GB but the 1-slice profile on A100-80GB/H100-80GB.
    assert gpu_by_key("A100-40GB").profile("1g.10gb").memory_slices == 2
    assert gpu_by_key("A100-40GB").profile("1g.10gb").max_count == 4
    assert gpu_by_key("A100-80GB").profile("1g.10gb").memory_slices == 1
    assert gpu_by_key("H100-80GB").profile("1g.10gb").max_count == 7


def test_profile_ids() -> None:
    expected = {1: 19, 2: 15}
    for gpu in MIG_GPUS:
        if gpu.key == "A30":
            continue  # ids unknown (mock data only)
        ids = {p.name: p.profile_id for p in gpu.mig_profiles}
        assert sorted(i for i in ids.values() if i is not None) == [0, 5, 9, 14, 15, 19, 20], gpu.key
        for p in gpu.mig_profiles:
            if p.compute_slices == 1 and not p.media_extensions:
                assert p.profile_id == expected[p.memory_slices], (gpu.key, p.name)


def test_gpu_key_lookup() -> None:
    assert gpu_by_key("H100-80GB").key == "H100-80GB"
    assert gpu_by_key("h100-nvl-94gb").key == "H100-NVL-94GB"
    with pytest.raises(KeyError):
        gpu_by_key("V100")


def test_products_unique_and_well_formed() -> None:
    seen: dict[str, str] = {}
    for gpu in gpu_models():
        for product in gpu.products:
            assert product == sanitize_product_name(product), product  # already in GFD's sanitised form
            assert product.lower() not in seen, (product, seen.get(product.lower()))
            seen[product.lower()] = gpu.key
            assert gpu_by_product(product) is gpu


def test_pci_ids_unique_and_well_formed() -> None:
    seen: set[str] = set()
    for gpu in gpu_models():
        for dev in gpu.pci_device_ids:
            assert dev.startswith("0x") and len(dev) == 6 and dev == dev.lower()
            assert dev not in seen
            seen.add(dev)
            assert gpu_by_pci_device_id(dev) is gpu


@pytest.mark.parametrize(
    ("nvml_name", "label"),
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB"),
        ("NVIDIA L4", "NVIDIA-L4"),
        ("Tesla T4", "Tesla-T4"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA-A100-80GB-PCIe"),
        ("NVIDIA GH200 480GB", "NVIDIA-GH200-480GB"),
        ("NVIDIA RTX (TM) 6000", "NVIDIA-RTX-TM-6000"),
    ],
)
def test_sanitize_product_name(nvml_name: str, label: str) -> None:
    assert sanitize_product_name(nvml_name) == label


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA-H100-PCIe", "H100-80GB"),
        ("NVIDIA-H100-NVL", "H100-NVL-94GB"),
        ("NVIDIA-H200", "H200-141GB"),
        ("NVIDIA-A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA-A100-PCIE-40GB", "A100-40GB"),
        ("NVIDIA-A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA-A100-80GB-PCIe", "A100-80GB"),
        ("NVIDIA-A30", "A30"),
        ("NVIDIA-L40S", "L40S"),
        ("NVIDIA-L4", "L4"),
        ("Tesla-T4", "T4"),
        ("NVIDIA-GH200-480GB", "GH200-96GB"),
        ("NVIDIA-B200", "B200"),
        # single MIG strategy, sharing and older-driver forms
        ("A100-SXM4-40GB-MIG-1g.5gb", "A100-40GB"),
        ("A100-SXM4-40GB-MIG-1g.5gb-SHARED", "A100-40GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-INVALID", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "H100-80GB"),
        ("NVIDIA-L4-SHARED", "L4"),
        ("nvidia-h100-nvl", "H100-NVL-94GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),  # raw NVML name
        (" Tesla-T4 ", "T4"),
    ],
)
def test_gpu_by_product(label: str, key: str) -> None:
    gpu = gpu_by_product(label)
    assert gpu is not None, label
    assert gpu.key == key


@pytest.mark.parametrize("label", ["", "NVIDIA-L4X", "NVIDIA-GeForce-RTX-4090", "-MIG-1g.5gb", "NVIDIA-"])
def test_gpu_by_product_unknown(label: str) -> None:
    assert gpu_by_product(label) is None


@pytest.mark.parametrize(
    ("device_id", "key"),
    [
        ("0x2330", "H100-80GB"),
        ("0x2330", "H100-80GB"),
        ("2330", "H100-80GB"),
        ("0x233010DE", "H100-80GB"),  # NVML pciDeviceId / mig-parted device-filter
        ("0x233010de:0x16c110de", "H100-80GB"),  # with subsystem id
        ("10de:2330", "H100-80GB"),  # lspci
        ("0x20B0", "A100-40GB"),
        ("0x20B2", "A100-80GB"),
        ("0x20B7", "A30"),
        ("0x2321", "H100-NVL-94GB"),
        ("0x2335", "H200-141GB"),
        ("0x2342", "GH200-96GB"),
        ("0x2901", "B200"),
        ("0x27b8", "L4"),
        ("0x26b9", "L40S"),
        ("0x1eb8", "T4"),
    ],
)
def test_gpu_by_pci_device_id(device_id: str, key: str) -> None:
    gpu = gpu_by_pci_device_id(device_id)
    assert gpu is not None
    assert gpu.key == key


@pytest.mark.parametrize("device_id", ["0x9999", "", "0x", "zz", "0x1234567", "0x2330abcd"])
def test_gpu_by_pci_device_id_unknown(device_id: str) -> None:
    assert gpu_by_pci_device_id(device_id) is None


def test_mps_clients() -> None:
    for gpu in gpu_models():
        assert gpu.mps_max_clients == 48  # every catalog part is compute capability >= 7.5


def test_gpu_model_hashable_and_frozen() -> None:
    gpu = gpu_by_key("H100-80GB")
    assert {gpu, gpu_by_key("H100-80GB")} == {gpu}
    with pytest.raises(ValidationError):
        gpu.key = "X"  # type: ignore[misc]


def _h100_dict() -> dict[str, Any]:
    return gpu_by_key("H100-80GB").model_dump()


def _with_profile(data: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    data["mig_profiles"] = [{**p, **changes} if p["name"] == name else p for p in data["mig_profiles"]]
    return data


@pytest.mark.parametrize(
    "broken",
    [
        _with_profile(_h100_dict(), "1g.10gb", max_count=6),
        _with_profile(_h100_dict(), "1g.10gb+me", max_count=2),
        _with_profile(_h100_dict(), "2g.20gb", starts=(0, 2, 4, 6, 8)),
        _with_profile(_h100_dict(), "3g.40gb", starts=(0, 2, 4)),
        _with_profile(_h100_dict(), "3g.40gb", memory_mib=30000),
        _with_profile(_h100_dict(), "7g.80gb", memory_mib=90000),
        _with_profile(_h100_dict(), "1g.10gb", media_extensions=True),
        {**_h100_dict(), "all_balanced": {"3g.40gb": 2, "2g.20gb": 1}},
        {**_h100_dict(), "all_balanced": {"5g.50gb": 1}},
        {**_h100_dict(), "pci_device_ids": ("2330",)},
        {**_h100_dict(), "mig_capable": False},
        {**_h100_dict(), "compute_capability": "9"},
    ],
)
def test_gpu_validation_rejects(broken: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        GpuModel.model_validate(broken)


def test_gpu_validation_accepts_dump() -> None:
    for gpu in gpu_models():
        assert GpuModel.model_validate(gpu.model_dump()) == gpu


def test_catalog_modules_are_pure() -> None:
    for path in [*CATALOG_DIR.glob("*.py"), CATALOG_DIR.parent / "sizing.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"kopf", "kubernetes", "pynvml"}, (path.name, name)


# ------------------------------------------------------------------------------------------------ SLM catalog

REQUIRED_MODELS = {
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b-instruct": "Qwen/Qwen2.5-7B-Instruct",
    "llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "phi-3.5-mini-instruct": "microsoft/Phi-3.5-mini-instruct",
    "phi-4-mini-instruct": "microsoft/Phi-4-mini-instruct",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "mistral-7b-instruct-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
    "nemotron-mini-4b-instruct": "nvidia/Nemotron-Mini-4B-Instruct",
    "deepseek-r1-distill-qwen-1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "deepseek-r1-distill-qwen-7b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
}


def test_slm_catalog_size_and_required() -> None:
    models = slm_models()
    assert len(models) >= 15
    names = {m.name for m in models}
    assert set(REQUIRED_MODELS) <= names


def test_slm_names_unique() -> None:
    every = [s.lower() for m in slm_models() for s in (m.name, *m.aliases)]
    assert len(every) == len(set(every))
    for m in slm_models():
        assert m.name == m.name.lower()
        assert m.family


@pytest.mark.parametrize("model", slm_models(), ids=lambda m: m.name)
def test_slm_architecture_plausible(model: Any) -> None:
    a = model.architecture
    assert a.attention_heads % a.kv_heads == 0
    assert a.head_dim in (64, 96, 128, 256)
    # q projection width within a factor of two of the hidden size (Gemma-2 uses 256-wide heads)
    assert 0.5 <= a.head_dim * a.attention_heads / a.hidden_size <= 2.0
    if a.head_dim * a.attention_heads != a.hidden_size:
        assert model.family == "gemma-2"
    assert 0 < a.embedding_parameters < a.parameters
    assert a.embedding_parameters % a.hidden_size == 0  # vocab x hidden (x2 when untied)
    assert 1_000 <= a.max_context_tokens <= 1 << 20
    assert 100_000_000 <= a.parameters <= 10_000_000_000
    # the transformer blocks need at least the attention projections
    attention = a.layers * a.hidden_size * a.head_dim * (2 * a.attention_heads + 2 * a.kv_heads)
    assert a.embedding_parameters + attention < a.parameters
    assert model.source.startswith("https://huggingface.co/")
    assert model.source.endswith("/config.json")
    assert any(alias in model.source for alias in model.aliases)


def test_slm_known_facts() -> None:
    q3 = slm_by_name("qwen2.5-3b-instruct")
    assert q3 is not None
    assert (q3.architecture.layers, q3.architecture.kv_heads, q3.architecture.head_dim) == (36, 2, 128)
    l8 = slm_by_name("llama-3.1-8b-instruct")
    assert l8 is not None
    assert l8.architecture.parameters == 8_030_261_248
    assert l8.architecture.max_context_tokens == 131_072


@pytest.mark.parametrize(("name", "alias"), list(REQUIRED_MODELS.items()))
def test_slm_lookup(name: str, alias: str) -> None:
    model = slm_by_name(name)
    assert model is not None and model.name == name
    assert slm_by_name(alias) is model
    assert slm_by_name(alias.upper()) is model
    assert slm_by_name(alias.lower()) is model
    assert slm_by_name(f"  {name.upper()} ") is model


def test_slm_lookup_extra_alias_and_unknown() -> None:
    assert slm_by_name("meta-llama/Meta-Llama-3.1-8B-Instruct") is slm_by_name("llama-3.1-8b-instruct")
    assert slm_by_name("gpt-4") is None
    assert slm_by_name("") is None


def test_model_architecture_validation() -> None:
    ok = {
        "parameters": 10**9,
        "layers": 16,
        "hidden_size": 2048,
        "attention_heads": 32,
        "kv_heads": 8,
        "head_dim": 64,
        "max_context_tokens": 8192,
    }
    assert ModelArchitecture(**ok).embedding_parameters == 0  # contract-shaped constructor works
    with pytest.raises(ValidationError):
        ModelArchitecture(**{**ok, "kv_heads": 5})
    with pytest.raises(ValidationError):
        ModelArchitecture(**{**ok, "layers": 0})
    with pytest.raises(ValidationError):
        ModelArchitecture(**{**ok, "embedding_parameters": 2 * 10**9})


def test_yaml_files_shipped() -> None:
    assert (CATALOG_DIR / "gpus.yaml").is_file()
    assert (CATALOG_DIR / "models.yaml").is_file()
