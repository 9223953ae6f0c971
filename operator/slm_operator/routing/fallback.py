"""When a call goes to the route's fallback backend, and why (the ``x-slm-fallback`` header's value).

The shell reports what happened on an attempt (a status code, a timeout, no connection, a full queue, or an
answer :func:`slm_operator.routing.jsoncheck.json_problem` rejects); these functions turn it into a reason and
decide whether the route falls back. A call falls back at most once, and never to the backend that failed.
"""

from __future__ import annotations

from enum import StrEnum

from slm_operator.api.v1alpha1 import ALL_FALLBACK_TRIGGERS, FallbackTrigger, SLMRouteSpec


class FailureReason(StrEnum):
    """Why an attempt failed; the value is what ``x-slm-fallback`` and the metrics say."""

    ERROR = "error"
    TIMEOUT = "timeout"
    OVERLOAD = "overload"
    INVALID_JSON = "invalid_json"
    #: a call held for an SLMDeployment at zero replicas got no ready replica within ``timeouts.activation``
    SCALED_TO_ZERO = "scaled_to_zero"


TRIGGERS: dict[FailureReason, FallbackTrigger] = {
    FailureReason.ERROR: FallbackTrigger.ERROR,
    FailureReason.TIMEOUT: FallbackTrigger.TIMEOUT,
    FailureReason.OVERLOAD: FallbackTrigger.OVERLOAD,
    FailureReason.INVALID_JSON: FallbackTrigger.INVALID_JSON,
    FailureReason.SCALED_TO_ZERO: FallbackTrigger.TIMEOUT,  # a wait that ran out
}


def failure_of_status(status: int) -> FailureReason | None:
    """A backend's HTTP status as a failure: 429 and 503 are overload, another 5xx an error.

    2xx and the other 4xx are answers: a 4xx is the caller's mistake and is returned as it is (a prompt too
    long for a small model is kept off it by ``match.maxPromptTokens``, not by falling back).
    """
    if status in (429, 503):
        return FailureReason.OVERLOAD
    if status >= 500:
        return FailureReason.ERROR
    return None


def fallback_backend(spec: SLMRouteSpec, failed_backend: str, reason: FailureReason) -> str | None:
    """The backend to try after ``failed_backend`` failed for ``reason``, or None (the failure is returned)."""
    fb = spec.fallback
    if fb is None or fb.backend == failed_backend or TRIGGERS[reason] not in fb.when:
        return None
    return fb.backend


def promoted_fallback(spec: SLMRouteSpec, promoted_from: str, reason: FailureReason) -> str | None:
    """The fallback of a rule's promoted backend while it serves: the rule's own ``backend``
    (``promoted_from``), for the triggers the route's ``fallback.when`` lists (all four without a
    ``fallback``)."""
    when = spec.fallback.when if spec.fallback is not None else ALL_FALLBACK_TRIGGERS
    return promoted_from if TRIGGERS[reason] in when else None


def fallback_for(
    spec: SLMRouteSpec, failed_backend: str, reason: FailureReason, promoted_from: str | None = None
) -> str | None:
    """The backend to try after ``failed_backend`` failed: for a call of a rule whose promoted backend serves
    (``promoted_from`` set), the rule's own backend (and nothing after it); else the route's fallback."""
    if promoted_from is not None:
        return None if failed_backend == promoted_from else promoted_fallback(spec, promoted_from, reason)
    return fallback_backend(spec, failed_backend, reason)


def checks_json(spec: SLMRouteSpec, backend: str, promoted_from: str | None = None) -> bool:
    """Whether answers of ``backend`` are checked for JSON: only where an invalid one would fall back."""
    return fallback_for(spec, backend, FailureReason.INVALID_JSON, promoted_from) is not None
