"""The promotion of a rule's shadow backend to serving and back (routing/promotion.py): the pure decision, the
back-off after a demotion, the wait for a FineTuneJob, the restart on a model change, the status it writes, and
how a promoted rule routes (routing/rules.py, routing/fallback.py)."""

from __future__ import annotations

import ast
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from slm_operator.api.v1alpha1 import (
    FINAL_PROMOTED_REASONS,
    PENDING_PROMOTED_REASONS,
    FineTuneJob,
    RouteRuleStatus,
    RulePhase,
    RulePromotion,
    SLMDeployment,
    SLMRoute,
    SLMRouteSpec,
    SLMRouteStatus,
)
from slm_operator.contract import ADAPTER_ANNOTATION
from slm_operator.finetune import promotion as finetune_promotion
from slm_operator.routing.fallback import FailureReason, checks_json, fallback_for
from slm_operator.routing.features import RequestFeatures
from slm_operator.routing.promotion import (
    DEMOTED,
    MAX_BACKOFF_SECONDS,
    MODEL_CHANGED,
    PROMOTED,
    ZERO,
    RuleCounts,
    RuleFacts,
    backoff_seconds,
    decide,
    evaluate,
    finetune_pending,
    format_time,
    min_served,
    model_key,
    pending_finetunes,
    rule_phases,
)
from slm_operator.routing.rules import select
from slm_operator.routing.table import RouteWorld, build_table

NOW = "2026-12-01T10:00:00Z"


def spec(**promote: Any) -> SLMRouteSpec:
    return SLMRouteSpec.model_validate(
        {
            "model": "gpt-4o-mini",
            "backends": [
                {"name": "slm", "slmDeploymentRef": {"name": "invoice-extractor"}},
                {"name": "llm", "external": {"url": "https://llm.example.com/v1", "model": "gpt-4o-mini"}},
            ],
            "rules": [
                {
                    "name": "invoices",
                    "match": {"tasks": ["extract-invoice"]},
                    "backend": "llm",
                    "shadow": {"backends": ["slm"], "percent": 20},
                    "promote": {"backend": "slm", **promote},
                }
            ],
            "fallback": {"backend": "llm", "when": ["Error", "Timeout"]},
        }
    )


def promotion(**kw: Any) -> RulePromotion:
    p = spec(**kw).rules[0].promote  # type: ignore[index]
    assert p is not None
    return p


def status(
    phase: RulePhase, backend: str, since: str = "2026-11-30T00:00:00Z", **more: Any
) -> SLMRouteStatus:
    return SLMRouteStatus(
        rules=[
            RouteRuleStatus(name="invoices", phase=phase, backend=backend, last_transition_time=since, **more)
        ]
    )


INVOICE = RequestFeatures(
    task="extract-invoice",
    tools_present=False,
    prompt_tokens=10,
    stream=False,
    wants_json=False,
    max_tokens=None,
)


# ------------------------------------------------------------------------------------------------ the decision


def test_defaults_and_the_figures_of_a_promotion() -> None:
    p = promotion()
    assert (p.min_agreement_percent, p.min_samples, p.max_fallback_percent) == (90, 200, 5)
    assert min_served(p) == 50 and min_served(promotion(minSamples=5)) == 5
    step = decide(p, "llm", RulePhase.SHADOW, RuleCounts(compared=200, agreed=180))
    assert step.transition and step.phase is RulePhase.SERVING and step.counts == ZERO
    assert "180 of 200" in step.message and "90 %" in step.message
    step = decide(p, "llm", RulePhase.SHADOW, RuleCounts(compared=200, agreed=179))
    assert not step.transition and step.phase is RulePhase.SHADOW  # 89.5 %: not rounded up into a promotion
    step = decide(p, "llm", RulePhase.SERVING, RuleCounts(served=50, fell_back=3))
    assert step.transition and step.phase is RulePhase.SHADOW and "3 of 50 calls fell back" in step.message
    assert not decide(p, "llm", RulePhase.SERVING, RuleCounts(served=49, fell_back=40)).transition


