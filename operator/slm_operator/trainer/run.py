"""One training run, start to finish: read and split the data, score the incumbent and the base model, train
with transformers' Trainer (resuming from the newest checkpoint), score the result, write it.

Checkpoints go to ``<output>/checkpoints`` every ``--save-steps`` steps (the newest two are kept) and when
training ends. On SIGTERM (a preempted or deleted pod) the Trainer's just-in-time checkpoint saves the current
step and training stops; the run then exits 143 and the same command resumes from that checkpoint. A SIGTERM
outside training stops the run at once (the checkpoints on disk stay valid).
"""

from __future__ import annotations

import gc
import json
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import transformers
from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from slm_operator.trainer.data import DataError, DataReport, Example, Prepared, prepare
from slm_operator.trainer.encode import Encoded, check_template, encode
from slm_operator.trainer.errors import BadInput, Terminated
from slm_operator.trainer.evaluate import Evaluation, evaluate, max_new_tokens
from slm_operator.trainer.model import (
    device,
    load_base,
    load_incumbent,
    load_tokenizer,
    save_result,
    with_adapter,
)
from slm_operator.trainer.options import EVAL_FILE, RESUME_AUTO, RESUME_NEVER, TrainOptions
from slm_operator.trainer.report import TrainResult

#: Written under the checkpoints folder: what a checkpoint must match to be resumed.
RUN_FILE = "run.json"
#: transformers' just-in-time checkpoint writes it while it saves.
INCOMPLETE_MARK = "checkpoint-is-incomplete.txt"
SAMPLE_ANSWERS = 5  # eval.json keeps this many held-out answers per model, to show what the scores mean

Log = Callable[[str], None]


class ResumeError(BadInput):
    """The checkpoints on disk cannot be resumed by this run."""


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Outside training (the Trainer installs its own handler while it trains), SIGTERM raises ``Terminated``."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(None)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _step_of(checkpoint: Path) -> int | None:
    """The step a complete checkpoint holds; None when it is incomplete (killed while saving)."""
    if (checkpoint / INCOMPLETE_MARK).exists():
        return None
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step = state.get("global_step")
    return step if isinstance(step, int) else None


def newest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The complete checkpoint with the highest step under ``folder``."""
    found = []
    for d in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = _step_of(d) if d.is_dir() and d.name.removeprefix("checkpoint-").isdigit() else None
        if step is not None:
            found.append((step, d))
    if not found:
        return None
    step, path = max(found)
    return path, step


def _fingerprint(options: TrainOptions) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed (epochs, steps and rates may change)."""
    return {
        "baseModel": options.base_model,
        "method": options.method,
        "loraRank": options.lora_rank if options.uses_lora else None,
        "loraAlpha": options.alpha if options.uses_lora else None,
    }


def resume_point(options: TrainOptions) -> tuple[Path, int] | None:
    """The checkpoint this run resumes from (``--resume``), after checking it belongs to the same run."""
    folder = options.checkpoints
    if options.resume == RESUME_NEVER:
        shutil.rmtree(folder, ignore_errors=True)  # a stale higher-numbered checkpoint would win later
        return None
    if options.resume != RESUME_AUTO:
        path = Path(options.resume)
        step = _step_of(path)
        if step is None:
            raise ResumeError(f"--resume {path}: not a complete checkpoint (no trainer_state.json)")
        return path, step
    point = newest_checkpoint(folder)
    run_file = folder / RUN_FILE
    if point is not None and run_file.is_file():
        earlier = json.loads(run_file.read_text())
        if earlier != _fingerprint(options):
            raise ResumeError(
                f"the checkpoints under {folder} were trained with {earlier}, this run asks for "
                f"{_fingerprint(options)}: give the same flags, another --output, or --resume never to start over"
            )
    return point


def _encode_all(tokenizer: Any, examples: Sequence[Example], max_seq_len: int) -> tuple[list[Encoded], int]:
    encoded = [encode(tokenizer, e, max_seq_len) for e in examples]
    kept = [e for e in encoded if e is not None]
    return kept, len(encoded) - len(kept)


