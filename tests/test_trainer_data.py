"""The trainer's data (slm_operator.trainer.data): both record formats, what is skipped and why, the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slm_operator.trainer.data import DataError, load_examples, prepare, split, to_example
from slm_operator.trainer.options import OptionsError, TrainOptions
from slm_operator.trainer.report import TERMINATION_MESSAGE_MAX_BYTES, error_message, termination_text

TOOLS = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]


def chat(i: int, answer: str = '{"ok": true}') -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": answer},
        ]
    }


def capture(i: int, **response: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "track", "arguments": f'{{"id": {i}}}'}}
    ]}  # fmt: skip
    return {
        "id": f"{i:032x}",
        "route": "shop/orders",
        "status": 200,
        "request": {"model": "gpt-x", "messages": [{"role": "developer", "content": "Be brief."},
                                                    {"role": "user", "content": [{"type": "text", "text": f"where is {i}"}]}],
                    "tools": TOOLS},
        "response": {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}], **response},
    }  # fmt: skip


def test_a_capture_record_becomes_the_same_kind_of_example_as_a_chat_record() -> None:
    ex = to_example(capture(7))
    assert [m["role"] for m in ex.prompt] == ["system", "user"]  # developer -> system, as templates know it
    assert ex.prompt[1]["content"] == "where is 7"  # content parts joined into text
    assert ex.target["tool_calls"][0]["function"] == {"name": "track", "arguments": {"id": 7}}
    assert ex.tool_list() == TOOLS
    as_chat = {"messages": [*capture(7)["request"]["messages"], capture(7)["response"]["choices"][0]["message"]],
               "tools": TOOLS}  # fmt: skip
    assert to_example(as_chat).key == ex.key  # the same conversation: the same side of the split


def test_the_last_assistant_message_is_the_target_and_what_follows_it_is_dropped() -> None:
    rec = chat(1)
    rec["messages"] += [{"role": "user", "content": "thanks"}]
    rec["messages"][1:1] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ex = to_example(rec)
    assert ex.target["content"] == '{"ok": true}'
    assert [m["content"] for m in ex.prompt] == ["Answer in JSON.", "hi", "hello", "question 1"]


def test_unusable_lines_are_skipped_and_counted_by_reason(tmp_path: Path) -> None:
    bad_args = chat(3)
    bad_args["messages"][-1] = {
        "role": "assistant",
        "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
    }
    lines = [
        json.dumps(chat(1)),
        "not json at all",
        json.dumps([1, 2]),
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps(capture(2, error={"message": "boom"}) | {"status": 500}),
        json.dumps({**capture(4), "response": {"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]}}),
        json.dumps(bad_args),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "",
        json.dumps(capture(5)),
    ]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    examples, report = load_examples(tmp_path / "a.jsonl")
    assert len(examples) == 2 and report.lines == 9 and report.skipped_total == 7
    assert report.skipped == {
        "not JSON": 1,
        "the line is not a JSON object": 1,
        "no assistant message to learn": 1,
        "the captured call failed (HTTP status not 2xx)": 1,
        "the captured response was cut off (finish_reason length)": 1,
        "a tool call's arguments are not JSON": 1,
        "unknown message role 'robot'": 1,
    }
    assert report.first_skipped == f"{tmp_path / 'a.jsonl'}:2: not JSON"


def test_a_folder_is_read_file_by_file_and_nothing_usable_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "1.jsonl").write_text(json.dumps(chat(1)) + "\n")
    (tmp_path / "d" / "sub" / "2.jsonl").write_text(json.dumps(chat(2)) + "\n")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    assert len(load_examples(tmp_path / "d")[0]) == 2
    (tmp_path / "junk.jsonl").write_text("garbage\n{}\n")
    with pytest.raises(DataError, match=r"no usable record in 2 lines \(first: .*junk.jsonl:1: not JSON\)"):
        load_examples(tmp_path / "junk.jsonl")
    with pytest.raises(DataError, match="no such file or folder"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"none left for training"):
        (tmp_path / "one.jsonl").write_text(json.dumps(chat(1)) + "\n")
        prepare(tmp_path / "one.jsonl", 0.99, seed=0)


@given(st.integers(50, 200), st.integers(1, 100), st.sampled_from([0.2, 0.5]), st.integers(0, 3))
def test_the_split_is_stable_when_records_are_appended(n: int, more: int, fraction: float, seed: int) -> None:
    first = [to_example(chat(i)) for i in range(n)]
    grown = first + [to_example(chat(i)) for i in range(n, n + more)]
    train, held = split(first, fraction, seed)
    train2, held2 = split(grown, fraction, seed)
    assert train and held and len(train) + len(held) == n
    old = {e.key for e in first}
    assert {e.key for e in held2} & old == {e.key for e in held}  # no old record changed sides
    assert {e.key for e in train2} & old == {e.key for e in train}


def test_with_few_records_neither_side_is_empty() -> None:
    for n in range(2, 12):
        train, held = split([to_example(chat(i)) for i in range(n)], 0.1, seed=0)
        assert train and held and len(train) + len(held) == n


def test_the_split_holds_out_about_the_fraction_and_keeps_duplicates_together() -> None:
    examples = [to_example(chat(i)) for i in range(2000)]
    train, held = split(examples, 0.1, seed=0)
    assert 150 < len(held) < 250
    assert split(examples, 0.1, seed=0) == (train, held)  # deterministic
    assert split(examples, 0.1, seed=1)[1] != held  # the seed chooses another set
    twice = examples[:50] + examples[:50]
    train, held = split(twice, 0.3, seed=0)
    assert not {e.key for e in train} & {e.key for e in held}


def test_flags_that_cannot_work_are_named(tmp_path: Path) -> None:
    ok = TrainOptions(base_model="m", data=tmp_path, output=tmp_path / "out")
    ok.check()
    for change, flag in [
        ({"method": "DoRA"}, "--method DoRA"),
        ({"eval_fraction": 1.0}, "--eval-fraction"),
        ({"max_steps": 0}, "--max-steps 0"),
        ({"resume": str(tmp_path / "nope")}, "--resume"),
        ({"incumbent": tmp_path / "nope"}, "--incumbent"),
        ({"lora_rank": 0}, "--lora-rank 0"),
    ]:
        with pytest.raises(OptionsError, match=flag):
            TrainOptions(**{**ok.__dict__, **change}).check()
    assert ok.alpha == 32 and TrainOptions(**{**ok.__dict__, "lora_alpha": 8}).alpha == 8


def test_a_long_error_is_shortened_to_what_kubernetes_keeps() -> None:
    text = termination_text(error_message("x\ny " + "é" * 5000))
    assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert json.loads(text)["error"].startswith("x y éé") and text.endswith('…"}')
