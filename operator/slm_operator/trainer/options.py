"""What ``slm-operator train`` is asked to do, checked before anything heavy is loaded. Pure: no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm_operator.trainer.errors import BadInput

METHODS = ("LoRA", "QLoRA", "Full")
#: ``--resume`` values besides a checkpoint folder.
RESUME_AUTO = "auto"
RESUME_NEVER = "never"
#: Where checkpoints go, under ``--output``.
CHECKPOINTS = "checkpoints"
EVAL_FILE = "eval.json"


class OptionsError(BadInput):
    """A flag value that cannot be used: the message says which flag and what to pass."""


@dataclass(frozen=True)
class TrainOptions:
    base_model: str
    data: Path
    output: Path
    method: str = "LoRA"
    epochs: float = 3.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_seq_len: int = 4096
    lora_rank: int = 16
    lora_alpha: int | None = None  # None: 2 x rank
    incumbent: Path | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    max_steps: int = -1
    save_steps: int = 100
    resume: str = RESUME_AUTO

    @property
    def checkpoints(self) -> Path:
        return self.output / CHECKPOINTS

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    @property
    def uses_lora(self) -> bool:
        return self.method != "Full"

    def check(self) -> None:
        """Raise ``OptionsError`` naming the first flag whose value cannot work."""
        problems = [
            (self.method not in METHODS, f"--method {self.method}: give one of {', '.join(METHODS)}"),
            (self.epochs <= 0, f"--epochs {self.epochs}: give a positive number"),
            (self.learning_rate <= 0, f"--learning-rate {self.learning_rate}: give a positive number"),
            (self.batch_size < 1, f"--batch-size {self.batch_size}: give at least 1"),
            (self.max_seq_len < 16, f"--max-seq-len {self.max_seq_len}: give at least 16 tokens"),
            (self.lora_rank < 1, f"--lora-rank {self.lora_rank}: give at least 1"),
            (
                self.lora_alpha is not None and self.lora_alpha < 1,
                f"--lora-alpha {self.lora_alpha}: give at least 1",
            ),
            (
                not 0 < self.eval_fraction < 1,
                f"--eval-fraction {self.eval_fraction}: give a fraction between 0 and 1 (exclusive)",
            ),
            (
                self.max_steps == 0 or self.max_steps < -1,
                f"--max-steps {self.max_steps}: give -1 or at least 1",
            ),
            (self.save_steps < 1, f"--save-steps {self.save_steps}: give at least 1"),
            (
                self.resume not in (RESUME_AUTO, RESUME_NEVER) and not Path(self.resume).is_dir(),
                f"--resume {self.resume}: give auto, never or an existing checkpoint folder",
            ),
            (
                self.incumbent is not None and not self.incumbent.is_dir(),
                f"--incumbent {self.incumbent}: no such folder (give the adapter or model folder)",
            ),
            (self.output.exists() and not self.output.is_dir(), f"--output {self.output}: not a folder"),
        ]
        for bad, message in problems:
            if bad:
                raise OptionsError(message)