phases = st.sampled_from(list(RulePhase))
promotions = st.builds(
    lambda a, n, f: promotion(minAgreementPercent=a, minSamples=n, maxFallbackPercent=f),
    st.integers(1, 100),
    st.integers(1, 400),
    st.integers(0, 100),
)


@st.composite
def counts(draw: st.DrawFn) -> RuleCounts:
    compared = draw(st.integers(0, 1000))
    served = draw(st.integers(0, 1000))
    return RuleCounts(compared, draw(st.integers(0, compared)), served, draw(st.integers(0, served)))


@given(promotions, counts())
def test_never_promotes_below_min_samples_or_below_the_agreement(p: RulePromotion, c: RuleCounts) -> None:
    step = decide(p, "llm", RulePhase.SHADOW, c)
    if step.phase is RulePhase.SERVING:
        assert c.compared >= p.min_samples
        assert c.agreed / c.compared >= p.min_agreement_percent / 100
    else:
        assert c.compared < p.min_samples or c.agreed * 100 < p.min_agreement_percent * c.compared


@given(promotions, counts())
def test_never_demotes_while_the_fallback_share_is_within_the_limit(p: RulePromotion, c: RuleCounts) -> None:
    step = decide(p, "llm", RulePhase.SERVING, c)
    if c.fell_back * 100 <= p.max_fallback_percent * c.served or c.served < min_served(p):
        assert step.phase is RulePhase.SERVING and not step.transition
    else:
        assert step.phase is RulePhase.SHADOW


@given(promotions, phases, counts())
def test_a_transition_always_resets_the_counts_and_nothing_else_does(
    p: RulePromotion, phase: RulePhase, c: RuleCounts
) -> None:
    step = decide(p, "llm", phase, c)
    assert step.transition == (step.phase is not phase)
    assert step.counts == (ZERO if step.transition else c)


# ------------------------------------------------------------------------------------------------ the status


def test_the_phase_comes_from_the_status_and_a_stale_backend_is_shadow() -> None:
    s = spec()
    assert rule_phases(s, None) == {"invoices": RulePhase.SHADOW}
    assert rule_phases(s, status(RulePhase.SERVING, "slm")) == {"invoices": RulePhase.SERVING}
    # the status names another backend than promote.backend now (the spec changed): not served untested
    assert rule_phases(s, status(RulePhase.SERVING, "canary")) == {"invoices": RulePhase.SHADOW}


def test_evaluate_writes_the_rules_status_and_announces_transitions() -> None:
    s = spec(minSamples=4, minAgreementPercent=75)
    first = evaluate(s, None, {}, NOW)
    (rule,) = first.rules
    assert (rule.phase, rule.backend, rule.samples, rule.last_transition_time) == (
        RulePhase.SHADOW,
        "llm",
        0,
        NOW,
    )
    assert first.transitions == []
    waiting = evaluate(s, status(RulePhase.SHADOW, "llm"), {"invoices": RuleCounts(3, 3)}, NOW)
    assert waiting.rules[0].samples == 3 and waiting.rules[0].agreement_percent == 100
    assert waiting.rules[0].last_transition_time == "2026-11-30T00:00:00Z"  # kept while the phase holds
    promoted = evaluate(s, status(RulePhase.SHADOW, "llm"), {"invoices": RuleCounts(4, 3)}, NOW)
    (rule,) = promoted.rules
    assert (rule.phase, rule.backend, rule.samples, rule.last_transition_time) == (
        RulePhase.SERVING,
        "slm",
        0,
        NOW,
    )
    (t,) = promoted.transitions
    assert (t.rule, t.phase, t.reason) == ("invoices", RulePhase.SERVING, PROMOTED)
    assert "3 of 4 shadow answers of slm agreed (75 %" in t.message
    demoted = evaluate(
        s, status(RulePhase.SERVING, "slm"), {"invoices": RuleCounts(served=4, fell_back=1)}, NOW
    )
    assert demoted.rules[0].phase is RulePhase.SHADOW and demoted.transitions[0].reason == DEMOTED
    assert demoted.rules[0].backend == "llm"


