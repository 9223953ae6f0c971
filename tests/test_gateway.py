"""The gateway end to end, in process: stand-in backends on 127.0.0.1, real HTTP through aiohttp both ways.

What a caller and an operator would notice: which backend answers (headers), streams passed through chunk by
chunk, retries only before the first byte, fallbacks with their reason, 401/403/404/413/429, /v1/models, shadow
copies, capture records, metrics.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from e2e.standin import Behaviour
from slm_operator.api.v1alpha1 import RulePhase
from slm_operator.routing.promotion import RuleCounts
from tests.gateway_env import KEY, OTHER_KEY, Env, closed_port, gateway_env

RULES = [
    {"name": "invoices", "match": {"tasks": ["extract-invoice"]}, "backend": "slm"},
    {
        "name": "tools",
        "match": {"tools": "Present"},
        "split": [{"backend": "slm", "weight": 1}, {"backend": "canary", "weight": 1}],
    },
]
FALLBACK = {"rules": RULES, "defaultBackend": "llm", "fallback": {"backend": "llm"}}


class RecordingCapture:
    """The capture pipeline as the gateway sees it (start, submit, stop), keeping what it is handed: these tests
    are about what the gateway records and when; the pipeline itself is tested in tests/test_capture_*.py."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self, drain_timeout: float = 10) -> None:
        self.started = False

    def submit(self, record: Any) -> bool:
        self.records.append(record)
        return True


def run(spec: dict[str, Any] | None, test: Callable[[Env], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with gateway_env(spec, **kw) as env:
            await test(env)

    asyncio.run(main())


def events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def text_of(body: bytes) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or "" for e in events(body) for c in e.get("choices") or []
    )


# ------------------------------------------------------------------------------------------------ routing


def test_calls_go_where_the_rules_say_and_the_answer_says_so() -> None:
    async def test(env: Env) -> None:
        resp, body = await env.chat(task="extract-invoice")
        assert resp.status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "hello from slm"
        assert resp.headers["x-slm-backend"] == "slm"
        assert resp.headers["x-slm-route"] == "agents/invoices"
        assert resp.headers["x-slm-task"] == "extract-invoice"
        assert "x-slm-fallback" not in resp.headers
        sent = env.slm.requests[-1]
        assert sent["body"]["model"] == "invoice-extractor"  # the name the SLMDeployment is served under
        assert sent["body"]["messages"] == [{"role": "user", "content": "read this invoice"}]
        assert "Authorization" not in sent["headers"]  # the caller's key never reaches a backend
        # no rule matches: the default backend, the external LLM, with its own key and model name
        resp, body = await env.chat(task="summarise")
        assert resp.headers["x-slm-backend"] == "llm"
        assert env.llm.requests[-1]["body"]["model"] == "big-llm"
        assert env.llm.requests[-1]["headers"]["Authorization"] == "Bearer sk-upstream-secret"

    run(FALLBACK, test)


def test_tools_and_tool_calls_pass_through() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
        }
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "42"}'}}

    async def test(env: Env) -> None:
        env.slm.behaviour.tool_calls = [call]
        env.canary.behaviour.tool_calls = [call]
        seen = set()
        for _ in range(8):
            resp, body = await env.chat(tools=tools, tool_choice="auto")
            assert resp.status == 200
            seen.add(resp.headers["x-slm-backend"])
            assert json.loads(body)["choices"][0]["message"]["tool_calls"] == [call]
        assert seen == {"slm", "canary"}  # the 1:1 split
        assert env.slm.requests[-1]["body"]["tools"] == tools
        assert env.slm.requests[-1]["body"]["tool_choice"] == "auto"
        resp, body = await env.chat(tools=tools, stream=True)
        deltas = [c["delta"] for e in events(body) for c in e["choices"] if c["delta"].get("tool_calls")]
        assert deltas == [{"tool_calls": [{"index": 0, **call}]}]

    run(FALLBACK, test)


