"""The trainer's results as the operator reads them: the termination message and eval.json. Pure: no torch.

The termination message is what the ``train`` container writes to ``--termination-log`` (Kubernetes shows it in
the pod's status, at most 4096 bytes): on success the scores, on failure ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from slm_operator.trainer.metrics import Scores

#: Kubernetes keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_MAX_BYTES = 4096


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports."""

    tuned: Scores
    base: Scores
    incumbent: Scores | None
    train_examples: int
    eval_examples: int
    skipped: int
    steps: int
    resumed_from_step: int | None
    eval_loss: float | None
    base_eval_loss: float | None
    incumbent_eval_loss: float | None = None
    #: eval.json only: the method, LoRA targets, skip reasons, sample answers, ...
    details: dict[str, Any] = field(default_factory=dict)

    def termination(self) -> dict[str, Any]:
        """The termination message's JSON (docs/finetuning.md, "Outputs")."""
        return {
            "evalScorePercent": self.tuned.score_percent,
            "baseScorePercent": self.base.score_percent,
            "incumbentScorePercent": self.incumbent.score_percent if self.incumbent else None,
            "examples": {"train": self.train_examples, "eval": self.eval_examples},
            "skipped": self.skipped,
            "steps": self.steps,
            "resumedFromStep": self.resumed_from_step,
            "evalLoss": _round(self.eval_loss),
            "baseEvalLoss": _round(self.base_eval_loss),
            "metrics": self.tuned.metrics,
        }

    def eval_json(self) -> dict[str, Any]:
        """eval.json: the termination message plus every model's scores and the run's details."""
        models: dict[str, Any] = {
            "tuned": {**self.tuned.to_json(), "evalLoss": _round(self.eval_loss)},
            "base": {**self.base.to_json(), "evalLoss": _round(self.base_eval_loss)},
        }
        if self.incumbent is not None:
            models["incumbent"] = {**self.incumbent.to_json(), "evalLoss": _round(self.incumbent_eval_loss)}
        return {**self.termination(), "models": models, **self.details}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def error_message(text: str) -> dict[str, Any]:
    """The failure termination message: one line."""
    return {"error": " ".join(text.split())}


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _fits(text: str) -> bool:
    return len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES


def termination_text(message: dict[str, Any]) -> str:
    """``message`` as JSON within Kubernetes' limit: an error's text is shortened; a result never exceeds it."""
    text = _dump(message)
    if _fits(text):
        return text
    if set(message) == {"error"}:
        error = str(message["error"])
        lo, hi = 0, len(error)  # the longest prefix that fits with an ellipsis, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _fits(_dump({"error": error[:mid] + "…"})) else (lo, mid - 1)
        return _dump({"error": error[:lo] + "…"})
    raise ValueError(f"termination message of {len(text.encode())} bytes")  # fixed keys: cannot happen
