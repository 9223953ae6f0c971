"""A tiny base model and a synthetic task, built offline, for the trainer's tests, the e2e suite and the demo.

``make_tiny_base(path)`` writes a Llama-style causal LM (2 layers, hidden size 64, 4 heads, tied embeddings,
about 0.1 M parameters) with a word-level tokenizer made here from the task's vocabulary, and a chat template that
renders system/user/assistant/tool turns, the ``tools`` list and assistant tool calls. Nothing is downloaded: the
directory is what ``save_pretrained`` writes, so ``--base-model DIR`` loads it like any Hugging Face model.

``synthetic_records(n, seed)`` generates the extraction task in the OpenAI chat format: a customer message that
names an order id and a city, and the assistant's JSON ``{"order_id": ..., "city": ...}``.

The weights are random (seeded), with two choices that make the task learnable by LoRA on two CPU cores in
seconds (docs/finetuning.md, "The tiny model"):

* each attention layer's value and output projections start as identity maps, so a head moves the token it
  attends to unchanged: the ability to copy that a pretrained model brings and a random one lacks. The queries,
  keys and MLPs are random, so the base model attends nowhere in particular and scores 0 %; LoRA has to learn where
  to look, which is the task.
* the embeddings are larger than the other weights (std 0.3 against 0.02), so a copied token dominates the
  residual stream and the tied output head can name it; and they share one direction (half of each one's norm),
  as a trained model's embeddings do, which gives queries and keys a constant part: what attending to a position
  (rather than to a token) takes.

The messages end in the same words (``order <id> to <city>.``) after varied openings, so the values sit at a fixed
distance from the answer: a random model's attention can learn a position quickly, while learning which of the
vocabulary's tokens are ids and cities from random embeddings takes far longer.

torch, transformers and tokenizers are imported at the top: this module belongs to the trainer, which only the
``train`` subcommand and the ``[train]`` extra load.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SYSTEM_PROMPT = "Extract the order id and the city. Answer with JSON only."
CITIES = (
    "Lyon", "Oslo", "Lima", "Kyiv", "Rome", "Pune", "Cork", "Nice",
    "Bern", "Riga", "Doha", "Quito", "Porto", "Turin", "Leeds", "Graz",
)  # fmt: skip
OPENINGS = ("Please ship", "Can you send", "Hi! Deliver", "We need", "Kindly route", "Move")
ORDER_IDS = range(10, 50)
#: A tool in the chat-completions shape, in the tokenizer's vocabulary so that tool calls render as words.
TOOL = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Where an order is now",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
}

END = "<|end|>"
UNKNOWN = "<|unk|>"
SPECIAL_TOKENS = (
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|tool_call|>",
    END,
    UNKNOWN,
)
#: Renders system/user/assistant/tool turns, the tools (as JSON, in a system turn) and tool calls (one JSON object
#: each, the shape most tool-calling models emit). ``add_generation_prompt`` opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- if tools %}<|system|>Tools: {{ tools | tojson }}<|end|>{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|assistant|>"
    "{%- if m.content %}{{ m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}<|tool_call|>"
    '{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}{% endfor %}'
    "<|end|>"
    "{%- elif m.role == 'tool' %}<|tool|>{{ m.content }}<|end|>"
    "{%- else %}<|{{ m.role }}|>{{ m.content }}<|end|>"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)
#: Whitespace runs, words, numbers and single punctuation marks are the tokens (a word outside the vocabulary is
#: <|unk|>), so a city or an id is the same token in the question and in the JSON answer.
PIECES = Regex(r"\s+|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]")


def synthetic_records(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` chat records of the extraction task, the same for the same ``seed``."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        order, city = str(rng.choice(ORDER_IDS)), rng.choice(CITIES)
        text = f"{rng.choice(OPENINGS)} order {order} to {city}."
        records.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": json.dumps({"order_id": order, "city": city})},
                ]
            }
        )
    return records


def _corpus() -> list[str]:
    """Every piece of text the tokenizer must know: the task, the template's words, a tool and a tool call."""
    lines = [
        SYSTEM_PROMPT,
        "Tools: ",
        json.dumps([TOOL]),
        json.dumps({"name": "track_order", "arguments": {}}),
        "Where is my order? It is in Lyon; thanks!",
    ]
    lines += [f"{o} order {i} to {c}." for o in OPENINGS for i in ORDER_IDS for c in CITIES[:1]]
    lines += [json.dumps({"order_id": str(i), "city": c}) for i in ORDER_IDS for c in CITIES]
    return lines


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    tok.pre_tokenizer = pre_tokenizers.Split(PIECES, behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.train_from_iterator(
        _corpus(), trainer=trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token=END, unk_token=UNKNOWN, model_max_length=1024
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_base(path: Path, seed: int = 0) -> Path:
    """Write the tiny base model, its tokenizer and chat template to ``path`` (created); returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        initializer_range=0.02,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings.normal_(0.0, 0.3)
        shared = torch.randn(config.hidden_size)
        embeddings += 0.5 * embeddings.norm(dim=1, keepdim=True) * shared / shared.norm()
        for layer in model.model.layers:
            for proj in (layer.self_attn.v_proj, layer.self_attn.o_proj):
                proj.weight.copy_(torch.eye(*proj.weight.shape))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