def test_a_stream_is_passed_through_chunk_by_chunk() -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour.chunks = 5
        env.slm.behaviour.chunk_delay = 0.05
        h = {"Authorization": f"Bearer {KEY}", "x-slm-task": "extract-invoice"}
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        pieces = []
        async with env.session.post(env.url + "/chat/completions", json=body, headers=h) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["x-slm-backend"] == "slm"
            async for chunk in resp.content.iter_any():
                pieces.append(chunk)
        whole = b"".join(pieces)
        assert text_of(whole) == "hello from slm"
        assert whole.endswith(b"data: [DONE]\n\n")
        assert len(pieces) >= 5  # the chunks arrived one by one, not as one buffered answer

    run(FALLBACK, test)


def test_completions_stream_or_not() -> None:
    async def test(env: Env) -> None:
        resp, body = await env.post(
            "/completions", {"model": "gpt-4o-mini", "prompt": "Once"}, **{"x-slm-task": "extract-invoice"}
        )
        assert resp.status == 200 and json.loads(body)["choices"][0]["text"] == "hello from slm"
        assert env.slm.requests[-1]["path"] == "/v1/completions"
        resp, body = await env.post(
            "/completions", {"model": "gpt-4o-mini", "prompt": "Once", "stream": True}
        )
        assert resp.headers["x-slm-backend"] == "llm"
        assert "".join(c["text"] for e in events(body) for c in e["choices"]) == "hello from llm"

    run(FALLBACK, test)


# ------------------------------------------------------------------------------------------------ retries


def test_a_refused_connection_is_retried_on_another_replica() -> None:
    async def test(env: Env) -> None:
        for _ in range(3):
            resp, _ = await env.chat(task="extract-invoice")
            assert resp.status == 200 and resp.headers["x-slm-backend"] == "slm"
            assert "x-slm-fallback" not in resp.headers
        assert len(env.slm.requests) == 3
        metrics = await env.metrics()
        assert 'slm_gateway_retries_total{backend="slm",route="agents/invoices"}' in metrics

    run(FALLBACK, test, slm_endpoints=[f"http://127.0.0.1:{closed_port()}/v1"])


def test_nothing_is_retried_or_fallen_back_after_the_first_byte() -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour.cut_after = 2
        resp, body = await env.chat(task="extract-invoice", stream=True)
        assert resp.status == 200 and resp.headers["x-slm-backend"] == "slm"
        got = events(body)
        assert [e["choices"][0]["delta"]["content"] for e in got[:2]] == ["he", "ll"]
        assert got[-1]["error"]["code"] == "error"  # the caller learns the stream ended early
        assert len(env.slm.requests) == 1 and env.llm.requests == []
        assert (
            'slm_gateway_streams_cut_total{backend="slm",reason="error",route="agents/invoices"} 1.0'
            in await env.metrics()
        )

    run({**FALLBACK, "timeouts": {"firstByte": "5s", "total": "10s"}}, test)


# ------------------------------------------------------------------------------------------------ fallback


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour(status=500), "error"),
        (Behaviour(status=502), "error"),
        (Behaviour(status=503), "overload"),
        (Behaviour(status=429), "overload"),
        (Behaviour(delay=2.0), "timeout"),
        (Behaviour(content="Sure! The total is 12 EUR."), "invalid_json"),
    ],
    ids=["500", "502", "503", "429", "slow", "prose-instead-of-json"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_fallback_answers_with_the_reason_in_a_header(
    behaviour: Behaviour, reason: str, stream: bool
) -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour = behaviour
        resp, body = await env.chat(
            task="extract-invoice", stream=stream, response_format={"type": "json_object"}
        )
        assert resp.status == 200
        assert resp.headers["x-slm-backend"] == "llm"
        assert resp.headers["x-slm-fallback"] == reason
        assert len(env.slm.requests) == 1 and len(env.llm.requests) == 1
        text = text_of(body) if stream else json.loads(body)["choices"][0]["message"]["content"]
        assert text == '{"answer": "from llm"}'
        assert (
            f'slm_gateway_fallbacks_total{{backend="slm",reason="{reason}",route="agents/invoices"}} 1.0'
            in await env.metrics()
        )

    async def prepared(env: Env) -> None:
        env.llm.behaviour.content = '{"answer": "from llm"}'
        await test(env)

    run({**FALLBACK, "timeouts": {"firstByte": "300ms", "total": "5s"}}, prepared)


def test_valid_json_is_served_by_the_slm_and_a_schema_is_checked() -> None:
    schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}}

    async def test(env: Env) -> None:
        env.slm.behaviour.content = '{"total": 12.5}'
        resp, _ = await env.chat(task="extract-invoice", response_format=fmt, stream=True)
        assert resp.headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in resp.headers
        env.slm.behaviour.content = '{"total": "twelve"}'
        resp, _ = await env.chat(task="extract-invoice", response_format=fmt)
        assert (resp.headers["x-slm-backend"], resp.headers["x-slm-fallback"]) == ("llm", "invalid_json")

    run(FALLBACK, test)


