"""What a replica pod asks vLLM to do: the checkpoint it loads, the names it serves, the agent flags of the
model's family, and probes, cache and shutdown sized from the weights (issue 10, part 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import SLMDeployment
from slm_operator.catalog import VLLM_IMAGE, VLLM_VERSION, WeightFormat, slm_by_name, slm_models
from slm_operator.contract import (
    ADAPTER_ANNOTATION,
    PROMOTED_LORA_RANK_ANNOTATION,
    PROMOTED_METHOD_ANNOTATION,
)
from slm_operator.inventory import DemandError, Sizing, size_deployment
from slm_operator.planner.model import ReplicaPlacement, Share
from slm_operator.render import (
    MODEL_LOAD_BYTES_PER_SECOND,
    PROBE_PERIOD_SECONDS,
    STARTUP_MARGIN_SECONDS,
    OperatorConfig,
    replica_pod,
)
from slm_operator.sizing import Quantization, estimate_memory

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def dep(
    model: dict[str, Any], name: str = "agent", annotations: dict[str, str] | None = None
) -> SLMDeployment:
    return SLMDeployment.model_validate(
        {
            "metadata": {"name": name, "namespace": "team", "uid": "u1", "annotations": annotations or {}},
            "spec": {"poolRef": {"name": "h100"}, "model": model},
        }
    )


def pod(d: SLMDeployment) -> dict[str, Any]:
    sizing = size_deployment(d)
    p = ReplicaPlacement.model_validate(
        {
            "deployment": "team/agent",
            "ordinal": 0,
            "qos": "Burstable",
            "memoryGiB": 20.0,
            "memory_bytes": sizing.memory_bytes,
            "share": Share(mechanism="Exclusive", memory_bytes=80 * GiB),
        }
    )
    return replica_pod(d, p, "node-a", 0, "H100-80GB", "h100", sizing, OperatorConfig())


def server(d: SLMDeployment) -> dict[str, Any]:
    container: dict[str, Any] = pod(d)["spec"]["containers"][0]
    return container


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# ------------------------------------------------------------------------------------------ what vLLM loads


def test_a_catalog_model_loads_its_hugging_face_repository_not_the_catalog_name() -> None:
    args = server(dep({"name": "qwen2.5-3b-instruct"}))["args"]
    assert flag(args, "--model") == "Qwen/Qwen2.5-3B-Instruct"
    assert flag(args, "--served-model-name") == "agent"
    assert "--quantization" not in args


def test_a_qwen_int4_deployment_loads_the_awq_checkpoint_and_is_sized_from_it() -> None:
    d = dep({"name": "qwen2.5-3b-instruct", "quantization": "INT4"})
    args = server(d)["args"]
    assert flag(args, "--model") == "Qwen/Qwen2.5-3B-Instruct-AWQ"
    # vLLM reads `quant_method: awq` from the checkpoint's config.json and picks AWQ-Marlin; an explicit
    # `--quantization awq` would pin the slow AWQ kernel.
    assert "--quantization" not in args
    sizing = size_deployment(d)
    assert sizing.checkpoint is not None and sizing.checkpoint.format is WeightFormat.AWQ
    assert sizing.estimate is not None and sizing.estimate.weights_bytes < 2 * GiB


def test_int8_loads_the_published_int8_checkpoint_and_sizes_its_group_scales() -> None:
    d = dep({"name": "qwen2.5-7b-instruct", "quantization": "INT8"})
    assert flag(server(d)["args"], "--model") == "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8"
    sizing = size_deployment(d)
    arch = slm_by_name("qwen2.5-7b-instruct").architecture  # type: ignore[union-attr]
    w8a8 = estimate_memory(arch, Quantization.INT8, 4096, 8, weight_format=WeightFormat.W8A8)
    assert sizing.estimate is not None and sizing.estimate.weights_bytes > w8a8.weights_bytes


def test_fp8_is_quantised_by_vllm_unless_a_pre_quantised_checkpoint_exists() -> None:
    args = server(dep({"name": "qwen2.5-3b-instruct", "quantization": "FP8"}))["args"]
    assert flag(args, "--model") == "Qwen/Qwen2.5-3B-Instruct" and flag(args, "--quantization") == "fp8"
    args = server(dep({"name": "llama-3.1-8b-instruct", "quantization": "FP8"}))["args"]
    assert flag(args, "--model") == "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8" and "--quantization" not in args


def test_a_quantisation_the_model_does_not_have_is_refused_naming_what_it_has() -> None:
    with pytest.raises(DemandError) as err:
        size_deployment(dep({"name": "phi-3.5-mini-instruct", "quantization": "INT4"}))
    assert err.value.reason == "QuantizationUnavailable"
    assert "has no INT4 checkpoint" in str(err.value) and "BF16, FP16, FP8" in str(err.value)


def test_the_cli_estimate_refuses_a_missing_quantisation_the_same_way() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "slm_operator", "estimate", "smollm2-1.7b-instruct", "-q", "INT4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "has no INT4 checkpoint" in r.stderr and "BF16, FP16, FP8" in r.stderr


def test_every_catalog_model_names_its_repository_and_checkpoints_per_quantisation() -> None:
    for m in slm_models():
        assert m.repository in m.aliases, m.name
        assert {"BF16", "FP16", "FP8"} <= set(m.quantizations()), m.name
        for q in m.quantizations():
            ckpt = m.checkpoint(q)
            assert ckpt is not None and "/" in ckpt.repository


# ------------------------------------------------------------------------------------------ agent flags


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("qwen2.5-7b-instruct", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]),
        ("llama-3.1-8b-instruct", ["--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"]),
        ("mistral-7b-instruct-v0.3", ["--enable-auto-tool-choice", "--tool-call-parser", "mistral"]),
        ("deepseek-r1-distill-qwen-7b", ["--reasoning-parser", "deepseek_r1"]),
    ],
)
def test_each_family_gets_the_flags_agents_need(model: str, expected: list[str]) -> None:
    args = server(dep({"name": model}))["args"]
    i = args.index(expected[0])
    assert args[i : i + len(expected)] == expected


def test_a_family_without_a_tool_format_gets_no_tool_flags() -> None:
    args = server(dep({"name": "gemma-2-2b-it"}))["args"]
    assert "--enable-auto-tool-choice" not in args and "--tool-call-parser" not in args


# ------------------------------------------------------------------------------------------ model source


ARCH = {"parameters": 3_000_000_000, "layers": 28, "hiddenSize": 2048, "attentionHeads": 16, "kvHeads": 2,
        "headDim": 128}  # fmt: skip


def test_a_hugging_face_source_is_loaded_at_its_revision_with_the_token_from_a_secret() -> None:
    c = server(
        dep(
            {
                "name": "clause-tagger",
                "architecture": ARCH,
                "source": {
                    "huggingFace": {"repository": "acme/clause-tagger-3b", "revision": "v2"},
                    "tokenSecretRef": {"name": "hf", "key": "token"},
                },
            }
        )
    )
    assert flag(c["args"], "--model") == "acme/clause-tagger-3b" and flag(c["args"], "--revision") == "v2"
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_a_pvc_source_is_mounted_read_only_and_loaded_from_its_path() -> None:
    d = dep(
        {
            "name": "clause-tagger",
            "architecture": ARCH,
            "source": {"pvc": {"claimName": "models", "path": "ct"}},
        }
    )
    p = pod(d)
    assert flag(p["spec"]["containers"][0]["args"], "--model") == "/models/ct"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in p["spec"][
        "volumes"
    ]


# ------------------------------------------------------------------------------------------ adapters


def test_a_promoted_lora_adapter_is_served_under_the_deployment_name() -> None:
    annotations = {ADAPTER_ANNOTATION: "pvc://adapters/extractor/v1", PROMOTED_METHOD_ANNOTATION: "LoRA"}
    p = pod(dep({"name": "qwen2.5-3b-instruct"}, annotations=annotations))
    args = p["spec"]["containers"][0]["args"]
    assert flag(args, "--lora-modules") == "agent=/adapters/extractor/v1"
    assert flag(args, "--served-model-name") == "agent-base" and "--enable-lora" in args
    assert flag(args, "--model") == "Qwen/Qwen2.5-3B-Instruct"
    assert {"name": "adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in p[
        "spec"
    ]["volumes"]


@pytest.mark.parametrize(
    ("rank", "max_lora_rank"), [("8", None), ("16", None), ("64", "64"), ("100", "128"), ("512", "512")]
)
def test_an_adapter_above_vllms_default_rank_gets_room_for_it(rank: str, max_lora_rank: str | None) -> None:
    # vLLM refuses to load an adapter whose rank is above --max-lora-rank (default 16); it takes only its own
    # set of ranks, so the operator rounds up to the next one.
    annotations = {
        ADAPTER_ANNOTATION: "pvc://adapters/extractor/v1",
        PROMOTED_METHOD_ANNOTATION: "LoRA",
        PROMOTED_LORA_RANK_ANNOTATION: rank,
    }
    args = server(dep({"name": "qwen2.5-3b-instruct"}, annotations=annotations))["args"]
    assert (flag(args, "--max-lora-rank") if "--max-lora-rank" in args else None) == max_lora_rank


def test_a_promoted_full_fine_tune_is_served_as_the_model() -> None:
    annotations = {ADAPTER_ANNOTATION: "pvc://weights/extractor/full", PROMOTED_METHOD_ANNOTATION: "Full"}
    args = server(dep({"name": "qwen2.5-3b-instruct"}, annotations=annotations))["args"]
    assert flag(args, "--model") == "/adapters/extractor/full"
    assert flag(args, "--served-model-name") == "agent"
    assert "--enable-lora" not in args and "--lora-modules" not in args


# ------------------------------------------------------------------------------------------ pod lifecycle


def test_the_startup_probe_scales_with_the_weights_to_load() -> None:
    small, big = dep({"name": "qwen2.5-0.5b-instruct"}), dep({"name": "qwen2.5-7b-instruct"})
    probes = [server(d)["startupProbe"] for d in (small, big)]
    assert probes[0]["httpGet"] == {"path": "/health", "port": "http"}
    assert probes[0]["failureThreshold"] < probes[1]["failureThreshold"]
    sizing: Sizing = size_deployment(big)
    allowed = probes[1]["failureThreshold"] * probes[1]["periodSeconds"]
    assert probes[1]["periodSeconds"] == PROBE_PERIOD_SECONDS
    assert allowed >= sizing.download_bytes / MODEL_LOAD_BYTES_PER_SECOND + STARTUP_MARGIN_SECONDS


def test_online_fp8_downloads_the_16_bit_checkpoint() -> None:
    fp8 = size_deployment(dep({"name": "qwen2.5-7b-instruct", "quantization": "FP8"}))
    assert fp8.estimate is not None and fp8.download_bytes == 2 * fp8.estimate.weights_bytes - (
        slm_by_name("qwen2.5-7b-instruct").architecture.embedding_parameters * 2  # type: ignore[union-attr]
    )


def test_readiness_liveness_cache_and_graceful_shutdown() -> None:
    p = pod(dep({"name": "qwen2.5-7b-instruct"}))
    c = p["spec"]["containers"][0]
    assert (
        c["readinessProbe"]["httpGet"]["path"] == "/health"
        and c["livenessProbe"]["httpGet"]["path"] == "/health"
    )
    cache = next(v for v in p["spec"]["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"].endswith("Mi") and int(cache["emptyDir"]["sizeLimit"][:-2]) > 15_000
    assert {"name": "HF_HOME", "value": "/model-cache"} in c["env"]
    assert p["spec"]["terminationGracePeriodSeconds"] >= 30 and c["lifecycle"]["preStop"]["exec"]


def test_the_default_image_is_the_pinned_vllm_release() -> None:
    assert f"vllm/vllm-openai:v{VLLM_VERSION}" == VLLM_IMAGE
    assert server(dep({"name": "qwen2.5-3b-instruct"}))["image"] == VLLM_IMAGE
