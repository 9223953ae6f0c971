"""The scaling algorithm (slm_operator.autoscale): windows, bounds, panic mode, scale-down delay, scale to zero,
activation; property tests for what must always hold (docs/autoscaling.md)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_operator.api.v1alpha1 import AutoscalingMetric, AutoscalingSpec, SLMDeployment
from slm_operator.autoscale import (
    ACTIVATED,
    NO_METRICS,
    SCALED_DOWN,
    SCALED_TO_ZERO,
    SCALED_UP,
    STEADY,
    Decision,
    Sample,
    Settings,
    State,
    backends_by_deployment,
    decide,
    deployment_loads,
)
from slm_operator.manifests import parse_object

TICK = 2.0


@dataclass
class Run:
    decisions: list[Decision]

    @property
    def desired(self) -> list[int]:
        return [d.desired for d in self.decisions]


def simulate(
    loads: list[float],
    s: Settings,
    start: int = 1,
    lag: int = 1,
    queued: list[float] | None = None,
    activations: set[int] | None = None,
) -> Run:
    """One decision per TICK; the load of tick i is loads[i]; ready replicas follow the decision ``lag`` ticks
    later (pods take time to start)."""
    state = State(desired=start)
    samples: list[Sample] = []
    decisions: list[Decision] = []
    history = [start]
    for i, load in enumerate(loads):
        now = i * TICK
        samples.append(Sample(now, load, (queued or [0.0] * len(loads))[i]))
        ready = history[max(0, len(history) - 1 - lag)]
        d = decide(samples, now, ready, s, state, activation=i in (activations or set()))
        decisions.append(d)
        history.append(d.desired)
        state = d.state
    return Run(decisions)


def reversals(seq: list[int]) -> int:
    """How often the sequence turns from going up to going down or back."""
    steps = [b - a for a, b in pairwise(seq) if b != a]
    return sum(1 for a, b in pairwise(steps) if (a > 0) != (b > 0))


SETTINGS = Settings(
    min_replicas=1,
    max_replicas=10,
    target=4.0,
    stable_window=60.0,
    panic_window=6.0,
    scale_down_delay=30.0,
    scale_to_zero_after=120.0,
)


# ------------------------------------------------------------------------------------------- examples


def test_a_burst_scales_up_in_panic_mode_at_once_and_back_down_only_after_it_calmed() -> None:
    loads = [4.0] * 30 + [36.0] * 30 + [4.0] * 150
    run = simulate(loads, SETTINGS)
    burst = run.decisions[30]
    assert burst.reason == SCALED_UP and burst.panic, burst.message
    assert "14.7 over 6s" in burst.message and "target 4.0 per replica" in burst.message
    assert max(run.desired) == 9, "ceil(36 / 4)"
    peak = run.desired.index(9)
    assert peak <= 33, (
        f"a burst reaches 9 replicas within a few ticks (rate-limited from 1 ready): {run.desired}"
    )
    # no scale-down while the burst lasts; panic mode ends a stable window after the last tick that crossed
    # the threshold, then the stable average (still holding the burst) and the delay bring it down slowly
    first_down = next(i for i, d in enumerate(run.decisions) if d.reason == SCALED_DOWN)
    last_burst = max(i for i, d in enumerate(run.decisions) if d.panic)
    assert first_down > 60 and first_down > last_burst, (first_down, last_burst)
    assert run.decisions[first_down].desired >= 5, "one step halves at most (maxScaleDownRate 2)"
    assert run.desired[-1] == 1 and reversals(run.desired) == 1


def test_a_steady_load_settles_on_load_over_target_and_says_why() -> None:
    run = simulate([22.0] * 60, SETTINGS, start=2)
    assert run.desired[-1] == 6, "ceil(22 / 4)"
    last = run.decisions[-1]
    assert last.reason == STEADY and not last.panic
    assert last.message.startswith(
        "6 replicas (bounds 1-10): 22.0 calls in flight or queued on average over 1m"
    )


def test_scale_to_zero_waits_for_the_quiet_window_then_a_call_activates_one_replica() -> None:
    s = Settings(min_replicas=0, max_replicas=4, target=4.0, scale_down_delay=0.0, scale_to_zero_after=120.0)
    loads = [3.0] * 10 + [0.0] * 100
    run = simulate(loads, s, activations={100})
    zero = run.desired.index(0)
    assert zero * TICK - 9 * TICK >= 120.0, "only after 120s without a call"
    assert run.decisions[zero].reason == SCALED_TO_ZERO
    assert run.decisions[zero].message.startswith("1 -> 0 replicas: no call for 2m")
    assert run.desired[100] == 1 and run.decisions[100].reason == ACTIVATED
    assert run.decisions[100].message.startswith("0 -> 1 replicas: a call waits at zero replicas")


def test_no_metrics_hold_the_last_decision() -> None:
    d = decide([], 100.0, 3, SETTINGS, State(desired=3))
    assert (d.desired, d.reason) == (3, NO_METRICS)
    assert d.message == "no load figures from the gateway: keeping 3 replicas"
    # stale samples (older than the panic window) count as none
    d = decide([Sample(10.0, 0.0, 0.0)], 100.0, 3, SETTINGS, State(desired=3))
    assert (d.desired, d.reason) == (3, NO_METRICS)
    woken = decide([], 100.0, 0, Settings(min_replicas=0, max_replicas=2), State(desired=0), activation=True)
    assert (woken.desired, woken.reason) == (1, ACTIVATED)


def test_the_queue_metric_counts_only_waiting_calls() -> None:
    s = Settings(
        min_replicas=1, max_replicas=8, metric=AutoscalingMetric.QUEUE, target=2.0, scale_down_delay=0
    )
    run = simulate([30.0] * 40, s, queued=[10.0] * 40)
    assert run.desired[-1] == 5, "ceil(10 queued / 2), the 30 in flight do not count"
    assert "10.0 calls queued on average" in run.decisions[-1].message


def test_settings_default_target_is_the_replicas_concurrency() -> None:
    dep = parse_object(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {
                "poolRef": {"name": "p"},
                "model": {"name": "qwen2.5-3b-instruct", "maxConcurrentSequences": 16},
                "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
            },
        }
    )
    assert isinstance(dep, SLMDeployment)
    s = Settings.of_deployment(dep)
    assert s is not None
    assert (s.target, s.stable_window, s.panic_window, s.scale_to_zero_after) == (16.0, 60.0, 6.0, 300.0)
    assert (s.panic_threshold, s.scale_down_delay, s.max_scale_up_rate) == (2.0, 60.0, 4.0)
    queue = Settings.of(AutoscalingSpec(max_replicas=2, metric=AutoscalingMetric.QUEUE), 16)
    assert queue.target == 1.0


def test_route_backends_name_the_deployment_whose_load_they_carry() -> None:
    route = parse_object(
        {
            "apiVersion": "slm.io/v1alpha1",
            "kind": "SLMRoute",
            "metadata": {"name": "chat", "namespace": "team"},
            "spec": {
                "model": "chat",
                "backends": [
                    {"name": "small", "slmDeploymentRef": {"name": "qwen"}},
                    {"name": "llm", "external": {"url": "https://llm.example/v1", "model": "big"}},
                ],
            },
        }
    )
    backends = backends_by_deployment([route])  # type: ignore[list-item]
    assert backends == {("team/chat", "small"): "team/qwen"}
    reports = [
        {("team/chat", "small"): (3.0, 1.0), ("team/chat", "llm"): (9.0, 0.0)},
        {("team/chat", "small"): (2.0, 0.0), ("gone/route", "x"): (5.0, 5.0)},
    ]
    assert deployment_loads(reports, backends) == {"team/qwen": (5.0, 1.0)}


# ------------------------------------------------------------------------------------------- the API


def _dep(
    autoscaling: dict[str, object] | None, replicas: int = 2, decided: int | None = None
) -> SLMDeployment:
    raw: dict[str, object] = {
        "apiVersion": "slm.io/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"poolRef": {"name": "p"}, "model": {"name": "qwen2.5-3b-instruct"}, "replicas": replicas},
    }
    if autoscaling is not None:
        raw["spec"]["autoscaling"] = autoscaling  # type: ignore[index]
    if decided is not None:
        raw["status"] = {"autoscaling": {"desiredReplicas": decided, "reason": "ScaledUp"}}
    dep = parse_object(raw)
    assert isinstance(dep, SLMDeployment)
    return dep


def test_the_planner_plans_for_the_autoscalers_decision_not_spec_replicas() -> None:
    assert _dep(None, replicas=2).effective_replicas() == 2, (
        "without autoscaling: spec.replicas (kubectl scale)"
    )
    auto = {"minReplicas": 1, "maxReplicas": 5}
    assert _dep(auto, replicas=2).effective_replicas() == 2, "before the first decision: spec.replicas"
    assert _dep(auto, replicas=9).effective_replicas() == 5, "within the bounds"
    assert _dep(auto, replicas=2, decided=4).effective_replicas() == 4
    assert _dep({"minReplicas": 0, "maxReplicas": 5}, decided=0).effective_replicas() == 0
    assert _dep(None, replicas=2, decided=4).effective_replicas() == 2, "a stale decision without autoscaling"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"minReplicas": 3, "maxReplicas": 2}, "must not exceed `autoscaling.maxReplicas`"),
        ({"minReplicas": 1, "maxReplicas": 2, "scaleToZeroAfter": "5m"}, "may only be set with"),
        ({"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfter": "5s"}, "must be between 30s and 24h"),
        ({"maxReplicas": 2, "stableWindow": "2h"}, "`autoscaling.stableWindow` must be between 6s and 1h"),
        (
            {"maxReplicas": 2, "stableWindow": "30s", "panicWindow": "40s"},
            "at most `autoscaling.stableWindow`",
        ),
        ({"maxReplicas": 2, "scaleDownDelay": "2h"}, "`autoscaling.scaleDownDelay` must be at most 1h"),
        ({"maxReplicas": 2, "keepWarmFor": "25h"}, "`autoscaling.keepWarmFor` must be at most 24h"),
    ],
)
def test_invalid_autoscaling_is_refused_with_what_to_do(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="autoscaling") as err:
        _dep(spec)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------- properties

windows = st.sampled_from([(6.0, 2.0), (30.0, 4.0), (60.0, 6.0)])


@st.composite
def any_settings(draw: st.DrawFn) -> Settings:
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(max(lo, 1), 12))
    stable, panic = draw(windows)
    return Settings(
        min_replicas=lo,
        max_replicas=hi,
        metric=draw(st.sampled_from(list(AutoscalingMetric))),
        target=float(draw(st.integers(1, 16))),
        stable_window=stable,
        panic_window=panic,
        panic_threshold=draw(st.sampled_from([1.1, 2.0, 5.0])),
        scale_down_delay=draw(st.sampled_from([0.0, 10.0, 60.0])),
        scale_to_zero_after=draw(st.sampled_from([30.0, 60.0])),
        max_scale_up_rate=float(draw(st.integers(2, 10))),
        max_scale_down_rate=float(draw(st.integers(2, 4))),
    )


loads_st = st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=80)


@settings(max_examples=150)
@given(s=any_settings(), loads=loads_st, start=st.integers(0, 20), lag=st.integers(0, 5), data=st.data())
def test_never_outside_the_bounds(
    s: Settings, loads: list[float], start: int, lag: int, data: st.DataObject
) -> None:
    acts = set(data.draw(st.lists(st.integers(0, len(loads) - 1), max_size=3)))
    run = simulate(loads, s, start=start, lag=lag, queued=[x / 2 for x in loads], activations=acts)
    for d in run.decisions:
        assert s.min_replicas <= d.desired <= s.max_replicas, (d.desired, d.message)


@settings(max_examples=150)
@given(
    s=any_settings(), load=st.floats(0, 200, allow_nan=False), start=st.integers(0, 20), lag=st.integers(0, 5)
)
def test_a_steady_load_never_flaps(s: Settings, load: float, start: int, lag: int) -> None:
    run = simulate([load] * 120, s, start=start, lag=lag, queued=[load / 3] * 120)
    assert reversals(run.desired) == 0, run.desired
    tail = run.desired[-10:]
    assert len(set(tail)) == 1, f"settled: {run.desired}"


@settings(max_examples=150)
@given(s=any_settings(), loads=loads_st, start=st.integers(0, 20), lag=st.integers(0, 5))
def test_panic_mode_never_scales_down(s: Settings, loads: list[float], start: int, lag: int) -> None:
    run = simulate(loads, s, start=start, lag=lag, queued=[x / 2 for x in loads])
    for before, d in pairwise(run.decisions):
        if before.panic and d.panic:
            assert d.desired >= before.desired, (before.message, d.message)


@settings(max_examples=150)
@given(
    s=any_settings(),
    busy=st.lists(st.floats(0.5, 50, allow_nan=False), min_size=1, max_size=20),
    idle=st.integers(0, 80),
)
def test_scale_to_zero_only_after_the_quiet_window(s: Settings, busy: list[float], idle: int) -> None:
    loads = busy + [0.0] * idle
    run = simulate(loads, s, start=1)
    last_call = (len(busy) - 1) * TICK
    for i, d in enumerate(run.decisions):
        if d.desired == 0:
            assert s.min_replicas == 0
            assert i * TICK - last_call >= s.scale_to_zero_after, (i, d.message)