def test_a_failure_not_listed_is_returned_to_the_caller() -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour = Behaviour(status=503, retry_after="7")
        resp, body = await env.chat(task="extract-invoice")
        assert resp.status == 503 and resp.headers["Retry-After"] == "7"
        assert resp.headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in resp.headers
        assert json.loads(body)["error"]["message"] == "slm answers 503"
        env.slm.behaviour = Behaviour(status=500)
        resp, _ = await env.chat(task="extract-invoice")
        assert resp.headers["x-slm-fallback"] == "error"

    run({**FALLBACK, "fallback": {"backend": "llm", "when": ["Error"]}}, test)


def test_no_fallback_configured_returns_gateway_errors() -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour = Behaviour(delay=2.0)
        resp, body = await env.chat(task="extract-invoice")
        assert resp.status == 504 and json.loads(body)["error"]["code"] == "timeout"

    run({"rules": RULES, "timeouts": {"firstByte": "200ms", "total": "1s"}}, test)


def test_a_full_queue_is_an_overload_and_a_slot_is_waited_for() -> None:
    async def test(env: Env) -> None:
        backend = env.gateway.table.routes["agents/invoices"].backends["slm"]
        assert (backend.max_concurrency, backend.max_queue) == (1, 1)
        env.slm.behaviour.delay = 0.3
        first = asyncio.create_task(env.chat(task="extract-invoice"))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(env.chat(task="extract-invoice"))  # waits for the one slot
        await asyncio.sleep(0.05)
        assert 'slm_gateway_queued{backend="slm",route="agents/invoices"} 1.0' in await env.metrics()
        third, _ = await env.chat(task="extract-invoice")  # the queue (1) is full: overload, to the LLM
        assert (third.headers["x-slm-backend"], third.headers["x-slm-fallback"]) == ("llm", "overload")
        for task in (first, second):
            resp, _ = await task
            assert resp.headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in resp.headers
        assert len(env.slm.requests) == 2

    backends = [
        {
            "name": "slm",
            "slmDeploymentRef": {"name": "invoice-extractor"},
            "maxConcurrency": 1,
            "maxQueue": 1,
        },
        {"name": "llm", "external": {"url": "{llm}", "model": "big-llm"}},
    ]
    run({**FALLBACK, "rules": RULES[:1], "backends": backends}, test)


# ------------------------------------------------------------------------------------------------ who may call


def test_callers_need_a_key_the_route_accepts() -> None:
    async def test(env: Env) -> None:
        resp, body = await env.chat(key=None)
        assert resp.status == 401 and "Authorization: Bearer" in json.loads(body)["error"]["message"]
        resp, _ = await env.chat(key="sk-nobody-knows-this")
        assert resp.status == 401
        resp, body = await env.post(
            "/chat/completions", {"model": "gpt-4o-mini", "messages": []}, key=None, Authorization="Basic abc"
        )
        assert resp.status == 401
        resp, body = await env.chat(key=OTHER_KEY)  # a known key, not on this route's Secret
        assert resp.status == 403 and json.loads(body)["error"]["type"] == "permission_error"
        resp, _ = await env.post("/chat/completions", {"model": "chat", "messages": []}, key=OTHER_KEY)
        assert resp.status == 200
        resp, body = await env.chat(model="gpt-5-ultra")
        assert resp.status == 404 and "gpt-5-ultra" in json.loads(body)["error"]["message"]
        # only the allowed call reached a backend (agents/chat has no rules: its first backend)
        assert len(env.slm.requests) == 1 and env.canary.requests == [] and env.llm.requests == []
        metrics = await env.metrics()
        assert 'slm_gateway_rejected_total{status="401"} 3.0' in metrics
        assert 'slm_gateway_rejected_total{status="403"} 1.0' in metrics

    run(FALLBACK, test)