class _Progress(TrainerCallback):  # type: ignore[misc,unused-ignore]  # transformers is untyped in the lint venv
    """One line per logging step on stderr (the pod's log)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in (logs or {}).items()}
        what = "evaluation after step" if "eval_loss" in shown else "step"
        self.log(f"{what} {state.global_step}/{state.max_steps} {json.dumps(shown)}")


def _arguments(options: TrainOptions, *, training: bool = True) -> TrainingArguments:
    """The Trainer's arguments; a Trainer that only scores (``training=False``) leaves SIGTERM alone: the
    just-in-time checkpoint's handler, which a Trainer installs when it is made, is restored only by training."""
    cuda = device() == "cuda"
    return TrainingArguments(
        output_dir=str(options.checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.learning_rate,
        warmup_steps=0.03,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        enable_jit_checkpoint=training,
        logging_steps=10,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        seed=options.seed,
        data_seed=options.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=options.method == "QLoRA",
    )


def _trainer(model: Any, tokenizer: Any, train: list[Encoded], options: TrainOptions, log: Log) -> Trainer:
    trainer = Trainer(
        model=model,
        args=_arguments(options),
        train_dataset=[e.features() for e in train],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=[_Progress(log)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints the logs on stdout, which carries the result
    return trainer


def _loss(trainer: Trainer, held_out: Sequence[Encoded]) -> Callable[[], float | None]:
    def compute() -> float | None:
        if not held_out:
            return None
        metrics = trainer.evaluate(eval_dataset=[e.features() for e in held_out])
        return float(metrics["eval_loss"])

    return compute


def _score_incumbent(options: TrainOptions, tokenizer: Any, held: list[Encoded], log: Log) -> Evaluation:
    log(f"scoring the incumbent {options.incumbent} on {len(held)} held-out examples")
    model = load_incumbent(options)
    scorer = Trainer(
        model=model,
        args=_arguments(options, training=False),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    scorer.remove_callback(PrinterCallback)
    result = evaluate(model, tokenizer, held, options.batch_size, _loss(scorer, held))
    del scorer, model
    _free()
    return result


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(options: TrainOptions, data: Prepared | None = None, log: Log = stderr_log) -> TrainResult:
    """Train, evaluate, write the result under ``options.output``; raises a ``TrainError`` on failure."""
    options.check()
    data = data or prepare(options.data, options.eval_fraction, options.seed)
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()  # the pod's log gets one line per logging step instead
    with _sigterm_stops():
        return _run(options, data, log)


def _run(options: TrainOptions, data: Prepared, log: Log) -> TrainResult:  # long: the run's steps in order
    report = data.report
    transformers.set_seed(options.seed)
    tokenizer = load_tokenizer(options.base_model)
    check_template(tokenizer, options.base_model)
    train, too_long = _encode_all(tokenizer, data.train, options.max_seq_len)
    held, held_too_long = _encode_all(tokenizer, data.held_out, options.max_seq_len)
    if too_long + held_too_long:
        report.skipped["answer beyond --max-seq-len"] += too_long + held_too_long
    if not train:
        raise DataError(
            f"--data {options.data}: no training example fits in --max-seq-len {options.max_seq_len}"
        )
    log(
        f"{len(train)} training and {len(held)} held-out examples from {report.lines} lines "
        f"({report.skipped_total} skipped); training on {device()}"
    )
    options.output.mkdir(parents=True, exist_ok=True)
    resume = resume_point(options)
    incumbent = _score_incumbent(options, tokenizer, held, log) if options.incumbent else None
    model = with_adapter(load_base(options), options)
    trainer = _trainer(model, tokenizer, train, options, log)
    log(f"scoring the base model {options.base_model}")
    base = evaluate(model, tokenizer, held, options.batch_size, _loss(trainer, held))
    options.checkpoints.mkdir(parents=True, exist_ok=True)
    (options.checkpoints / RUN_FILE).write_text(json.dumps(_fingerprint(options)))
    if resume is not None:
        log(f"resuming from {resume[0]} (step {resume[1]})")
    output = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    if trainer.state.global_step < trainer.state.max_steps:  # the just-in-time checkpoint stopped it
        saved = newest_checkpoint(options.checkpoints)  # it saves before the step's update: one step back
        raise Terminated(saved[1] if saved else None)
    seconds = float(output.metrics.get("train_runtime", 0.0))
    steps_run = trainer.state.global_step - (resume[1] if resume else 0)
    log("scoring the fine-tuned model")
    tuned = evaluate(trainer.model, tokenizer, held, options.batch_size, _loss(trainer, held))
    files = save_result(trainer.model, tokenizer, options)
    result = TrainResult(
        tuned=tuned.scores,
        base=base.scores,
        incumbent=incumbent.scores if incumbent else None,
        train_examples=len(train),
        eval_examples=len(held),
        skipped=report.skipped_total,
        steps=trainer.state.global_step,
        resumed_from_step=resume[1] if resume else None,
        eval_loss=tuned.loss,
        base_eval_loss=base.loss,
        incumbent_eval_loss=incumbent.loss if incumbent else None,
        details={
            **_details(options, model, report, held, {"tuned": tuned, "base": base, "incumbent": incumbent}),
            "training": {
                "stepsRun": steps_run,
                "seconds": round(seconds, 2),
                "stepsPerSecond": round(steps_run / seconds, 2) if seconds > 0 else None,
            },
            "files": files,
        },
    )
    (options.output / EVAL_FILE).write_text(json.dumps(result.eval_json(), indent=2) + "\n")
    return result


def _details(
    options: TrainOptions,
    model: Any,
    report: DataReport,
    held: Sequence[Encoded],
    evaluations: dict[str, Evaluation | None],
) -> dict[str, Any]:
    """eval.json's account of the run: how it trained, what it skipped, and sample answers."""
    samples = []
    for i, e in enumerate(held[:SAMPLE_ANSWERS]):
        sample: dict[str, Any] = {
            "messages": list(e.example.prompt),
            "tools": e.example.tool_list(),
            "reference": e.example.target,
        }
        sample.update({name: ev.answers[i] for name, ev in evaluations.items() if ev is not None})
        samples.append(sample)
    return {
        "method": options.method,
        "baseModel": options.base_model,
        "incumbent": str(options.incumbent) if options.incumbent else None,
        "loraTargets": sorted(model.peft_config["default"].target_modules) if options.uses_lora else None,
        "hyperparameters": {
            "epochs": options.epochs,
            "learningRate": options.learning_rate,
            "batchSize": options.batch_size,
            "maxSeqLen": options.max_seq_len,
            "loraRank": options.lora_rank if options.uses_lora else None,
            "loraAlpha": options.alpha if options.uses_lora else None,
            "evalFraction": options.eval_fraction,
            "seed": options.seed,
        },
        "skippedReasons": dict(sorted(report.skipped.items())),
        "device": device(),
        "generation": {"decoding": "greedy", "maxNewTokens": max_new_tokens(held)},
        "samples": samples,
    }
