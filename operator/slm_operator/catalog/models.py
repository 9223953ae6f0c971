"""SLM catalog: architecture facts of the supported small language models (data in ``models.yaml``).

Pure module: pydantic + pyyaml only. The YAML is loaded and validated when this module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_PACKAGE = "slm_operator.catalog"
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelArchitecture(BaseModel):
    """What sizing needs from a model's config.json (plus the parameter count from the model card)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameters: int = Field(ge=1, description="total parameter count")
    layers: int = Field(ge=1, description="num_hidden_layers")
    hidden_size: int = Field(ge=1)
    attention_heads: int = Field(ge=1, description="num_attention_heads")
    kv_heads: int = Field(ge=1, description="num_key_value_heads")
    head_dim: int = Field(ge=1, description="head_dim, or hidden_size / num_attention_heads")
    max_context_tokens: int = Field(ge=1, description="max_position_embeddings")
    # Not in the published contract; defaults to 0 so contract-shaped constructors keep working.
    embedding_parameters: int = Field(
        default=0,
        ge=0,
        description="input embedding + untied LM head parameters (kept in 16-bit by quantised checkpoints)",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelArchitecture:
        if self.attention_heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide attention_heads {self.attention_heads}")
        if self.embedding_parameters >= self.parameters:
            raise ValueError("embedding_parameters must be less than parameters")
        return self


class WeightFormat(StrEnum):
    """How a checkpoint stores its weights once vLLM has loaded them (sizing.py turns it into bytes)."""

    BF16 = "BF16"
    FP16 = "FP16"
    #: AWQ 4-bit, group 128, FP16 scale and 4-bit zero point per group (vLLM detects it from config.json).
    AWQ = "AWQ"
    #: GPTQ 4-bit, group 128, FP16 scale and packed 4-bit zero point per group.
    GPTQ_INT4 = "GPTQ-Int4"
    #: GPTQ 8-bit (weight-only), group 128, FP16 scale and packed 8-bit zero point per group.
    GPTQ_INT8 = "GPTQ-Int8"
    #: compressed-tensors W4A16 (llm-compressor), group 128, symmetric: FP16 scale per group, no zero point.
    W4A16 = "W4A16"
    #: compressed-tensors W8A8 INT8 (per-channel weight scales, dynamic per-token activation scales).
    W8A8 = "W8A8"
    #: a pre-quantised FP8 checkpoint (per-tensor or per-channel scales).
    FP8 = "FP8"
    #: the BF16 checkpoint quantised to FP8 by vLLM while loading (``--quantization fp8``).
    FP8_ONLINE = "FP8-online"


#: Weight formats a quantisation may be served with (the catalog's ``checkpoints`` keys are checked against it).
FORMATS_BY_QUANTIZATION: dict[str, frozenset[WeightFormat]] = {
    "BF16": frozenset({WeightFormat.BF16}),
    "FP16": frozenset({WeightFormat.FP16}),
    "FP8": frozenset({WeightFormat.FP8, WeightFormat.FP8_ONLINE}),
    "INT8": frozenset({WeightFormat.GPTQ_INT8, WeightFormat.W8A8}),
    "INT4": frozenset({WeightFormat.AWQ, WeightFormat.GPTQ_INT4, WeightFormat.W4A16}),
}


class Checkpoint(BaseModel):
    """A checkpoint vLLM loads for one quantisation of a catalog model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repository: str = Field(pattern=_REPO.pattern, description="Hugging Face repository id (owner/name)")
    format: WeightFormat
    #: ``--quantization`` to pass; None for pre-quantised checkpoints, whose config.json names the method (passing
    #: ``awq`` explicitly would pin vLLM to the slow AWQ kernel instead of AWQ-Marlin).
    vllm_quantization: str | None = None


class ServingFlags(BaseModel):
    """vLLM flags an agent needs for one model family (tool calls, reasoning, chat template)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool_call_parser: str | None = Field(
        default=None, description="--tool-call-parser (with auto tool choice)"
    )
    reasoning_parser: str | None = Field(default=None, description="--reasoning-parser")
    chat_template: str | None = Field(default=None, description="--chat-template (a path in the vLLM image)")
    source: str = Field(min_length=1, description="where the flags come from (vLLM docs or source)")

    def args(self) -> list[str]:
        """The flags, in a stable order."""
        out: list[str] = []
        if self.tool_call_parser:
            out += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.reasoning_parser:
            out += ["--reasoning-parser", self.reasoning_parser]
        if self.chat_template:
            out += ["--chat-template", self.chat_template]
        return out


class SlmModel(BaseModel):
    """One catalog model: canonical name, aliases (HF repo ids), architecture and the checkpoints vLLM loads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description='canonical lower-case id, e.g. "qwen2.5-3b-instruct"')
    aliases: tuple[str, ...] = Field(default=(), description='e.g. HF repo id "Qwen/Qwen2.5-3B-Instruct"')
    family: str = Field(min_length=1)
    license: str = Field(
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="the model card's licence tag (apache-2.0, mit, llama3.1, ...)",
    )
    architecture: ModelArchitecture
    source: str = Field(min_length=1, description="where the facts come from (HF config.json URL)")
    repository: str = Field(pattern=_REPO.pattern, description="HF repository of the BF16 checkpoint")
    checkpoints: dict[str, Checkpoint] = Field(
        default_factory=dict,
        description="INT4 / INT8 / FP8 checkpoint per quantisation (FP8 defaults to online)",
    )

    @model_validator(mode="after")
    def _check(self) -> SlmModel:
        if not _NAME.match(self.name):
            raise ValueError(f"model name {self.name!r} must be lower-case [a-z0-9.-]")
        if not self.source.startswith("https://"):
            raise ValueError(f"model {self.name}: source must be an https URL")
        for quant, ckpt in self.checkpoints.items():
            if ckpt.format not in FORMATS_BY_QUANTIZATION.get(quant, frozenset()):
                raise ValueError(f"model {self.name}: a {ckpt.format.value} checkpoint cannot serve {quant}")
        return self

    def checkpoint(self, quantization: str) -> Checkpoint | None:
        """The checkpoint vLLM loads for ``quantization``, or None when the model has none.

        BF16 and FP16 load the original repository; FP8 loads a pre-quantised checkpoint when the catalog lists
        one, else the original quantised by vLLM while loading; INT4 and INT8 need a listed checkpoint.
        """
        if quantization in self.checkpoints:
            return self.checkpoints[quantization]
        if quantization in ("BF16", "FP16"):
            return Checkpoint(repository=self.repository, format=WeightFormat(quantization))
        if quantization == "FP8":
            return Checkpoint(
                repository=self.repository, format=WeightFormat.FP8_ONLINE, vllm_quantization="fp8"
            )
        return None

    def quantizations(self) -> list[str]:
        """The quantisations this model can be served with, in the API's order."""
        return [q for q in FORMATS_BY_QUANTIZATION if self.checkpoint(q) is not None]


def _load(text: str) -> tuple[tuple[SlmModel, ...], dict[str, ServingFlags]]:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ValueError("models.yaml must be a mapping with a 'models' list")
    families = {k: ServingFlags.model_validate(v) for k, v in (raw.get("families") or {}).items()}
    models = tuple(SlmModel.model_validate(item) for item in raw["models"])
    _check_unique(s.lower() for m in models for s in (m.name, *m.aliases))
    missing = sorted({m.family for m in models} - set(families))
    if missing:
        raise ValueError(f"models.yaml: families {missing} have no entry under 'families'")
    return models, families


@lru_cache(maxsize=1)
def _catalog() -> tuple[tuple[SlmModel, ...], dict[str, ServingFlags]]:
    return _load(resources.files(_PACKAGE).joinpath("models.yaml").read_text(encoding="utf-8"))


def _check_unique(values: Iterable[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate model name or alias {v!r} in models.yaml")
        seen.add(v)


@lru_cache(maxsize=1)
def slm_models() -> tuple[SlmModel, ...]:
    """Every model in the catalog, in catalog order."""
    return _catalog()[0]


def serving_flags(family: str) -> ServingFlags | None:
    """The vLLM flags of a model family (tool-call and reasoning parsers, chat template)."""
    return _catalog()[1].get(family)


@lru_cache(maxsize=1)
def _by_name() -> dict[str, SlmModel]:
    return {s.lower(): m for m in slm_models() for s in (m.name, *m.aliases)}


@lru_cache(maxsize=256)
def slm_by_name(name: str) -> SlmModel | None:
    """The catalog model called ``name`` (canonical name or alias such as the HF repo id, case-insensitive)."""
    return _by_name().get(name.strip().lower())


# Validate the shipped catalog at import time.
slm_models()