# ------------------------------------------------------------------------------------------------ routing


def test_a_serving_rule_routes_to_the_promoted_backend_and_shadows_its_own() -> None:
    s = spec()
    shadow = select(s, INVOICE, 0.5, 0.1)
    assert (shadow.backend, shadow.shadows, shadow.measured, shadow.promoted_from) == (
        "llm",
        ("slm",),
        "slm",
        None,
    )
    serving = select(s, INVOICE, 0.5, 0.1, {"invoices": RulePhase.SERVING})
    assert (serving.backend, serving.shadows, serving.measured) == ("slm", ("llm",), "llm")
    assert serving.promoted_from == "llm" and serving.phase is RulePhase.SERVING
    assert select(s, INVOICE, 0.5, 0.9, {"invoices": RulePhase.SERVING}).shadows == ()  # above percent


def test_a_serving_backend_falls_back_to_the_rules_backend_on_the_routes_triggers() -> None:
    s = spec()
    assert fallback_for(s, "slm", FailureReason.ERROR, "llm") == "llm"
    assert fallback_for(s, "slm", FailureReason.OVERLOAD, "llm") is None  # not in fallback.when
    assert fallback_for(s, "llm", FailureReason.ERROR, "llm") is None  # the fallback does not fall back
    assert not checks_json(s, "slm", "llm")  # InvalidJSON is not a trigger of this route


# ------------------------------------------------------------------------------------------------ back-off

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
AGREEING = RuleCounts(compared=200, agreed=200)
FALLING = RuleCounts(served=50, fell_back=50)


def at(minutes: float) -> str:
    return format_time(T0 + timedelta(minutes=minutes))


def test_backoff_is_a_duration_of_at_most_24h() -> None:
    assert promotion().backoff == "10m" and promotion(backoff="0s").backoff == "0s"
    assert promotion(backoff="24h").backoff == "24h"
    with pytest.raises(ValidationError, match=r"`promote.backoff` must be at most 24h"):
        promotion(backoff="25h")
    with pytest.raises(ValidationError, match="backoff"):
        promotion(backoff="ten minutes")


def _pass(s: SLMRouteSpec, previous: SLMRouteStatus | None, c: RuleCounts, minutes: float) -> Any:
    """One status pass at T0 + minutes; returns the rule's status and the transitions."""
    out = evaluate(s, previous, {"invoices": c}, at(minutes))
    return out.rules[0], out.transitions, SLMRouteStatus(rules=out.rules)


def test_a_flapping_backend_waits_longer_after_each_demotion_and_is_forgiven_after_a_day_of_serving() -> None:
    s = spec()  # backoff 10m
    rule, ts, st_ = _pass(s, status(RulePhase.SHADOW, "llm"), AGREEING, 0)
    assert rule.phase is RulePhase.SERVING and [t.reason for t in ts] == [PROMOTED]
    rule, ts, st_ = _pass(s, st_, FALLING, 5)  # falls back: demoted, not before 10:15
    assert (rule.phase, rule.demotions, rule.retry_after) == (RulePhase.SHADOW, 1, "2026-12-01T10:15:00Z")
    (t,) = ts
    assert t.reason == DEMOTED and "not promoted again before 2026-12-01T10:15:00Z (back-off 10m" in t.message
    rule, ts, st_ = _pass(s, st_, AGREEING, 14)  # agrees all the same: held, the message says until when
    assert rule.phase is RulePhase.SHADOW and ts == [] and rule.samples == 200
    assert "not promoted before 2026-12-01T10:15:00Z (back-off 10m after 1 demotion)" in rule.message
    rule, ts, st_ = _pass(s, st_, AGREEING, 15)
    assert rule.phase is RulePhase.SERVING and [t.reason for t in ts] == [PROMOTED]
    assert (rule.demotions, rule.retry_after) == (1, None)  # remembered while it has not served a day
    rule, ts, st_ = _pass(s, st_, FALLING, 20)  # second demotion in a row: 20 minutes
    assert (rule.demotions, rule.retry_after) == (2, "2026-12-01T10:40:00Z")
    assert "back-off 20m after 2 demotions in a row" in ts[0].message
    rule, ts, st_ = _pass(s, st_, AGREEING, 39)
    assert rule.phase is RulePhase.SHADOW
    rule, ts, st_ = _pass(s, st_, AGREEING, 40)
    assert rule.phase is RulePhase.SERVING
    rule, ts, st_ = _pass(s, st_, ZERO, 40 + 24 * 60)  # a day of serving: the demotions are forgiven
    assert (rule.phase, rule.demotions) == (RulePhase.SERVING, 0) and ts == []
    rule, ts, st_ = _pass(s, st_, FALLING, 41 + 24 * 60)
    assert (rule.demotions, rule.retry_after) == (1, format_time(T0 + timedelta(minutes=51 + 24 * 60)))


