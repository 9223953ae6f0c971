"""The tiny base model and the tokenisation: the loss falls on the answer only, tools reach the template."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from slm_operator.trainer.data import to_example
from slm_operator.trainer.encode import IGNORE, encode
from slm_operator.trainer.metrics import generated_tool_calls, reference_tool_calls
from slm_operator.trainer.tiny import TOOL, make_tiny_base, synthetic_records


def test_the_tiny_base_is_built_offline_the_same_for_the_same_seed(tiny_base: Path, tmp_path: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_base)
    assert config.model_type == "llama" and config.num_hidden_layers == 2
    again = make_tiny_base(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()
    assert (make_tiny_base(tmp_path / "other", seed=1) / "model.safetensors").read_bytes() != (
        tiny_base / "model.safetensors"
    ).read_bytes()
    assert synthetic_records(5, seed=3) == synthetic_records(5, seed=3) != synthetic_records(5, seed=4)


def test_only_the_answer_and_its_end_of_turn_carry_loss(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    record = synthetic_records(1, seed=0)[0]
    enc = encode(tokenizer, to_example(record), max_seq_len=512)
    assert enc is not None
    answer = [t for t in enc.labels if t != IGNORE]
    assert enc.labels[: len(enc.prompt_ids)] == [IGNORE] * len(enc.prompt_ids)
    assert enc.input_ids[: len(enc.prompt_ids)] == enc.prompt_ids
    assert tokenizer.decode(answer) == record["messages"][-1]["content"] + "<|end|>"
    assert json.loads(tokenizer.decode(answer, skip_special_tokens=True)) == json.loads(
        record["messages"][-1]["content"]
    )
    cut = encode(tokenizer, to_example(record), max_seq_len=len(enc.prompt_ids) + 2)
    assert cut is not None and len(cut.input_ids) == len(enc.prompt_ids) + 2 and cut.answer_len == 2
    assert encode(tokenizer, to_example(record), max_seq_len=len(enc.prompt_ids)) is None  # no answer left


def test_tools_and_tool_calls_go_through_the_template_and_are_read_back(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "track_order", "arguments": '{"order_id": "42"}'},
    }
    record = {
        "messages": [{"role": "user", "content": "Where is order 42?"},
                     {"role": "assistant", "content": None, "tool_calls": [call]}],
        "tools": [TOOL],
    }  # fmt: skip
    example = to_example(record)
    enc = encode(tokenizer, example, max_seq_len=1024)
    assert enc is not None
    prompt = tokenizer.decode(enc.prompt_ids)
    assert prompt.startswith("<|system|>Tools: ") and "track_order" in prompt  # the tools reach the model
    assert "<|unk|>" not in prompt
    answer = tokenizer.decode([t for t in enc.labels if t != IGNORE], skip_special_tokens=True)
    assert generated_tool_calls(answer) == reference_tool_calls(example.target)  # what scoring reads back


def test_a_control_token_inside_a_message_is_text_not_a_turn(tiny_base: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    record = synthetic_records(1, seed=0)[0]
    record["messages"][1]["content"] += " <|assistant|>"
    enc = encode(tokenizer, to_example(record), max_seq_len=512)
    assert enc is not None
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert enc.input_ids.count(assistant) == 1  # only the template's own turn marker


def test_a_checkpoint_killed_while_saving_is_passed_over(tmp_path: Path) -> None:
    from slm_operator.trainer.run import newest_checkpoint

    def checkpoint(step: int, *, state: bool = True, marker: bool = False) -> None:
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if marker:
            (d / "checkpoint-is-incomplete.txt").write_text("saving")

    assert newest_checkpoint(tmp_path) is None
    checkpoint(100)
    checkpoint(200)
    checkpoint(300, state=False)  # killed before the Trainer wrote its state, which it writes last
    checkpoint(400, marker=True)  # the just-in-time checkpoint's marker is still there
    (tmp_path / "checkpoint-500").write_text("not a folder")
    assert newest_checkpoint(tmp_path) == (tmp_path / "checkpoint-200", 200)
