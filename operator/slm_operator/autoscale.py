"""The scaling algorithm: desired replicas of an SLMDeployment from the load the gateway sees (pure).

Knative's KPA, adapted to replicas that are expensive to start on shared GPUs (docs/autoscaling.md):

* **load**: per sample, the calls the gateway replicas hold for the deployment, summed over the gateway
  replicas and the routes' backends that name it: in flight plus queued (``metric: InFlight``) or queued only
  (``metric: Queue``);
* **stable mode**: desired = ceil(average load over ``stableWindow`` / ``target``);
* **panic mode**: when the average over the short ``panicWindow`` asks for ``panicThresholdPercent`` of the
  ready replicas or more, desired follows the panic window, never goes down, and the mode holds until a whole
  stable window passed without such a burst;
* **rate limits**: one decision asks for at most ``maxScaleUpRate`` x ready (at least one more) and keeps at
  least ready / ``maxScaleDownRate``;
* **scale-down delay**: a lower count takes effect only once it held for ``scaleDownDelay`` (the highest
  recommendation inside the delay counts), so a short lull does not give up a replica that took minutes to
  start;
* **bounds**: always within [``minReplicas``, ``maxReplicas``]; with ``minReplicas: 0`` the last replica goes
  only after ``scaleToZeroAfter`` without any call (in flight or queued);
* **activation**: a call held by the gateway at zero replicas (``slm.io/activation-requested``) asks for at
  least one replica at once and counts as activity.

No metrics (no gateway answered): the last decision holds, so a broken scrape never scales anything down.
:func:`decide` is a pure function of the samples, the ready replicas, the settings and the previous
:class:`State`; the shell (``controllers/autoscaler.py``) gathers the samples and writes the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from slm_operator.api.base import duration_seconds
from slm_operator.api.v1alpha1 import (
    DEFAULT_SCALE_TO_ZERO_AFTER,
    AutoscalingMetric,
    AutoscalingSpec,
    SLMDeployment,
    SLMRoute,
)

#: (route "namespace/name", backend name) -> (calls in flight, calls queued), as one gateway replica reports
GatewayLoad = Mapping[tuple[str, str], tuple[float, float]]

#: reasons of a decision (``status.autoscaling.reason``, the ``Scaled`` Event)
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_TO_ZERO = "ScaledToZero"
ACTIVATED = "Activated"
STEADY = "Steady"
NO_METRICS = "NoMetrics"
#: directions (label of ``slm_autoscaler_decisions_total``)
UP, DOWN, NONE = "up", "down", "none"


@dataclass(frozen=True)
class Sample:
    """The gateway replicas' calls for one deployment at one time (seconds), summed over them."""

    time: float
    in_flight: float
    queued: float


@dataclass(frozen=True)
class Settings:
    """``spec.autoscaling`` in numbers (seconds, a ratio)."""

    min_replicas: int
    max_replicas: int
    metric: AutoscalingMetric = AutoscalingMetric.IN_FLIGHT
    target: float = 8.0
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    scale_down_delay: float = 60.0
    scale_to_zero_after: float = 300.0
    max_scale_up_rate: float = 4.0
    max_scale_down_rate: float = 2.0

    @classmethod
    def of(cls, spec: AutoscalingSpec, max_concurrent_sequences: int) -> Settings:
        if spec.target is not None:
            target = float(spec.target)
        else:
            target = float(max_concurrent_sequences if spec.metric is AutoscalingMetric.IN_FLIGHT else 1)
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            metric=spec.metric,
            target=target,
            stable_window=duration_seconds(spec.stable_window),
            panic_window=duration_seconds(spec.panic_window),
            panic_threshold=spec.panic_threshold_percent / 100.0,
            scale_down_delay=duration_seconds(spec.scale_down_delay),
            scale_to_zero_after=duration_seconds(spec.scale_to_zero_after or DEFAULT_SCALE_TO_ZERO_AFTER),
            max_scale_up_rate=float(spec.max_scale_up_rate),
            max_scale_down_rate=float(spec.max_scale_down_rate),
        )

    @classmethod
    def of_deployment(cls, dep: SLMDeployment) -> Settings | None:
        spec = dep.spec.autoscaling
        return None if spec is None else cls.of(spec, dep.spec.model.max_concurrent_sequences)

    def clamp(self, n: int) -> int:
        return min(max(n, self.min_replicas), self.max_replicas)