def test_models_lists_what_the_caller_may_use() -> None:
    async def test(env: Env) -> None:
        async with env.session.get(env.url + "/models", headers={"Authorization": f"Bearer {KEY}"}) as resp:
            doc = await resp.json()
        assert [(m["id"], m["owned_by"]) for m in doc["data"]] == [("gpt-4o-mini", "agents/invoices")]
        async with env.session.get(
            env.url + "/models", headers={"Authorization": f"Bearer {OTHER_KEY}"}
        ) as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["chat"]
        async with env.session.get(env.url + "/models") as resp:
            assert resp.status == 401

    run(FALLBACK, test)


def test_bad_requests_are_refused_before_routing() -> None:
    async def test(env: Env) -> None:
        async with env.session.post(
            env.url + "/chat/completions", data=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
        ) as resp:
            assert resp.status == 400 and "not JSON" in (await resp.json())["error"]["message"]
        resp, body = await env.post("/chat/completions", {"messages": []})
        assert resp.status == 400 and "`model`" in json.loads(body)["error"]["message"]

    run(FALLBACK, test)


def test_requests_above_the_size_limits_get_413() -> None:
    async def test(env: Env) -> None:
        resp, body = await env.chat(messages=[{"role": "user", "content": "x" * 70_000}])
        assert resp.status == 413 and "65536 bytes" in json.loads(body)["error"]["message"]
        resp, body = await env.chat(messages=[{"role": "user", "content": "x" * 5000}])
        assert resp.status == 413 and "route's limit of 4096" in json.loads(body)["error"]["message"]
        resp, _ = await env.chat(messages=[{"role": "user", "content": "x" * 1000}])
        assert resp.status == 200
        assert env.slm.requests == [] and len(env.llm.requests) == 1

    run({**FALLBACK, "limits": {"maxRequestBytes": 4096}}, test, max_request_bytes=65536)


def test_a_caller_over_its_limit_gets_429_with_retry_after() -> None:
    async def test(env: Env) -> None:
        for _ in range(2):
            resp, _ = await env.chat()
            assert resp.status == 200
        resp, body = await env.chat()
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert "requests per minute" in json.loads(body)["error"]["message"]
        # another caller has its own allowance
        resp, _ = await env.post("/chat/completions", {"model": "chat", "messages": []}, key=OTHER_KEY)
        assert resp.status == 200
        assert (
            'slm_gateway_rate_limited_total{limit="requests",route="agents/invoices"} 1.0'
            in await env.metrics()
        )

    run({**FALLBACK, "limits": {"requestsPerMinute": 2}}, test)


def test_tokens_per_minute_count_the_backends_usage() -> None:
    async def test(env: Env) -> None:
        env.llm.behaviour.content = "word " * 60  # 60 completion tokens by the stand-in's count
        resp, _ = await env.chat()
        assert resp.status == 200
        resp, _ = await env.chat()  # the first call put the caller in debt
        assert resp.status == 429 and "tokens per minute" in json.loads(_)["error"]["message"]

    run({**FALLBACK, "limits": {"tokensPerMinute": 50}}, test)


# ------------------------------------------------------------------------------------------------ shadow, capture


