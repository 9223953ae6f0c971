"""A streamed response reassembled is the response the same call returns unstreamed (capture keeps one body)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.capture import StreamAssembler, reassemble_chat_stream

HEAD = {"id": "chatcmpl-1", "created": 1767225600, "model": "qwen2.5-3b-instruct"}


def chunk(*choices: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {**HEAD, "object": "chat.completion.chunk", "choices": list(choices), "usage": usage}


def delta(index: int = 0, finish_reason: str | None = None, **d: Any) -> dict[str, Any]:
    return {"index": index, "delta": d, "logprobs": None, "finish_reason": finish_reason}


def test_content_tool_calls_in_pieces_finish_reason_and_usage_from_the_last_chunk() -> None:
    chunks = [
        chunk(delta(role="assistant", content="")),
        chunk(delta(content="Let me "), usage=None),
        chunk(delta(content="check.")),
        chunk(
            delta(
                tool_calls=[
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            )
        ),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": "Par'}}])),
        chunk(
            delta(
                tool_calls=[
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": '{"tz"'},
                    }
                ]
            )
        ),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": 'is"}'}}])),
        chunk(delta(tool_calls=[{"index": 1, "function": {"arguments": ': "CET"}'}}])),
        chunk(delta(finish_reason="tool_calls")),
        chunk(usage={"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48}),
    ]
    body = reassemble_chat_stream(chunks)
    assert body == {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48},
    }


def test_a_reply_of_only_tool_calls_has_null_content_and_no_usage_without_include_usage() -> None:
    body = reassemble_chat_stream(
        [
            chunk(
                delta(
                    role="assistant",
                    content=None,
                    tool_calls=[
                        {
                            "index": 0,
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                )
            ),
            chunk(delta(finish_reason="tool_calls")),
        ]
    )
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"] == {
        "name": "f",
        "arguments": "{}",
    }
    assert body["usage"] is None


def test_several_choices_interleaved_and_logprobs_joined() -> None:
    lp = lambda tok: {"content": [{"token": tok, "logprob": -0.1, "top_logprobs": []}]}  # noqa: E731
    chunks = [
        chunk(
            {
                "index": 1,
                "delta": {"role": "assistant", "content": "B"},
                "logprobs": lp("B"),
                "finish_reason": None,
            }
        ),
        chunk(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "A"},
                "logprobs": lp("A"),
                "finish_reason": None,
            }
        ),
        chunk({"index": 0, "delta": {"content": "a"}, "logprobs": lp("a"), "finish_reason": "stop"}),
        chunk({"index": 1, "delta": {"content": "b"}, "logprobs": lp("b"), "finish_reason": "length"}),
    ]
    body = reassemble_chat_stream(chunks)
    assert [c["message"]["content"] for c in body["choices"]] == ["Aa", "Bb"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert [t["token"] for t in body["choices"][1]["logprobs"]["content"]] == ["B", "b"]


def test_vllm_continuous_usage_keeps_the_last_and_reasoning_is_joined() -> None:
    chunks = [
        chunk(
            delta(role="assistant", reasoning_content="think "),
            usage={"prompt_tokens": 5, "completion_tokens": 1},
        ),
        chunk(delta(reasoning_content="hard"), usage={"prompt_tokens": 5, "completion_tokens": 2}),
        chunk(delta(content="42", finish_reason="stop"), usage={"prompt_tokens": 5, "completion_tokens": 3}),
    ]
    body = reassemble_chat_stream(chunks)
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "think hard" and msg["content"] == "42"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3}


def test_legacy_completions_stream_becomes_a_text_completion() -> None:
    chunks = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m",
            "choices": [{"index": 0, "text": "Hel", "logprobs": None, "finish_reason": None}],
        },
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "m",
            "choices": [{"index": 0, "text": "lo", "logprobs": None, "finish_reason": "stop"}],
        },
    ]
    body = reassemble_chat_stream(chunks)
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "stop"}]


def test_an_error_event_mid_stream_is_kept() -> None:
    body = reassemble_chat_stream(
        [chunk(delta(role="assistant", content="par")), {"error": {"message": "upstream died", "code": 502}}]
    )
    assert body["error"] == {"message": "upstream died", "code": 502}
    assert body["choices"][0]["message"]["content"] == "par"


# The property: any chat.completion, cut into chunks at arbitrary places (choices interleaved in any order),
# comes back whole.

_text = st.text(max_size=30)
_tool_call = st.fixed_dictionaries(
    {
        "id": st.text(alphabet="abcdef0123456789", min_size=1, max_size=8),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True), "arguments": _text}
        ),
    }
)
_message = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | _text},
    optional={"tool_calls": st.lists(_tool_call, min_size=1, max_size=3), "reasoning_content": _text},
)
_usage = st.none() | st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
)


@st.composite
def completions(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.lists(_message, max_size=3))
    finish = st.sampled_from(["stop", "length", "tool_calls"]) | st.none()
    return {
        **HEAD,
        "object": "chat.completion",
        "choices": [
            {"index": i, "message": m, "logprobs": None, "finish_reason": draw(finish)}
            for i, m in enumerate(messages)
        ],
        "usage": draw(_usage),
    }


def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at arbitrary places (at least one piece, maybe empty ones)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _choice_deltas(draw: st.DrawFn, choice: dict[str, Any]) -> list[dict[str, Any]]:
    msg = choice["message"]
    deltas: list[dict[str, Any]] = [{"role": msg["role"]}]
    for key in ("reasoning_content", "content"):
        if msg.get(key) is not None:
            deltas += [{key: piece} for piece in _pieces(draw, msg[key])]
    for n, call in enumerate(msg.get("tool_calls", [])):
        first, *rest = _pieces(draw, call["function"]["arguments"])
        head = {
            "index": n,
            "id": call["id"],
            "type": call["type"],
            "function": {"name": call["function"]["name"], "arguments": first},
        }
        deltas.append({"tool_calls": [head]})
        deltas += [{"tool_calls": [{"index": n, "function": {"arguments": piece}}]} for piece in rest]
    out = [delta(choice["index"], **d) for d in deltas]
    out.append(delta(choice["index"], finish_reason=choice["finish_reason"]))
    return out


@given(st.data(), completions())
def test_any_completion_split_into_chunks_reassembles_to_itself(
    data: st.DataObject, original: dict[str, Any]
) -> None:
    queues = [_choice_deltas(data.draw, c) for c in original["choices"]]
    chunks = []
    while any(queues):  # interleave the choices in an arbitrary order, each in its own order
        q = data.draw(st.sampled_from([q for q in queues if q]))
        chunks.append(chunk(q.pop(0)))
    if original["usage"] is not None or not chunks:  # a stream has at least one chunk
        chunks.append(chunk(usage=original["usage"]))
    sent = copy.deepcopy(chunks)
    assert reassemble_chat_stream(chunks) == original
    assert chunks == sent  # the chunks the caller got are not changed

    assembler = StreamAssembler()  # incremental use gives the same
    for c in sent:
        assembler.add(c)
    assert assembler.result() == original
