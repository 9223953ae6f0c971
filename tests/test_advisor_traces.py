"""The synthetic agent traces (advisor/traces.py): valid captured calls, labelled, varied, consistent, seeded."""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from slm_operator.advisor.records import CallRecord, parse_lines
from slm_operator.advisor.traces import DEFAULT_MIX, OPEN_CHAT, TASK_TYPES, generate, write_jsonl
from slm_operator.capture.record import CaptureRecord

N = 2000

# The keys each JSON task's answer always has (some prompt variants ask for more).
JSON_KEYS = {
    "intent-routing": {"intent"},
    "invoice-extraction": {"vendor", "invoice_number", "invoice_date", "total", "currency", "iban"},
    "ticket-tagging": {"labels", "priority", "team"},
    "review-rating": {"sentiment", "rating"},
    "contact-extraction": {"contacts"},
    "address-normalisation": {"street", "house_number", "postcode", "city", "country"},
    "translation": {"language", "translation"},
}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PHONE = re.compile(r"\+\d[\d \-()]{7,}\d")


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return generate(N, seed=7)


def by_label(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["label"]].append(record)
    return grouped


def answer(record: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = record["response"]["choices"][0]["message"]
    return message


def user_turn(record: dict[str, Any]) -> str:
    content: str = record["request"]["messages"][-1]["content"]
    return content


def test_the_same_seed_gives_the_same_records_and_another_seed_others() -> None:
    first, again, other = generate(300, seed=3), generate(300, seed=3), generate(300, seed=4)
    assert json.dumps(first) == json.dumps(again)
    assert {r["id"] for r in first}.isdisjoint({r["id"] for r in other})
    assert [user_turn(r) for r in first] != [user_turn(r) for r in other]
    assert generate(0) == []


def test_every_record_is_a_capture_record_and_a_call_record(records: list[dict[str, Any]]) -> None:
    for record in records:
        captured = CaptureRecord.model_validate(record)
        call = CallRecord.model_validate(record)
        assert captured.schema_version == 1 and captured.backend == "llm" and captured.status == 200
        assert captured.task is None and captured.fallback_reason is None and not captured.stream
        assert call.label in TASK_TYPES and call.response is not None
        assert re.fullmatch(r"[0-9a-f]{32}", record["id"]) and re.fullmatch(r"[0-9a-f]{64}", record["caller"])
        assert record["request"]["model"] == record["model"]
        assert record["request"]["messages"][0]["role"] == "system"
        assert record["request"]["messages"][-1]["role"] == "user"
        assert record["response"]["object"] == "chat.completion"
    assert len({r["id"] for r in records}) == len(records)


def test_there_are_ten_or_more_slm_tasks_besides_open_chat_in_uneven_default_shares() -> None:
    assert OPEN_CHAT == "open-chat" and OPEN_CHAT in TASK_TYPES
    assert len(set(TASK_TYPES)) == len(TASK_TYPES) >= 11
    assert set(DEFAULT_MIX) == set(TASK_TYPES)
    assert sum(DEFAULT_MIX.values()) == pytest.approx(1.0)
    assert 0.10 <= DEFAULT_MIX[OPEN_CHAT] <= 0.15
    assert max(DEFAULT_MIX.values()) >= 4 * min(DEFAULT_MIX.values())


def test_every_label_appears_with_a_share_near_the_mix(records: list[dict[str, Any]]) -> None:
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(TASK_TYPES)
    for label in TASK_TYPES:
        assert counts[label] / N == pytest.approx(DEFAULT_MIX[label], abs=0.025), label


def test_mix_overrides_the_weights_of_the_labels_it_names() -> None:
    mixed = Counter(r["label"] for r in generate(1000, seed=1, mix={OPEN_CHAT: 0, "translation": 1.0}))
    assert OPEN_CHAT not in mixed
    assert mixed["translation"] / 1000 == pytest.approx(1.0 / 1.88, abs=0.06)  # 1.0 of 1.0 + 0.88 others
    assert set(mixed) == set(TASK_TYPES) - {OPEN_CHAT}


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"sql": 0.5}, "'sql'"),
        ({"intent-routing": 0.1, "chit-chat": 0.2}, "'chit-chat'"),
        ({"doc-summary": -1}, "'doc-summary'"),
        (dict.fromkeys(TASK_TYPES, 0.0), "weight of 0"),
    ],
)
def test_a_bad_mix_is_refused_naming_the_problem(mix: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(10, mix=mix)


def test_tool_calls_name_an_offered_tool_with_json_arguments(records: list[dict[str, Any]]) -> None:
    tools_used: Counter[str] = Counter()
    for record in records:
        message = answer(record)
        if record["label"] != "tool-selection":
            assert "tools" not in record["request"] and not message.get("tool_calls")
            continue
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in record["request"]["tools"]}
        assert len(offered) >= 4
        (call,) = message["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in offered
        arguments = json.loads(call["function"]["arguments"])
        assert set(offered[call["function"]["name"]]["required"]) <= set(arguments)
        assert (
            message["content"] is None and record["response"]["choices"][0]["finish_reason"] == "tool_calls"
        )
        tools_used[call["function"]["name"]] += 1
    assert len(tools_used) >= 8


def test_json_tasks_ask_for_json_and_answer_it_with_their_keys(records: list[dict[str, Any]]) -> None:
    for record in records:
        json_mode = record["request"].get("response_format") == {"type": "json_object"}
        assert json_mode == (record["label"] in JSON_KEYS)
        if json_mode:
            content = json.loads(answer(record)["content"])
            assert JSON_KEYS[record["label"]] <= set(content), (record["label"], content)


def test_answers_fit_their_requests(records: list[dict[str, Any]]) -> None:
    grouped = by_label(records)
    verbatim = 0  # a few invoices are OCR output with a misread character or two
    for record in grouped["invoice-extraction"]:
        fields = json.loads(answer(record)["content"])
        verbatim += fields["invoice_number"] in user_turn(record) and fields["vendor"] in user_turn(record)
        assert isinstance(fields["total"], float) and fields["invoice_date"][:2] == "20"
    assert verbatim >= 0.8 * len(grouped["invoice-extraction"])
    for record in grouped["contact-extraction"]:
        for contact in json.loads(answer(record)["content"])["contacts"]:
            assert contact["email"] in user_turn(record) and contact["name"] in user_turn(record)
    for record in grouped["intent-routing"]:
        order = json.loads(answer(record)["content"]).get("order_id")
        assert order is None or order in user_turn(record).upper()
    for record in grouped["sql-generation"]:
        assert "SELECT" in answer(record)["content"]
        assert re.search(r"\b(customers|orders|products|order_items)\b", answer(record)["content"])
    for record in grouped["doc-summary"]:
        assert len(answer(record)["content"].splitlines()) == 3
    for record in grouped["unit-tests"]:
        assert "def test_" in answer(record)["content"] and "import pytest" in answer(record)["content"]
    for record in grouped[OPEN_CHAT]:
        assert len(answer(record)["content"]) > 150


def test_pii_is_in_a_good_share_of_the_calls(records: list[dict[str, Any]]) -> None:
    texts = [json.dumps(r["request"]["messages"], ensure_ascii=False) for r in records]
    with_email = sum(1 for t in texts if EMAIL.search(t))
    with_phone = sum(1 for t in texts if PHONE.search(t))
    assert with_email / N > 0.2 and with_phone / N > 0.1
    assert sum(1 for t in texts if EMAIL.search(t) or PHONE.search(t)) / N > 0.3


def test_token_counts_and_latency_are_consistent(records: list[dict[str, Any]]) -> None:
    for record in records:
        usage = record["response"]["usage"]
        assert usage["prompt_tokens"] == record["prompt_tokens"] > 0
        assert usage["completion_tokens"] == record["completion_tokens"] > 0
        assert usage["total_tokens"] == record["prompt_tokens"] + record["completion_tokens"]
        chars = sum(len(m.get("content") or "") for m in record["request"]["messages"])
        assert chars / 4 <= record["prompt_tokens"] <= chars / 4 + 3000  # tools and per-message overhead
        assert record["total_ms"] >= 250 + 20 * record["completion_tokens"]
        assert 0 < record["ttft_ms"] <= record["total_ms"]
    long_answers = [r["total_ms"] for r in records if r["completion_tokens"] > 300]
    short_answers = [r["total_ms"] for r in records if r["completion_tokens"] < 30]
    assert min(long_answers) > max(sorted(short_answers)[: len(short_answers) // 2])


def test_each_task_has_several_system_prompts_and_many_distinct_user_turns(
    records: list[dict[str, Any]],
) -> None:
    for label, calls in by_label(records).items():
        systems = {r["request"]["messages"][0]["content"] for r in calls}
        users = {user_turn(r) for r in calls}
        assert len(systems) >= 2, label
        assert len(users) >= 0.5 * len(calls), (label, len(users), len(calls))


def test_some_calls_carry_earlier_turns_or_examples_and_lengths_vary(records: list[dict[str, Any]]) -> None:
    turns = Counter(len(r["request"]["messages"]) for r in records)
    assert turns[2] < 0.9 * N and sum(c for n, c in turns.items() if n >= 4) > 0.05 * N
    lengths = sorted(len(user_turn(r)) for r in records)
    assert lengths[N // 10] < 100 and lengths[-N // 20] > 800 and lengths[-1] > 2000


def test_callers_are_a_few_dozen_agents_and_do_not_give_the_task_away(records: list[dict[str, Any]]) -> None:
    tasks_of: dict[str, set[str]] = defaultdict(set)
    for record in records:
        tasks_of[record["caller"]].add(record["label"])
    assert 20 <= len(tasks_of) <= 60
    assert sum(1 for tasks in tasks_of.values() if len(tasks) > 1) >= 2
    assert len({r["model"] for r in records}) >= 3


def test_times_span_a_week_in_order_with_a_daily_rhythm(records: list[dict[str, Any]]) -> None:
    times = [datetime.fromisoformat(r["time"]) for r in records]
    assert all(r["time"].endswith("Z") for r in records)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert times == sorted(times) and start <= times[0] and times[-1] < start + timedelta(days=7)
    hours = Counter(t.hour for t in times)
    assert sum(hours[h] for h in range(9, 17)) > 3 * sum(hours[h] for h in range(0, 8))
    assert len({t.date() for t in times}) == 7
    other = generate(50, seed=7, start=datetime(2027, 3, 1, 12), route="team-a/bot")
    assert all(r["time"].startswith("2027-03-0") and r["route"] == "team-a/bot" for r in other)


def test_write_jsonl_writes_one_parsable_call_a_line() -> None:
    calls = generate(50, seed=2)
    out = io.StringIO()
    assert write_jsonl(calls, out) == 50
    lines = out.getvalue().splitlines()
    assert len(lines) == 50 and json.loads(lines[0]) == calls[0]
    parsed = list(parse_lines(lines))
    assert all(isinstance(p, CallRecord) for p in parsed)
    assert [p.label for p in parsed if isinstance(p, CallRecord)] == [c["label"] for c in calls]


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate(-1)