def test_shadow_copies_reach_the_shadow_backend_and_never_the_caller() -> None:
    rules = [{"name": "all", "backend": "slm", "shadow": {"backends": ["llm"], "percent": 100}}]

    async def test(env: Env) -> None:
        env.llm.behaviour.delay = 0.2  # the shadow is slow; the caller does not wait for it
        resp, body = await env.chat(stream=True, stream_options={"include_usage": True})
        assert resp.headers["x-slm-backend"] == "slm" and text_of(body) == "hello from slm"
        assert len(env.llm.requests) == 1
        copy = env.llm.requests[0]["body"]
        assert copy["stream"] is False and "stream_options" not in copy and copy["model"] == "big-llm"
        for _ in range(50):
            if 'outcome="ok"' in await env.metrics():
                break
            await asyncio.sleep(0.05)
        assert (
            'slm_gateway_shadow_requests_total{backend="llm",outcome="ok",route="agents/invoices"} 1.0'
            in await env.metrics()
        )

    run({"rules": rules}, test)


def test_sampled_calls_are_captured_whole_after_the_answer() -> None:
    capture = RecordingCapture()
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "42"}'}}

    async def test(env: Env) -> None:
        resp, _ = await env.chat(task="extract-invoice", stream=True)
        assert resp.status == 200
        for standin in (env.slm, env.canary):
            standin.behaviour.tool_calls = [call]
        resp, _ = await env.chat(
            task="summarise", tools=[{"type": "function", "function": {"name": "lookup"}}]
        )
        env.slm.behaviour = Behaviour(status=500)
        resp, _ = await env.chat(task="extract-invoice", stream=True)
        assert resp.headers["x-slm-fallback"] == "error"
        await asyncio.sleep(0)  # the records are handed over just after the answers
        records = capture.records
        assert len(records) == 3
        streamed, tool, fell_back = records
        assert streamed.stream and streamed.backend == "slm" and streamed.route == "agents/invoices"
        assert streamed.response["choices"][0]["message"]["content"] == "hello from slm"
        assert streamed.task == "extract-invoice" and streamed.model == "gpt-4o-mini"
        assert streamed.request["messages"] == [{"role": "user", "content": "read this invoice"}]
        assert streamed.ttft_ms is not None and streamed.total_ms >= streamed.ttft_ms
        assert KEY not in streamed.caller and "team-a" not in streamed.caller and len(streamed.caller) == 64
        assert streamed.redact == ["Email", "APIKey"]
        assert tool.response["choices"][0]["message"]["tool_calls"] == [call] and tool.prompt_tokens == 3
        assert (fell_back.backend, fell_back.fallback_reason, fell_back.status) == ("llm", "error", 200)
        assert capture.started

    run({**FALLBACK, "capture": {"sampleRate": "1", "redact": ["Email", "APIKey"]}}, test, capture=capture)
    assert not capture.started  # stopped with the gateway


def test_sample_rate_picks_a_share_of_calls() -> None:
    capture = RecordingCapture()

    async def test(env: Env) -> None:
        for _ in range(40):
            await env.chat()
        await asyncio.sleep(0)
        assert 3 <= len(capture.records) <= 20  # a quarter, decided by each record's id
        assert (
            'slm_gateway_capture_submitted_total{accepted="true",route="agents/invoices"}'
            in await env.metrics()
        )

    run({**FALLBACK, "capture": {"sampleRate": "0.25"}}, test, capture=capture)


