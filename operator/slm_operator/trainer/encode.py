"""Examples to token ids with the base model's own chat template; the loss falls on the assistant's tokens only.

An example is rendered twice by the tokenizer's chat template (with its ``tools``): the prompt with the
generation prompt (the template's opening of an assistant turn), and the whole conversation with the target
assistant message. The tokens both share are the prompt: their labels are -100 (no loss); the rest (the
assistant's answer and the template's end-of-turn token) are what the model learns. Control tokens inside the
messages' text are encoded as text (``sanitize_control_tokens``), so a record cannot forge a turn.

A conversation longer than ``--max-seq-len`` is cut at the end; one whose answer would be cut off entirely is
dropped (counted as too long).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slm_operator.trainer.data import Example
from slm_operator.trainer.errors import BadInput

IGNORE = -100


class TemplateError(BadInput):
    """The base model's tokenizer cannot render the examples (no chat template, or the template fails)."""


@dataclass(frozen=True)
class Encoded:
    """One example as the trainer and the evaluation use it."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]  # the prompt with the generation prompt: what the model answers in the evaluation
    example: Example

    def features(self) -> dict[str, list[int]]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": [1] * len(self.input_ids),
            "labels": self.labels,
        }

    @property
    def answer_len(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools,
        add_generation_prompt=generation_prompt,
        tokenize=True,
        return_dict=True,
        sanitize_control_tokens=True,
    )
    ids: list[int] = list(out["input_ids"])
    return ids


def check_template(tokenizer: Any, base_model: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"--base-model {base_model}: its tokenizer has no chat template; give an instruction-tuned model "
            "(or one whose tokenizer_config.json sets chat_template)"
        )


def encode(tokenizer: Any, example: Example, max_seq_len: int) -> Encoded | None:
    """The example's token ids and labels, or None when no answer token fits in ``max_seq_len``."""
    tools = example.tool_list()
    try:
        prompt = _render(tokenizer, list(example.prompt), tools, generation_prompt=True)
        full = _render(tokenizer, example.messages(), tools, generation_prompt=False)
    except Exception as exc:  # jinja2 raises its own errors, and templates raise on turns they refuse
        raise TemplateError(f"the chat template cannot render an example: {exc}") from exc
    shared = 0
    for a, b in zip(prompt, full, strict=False):
        if a != b:
            break
        shared += 1
    full = full[:max_seq_len]
    if shared >= len(full):
        return None
    return Encoded(
        input_ids=full,
        labels=[IGNORE] * shared + full[shared:],
        prompt_ids=prompt,
        example=example,
    )
