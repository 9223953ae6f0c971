"""The trainer's scores (slm_operator.trainer.metrics): what counts as the same answer, and what does not."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.trainer.metrics import (
    KIND_JSON,
    KIND_TEXT,
    KIND_TOOL_CALL,
    aggregate,
    canonical_json,
    generated_tool_calls,
    json_equal,
    reference_tool_calls,
    score_answer,
    text_similarity,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@given(json_values)
def test_key_order_whitespace_and_indentation_do_not_change_a_json_answer(value: Any) -> None:
    def shuffled(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: shuffled(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [shuffled(x) for x in v]
        return v

    compact = json.dumps(value, separators=(",", ":"))
    assert json_equal(json.dumps(shuffled(value), indent=3), json.loads(compact))
    assert json_equal(f"```json\n{compact}\n```", value)  # a Markdown fence around the answer is allowed


@given(st.integers(-(10**12), 10**12), st.integers(0, 6))
def test_one_number_has_one_spelling(n: int, zeros: int) -> None:
    spellings = {str(n), f"{n}.{'0' * (zeros + 1)}", f"{n}e0", f"{Decimal(n):E}"}
    assert len({canonical_json(json.loads(s, parse_float=Decimal)) for s in spellings}) == 1


def test_numbers_keep_their_value_and_type_differences_count() -> None:
    assert json_equal('{"a": 1.50}', {"a": 1.5}) and json_equal('{"a": 100}', {"a": 1e2})
    assert not json_equal('{"a": 1.05}', {"a": 1.5})
    assert not json_equal('{"a": "1"}', {"a": 1})  # a string is not a number
    assert not json_equal('{"a": true}', {"a": 1})  # nor a boolean
    assert json_equal("12345678901234567890123", 12345678901234567890123)  # no float rounding
    assert not json_equal("12345678901234567890123", 12345678901234567890124)


def test_text_around_a_json_answer_makes_it_wrong() -> None:
    assert not json_equal('Sure! {"city": "Oslo"}', {"city": "Oslo"})
    assert not json_equal('{"city": "Oslo"', {"city": "Oslo"})
    assert not json_equal("NaN", 0)


def test_each_reference_is_scored_by_its_kind() -> None:
    structured = {"role": "assistant", "content": '{"order_id": "K7", "city": "Oslo"}'}
    assert score_answer('{"city":"Oslo","order_id":"K7"}', structured) == (KIND_JSON, 1.0)
    assert score_answer('{"city":"Lyon","order_id":"K7"}', structured) == (KIND_JSON, 0.0)
    text = {"role": "assistant", "content": "The parcel left Oslo today"}
    kind, score = score_answer("the parcel left Oslo yesterday", text)
    assert kind == KIND_TEXT and 0.7 < score < 1
    tool = {"role": "assistant", "content": None, "tool_calls": [_call("track", '{"id": "K7"}')]}
    assert score_answer('<tool_call>{"name": "track", "arguments": {"id": "K7"}}</tool_call>', tool) == (
        KIND_TOOL_CALL,
        1.0,
    )
    assert score_answer('<tool_call>{"name": "track", "arguments": {"id": "K8"}}</tool_call>', tool)[1] == 0
    assert score_answer('{"name": "cancel", "arguments": {"id": "K7"}}', tool)[1] == 0
    assert score_answer("I would call track", tool)[1] == 0


def test_tool_calls_are_read_from_the_markup_templates_use() -> None:
    ref = reference_tool_calls({"tool_calls": [_call("a", '{"x": 1}'), _call("b", {"y": [1, 2]})]})
    qwen = '<tool_call>\n{"name": "a", "arguments": {"x": 1.0}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"y": [1, 2]}}\n</tool_call>'
    mistral = '[TOOL_CALLS][{"name": "b", "arguments": {"y": [1, 2]}}, {"name": "a", "arguments": {"x": 1}}]'
    llama = '{"name": "a", "parameters": {"x": 1}}; {"type": "function", "function": {"name": "b", "arguments": "{\\"y\\": [1, 2]}"}}'
    for text in (qwen, mistral, llama):
        assert sorted(generated_tool_calls(text)) == sorted(ref), text
    assert len(generated_tool_calls(qwen + qwen)) == 4  # a repeated call is a different answer


def test_parallel_calls_may_come_in_any_order_but_not_twice() -> None:
    tool = {"role": "assistant", "tool_calls": [_call("a", "{}"), _call("b", "{}")]}
    both = '{"name": "b", "arguments": {}} {"name": "a", "arguments": {}}'
    assert score_answer(both, tool)[1] == 1
    assert score_answer('{"name": "a", "arguments": {}}', tool)[1] == 0
    assert score_answer(both + ' {"name": "a", "arguments": {}}', tool)[1] == 0


@given(st.text(max_size=40), st.text(max_size=40))
def test_text_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    s = text_similarity(a, b)
    assert 0 <= s <= 1 and s == text_similarity(b, a)
    assert text_similarity(a, a) == 1


def test_text_similarity_rewards_overlap_not_order() -> None:
    assert text_similarity("Oslo ships today", "today ships Oslo") == 1
    assert text_similarity("Oslo ships today", "Lyon waits") == 0
    assert 0 < text_similarity("the order ships to Oslo", "the order ships to Lyon") < 1


def test_aggregate_reports_percent_overall_and_fractions_per_kind() -> None:
    scores = aggregate([(KIND_JSON, 1.0), (KIND_JSON, 0.0), (KIND_TEXT, 0.5), (KIND_JSON, 1.0)])
    assert scores.examples == 4 and scores.score_percent == round(100 * 2.5 / 4)
    assert scores.metrics == {KIND_JSON: round(2 / 3, 4), KIND_TOOL_CALL: None, KIND_TEXT: 0.5}
    empty = aggregate([])
    assert empty.score_percent is None and set(empty.metrics.values()) == {None}
