"""The SLMRoute's status: its backends' readiness and the ``Accepted`` and ``Ready`` conditions (pure)."""

from __future__ import annotations

from slm_operator.api.v1alpha1 import RouteBackendStatus, RouteRuleStatus, SLMRouteStatus
from slm_operator.routing.table import MODEL_CONFLICT, SECRET_NOT_FOUND, CompiledRoute
from slm_operator.status import ConditionResult, apply_condition

ACCEPTED = "Accepted"
READY = "Ready"
# Ready reasons (deploy/argocd/slm.io/SLMRoute/health.lua reads them).
BACKENDS_NOT_READY = "BackendsNotReady"
NOT_ACCEPTED = "NotAccepted"


def accepted_condition(route: CompiledRoute) -> ConditionResult:
    """False when the route is not served (another route of the namespace serves its model), a backend's
    reference does not resolve (the route is served; calls that go to that backend fail and fall back), a
    Secret of API keys it names is missing or unreadable (those keys cannot call it), or its task classifier is
    missing or invalid (the route is served; calls without ``x-slm-task`` have no task)."""
    if route.conflict_with is not None:
        return ConditionResult(
            False,
            MODEL_CONFLICT,
            f"SLMRoute {route.conflict_with} already serves the model '{route.spec.model}' in this namespace; "
            "this route is not served: change `spec.model` or delete one of them",
        )
    problems = [b for b in route.backends.values() if b.problem_reason]
    messages = [b.problem for b in problems] + list(route.key_secret_problems)
    if route.classifier_reason:
        messages.append(route.classifier_problem)
    if messages:
        reason = problems[0].problem_reason if problems else None
        if reason is None:
            reason = SECRET_NOT_FOUND if route.key_secret_problems else route.classifier_reason
        return ConditionResult(False, reason or SECRET_NOT_FOUND, "; ".join(messages))
    return ConditionResult(True, ACCEPTED, f"serving the model '{route.spec.model}'")


def ready_condition(route: CompiledRoute, accepted: ConditionResult) -> ConditionResult:
    if not accepted.status:
        return ConditionResult(False, NOT_ACCEPTED, accepted.message)
    waiting = [b.name for b in route.backends.values() if not b.ready_endpoints]
    if waiting:
        return ConditionResult(
            False, BACKENDS_NOT_READY, f"no ready endpoint for backend {', '.join(sorted(waiting))}"
        )
    return ConditionResult(True, READY, f"{len(route.backends)}/{len(route.backends)} backends ready")


def route_status(
    route: CompiledRoute,
    previous: SLMRouteStatus | None,
    now: str,
    rules: list[RouteRuleStatus] | None = None,
) -> SLMRouteStatus:
    """The status the gateway writes for ``route`` (``lastTransitionTime`` kept while a condition holds);
    ``rules``: the promotion of its rules with ``promote`` (``routing.promotion.evaluate``)."""
    backends = [
        RouteBackendStatus(
            name=b.name,
            kind=b.kind,
            endpoints=len(b.endpoints),
            ready_endpoints=len(b.ready_endpoints),
            message=b.problem or ("" if b.ready_endpoints else "no ready endpoint"),
        )
        for b in route.backends.values()
    ]
    accepted = accepted_condition(route)
    ready = ready_condition(route, accepted)
    conditions = previous.conditions if previous else None
    gen = route.generation
    conditions = apply_condition(conditions, ACCEPTED, accepted, gen, now)
    conditions = apply_condition(conditions, READY, ready, gen, now)
    n_ready = sum(1 for b in backends if b.ready_endpoints)
    return SLMRouteStatus(
        observed_generation=gen,
        backends=backends,
        rules=rules or None,
        ready_backends=f"{n_ready}/{len(backends)}",
        conditions=conditions,
    )
