"""The promotion of a rule's shadow backend to serving and back (routing/promotion.py): the pure decision, the
status it writes, and how a promoted rule routes (routing/rules.py, routing/fallback.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from slm_operator.api.v1alpha1 import RouteRuleStatus, RulePhase, RulePromotion, SLMRouteSpec, SLMRouteStatus
from slm_operator.routing.fallback import FailureReason, checks_json, fallback_for
from slm_operator.routing.features import RequestFeatures
from slm_operator.routing.promotion import (
    DEMOTED,
    PROMOTED,
    ZERO,
    RuleCounts,
    decide,
    evaluate,
    min_served,
    rule_phases,
)
from slm_operator.routing.rules import select

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


def status(phase: RulePhase, backend: str, since: str = "2026-11-30T00:00:00Z") -> SLMRouteStatus:
    return SLMRouteStatus(
        rules=[RouteRuleStatus(name="invoices", phase=phase, backend=backend, last_transition_time=since)]
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
