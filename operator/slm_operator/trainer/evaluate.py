"""Scoring a model on the held-out examples: greedy answers scored by ``metrics``, and the held-out loss.

The same code scores the base model, the fine-tuned one and the incumbent, so their numbers compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from slm_operator.trainer.encode import Encoded
from slm_operator.trainer.metrics import Scores, aggregate, score_answer

#: Tokens generated beyond the longest held-out answer before the evaluation stops a generation.
ANSWER_MARGIN_TOKENS = 16


@dataclass(frozen=True)
class Evaluation:
    scores: Scores
    loss: float | None
    answers: list[str]  # the greedy answers, in the held-out order (eval.json keeps a few as samples)


def max_new_tokens(held_out: Sequence[Encoded]) -> int:
    """How many tokens an answer may have: the longest held-out answer plus a margin."""
    return max((e.answer_len for e in held_out), default=0) + ANSWER_MARGIN_TOKENS


def _batches(items: Sequence[Encoded], size: int) -> list[Sequence[Encoded]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def greedy_answers(model: Any, tokenizer: Any, held_out: Sequence[Encoded], batch_size: int) -> list[str]:
    """Each held-out prompt answered greedily (left-padded batches); special tokens dropped from the text."""
    if not held_out:
        return []
    model.eval()
    with torch.no_grad():
        return _generate(model, tokenizer, held_out, batch_size)


def _generate(model: Any, tokenizer: Any, held_out: Sequence[Encoded], batch_size: int) -> list[str]:
    dev = next(model.parameters()).device
    max_new = max_new_tokens(held_out)
    pad = tokenizer.pad_token_id
    eos = _flat([tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)])
    answers = []
    for batch in _batches(held_out, batch_size):
        width = max(len(e.prompt_ids) for e in batch)
        ids = torch.tensor([[pad] * (width - len(e.prompt_ids)) + e.prompt_ids for e in batch], device=dev)
        mask = torch.tensor(
            [[0] * (width - len(e.prompt_ids)) + [1] * len(e.prompt_ids) for e in batch], device=dev
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
    return answers


def _flat(ids: list[Any]) -> list[int]:
    """Token ids from ids, lists of ids and Nones, each once."""
    flat: list[int] = []
    for t in ids:
        for i in t if isinstance(t, list) else [t]:
            if i is not None and int(i) not in flat:
                flat.append(int(i))
    return flat


def evaluate(
    model: Any,
    tokenizer: Any,
    held_out: Sequence[Encoded],
    batch_size: int,
    loss: Callable[[], float | None],
) -> Evaluation:
    """The model's scores on the held-out examples and its held-out loss (``loss`` computes it)."""
    answers = greedy_answers(model, tokenizer, held_out, batch_size)
    scores = aggregate(score_answer(a, e.example.target) for a, e in zip(answers, held_out, strict=True))
    return Evaluation(scores=scores, loss=loss(), answers=answers)
