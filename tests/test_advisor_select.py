"""S4 (advisor/select.py), the manifests it proposes (advisor/proposals.py) and the report (advisor/report.py),
on the example pools and nodes: what a user reviewing `advise` output would check."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.advisor.profile import Percentiles, TaskProfile, TokenPrice, percentiles, profile_task
from slm_operator.advisor.proposals import (
    DATASET_BYTES,
    configmap_dataset,
    dataset_lines,
    deployment_manifest,
    finetune_manifest,
    route_with_shadow,
    store_dataset,
)
from slm_operator.advisor.records import CallRecord, Unparsable, parse_lines
from slm_operator.advisor.report import Advice, render_html, render_markdown
from slm_operator.advisor.select import (
    PoolContext,
    SelectionSettings,
    context_tokens,
    deployment_name,
    eligible_models,
    select,
)
from slm_operator.api.v1alpha1 import SLMDeployment
from slm_operator.catalog import serving_flags, slm_by_name
from slm_operator.contract import ADVISOR_TASK_ANNOTATION
from slm_operator.inventory import demand_for, pool_inputs, size_deployment
from slm_operator.manifests import load_manifests, parse_object
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"


def _pctl(p50: float, p99: float) -> Percentiles:
    return Percentiles(p50=p50, p95=p99, p99=p99, max=p99)


def profile(
    task: str = "t-invoice",
    *,
    calls: int = 2000,
    share: float = 0.2,
    prompt_p99: float = 900,
    completion_p99: float = 120,
    tools: float = 0.0,
    peak: float = 2.0,
    latency_p95: float = 1500,
    llm_month: float | None = 3000.0,
) -> TaskProfile:
    return TaskProfile(
        id=task,
        label=task,
        calls=calls,
        call_share=share,
        tokens=calls * 1000,
        token_share=share,
        prompt_tokens=_pctl(prompt_p99 / 2, prompt_p99),
        completion_tokens=_pctl(completion_p99 / 2, completion_p99),
        tools_share=tools,
        tool_call_share=tools,
        json_share=1.0,
        tools=["get_weather"] if tools else [],
        llm_latency_ms=_pctl(latency_p95 / 2, latency_p95),
        peak_calls_per_second=peak,
        mean_calls_per_second=peak / 3,
        llm_cost=llm_month,
        llm_cost_per_month=llm_month,
    )


def context(pool: str = "h100") -> PoolContext:
    m = load_manifests([EXAMPLES / "10-pools.yaml", EXAMPLES / "nodes"])
    gpu_pool = next(p for p in m.pools if p.metadata.name == pool)
    inputs = pool_inputs(gpu_pool, m.nodes, [])
    return PoolContext(gpu_pool, inputs.policy, tuple(inputs.nodes), ())


def test_a_big_narrow_task_moves_to_the_smallest_model_that_places_and_says_what_it_saves() -> None:
    [rec] = select([profile()], set(), context(), SelectionSettings(namespace="agents"))
    assert rec.decision == "Move" and rec.chosen is not None and rec.chosen.placed
    model = slm_by_name(rec.chosen.model)
    assert model is not None and model.license in {"apache-2.0", "mit"}
    # short JSON answers: the 0.5B floor; the cheapest placed candidate wins
    placed = [c for c in rec.candidates if c.placed]
    assert rec.chosen.cost_per_month == min(c.cost_per_month for c in placed)
    assert rec.chosen.model == "qwen2.5-0.5b-instruct"
    assert 0 < rec.chosen.gpu_fraction < 1  # a share of one GPU, not a whole one
    assert rec.saving_per_month == pytest.approx(3000.0 - rec.chosen.cost_per_month)
    assert rec.context_tokens is not None and rec.context_tokens >= 1.25 * (900 + 120)


def test_open_ended_and_small_tasks_stay_on_the_llm_with_the_reason() -> None:
    recs = select(
        [profile("t-chat", share=0.3), profile("t-rare", calls=50, share=0.01)],
        {"t-chat"},
        context(),
        SelectionSettings(),
    )
    by_task = {r.task: r for r in recs}
    assert by_task["t-chat"].decision == "StayOnLLM" and "open-ended" in by_task["t-chat"].reason
    assert by_task["t-rare"].decision == "StayOnLLM" and "too few calls" in by_task["t-rare"].reason
    assert all(r.chosen is None for r in recs)


def test_a_tool_task_gets_a_model_whose_family_parses_tool_calls_and_a_1b_floor() -> None:
    [rec] = select([profile(tools=1.0)], set(), context(), SelectionSettings())
    assert rec.chosen is not None
    model = slm_by_name(rec.chosen.model)
    assert model is not None and model.architecture.parameters >= 1_000_000_000
    flags = serving_flags(model.family)
    assert flags is not None and flags.tool_call_parser
    for c in rec.candidates:  # every candidate could serve the task's tool calls
        m = slm_by_name(c.model)
        assert m is not None and (serving_flags(m.family) or flags).tool_call_parser


def test_licence_filter_and_context_bound_the_candidates() -> None:
    long_task = profile(prompt_p99=20000, completion_p99=2000)
    models, _ = eligible_models(long_task, SelectionSettings())
    assert models and all(m.architecture.max_context_tokens >= context_tokens(long_task) for m in models)
    assert all(m.license in {"apache-2.0", "mit"} for m in models)
    assert all(m.architecture.parameters >= 3_000_000_000 for m in models)  # answers over 512 tokens
    anything, _ = eligible_models(profile(), SelectionSettings(licenses=None))
    assert {"llama3.2", "apache-2.0"} <= {m.license for m in anything}
    none, _ = eligible_models(profile(), SelectionSettings(licenses=frozenset({"no-such-licence"})))
    assert none == []
    [rec] = select([profile()], set(), context(), SelectionSettings(licenses=frozenset({"no-such-licence"})))
    assert rec.decision == "StayOnLLM" and "no catalog model fits" in rec.reason


def test_a_pool_too_small_keeps_the_task_on_the_llm_and_names_the_planners_reason() -> None:
    # 200 calls/s at 1.5 s on 8 sequences: 38 replicas of a 7B-class model cannot fit the 4 L4s
    heavy = profile(prompt_p99=12000, completion_p99=900, peak=200.0)
    [rec] = select([heavy], set(), context("l4"), SelectionSettings())
    assert rec.decision == "StayOnLLM" and rec.reason.startswith("no candidate fits the pool")
    assert rec.candidates and not any(c.placed for c in rec.candidates)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6))
def test_moved_tasks_never_hold_more_gpus_than_the_pool_has(peaks: list[int]) -> None:
    ctx = context("l4")
    profiles = [profile(f"t-{i}", peak=float(p), share=0.1) for i, p in enumerate(peaks)]
    recs = select(profiles, set(), ctx, SelectionSettings())
    held = sum(r.chosen.gpu_fraction for r in recs if r.chosen)
    gpus = sum(len(n.gpus) for n in ctx.nodes)
    assert held <= gpus + 1e-9
    # and the moves, planned together, all place: none was accepted at the cost of an earlier one
    moved = [r for r in recs if r.chosen]
    assert sum(r.chosen.replicas for r in moved if r.chosen) <= 8 * 4  # 8 L4s, 4 MPS clients each


def _record(i: int, *, when: datetime, size: int = 200) -> CallRecord:
    return CallRecord(
        id=f"r{i}",
        time=when,
        route="agents/agent-llm",
        request={"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * size}]},
        response={
            "choices": [{"message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 2},
        },
    )


def test_profile_projects_the_llm_cost_per_month_from_the_window() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    members = [_record(i, when=start + timedelta(hours=i)) for i in range(25)]  # 24 h window
    p = profile_task(
        "t-x",
        "x",
        members,
        totals=(50, 2000),
        span=(start, start + timedelta(hours=24)),
        price=TokenPrice(input_per_million=2.0, output_per_million=8.0),
    )
    assert p.calls == 25 and p.call_share == 0.5
    assert p.prompt_tokens.p99 == 50 and p.completion_tokens.p99 == 2  # from usage, not estimated
    per_day = (25 * 50 * 2.0 + 25 * 2 * 8.0) / 1e6
    assert p.llm_cost == pytest.approx(per_day)
    assert p.llm_cost_per_month == pytest.approx(per_day * 30)
    assert percentiles([1, 2, 3, 4]).p50 == 2 and percentiles([]).max == 0


def test_bad_lines_are_counted_not_fatal() -> None:
    lines = [
        '{"id": "a", "request": {"messages": []}, "response": null}',
        "not json",
        "[1]",
        '{"id": ""}',
        "",
    ]
    parsed = list(parse_lines(lines))
    assert isinstance(parsed[0], CallRecord)
    assert [p.line for p in parsed if isinstance(p, Unparsable)] == [2, 3, 4]


def _moved() -> Any:
    [rec] = select([profile()], set(), context(), SelectionSettings(namespace="agents"))
    return rec


def test_the_manifests_validate_as_the_operators_own_models_and_name_the_task() -> None:
    rec = _moved()
    pool = context().pool
    dep = deployment_manifest(rec, "h100", "agents", 8)
    data, kept = dataset_lines([_record(i, when=datetime(2026, 11, 1, tzinfo=UTC)) for i in range(5)])
    configmap, dataset = configmap_dataset(rec, "agents", data)
    job = finetune_manifest(rec, pool, "agents", dataset, "slm-adapters")
    assert job is not None
    docs = [dep, configmap, job]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["SLMDeployment", "ConfigMap", "FineTuneJob"] and kept == 5
    for d in docs:
        assert d["metadata"]["annotations"][ADVISOR_TASK_ANNOTATION] == rec.task
        if d["kind"] != "ConfigMap":
            parse_object(d)  # the same validation as the CRDs' schema and CEL rules
    ftj = docs[2]["spec"]
    assert (
        ftj["segment"] == "finetune" and ftj["promote"]["slmDeploymentRef"]["name"] == dep["metadata"]["name"]
    )
    assert ftj["baseModel"] == rec.chosen.model
    # from the usage store instead: the route's calls of this task, the URL from the Secret
    stored = finetune_manifest(
        rec, pool, "agents", store_dataset(rec, ("usage-store", "url"), "agent-llm"), "a"
    )
    assert stored is not None
    parse_object(stored)
    assert stored["spec"]["dataset"]["usageStore"] == {
        "urlSecretRef": {"name": "usage-store", "key": "url"},
        "route": "agent-llm",
        "task": rec.task,
    }


def test_the_dataset_keeps_the_newest_calls_under_the_configmap_limit() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    records = [_record(i, when=start + timedelta(minutes=i), size=5000) for i in range(400)]
    data, kept = dataset_lines(records)
    assert len(data.encode()) <= DATASET_BYTES and 0 < kept < 400
    first = data.splitlines()[0]
    assert "x" * 10 in first and kept == len(data.splitlines())
    # newest first: the kept ones are the last `kept` records
    assert yaml.safe_load(first)["request"] == records[-1].request


def test_the_route_gets_a_shadow_rule_ahead_of_its_rules_and_stays_valid() -> None:
    m = load_manifests([EXAMPLES / "40-slmroutes.yaml"])
    [route] = m.routes
    rec = _moved()
    doc = route_with_shadow(route, [rec])
    parsed = parse_object(doc)
    rules = doc["spec"]["rules"]
    assert rules[0]["match"] == {"tasks": [rec.task]}
    assert rules[0]["backend"] == route.spec.default_backend
    assert rules[0]["shadow"]["backends"] == [rec.deployment_name]
    assert rules[0]["promote"] == {"backend": rec.deployment_name}  # S6: serves once it agrees enough
    assert [r["name"] for r in rules[1:]] == [r.name for r in route.spec.rules or []]
    assert parsed.metadata.name == route.metadata.name
    assert (
        doc["spec"]["taskClassifier"]["configMapRef"]["name"] == "slm-task-classifier"
    )  # the gateway tags by it
    # a route without a default backend keeps the task on its fallback (the LLM)
    bare = route.model_copy(update={"spec": route.spec.model_copy(update={"default_backend": None})})
    assert route_with_shadow(bare, [rec])["spec"]["rules"][0]["backend"] == route.spec.fallback.backend  # type: ignore[union-attr]
    # a second run does not add the rule twice
    again = route_with_shadow(parse_object(doc), [rec])  # type: ignore[arg-type]
    assert len(again["spec"]["rules"]) == len(rules)


def test_the_report_names_every_task_and_the_html_loads_nothing() -> None:
    recs = select([profile(), profile("t-chat", share=0.3)], {"t-chat"}, context(), SelectionSettings())
    advice = Advice(
        generated=datetime(2026, 12, 4, tzinfo=UTC),
        source="calls.jsonl",
        calls=10000,
        skipped=2,
        window=None,
        noise=300,
        tasks=[profile(), profile("t-chat", share=0.3)],
        recommendations=recs,
        pool="h100",
        assumptions=["an assumption <b>"],
        examples={"t-invoice": ["Invoice from <PERSON_1>"]},
    )
    md = render_markdown(advice)
    assert "`t-invoice`" in md and "`t-chat`" in md and "StayOnLLM" in md and "Move" in md
    assert "2 lines skipped" in md and "saving" in md
    page = render_html(advice)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert "an assumption &lt;b&gt;" in page  # escaped


def test_a_task_whose_slm_would_cost_more_than_the_llm_stays_there_and_says_by_how_much() -> None:
    [rec] = select([profile(llm_month=12.0)], set(), context(), SelectionSettings())
    assert rec.decision == "StayOnLLM" and rec.reason.startswith("not worth it at this volume")
    assert "12.00" in rec.reason and rec.chosen is None and rec.candidates
    [unpriced] = select([profile(llm_month=None)], set(), context(), SelectionSettings())
    assert unpriced.decision == "Move" and unpriced.saving_per_month is None


def test_deployment_names_are_readable_dns_labels_stable_per_task() -> None:
    assert deployment_name("t-52d307e4f1", "intent confidence order_id") == "intent-confidence-52d307"
    assert deployment_name("t-52d307e4f1", "intent confidence order_id") == deployment_name(
        "t-52d307e4f1", "intent confidence order_id"
    )
    long = deployment_name("t-" + "a" * 40, "x" * 80 + " y")
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()


def test_a_rerun_plans_a_tasks_deployment_in_place_of_the_one_it_wrote_before() -> None:
    """With --cluster the pool already holds the task's SLMDeployment from the last run: the candidate replaces
    it (it is not a neighbour to fit beside, nor a duplicate)."""
    first = _moved()
    assert first.chosen is not None and first.deployment_name is not None
    ctx = context()
    dep = SLMDeployment.model_validate(deployment_manifest(first, "h100", "agents", 8))
    earlier = demand_for(dep, size_deployment(dep))
    again = select(
        [profile()], set(), replace(ctx, existing=(earlier,)), SelectionSettings(namespace="agents")
    )
    assert again[0].decision == "Move" and again[0].chosen == first.chosen
    # and with two tasks, the second is planned beside the first's new deployment, not its old one as well
    two = [profile(), profile("t-other", prompt_p99=800)]
    fresh = select(two, set(), ctx, SelectionSettings(namespace="agents"))
    rerun = select(two, set(), replace(ctx, existing=(earlier,)), SelectionSettings(namespace="agents"))
    assert [r.chosen for r in rerun] == [r.chosen for r in fresh]
