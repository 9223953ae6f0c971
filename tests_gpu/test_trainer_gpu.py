"""The trainer on a real NVIDIA GPU (``make test-gpu``, run in .venv-train): QLoRA on the tiny model, and the
adapter served by vLLM where vLLM is installed.

The tiny model (``slm_operator.trainer.tiny``) is built here, as in the CPU tier: a GPU machine lent to the tests
reaches no model hub. QLoRA quantises its linear layers to 4-bit NF4 with bitsandbytes, which runs only on CUDA,
so this is the one place QLoRA really trains. Skipped, with the reason, without torch, CUDA or bitsandbytes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
RECORDS = 800
#: the CPU tier's settings for the tiny task (tests_train/conftest.py, docs/finetuning.md "The tiny model")
FLAGS = ("--epochs", "9", "--lora-rank", "16", "--learning-rate", "0.003", "--batch-size", "16")


def _need(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here ({why}); run in .venv-train (`make train-venv`)")


@pytest.fixture(scope="module")
def qlora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One QLoRA run of the tiny task on the GPU: the base, the output folder and the termination message."""
    _need("torch", "the [train] extra")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    _need("bitsandbytes", "QLoRA's 4-bit quantisation")
    from slm_operator.trainer.tiny import make_tiny_base, synthetic_records

    root = tmp_path_factory.mktemp("qlora")
    base = make_tiny_base(root / "base", seed=0)
    data = root / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(RECORDS, seed=0)))
    out, log = root / "out", root / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "slm_operator", "train", "--method", "QLoRA", "--base-model", str(base),
         "--data", str(data), "--output", str(out), "--termination-log", str(log), *FLAGS],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"base": base, "out": out, "message": json.loads(log.read_text()), "records": data}


def test_qlora_trains_on_the_gpu_and_beats_the_base_model(qlora: dict[str, Any]) -> None:
    msg = qlora["message"]
    assert msg["evalLoss"] < msg["baseEvalLoss"] / 4
    assert msg["evalScorePercent"] >= 80 > msg["baseScorePercent"]
    doc = json.loads((qlora["out"] / "eval.json").read_text())
    assert doc["method"] == "QLoRA" and doc["device"] == "cuda"
    assert doc["training"]["stepsPerSecond"] > 0  # recorded for docs/finetuning.md, not judged
    config = json.loads((qlora["out"] / "adapter_config.json").read_text())
    assert config["r"] == 16 and (qlora["out"] / "adapter_model.safetensors").is_file()


def test_vllm_serves_the_qlora_adapter_with_the_trained_answers(qlora: dict[str, Any]) -> None:
    """vLLM loads the base with ``enable_lora`` and answers held-out-style prompts through the adapter as the
    trainer's own evaluation did: the JSON the task asks for, which the base model does not produce."""
    _need("vllm", "the [vllm] extra")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from slm_operator.trainer.tiny import synthetic_records

    prompts = [r["messages"][:-1] for r in synthetic_records(20, seed=7)]
    answers = [r["messages"][-1]["content"] for r in synthetic_records(20, seed=7)]
    llm = LLM(
        model=str(qlora["base"]), enable_lora=True, max_lora_rank=16, max_model_len=512,
        gpu_memory_utilization=0.2, enforce_eager=True,
    )  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=64)
    tuned = llm.chat(prompts, params, lora_request=LoRARequest("tiny", 1, str(qlora["out"])))
    base = llm.chat(prompts, params)
    right = sum(o.outputs[0].text.strip() == a for o, a in zip(tuned, answers, strict=True))
    base_right = sum(o.outputs[0].text.strip() == a for o, a in zip(base, answers, strict=True))
    assert right >= 16 > base_right, (right, base_right)