@dataclass(frozen=True)
class State:
    """What one decision hands to the next (kept in memory by the shell; ``desired``, ``last_scale`` and
    ``last_active`` are also in ``status.autoscaling`` so that a new leader starts from them)."""

    desired: int
    panic_since: float | None = None  # start of the panic mode (None: stable mode)
    last_burst: float | None = None  # last time the panic threshold was crossed
    last_active: float | None = None  # last time a call was in flight or queued (or an activation)
    last_scale: float | None = None  # last change of ``desired``
    #: (time, recommendation) of the decisions inside the scale-down delay, oldest first
    recent: tuple[tuple[float, int], ...] = field(default=())


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    message: str
    state: State
    stable_load: float | None  # average load over the stable window (None: no samples)
    panic_load: float | None  # average over the panic window
    panic: bool
    previous: int  # the decision before this one

    @property
    def direction(self) -> str:
        if self.desired > self.previous:
            return UP
        return DOWN if self.desired < self.previous else NONE

    @property
    def changed(self) -> bool:
        return self.desired != self.previous


def backends_by_deployment(routes: Iterable[SLMRoute]) -> dict[tuple[str, str], str]:
    """(route "namespace/name", backend name) -> the SLMDeployment ("namespace/name") the backend names."""
    out: dict[tuple[str, str], str] = {}
    for route in routes:
        ns = route.metadata.namespace or "default"
        for b in route.spec.backends:
            if b.slm_deployment_ref is not None:
                out[(f"{ns}/{route.metadata.name}", b.name)] = f"{ns}/{b.slm_deployment_ref.name}"
    return out


def deployment_loads(
    reports: Iterable[GatewayLoad], backends: Mapping[tuple[str, str], str]
) -> dict[str, tuple[float, float]]:
    """Calls in flight and queued per SLMDeployment, summed over the gateway replicas' reports and over the
    routes' backends that name it (a backend no route names any more is ignored)."""
    out: dict[str, tuple[float, float]] = {}
    for report in reports:
        for key, (in_flight, queued) in report.items():
            dep = backends.get(key)
            if dep is None:
                continue
            f, q = out.get(dep, (0.0, 0.0))
            out[dep] = (f + in_flight, q + queued)
    return out


def load_of(sample: Sample, metric: AutoscalingMetric) -> float:
    return sample.queued if metric is AutoscalingMetric.QUEUE else sample.in_flight + sample.queued


