"""Loading the base model for LoRA, QLoRA or a full fine-tune, and the incumbent for comparison.

* **LoRA**: the base weights frozen in bf16 on a GPU that supports it (else fp32), a peft LoRA adapter on every
  linear layer of the model except its output head (found from the model, so any architecture works).
* **QLoRA**: the base quantised to 4-bit NF4 by bitsandbytes (double quantisation, bf16 compute), the same
  adapter; needs a CUDA GPU.
* **Full**: every weight trained.

The adapter is what vLLM serves with ``--lora-modules``: it targets only linear layers and saves no other module.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from slm_operator.trainer.errors import BadInput, Unsupported
from slm_operator.trainer.options import TrainOptions

ADAPTER_CONFIG = "adapter_config.json"


class ModelLoadError(BadInput):
    """The base model or the incumbent cannot be loaded as given."""


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(base_model: str) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--base-model {base_model}: cannot load its tokenizer: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training batches; the evaluation pads its prompts on the left itself
    return tokenizer


def _quantisation(method: str) -> BitsAndBytesConfig | None:
    if method != "QLoRA":
        return None
    if not torch.cuda.is_available():
        raise Unsupported(
            "--method QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is visible: use --method LoRA to train "
            "on this machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Unsupported(
            "--method QLoRA needs bitsandbytes (installed by the [train] extra on Linux x86_64)"
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(options: TrainOptions, path: str | None = None) -> Any:
    """The base model (or, with ``path``, a full-weights model) as the method trains or evaluates it."""
    source = path or options.base_model
    quantisation = _quantisation(options.method)
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if quantisation else _dtype()}
    if quantisation is not None:
        kwargs.update(quantization_config=quantisation, device_map={"": 0})
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        flag = "--incumbent" if path else "--base-model"
        raise ModelLoadError(f"{flag} {source}: cannot load the model: {exc}") from None
    if quantisation is not None:
        model = prepare_model_for_kbit_training(model)
    return model


def lora_targets(model: Any) -> list[str]:
    """The names of the model's linear layers, its output head excluded: what the adapter trains."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return sorted(names)


def with_adapter(model: Any, options: TrainOptions) -> Any:
    """The model to train: a LoRA-wrapped base, or the base itself for ``Full``."""
    if not options.uses_lora:
        return model
    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.alpha,
        lora_dropout=0.0,
        target_modules=lora_targets(model),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_incumbent(options: TrainOptions) -> Any:
    """The weights the target deployment serves now: a PEFT adapter on the base, or full weights."""
    assert options.incumbent is not None
    folder = options.incumbent
    if not (folder / ADAPTER_CONFIG).is_file():
        return load_base(options, path=str(folder))
    base = load_base(options)
    try:
        return PeftModel.from_pretrained(base, str(folder))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"--incumbent {folder}: the adapter does not load on --base-model {options.base_model}: {exc}"
        ) from None


def save_result(model: Any, tokenizer: Any, options: TrainOptions) -> list[str]:
    """Write the adapter (or the full weights and the tokenizer) at the output's root; the files written."""
    model.save_pretrained(str(options.output), safe_serialization=True)
    if not options.uses_lora:
        tokenizer.save_pretrained(str(options.output))
    return sorted(p.name for p in options.output.iterdir() if p.is_file())
