"""Automatic promotion of a rule's shadow backend to serving, and back (S6 of docs/loop.md). Pure.

A rule with ``promote`` is in one of two phases, kept in the route's ``status.rules`` (the shared state: every
gateway replica routes by the phase it reads there, and only the replica holding the status Lease changes it):

* ``Shadow``: the rule's ``backend`` answers; ``promote.backend`` gets shadow copies, and each copy's answer is
  compared with the caller's (``routing.compare``);
* ``Serving``: ``promote.backend`` answers, with the rule's ``backend`` as its fallback; a share of the calls is
  still copied to the rule's ``backend`` in shadow, so the agreement keeps being measured (and shown).

The gateway counts per (route, rule) since the last change of phase: shadow answers of the measured backend
compared and agreed, and while serving the calls sent to ``promote.backend`` and those that fell back.
:func:`decide` turns the counts into the next phase; a change of phase starts the counts again from zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from slm_operator.api.v1alpha1 import (
    RouteRule,
    RouteRuleStatus,
    RulePhase,
    RulePromotion,
    SLMRouteSpec,
    SLMRouteStatus,
)

#: calls served before a serving backend may be sent back: min(minSamples, this)
MIN_SERVED_CAP = 50
# Event reasons (a transition posts one on the SLMRoute).
PROMOTED = "Promoted"
DEMOTED = "Demoted"


@dataclass(frozen=True, slots=True)
class RuleCounts:
    """What a gateway replica counted for one rule since its last change of phase."""

    compared: int = 0  # shadow answers of the measured backend compared with the caller's
    agreed: int = 0  # of those, the ones that agreed
    served: int = 0  # while serving: calls sent to promote.backend
    fell_back: int = 0  # of those, the ones that fell back to the rule's backend


ZERO = RuleCounts()


@dataclass(frozen=True, slots=True)
class Step:
    """The next phase, the counts to go on with (zero after a transition) and why."""

    phase: RulePhase
    counts: RuleCounts
    transition: bool
    message: str


@dataclass(frozen=True, slots=True)
class Transition:
    rule: str
    phase: RulePhase
    reason: str  # PROMOTED or DEMOTED
    message: str


def min_served(promote: RulePromotion) -> int:
    """Calls a serving backend must have answered before its fallback share may send it back."""
    return min(promote.min_samples, MIN_SERVED_CAP)


def agreement_percent(c: RuleCounts) -> int:
    """The share of compared answers that agreed, in percent, rounded down (0 with nothing compared)."""
    return c.agreed * 100 // c.compared if c.compared else 0


def fallback_percent(c: RuleCounts) -> int:
    """The share of served calls that fell back, in percent, rounded up (0 with nothing served)."""
    return -(-c.fell_back * 100 // c.served) if c.served else 0


def decide(promote: RulePromotion, original: str, phase: RulePhase, c: RuleCounts) -> Step:
    """The phase after ``phase`` given the counts ``c`` (``original``: the rule's ``backend``).

    ``Shadow`` -> ``Serving`` when at least ``minSamples`` answers were compared and at least
    ``minAgreementPercent`` of them agreed; ``Serving`` -> ``Shadow`` when at least :func:`min_served` calls were
    served and more than ``maxFallbackPercent`` of them fell back. Exact arithmetic: no rounding decides.
    """
    b = promote.backend
    if phase is RulePhase.SHADOW:
        agreement = f"{c.agreed} of {c.compared} shadow answers of {b} agreed ({agreement_percent(c)} %"
        if c.compared >= promote.min_samples and c.agreed * 100 >= promote.min_agreement_percent * c.compared:
            return Step(
                RulePhase.SERVING,
                ZERO,
                True,
                f"promoted {b}: {agreement}, at least {promote.min_agreement_percent} % needed); {original} is "
                "its fallback",
            )
        return Step(
            phase,
            c,
            False,
            f"{original} answers, {b} in shadow: {agreement}); promoted at {promote.min_agreement_percent} % "
            f"over at least {promote.min_samples}",
        )
    falls = f"{c.fell_back} of {c.served} calls fell back to {original} ({fallback_percent(c)} %"
    if c.served >= min_served(promote) and c.fell_back * 100 > promote.max_fallback_percent * c.served:
        return Step(
            RulePhase.SHADOW,
            ZERO,
            True,
            f"demoted {b}: {falls}, at most {promote.max_fallback_percent} % allowed); {original} answers again",
        )
    return Step(
        phase,
        c,
        False,
        f"{b} answers: {falls}); back to shadow above {promote.max_fallback_percent} % after at least "
        f"{min_served(promote)} calls",
    )


def promoted_rules(spec: SLMRouteSpec) -> list[RouteRule]:
    return [r for r in spec.rules or [] if r.promote is not None]


def rule_phases(spec: SLMRouteSpec, status: SLMRouteStatus | None) -> dict[str, RulePhase]:
    """The phase of each rule with ``promote``, as the route's status says; ``Shadow`` without a status, and
    when the status names another backend than ``promote.backend`` (the spec changed since)."""
    seen = {s.name: s for s in (status.rules if status else None) or []}
    out: dict[str, RulePhase] = {}
    for rule in promoted_rules(spec):
        assert rule.promote is not None
        st = seen.get(rule.name)
        serving = st is not None and st.phase is RulePhase.SERVING and st.backend == rule.promote.backend
        out[rule.name] = RulePhase.SERVING if serving else RulePhase.SHADOW
    return out


def answering(rule: RouteRule, phase: RulePhase) -> str:
    """The backend that answers the rule's calls in ``phase``."""
    if phase is RulePhase.SERVING and rule.promote is not None:
        return rule.promote.backend
    assert rule.backend is not None  # the API: a rule with promote has a single backend
    return rule.backend


def measured(rule: RouteRule, phase: RulePhase) -> str:
    """The shadow backend whose agreement is counted for the rule in ``phase``: the promoted backend in
    shadow, the rule's own backend while the promoted one serves."""
    assert rule.promote is not None and rule.backend is not None
    return rule.backend if phase is RulePhase.SERVING else rule.promote.backend


@dataclass(frozen=True)
class Evaluation:
    rules: list[RouteRuleStatus]
    transitions: list[Transition]


def evaluate(
    spec: SLMRouteSpec,
    previous: SLMRouteStatus | None,
    counts: Mapping[str, RuleCounts],
    now: str,
) -> Evaluation:
    """The ``status.rules`` of a route and the transitions to announce, from its status so far and the counts
    of this replica (by rule name, counted in the phase the status shows; a missing rule counted nothing)."""
    phases = rule_phases(spec, previous)
    before = {s.name: s for s in (previous.rules if previous else None) or []}
    out: list[RouteRuleStatus] = []
    transitions: list[Transition] = []
    for rule in promoted_rules(spec):
        assert rule.promote is not None and rule.backend is not None
        phase = phases[rule.name]
        step = decide(rule.promote, rule.backend, phase, counts.get(rule.name, ZERO))
        old = before.get(rule.name)
        since = old.last_transition_time if old is not None and old.phase is phase else None
        if step.transition:
            reason = PROMOTED if step.phase is RulePhase.SERVING else DEMOTED
            transitions.append(Transition(rule.name, step.phase, reason, f"rule {rule.name}: {step.message}"))
        out.append(
            RouteRuleStatus(
                name=rule.name,
                phase=step.phase,
                backend=answering(rule, step.phase),
                samples=step.counts.compared,
                agreement_percent=agreement_percent(step.counts),
                served=step.counts.served,
                fallback_percent=fallback_percent(step.counts),
                last_transition_time=now if step.transition or since is None else since,
                message=step.message,
            )
        )
    return Evaluation(out, transitions)
