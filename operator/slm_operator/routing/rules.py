"""Which backend serves a call: the SLMRoute's ordered rules, weighted splits and shadow copies.

Everything random is a draw in [0, 1) passed in by the shell, so a decision is a pure function of the route,
the call's features and the draws (property tests replay them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slm_operator.api.v1alpha1 import RouteRule, RuleMatch, RulePhase, SLMRouteSpec, ToolsMatch
from slm_operator.routing.features import RequestFeatures
from slm_operator.routing.promotion import answering, measured


@dataclass(frozen=True, slots=True)
class Selection:
    """The backend that serves the call, the rule that chose it (None: the default backend) and shadow copies."""

    backend: str
    rule: str | None
    shadows: tuple[str, ...] = ()
    #: for a rule with ``promote``: its phase, and the shadow backend whose agreement counts for it
    phase: RulePhase | None = None
    measured: str | None = None
    #: while the rule's promoted backend serves: the rule's own backend, its fallback
    promoted_from: str | None = None


def rule_matches(match: RuleMatch, features: RequestFeatures) -> bool:
    """Whether every condition the match sets holds for the call."""
    if match.tasks is not None and features.task not in match.tasks:
        return False
    if match.tools is ToolsMatch.PRESENT and not features.tools_present:
        return False
    if match.tools is ToolsMatch.ABSENT and features.tools_present:
        return False
    if match.min_prompt_tokens is not None and features.prompt_tokens < match.min_prompt_tokens:
        return False
    return match.max_prompt_tokens is None or features.prompt_tokens <= match.max_prompt_tokens


def weighted_choice(weights: Sequence[tuple[str, int]], draw: float) -> str:
    """The name whose cumulative weight interval holds ``draw * total`` (``draw`` in [0, 1)).

    A name with weight 0 is never chosen; over evenly spread draws each name gets its share of the total.
    Raises ValueError when no weight is positive.
    """
    total = sum(w for _, w in weights if w > 0)
    if total <= 0:
        raise ValueError("a weighted choice needs a positive weight")
    target = min(max(draw, 0.0), 1.0) * total
    cumulative = 0
    last = ""
    for name, weight in weights:
        if weight <= 0:
            continue
        cumulative += weight
        last = name
        if target < cumulative:
            return name
    return last  # draw == 1.0 (outside [0, 1)): the last positive weight


def first_matching_rule(spec: SLMRouteSpec, features: RequestFeatures) -> RouteRule | None:
    return next((r for r in spec.rules or [] if rule_matches(r.match, features)), None)


def default_backend(spec: SLMRouteSpec) -> str:
    return spec.default_backend or spec.backends[0].name


def select(
    spec: SLMRouteSpec,
    features: RequestFeatures,
    split_draw: float,
    shadow_draw: float,
    phases: Mapping[str, RulePhase] | None = None,
) -> Selection:
    """The backend for a call: the first matching rule's backend (or its split by ``split_draw``), else the
    route's default backend. The rule's shadow backends get a copy when ``shadow_draw * 100 < percent``.

    A rule with ``promote`` whose phase (``phases``, from the route's status) is ``Serving`` sends its calls to
    ``promote.backend`` instead, falling back to the rule's ``backend``, which then gets the shadow copies."""
    rule = first_matching_rule(spec, features)
    if rule is None:
        return Selection(backend=default_backend(spec), rule=None)
    if rule.promote is not None:
        return _promoted(rule, (phases or {}).get(rule.name, RulePhase.SHADOW), shadow_draw)
    if rule.split is not None:
        backend = weighted_choice([(s.backend, s.weight) for s in rule.split], split_draw)
    else:
        assert rule.backend is not None  # the API allows exactly one of backend and split
        backend = rule.backend
    shadows: tuple[str, ...] = ()
    if rule.shadow is not None and shadow_draw * 100 < rule.shadow.percent:
        shadows = tuple(b for b in rule.shadow.backends if b != backend)
    return Selection(backend=backend, rule=rule.name, shadows=shadows)


def _promoted(rule: RouteRule, phase: RulePhase, shadow_draw: float) -> Selection:
    assert rule.shadow is not None and rule.backend is not None  # the API: promote needs both
    backend = answering(rule, phase)
    shadows: tuple[str, ...] = ()
    if shadow_draw * 100 < rule.shadow.percent:
        candidates = (
            (rule.backend, *rule.shadow.backends) if phase is RulePhase.SERVING else rule.shadow.backends
        )
        shadows = tuple(b for b in candidates if b != backend)
    return Selection(
        backend=backend,
        rule=rule.name,
        shadows=shadows,
        phase=phase,
        measured=measured(rule, phase),
        promoted_from=rule.backend if phase is RulePhase.SERVING else None,
    )


def task_label(spec: SLMRouteSpec, task: str | None) -> str:
    """The task as a metric label: a task some rule of the route names, ``other`` for any other, ``""`` for none.

    Callers choose the ``x-slm-task`` header freely; only the route's own tasks become label values, so the
    number of series stays bounded by the route's configuration.
    """
    if not task:
        return ""
    for rule in spec.rules or []:
        if rule.match.tasks and task in rule.match.tasks:
            return task
    return "other"
