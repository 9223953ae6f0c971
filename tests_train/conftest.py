"""The trainer tier (`make test-train`): the real trainer on CPU, with a tiny model the tests build.

It needs the [train] extra (torch, transformers, peft), installed in .venv-train by `make train-venv`. Without
it the tier skips locally, but fails when SLM_REQUIRE_TRAIN=1 (set by .ci/run): CI never skips it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_TRAIN_EXTRA = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))
if not HAVE_TRAIN_EXTRA:
    # The modules import torch at their top; only test_environment.py (which says why) is collected.
    collect_ignore_glob = ["test_train*.py", "test_tiny*.py"]

#: The synthetic task's size and the LoRA settings the tests train with (docs/finetuning.md, "The tiny model").
RECORDS = 800
TINY_FLAGS = ("--lora-rank", "16", "--learning-rate", "0.003", "--batch-size", "16")
STEPS = 400


def train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``slm-operator train`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "slm_operator", "train", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Run:
    """A finished ``train`` run: its process, output folder and termination message."""

    proc: subprocess.CompletedProcess[str]
    output: Path
    termination_log: Path

    @property
    def message(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.termination_log.read_text())
        return doc

    @property
    def eval_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.output / "eval.json").read_text())
        return doc


def train_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``slm-operator train`` through ``cli.main`` in this process: the same code without a second start of
    torch (about 8 s each)."""
    from slm_operator import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["train", *args])
    return subprocess.CompletedProcess(["train", *args], code, out.getvalue(), err.getvalue())


def run_train(base: Path, data: Path, output: Path, *extra: str, separate_process: bool = False) -> Run:
    log = output.parent / f"{output.name}.termination-log"
    args = ("--base-model", str(base), "--data", str(data), "--output", str(output),
            "--termination-log", str(log), *TINY_FLAGS, *extra)  # fmt: skip
    proc = train(*args) if separate_process else train_in_process(*args)
    return Run(proc=proc, output=output, termination_log=log)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slm_operator.trainer.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "base", seed=0)


@pytest.fixture(scope="session")
def task_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slm_operator.trainer.tiny import synthetic_records

    path = tmp_path_factory.mktemp("data") / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records(RECORDS, seed=0)))
    return path


@pytest.fixture(scope="session")
def trained(tiny_base: Path, task_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One LoRA run on the synthetic task, shared by the tests that read its result."""
    out = tmp_path_factory.mktemp("trained") / "out"
    run = run_train(
        tiny_base, task_data, out, "--max-steps", str(STEPS), "--save-steps", "100", separate_process=True
    )
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run
