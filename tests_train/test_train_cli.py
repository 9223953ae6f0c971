"""`slm-operator train` on CPU: the tiny model learns the synthetic task, the adapter reloads, runs resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from slm_operator.trainer.metrics import score_answer
from tests_train.conftest import RECORDS, ROOT, STEPS, TINY_FLAGS, Run, run_train, train

TERMINATION_KEYS = {
    "evalScorePercent", "baseScorePercent", "incumbentScorePercent", "examples", "skipped", "steps",
    "resumedFromStep", "evalLoss", "baseEvalLoss", "metrics",
}  # fmt: skip


def test_lora_lowers_the_held_out_loss_and_learns_the_task(trained: Run) -> None:
    msg = trained.message
    assert json.loads(trained.proc.stdout) == msg  # the same JSON on stdout and in the termination log
    assert msg["evalLoss"] < msg["baseEvalLoss"] / 10
    assert msg["baseScorePercent"] <= 5 and msg["evalScorePercent"] >= 80
    metrics = msg["metrics"]
    assert round(100 * metrics["jsonExactMatch"]) == msg["evalScorePercent"]  # every answer is JSON here
    assert metrics["toolCallAccuracy"] is None and metrics["textSimilarity"] is None
    assert (
        msg["examples"]["train"] + msg["examples"]["eval"] == RECORDS and 50 < msg["examples"]["eval"] < 120
    )
    assert msg["steps"] == STEPS and msg["resumedFromStep"] is None and msg["skipped"] == 0
    assert msg["incumbentScorePercent"] is None


def test_the_termination_message_and_eval_json_say_the_same(trained: Run) -> None:
    msg, doc = trained.message, trained.eval_json
    assert set(msg) == TERMINATION_KEYS and len(trained.termination_log.read_bytes()) <= 4096
    assert {k: doc[k] for k in TERMINATION_KEYS} == msg
    assert doc["models"]["tuned"]["scorePercent"] == msg["evalScorePercent"]
    assert doc["models"]["base"]["evalLoss"] == msg["baseEvalLoss"] and "incumbent" not in doc["models"]
    assert doc["method"] == "LoRA" and doc["hyperparameters"]["loraRank"] == 16
    assert doc["loraTargets"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert doc["training"]["stepsRun"] == STEPS and doc["training"]["stepsPerSecond"] > 0
    sample = doc["samples"][0]
    assert sample["messages"][-1]["role"] == "user" and set(sample) >= {"reference", "tuned", "base"}


def _greedy(model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_new_tokens: int) -> str:
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return str(tokenizer.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True))


def test_the_adapter_loads_with_peft_and_gives_the_trained_answers(trained: Run, tiny_base: Path) -> None:
    files = sorted(p.name for p in trained.output.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "eval.json", "checkpoints"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt"))]  # safetensors only: what vLLM loads
    config = json.loads((trained.output / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "LORA"
        and config["r"] == 16
        and config["base_model_name_or_path"] == str(tiny_base)
    )
    assert not config.get("modules_to_save")  # vLLM serves adapters of linear layers only

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base), str(trained.output)
    ).eval()
    samples, most = trained.eval_json["samples"], trained.eval_json["generation"]["maxNewTokens"]
    answers = [_greedy(model, tokenizer, s["messages"], most) for s in samples]
    assert answers == [s["tuned"] for s in samples]
    assert (
        sum(score_answer(a, s["reference"])[1] for a, s in zip(answers, samples, strict=True))
        >= len(samples) - 1
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    assert [_greedy(base, tokenizer, s["messages"], most) for s in samples] == [s["base"] for s in samples]


def test_a_run_cut_short_by_max_steps_continues_from_its_checkpoint(
    tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = run_train(tiny_base, task_data, out, "--max-steps", "6", "--save-steps", "4")
    assert first.proc.returncode == 0, first.proc.stderr[-2000:]
    assert first.message["steps"] == 6 and first.message["resumedFromStep"] is None
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-4",
        "checkpoint-6",
    ]

    again = run_train(tiny_base, task_data, out, "--max-steps", "10", "--save-steps", "4")
    assert again.proc.returncode == 0, again.proc.stderr[-2000:]
    assert again.message["steps"] == 10 and again.message["resumedFromStep"] == 6
    assert "resuming from" in again.proc.stderr and again.eval_json["training"]["stepsRun"] == 4
    state = json.loads((out / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10 and state["log_history"][0]["step"] == 1  # the first run's history kept
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-8",
    ]

    named = run_train(
        tiny_base, task_data, out, "--max-steps", "9", "--resume", str(out / "checkpoints" / "checkpoint-8")
    )
    assert (
        named.proc.returncode == 0 and named.message["resumedFromStep"] == 8 and named.message["steps"] == 9
    )
    fresh = run_train(tiny_base, task_data, out, "--max-steps", "2", "--resume", "never")
    assert (
        fresh.proc.returncode == 0
        and fresh.message["resumedFromStep"] is None
        and fresh.message["steps"] == 2
    )
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2"
    ]  # started over


def test_sigterm_saves_a_checkpoint_exits_143_and_the_rerun_resumes(
    tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "out", tmp_path / "termination-log"
    args = ["--base-model", str(tiny_base), "--data", str(task_data), "--output", str(out), *TINY_FLAGS,
            "--termination-log", str(log), "--max-steps", "100000", "--save-steps", "100000"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "slm_operator", "train", *args], stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # training has begun once the first step is logged
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    error = json.loads(log.read_text())["error"]
    step = int(error.split("at step ")[1].split(":")[0])
    assert error.endswith("run the same command again to resume") and step >= 1
    checkpoint = out / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "trainer_state.json").is_file() and not (
        checkpoint / "checkpoint-is-incomplete.txt"
    ).exists()
    assert not (out / "adapter_model.safetensors").exists()  # nothing is published before the run ends

    rerun = run_train(tiny_base, task_data, out, "--max-steps", str(step + 3), "--save-steps", "100000")
    assert rerun.proc.returncode == 0, rerun.proc.stderr[-2000:]
    assert rerun.message["resumedFromStep"] == step and rerun.message["steps"] == step + 3


def test_epochs_batch_size_rates_split_and_rank_shape_the_run(
    trained: Run, tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    run = run_train(tiny_base, task_data, tmp_path / "out", "--epochs", "1", "--batch-size", "64",
                    "--learning-rate", "1e-9", "--eval-fraction", "0.25", "--seed", "1",
                    "--lora-rank", "4", "--lora-alpha", "8")  # fmt: skip
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    msg = run.message
    assert (
        msg["examples"]["train"] + msg["examples"]["eval"] == RECORDS and 150 < msg["examples"]["eval"] < 250
    )
    assert msg["steps"] == -(-msg["examples"]["train"] // 64)  # one pass over the training examples
    assert abs(msg["evalLoss"] - msg["baseEvalLoss"]) < 0.01  # a learning rate of 1e-9 changes nothing
    config = json.loads((run.output / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    held_out = [[s["messages"][-1]["content"] for s in r.eval_json["samples"]] for r in (run, trained)]
    assert held_out[0] != held_out[1]  # another seed holds out other records


def test_an_answer_beyond_max_seq_len_is_dropped_and_counted(
    tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    run = run_train(tiny_base, task_data, tmp_path / "out", "--max-seq-len", "16")
    assert run.proc.returncode == 2
    assert run.message["error"] == f"--data {task_data}: no training example fits in --max-seq-len 16"


def test_the_incumbent_is_scored_on_the_same_held_out_examples(
    trained: Run, tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    run = run_train(
        tiny_base, task_data, tmp_path / "next", "--max-steps", "1", "--incumbent", str(trained.output)
    )
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    assert run.message["incumbentScorePercent"] == trained.message["evalScorePercent"]
    assert run.eval_json["models"]["incumbent"]["evalLoss"] == trained.message["evalLoss"]
    assert run.message["evalScorePercent"] < run.message["incumbentScorePercent"]  # one step does not beat it


def test_full_fine_tuning_writes_weights_that_load_and_score_as_an_incumbent(
    tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    full = run_train(tiny_base, task_data, tmp_path / "full", "--method", "Full", "--max-steps", "20",
                     "--learning-rate", "0.001")  # fmt: skip
    assert full.proc.returncode == 0, full.proc.stderr[-2000:]
    files = {p.name for p in full.output.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "adapter_config.json" not in files and full.eval_json["loraTargets"] is None
    assert full.message["evalLoss"] < full.message["baseEvalLoss"]
    AutoModelForCausalLM.from_pretrained(full.output)  # loads as a model of its own
    inc = run_train(
        tiny_base, task_data, tmp_path / "lora", "--max-steps", "1", "--incumbent", str(full.output)
    )
    assert inc.proc.returncode == 0, inc.proc.stderr[-2000:]
    assert inc.message["incumbentScorePercent"] == full.message["evalScorePercent"]
    assert inc.eval_json["models"]["incumbent"]["evalLoss"] == full.message["evalLoss"]


def test_checkpoints_of_another_method_are_not_resumed(
    trained: Run, tiny_base: Path, task_data: Path
) -> None:
    run = run_train(tiny_base, task_data, trained.output, "--method", "Full", "--max-steps", str(STEPS + 1))
    assert run.proc.returncode == 2
    error = run.message["error"]
    assert "were trained with" in error and "'method': 'LoRA'" in error and "--resume never" in error


def test_bad_data_and_bad_flags_are_an_error_message_and_exit_2(tiny_base: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text('not json\n{"messages": []}\n')
    run = run_train(tiny_base, junk, tmp_path / "out")
    assert run.proc.returncode == 2 and "Traceback" not in run.proc.stderr
    assert run.message == {
        "error": f"--data {junk}: no usable record in 2 lines (first: {junk}:1: not JSON); give JSON lines with "
        '"messages" (OpenAI chat format, ending in an assistant message) or capture records with "request" '
        'and "response"'
    }
    assert run.proc.stderr.strip() == f"slm-operator train: {run.message['error']}"
    run = run_train(tmp_path / "no-model", junk.with_name("ok.jsonl"), tmp_path / "out")
    assert run.proc.returncode == 2 and "--data" in run.message["error"]
    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
                + "\n" for i in range(4))
    )  # fmt: skip
    run = run_train(tmp_path / "no-model", good, tmp_path / "out")
    assert run.proc.returncode == 2 and run.message["error"].startswith(
        f"--base-model {tmp_path / 'no-model'}: "
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_qlora_without_a_gpu_says_what_to_use_instead(
    tiny_base: Path, task_data: Path, tmp_path: Path
) -> None:
    run = run_train(tiny_base, task_data, tmp_path / "out", "--method", "QLoRA")
    assert run.proc.returncode == 3
    assert (
        run.message["error"].startswith("--method QLoRA needs a CUDA GPU")
        and "--method LoRA" in run.message["error"]
    )


def test_help_documents_exit_codes_and_the_termination_message() -> None:
    r = train("--help")
    text = " ".join(r.stdout.split())
    assert (
        r.returncode == 0
        and "Exit codes: 0 trained and evaluated" in text
        and "143 stopped by SIGTERM" in text
    )
    assert '{"evalScorePercent": 87' in text and '{"error": "<what to change>"}' in text
