"""How a training run fails, and the exit code each failure gives (``slm-operator train --help``). Pure."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # training or evaluation failed (e.g. out of memory)
EXIT_BAD_INPUT = 2  # flags, data, base model, incumbent or checkpoints that cannot be used as given
EXIT_UNSUPPORTED = 3  # this installation cannot do it: no [train] extra, QLoRA without a CUDA GPU
EXIT_TERMINATED = 143  # SIGTERM (128 + 15): the newest checkpoint stays; the same command resumes from it


class TrainError(Exception):
    """A run that cannot finish; the message is one line a user can act on."""

    exit_code = EXIT_FAILED


class BadInput(TrainError, ValueError):
    """A flag, the data, the base model, the incumbent or the checkpoints cannot be used as given."""

    exit_code = EXIT_BAD_INPUT


class Unsupported(TrainError):
    """What was asked cannot run on this machine."""

    exit_code = EXIT_UNSUPPORTED


class Terminated(TrainError):
    """SIGTERM stopped the run; ``step`` is the checkpoint it saved (None: it stopped outside training)."""

    exit_code = EXIT_TERMINATED

    def __init__(self, step: int | None) -> None:
        where = f"at step {step}: a checkpoint was saved" if step is not None else "outside training"
        super().__init__(f"terminated by SIGTERM {where}; run the same command again to resume")
        self.step = step