def test_a_zero_backoff_promotes_again_as_soon_as_the_samples_agree() -> None:
    s = spec(backoff="0s")
    rule, ts, st_ = _pass(s, status(RulePhase.SERVING, "slm"), FALLING, 0)
    assert rule.phase is RulePhase.SHADOW and "as soon as the samples agree" in ts[0].message
    assert (rule.demotions, rule.retry_after) == (1, None)
    rule, ts, _ = _pass(s, st_, AGREEING, 0)
    assert rule.phase is RulePhase.SERVING


backoffs = st.integers(0, 24 * 3600).map(lambda n: f"{n}s")


@given(backoffs, st.integers(1, 80))
def test_waits_double_per_demotion_and_are_capped_at_a_day(backoff: str, n: int) -> None:
    p = promotion(backoff=backoff)
    base = backoff_seconds(p, 1)
    assert base == float(backoff.removesuffix("s"))
    assert backoff_seconds(p, 0) == 0
    assert 0 <= backoff_seconds(p, n) <= MAX_BACKOFF_SECONDS == 24 * 3600
    assert backoff_seconds(p, n + 1) == min(2 * backoff_seconds(p, n), MAX_BACKOFF_SECONDS)
    assert backoff_seconds(p, n + 1) >= backoff_seconds(p, n)


@given(backoffs, st.integers(1, 40), st.integers(0, 30 * 3600), counts())
def test_never_promoted_before_retry_after(backoff: str, demotions: int, later: int, c: RuleCounts) -> None:
    s = spec(backoff=backoff, minSamples=1)
    since = T0
    before = status(RulePhase.SHADOW, "llm", format_time(since), demotions=demotions)
    now = since + timedelta(seconds=later)
    out = evaluate(s, before, {"invoices": c}, format_time(now))
    (rule,) = out.rules
    retry = since + timedelta(seconds=backoff_seconds(promotion(backoff=backoff), demotions))
    assert rule.demotions == demotions
    retry_after = format_time(retry) if retry > since else None  # backoff 0s: no wait, no retryAfter
    if now < retry:
        assert rule.retry_after == format_time(retry)
        assert rule.phase is RulePhase.SHADOW and out.transitions == []
        assert f"not promoted before {format_time(retry)}" in rule.message
    else:  # the back-off is over: the counts alone decide (a promotion clears retryAfter)
        promoted = decide(promotion(backoff=backoff, minSamples=1), "llm", RulePhase.SHADOW, c).transition
        assert rule.phase is (RulePhase.SERVING if promoted else RulePhase.SHADOW)
        assert rule.retry_after == (None if promoted else retry_after)


@given(backoffs, st.integers(0, 40), st.integers(0, 30 * 3600))
def test_a_demotion_counts_one_more_and_sets_retry_after_by_the_doubled_wait(
    backoff: str, demotions: int, served_for: int
) -> None:
    s = spec(backoff=backoff)
    now = T0 + timedelta(seconds=served_for)
    before = status(RulePhase.SERVING, "slm", format_time(T0), demotions=demotions)
    (rule,) = evaluate(s, before, {"invoices": FALLING}, format_time(now)).rules
    forgiven = served_for >= 24 * 3600
    assert rule.demotions == (1 if forgiven else demotions + 1)
    wait = backoff_seconds(promotion(backoff=backoff), rule.demotions)
    assert rule.retry_after == (format_time(now + timedelta(seconds=wait)) if wait else None)