def _average(samples: Sequence[Sample], since: float, now: float, metric: AutoscalingMetric) -> float | None:
    inside = [load_of(s, metric) for s in samples if since < s.time <= now]
    return sum(inside) / len(inside) if inside else None


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def decide(
    samples: Sequence[Sample],
    now: float,
    ready: int,
    settings: Settings,
    state: State,
    activation: bool = False,
) -> Decision:
    """The desired replicas now; ``samples`` may hold older ones (ignored), ``ready`` is the ready replicas."""
    s = settings
    previous = state.desired
    stable = _average(samples, now - s.stable_window, now, s.metric)
    panic_load = _average(samples, now - s.panic_window, now, s.metric)
    busy = any(x.in_flight + x.queued > 0 for x in samples if now - s.panic_window < x.time <= now)
    # a fresh state (a new leader) counts as activity: it waits a whole scaleToZeroAfter before zero
    last_active = state.last_active if state.last_active is not None else now
    active = [x.time for x in samples if x.time <= now and x.in_flight + x.queued > 0]
    if active:
        last_active = max(last_active, max(active))
    if activation:
        last_active = now
    if stable is None or panic_load is None:
        desired = s.clamp(max(previous, 1) if activation else previous)
        reason = ACTIVATED if activation and desired > previous else NO_METRICS
        msg = (
            "a call waits at zero replicas: scaling to 1"
            if reason == ACTIVATED
            else f"no load figures from the gateway: keeping {desired} replicas"
        )
        new = replace(
            state, desired=desired, last_active=last_active, last_scale=_scaled(state, desired, now)
        )
        return Decision(
            desired, reason, msg, new, stable, panic_load, state.panic_since is not None, previous
        )

    # rate limits, relative to the ready replicas; they slow a change down but never turn it around
    base = max(ready, 1)
    max_up = max(math.ceil(s.max_scale_up_rate * base), ready + 1, previous)
    min_down = min(math.floor(ready / s.max_scale_down_rate), previous)
    want_stable = min(max(math.ceil(stable / s.target), min_down), max_up)
    want_panic = min(max(math.ceil(panic_load / s.target), min_down), max_up)

    # panic mode: a burst the ready replicas cannot take; never scale down inside it
    burst = panic_load / s.target >= s.panic_threshold * base and want_panic > ready
    last_burst = now if burst else state.last_burst
    panic_since = state.panic_since
    if burst and panic_since is None:
        panic_since = now
    if panic_since is not None and last_burst is not None and now - last_burst >= s.stable_window:
        panic_since = None
    recommendation = max(want_panic, want_stable, previous) if panic_since is not None else want_stable

    # scale-down delay: the highest recommendation within the delay counts
    recent = (*((t, r) for t, r in state.recent if now - t < s.scale_down_delay), (now, recommendation))
    if s.scale_down_delay > 0:
        recommendation = max(r for _, r in recent)

    # scale to zero only after a quiet scaleToZeroAfter; otherwise keep one while calls come
    if recommendation <= 0:
        quiet = now - last_active
        if s.min_replicas > 0 or quiet < s.scale_to_zero_after:
            recommendation = 1 if previous >= 1 or busy else 0
    if activation:
        recommendation = max(recommendation, 1)
    desired = s.clamp(recommendation)

    reason, msg = _explain(
        s, previous, desired, ready, stable, panic_load, panic_since is not None, activation
    )
    new = State(
        desired=desired,
        panic_since=panic_since,
        last_burst=last_burst if panic_since is not None else None,
        last_active=last_active,
        last_scale=_scaled(state, desired, now),
        recent=recent if s.scale_down_delay > 0 else (),
    )
    return Decision(desired, reason, msg, new, stable, panic_load, panic_since is not None, previous)


def _scaled(state: State, desired: int, now: float) -> float | None:
    return now if desired != state.desired else state.last_scale


def _explain(
    s: Settings,
    previous: int,
    desired: int,
    ready: int,
    stable: float,
    panic_load: float,
    panic: bool,
    activation: bool,
) -> tuple[str, str]:
    what = "calls queued" if s.metric is AutoscalingMetric.QUEUE else "calls in flight or queued"
    figures = (
        f"{_fmt(stable)} {what} on average over {_fmt_window(s.stable_window)}, {_fmt(panic_load)} over "
        f"{_fmt_window(s.panic_window)}; target {_fmt(s.target)} per replica; {ready} ready"
    )
    if panic:
        figures += "; panic mode (a burst): no scale-down until it calms down"
    if desired > previous:
        reason = ACTIVATED if activation and previous == 0 else SCALED_UP
    elif desired < previous:
        reason = SCALED_TO_ZERO if desired == 0 else SCALED_DOWN
    else:
        reason = STEADY
    bounds = f" (bounds {s.min_replicas}-{s.max_replicas})"
    if reason == ACTIVATED:
        return reason, f"0 -> {desired} replicas: a call waits at zero replicas; {figures}"
    if reason == SCALED_TO_ZERO:
        return (
            reason,
            f"{previous} -> 0 replicas: no call for {_fmt_window(s.scale_to_zero_after)}; {figures}",
        )
    if reason == STEADY:
        return reason, f"{desired} replicas{bounds}: {figures}"
    return reason, f"{previous} -> {desired} replicas{bounds}: {figures}"


def _fmt_window(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


__all__ = [
    "ACTIVATED",
    "DOWN",
    "NONE",
    "NO_METRICS",
    "SCALED_DOWN",
    "SCALED_TO_ZERO",
    "SCALED_UP",
    "STEADY",
    "UP",
    "Decision",
    "GatewayLoad",
    "Sample",
    "Settings",
    "State",
    "backends_by_deployment",
    "decide",
    "deployment_loads",
    "load_of",
]