def test_routes_without_capture_record_nothing() -> None:
    capture = RecordingCapture()

    async def test(env: Env) -> None:
        await env.chat()
        await asyncio.sleep(0)
        assert capture.records == []

    run(FALLBACK, test, capture=capture)


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_count_calls_tokens_and_latency_per_route_backend_and_task() -> None:
    async def test(env: Env) -> None:
        await env.chat(task="extract-invoice")
        await env.chat(task="made-up-by-the-caller")
        await env.chat(task="extract-invoice", stream=True)
        m = await env.metrics()
        assert (
            'slm_gateway_requests_total{backend="slm",route="agents/invoices",status="200",task="extract-invoice"} 2.0'
            in m
        )
        assert (
            'slm_gateway_requests_total{backend="llm",route="agents/invoices",status="200",task="other"} 1.0'
            in m
        )
        assert (
            'slm_gateway_tokens_total{backend="slm",kind="completion",route="agents/invoices",task="extract-invoice"}'
            in m
        )
        assert (
            'slm_gateway_time_to_first_token_seconds_count{backend="slm",route="agents/invoices",task="extract-invoice"} 2.0'
            in m
        )
        assert (
            'slm_gateway_request_duration_seconds_count{backend="llm",route="agents/invoices",task="other"} 1.0'
            in m
        )
        assert 'slm_gateway_backend_ready_endpoints{backend="slm",route="agents/invoices"} 1.0' in m
        assert 'slm_gateway_in_flight{backend="slm",route="agents/invoices"} 0.0' in m
        async with env.session.get(env.url.removesuffix("/v1") + "/healthz") as resp:
            assert resp.status == 200

    run(FALLBACK, test)


def test_calls_spread_over_replicas_by_least_outstanding_requests() -> None:
    async def test(env: Env) -> None:
        one, two = env.extra["replicas"]
        one.behaviour.delay = 0.3  # replica one is slow: its calls stay outstanding
        first = [asyncio.create_task(env.chat(task="extract-invoice")) for _ in range(2)]
        await asyncio.sleep(0.1)  # one call each (both idle, then one busy); replica two is done already
        quick = [await env.chat(task="extract-invoice") for _ in range(4)]
        assert all(r.status == 200 for r, _ in quick)
        # while replica one holds a call, every new call goes to replica two, the least loaded
        assert (len(one.requests), len(two.requests)) == (1, 5)
        await asyncio.gather(*first)
        one.behaviour.delay = 0.0
        results = [await env.chat(task="extract-invoice") for _ in range(4)]
        # idle replicas take turns
        assert {json.loads(b)["choices"][0]["message"]["content"] for _, b in results} == {
            "hello from slm",
            "hello from slm-2",
        }

    run(FALLBACK, test, slm_replicas=2)


def _agreement(metrics: str, result: str) -> float:
    prefix = (
        'slm_gateway_shadow_agreement_total{backend="llm",result="' + result + '",route="agents/invoices"'
    )
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


async def _compared(env: Env, total: float) -> str:
    for _ in range(100):
        text = await env.metrics()
        found = sum(_agreement(text, r) for r in ("exact", "json", "tool_calls", "differs", "invalid"))
        if found >= total:
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{total} shadow comparisons expected:\n{text}")


def test_shadow_answers_are_compared_with_the_callers_answer() -> None:
    """S6: the SLM in shadow is measured against what the caller got, whole or streamed; a call that failed
    over to the fallback is not compared (the caller's answer is not the rule's backend's)."""
    rules = [{"name": "all", "backend": "slm", "shadow": {"backends": ["llm"], "percent": 100}}]

    async def test(env: Env) -> None:
        env.slm.behaviour.content = '{"total": 12.5, "currency": "EUR"}'
        env.llm.behaviour.content = '{"currency":"EUR","total":12.5}'
        await env.chat()
        assert _agreement(await _compared(env, 1), "json") == 1
        env.llm.behaviour.content = '{"currency": "USD", "total": 12.5}'
        await env.chat(stream=True)  # the streamed answer is reassembled to compare
        assert _agreement(await _compared(env, 2), "differs") == 1
        env.llm.behaviour.content = env.slm.behaviour.content
        await env.chat(stream=True)
        assert _agreement(await _compared(env, 3), "exact") == 1
        env.llm.behaviour.status = 500
        await env.chat()
        assert _agreement(await _compared(env, 4), "invalid") == 1
        env.llm.behaviour.status = 200
        env.slm.behaviour.status = 500  # the caller's answer comes from the fallback: nothing to compare
        resp, _ = await env.chat()
        assert resp.headers["x-slm-backend"] == "llm" and resp.headers["x-slm-fallback"] == "error"
        await asyncio.sleep(0.2)
        text = await env.metrics()
        assert sum(_agreement(text, r) for r in ("exact", "json", "tool_calls", "differs", "invalid")) == 4

    run({"rules": rules, "fallback": {"backend": "llm"}}, test)