# ------------------------------------------------------------------------------------------------ FineTuneJobs


def finetunejob(
    name: str = "tune-invoices",
    target: str | None = "invoice-extractor",
    ns: str = "agents",
    **conditions: tuple[str, str],
) -> FineTuneJob:
    """A FineTuneJob promoting onto ``target``, with conditions given as type=(status, reason)."""
    spec: dict[str, Any] = {
        "poolRef": {"name": "h100"},
        "segment": "tuning",
        "baseModel": "qwen2.5-3b-instruct",
        "dataset": {"configMapRef": {"name": "calls"}},
        "output": {"pvc": {"claimName": "adapters", "path": name}},
    }
    if target is not None:
        spec["promote"] = {"slmDeploymentRef": {"name": target}}
    conds = [
        {"type": t, "status": st_, "reason": r, "message": "", "lastTransitionTime": NOW}
        for t, (st_, r) in conditions.items()
    ]
    body: dict[str, Any] = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    if conds:
        body["status"] = {"conditions": conds}
    return FineTuneJob.model_validate(body)


@pytest.mark.parametrize(
    ("conditions", "pending"),
    [
        ({}, True),  # the operator has not reported yet: it will train
        ({"Trained": ("False", "Training"), "Promoted": ("False", "Waiting")}, True),
        ({"Trained": ("True", "JobComplete"), "Promoted": ("False", "Rolling")}, True),
        ({"Promoted": ("False", "TargetNotFound")}, True),
        ({"Promoted": ("False", "SomethingNew")}, True),  # a reason this version does not know: the safe side
        ({"Promoted": ("True", "Promoted")}, False),
        ({"Promoted": ("False", "GateNotMet")}, False),
        ({"Promoted": ("False", "RolledBack")}, False),
        ({"Promoted": ("False", "Superseded")}, False),
        ({"Promoted": ("False", "Replaced")}, False),
        ({"Promoted": ("False", "TrainingFailed")}, False),
        ({"Failed": ("True", "JobFailed"), "Promoted": ("False", "Waiting")}, False),
    ],
)
def test_a_finetunejob_is_pending_until_it_promoted_or_stopped_for_good(
    conditions: dict[str, tuple[str, str]], pending: bool
) -> None:
    assert finetune_pending(finetunejob(**conditions)) is pending


def test_every_promoted_reason_of_the_finetunejob_controller_is_known_as_final_or_pending() -> None:
    """finetune/promotion.py writes the Promoted condition; a reason it gains must be classified here."""
    tree = ast.parse(inspect.getsource(finetune_promotion))
    reasons = {
        call.args[1].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and getattr(call.func, "id", "") == "ConditionResult"
        and len(call.args) >= 2
        and isinstance(call.args[1], ast.Constant)
    }
    assert len(reasons) >= 8
    assert reasons <= FINAL_PROMOTED_REASONS | PENDING_PROMOTED_REASONS, reasons
    assert not FINAL_PROMOTED_REASONS & PENDING_PROMOTED_REASONS


def test_pending_finetunejobs_are_grouped_by_the_deployment_they_promote_onto() -> None:
    jobs = [
        finetunejob("b"),
        finetunejob("a"),
        finetunejob("done", Promoted=("True", "Promoted")),
        finetunejob("no-promote", target=None),
        finetunejob("elsewhere", ns="support"),
    ]
    assert pending_finetunes(jobs) == {
        ("agents", "invoice-extractor"): ("a", "b"),
        ("support", "invoice-extractor"): ("elsewhere",),
    }


