"""Shadow evaluation (routing/compare.py): how a shadow backend's answer agrees with the one the caller got."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.routing.compare import Agreement, answer_parts, compare_answers


def chat(content: str | None = None, calls: list[tuple[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)
        ]
    return {"choices": [{"index": 0, "message": message}]}


def test_same_text_same_json_and_same_tool_calls_agree() -> None:
    assert compare_answers(chat("Billing"), chat("  billing\n")) is Agreement.EXACT
    assert compare_answers(chat('{"a": 1, "b": [2]}'), chat('{"b":[2],"a":1}')) is Agreement.JSON
    weather = [("get_weather", {"city": "Paris", "unit": "C"})]
    same = [("get_weather", {"unit": "C", "city": "Paris"})]  # argument order aside
    assert compare_answers(chat(None, weather), chat(None, same)) is Agreement.TOOL_CALLS
    assert all(a.agrees for a in (Agreement.EXACT, Agreement.JSON, Agreement.TOOL_CALLS))


def test_different_answers_and_non_answers_do_not() -> None:
    assert compare_answers(chat('{"a": 1}'), chat('{"a": 2}')) is Agreement.DIFFERS
    assert compare_answers(chat("yes"), chat("no")) is Agreement.DIFFERS
    weather = [("get_weather", {"city": "Paris"})]
    assert (
        compare_answers(chat(None, weather), chat(None, [("get_weather", {"city": "Rome"})]))
        is Agreement.DIFFERS
    )
    assert (
        compare_answers(chat(None, weather), chat("It is sunny")) is Agreement.DIFFERS
    )  # it should have called
    assert compare_answers(chat("x"), chat("")) is Agreement.INVALID
    assert compare_answers(chat("x"), None) is Agreement.INVALID
    assert compare_answers(chat("x"), {"error": {"message": "overloaded"}}) is Agreement.INVALID
    assert not Agreement.DIFFERS.agrees and not Agreement.INVALID.agrees


def test_completions_answers_are_compared_by_their_text() -> None:
    assert compare_answers({"choices": [{"text": "SELECT 1"}]}, {"choices": [{"text": "select 1"}]}).agrees
    assert answer_parts({"choices": [{"text": "t"}]}) == ("t", [])
    assert answer_parts({"choices": "nope"}) == (None, [])


texts = st.text(max_size=30).filter(lambda t: t.strip())
calls = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.dictionaries(st.text(max_size=3), st.integers())), max_size=2
)


@given(texts, calls)
def test_an_answer_agrees_with_itself_and_agreement_is_symmetric(text: str, tool_calls: list[Any]) -> None:
    answer = chat(text, tool_calls)
    assert compare_answers(answer, answer).agrees
    other = chat(text[::-1], tool_calls[::-1])
    assert compare_answers(answer, other).agrees == compare_answers(other, answer).agrees
