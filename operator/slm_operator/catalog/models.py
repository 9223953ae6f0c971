"""SLM catalog: architecture facts of the supported small language models (data in ``models.yaml``).

Pure module: pydantic + pyyaml only. The YAML is loaded and validated when this module is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_PACKAGE = "slm_operator.catalog"
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")


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


class SlmModel(BaseModel):
    """One catalog model: canonical name, aliases (HF repo ids) and architecture."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description='canonical lower-case id, e.g. "qwen2.5-3b-instruct"')
    aliases: tuple[str, ...] = Field(default=(), description='e.g. HF repo id "Qwen/Qwen2.5-3B-Instruct"')
    family: str = Field(min_length=1)
    architecture: ModelArchitecture
    source: str = Field(min_length=1, description="where the facts come from (HF config.json URL)")

    @model_validator(mode="after")
    def _check(self) -> SlmModel:
        if not _NAME.match(self.name):
            raise ValueError(f"model name {self.name!r} must be lower-case [a-z0-9.-]")
        if not self.source.startswith("https://"):
            raise ValueError(f"model {self.name}: source must be an https URL")
        return self


def _load(text: str) -> tuple[SlmModel, ...]:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ValueError("models.yaml must be a mapping with a 'models' list")
    models = tuple(SlmModel.model_validate(item) for item in raw["models"])
    _check_unique(s.lower() for m in models for s in (m.name, *m.aliases))
    return models


def _check_unique(values: Iterable[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate model name or alias {v!r} in models.yaml")
        seen.add(v)


@lru_cache(maxsize=1)
def slm_models() -> tuple[SlmModel, ...]:
    """Every model in the catalog, in catalog order."""
    return _load(resources.files(_PACKAGE).joinpath("models.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _by_name() -> dict[str, SlmModel]:
    return {s.lower(): m for m in slm_models() for s in (m.name, *m.aliases)}


@lru_cache(maxsize=256)
def slm_by_name(name: str) -> SlmModel | None:
    """The catalog model called ``name`` (canonical name or alias such as the HF repo id, case-insensitive)."""
    return _by_name().get(name.strip().lower())


# Validate the shipped catalog at import time.
slm_models()