def test_no_promotion_while_a_finetunejob_trains_the_backend_but_a_demotion_still_happens() -> None:
    s = spec()
    waiting = {"invoices": RuleFacts("qwen2.5-3b-instruct", ("tune-invoices",))}
    out = evaluate(s, status(RulePhase.SHADOW, "llm"), {"invoices": AGREEING}, NOW, waiting)
    (rule,) = out.rules
    assert rule.phase is RulePhase.SHADOW and out.transitions == []
    assert "not promoted while FineTuneJob tune-invoices has not finished" in rule.message
    many = {"invoices": RuleFacts("m", tuple(f"job-{i}" for i in range(5)))}
    rule = evaluate(s, status(RulePhase.SHADOW, "llm"), {}, NOW, many).rules[0]
    assert "FineTuneJobs job-0, job-1, job-2 and 2 more" in rule.message
    out = evaluate(s, status(RulePhase.SERVING, "slm"), {"invoices": FALLING}, NOW, waiting)
    assert out.rules[0].phase is RulePhase.SHADOW and out.transitions[0].reason == DEMOTED


# ------------------------------------------------------------------------------------------------ the model


def deployment(adapter: str | None = None) -> SLMDeployment:
    meta: dict[str, Any] = {"name": "invoice-extractor", "namespace": "agents"}
    if adapter:
        meta["annotations"] = {ADAPTER_ANNOTATION: adapter}
    return SLMDeployment.model_validate(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": meta,
            "spec": {"poolRef": {"name": "h100"}, "model": {"name": "qwen2.5-3b-instruct"}},
        }
    )


def test_the_routing_table_knows_the_model_and_the_finetunejobs_of_each_promoted_backend() -> None:
    route = SLMRoute.model_validate(
        {"apiVersion": "slm.io/v1alpha1", "kind": "SLMRoute", "metadata": {"name": "r", "namespace": "agents"},
         "spec": spec().model_dump(by_alias=True, exclude_none=True)}
    )  # fmt: skip
    world = RouteWorld(
        routes=[route],
        deployments={("agents", "invoice-extractor"): deployment("pvc://adapters/v2")},
        finetunes={("agents", "invoice-extractor"): ("tune-v3",), ("support", "invoice-extractor"): ("x",)},
    )
    facts = build_table(world).routes["agents/r"].facts
    assert facts == {"invoices": RuleFacts("qwen2.5-3b-instruct + pvc://adapters/v2", ("tune-v3",))}
    assert model_key(deployment()) == "qwen2.5-3b-instruct"
    assert build_table(RouteWorld(routes=[route])).routes["agents/r"].facts == {"invoices": RuleFacts()}


def test_a_new_model_starts_the_counts_again_and_is_announced() -> None:
    s = spec(minSamples=4)
    old = status(RulePhase.SHADOW, "llm", measured_model="qwen2.5-3b-instruct")
    same = {"invoices": RuleFacts("qwen2.5-3b-instruct")}
    new = {"invoices": RuleFacts("qwen2.5-3b-instruct + pvc://adapters/v2")}
    kept = evaluate(s, old, {"invoices": RuleCounts(3, 3)}, NOW, same)
    assert kept.rules[0].samples == 3 and kept.transitions == []
    out = evaluate(
        s, old, {"invoices": RuleCounts(4, 4)}, NOW, new
    )  # would promote on the old model's counts
    (rule,) = out.rules
    assert (rule.phase, rule.samples, rule.measured_model) == (
        RulePhase.SHADOW,
        0,
        "qwen2.5-3b-instruct + pvc://adapters/v2",
    )
    (t,) = out.transitions
    assert t.reason == MODEL_CHANGED and not t.changes_phase
    assert "slm now serves qwen2.5-3b-instruct + pvc://adapters/v2, not qwen2.5-3b-instruct" in t.message
    # a status written before measuredModel existed: recorded, nothing restarted
    first = evaluate(s, status(RulePhase.SHADOW, "llm"), {"invoices": RuleCounts(3, 3)}, NOW, new)
    assert first.rules[0].samples == 3 and first.transitions == []
    assert first.rules[0].measured_model == "qwen2.5-3b-instruct + pvc://adapters/v2"
