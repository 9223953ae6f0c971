"""The pure routing core: rules, weighted splits, shadows, fallback decisions, JSON checks, balancing, limits,
the routing table and the SLMRoute status. Property tests state the invariants the gateway relies on."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.api.v1alpha1 import SLMDeployment, SLMRoute, SLMRouteSpec
from slm_operator.routing.balance import pick_endpoint
from slm_operator.routing.fallback import FailureReason, failure_of_status, fallback_backend
from slm_operator.routing.features import RequestFeatures, estimate_prompt_tokens, request_features
from slm_operator.routing.jsoncheck import json_problem
from slm_operator.routing.jsonschema import schema_error
from slm_operator.routing.limits import CallerState, admit, settle
from slm_operator.routing.rules import rule_matches, select, task_label, weighted_choice
from slm_operator.routing.sse import body_usage, count_data_events, sse_events, stream_usage
from slm_operator.routing.status import route_status
from slm_operator.routing.table import (
    Endpoint,
    RouteWorld,
    build_table,
    hash_api_key,
    key_allows,
    resolve,
    secret_data,
)

NOW = "2026-01-01T00:00:00Z"


def route(name: str = "invoices", ns: str = "agents", **spec: Any) -> SLMRoute:
    base: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "backends": [
            {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
            {"name": "canary", "slmDeploymentRef": {"name": "invoice-extractor-v2"}},
            {"name": "llm", "external": {"url": "https://llm.example.com/v1", "model": "gpt-4o-mini"}},
        ],
    }
    base.update(spec)
    return SLMRoute.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": base})


def features(
    task: str | None = None, tools: bool = False, tokens: int = 100, stream: bool = False
) -> RequestFeatures:
    return RequestFeatures(task, tools, tokens, stream, False, None)


RULES = [
    {"name": "long", "match": {"minPromptTokens": 4000}, "backend": "llm"},
    {"name": "invoices", "match": {"tasks": ["extract-invoice"], "tools": "Absent"}, "backend": "slm"},
    {
        "name": "tools",
        "match": {"tools": "Present"},
        "split": [{"backend": "slm", "weight": 90}, {"backend": "canary", "weight": 10}],
        "shadow": {"backends": ["llm"], "percent": 25},
    },
]

# ------------------------------------------------------------------------------------------------ rules


def test_the_first_matching_rule_picks_the_backend_and_no_match_takes_the_default() -> None:
    spec = route(rules=RULES, defaultBackend="llm").spec
    assert select(spec, features("extract-invoice"), 0.0, 1.0).backend == "slm"
    # long prompts go to the LLM even for the invoice task: the first rule wins
    assert select(spec, features("extract-invoice", tokens=5000), 0.0, 1.0) == select(
        spec, features(tokens=5000), 0.0, 1.0
    )
    assert select(spec, features("extract-invoice", tokens=5000), 0.0, 1.0).rule == "long"
    # the task with tools offered is not the invoice rule's
    assert select(spec, features("extract-invoice", tools=True), 0.0, 1.0).rule == "tools"
    nothing = select(spec, features("summarise"), 0.0, 0.0)
    assert (nothing.backend, nothing.rule, nothing.shadows) == ("llm", None, ())
    assert (
        select(route().spec, features(), 0.5, 0.5).backend == "slm"
    )  # no rules, no default: the first backend


def test_a_call_without_a_task_matches_no_rule_that_lists_tasks() -> None:
    spec = route(rules=[RULES[1]]).spec
    assert select(spec, features(None), 0.0, 0.0).rule is None
    assert select(spec, features(""), 0.0, 0.0).rule is None


features_st = st.builds(
    RequestFeatures,
    task=st.one_of(st.none(), st.sampled_from(["extract-invoice", "summarise", "x"])),
    tools_present=st.booleans(),
    prompt_tokens=st.integers(0, 10000),
    stream=st.booleans(),
    wants_json=st.booleans(),
    max_tokens=st.none(),
)


@given(f=features_st, split=st.floats(0, 1, exclude_max=True), shadow=st.floats(0, 1, exclude_max=True))
def test_selection_follows_the_first_rule_that_matches(
    f: RequestFeatures, split: float, shadow: float
) -> None:
    spec = route(rules=RULES).spec
    sel = select(spec, f, split, shadow)
    matching = [r for r in spec.rules or [] if rule_matches(r.match, f)]
    if not matching:
        assert sel.rule is None and sel.backend == "slm"
        return
    rule = matching[0]
    assert sel.rule == rule.name
    allowed = {rule.backend} if rule.backend else {s.backend for s in rule.split or [] if s.weight > 0}
    assert sel.backend in allowed
    assert sel.backend not in sel.shadows
    if rule.shadow:
        assert bool(sel.shadows) == (shadow * 100 < rule.shadow.percent)
    else:
        assert sel.shadows == ()


weights_st = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 50)),
    min_size=1,
    max_size=8,
    unique_by=lambda t: t[0],
).filter(lambda ws: any(w > 0 for _, w in ws))


@given(weights=weights_st, draw=st.floats(0, 1, exclude_max=True))
def test_weighted_choice_never_picks_a_zero_weight(weights: list[tuple[str, int]], draw: float) -> None:
    assert dict(weights)[weighted_choice(weights, draw)] > 0


@given(weights=weights_st)
def test_weighted_choice_gives_each_backend_its_share_over_even_draws(weights: list[tuple[str, int]]) -> None:
    total = sum(w for _, w in weights)
    n = total * 20
    counts: dict[str, int] = {}
    for i in range(n):
        name = weighted_choice(weights, (i + 0.5) / n)
        counts[name] = counts.get(name, 0) + 1
    for name, w in weights:
        assert counts.get(name, 0) == 20 * w


def test_weighted_choice_needs_a_positive_weight() -> None:
    with pytest.raises(ValueError):
        weighted_choice([("a", 0)], 0.3)


def test_task_label_is_bounded_by_the_route() -> None:
    spec = route(rules=RULES).spec
    assert task_label(spec, "extract-invoice") == "extract-invoice"
    assert task_label(spec, "anything-a-caller-invents") == "other"
    assert task_label(spec, None) == ""


# ------------------------------------------------------------------------------------------------ features


def test_features_of_a_chat_request() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "x" * 400},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}, {"type": "image_url"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "stream": True,
        "max_tokens": 64,
    }
    f = request_features(body, "t")
    assert f.tools_present and f.stream and f.wants_json and f.max_tokens == 64 and f.task == "t"
    tools_chars = len(json.dumps(body["tools"], separators=(",", ":")))
    assert f.prompt_tokens == -(-(440 + tools_chars) // 4) + 8
    assert not request_features({"messages": [], "tools": []}, "").tools_present
    assert request_features({"prompt": "z" * 8}, None).prompt_tokens == 2
    assert request_features({"prompt": ["ab", "cd"]}, None).prompt_tokens == 1


@given(st.lists(st.text(max_size=200), max_size=10))
def test_a_longer_prompt_never_estimates_fewer_tokens(texts: list[str]) -> None:
    msgs = [{"role": "user", "content": t} for t in texts]
    shorter = estimate_prompt_tokens({"messages": msgs})
    longer = estimate_prompt_tokens({"messages": [*msgs, {"role": "user", "content": "more"}]})
    assert longer > shorter


# ------------------------------------------------------------------------------------------------ fallback


def test_status_codes_as_failures() -> None:
    assert failure_of_status(429) is FailureReason.OVERLOAD
    assert failure_of_status(503) is FailureReason.OVERLOAD
    assert failure_of_status(500) is FailureReason.ERROR
    assert failure_of_status(502) is FailureReason.ERROR
    for ok in (200, 400, 401, 404, 422):
        assert failure_of_status(ok) is None


@given(
    failed=st.sampled_from(["slm", "canary", "llm"]),
    reason=st.sampled_from(list(FailureReason)),
    on=st.one_of(
        st.none(),
        st.lists(st.sampled_from(["Error", "Timeout", "Overload", "InvalidJSON"]), min_size=1, unique=True),
    ),
)
def test_fallback_goes_elsewhere_and_only_on_the_listed_triggers(
    failed: str, reason: FailureReason, on: list[str] | None
) -> None:
    fb: dict[str, Any] = {"backend": "llm"} if on is None else {"backend": "llm", "when": on}
    spec = route(fallback=fb).spec
    got = fallback_backend(spec, failed, reason)
    triggers = on or ["Error", "Timeout", "Overload", "InvalidJSON"]
    wanted = {
        "error": "Error",
        "timeout": "Timeout",
        "overload": "Overload",
        "invalid_json": "InvalidJSON",
        "scaled_to_zero": "Timeout",  # no replica within timeouts.activation: a wait that ran out
    }[reason]
    assert got == ("llm" if failed != "llm" and wanted in triggers else None)
    assert fallback_backend(route().spec, failed, reason) is None  # no fallback configured


# ------------------------------------------------------------------------------------------------ JSON checks


def answer(
    content: str | None = None, tool_calls: list[dict[str, Any]] | None = None, finish: str = "stop"
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


INVOICE_SCHEMA = {
    "type": "object",
    "required": ["total", "currency"],
    "properties": {
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD"]},
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
    },
    "additionalProperties": False,
    "$defs": {"line": {"type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}},
}


def test_json_object_answers_must_be_objects() -> None:
    req = {"response_format": {"type": "json_object"}}
    assert json_problem(req, answer('{"a": 1}')) is None
    assert json_problem(req, answer("Sure! here it is: {")) == "choices[0]: the content is not JSON"
    assert json_problem(req, answer("[1, 2]")) == "choices[0]: the content is not a JSON object"
    assert json_problem(req, answer(None)) == "choices[0]: no content, but json_object was asked for"
    assert (
        json_problem(req, answer('{"a": 1}', finish="length")) == "choices[0]: cut short by the length limit"
    )
    assert json_problem(req, {"choices": []}) == "the answer has no choices"
    # no JSON asked for and no tools offered: nothing is checked
    assert json_problem({}, answer("plain text")) is None
    assert json_problem({"response_format": {"type": "text"}}, answer("plain")) is None


def test_json_schema_answers_must_satisfy_the_schema() -> None:
    req = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "invoice", "schema": INVOICE_SCHEMA},
        }
    }
    ok = {"total": 12.5, "currency": "EUR", "lines": [{"sku": "a"}]}
    assert json_problem(req, answer(json.dumps(ok))) is None
    cases = {
        json.dumps({"total": 1}): "the required key 'currency' is missing",
        json.dumps({**ok, "total": "12"}): "$.total: expected number, got str",
        json.dumps({**ok, "currency": "GBP"}): "$.currency: 'GBP' is not one of",
        json.dumps({**ok, "total": -1}): "$.total: -1 is outside minimum 0",
        json.dumps({**ok, "note": "x"}): "the key 'note' is not allowed",
        json.dumps({**ok, "lines": [{}]}): "$.lines[0]: the required key 'sku' is missing",
    }
    for content, problem in cases.items():
        got = json_problem(req, answer(content))
        assert got is not None and problem in got, (content, got)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string"}},
            },
        },
    }
]


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tool_calls_must_name_an_offered_tool_with_valid_arguments() -> None:
    req = {"tools": TOOLS}
    assert json_problem(req, answer(None, [call("get_weather", '{"city": "Oslo"}')])) is None
    assert "did not offer" in (json_problem(req, answer(None, [call("get_time", "{}")])) or "")
    assert "are not JSON" in (json_problem(req, answer(None, [call("get_weather", "{city: Oslo")])) or "")
    assert "not a JSON object" in (json_problem(req, answer(None, [call("get_weather", '"Oslo"')])) or "")
    assert "required key 'city'" in (json_problem(req, answer(None, [call("get_weather", "{}")])) or "")
    # a plain answer to a request that offered tools is fine (the model chose not to call one)
    assert json_problem(req, answer("It is sunny.")) is None


def schema_of(value: Any) -> dict[str, Any]:
    """The strictest schema of the supported keywords that ``value`` satisfies."""
    if isinstance(value, bool):
        return {"type": "boolean", "const": value}
    if isinstance(value, int):
        return {"type": "integer", "minimum": value, "maximum": value}
    if isinstance(value, float):
        return {"type": "number", "enum": [value]}
    if isinstance(value, str):
        return {"type": "string", "minLength": len(value), "maxLength": len(value)}
    if value is None:
        return {"type": "null"}
    if isinstance(value, list):
        return {
            "type": "array",
            "minItems": len(value),
            "maxItems": len(value),
            "items": {"anyOf": [schema_of(v) for v in value] or [{}]},
        }
    return {
        "type": "object",
        "required": sorted(value),
        "properties": {k: schema_of(v) for k, v in value.items()},
        "additionalProperties": False,
    }


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(json_values)
def test_a_value_satisfies_the_schema_built_from_it(value: Any) -> None:
    assert schema_error(value, schema_of(value)) is None
    assert schema_error(value, {}) is None  # an empty schema takes anything


@settings(max_examples=200)
@given(st.dictionaries(st.text(min_size=1, max_size=5), json_values, min_size=1, max_size=4))
def test_an_object_missing_a_required_key_is_rejected(value: dict[str, Any]) -> None:
    schema = schema_of(value)
    key = sorted(value)[0]
    smaller = {k: v for k, v in value.items() if k != key}
    assert f"the required key '{key}' is missing" in (schema_error(smaller, schema) or "")


# ------------------------------------------------------------------------------------------------ balancing


@given(
    loads=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    cap=st.one_of(st.none(), st.integers(1, 20)),
    start=st.integers(0, 7),
    exclude=st.sets(st.integers(0, 7), max_size=3),
)
def test_the_least_loaded_eligible_endpoint_is_picked(
    loads: list[int], cap: int | None, start: int, exclude: set[int]
) -> None:
    got = pick_endpoint(loads, cap, start, frozenset(exclude))
    eligible = [i for i, n in enumerate(loads) if i not in exclude and (cap is None or n < cap)]
    if not eligible:
        assert got is None
        return
    assert got in eligible
    assert loads[got] == min(loads[i] for i in eligible)


def test_equal_loads_take_turns() -> None:
    picks = [pick_endpoint([0, 0, 0], None, start) for start in range(6)]
    assert picks == [0, 1, 2, 0, 1, 2]


# ------------------------------------------------------------------------------------------------ limits

LIMITS = route(limits={"requestsPerMinute": 60, "tokensPerMinute": 6000}).spec.limits


@settings(max_examples=200)
@given(st.lists(st.floats(0, 5), min_size=1, max_size=200))
def test_requests_admitted_never_exceed_the_burst_plus_the_rate(gaps: list[float]) -> None:
    limits = route(limits={"requestsPerMinute": 30}).spec.limits
    state, now, admitted = CallerState(), 0.0, 0
    for gap in gaps:
        now += gap
        a = admit(state, limits, now, 0)
        state = a.state
        if a.admitted:
            admitted += 1
        else:
            assert a.limit == "requests" and a.retry_after > 0
            # waiting as long as Retry-After says is enough
            assert admit(state, limits, now + a.retry_after + 1e-9, 0).admitted
    assert admitted <= 30 + now * 30 / 60 + 1e-9


def test_tokens_are_charged_by_estimate_then_corrected_by_usage() -> None:
    a = admit(CallerState(), LIMITS, 0.0, 5000)
    assert a.admitted and a.state.tokens is not None and a.state.tokens.level == 1000
    # the call used 7000 tokens in all: the bucket is in debt, the next call waits until it is repaid
    state = settle(a.state, LIMITS, 0.0, charged=5000, used=7000)
    b = admit(state, LIMITS, 0.0, 10)
    assert not b.admitted and b.limit == "tokens"
    assert b.retry_after == pytest.approx((1000 + 1) * 60 / 6000)
    assert b.retry_after_header == "11"
    assert admit(b.state, LIMITS, b.retry_after, 10).admitted


def test_no_limits_admit_everything() -> None:
    assert admit(CallerState(), None, 0.0, 10**9).admitted


# ------------------------------------------------------------------------------------------------ table


def secret(ns: str, name: str, **entries: str) -> tuple[tuple[str, str], dict[str, str]]:
    return (ns, name), entries


def deployment(ns: str, name: str, concurrency: int = 8) -> SLMDeployment:
    return SLMDeployment.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "poolRef": {"name": "p"},
                "model": {"name": "qwen2.5-3b-instruct", "maxConcurrentSequences": concurrency},
            },
        }
    )


def world(routes: list[SLMRoute], **kw: Any) -> RouteWorld:
    return RouteWorld(routes=routes, **kw)


def test_backends_resolve_only_in_the_routes_namespace() -> None:
    r = route(apiKeySecretRefs=[{"name": "callers"}])
    other_ns = deployment("support", "invoice-extractor")
    w = world(
        [r],
        deployments={
            ("support", "invoice-extractor"): other_ns,
            ("agents", "invoice-extractor-v2"): deployment("agents", "invoice-extractor-v2", 4),
        },
        endpoints={("support", "invoice-extractor"): [Endpoint("http://10.0.0.1:8000/v1")]},
    )
    t = build_table(w).routes["agents/invoices"]
    slm = t.backends["slm"]
    assert slm.problem_reason == "BackendNotFound" and slm.endpoints == ()
    assert "agents/invoice-extractor" in slm.problem
    canary = t.backends["canary"]
    assert (
        canary.problem_reason is None
        and canary.max_concurrency == 4
        and canary.model == "invoice-extractor-v2"
    )
    assert t.backends["llm"].endpoints == (Endpoint("https://llm.example.com/v1"),)


def test_external_keys_come_from_the_routes_namespace() -> None:
    r = route(
        backends=[
            {
                "name": "llm",
                "external": {
                    "url": "https://llm.example.com/v1/",
                    "model": "gpt",
                    "apiKeySecretRef": {"name": "openai", "key": "key"},
                },
            }
        ]
    )
    missing = build_table(world([r], secrets=dict([secret("support", "openai", key="sk-1")]))).routes[
        "agents/invoices"
    ]
    assert missing.backends["llm"].problem_reason == "SecretNotFound"
    wrong_key = build_table(world([r], secrets=dict([secret("agents", "openai", token="sk-1")]))).routes[
        "agents/invoices"
    ]
    assert "has no key 'key'" in wrong_key.backends["llm"].problem
    ok = build_table(world([r], secrets=dict([secret("agents", "openai", key="sk-1\n")]))).routes[
        "agents/invoices"
    ]
    assert (
        ok.backends["llm"].api_key == "sk-1"
        and ok.backends["llm"].endpoints[0].url == "https://llm.example.com/v1"
    )


def test_api_keys_grant_the_routes_of_their_namespace_that_name_their_secret() -> None:
    h = "sha256:" + hash_api_key("key-a")
    routes = [
        route("invoices", "agents", apiKeySecretRefs=[{"name": "callers"}]),
        route("chat", "agents", model="chat", apiKeySecretRefs=[{"name": "others"}]),
        route("support", "support", model="gpt-4o-mini", apiKeySecretRefs=[{"name": "callers"}]),
    ]
    secrets = dict(
        [
            secret("agents", "callers", team_a=h, broken="sha256:nothex", plain="key-a"),
            secret("support", "other", x=h),
        ]
    )
    table = build_table(world(routes, secrets=secrets))
    (grant,) = table.grants("key-a")
    assert grant.identity == "apikey:agents/callers/team_a"
    assert table.grants("key-b") == ()
    allowed = {k for k, r in table.routes.items() if key_allows(grant, r)}
    assert allowed == {"agents/invoices"}  # not chat (another Secret), not support (another namespace)
    res = resolve(table, "gpt-4o-mini", lambda r: key_allows(grant, r))
    assert res.route is not None and res.route.key == "agents/invoices"
    assert resolve(table, "chat", lambda r: key_allows(grant, r)).status == 403
    assert resolve(table, "nope", lambda r: True).status == 404
    # a caller allowed in both namespaces gets the route of its own namespace
    both = resolve(table, "gpt-4o-mini", lambda r: True, prefer_namespace="support")
    assert both.route is not None and both.route.key == "support/support"


def test_secret_data_decodes_data_and_string_data() -> None:
    s = {"data": {"a": base64.b64encode(b"x").decode(), "bad": "%%%"}, "stringData": {"b": "y"}}
    assert secret_data(s) == {"a": "x", "b": "y"}


def test_the_older_route_keeps_a_model_and_the_newer_is_not_served() -> None:
    old = route("a-old")
    old.metadata.creation_timestamp = "2026-01-01T00:00:00Z"
    new = route("b-new")
    new.metadata.creation_timestamp = "2026-02-01T00:00:00Z"
    table = build_table(world([new, old]))
    assert [r.key for r in table.by_model["gpt-4o-mini"]] == ["agents/a-old"]
    assert table.routes["agents/b-new"].conflict_with == "agents/a-old"
    st_ = route_status(table.routes["agents/b-new"], None, NOW)
    conds = {c.type: c for c in st_.conditions or []}
    assert conds["Accepted"].reason == "ModelConflict" and "agents/a-old" in conds["Accepted"].message
    assert conds["Ready"].status == "False" and conds["Ready"].reason == "NotAccepted"


def test_status_reports_backend_readiness() -> None:
    r = route()
    r.metadata.generation = 3
    eps = {
        ("agents", "invoice-extractor"): [Endpoint("http://a/v1"), Endpoint("http://b/v1", ready=False)],
        ("agents", "invoice-extractor-v2"): [Endpoint("http://c/v1", ready=False)],
    }
    compiled = build_table(world([r], endpoints=eps)).routes["agents/invoices"]
    st_ = route_status(compiled, None, NOW)
    assert st_.ready_backends == "2/3" and st_.observed_generation == 3
    by = {b.name: b for b in st_.backends or []}
    assert (by["slm"].endpoints, by["slm"].ready_endpoints) == (2, 1)
    assert by["canary"].message == "no ready endpoint"
    conds = {c.type: c for c in st_.conditions or []}
    assert conds["Accepted"].status == "True" and conds["Accepted"].observed_generation == 3
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "BackendsNotReady")
    assert "canary" in conds["Ready"].message
    eps[("agents", "invoice-extractor-v2")] = [Endpoint("http://c/v1")]
    later = route_status(
        build_table(world([r], endpoints=eps)).routes["agents/invoices"], st_, "2026-01-02T00:00:00Z"
    )
    ready = {c.type: c for c in later.conditions or []}["Ready"]
    assert ready.status == "True" and ready.last_transition_time == "2026-01-02T00:00:00Z"
    accepted = {c.type: c for c in later.conditions or []}["Accepted"]
    assert accepted.last_transition_time == NOW  # unchanged status keeps its time


# ------------------------------------------------------------------------------------------------ SSE


def test_sse_events_and_usage() -> None:
    stream = (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b": a comment\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert len(sse_events(stream)) == 2
    assert stream_usage(stream) == {"prompt_tokens": 3, "completion_tokens": 1}
    assert stream_usage(b"data: [DONE]\n\n") is None
    assert count_data_events(stream)[0] == 3


_EVENT = st.one_of(
    st.builds(
        lambda t: {"choices": [{"delta": {"content": t}}]}, st.sampled_from(["a", "usage", '"usage": {}'])
    ),
    st.builds(
        lambda p, c: {"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}},
        st.integers(0, 9),
        st.integers(0, 9),
    ),
    st.just({"choices": [], "usage": None}),
    st.just("[DONE]"),
    st.just('not json with "usage"'),
)


@given(st.lists(_EVENT, max_size=8), st.integers(0, 200))
def test_stream_usage_is_the_usage_of_the_last_event_that_carries_one(events: list[Any], cut: int) -> None:
    stream = b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events
    )
    tail = stream[cut:]  # the gateway keeps only the stream's tail: it may start inside an event
    carried = [e["usage"] for e in sse_events(tail) if isinstance(e.get("usage"), dict)]
    assert stream_usage(tail) == (carried[-1] if carried else None)


def test_spec_rejects_what_the_crd_rejects() -> None:
    with pytest.raises(ValueError, match="defaultBackend"):
        SLMRouteSpec.model_validate(
            {
                "model": "m",
                "backends": [{"name": "a", "slmDeploymentRef": {"name": "a"}}],
                "defaultBackend": "b",
            }
        )


@given(
    st.fixed_dictionaries(
        {
            "id": st.text(max_size=5),
            "choices": st.lists(
                st.dictionaries(st.text(max_size=4), st.text(max_size=20), max_size=3), max_size=2
            ),
        },
        optional={
            "usage": st.fixed_dictionaries(
                {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
            )
        },
    )
)
def test_usage_is_found_without_parsing_the_whole_answer(answer: dict[str, Any]) -> None:
    body = json.dumps(answer).encode()
    assert body_usage(body) == answer.get("usage")


def test_usage_after_an_answer_that_says_usage_is_still_found() -> None:
    """Found by the property above: a provider that puts `usage` before `choices`, and an answer whose text
    is "usage", once hid the token counts."""
    answer = {"id": "", "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "choices": [{"": "usage"}]}
    assert body_usage(json.dumps(answer).encode()) == answer["usage"]
    assert body_usage(b'{"choices": [{"text": "usage"}], "x": {"a": 1}}') is None