PROMOTE_RULES = [
    {
        "name": "invoices",
        "backend": "llm",
        "shadow": {"backends": ["slm"], "percent": 100},
        "promote": {"backend": "slm", "minSamples": 5},
    }
]


def _counts(env: Env, phase: RulePhase) -> RuleCounts:
    return (
        env.gateway.tallies.counts(env.gateway.table.routes["agents/invoices"], {"invoices": phase}).get(
            "invoices"
        )
        or RuleCounts()
    )


async def _counted(env: Env, phase: RulePhase, compared: int) -> None:
    for _ in range(200):
        if _counts(env, phase).compared >= compared:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not compared: {_counts(env, phase)}")


def test_a_rule_in_shadow_counts_the_agreement_of_its_promoted_backend() -> None:
    async def test(env: Env) -> None:
        env.slm.behaviour.content = env.llm.behaviour.content = "INV-4711"
        for _ in range(3):
            resp, _ = await env.chat()
            assert resp.headers["x-slm-backend"] == "llm"  # the rule's backend answers in shadow
        await _counted(env, RulePhase.SHADOW, 3)
        assert _counts(env, RulePhase.SHADOW) == RuleCounts(compared=3, agreed=3)
        assert 'slm_gateway_rule_phase{phase="Shadow",route="agents/invoices",rule="invoices"} 1.0' in (
            await env.metrics()
        )

    run({"rules": PROMOTE_RULES, "fallback": {"backend": "llm"}}, test)


def test_a_serving_rule_answers_from_the_promoted_backend_and_falls_back_to_its_own() -> None:
    """The phase is read from the route's status: Serving sends the rule's calls to promote.backend, copies
    them to the rule's backend (agreement still measured) and falls back to it on the route's triggers."""
    serving = {
        "rules": [
            {
                "name": "invoices",
                "phase": "Serving",
                "backend": "slm",
                "lastTransitionTime": "2026-12-01T00:00:00Z",
            }
        ]
    }

    async def test(env: Env) -> None:
        env.slm.behaviour.content = env.llm.behaviour.content = "INV-4711"
        resp, _ = await env.chat()
        assert resp.headers["x-slm-backend"] == "slm" and "x-slm-fallback" not in resp.headers
        await _counted(env, RulePhase.SERVING, 1)  # the LLM's shadow answer is compared off the call's path
        assert _counts(env, RulePhase.SERVING) == RuleCounts(compared=1, agreed=1, served=1)
        env.slm.behaviour.status = 500
        resp, _ = await env.chat()
        assert resp.headers["x-slm-backend"] == "llm" and resp.headers["x-slm-fallback"] == "error"
        env.slm.behaviour.status = 503  # Overload is not in this route's fallback.when: returned, not counted
        resp, _ = await env.chat()
        assert resp.status == 503 and resp.headers["x-slm-backend"] == "slm"
        c = _counts(env, RulePhase.SERVING)
        assert (c.served, c.fell_back) == (3, 1)

    run({"rules": PROMOTE_RULES, "fallback": {"backend": "llm", "when": ["Error"]}}, test, status=serving)


def test_the_serving_process_collector_still_frees_garbage_cycles_on_its_own() -> None:
    """``settle_gc`` (run by the gateway process before it serves) collects less often, never not at all: the
    garbage cycles calls leave behind are freed by the collector without anyone asking, so memory stays bounded.
    In a child process: the settings are process-wide."""
    code = textwrap.dedent(
        """
        import gc, weakref
        from slm_operator.gateway.standalone import GC_YOUNG_THRESHOLD, settle_gc
        settle_gc()
        class Node: pass
        def cycle():
            a, b = Node(), Node()
            a.b, b.a = b, a
            return weakref.ref(a)
        first = cycle()
        for _ in range(3 * GC_YOUNG_THRESHOLD):
            cycle()
        print(first() is None, gc.get_threshold()[0], gc.get_freeze_count() > 0)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "10000", "True"]
