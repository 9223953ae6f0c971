"""Scale from zero, the gateway's decisions (pure): whether a call is held for its backend's first replica,
whether the SLMDeployment must be told (the activation annotation) now, and what the caller gets when no replica
came in time (docs/autoscaling.md, "Scale from zero").

A call is held when its backend is an SLMDeployment that autoscales down to zero (``autoscaling.minReplicas: 0``,
:attr:`Backend.scales_from_zero`) and has no ready endpoint: that deployment may be at zero on purpose. Any other
backend without a ready endpoint fails at once, as before (an ``Error``). The shell (``gateway/server.py``)
waits for the routing table to show a ready endpoint (the EndpointSlice watch rebuilds it) at most
``timeouts.activation``; the time is passed in, nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.routing.table import Backend

#: at most one activation request (annotation patch) per SLMDeployment in this many seconds, however many calls
#: are held: the operator needs one to wake up; the held calls keep it scaled up through the gateway's metrics
ACTIVATION_REQUEST_SECONDS = 5.0
#: ``Retry-After`` of the 503 a held call gets when no replica became ready in time (a replica is probably
#: starting: a model load takes tens of seconds)
ACTIVATION_RETRY_AFTER_SECONDS = 15


def holds(backend: Backend) -> bool:
    """Whether a call for ``backend`` waits for its first ready replica instead of failing at once."""
    return backend.scales_from_zero and not backend.ready_urls and backend.problem_reason is None


def released(backend: Backend | None) -> bool:
    """Whether calls held for a backend go on, now that the routing table shows ``backend`` (None: the route or
    the backend is gone): it has a ready endpoint, or it no longer holds calls (its attempt then says why)."""
    return backend is None or not holds(backend)


def request_due(last: float | None, now: float, interval: float = ACTIVATION_REQUEST_SECONDS) -> bool:
    """Whether to request the activation of a deployment now, ``last`` being the time of the previous request
    (None: never); times in seconds of one clock."""
    return last is None or now - last >= interval or now < last


@dataclass(frozen=True)
class Unactivated:
    """The answer to a call whose backend got no ready replica within ``timeouts.activation`` and that the route
    does not fall back from (``fallback.when`` without ``Timeout``, or no fallback)."""

    status: int
    retry_after: str  # the ``Retry-After`` header, whole seconds
    detail: str


def unactivated(deployment: str, activation: str) -> Unactivated:
    """What a held call answers after waiting ``activation`` (the route's ``timeouts.activation``) for
    ``deployment``'s first replica: 503, and when to try again."""
    return Unactivated(
        status=503,
        retry_after=str(ACTIVATION_RETRY_AFTER_SECONDS),
        detail=(
            f"SLMDeployment {deployment} is scaled to zero and no replica became ready within "
            f"timeouts.activation ({activation}); one is starting: retry in {ACTIVATION_RETRY_AFTER_SECONDS} s"
        ),
    )
